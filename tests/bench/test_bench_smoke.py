"""Smoke tests of the bench suite: bench/idle.py (long-polling and WebSocket)
and bench/fanout.py end to end against the real server, at tiny sizes; with
node on PATH also ``--peer faye`` (Faye installed into bench/peers/ by npm).

They check that the tools work and that their numbers are sane, never how fast
anything is. ``BENCH_SERVER_CMD`` (a ``--server-cmd`` template) points the runs
at another server while debugging the bench itself.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from bench_support import bench_module, idle_command
from harness import ROOT, pid_alive

BENCH = ROOT / "bench"
IDLE = BENCH / "idle.py"
FANOUT = BENCH / "fanout.py"

CLIENTS = 200


def _run_for_record(
    cmd: list[str], results: Path, pattern: str, timeout: float
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """Run a scenario to its end: (the finished process, its one record, found
    by ``pattern`` in ``results`` and named on its stdout)."""
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    output = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 0, output
    records = sorted(results.glob(pattern))
    assert len(records) == 1, output
    assert str(records[0]) in proc.stdout
    return proc, json.loads(records[0].read_text())


needs_node = pytest.mark.skipif(
    shutil.which("node") is None or shutil.which("npm") is None,
    reason="--peer faye needs node and npm",
)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("transport", ["long-polling", "websocket"])
def test_idle_scenario_holds_every_client(tmp_path: Path, transport: str) -> None:
    cmd = idle_command(tmp_path, transport, CLIENTS)
    server_cmd = os.environ.get("BENCH_SERVER_CMD")
    if server_cmd:
        cmd += ["--server-cmd", server_cmd]
    proc, record = _run_for_record(cmd, tmp_path, f"idle-{transport}-{CLIENTS}-*.json", 80)
    assert "bytes per idle client" in proc.stdout

    r = record["results"]
    assert r["clients_requested"] == CLIENTS
    assert r["connected"] == CLIENTS, r["errors"]
    assert r["ever_connected"] == CLIENTS
    assert r["dropped"] == 0, r["errors"]
    assert r["gave_up"] == 0, r["errors"]
    assert r["multiple_clients_replies"] == 0  # every client is its own browser
    assert r["early_returns"] == 0  # held, not answered at once
    assert r["server_timeout_ms"] == 2000  # the server's own advice
    assert r["hold_seconds"] >= 2.0
    assert r["connect_cycles"] > 0  # at least one held connect completed
    # Samples carry the lateness of the heartbeats since the previous one
    # (the generators' per-line histograms), never more than the whole run's.
    seen = [s["lateness_ms"]["count"] for s in r["samples"]]
    assert 0 < sum(seen) <= r["heartbeat_lateness_ms"]["run"]["count"], r["samples"]
    assert r["rss_baseline_bytes"] > 0
    assert r["rss_loaded_bytes"] > 0
    assert r["bytes_per_client"] > 0
    assert r["server_cpu_hold_s"] is not None and r["server_cpu_hold_s"] >= 0
    assert r["server_cpu_per_cycle_s"] is not None and math.isfinite(r["server_cpu_per_cycle_s"])
    # One generator per CPU the server leaves over (test_bench_tools has the rule).
    assert r["loadgen"]["procs"] == max(1, (os.cpu_count() or 2) - 1)

    # The record describes the machine and the run.
    m = record["machine"]
    assert m["cpu_count"] and m["kernel"] and m["python"]
    assert "uvloop" in m["packages"]
    assert record["parameters"]["clients"] == CLIENTS
    assert record["parameters"]["timeout_ms"] == 2000
    assert record["parameters"]["transport"] == transport
    assert record["scenario"] == "idle" and record["timestamp"]
    # The recipe's command, without the Faye run `--peer none` turned off.
    assert record["command"][1].endswith("bench/idle.py") and "--peer" not in record["command"]

    # Nothing is left running.
    assert r["server_pid"] and not pid_alive(r["server_pid"])


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
    idle = bench_module("idle")
    assert idle.split_clients(10, 3) == [(0, 4), (4, 3), (7, 3)]
    assert idle.source_addresses(2) == ["127.0.0.1", "127.0.0.2"]
    agg = idle.aggregate(
        [
            {"connected": 3, "dropped": 1, "errors": {"a": 1},
             "advice_timeout": 2000, "hold_min_s": 2.0, "hold_max_s": 2.1},
            {"connected": 4, "dropped": 0, "errors": {"a": 2, "b": 1},
             "advice_timeout": 2000, "hold_min_s": 1.9, "hold_max_s": 2.0},
        ]
    )  # fmt: skip
    assert agg["connected"] == 7 and agg["dropped"] == 1
    assert agg["errors"] == {"a": 3, "b": 1}
    assert agg["hold_min_s"] == 1.9 and agg["hold_max_s"] == 2.1
    assert agg["hists"] == {}  # untagged lines carry no whole-run histograms

    # The generator's histograms, as its stats lines carry them: "hist" the
    # values since the last line, "hist_total" (tagged and final lines) all.
    client = bench_module("loadgen")
    stats = client.Stats()
    for ms in range(-3000, 3001, 10):  # heartbeat lateness, signed
        stats.heartbeat(ms / 1000)
    stats.setup_latency(0.004)
    first = json.loads(json.dumps(stats.histograms(total=True)))  # as on the wire
    assert set(first["hist"]) == {"lateness", "setup"} == set(first["hist_total"])
    stats.heartbeat(4.0)
    second = json.loads(json.dumps(stats.histograms(total=True)))
    assert set(second["hist"]) == {"lateness"}  # only what came since the first line
    assert json.loads(json.dumps(stats.histograms(total=False))) == {
        "hist": {},
        "hist_clamped": {},
    }

    agg = idle.aggregate([second, first])  # two generators
    late = agg["hists"]["lateness"].summary()
    assert late["count"] == 2 * 601 + 1 and late["early"] == 2 * 300
    assert late["min"] == pytest.approx(-3000, rel=1e-3)
    assert late["max"] == pytest.approx(4000, rel=1e-3)
    assert -10 <= late["p50"] <= 10
    assert agg["hists"]["setup"].summary()["p99"] == pytest.approx(4.0, rel=1e-3)
    # A hold's histogram: whole-run ones at its end minus those at its start.
    hist = bench_module("histogram")
    hold_start = idle.aggregate([first])["hists"]
    hold_end = idle.aggregate([second])["hists"]
    during = hist.minus(hold_end["lateness"], hold_start["lateness"]).summary()
    assert during["count"] == 1 and during["p50"] == pytest.approx(4000, rel=1e-3)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("transport", ["websocket", "long-polling"])
def test_idle_workers_over_redis_with_fanout(tmp_path: Path, transport: str) -> None:
    """--workers: idle.py starts its own redis-server and a 2-worker engine,
    holds every client through two timeouts, records heartbeat lateness, then
    publishes to the hot 10 % and checks every delivery arrived."""
    if shutil.which("redis-server") is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is missing (CI installs it)")
        pytest.skip("redis-server is not installed")
    clients, messages = 300, 3
    cmd = [
        sys.executable,
        str(IDLE),
        "--workers",
        "2",
        "--transport",
        transport,
        "--clients",
        str(clients),
        "--channels",
        "4",
        "--fanout-fraction",
        "0.1",
        "--fanout-messages",
        str(messages),
        "--fanout-rate",
        "5",
        "--timeout",
        "2000",
        "--hold",
        "4.5",
        "--ramp-rate",
        "600",
        "--settle",
        "0.5",
        "--results-dir",
        str(tmp_path),
        "--no-progress",
        "--check",
    ]
    pattern = f"idle-{transport}-{clients}-w2-*.json"
    proc, record = _run_for_record(cmd, tmp_path, pattern, 110)
    for row in ("redis RSS", "heartbeat lateness", "fan-out complete", "held cleanly"):
        assert row in proc.stdout, proc.stdout
    p, r = record["parameters"], record["results"]
    assert p["workers"] == 2 and p["channels"] == 4 and p["hot_clients"] == 30
    assert "--workers 2 --broker redis://127.0.0.1:" in p["server_cmd"]

    assert r["connected"] == clients and r["dropped"] == 0 and r["failed"] == 0, r["errors"]
    assert r["timeout_cycles"] >= 2.0 and r["cycles_per_client_hold"] >= 1.0
    assert r["bytes_per_client"] is not None and r["rss_loaded_bytes"] > 0
    cluster = r["cluster"]
    assert cluster["workers"] == 2 and cluster["server_processes"] == 3  # supervisor + 2
    assert r["redis_rss_baseline_bytes"] > 0 and r["redis_rss_loaded_bytes"] > 0
    assert r["pss_loaded_bytes"] > 0
    assert 0 <= r["server_cpu_machine_share_hold"] <= 1

    late = r["heartbeat_lateness_ms"]["hold"]
    assert late["count"] > 0  # held connects answered without events during the hold
    assert late["p50"] <= late["p99"] <= late["max"]
    assert -2000 < late["p50"] < 2000  # within one timeout of the advised one
    run = r["heartbeat_lateness_ms"]["run"]
    assert run["count"] >= late["count"] and run["min"] <= run["max"]

    fan = r["fanout"]
    assert fan["hot_clients"] == 30 and fan["messages"] == messages
    assert fan["published"] == messages and fan["acked"] == messages
    assert fan["expected"] == 30 * messages == fan["delivered"] and fan["missing"] == 0
    assert fan["complete"] is True and r["held_cleanly"] is True
    lat = fan["latency_ms"]
    assert lat["count"] == 30 * messages and lat["clamped"] == 0
    assert 0 < lat["min"] <= lat["p50"] <= lat["p99"] <= lat["max"]

    # Nothing is left running: the server, its workers, redis.
    assert r["server_pid"] and not pid_alive(r["server_pid"])
    assert cluster["redis_pid"] and not pid_alive(cluster["redis_pid"])


# --------------------------------------------------------------------------- fan-out

FANOUT_CLIENTS, FANOUT_SUBSCRIBERS, FANOUT_MESSAGES = 50, 10, 20


def _fanout_cmd(tmp_path: Path, transport: str, *extra: str) -> list[str]:
    cmd = [
        sys.executable,
        str(FANOUT),
        "--transport",
        transport,
        "--clients",
        str(FANOUT_CLIENTS),
        "--subscribers",
        str(FANOUT_SUBSCRIBERS),
        "--messages",
        str(FANOUT_MESSAGES),
        "--rate",
        "50",
        "--ramp-rate",
        "500",
        "--timeout",
        "2000",
        "--settle",
        "0.3",
        "--drain-timeout",
        "5",
        "--results-dir",
        str(tmp_path),
        "--no-progress",
        "--check",
        *(extra if "--peer" in extra else (*extra, "--peer", "none")),  # the recipe's Faye run
    ]
    server_cmd = os.environ.get("BENCH_SERVER_CMD")
    if server_cmd and "--peer" not in extra:
        cmd += ["--server-cmd", server_cmd]
    return cmd


def _check_fanout_results(r: dict, transport: str) -> None:  # type: ignore[type-arg]
    expected = FANOUT_SUBSCRIBERS * FANOUT_MESSAGES
    assert r["connected_at_publish"] == FANOUT_CLIENTS, r["errors"]
    assert r["hot_clients"] == FANOUT_SUBSCRIBERS
    assert r["published"] == FANOUT_MESSAGES
    assert r["publish_acked"] == FANOUT_MESSAGES, r["publisher"]
    assert r["publish_failed"] == 0, r["publisher"]
    assert r["expected_deliveries"] == expected
    assert r["delivered"] == expected and r["missing"] == 0 and r["all_delivered"]
    if transport == "websocket":  # one socket: the server takes publishes in order
        assert r["out_of_order"] == 0
    lat = r["latency_ms"]
    assert lat["count"] == expected  # one latency per delivery
    assert lat["clamped"] == 0  # none negative (nor over an hour)
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p999"] <= lat["max"]
    hist = bench_module("histogram")
    assert hist.Latency.decode(lat["hist"]).summary() == {
        k: v for k, v in lat.items() if k not in ("hist", "clamped")
    }
    # Timed at arrival in the socket; the generator reads each delivery later.
    read = r["read_latency_ms"]
    assert r["latency_at"] == "arrival" and read["count"] == expected
    assert read["min"] >= lat["min"] and read["p50"] >= lat["p50"] and read["max"] >= lat["max"]
    assert r["delivered_per_s"] > 0 and r["demanded_per_s"] == FANOUT_SUBSCRIBERS * 50
    assert r["delivered_fraction"] > 0
    assert r["dropped"] == 0 and r["failed"] == 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", ["long-polling", "websocket"])
def test_fanout_delivers_every_message(tmp_path: Path, transport: str) -> None:
    pattern = f"fanout-{transport}-{FANOUT_CLIENTS}-{FANOUT_SUBSCRIBERS}-*.json"
    proc, record = _run_for_record(_fanout_cmd(tmp_path, transport), tmp_path, pattern, 55)
    assert "latency p50 / p90 / p99" in proc.stdout
    assert record["scenario"] == "fanout"
    assert record["parameters"]["publisher_transport"] == transport
    r = record["results"]
    _check_fanout_results(r, transport)
    assert r["server_pid"] and not pid_alive(r["server_pid"])


def test_fanout_help() -> None:
    ok = subprocess.run(
        [sys.executable, str(FANOUT), "--help"], capture_output=True, text=True, timeout=30
    )
    assert ok.returncode == 0
    for option in ("--clients", "--subscribers", "--messages", "--rate", "--transport",
                   "--publisher-transport", "--peer", "--server-cmd", "--results-dir"):  # fmt: skip
        assert option in ok.stdout
    bad = subprocess.run(
        [sys.executable, str(FANOUT), "--clients", "5", "--subscribers", "6"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode != 0


# --------------------------------------------------------------------------- Faye peer


@needs_node
@pytest.mark.timeout(240)  # a first run installs Faye with npm
def test_idle_side_by_side_with_faye(tmp_path: Path) -> None:
    clients = 50
    cmd = [
        sys.executable,
        str(IDLE),
        "--peer",
        "faye",
        "--transport",
        "websocket",
        "--clients",
        str(clients),
        "--timeout",
        "1000",
        "--hold",
        "1.2",
        "--ramp-rate",
        "500",
        "--settle",
        "0.3",
        "--results-dir",
        str(tmp_path),
        "--no-progress",
        "--check",
    ]
    pattern = f"idle-websocket-{clients}-vs-faye-*.json"
    proc, record = _run_for_record(cmd, tmp_path, pattern, 230)
    assert "engine/faye" in proc.stdout
    peer, engine = record["peer"], record["results"]
    assert peer["name"] == "faye" and peer["versions"]["faye"] and peer["versions"]["node"]
    assert "error" not in peer, peer.get("error")
    for r in (peer["results"], engine):
        assert r["connected"] == clients, r["errors"]
        assert r["dropped"] == 0 and r["gave_up"] == 0, r["errors"]
        assert r["connect_cycles"] > 0
        assert r["bytes_per_client"] is not None
        assert r["server_pid"] and not pid_alive(r["server_pid"])
    assert "node" in peer["parameters"]["server_cmd"]
    cmp = record["comparison"]
    assert cmp["peer"] == "faye" and cmp["rows"]
    assert "bytes_per_client_ratio" in cmp and "cpu_per_cycle_ratio" in cmp


@needs_node
@pytest.mark.timeout(240)
def test_fanout_side_by_side_with_faye(tmp_path: Path) -> None:
    cmd = _fanout_cmd(tmp_path, "websocket", "--peer", "faye")
    proc, record = _run_for_record(cmd, tmp_path, "fanout-websocket-*-vs-faye-*.json", 230)
    assert "engine/faye" in proc.stdout
    peer = record["peer"]
    assert "error" not in peer, peer.get("error")
    _check_fanout_results(peer["results"], "websocket")
    _check_fanout_results(record["results"], "websocket")
    assert record["comparison"]["peer"] == "faye" and record["comparison"]["rows"]


# --------------------------------------------------------------------------- helpers


def test_fanout_helpers() -> None:
    loadgen = bench_module("loadgen")
    fanout = bench_module("fanout")
    for n, k in ((50, 10), (19000, 1900), (7, 7), (10, 1), (3, 0)):
        hot = [i for i in range(n) if loadgen.is_hot(i, k, n)]
        assert len(hot) == k
        if k > 1:  # evenly spread, not bunched at the start
            assert hot[-1] >= n - n // k - 1
    # Every hot event's latency goes into the generator's fanout histograms.
    stats = loadgen.Stats()
    for v in range(1, 101):
        stats.fanout_ns.append(v * 1_000_000)  # as the hot path does
    line = json.loads(json.dumps(stats.histograms(total=True)))
    s = fanout.summary_with_hist(fanout.aggregate([line])["hists"].get("fanout"))
    assert s["count"] == 100 and s["clamped"] == 0
    exact = (50.0, 90.0, 99.0, 100.0)  # nearest rank; HdrHistogram keeps 3 digits
    assert (s["p50"], s["p90"], s["p99"], s["max"]) == pytest.approx(exact, rel=1e-3)
    assert fanout.summary_with_hist(None)["count"] == 0


def test_cluster_scenario_single_and_two_workers(tmp_path: Path) -> None:
    """bench/cluster.py: fan-out on one process and on 2 workers over a real
    Redis, every message delivered in each configuration."""
    if shutil.which("redis-server") is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is missing (CI installs it)")
        pytest.skip("redis-server is not installed")
    done = subprocess.run(
        [
            sys.executable,
            str(BENCH / "cluster.py"),
            "--workers",
            "2",
            "--clients",
            "40",
            "--subscribers",
            "8",
            "--messages",
            "10",
            "--rate",
            "20",
            "--results-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (record_path,) = tmp_path.glob("cluster-*.json")
    runs = json.loads(record_path.read_text())["results"]["configurations"]
    assert set(runs) == {"single process", "2 workers + redis"}
    for name, result in runs.items():
        assert result["all_delivered"], name
        assert result["delivered"] == 8 * 10, name
        assert result["latency_ms"]["p50"] > 0, name


def test_history_bench_measures_both_modes_and_memory(tmp_path: Path) -> None:
    """bench/history.py at a tiny size: both fan-outs delivered everything,
    and memory per retained message is at least the message itself."""
    cmd = [
        sys.executable, str(BENCH / "history.py"), "--clients", "50", "--subscribers", "50",
        "--messages", "20", "--rate", "50", "--repeats", "1", "--channels", "5", "--size", "10",
        "--results-dir", str(tmp_path),
    ]  # fmt: skip
    _, record = _run_for_record(cmd, tmp_path, "history-*.json", timeout=240)
    cost = record["results"]["cost"]
    assert all(r["all_delivered"] for mode in ("off", "on") for r in cost["runs"][mode])
    memory = record["results"]["memory"]
    local = memory["in_process"]
    assert local["messages"] == 50
    assert local["total_bytes_each"] > local["message_bytes_each"] > 100
    assert memory["redis"]["redis_used_memory_each"] > 0
