"""`python -m engine load`: the command line against real servers (engine
servers, and small misbehaving servers started here), tiny sizes.

Run with: python -m pytest -q -p no:randomly tests/load/test_cli_load.py
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import ROOT, ServerProcess, free_port, start_server

pytestmark = pytest.mark.timeout(240)

LOAD = [sys.executable, "-m", "engine", "load"]


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), e.get("PYTHONPATH", "")) if p)
    e["PYTHONUNBUFFERED"] = "1"
    return e


def load(*args: str, timeout: float = 180, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*LOAD, *args],
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
def engine_server() -> Iterator[ServerProcess]:
    server = start_server("--timeout", "2000", target="engine")
    yield server
    server.stop()


def records(directory: Path) -> list[dict[str, object]]:
    return [json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))]


@contextlib.contextmanager
def bad_server(tmp_path: Path, behaviour: str) -> Iterator[str]:
    """A TCP server process on a free loopback port that ``behaviour``s each
    connection: "close" (at once) or "silent" (reads, never answers)."""
    port = free_port()
    script = tmp_path / "bad_server.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import socket, time
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", {port}))
            s.listen(64)
            print("ready", flush=True)
            held = []
            end = time.monotonic() + 120  # bounded: it stops by itself
            s.settimeout(1.0)
            while time.monotonic() < end:
                try:
                    c, _ = s.accept()
                except socket.timeout:
                    continue
                if {behaviour!r} == "close":
                    c.close()
                else:
                    held.append(c)
            """
        )
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield f"http://127.0.0.1:{port}/cometd"
    finally:
        proc.kill()
        proc.wait(5)


def assert_clean_error(out: subprocess.CompletedProcess[str], text: str) -> None:
    assert out.returncode == 1, out.stderr
    assert text in out.stderr, out.stderr
    assert "Traceback" not in out.stderr, out.stderr


# --------------------------------------------------------------------------- help


def test_help_names_the_limits() -> None:
    out = load("--help")
    assert out.returncode == 0, out.stderr
    for word in ("--scenario", "--compare", "RLIMIT_NOFILE", "ulimit -n", "--procs", "IP_BIND"):
        assert word in out.stdout
    top = subprocess.run(
        [sys.executable, "-m", "engine", "--help"],
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "load" in top.stdout and "load any Bayeux server" in top.stdout


# --------------------------------------------------------------------------- bad input


def test_plain_http_server_is_not_bayeux(tmp_path: Path) -> None:
    port = free_port()
    http = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # until it listens
            out = load(f"http://127.0.0.1:{port}/", "--clients", "5", "--quiet", timeout=60)
            if "connection refused" not in out.stderr:
                break
            time.sleep(0.2)
        assert_clean_error(out, "is not a Bayeux server")
        assert "HTTP 501" in out.stderr  # http.server has no POST
    finally:
        http.kill()
        http.wait(5)


def test_server_closing_every_connection(tmp_path: Path) -> None:
    with bad_server(tmp_path, "close") as url:
        out = load(url, "--clients", "5", "--quiet", "--results-dir", str(tmp_path), timeout=60)
        assert_clean_error(out, "closed the connection without answering a handshake")
        assert not list(tmp_path.glob("*.json"))


def test_server_answering_slowly_ends_within_its_bound(tmp_path: Path) -> None:
    with bad_server(tmp_path, "silent") as url:
        args = (url, "--clients", "5", "--quiet", "--handshake-timeout", "1")
        out = load(*args, timeout=60)
        assert_clean_error(out, "did not answer a Bayeux handshake within 1 s")


def test_more_clients_than_the_open_files_limit(tmp_path: Path) -> None:
    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (300, 300))

    out = load(
        "http://127.0.0.1:9/cometd",
        "--clients",
        "1000",
        "--procs",
        "1",
        "--quiet",
        preexec_fn=low_limit,
        timeout=60,
    )
    assert_clean_error(out, "RLIMIT_NOFILE")
    assert "ulimit -n" in out.stderr and "--procs 5 or more" in out.stderr


