"""Presence across a cluster (engine.presence over a real redis-server): three
nodes, 3,000 sessions joining and leaving, counts equal to the truth on every
node, one node SIGKILLed and its members gone within presence_ttl; and a
Redis outage that breaks no subscribe, after which the node writes its
members back."""

from __future__ import annotations

import http.client
import json
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
from redis_server import RedisServer, require_redis_server

require_redis_server()

from cluster_support import Listener, node_stub, redis_client, wait_until  # noqa: E402
from harness import running_server, start_server  # noqa: E402
from support import Browser  # noqa: E402

pytestmark = pytest.mark.timeout(120)

KEY = "presence-cluster-key"
TTL_MS = 2000
NODES = ("nodeA", "nodeB", "nodeC")
PER_NODE = 1000


@pytest.fixture
def redis_srv() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


class Clients:
    """Many sessions on one node over one kept-alive connection (one browser)."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        self.cookie = ""
        self.port = port

    def post(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        headers = {"Content-Type": "application/json"}
        if self.cookie:
            headers["Cookie"] = self.cookie
        self.conn.request("POST", "/cometd", json.dumps(messages), headers)
        resp = self.conn.getresponse()
        body = resp.read()
        assert resp.status == 200, body
        cookie = resp.headers.get("Set-Cookie")
        if cookie and not self.cookie:
            self.cookie = cookie.split(";", 1)[0]
        result = json.loads(body)
        assert isinstance(result, list)
        return result

    def handshake(self) -> str:
        message = {
            "channel": "/meta/handshake",
            "version": "1.0",
            "supportedConnectionTypes": ["long-polling"],
        }
        reply = self.post([message])[0]
        assert reply["successful"], reply
        return str(reply["clientId"])

    def each(self, channel: str, client_ids: list[str], **fields: Any) -> None:
        for i in range(0, len(client_ids), 400):
            batch = [{"channel": channel, "clientId": c, **fields} for c in client_ids[i : i + 400]]
            replies = self.post(batch)
            assert len(replies) == len(batch) and all(r["successful"] for r in replies), replies


def api_presence(port: int, channel: str, query: str = "") -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", f"/api/presence{channel}{query}", headers={"X-API-Key": KEY})
    resp = conn.getresponse()
    body = json.loads(resp.read())
    conn.close()
    assert resp.status == 200, body
    result = body["result"]
    assert isinstance(result, dict)
    return result


def counts(ports: list[int], channel: str) -> list[int]:
    return [api_presence(port, channel)["count"] for port in ports]


def test_counts_match_the_truth_across_three_nodes_and_a_crash(redis_srv: RedisServer) -> None:
    nodes = [
        start_server(
            "--broker",
            redis_srv.url,
            "--node-id",
            node,
            "--presence-channels",
            "/chat/**",
            "--presence-ttl",
            str(TTL_MS),
            "--presence-event-rate",
            "0",
            "--api-key",
            KEY,
            "--max-interval",
            "120000",
            "--timeout",
            "1500",
        )  # fmt: skip
        for node in NODES
    ]
    watcher: Listener | None = None
    try:
        ports = [n.port for n in nodes]
        clients = [Clients(port) for port in ports]
        sessions = [[c.handshake() for _ in range(PER_NODE)] for c in clients]
        truth: dict[str, set[str]] = {"/chat/room": set(), "/chat/small": set()}
        for c, ids in zip(clients, sessions, strict=True):
            c.each("/meta/subscribe", ids, subscription="/chat/room")
            c.each("/meta/subscribe", ids[:10], subscription="/chat/small")
            truth["/chat/room"].update(ids)
            truth["/chat/small"].update(ids[:10])
        # Some leave: every 5th unsubscribes, every 7th disconnects.
        for c, ids in zip(clients, sessions, strict=True):
            unsubscribing = ids[::5]
            c.each("/meta/unsubscribe", unsubscribing, subscription="/chat/room")
            truth["/chat/room"].difference_update(unsubscribing)
            gone = ids[1::7]
            c.each("/meta/disconnect", gone)
            for members in truth.values():
                members.difference_update(gone)
        expected = len(truth["/chat/room"])
        assert 2000 < expected < 3000
        wait_until(
            lambda: counts(ports, "/chat/room") == [expected] * 3, 10, "counts equal the truth"
        )
        small = len(truth["/chat/small"])
        assert counts(ports, "/chat/small") == [small] * 3

        # The members listed are the members (any node, capped by the limit).
        listed = api_presence(ports[1], "/chat/small", "?members=1&limit=1000")
        assert {m["clientId"] for m in listed["members"]} == truth["/chat/small"]
        assert listed["truncated"] is False
        some = api_presence(ports[2], "/chat/room", "?members=1&limit=50")
        assert len(some["members"]) == 50 and some["truncated"] is True
        assert {m["clientId"] for m in some["members"]} <= truth["/chat/room"]

        # A Bayeux query on a node answers from Redis (the async path).
        b = Browser(node_stub(ports[1])).ready()
        assert b.subscribe("/chat/room").reply("/meta/subscribe")["successful"]
        truth["/chat/room"].add(str(b.client_id))
        reply = b.publish("/service/presence", {"channel": "/chat/room"}).messages
        answers = [m for m in reply + b.connect().messages if "data" in m]
        assert len(answers) == 1 and answers[0]["successful"], answers
        assert answers[0]["data"]["count"] in (expected, expected + 1), answers
        wait_until(lambda: counts(ports, "/chat/room") == [expected + 1] * 3, 5, "b counted")

        # Leave events of the crashed node's members reach a watcher on A.
        watcher = Listener(ports[0], "/presence/chat/small")

        # SIGKILL node C: its members expire within presence_ttl.
        victim = nodes[2]
        dead = set(sessions[2])
        after = {ch: members - dead for ch, members in truth.items()}
        time.sleep(0.3)
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait(5)
        killed_at = time.monotonic()
        live = ports[:2]
        done = wait_until(
            lambda: (
                counts(live, "/chat/room") == [len(after["/chat/room"])] * 2
                and counts(live, "/chat/small") == [len(after["/chat/small"])] * 2
            ),
            TTL_MS / 1000 + 5,
            "the dead node's members expire",
        )
        took = done - killed_at
        print(f"members of the dead node gone after {took:.2f} s")
        assert took <= TTL_MS / 1000 + 0.5, f"members of the dead node left after {took:.2f} s"
        # Exactly its members: the listing of the small channel is the truth.
        listed = api_presence(ports[0], "/chat/small", "?members=1")
        assert {m["clientId"] for m in listed["members"]} == after["/chat/small"]
        leaves = truth["/chat/small"] & dead

        def left() -> set[str]:
            return {
                d["clientId"]
                for d in watcher.data("/presence/chat/small")
                if isinstance(d, dict) and d.get("action") == "leave"
            }

        watcher.wait_for(lambda _: left() == leaves, 5)
        # Redis forgets the dead node.
        r = redis_client(redis_srv)
        wait_until(lambda: b"nodeC" not in r.smembers("bayeux:0:presence:nodes"), 3, "forgotten")
        assert not r.exists("bayeux:0:presence:c:nodeC")
        assert not r.exists("bayeux:0:presence:n:nodeC:/chat/room")

        # A node stopped gracefully takes its members with it at once.
        remaining = after["/chat/room"] - set(sessions[1]) - {str(b.client_id)}
        nodes[1].stop()
        assert counts(ports[:1], "/chat/room") == [len(remaining)]
        assert b"nodeB" not in r.smembers("bayeux:0:presence:nodes")
    finally:
        if watcher is not None:
            watcher.close()
        for n in nodes:
            n.stop()


def test_a_redis_outage_breaks_no_subscribe_and_members_are_written_back(
    redis_srv: RedisServer,
) -> None:
    with running_server(
        broker=redis_srv.url,
        node_id="solo",
        presence_channels="/chat/**",
        presence_ttl=1200,
        timeout=1000,
        max_interval=60000,
    ) as server:
        browsers = [Browser(server).ready() for _ in range(3)]
        for b in browsers:
            assert b.subscribe("/chat/room").reply("/meta/subscribe")["successful"]
        r = redis_client(redis_srv)
        wait_until(lambda: r.hlen("bayeux:0:presence:m:/chat/room") == 3, 5, "written")

        redis_srv.kill()
        more = [Browser(server).ready() for _ in range(2)]
        for b in more:  # Redis down: subscribes still succeed
            assert b.subscribe("/chat/room").reply("/meta/subscribe")["successful"]
        assert browsers[0].unsubscribe("/chat/room").reply("/meta/unsubscribe")["successful"]
        wait_until(lambda: server.core.stats.presence_redis_errors > 0, 5, "failure counted")

        redis_srv.start()  # (empty: no persistence)
        r = redis_client(redis_srv)
        wait_until(lambda: r.hlen("bayeux:0:presence:m:/chat/room") == 4, 8, "written back")
        members = {k.decode() for k in r.hkeys("bayeux:0:presence:m:/chat/room")}
        assert members == {b.client_id for b in browsers[1:] + more}
        assert server.core.stats.presence_reconciles >= 2


def test_a_channel_of_100000_members_answers_its_count_without_listing_them(
    redis_srv: RedisServer,
) -> None:
    with running_server(
        broker=redis_srv.url, node_id="solo", presence_channels="/chat/**", api_key=KEY
    ) as server:
        # 100,000 members of a live node "big" (its liveness key refreshed here).
        r = redis_client(redis_srv)
        r.set("bayeux:0:presence:alive:big", b"1", px=60000)
        pipe = r.pipeline(transaction=False)
        for start in range(0, 100_000, 10_000):
            fields = {
                f"{i:032x}big": json.dumps({"clientId": f"{i:032x}big", "user": None, "info": None})
                for i in range(start, start + 10_000)
            }
            pipe.hset("bayeux:0:presence:m:/chat/huge", mapping=fields)
        pipe.execute()
        b = Browser(server).ready()
        assert b.subscribe("/chat/huge").reply("/meta/subscribe")["successful"]
        port = server.address[1]
        wait_until(lambda: api_presence(port, "/chat/huge")["count"] == 100_001, 5, "count")
        started = time.monotonic()
        result = api_presence(port, "/chat/huge")
        took = time.monotonic() - started
        assert result == {"channel": "/chat/huge", "count": 100_001}
        assert took < 0.5, took  # (HLEN: no listing)
        result = api_presence(port, "/chat/huge", "?members=1&limit=5000")
        assert result["count"] == 100_001 and len(result["members"]) == 1000
        assert result["truncated"] is True


def test_a_node_presumed_dead_writes_its_members_back(redis_srv: RedisServer) -> None:
    """A node stalled past the bound may find its members moved out by the
    others: seeing its liveness key gone, it writes them back."""
    with running_server(
        broker=redis_srv.url, node_id="solo", presence_channels="/chat/**", presence_ttl=1200
    ) as server:
        b = Browser(server).ready()
        assert b.subscribe("/chat/room").reply("/meta/subscribe")["successful"]
        r = redis_client(redis_srv)
        key = "bayeux:0:presence:m:/chat/room"
        wait_until(lambda: r.hlen(key) == 1, 5, "written")
        reconciles = server.core.stats.presence_reconciles
        # What a sweeper does to a dead node (its key expired, its members removed).
        r.delete("bayeux:0:presence:alive:solo", key, "bayeux:0:presence:n:solo:/chat/room")
        wait_until(lambda: r.hlen(key) == 1, 3, "written back")
        assert server.core.stats.presence_reconciles == reconciles + 1
        assert r.smembers("bayeux:0:presence:n:solo:/chat/room") == {b.client_id.encode()}


def test_members_of_a_dead_node_go_and_a_live_one_s_stay(redis_srv: RedisServer) -> None:
    r = redis_client(redis_srv)
    key = "bayeux:0:presence:m:/chat/room"
    for node, alive in (("ghost", False), ("back", True)):
        ids = [f"{i:032x}{node}" for i in range(2500)]  # (3 purge steps)
        r.hset(key, mapping={i: json.dumps({"clientId": i, "user": None}) for i in ids})
        r.sadd(f"bayeux:0:presence:n:{node}:/chat/room", *ids)
        r.sadd(f"bayeux:0:presence:c:{node}", "/chat/room")
        r.sadd("bayeux:0:presence:nodes", node)
        if alive:
            r.set(f"bayeux:0:presence:alive:{node}", b"1", px=60000)
    with running_server(
        broker=redis_srv.url, node_id="solo", presence_channels="/chat/**", presence_ttl=1200
    ) as server:
        wait_until(lambda: r.hlen(key) == 2500, 3, "the dead node's members removed")
        assert all(k.endswith(b"back") for k in r.hkeys(key))
        assert server.core.stats.presence_expired == 2500
        wait_until(
            lambda: b"ghost" not in r.smembers("bayeux:0:presence:nodes"), 3, "ghost forgotten"
        )
        assert b"back" in r.smembers("bayeux:0:presence:nodes")
        assert not r.exists("bayeux:0:presence:c:ghost")


def test_a_node_stops_promptly_in_the_middle_of_a_purge(redis_srv: RedisServer) -> None:
    r = redis_client(redis_srv)
    key = "bayeux:0:presence:m:/chat/room"
    ids = [f"{i:032x}ghost" for i in range(30000)]
    r.hset(key, mapping={i: json.dumps({"clientId": i}) for i in ids})
    r.sadd("bayeux:0:presence:n:ghost:/chat/room", *ids)
    r.sadd("bayeux:0:presence:c:ghost", "/chat/room")
    r.sadd("bayeux:0:presence:nodes", "ghost")
    for _ in range(5):
        with running_server(
            broker=redis_srv.url, node_id="solo", presence_channels="/chat/**", presence_ttl=600
        ):
            wait_until(lambda: r.hlen(key) < len(ids), 3, "the purge started")
            started = time.monotonic()
        assert time.monotonic() - started < 3.0
        if not r.hlen(key):
            break
