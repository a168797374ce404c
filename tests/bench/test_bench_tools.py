"""Smoke tests of bench/micro.py, bench/churn.py, bench/bound.py (with
engine/load/bare_server.py and engine/load/cycler.py) and the report of their
records, at tiny sizes, into a temporary results directory.

They check that each tool runs, writes its record and that the numbers are
sane (positive, consistent, no errors, sessions back to 0), never how fast
anything is.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
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


@pytest.mark.timeout(60)
def test_report_of_the_tools_records(results: Path, tmp_path: Path) -> None:
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


def test_http_client_parses_split_responses() -> None:
    """bound.py's lean HTTP client: responses cut anywhere, several per read."""
    from engine.load import cycler as churn

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
