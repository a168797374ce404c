"""`python -m engine check`: the whole suite against the engine, the outputs
(text, JUnit XML), --list and --only, and bad servers: one that hangs, one
that answers garbage, none at all, and a non-loopback URL without --yes."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
from conftest import ALL_FEATURES
from harness import ROOT, ServerProcess, free_port

from engine.check import cli, wire
from engine.check.server_checks import CHECKS

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", "check", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@contextmanager
def tcp_server(handler: Handler) -> Iterator[int]:
    """A throwaway asyncio TCP server on loopback in a thread; its port."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = asyncio.run_coroutine_threadsafe(
        asyncio.start_server(handler, "127.0.0.1", 0), loop
    ).result(10)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def test_whole_suite_passes_against_the_engine(engine: ServerProcess, tmp_path: Path) -> None:
    junit = tmp_path / "check.xml"
    done = run_cli(engine.url, *ALL_FEATURES, "--junit", str(junit))
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"engine check {engine.url}")
    assert f"{len(CHECKS)} passed, 0 failed, 0 skipped" in lines[-1]
    for name in CHECKS:
        assert any(line.startswith(f"PASS  {name}  (") for line in lines), name
    root = ET.parse(junit).getroot()
    assert root.tag == "testsuite"
    assert (root.get("tests"), root.get("failures"), root.get("skipped")) == (
        str(len(CHECKS)),
        "0",
        "0",
    )
    cases = root.findall("testcase")
    assert sorted(c.get("name") for c in cases) == sorted(CHECKS)
    assert all(c.find("failure") is None for c in cases)


def test_default_run_skips_the_optional_checks(engine: ServerProcess, tmp_path: Path) -> None:
    junit = tmp_path / "check.xml"
    done = run_cli(engine.url, "--only", "ack.*", "errors.*", "--junit", str(junit))
    assert done.returncode == 0, done.stdout + done.stderr
    skipped = {c.get("name"): c.find("skipped") for c in ET.parse(junit).getroot()}
    assert skipped["ack.negotiated"] is not None
    assert "--ack" in (skipped["ack.negotiated"].get("message") or "")  # type: ignore[union-attr]
    assert skipped["errors.publish_pattern_405"] is not None
    assert skipped["errors.unknown_session_402"] is None


