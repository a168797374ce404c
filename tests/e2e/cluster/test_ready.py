"""GET /ready, the readiness probe: 503 while the cluster broker (a real
redis-server) is away, 200 again once it is back; /health stays 200."""

from __future__ import annotations

import http.client
import json
import time

from redis_server import RedisServer, require_redis_server

require_redis_server()

from harness import start_server  # noqa: E402


def probe(port: int, path: str) -> tuple[int, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", path)
    resp = conn.getresponse()
    body = json.loads(resp.read())
    conn.close()
    return resp.status, body


def within(seconds: float, port: int, status: int) -> float:
    """How long /ready took to answer `status` (fails past `seconds`)."""
    started = time.monotonic()
    while probe(port, "/ready")[0] != status:
        assert time.monotonic() - started < seconds, f"/ready not {status} within {seconds} s"
        time.sleep(0.05)
    return time.monotonic() - started


def test_ready_follows_the_broker() -> None:
    with RedisServer() as redis:
        node = start_server("--broker", redis.url, "--node-id", "readyA")
        try:
            assert probe(node.port, "/ready") == (200, {"status": "ready", "why": None})
            redis.kill()
            within(2.0, node.port, 503)
            status, body = probe(node.port, "/ready")
            assert status == 503 and "Redis" in body["why"]
            assert probe(node.port, "/health")[0] == 200  # alive, only not ready
            redis.start()
            within(5.0, node.port, 200)
        finally:
            node.stop()


def test_ready_alone_and_while_draining() -> None:
    from harness import running_server

    with running_server() as server:
        port = server.address[1]
        assert probe(port, "/ready") == (200, {"status": "ready", "why": None})
        server.core.draining = True  # (what stop() sets first)
        assert probe(port, "/ready") == (503, {"status": "not ready", "why": "draining"})
        server.core.draining = False


def test_sigterm_twice_drains_once() -> None:
    import signal

    node = start_server("--timeout", "20000", "--drain-timeout", "3000")
    try:
        node.proc.send_signal(signal.SIGTERM)
        node.proc.send_signal(signal.SIGTERM)
        assert node.proc.wait(10) == 0
    finally:
        node.stop()
