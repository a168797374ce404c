"""engine/load/report.py: records -> REPORT.md and its chart; made-up idle,
fan-out and multi-worker records give every section, and every record kept
in bench/results/ still renders."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from harness import ROOT

from engine.load import report


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "engine.load.report", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=50, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _fake(scenario: str, transport: str, n: int, engine: dict, faye: dict) -> dict[str, Any]:
    return {
        "scenario": scenario,
        "timestamp": f"20260101T0000{n % 60:02d}Z",
        "started_at": 1.0e9 + n,
        "machine": {"cpu_count": 2, "packages": {"engine": "0"}},
        "command": [sys.executable, str(ROOT / "bench" / f"{scenario}.py"), "--clients", str(n)],
        "parameters": {"clients": n, "subscribers": n // 10, "rate": 50, "transport": transport},
        "results": engine,
        "peer": {"name": "faye", "results": faye},
    }


@pytest.mark.timeout(60)
def test_report_sections_chart_and_faye_columns(tmp_path: Path) -> None:
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
    proc = _run(["--results-dir", str(fake_dir), "--markdown", str(md2), "--chart", str(png2)])
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


RESULTS = ROOT / "bench" / "results"


def test_every_kept_record_renders(tmp_path: Path) -> None:
    """Each record in bench/results/ is read (none skipped) and lands in the
    report with the command that reproduces it."""
    paths = sorted(RESULTS.glob("*.json"))
    assert paths
    records, problems = report.load(paths)
    assert problems == [] and len(records) == len(paths)
    md = tmp_path / "REPORT.md"
    proc = _run(["--all", "--results-dir", str(RESULTS), "--markdown", str(md), "--no-chart"])
    assert "skipped" not in proc.stderr
    text = md.read_text()
    for rec in records:
        assert report.command_line(rec) in text.replace("\\|", "|"), rec["command"]
        assert rec.get("timestamp", "") in text, rec["command"]


def test_defaults_in_a_checkout() -> None:
    """Run from this checkout, the report reads bench/results/ (elsewhere: the
    current directory); a command recorded as one string still reads back."""
    assert report.build_parser().parse_args([]).results_dir == RESULTS
    rec = {"command": "bench/api_publish.py --messages 5000 --note 'a b'"}
    assert report.command_line(rec) == "python bench/api_publish.py --messages 5000 --note 'a b'"


def test_engine_load_records_render_with_their_labels(tmp_path: Path) -> None:
    """A record of `python -m engine load URL --compare URL2` (servers under
    `targets`, URL2 run first) reads as URL's run with URL2's beside it; it
    stays out of the targets, which compare the engine with Faye."""
    lat = {"p50": 4.0, "p90": 6.0, "p99": 11.5, "max": 30.0}
    params = {"clients": 300, "subscribers": 30, "rate": 20, "transport": "websocket"}
    record = {
        "scenario": "fanout",
        "timestamp": "20260102T030405Z",
        "started_at": 1.7e9,
        "machine": {"cpu_count": 2},
        "command": [sys.executable, "-m", "engine", "load", "http://127.0.0.1:8080/cometd",
                    "--scenario", "fanout", "--compare", "http://127.0.0.1:8000/faye"],
        "complete": True,
        "targets": [
            {"label": "127.0.0.1:8000", "url": "http://127.0.0.1:8000/faye", "server_pid": 2,
             "parameters": params, "results": {"latency_ms": {**lat, "p99": 700.0}}},
            {"label": "127.0.0.1:8080", "url": "http://127.0.0.1:8080/cometd", "server_pid": 1,
             "parameters": params, "results": {"latency_ms": lat, "delivered_fraction": 1.0}},
        ],
    }  # fmt: skip
    (tmp_path / "load-fanout.json").write_text(json.dumps(record))
    md = tmp_path / "REPORT.md"
    proc = _run(["--results-dir", str(tmp_path), "--markdown", str(md), "--no-chart"])
    assert "skipped" not in proc.stderr
    text = md.read_text()
    row = next(line for line in text.splitlines() if "20260102T030405Z" in line)
    assert "| 4.0 / 6.0 / 11.5 / 30.0 |" in row and "700.0" in row  # URL's, then URL2's
    assert "`python -m engine load http://127.0.0.1:8080/cometd --scenario fanout" in row
    assert "## Targets" not in text
