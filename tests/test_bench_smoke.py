"""Smoke test of the bench suite: bench/idle.py end to end against the real server.

It checks that the tool works and that its numbers are sane, never how fast
anything is. ``BENCH_SERVER_CMD`` (a ``--server-cmd`` template) points the run
at another server while debugging the bench itself.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
IDLE = BENCH / "idle.py"

CLIENTS = 200


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.mark.timeout(90)
def test_idle_scenario_holds_every_client(tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        str(IDLE),
        "--clients",
        str(CLIENTS),
        "--timeout",
        "2000",
        "--hold",
        "3",
        "--ramp-rate",
        "400",
        "--settle",
        "0.5",
        "--results-dir",
        str(tmp_path),
        "--no-progress",
        "--check",
    ]
    server_cmd = os.environ.get("BENCH_SERVER_CMD")
    if server_cmd:
        cmd += ["--server-cmd", server_cmd]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=80)
    output = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 0, output

    records = sorted(tmp_path.glob(f"idle-long-polling-{CLIENTS}-*.json"))
    assert len(records) == 1, output
    record = json.loads(records[0].read_text())
    assert str(records[0]) in proc.stdout
    assert "bytes per idle client" in proc.stdout

    r = record["results"]
    assert r["clients_requested"] == CLIENTS
    assert r["connected"] == CLIENTS, r["errors"]
    assert r["ever_connected"] == CLIENTS
    assert r["dropped"] == 0, r["errors"]
    assert r["gave_up"] == 0, r["errors"]
    assert r["multiple_clients_replies"] == 0  # every client is its own browser
    assert r["server_timeout_ms"] == 2000  # the server's own advice
    assert r["hold_seconds"] >= 2.0
    assert r["connect_cycles"] > 0  # at least one held connect completed
    assert r["rss_baseline_bytes"] > 0
    assert r["rss_loaded_bytes"] > 0
    assert r["bytes_per_client"] > 0
    assert r["server_cpu_hold_s"] is not None and r["server_cpu_hold_s"] >= 0
    assert r["server_cpu_per_cycle_s"] is not None and math.isfinite(r["server_cpu_per_cycle_s"])
    assert r["loadgen"]["procs"] == 1

    # The record describes the machine and the run.
    m = record["machine"]
    assert m["cpu_count"] and m["kernel"] and m["python"]
    assert "uvloop" in m["packages"]
    assert record["parameters"]["clients"] == CLIENTS
    assert record["parameters"]["timeout_ms"] == 2000
    assert record["scenario"] == "idle" and record["timestamp"]

    # Nothing is left running.
    assert r["server_pid"] and not _pid_alive(r["server_pid"])


def test_idle_help_and_refusals() -> None:
    ok = subprocess.run(
        [sys.executable, str(IDLE), "--help"], capture_output=True, text=True, timeout=30
    )
    assert ok.returncode == 0
    for option in ("--clients", "--procs", "--ramp-rate", "--hold", "--timeout", "--server-cmd",
                   "--url", "--server-pid", "--source-addrs", "--results-dir"):  # fmt: skip
        assert option in ok.stdout
    # A hold shorter than one connect timeout measures nothing: refused up front.
    short = subprocess.run(
        [sys.executable, str(IDLE), "--clients", "10", "--timeout", "5000", "--hold", "1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert short.returncode != 0
    assert "shorter than one connect timeout" in short.stderr


def test_aggregation_helpers() -> None:
    sys.path.insert(0, str(BENCH))
    try:
        import idle
    finally:
        sys.path.remove(str(BENCH))
    assert idle.split_clients(10, 3) == [(0, 4), (4, 3), (7, 3)]
    assert idle.source_addresses(2) == ["127.0.0.1", "127.0.0.2"]
    buckets = [1, 2, 5]
    assert idle.percentile_ms([0, 0, 0, 0], buckets, 0.5) is None
    assert idle.percentile_ms([1, 1, 2, 0], buckets, 0.5) == 2.0
    assert idle.percentile_ms([0, 0, 0, 1], buckets, 0.99) == math.inf
    agg = idle.aggregate(
        [
            {"connected": 3, "dropped": 1, "errors": {"a": 1}, "latency_hist": [1, 0],
             "advice_timeout": 2000, "hold_min_s": 2.0, "hold_max_s": 2.1},
            {"connected": 4, "dropped": 0, "errors": {"a": 2, "b": 1}, "latency_hist": [0, 2],
             "advice_timeout": 2000, "hold_min_s": 1.9, "hold_max_s": 2.0},
        ]
    )  # fmt: skip
    assert agg["connected"] == 7 and agg["dropped"] == 1
    assert agg["errors"] == {"a": 3, "b": 1}
    assert agg["latency_hist"] == [1, 2]
    assert agg["hold_min_s"] == 1.9 and agg["hold_max_s"] == 2.1