def test_list_and_only(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--list"]) == 0
    listing = capsys.readouterr().out
    for name, check in CHECKS.items():
        assert name in listing and check.rule in listing
    assert [c.name for c in cli.select(["connect.held", "wildcards"])] == [
        "connect.held",
        "wildcards.one_segment",
        "wildcards.deep",
        "wildcards.overlap_once",
    ]
    assert cli.main(["http://127.0.0.1:1/cometd", "--only", "no.such.check"]) == 2
    assert "no check matches no.such.check" in capsys.readouterr().err


def test_feature_flag_and_unoffered_transport_skip(
    engine: ServerProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main([engine.url, "--only", "websocket.handshake", "--no-websocket"]) == 0
    out = capsys.readouterr().out
    assert "SKIP  websocket.handshake" in out and "--no-websocket" in out


def test_nothing_listening_is_exit_2() -> None:
    port = free_port()
    done = run_cli(f"http://127.0.0.1:{port}/cometd", timeout=60)
    assert done.returncode == 2
    assert f"cannot reach http://127.0.0.1:{port}/cometd" in done.stderr
    assert done.stdout == ""


def test_non_loopback_needs_yes_and_sends_nothing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    attempts: list[object] = []

    async def no_network(*args: object, **kwargs: object) -> None:
        attempts.append(args)
        raise AssertionError("a connection was attempted")

    def no_socket(*args: object, **kwargs: object) -> None:
        attempts.append(args)
        raise AssertionError("a socket connection was attempted")

    monkeypatch.setattr(wire.asyncio, "open_connection", no_network)
    monkeypatch.setattr(socket, "create_connection", no_socket)
    assert cli.main(["http://192.0.2.1:8080/cometd"]) == 2
    err = capsys.readouterr().err
    assert "192.0.2.1 is not a loopback address" in err
    assert "--yes" in err and "/check/" in err and "Bayeux sessions" in err
    assert attempts == []


def test_hanging_server_fails_each_check_in_bounded_time(tmp_path: Path) -> None:
    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        await asyncio.sleep(60)

    junit = tmp_path / "hang.xml"
    with tcp_server(hang) as port:
        start = time.monotonic()
        code = cli.main(
            [
                f"http://127.0.0.1:{port}/cometd",
                *ALL_FEATURES,
                "--check-timeout",
                "0.5",
                "--junit",
                str(junit),
            ]
        )
        took = time.monotonic() - start
    assert code == 1
    assert took < 0.5 * len(CHECKS) + 60  # each check ends on its own timeout
    cases = ET.parse(junit).getroot().findall("testcase")
    assert len(cases) == len(CHECKS)
    failed = [c for c in cases if c.find("failure") is not None]
    skipped = [c for c in cases if c.find("skipped") is not None]
    assert len(failed) + len(skipped) == len(CHECKS)
    assert len(failed) > len(CHECKS) // 2
    # Checks that wait out connect holds are skipped: the unknown hold (30 s) exceeds the cap.
    assert {c.get("name") for c in skipped} == {n for n, c in CHECKS.items() if c.holds}


@pytest.mark.parametrize("body", [b"hello, not json", b'{"not": "bayeux"}', b"[1, 2]"])
def test_garbage_server_fails_the_checks(
    body: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(1000):
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            length = [
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ]
            await reader.readexactly(length[0] if length else 0)
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            await writer.drain()

    junit = tmp_path / "garbage.xml"
    with tcp_server(garbage) as port:
        code = cli.main(
            [
                f"http://127.0.0.1:{port}/cometd",
                *ALL_FEATURES,
                "--check-timeout",
                "5",
                "--junit",
                str(junit),
            ]
        )
    assert code == 1
    cases = ET.parse(junit).getroot().findall("testcase")
    passed = [
        c.get("name") for c in cases if c.find("failure") is None and c.find("skipped") is None
    ]
    # Only the checks of HTTP status and Content-Type alone can pass: this
    # server gets those right.
    assert set(passed) <= {"errors.failure_http_200", "long_polling.content_type"}
    # A failure carries the wire exchange: what was sent, what came back.
    handshake = next(c for c in cases if c.get("name") == "handshake.reply")
    wire_log = handshake.findtext("system-out") or ""
    assert "> [b1.1] POST /cometd" in wire_log and "< [b1.1] 200" in wire_log
    assert "probe handshake failed" in capsys.readouterr().out


def test_default_engine_reads_its_advice(tmp_path: Path) -> None:
    """Against the engine with default options (30 s holds) and a 20 s cap,
    the checks that wait out a hold SKIP, saying why, and the rest PASS."""
    from harness import start_server

    server = start_server(target="engine")
    try:
        junit = tmp_path / "default.xml"
        code = cli.main([server.url, "--check-timeout", "20", "--junit", str(junit)])
    finally:
        server.stop()
    assert code == 0
    skipped = {
        str(c.get("name")): c.find("skipped").get("message", "")  # type: ignore[union-attr]
        for c in ET.parse(junit).getroot().findall("testcase")
        if c.find("skipped") is not None
    }
    waits = {n for n, c in CHECKS.items() if c.holds}
    optional = {n for n, c in CHECKS.items() if c.feature in ("strict", "ack", "timesync")}
    assert set(skipped) == waits | optional
    for name in waits:
        assert "30 s connect hold" in skipped[name] and "--check-timeout 20" in skipped[name]


def test_client_flag_hands_over_to_the_client_judge(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    import engine.check

    calls: list[list[str]] = []
    judge = types.ModuleType("engine.check.client_judge")
    judge.main = lambda argv: calls.append(argv) or 0  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "engine.check.client_judge", judge)
    monkeypatch.setattr(engine.check, "client_judge", judge, raising=False)
    assert cli.main(["--client", "--port", "9000"]) == 0
    assert calls == [["--port", "9000"]]


def test_console_script_and_python_m_list_the_checks() -> None:
    """`bayeux-check` (installed beside this interpreter) and `python -m engine
    check` take the process's own argv."""
    script = Path(sys.executable).parent / "bayeux-check"
    for argv in ([str(script), "--list"], [sys.executable, "-m", "engine", "check", "--list"]):
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        assert out.returncode == 0, out.stderr
        assert "handshake.reply" in out.stdout
