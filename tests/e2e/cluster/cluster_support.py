"""What the cluster tests share: a Bayeux client stub per node, a subscriber
that records what it gets, the Redis-side checks (connections, subscriptions)
and each node's broker counters."""

from __future__ import annotations

import ast
import http.client
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
import redis
from harness import ServerProcess
from redis_server import RedisServer
from support import Browser


def node_stub(port: int) -> Any:
    """What support.Browser needs of a server: `.address` and `.options.path`."""
    return SimpleNamespace(address=("127.0.0.1", port), options=SimpleNamespace(path="/cometd"))


class Listener:
    """A long-polling client that subscribes, then polls in a thread, collecting events."""

    def __init__(self, port: int, *subscriptions: str) -> None:
        self.browser = Browser(node_stub(port)).ready()
        for subscription in subscriptions:
            reply = self.browser.subscribe(subscription).reply("/meta/subscribe")
            assert reply["successful"], reply
        self.events: list[dict[str, Any]] = []
        self.cond = threading.Condition()
        self.error: BaseException | None = None
        self._stop = False
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        try:
            while not self._stop:
                resp = self.browser.connect()
                assert resp.status == 200, resp.body
                assert resp.reply("/meta/connect")["successful"], resp.body
                with self.cond:
                    self.events.extend(resp.events())
                    self.cond.notify_all()
        except BaseException as exc:  # reported by wait_for / close
            if not self._stop:
                self.error = exc
            with self.cond:
                self.cond.notify_all()

    def data(self, channel: str | None = None) -> list[Any]:
        with self.cond:
            return [e["data"] for e in self.events if channel is None or e["channel"] == channel]

    def wait_for(self, predicate: Callable[[list[Any]], bool], timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate([e["data"] for e in self.events]):
                assert self.error is None, f"poller failed: {self.error!r}"
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"timed out; events so far: {self.events}"
                self.cond.wait(remaining)

    def close(self) -> None:
        """Disconnect (the session and its subscriptions go at once) and stop polling."""
        self._stop = True
        try:
            self.browser.send([self.browser.message("/meta/disconnect")])
        except OSError:
            pass
        self.thread.join(5)
        self.browser.close()


def wait_until(check: Callable[[], bool], timeout: float = 5.0, what: str = "") -> float:
    """Poll `check` until true; return the monotonic time it became true."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return time.monotonic()
        assert time.monotonic() < deadline, f"timed out waiting for {what or check}"
        time.sleep(0.01)


def redis_client(server: RedisServer) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=2)


def subscribed(r: redis.Redis, node: str, channels: int, patterns: int) -> Callable[[], bool]:
    def check() -> bool:
        entry = broker_connection(r, node)
        return (
            entry is not None and int(entry["sub"]) == channels and int(entry["psub"]) == patterns
        )

    return check


def broker_stats(node: ServerProcess) -> dict[str, Any]:
    """The broker's counters, as a stopped node logs them."""
    match = re.search(r"redis broker: (\{.*\})", node.stderr)
    assert match, node.stderr
    value = ast.literal_eval(match.group(1))
    assert isinstance(value, dict)
    return value


def broker_connection(r: redis.Redis, node: str, role: str = "sub") -> dict[str, Any] | None:
    """The CLIENT LIST entry of a node's broker connection (pub or sub), if any."""
    try:
        clients = r.client_list()
    except (redis.ConnectionError, redis.TimeoutError):
        return None
    for client in clients:
        if client.get("name") == f"engine-{node}-{role}":
            return dict(client)
    return None


def handshake_node(port: int) -> tuple[http.client.HTTPConnection, str, str]:
    """Handshake on a new connection: (connection, clientId, BAYEUX_BROWSER cookie)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    body = [
        {
            "channel": "/meta/handshake",
            "version": "1.0",
            "supportedConnectionTypes": ["long-polling"],
        }
    ]
    conn.request("POST", "/cometd", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    reply = json.loads(resp.read())[0]
    assert reply["successful"], reply
    cookie = (resp.headers.get("Set-Cookie") or "").split(";", 1)[0]
    return conn, reply["clientId"], cookie


def post(
    conn: http.client.HTTPConnection, cookie: str, messages: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    headers = {"Content-Type": "application/json", "Cookie": cookie}
    conn.request("POST", "/cometd", json.dumps(messages), headers)
    resp = conn.getresponse()
    body = resp.read()
    assert resp.status == 200, body
    result = json.loads(body)
    assert isinstance(result, list)
    return result


def node_of(client_id: str, nodes: list[str]) -> str:
    # A clientId is 32 random hex characters, then the owning node's id.
    node = client_id[32:]
    assert node in nodes, f"clientId {client_id} names none of {nodes}"
    return node


def worker_pids(process: ServerProcess) -> dict[int, int]:
    """Worker index -> pid of its latest start, from the supervisor's log."""
    pids: dict[int, int] = {}
    for m in re.finditer(r"worker (\d+) \(node \w+, pid (\d+)\) started", process.stderr):
        pids[int(m.group(1))] = int(m.group(2))
    return pids


def require_haproxy() -> str:
    path = shutil.which("haproxy")
    if path is None:
        message = "haproxy is not installed (apt-get install -y haproxy)"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI is set: an error, not a skip)", pytrace=False)
        pytest.skip(message, allow_module_level=True)
    return path