def test_an_option_the_scenario_does_not_take() -> None:
    out = load("http://127.0.0.1:9/cometd", "--scenario", "idle", "--rate", "5", timeout=60)
    assert_clean_error(out, "--rate does not apply to the idle scenario")


def test_non_loopback_url_is_refused_without_yes(tmp_path: Path) -> None:
    # 192.0.2.0/24 is reserved for documentation; nothing is sent before --yes
    out = load("http://192.0.2.10:8080/cometd", "--clients", "3", "--results-dir", str(tmp_path))
    assert_clean_error(out, "add --yes")
    assert "would open 3 websocket sessions to 192.0.2.10" in out.stderr
    assert not list(tmp_path.glob("*.json"))
    # with --yes it still sends nothing: this build's generators are loopback-only
    out = load("http://192.0.2.10:8080/cometd", "--yes", "--results-dir", str(tmp_path))
    assert_clean_error(out, "connect only from 127.0.0.0/8")
    assert not list(tmp_path.glob("*.json"))


# --------------------------------------------------------------------------- runs


def children_of(pid: int) -> set[int]:
    """Every descendant of ``pid`` now (/proc)."""
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat") as f:
                    parents[int(entry.name)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        for child, parent in parents.items():
            if parent == p and child not in found:
                found.add(child)
                todo.append(child)
    return found


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_ctrl_c_writes_a_partial_record_and_leaves_no_child(
    engine_server: ServerProcess, tmp_path: Path
) -> None:
    tool = subprocess.Popen(
        [*LOAD, engine_server.url, "--scenario", "idle", "--clients", "20", "--hold", "60"]
        + ["--timeout", "2000", "--quiet", "--results-dir", str(tmp_path)],
        cwd=ROOT,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        kids: set[int] = set()
        while time.monotonic() < deadline and len(kids) < 1:  # a generator has started
            time.sleep(0.2)
            kids = children_of(tool.pid)
        assert kids, "no generator started"
        time.sleep(2.0)
        kids |= children_of(tool.pid)
        tool.send_signal(signal.SIGINT)
        stdout, stderr = tool.communicate(timeout=60)
    finally:
        if tool.poll() is None:
            tool.kill()
    assert tool.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "the record is partial" in stdout
    [record] = records(tmp_path)
    assert record["complete"] is False and record["interrupted"] is True
    assert record["targets"][0]["url"] == engine_server.url
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not all(gone(p) for p in kids):
        time.sleep(0.1)
    assert all(gone(p) for p in kids), [p for p in kids if not gone(p)]


def test_compare_two_engines_side_by_side(tmp_path: Path) -> None:
    a = start_server("--timeout", "2000", target="engine")
    b = start_server("--timeout", "2000", target="engine")
    try:
        out = load(
            a.url,
            "--scenario",
            "fanout",
            "--clients",
            "30",
            "--subscribers",
            "5",
            "--messages",
            "10",
            "--rate",
            "20",
            "--compare",
            b.url,
            "--name",
            "first",
            "--compare-name",
            "second",
            "--quiet",
            "--results-dir",
            str(tmp_path),
            "--chart",
            str(tmp_path / "chart.png"),
        )
    finally:
        a.stop()
        b.stop()
    assert out.returncode == 0, out.stderr
    assert "--- " not in out.stderr and "engine load:" not in out.stderr  # --quiet
    lines = out.stdout.splitlines()
    title = next(i for i, line in enumerate(lines) if line.startswith("fanout side by side"))
    header = lines[title + 2].split()
    assert header == ["first", "second", "ratio"]
    assert any(line.split()[:5] == ["delivered", "50", "50"] for line in lines[title:])
    [record] = records(tmp_path)
    assert record["complete"] is True
    assert [t["label"] for t in record["targets"]] == ["second", "first"]  # URL2 runs first
    assert [t["server_pid"] for t in record["targets"]] == [b.proc.pid, a.proc.pid]
    assert record["targets"][0]["results"]["delivered"] == 50
    assert record["comparison"]["rows"][0][:3] == ["delivered", "50", "50"]
    assert record["command"][1:4] == ["-m", "engine", "load"]
    assert record["machine"]["cpu_count"] and record["machine"]["packages"]["engine"]
    assert record["targets"][1]["timeline"], "no timeline recorded"
    assert "websocket" in record["targets"][0]["handshake"]["supportedConnectionTypes"]
    assert (tmp_path / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rate_scenario_records_the_curve(engine_server: ServerProcess, tmp_path: Path) -> None:
    out = load(
        engine_server.url,
        "--scenario",
        "rate",
        "--clients",
        "20",
        "--subscribers",
        "4",
        "--rate",
        "10",
        "--rate-factor",
        "2",
        "--step-seconds",
        "1",
        "--max-steps",
        "2",
        "--quiet",
        "--results-dir",
        str(tmp_path),
        "--chart",
        str(tmp_path / "curve.png"),
    )
    assert out.returncode == 0, out.stderr
    [record] = records(tmp_path)
    results = record["targets"][0]["results"]
    steps = results["steps"]
    assert [s["rate"] for s in steps] == [10, 20]
    for s in steps:
        assert s["delivered"] == s["hot_clients"] * s["acked"] == 4 * s["messages"]
        assert s["latency_ms"]["count"] == s["delivered"]  # this step's deliveries only
        assert s["latency_ms"]["p99"] is not None
    assert results["stopped_by"] in ("max-steps", "p99 bound")
    assert "step 20.0/s" in out.stdout
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- live display


def test_live_display_shows_the_current_figures_and_keeps_a_timeline() -> None:
    from rich.console import Console

    from engine.load.histogram import Latency
    from engine.load.live import LiveProgress, latency_now
    from engine.load.records import PROGRESS_HOOKS, Target, progress_event

    def encoded(*ms: float) -> str:
        h = Latency()
        for v in ms:
            h.record_ns(int(v * 1e6))
        return h.encode()

    # the generators' latest lines: the values since each one's previous line
    setup_only = [{"hist": {"setup": encoded(1, 1, 1)}}, {"hist": {"setup": encoded(10)}}]
    # (HdrHistogram at 3 significant digits: the highest value equivalent)
    approx = pytest.approx
    want = {"kind": "setup", "p50": approx(1.0, rel=1e-3), "p90": approx(10.0, rel=1e-3)}
    assert latency_now(setup_only) == {**want, "p99": approx(10.0, rel=1e-3)}
    both = [{"hist": {"setup": encoded(5), "fanout": encoded(2, 3)}}, {}]
    assert latency_now(both) == {
        "kind": "delivery",
        "p50": approx(2.0, rel=1e-3),
        "p90": approx(3.0, rel=1e-3),
        "p99": approx(3.0, rel=1e-3),
    }
    assert latency_now([{}, {}])["kind"] is None

    console = Console(record=True, force_terminal=True, width=120)
    entry: dict[str, object] = {}
    with LiveProgress(quiet=False, clients=40, console=console) as live:
        assert live in PROGRESS_HOOKS
        live.start_target(Target("here", "http://127.0.0.1:1/cometd", None), entry)
        stats = {"connected": 37, "failed": 2, "dropped": 1, "hot_messages": 0}
        progress_event("ramp", stats, setup_only)
    assert live not in PROGRESS_HOOKS
    shown = console.export_text()
    assert "37/40" in shown and "engine load: here, ramp" in shown and "setup" in shown
    assert entry["timeline"] == [live.last] and live.last["failed"] == 2


def test_the_server_pid_of_several_workers_is_their_supervisor() -> None:
    """Workers listening each on its own socket (SO_REUSEPORT): the pid found
    from the port is their supervisor's, so RSS and CPU are the whole tree's."""
    from redis_server import RedisServer

    from engine.load.cli import listening_pid

    with RedisServer() as redis:
        server = start_server("--workers", "2", "--broker", redis.url)
        try:
            assert server.proc is not None
            assert listening_pid(server.port) == server.proc.pid
        finally:
            server.stop()
