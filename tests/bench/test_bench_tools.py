"""Smoke tests of bench/micro.py, bench/churn.py, bench/bound.py (with
bench/bound_server.py and bench/bound_client.py) and bench/report, at tiny sizes, into a temporary
results directory.

They check that each tool runs, writes its record and that the numbers are
sane (positive, consistent, no errors, sessions back to 0), never how fast
anything is.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from bench_support import bench_module
from harness import ROOT

BENCH = ROOT / "bench"


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    out = f"{proc.stdout}\n{proc.stderr}"
    assert proc.returncode == 0, f"{args[0]} exited {proc.returncode}:\n{out}"
    return proc


def _record(results: Path, scenario: str) -> dict[str, Any]:
    found = sorted(results.glob(f"{scenario}-*.json"))
    assert len(found) == 1, found
    rec = json.loads(found[0].read_text())
    assert rec["scenario"] == scenario
    for key in ("machine", "parameters", "results", "timestamp", "command"):
        assert key in rec
    return rec


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bench-results")


@pytest.mark.timeout(60)
def test_api_publish(results: Path) -> None:
    proc = _run(
        [
            str(BENCH / "api_publish.py"),
            "--messages",
            "50",
            "--repeats",
            "1",
            "--concurrency",
            "4",
            "--results-dir",
            str(results),
        ],
        timeout=50,
    )
    assert "publishes/s" in proc.stdout
    rec = _record(results, "api-publish")
    for mode in ("sync", "async"):
        assert rec["results"][mode]["publishes_per_s"] > 0
        assert rec["runs"][mode][0]["delivered"] == 50  # every publish arrived


@pytest.mark.timeout(60)
def test_micro(results: Path) -> None:
    proc = _run(
        [
            str(BENCH / "micro.py"),
            "--repeats",
            "2",
            "--target",
            "0.005",
            "--queries",
            "32",
            "--compare",
            "1k",
            "--scaling",
            "500,5k",
            "--depths",
            "2,8",
            "--depth-subscriptions",
            "1000",
            "--batch-sizes",
            "1,10",
            "--frame-sizes",
            "64,1024",
            "--quiet",
            "--results-dir",
            str(results),
        ],
        timeout=50,
    )
    assert "pure/compiled" in proc.stdout
    r = _record(results, "micro")["results"]
    ch = r["channels"]
    twins = [ch["validate"], *ch["match"], *r["batch"], *r["wsframe"]]
    assert len(ch["match"]) == 1 and len(r["batch"]) == 6 and len(r["wsframe"]) == 6
    for t in twins:
        assert t["compiled_ns"] > 0 and t["pure_ns"] > 0 and t["ratio"] > 0, t
    assert [s["subscriptions"] for s in ch["scaling"]] == [500, 5000]
    for s in ch["scaling"]:
        assert s["match_ns"] > 0 and s["mean_matches"] >= 1  # "/**" matches everything
    assert [d["depth"] for d in ch["depth"]["rows"]] == [2, 8]
    assert ch["scaling_summary"]["subscriptions_factor"] == 10


@pytest.mark.timeout(60)
def test_churn(results: Path) -> None:
    proc = _run(
        [
            str(BENCH / "churn.py"),
            "--clients",
            "20",
            "--duration",
            "1.5",
            "--rounds",
            "2",
            "--warmup",
            "0.3",
            "--max-interval",
            "1000",
            "--abandon",
            "0.2",
            "--no-progress",
            "--results-dir",
            str(results),
        ],
        timeout=55,
    )
    assert "handshakes / s" in proc.stdout
    rec = _record(results, "churn")
    r = rec["results"]
    assert r["errors_total"] == 0, r["errors"]
    assert r["sessions_at_start"] == 0
    assert r["sessions_settled"] == 0  # disconnected or expired: nothing leaks
    assert len(r["rounds"]) == 2
    for rd in r["rounds"]:
        assert rd["handshakes"] > 0 and rd["cycles"] > 0
        assert rd["disconnects"] + rd["abandoned"] >= rd["cycles"] > 0
        assert rd["sessions_settled"] == 0
        assert rd["rss_settled_bytes"] > 0 and rd["server_cpu_s"] >= 0
    assert r["handshakes_per_s"] > 0
    assert r["rss_baseline_bytes"] > 0
    assert "TOKEN" in rec["parameters"]["server_cmd"]  # the secret is not stored


@pytest.mark.timeout(60)
def test_bound(results: Path) -> None:
    proc = _run(
        [
            str(BENCH / "bound.py"),
            "--clients",
            "20",
            "--duration",
            "1",
            "--warmup",
            "0.3",
            "--repeats",
            "1",
            "--no-progress",
            "--results-dir",
            str(results),
        ],
        timeout=55,
    )
    assert "fraction engine / bound" in proc.stdout
    r = _record(results, "bound")["results"]
    assert r["engine_cycles_per_s"] > 0 and r["bound_requests_per_s"] > 0
    assert r["fraction"] > 0
    assert r["cpu_fraction"] is None or r["cpu_fraction"] > 0
    assert r["engine"]["errors"] == 0 and r["bound"]["errors"] == 0
    assert {p["server"] for p in r["phases"]} == {"engine", "bound"}
    for p in r["phases"]:
        assert p["clients_ready"] == 20 and p["requests"] > 0 and not p["setup_errors"]


def _fake(scenario: str, transport: str, n: int, engine: dict, faye: dict) -> dict[str, Any]:
    return {
        "scenario": scenario,
        "timestamp": f"20260101T0000{n % 60:02d}Z",
        "started_at": 1.0e9 + n,
        "machine": {"cpu_count": 2, "packages": {"engine": "0"}},
        "command": [sys.executable, str(BENCH / f"{scenario}.py"), "--clients", str(n)],
        "parameters": {"clients": n, "subscribers": n // 10, "rate": 50, "transport": transport},
        "results": engine,
        "peer": {"name": "faye", "results": faye},
    }


@pytest.mark.timeout(60)
def test_report(results: Path, tmp_path: Path) -> None:
    # Runs after the three tools above (file order); works on whatever they left.
    md, png = tmp_path / "REPORT.md", tmp_path / "report.png"
    proc = _run(
        [
            "-m",
            "engine.load.report",
            "--results-dir",
            str(results),
            "--markdown",
            str(md),
            "--chart",
            str(png),
        ],
        timeout=50,
    )
    text = md.read_text()
    assert "# Benchmark report" in text
    names = {p.name.split("-")[0] for p in results.glob("*.json")}
    titles = {
        "micro": "## Compiled vs pure Python",
        "churn": "## Churn",
        "bound": "## Long-polling cycles against the bound",
    }
    for scenario, title in titles.items():
        if scenario in names:
            assert title in text
            assert f"bench/{scenario}.py" in text  # the command that reproduces it
    assert "chart: none" in proc.stdout  # no idle/fanout records there

    # Idle and fan-out records (made up here) give the chart and the Faye columns.
    pytest.importorskip("matplotlib")
    fake_dir = tmp_path / "fake"
    fake_dir.mkdir()
    for i, n in enumerate((200, 2000)):
        for transport in ("long-polling", "websocket"):
            idle = _fake(
                "idle",
                transport,
                n,
                {"bytes_per_client": 1500.0 + i, "connected": n},
                {"bytes_per_client": 16000.0},
            )
            lat = {"p50": 2.0 + i, "p90": 5.0, "p99": 9.0, "max": 20.0}
            fan = _fake(
                "fanout",
                transport,
                n,
                {
                    "latency_ms": lat,
                    "latency_at": "arrival",
                    "read_latency_ms": {"p99": 33.3 + i},
                    "delivered_fraction": 1.0,
                    "delivered_per_s": 100,
                },
                {"latency_ms": {**lat, "p99": 900.0}, "delivered_fraction": 0.5},
            )
            for rec in (idle, fan):
                path = fake_dir / f"{rec['scenario']}-{transport}-{n}.json"
                path.write_text(json.dumps(rec))
    # An idle run over 4 workers + redis with a fan-out: its own section,
    # not the single-process table nor the targets.
    cluster = _fake(
        "idle",
        "websocket",
        60000,
        {
            "connected": 60000,
            "failed": 0,
            "dropped": 3,
            "hold_seconds": 65.0,
            "timeout_cycles": 2.17,
            "bytes_per_client": 2600.0,
            "rss_loaded_bytes": 300 * 2**20,
            "redis_rss_loaded_bytes": 12 * 2**20,
            "server_cpu_percent_hold": 9.5,
            "server_cpu_machine_share_hold": 0.0475,
            "heartbeat_lateness_ms": {"hold": {"p50": -1412.5, "p99": 42.2}},
            "fanout": {
                "delivered": 3000,
                "expected": 3000,
                "complete": True,
                "latency_ms": {"p50": 3.1, "p99": 12.5, "max": 20.0},
            },
            "ramp_rate_achieved": 1500.0,
            "held_cleanly": True,
        },
        {},
    )
    del cluster["peer"]
    cluster["parameters"]["workers"] = 4
    (fake_dir / "idle-websocket-60000-w4.json").write_text(json.dumps(cluster))
    (fake_dir / "broken.json").write_text("{not json")
    md2, png2 = tmp_path / "R2.md", tmp_path / "r2.png"
    proc = _run(
        [
            "-m",
            "engine.load.report",
            "--results-dir",
            str(fake_dir),
            "--markdown",
            str(md2),
            "--chart",
            str(png2),
        ],
        timeout=50,
    )
    assert "skipped" in proc.stderr  # the broken file, not a crash
    assert png2.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = md2.read_text()
    assert "## Idle clients" in text and "## Fan-out" in text and "](r2.png)" in text
    assert "16,000" in text and "0.09" in text  # Faye's bytes per client, the ratio
    section = text.split("## Idle clients over several workers")[1].split("\n## ")[0]
    assert "| websocket | 60,000 | 4 | 60,000 / 0 / 3 (0.01 %) |" in section
    # timed when read (a record without latency_at): marked so
    assert "-1,412 / 42" in section and "| 3.1 / 12.5 / 20.0 (read) |" in section
    assert "3,000 / 3,000 complete" in section and "300 / 12.0" in section
    assert "60,000" not in text.split("## Idle clients\n")[1].split("\n## ")[0]
    assert "idle websocket, 2,000 clients" in text  # the target stays on the Faye record
    fan_section = text.split("## Fan-out")[1].split("\n## ")[0]
    assert "engine read p99" in fan_section
    assert "| 2.0 / 5.0 / 9.0 / 20.0 | 33.3 |" in fan_section  # arrival, then read p99


def test_http_client_parses_split_responses() -> None:
    """bound.py's lean HTTP client: responses cut anywhere, several per read."""
    spec = importlib.util.spec_from_file_location("bound_client", BENCH / "bound_client.py")
    assert spec is not None and spec.loader is not None
    churn = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(churn)

    class Transport:
        def __init__(self) -> None:
            self.sent: list[bytes] = []

        def write(self, data: bytes) -> None:
            self.sent.append(data)

        def is_closing(self) -> bool:
            return False

        def close(self) -> None:
            pass

    body = b'[{"channel":"/meta/connect","successful":true}]'
    resp = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)

    async def main() -> None:
        stats = churn.Stats()
        conn = churn.HttpConn(stats)
        t = Transport()
        conn.connection_made(t)  # type: ignore[arg-type]
        fut = conn.request(b"GET / HTTP/1.1\r\n\r\n", 5.0)
        for i in range(len(resp)):  # one byte at a time
            conn.data_received(resp[i : i + 1])
        status, head, got = await fut
        assert (status, got) == (200, body) and head.startswith(b"HTTP/1.1 200")
        conn.start_loop(b"REQ", lambda *a: pytest.fail(f"left the loop: {a}"))
        conn.data_received(resp * 3 + resp[:10])
        conn.data_received(resp[10:])
        assert t.sent.count(b"REQ") == 1 + 4 and stats.responses == 5
        failures: list[str] = []
        conn.start_loop(b"REQ", lambda c, kind, b: failures.append(kind))
        conn.data_received(b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n")
        assert failures == ["http_500"] and conn.loop_req is None

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_line_child_and_bad_template() -> None:
    """common.LineChild, the handle of every helper process: its JSON lines,
    words on its stdin, its stderr kept, stop; and a malformed server command
    template is a clean ServerStartError, not a traceback."""
    common = bench_module("procs")

    script = (
        "import json, sys\n"
        "print(json.dumps({'type': 'hello'}), flush=True)\n"
        "print('not json', flush=True)\n"
        "while line := sys.stdin.readline():\n"
        "    print(json.dumps({'type': 'got', 'word': line.strip()}), flush=True)\n"
        "    print('note', file=sys.stderr, flush=True)\n"
    )

    class Echo(common.LineChild):
        def __init__(self) -> None:
            super().__init__([sys.executable, "-c", script], "echo", echo=False)
            self.got: list[dict[str, Any]] = []

        def on_line(self, d: dict[str, Any]) -> None:
            self.got.append(d)

    async def main() -> None:
        guard = common.ChildGuard()
        child = Echo()
        try:
            await child.start(guard)
            child.send("ping")
            for _ in range(500):  # bounded: 5 s
                if len(child.got) >= 2:
                    break
                await asyncio.sleep(0.01)
            await child.stop(5.0)  # "stop", then end of file: it answers and exits
        finally:
            guard.kill_all()
        assert [(d["type"], d.get("word")) for d in child.got] == [
            ("hello", None),
            ("got", "ping"),
            ("got", "stop"),
        ]
        assert child.stderr_tail == ["note", "note"] and not child.alive()

    asyncio.run(main())

    with pytest.raises(common.ServerStartError, match="bad server command template"):
        common.ServerProcess(
            "{python} -m engine serve --port {port} --oops {nope}",
            host="127.0.0.1",
            port=1,
            path="/cometd",
            timeout_ms=1000,
            guard=common.ChildGuard(),
        )


@pytest.mark.timeout(30)
def test_other_server_command_runs_its_own_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A --server-cmd that does not start with {python} is another checkout's
    server: the bench's own repository (its working directory) must not
    shadow that checkout's `engine` package (an A/B would compare one
    version with itself)."""
    common = bench_module("procs")
    other = tmp_path / "other" / "engine"
    other.mkdir(parents=True)
    (other / "__init__.py").write_text("")
    (other / "__main__.py").write_text(
        "import sys, time\n"
        "print('other engine', __file__, flush=True)\n"
        "print('http://127.0.0.1:' + sys.argv[1] + '/cometd', flush=True)\n"
        "time.sleep(30)\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "other"))

    async def main() -> list[str]:
        guard = common.ChildGuard()
        server = common.ServerProcess(
            f"{sys.executable} -m engine {{port}}",
            host="127.0.0.1",
            port=1234,
            path="/cometd",
            timeout_ms=1000,
            guard=guard,
        )
        try:
            await server.start(10.0)
            return list(server.lines)
        finally:
            await server.stop(1.0)
            guard.kill_all()

    lines = asyncio.run(main())
    assert any(line.startswith("other engine " + str(other)) for line in lines), lines


def test_generator_processes_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """--procs: one generator per CPU the server leaves over, more only when
    the open-files limit needs them; an explicit --procs wins."""
    import argparse
    import resource

    idle = bench_module("idle")
    monkeypatch.setattr(resource, "getrlimit", lambda _: (20000, 20000))

    def procs(clients: int, cpus: int, workers: int | None = None, given: int | None = None) -> int:
        monkeypatch.setattr(idle.os, "cpu_count", lambda: cpus)
        args = argparse.Namespace(
            clients=clients,
            procs=given,
            workers=workers,
            source_addrs=None,
            ramp_timeout=None,
            ramp_rate=1000.0,
        )
        idle.resolve_generators("idle.py", args)
        return int(args.procs)

    assert procs(19000, cpus=2) == 1  # the server takes one CPU, the generator the other
    assert procs(19000, cpus=8) == 7
    assert procs(19000, cpus=1) == 1
    assert procs(60000, cpus=2) == 4  # 19,900 sockets per generator at most
    assert procs(250000, cpus=2, workers=14) == 13
    assert procs(19000, cpus=2, given=3) == 3
    assert procs(5, cpus=8) == 5  # never more generators than clients
    with pytest.raises(SystemExit, match="open-files limit"):
        procs(40000, cpus=2, given=1)
