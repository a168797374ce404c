"""Smoke tests of the bench over TLS: ``bench/idle.py --compare-tls`` (the plain
run, then the same over https:// and wss://, trustme certificates made by the
scenario) at 20 clients over both transports, ``bench/loadgen.py`` alone
against a TLS engine (certificate verified against ``--ca-file``, refused
without it), and the option refusals.

They check that the TLS path of the generator works and that the numbers are
sane, never how fast anything is.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bench_support import bench_module, idle_command
from harness import ROOT, pid_alive

pytest.importorskip("trustme")

BENCH = ROOT / "bench"
IDLE = BENCH / "idle.py"
LOADGEN = ["-m", "engine.load.client"]

CLIENTS = 20


@pytest.mark.timeout(90)
@pytest.mark.parametrize("transport", ["long-polling", "websocket"])
def test_idle_compare_tls(tmp_path: Path, transport: str) -> None:
    cmd = idle_command(tmp_path, transport, CLIENTS, "--compare-tls")
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=85)
    output = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 0, output
    records = sorted(tmp_path.glob(f"idle-{transport}-{CLIENTS}-tls-*.json"))
    assert len(records) == 1 and str(records[0]) in proc.stdout, output
    for title in ("-- plain", "-- TLS", "plain vs TLS", "TLS/plain"):
        assert title in proc.stdout, output
    record: dict[str, Any] = json.loads(records[0].read_text())

    # One record: the TLS run at the top level, the plain run beside it.
    p, r = record["parameters"], record["results"]
    plain = record["plain"]
    assert p["tls"] is True and p["compare_tls"] is True
    assert "tls" not in plain["parameters"]
    assert p["url"].startswith("https://127.0.0.1:")
    assert plain["parameters"]["url"].startswith("http://127.0.0.1:")
    assert "--ssl-certfile" in p["server_cmd"] and "--ssl-keyfile" in p["server_cmd"]
    assert "--ssl-certfile" not in plain["parameters"]["server_cmd"]
    for res in (plain["results"], r):
        assert res["connected"] == CLIENTS, res["errors"]
        assert res["dropped"] == 0 and res["failed"] == 0, res["errors"]
        assert res["connect_cycles"] > 0
        assert res["bytes_per_client"] is not None
        assert res["server_pid"] and not pid_alive(res["server_pid"])

    # Every client went through a TLS handshake, verified against the run's CA.
    tls = r["tls"]
    assert tls["handshakes"] >= CLIENTS and tls["errors"] == 0
    assert tls["version"] in ("TLSv1.2", "TLSv1.3") and tls["cipher"]
    assert tls["key_type"].startswith("ECDSA")
    assert "tls" not in plain["results"]
    assert r["counters"]["tls_handshakes"] == tls["handshakes"]
    assert plain["results"]["counters"]["tls_handshakes"] == 0

    cmp = record["tls_comparison"]
    assert cmp["baseline"] == "plain"
    assert cmp["bytes_per_client_plain"] == plain["results"]["bytes_per_client"]
    assert cmp["bytes_per_client_tls"] == r["bytes_per_client"]
    labels = [row[0] for row in cmp["rows"]]
    assert "bytes per idle client" in labels and "server CPU during ramp, s" in labels


def test_tls_refusals() -> None:
    for extra, why in (
        (["--tls", "--peer", "faye"], "does not take --peer"),
        (["--compare-tls", "--peer", "faye"], "does not take --peer"),
        (["--tls", "--fanout-fraction", "0.1"], "does not take --fanout-fraction"),
        (["--compare-tls", "--fanout-fraction", "0.1"], "does not take --fanout-fraction"),
        (["--tls", "--url", "https://127.0.0.1:9/cometd"], "does not take --url"),
    ):
        proc = subprocess.run(
            [sys.executable, str(IDLE), "--clients", "10", *extra],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert proc.returncode == 1, (extra, proc.stderr)
        assert why in proc.stderr, (extra, proc.stderr)
    proc = subprocess.run(
        [sys.executable, *LOADGEN, "--url", "http://127.0.0.1:9/cometd", "--clients", "1",
         "--ca-file", "ca.pem"],
        capture_output=True,
        text=True,
        timeout=30,
    )  # fmt: skip
    assert proc.returncode != 0 and "--ca-file needs an https://" in proc.stderr
    idle = bench_module("idle")
    assert idle.tls_url("https://127.0.0.1:1/cometd", "websocket") == "wss://127.0.0.1:1/cometd"
    assert idle.tls_url("https://127.0.0.1:1/cometd", "long-polling") == (
        "https://127.0.0.1:1/cometd"
    )


@pytest.fixture
def tls_engine(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A TLS engine on a free port: (its https:// URL, the CA file)."""
    idle = bench_module("idle")
    cert, ca, _ = idle.make_tls_files(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path / "server.log", "w+b")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--timeout", "1000", "--ssl-certfile", str(cert), "--ssl-keyfile", str(cert)],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while b"engine serving https://" not in (tmp_path / "server.log").read_bytes():
            assert proc.poll() is None and time.monotonic() < deadline, (
                tmp_path / "server.log"
            ).read_text()
            time.sleep(0.05)
        yield f"https://127.0.0.1:{port}/cometd", ca
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


def _loadgen_final(url: str, transport: str, *extra: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, *LOADGEN, "--url", url, "--clients", "3", "--transport", transport,
         "--duration", "2.5", "--report-interval", "10", "--max-attempts", "1", *extra],
        capture_output=True,
        text=True,
        timeout=30,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    final = [d for d in lines if d.get("final")]
    assert len(final) == 1, proc.stdout
    return final[0]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", ["long-polling", "websocket"])
def test_loadgen_verifies_the_server_certificate(
    tls_engine: tuple[str, Path], transport: str
) -> None:
    url, ca = tls_engine
    if transport == "websocket":
        url = "wss://" + url[len("https://") :]
    ok = _loadgen_final(url, transport, "--ca-file", str(ca))
    assert ok["tls"] is True and ok["latency_at"] == "read"
    assert ok["connected"] == 3 and ok["failed"] == 0, ok["errors"]
    assert ok["tls_handshakes"] == 3 and ok["tls_errors"] == 0
    assert ok["tls_version"] in ("TLSv1.2", "TLSv1.3")
    # Without the CA the system's CAs do not know the certificate: refused.
    refused = _loadgen_final(url, transport)
    assert refused["connected"] == 0 and refused["tls_handshakes"] == 0
    assert refused["tls_errors"] >= 3
    assert any("tls_certificate_verify_failed" in k for k in refused["errors"]), refused["errors"]
