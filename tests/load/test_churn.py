"""The churn scenario of the load tool (engine/load/churn.py) end to end, at
tiny sizes, against real engine server processes: reconnect storms over
long-polling and WebSocket (handshakes happen, no session is left behind), the
restart phase (every client back, re-handshaked, none lost; the server the
scenario started, or one given by --url with --restart-command), and bad input
(a URL that is not a Bayeux server: a clear error, exit 1).

They check counts, never how fast anything is.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from harness import ROOT, free_port

CHURN = [sys.executable, "-m", "engine.load.churn"]


def churn(results: Path, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [*CHURN, *args, "--no-progress", "--results-dir", str(results)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def record(results: Path, proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    found = sorted(results.glob("churn-*.json"))
    assert len(found) == 1, found
    rec: dict[str, Any] = json.loads(found[0].read_text())
    assert rec["scenario"] == "churn"
    return rec


STORM = ("--rounds", "1", "--duration", "1", "--warmup", "0.3", "--max-interval", "1000")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("transport", ["long-polling", "websocket"])
def test_storm_handshakes_and_no_leak(tmp_path: Path, transport: str) -> None:
    proc = churn(
        tmp_path,
        "--transport",
        transport,
        "--clients",
        "10",
        *STORM,
        "--abandon",
        "0.2",
        "--restart-clients",
        "0",
        "--check",
    )
    r = record(tmp_path, proc)["results"]
    assert "handshakes / s" in proc.stdout
    assert r["transport"] == transport and r["restart"] is None
    assert r["errors_total"] == 0, r["errors"]
    (rd,) = r["rounds"]
    assert rd["handshakes"] > 0 and rd["cycles"] > 0
    # every cycle ends by a disconnect or is abandoned (the session expires)
    assert rd["disconnects"] > 0 and rd["abandoned"] > 0
    assert rd["disconnects"] + rd["abandoned"] == rd["cycles"]
    # latencies from the end of the warm-up on: every handshake of the window,
    # every cycle's first connect but the 10 (one a client) begun before it
    assert rd["handshake_ms"]["count"] >= rd["handshakes"]
    assert rd["handshake_to_connect_ms"]["count"] >= rd["cycles"] - 10
    # the server's sessions return to the baseline: nothing leaks
    assert r["sessions_at_start"] == 0
    assert rd["sessions_settled"] == r["sessions_settled"] == 0
    assert rd["server_cpu_s"] > 0 and r["rss_baseline_bytes"] > 0


@pytest.mark.timeout(120)
@pytest.mark.parametrize("transport", ["long-polling", "websocket"])
def test_restart_every_client_back(tmp_path: Path, transport: str) -> None:
    proc = churn(
        tmp_path,
        "--transport",
        transport,
        "--clients",
        "5",
        "--rounds",
        "1",
        "--duration",
        "0.5",
        "--warmup",
        "0.2",
        "--restart-clients",
        "12",
        "--restart-backoff-ms",
        "200",
        "--check",
    )
    rs = record(tmp_path, proc)["results"]["restart"]
    assert rs["connected_before"] == 12
    assert rs["reconnected"] == 12 and rs["lost"] == 0 and rs["gave_up"] == 0
    # the restarted server knows none of the sessions: each client followed
    # its 402 session_unknown / reconnect: handshake advice
    assert rs["rehandshaked"] == 12
    assert rs["errors"].get("connect:402::session_unknown", 0) >= 12
    assert rs["sessions_after"] == 12
    ms = rs["reconnect_ms"]
    assert ms["count"] == 12
    assert 0 < ms["p50"] <= ms["p99"] <= ms["max"]
    assert rs["all_back_after_s"] is not None
    assert "restart: back / re-handshaked / lost" in proc.stdout


RESTART_SCRIPT = """#!/bin/sh
# Stops the engine whose pid is in {pidfile} (if any) and starts it again.
if [ -f {pidfile} ]; then
    kill $(cat {pidfile})
    while kill -0 $(cat {pidfile}) 2>/dev/null; do sleep 0.05; done
fi
{python} -m engine serve --host 127.0.0.1 --port {port} --path /cometd --timeout 2000 \\
    --admin-token T --max-interval 1000 >>{log} 2>&1 &
echo $! > {pidfile}
# ready once it answers
for i in $(seq 1 200); do
    {python} -c "import socket; socket.create_connection(('127.0.0.1', {port}), 0.2)" \\
        2>/dev/null && exit 0
    sleep 0.05
done
exit 1
"""


@pytest.mark.timeout(150)
def test_url_restart_command_and_skip(tmp_path: Path) -> None:
    port = free_port()
    pidfile, script = tmp_path / "server.pid", tmp_path / "restart.sh"
    script.write_text(
        RESTART_SCRIPT.format(
            pidfile=pidfile, python=sys.executable, port=port, log=tmp_path / "server.log"
        )
    )
    script.chmod(0o755)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    subprocess.run([str(script)], cwd=ROOT, env=env, check=True, timeout=30)
    url = f"http://127.0.0.1:{port}/cometd"
    try:
        common = ("--url", url, "--admin-token", "T", "--clients", "5", *STORM)
        skipped = churn(tmp_path / "a", *common, "--restart-clients", "5")
        r = record(tmp_path / "a", skipped)["results"]
        assert r["sessions_settled"] == 0 and r["errors_total"] == 0
        assert "no --restart-command" in r["restart"]["skipped"]
        first_pid = int(pidfile.read_text())

        proc = churn(
            tmp_path / "b",
            *common,
            "--restart-clients",
            "8",
            "--restart-backoff-ms",
            "200",
            "--restart-command",
            str(script),
            "--check",
        )
        rs = record(tmp_path / "b", proc)["results"]["restart"]
        assert int(pidfile.read_text()) != first_pid  # it was restarted
        assert rs["how"].startswith("--restart-command")
        assert rs["reconnected"] == 8 and rs["rehandshaked"] == 8 and rs["lost"] == 0
        assert rs["sessions_after"] == 8
    finally:
        if pidfile.exists():
            pid = int(pidfile.read_text())
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            else:
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    try:
                        os.kill(pid, 0)
                    except ProcessLookupError:
                        break
                    time.sleep(0.05)


@pytest.mark.timeout(60)
def test_not_a_bayeux_server(tmp_path: Path) -> None:
    """A plain HTTP server, and a port nobody listens on: exit 1, one clear line."""
    port = free_port()
    web = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:  # bounded: until it answers, 10 s at most
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "http.server did not start"
                time.sleep(0.1)
        proc = churn(tmp_path, "--url", f"http://127.0.0.1:{port}/cometd", "--clients", "2")
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "is not a Bayeux server" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
    finally:
        web.terminate()
        web.wait(10)
    proc = churn(tmp_path, "--url", f"http://127.0.0.1:{free_port()}/cometd", "--clients", "2")
    assert proc.returncode == 1 and "cannot reach" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list(tmp_path.glob("churn-*.json"))  # no record of a run that did not run
