"""Every proxy of deploy/proxies/ in front of three engine nodes over a real
Redis, configured by its template, with the official CometD JavaScript
client (and raw Bayeux requests) going through it.

One cluster per proxy (a module-scoped, parametrized fixture; pytest runs a
proxy's tests together).  The engine nodes hold a /meta/connect for 2 s;
the proxy's timeouts are filled in at 4 s, and a second instance of the
proxy at 1 s (in front of a node holding 5 s) shows that those are the
settings that cut a held connect.
What a proxy cannot do is an expected failure with its reason
(proxy_support.LIMITS); conftest.py writes every outcome to a results file
(docs/proxies.md's table comes from it).

    pytest -p no:randomly tests/e2e/proxies             # all proxies
    pytest -p no:randomly tests/e2e/proxies -k nginx    # one
"""

from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
import websockets.sync.client
from e2e.proxies.proxy_support import KINDS, VERSIONS, RunningProxy
from harness import ServerProcess, start_server
from interop.helpers import api_publish, describe_js_failure, run_js
from redis_server import RedisServer

NODES = ("pxA", "pxB", "pxC")
TOKEN = "proxies-test"
API_KEY = "proxies-api-key"
BAYEUX_TIMEOUT_MS = 2000
PROXY_TIMEOUT_S = 4  # > the Bayeux timeout: held connects come back
SHORT_PROXY_TIMEOUT_S = 1  # < the Bayeux timeout: the proxy cuts them
TRANSPORTS = ("long-polling", "websocket", "callback-polling")


@dataclass
class Cluster:
    proxy: RunningProxy
    nodes: list[ServerProcess]
    js: dict[tuple[str, str], Future[dict[str, Any]]]

    @property
    def port(self) -> int:
        return self.proxy.port

    def node_port(self, node_id: str) -> int:
        return self.nodes[NODES.index(node_id)].port


@pytest.fixture(scope="module", params=sorted(KINDS), ids=sorted(KINDS))
def cluster(request: pytest.FixtureRequest, node_bin: str) -> Iterator[Cluster]:
    kind = KINDS[request.param]
    kind.require()
    with RedisServer() as redis:
        nodes: list[ServerProcess] = []
        proxy: RunningProxy | None = None
        pool = ThreadPoolExecutor(2)
        try:
            for name in NODES:
                nodes.append(
                    start_server(
                        "--broker", redis.url, "--node-id", name,
                        "--timeout", str(BAYEUX_TIMEOUT_MS),
                        "--admin-token", TOKEN, "--api-key", API_KEY,
                        # The proxy's address: its X-Forwarded-For is believed.
                        "--trusted-proxies", "127.0.0.1",
                    )
                )  # fmt: skip
            proxy = RunningProxy(kind, [n.port for n in nodes], PROXY_TIMEOUT_S)
            request.config.stash.setdefault(VERSIONS, {})[kind.name] = proxy.version
            # The JavaScript client runs (a second or more each) start now,
            # in two chains (runs of one scenario share its channels, so one
            # at a time); the tests wait for their own.
            url = proxy.url
            idle = ("--duration", str(BAYEUX_TIMEOUT_MS + 700))  # > one held connect
            chains = [
                [("two_clients", t, ()) for t in TRANSPORTS]
                + [("shared_cookie_jar", "long-polling", ())],
                [("idle", t, idle) for t in TRANSPORTS],
            ]
            js: dict[tuple[str, str], Future[dict[str, Any]]] = {
                (s, t): Future() for chain in chains for s, t, _ in chain
            }

            def run_chain(chain: list[tuple[str, str, tuple[str, ...]]]) -> None:
                for scenario, transport, extra in chain:
                    future = js[(scenario, transport)]
                    try:
                        future.set_result(
                            run_js(node_bin, url, scenario, transport, extra=extra, expect_ok=False)
                        )
                    except BaseException as exc:  # the test waiting for it reports it
                        future.set_exception(exc)

            for chain in chains:
                pool.submit(run_chain, chain)
            yield Cluster(proxy, nodes, js)
        finally:
            pool.shutdown(wait=True)
            if proxy is not None:
                proxy.stop()
            for node in nodes:
                node.stop()


# ---------------------------------------------------------------- raw Bayeux


