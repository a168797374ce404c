"""The official CometD JS client with the shipped RecoveryExtension, behind
HAProxy in front of two nodes over Redis: subscribed on node A to a history
channel while 1,000 messages are published at 100/s through node B, A is
SIGKILLed mid-stream; the client re-handshakes on B and ends with all 1,000,
in order, none twice, told `recovered: true`.  Away longer than the history
keeps: `recovered: false` (expired), and the application is told."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import ServerProcess, ensure_node_modules, start_server
from interop.helpers import describe_js_failure, run_js
from redis_server import RedisServer, free_port, require_redis_server

from engine.client import Publisher

require_redis_server()

from cluster_support import require_haproxy  # noqa: E402

pytestmark = pytest.mark.timeout(180)

KEY = "failover-key"
MESSAGES = 1000
RATE = 100.0
KEPT = 1200
NODE = shutil.which("node") or "node"

HAPROXY_CFG = """\
global
    maxconn 1024

defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout tunnel 1h
    option http-server-close
    option redispatch
    retries 3

frontend bayeux
    bind 127.0.0.1:{port}
    default_backend engines

backend engines
    # Every client on the first node while it is up (the client is "on A"),
    # then on the next: a node that dies is out within a few checks.
    balance first
    option httpchk GET /health
{servers}
"""


@pytest.fixture
def cluster() -> Iterator[tuple[str, ServerProcess, ServerProcess, subprocess.Popen[bytes]]]:
    haproxy = require_haproxy()
    ensure_node_modules()
    args = (
        "--timeout", "1500", "--max-interval", "3000", "--api-key", KEY,
        "--history-channels", "/h/**", "--history-size", str(KEPT),
    )  # fmt: skip
    with RedisServer() as redis:
        a = start_server("--broker", redis.url, "--node-id", "foA", *args)
        b = start_server("--broker", redis.url, "--node-id", "foB", *args)
        port = free_port()
        workdir = Path(tempfile.mkdtemp(prefix="engine-failover-"))
        servers = "\n".join(
            f"    server {name} 127.0.0.1:{n.port} check inter 200ms fall 1 rise 2"
            for name, n in (("foA", a), ("foB", b))
        )
        config = workdir / "haproxy.cfg"
        config.write_text(HAPROXY_CFG.format(port=port, servers=servers))
        proxy = subprocess.Popen(
            [haproxy, "-f", str(config), "-db"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    with socket.create_connection(("127.0.0.1", port), 0.5):
                        break
                except OSError:
                    time.sleep(0.05)
            time.sleep(0.5)  # the first health checks
            yield f"http://127.0.0.1:{port}/cometd", a, b, proxy
        finally:
            if proxy.poll() is None:
                os.kill(proxy.pid, signal.SIGCONT)
                proxy.terminate()
                proxy.wait(5)
            a.stop()
            b.stop()


def client(url: str, transport: str, ready: Path, until: int, duration_ms: int) -> Any:
    """The CometD client in a thread: its result, once it has `until` messages."""
    box: dict[str, Any] = {}

    def run() -> None:
        box["result"] = run_js(
            NODE,
            url,
            "receive",
            transport,
            timeout_ms=duration_ms + 20000,
            extra=(
                "--channel",
                "/h/room",
                "--recovery",
                "--until",
                str(until),
                "--duration",
                str(duration_ms),
                "--ready-file",
                str(ready),
                "--no-wire",
            ),  # fmt: skip
        )

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 20
    while not ready.exists() and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.05)
    assert ready.exists(), "the CometD client did not subscribe"
    return thread, box


def publish(b: ServerProcess, start: int, count: int, rate: float) -> None:
    api = b.url.rsplit("/cometd", 1)[0] + "/api"
    with Publisher(api, api_key=KEY) as publisher:
        t0 = time.monotonic()
        for n in range(start, start + count):
            publisher.publish("/h/room", {"n": n})
            pause = t0 + (n - start + 1) / rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)


@pytest.mark.parametrize("transport", ["long-polling", "websocket"])
def test_a_client_on_a_killed_node_recovers_every_message_on_the_other(
    cluster: Any, transport: str, tmp_path: Path
) -> None:
    url, a, b, _ = cluster
    ready = tmp_path / "ready"
    thread, box = client(url, transport, ready, MESSAGES, 60000)
    assert ready.read_text().endswith("foA")  # subscribed on node A
    killer = threading.Timer(3.0, lambda: os.kill(a.proc.pid, signal.SIGKILL))
    killer.start()  # mid-stream: about 300 messages in
    try:
        publish(b, 0, MESSAGES, RATE)
    finally:
        killer.cancel()
    thread.join(60)
    result = box["result"]
    res = result["results"]
    msg = describe_js_failure(result)
    data = [m["data"]["n"] for m in res["received"]]
    summary = {
        "missing": sorted(set(range(MESSAGES)) - set(data))[:20],
        "twice": sorted({n for n in data if data.count(n) > 1})[:20],
        "answers": res["subscribe_answers"],
        "client_ids": res["client_ids"],
        "failures": res["failures"],
    }
    assert data == list(range(MESSAGES)), summary  # all, in order, none twice
    offsets = [m["offset"] for m in res["received"]]
    assert offsets == list(range(offsets[0], offsets[0] + MESSAGES)), msg
    ids = res["client_ids"]
    assert len(ids) == 2 and ids[0].endswith("foA") and ids[1].endswith("foB"), msg
    answers = [a for a in res["subscribe_answers"] if a]
    assert answers[-1]["/h/room"]["recovered"] is True, msg
    assert answers[-1]["/h/room"]["missed"] > 0, msg  # what A never delivered came back
    assert res["recovery_failed"] == [], msg


def test_a_client_away_longer_than_the_history_is_told(cluster: Any, tmp_path: Path) -> None:
    url, a, b, proxy = cluster
    ready = tmp_path / "ready"
    thread, box = client(url, "long-polling", ready, 3, 40000)
    publish(b, 0, 1, 1000.0)
    time.sleep(0.5)
    # The client's network is cut (the balancer frozen), its node dies, and
    # more is published than the history keeps.
    os.kill(proxy.pid, signal.SIGSTOP)
    os.kill(a.proc.pid, signal.SIGKILL)
    publish(b, 1, KEPT + 100, 5000.0)
    os.kill(proxy.pid, signal.SIGCONT)
    time.sleep(2.0)  # the client re-handshakes on B and subscribes again
    publish(b, KEPT + 101, 2, 100.0)  # live again
    thread.join(60)
    result = box["result"]
    res = result["results"]
    msg = describe_js_failure(result)
    failed = res["recovery_failed"]
    assert [(f["channel"], f["answer"]["reason"]) for f in failed] == [("/h/room", "expired")], msg
    data = [m["data"]["n"] for m in res["received"]]
    assert data == [0, KEPT + 101, KEPT + 102], msg  # nothing replayed, live again
