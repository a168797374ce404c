"""Smoke test of bench/hostile.py: a tiny run (a few of each attack, a few
seconds) against the real server must complete, leave no process behind and
write a well-formed record. It checks that the scenario works, never how well
the server resists (that is what the full run reports)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from harness import ROOT, pid_alive

HOSTILE = ROOT / "bench" / "hostile.py"
ATTACKS = ("headers", "nonreader", "handshakes", "slowloris", "flood")


def _is_latency(d: Any) -> bool:
    return isinstance(d, dict) and d.get("count", 0) > 0 and 0 <= d["p50"] <= d["p99"] <= d["max"]


@pytest.mark.timeout(120)
def test_hostile_scenario_tiny(tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        str(HOSTILE),
        "--duration",
        "3",
        "--ordinary",
        "10",
        "--headers",
        "3",
        "--nonreaders",
        "2",
        "--stream-rate",
        "20",
        "--handshakes",
        "50",
        "--slowloris",
        "5",
        "--flood-sessions",
        "3",
        "--flood-messages",
        "2000",
        "--drain-timeout",
        "3",
        "--results-dir",
        str(tmp_path),
        "--no-progress",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=110)
    output = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 0, output
    records = sorted(tmp_path.glob("hostile-*.json"))
    assert len(records) == 1, output
    assert str(records[0]) in proc.stdout
    record = json.loads(records[0].read_text())
    assert record["scenario"] == "hostile"
    assert {"timestamp", "machine", "command", "parameters", "results"} <= record.keys()
    r = record["results"]

    # the server, measured over time
    assert r["rss_baseline_bytes"] > 0 and r["rss_peak_bytes"] >= r["rss_baseline_bytes"]
    assert r["samples"] and all(s["rss"] > 0 for s in r["samples"])
    assert r["accept_queue_max"] is not None  # the listening socket was found
    assert not pid_alive(r["server_pid"])
    assert r["server_died_at_s"] is None

    # ordinary clients and canaries: every figure is there
    o = r["ordinary"]
    assert o["clients"] == 10 and o["by_transport"] == {"long-polling": 5, "websocket": 5}
    assert o["expected_deliveries"] > 0 and o["delivered"] > 0
    assert _is_latency(o["latency_ms"]), o["latency_ms"]
    assert set(o["latency_ms_by_transport"]) == {"long-polling", "websocket"}
    assert isinstance(o["dropped"], int)
    for transport in ("long-polling", "websocket"):
        canary = r["canaries"][transport]
        assert canary["published"] > 0 and canary["received"] is not None, canary
        assert isinstance(canary["lost"], int)

    assert r["newcomers"]["newcomers"] >= 1 and "handshake_s" in r["newcomers"]

    # every attack ran in its own process and reported what it achieved
    assert set(r["attacks"]) == set(ATTACKS)
    for name, attack in r["attacks"].items():
        out = attack["outcome"]
        assert attack["worker_final"], (name, attack)
        assert out["role"] == name and out["opened"] >= 1, (name, out)
        assert {"cut", "cut_how", "statuses", "close_codes", "errors", "cut_after_s"} <= set(out)
        assert isinstance(attack["server_counters"], dict)
    assert r["attacks"]["handshakes"]["outcome"]["handshakes_sent"] == 50
    assert r["attacks"]["flood"]["outcome"].get("publishes_sent", 0) > 0
    assert r["attacks"]["headers"]["outcome"]["bytes_sent"] > 0

    # the targets are judged (not asserted: a tiny run on a busy box proves nothing)
    assert set(r["targets"]) >= {
        "rss_peak_under_512_mib",
        "ordinary_p99_under_100_ms",
        "ordinary_dropped_zero",
        "canary_lost_zero",
    }
    assert all(isinstance(v, bool) for v in r["targets"].values())
    assert r["all_targets_met"] == all(r["targets"].values())
    assert "hostile scenario" in proc.stdout and "canary lost" in proc.stdout