class Tab:
    """A long-polling Bayeux client on one keep-alive connection to the
    proxy (from `source`, a loopback address), with a browser's cookie."""

    def __init__(self, port: int, cookie: str = "", source: str = "127.0.0.1") -> None:
        self.conn = http.client.HTTPConnection(
            "127.0.0.1", port, timeout=15, source_address=(source, 0)
        )
        self.cookie = cookie
        self.client_id = ""

    def send(self, *messages: dict[str, Any]) -> tuple[int, list[dict[str, Any]]]:
        headers = {"Content-Type": "application/json"}
        if self.cookie:
            headers["Cookie"] = self.cookie
        body = [{**m, "clientId": self.client_id} if self.client_id else m for m in messages]
        self.conn.request("POST", "/cometd", json.dumps(body), headers)
        resp = self.conn.getresponse()
        data = resp.read()
        set_cookie = resp.headers.get("Set-Cookie")
        if set_cookie and set_cookie.startswith("BAYEUX_BROWSER="):
            self.cookie = set_cookie.split(";", 1)[0]
        return resp.status, json.loads(data) if resp.status == 200 else [{"body": data[:300]}]

    def handshake(self) -> Tab:
        status, replies = self.send(
            {"channel": "/meta/handshake", "version": "1.0",
             "supportedConnectionTypes": ["long-polling"]}
        )  # fmt: skip
        assert status == 200 and replies[0]["successful"], replies
        self.client_id = replies[0]["clientId"]
        return self

    def connect(self) -> tuple[int, list[dict[str, Any]]]:
        return self.send({"channel": "/meta/connect", "connectionType": "long-polling"})

    @property
    def node(self) -> str:
        # A clientId is 32 random hex characters, then the owning node's id.
        return self.client_id[32:]

    def close(self) -> None:
        self.conn.close()


def session_info(cluster: Cluster, client_id: str) -> dict[str, Any]:
    """What the engine knows of a session (HTTP API; any node answers for
    every session): its address, whether a connect is held..."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{cluster.nodes[0].port}/api/sessions/{client_id}",
        headers={"X-API-Key": API_KEY},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        result = json.loads(response.read())["result"]
    assert isinstance(result, dict), result
    return result


def forwarded_counts(cluster: Cluster) -> list[int]:
    counts = []
    for node in cluster.nodes:
        request = urllib.request.Request(
            f"http://127.0.0.1:{node.port}/stats", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            counts.append(json.loads(response.read())["forwarding"]["forwarded"])
    return counts


def js_result(cluster: Cluster, scenario: str, transport: str) -> dict[str, Any]:
    result = cluster.js[(scenario, transport)].result(timeout=60)
    assert result["ok"], describe_js_failure(result)
    assert result["transport"] == transport, describe_js_failure(result)
    return result


# ---------------------------------------------------------------- the checks


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_cometd_client(cluster: Cluster, transport: str) -> None:
    """Two CometD clients publish to each other through the proxy."""
    js_result(cluster, "two_clients", transport)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_held_connect_comes_back(cluster: Cluster, transport: str) -> None:
    """A connect held for the Bayeux timeout comes back successful through
    the proxy, and the client re-polls without a failure or a re-handshake."""
    result = js_result(cluster, "idle", transport)
    assert result["results"]["connects_sent"] >= 3, describe_js_failure(result)


def test_proxy_timeout_is_what_cuts_held_connects(cluster: Cluster) -> None:
    """The same template with the proxy's timeout (1 s) shorter than the
    Bayeux timeout (5 s, a node of its own): the held connect is cut. So the
    settings called out in the template are the ones a held connect depends
    on.  (lighttpd checks its timeouts only every few seconds.)"""
    node = start_server("--timeout", "5000")
    short: RunningProxy | None = None
    try:
        short = RunningProxy(cluster.proxy.kind, [node.port], SHORT_PROXY_TIMEOUT_S)
        tab = Tab(short.port).handshake()
        status, replies = tab.connect()  # the first connect is answered at once
        assert status == 200 and replies[0]["successful"], replies
        try:
            status, replies = tab.connect()  # held for 5 s by the engine
        except (OSError, http.client.HTTPException) as exc:
            status, replies = 0, [{"error": repr(exc)}]
        tab.close()
        assert status != 200, f"{short.kind.title} did not cut a 5 s connect at 1 s: {replies}"
    finally:
        if short is not None:
            short.stop()
        node.stop()


def test_requests_round_robin_without_stickiness(cluster: Cluster) -> None:
    """Handshakes through the proxy land on several nodes, and one session's
    requests reach nodes that do not own it (which forward them)."""
    before = forwarded_counts(cluster)
    tabs = [Tab(cluster.port).handshake() for _ in range(6)]
    for tab in tabs:
        for _ in range(3):
            status, replies = tab.send({"channel": "/meta/subscribe", "subscription": "/rr"})
            assert status == 200 and replies[0]["successful"], replies
        tab.close()
    owners = {tab.node for tab in tabs}
    assert len(owners) >= 2, f"every handshake went to {owners}: sticky or one backend"
    after = forwarded_counts(cluster)
    assert sum(a > b for a, b in zip(after, before, strict=True)) >= 1, (before, after)


def test_publish_on_one_node_delivered_through_another(cluster: Cluster) -> None:
    """A subscriber through the proxy gets what is published on a node that
    is not its session's."""
    tab = Tab(cluster.port).handshake()
    status, replies = tab.send({"channel": "/meta/subscribe", "subscription": "/cross"})
    assert status == 200 and replies[0]["successful"], replies
    tab.connect()
    other = next(n for n in NODES if n != tab.node)
    api_publish(cluster.node_port(other), API_KEY, "/cross", {"from": other})
    status, replies = tab.connect()
    tab.close()
    events = [m for m in replies if m.get("channel") == "/cross"]
    assert status == 200 and [e["data"] for e in events] == [{"from": other}], replies


def test_two_tabs_of_one_browser_get_multiple_clients(cluster: Cluster) -> None:
    """Two sessions of one browser (one BAYEUX_BROWSER cookie, through the
    proxy both ways) on one node: the second long-poll is told
    `multiple-clients`.  (The quota is counted per node: four handshakes
    over three nodes give two sessions on one node.)"""
    first = Tab(cluster.port).handshake()
    assert first.cookie.startswith("BAYEUX_BROWSER="), "no BAYEUX_BROWSER cookie came back"
    tabs = [first] + [Tab(cluster.port, first.cookie).handshake() for _ in range(3)]
    by_node: dict[str, list[Tab]] = {}
    for tab in tabs:
        by_node.setdefault(tab.node, []).append(tab)
    a, b = next(group for group in by_node.values() if len(group) >= 2)[:2]
    a.connect()
    b.connect()
    # A's connect is held (sent, not read yet); B's comes back at once.
    a.conn.request(
        "POST", "/cometd",
        json.dumps([{"channel": "/meta/connect", "connectionType": "long-polling",
                     "clientId": a.client_id}]),
        {"Content-Type": "application/json", "Cookie": a.cookie},
    )  # fmt: skip
    deadline = time.monotonic() + 5
    while not session_info(cluster, a.client_id)["held_connect"]:
        assert time.monotonic() < deadline, "A's connect never held"
        time.sleep(0.02)
    status, replies = b.connect()
    advice = replies[0].get("advice") or {}
    a.conn.getresponse().read()
    for tab in tabs:
        tab.close()
    assert advice.get("multiple-clients") is True, replies


def test_two_cometd_tabs_sharing_a_cookie_both_work(cluster: Cluster) -> None:
    """The CometD client twice with one cookie jar: both keep working; on one
    node, one of them gets the multiple-clients advice."""
    result = js_result(cluster, "shared_cookie_jar", "long-polling")
    res = result["results"]
    assert res["cookies"]["A"]["BAYEUX_BROWSER"] == res["cookies"]["B"]["BAYEUX_BROWSER"]
    a, b = (client_id[32:] for client_id in res["client_ids"])
    if a == b:
        assert any(res["multiple_clients_advice"].values()), describe_js_failure(result)


@pytest.mark.parametrize("transport", ["long-polling", "websocket"])
def test_engine_sees_the_client_address(cluster: Cluster, transport: str) -> None:
    """The client connects from 127.0.0.2 or .3; the engine (trusting the
    proxy at 127.0.0.1) records that address, not the proxy's."""
    if transport == "long-polling":
        source = "127.0.0.2"
        client_id = Tab(cluster.port, source=source).handshake().client_id
    else:
        source = "127.0.0.3"
        sock = socket.create_connection(("127.0.0.1", cluster.port), 10, (source, 0))
        with websockets.sync.client.connect(
            f"ws://127.0.0.1:{cluster.port}/cometd", sock=sock, open_timeout=10
        ) as ws:
            ws.send(json.dumps([{"channel": "/meta/handshake", "version": "1.0",
                                 "supportedConnectionTypes": ["websocket"]}]))  # fmt: skip
            reply = json.loads(ws.recv(10))[0]
            assert reply["successful"], reply
            client_id = reply["clientId"]
            assert session_info(cluster, client_id)["address"] == source
            return
    assert session_info(cluster, client_id)["address"] == source
