"""Request forwarding: a session owned by one node, reachable from all.

A long-polling or callback-polling request that lands on a node that does
not own its session is sent to the owner through Redis and the answer is
relayed (`engine/forwarding.py`).  These tests start a real `redis-server`
(tests/redis_server.py) and engine processes (`python -m engine serve
--broker redis://...`), and send each request of one client to the node the
test chooses, as a round-robin load balancer without sticky sessions would.
Without redis-server installed the module is skipped, unless CI is set.
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
import re
import signal
import statistics
import time
from collections.abc import Iterator
from typing import Any

import pytest
from redis_server import RedisServer, require_redis_server

require_redis_server()

import redis  # noqa: E402
from forwarding_support import (  # noqa: E402
    Client,
    FakeBroker,
    FakeExchange,
    SlowConnection,
    forwarding_stats,
    reply_of,
)
from harness import ServerProcess, start_server  # noqa: E402

from engine.cluster.forwarding import RedisForwarder  # noqa: E402
from engine.cluster.redis_broker import RedisBroker  # noqa: E402
from engine.options import ServerOptions  # noqa: E402
from engine.protocol.core import BayeuxCore  # noqa: E402

pytestmark = pytest.mark.timeout(60)

NODE_ARGS = ("--timeout", "2000", "--log-level", "info")
Message = dict[str, Any]


# ---------------------------------------------------------------- helpers


def node_of(client_id: str) -> str:
    return client_id[32:]


def assert_session_unknown(reply: Message, meta: bool = True) -> None:
    assert reply["successful"] is False, reply
    assert reply["error"] == "402::session_unknown", reply
    if meta:
        assert reply["advice"]["reconnect"] == "handshake", reply


def spublish_calls(r: redis.Redis) -> int:
    stats = r.info("commandstats")
    return int(stats.get("cmdstat_spublish", {}).get("calls", 0))


def settled_spublish_calls(r: redis.Redis) -> int:
    """SPUBLISH calls once none has come for 0.1 s (bounded: 3 s): what an
    earlier exchange still had on its way (a late reply on a loaded machine)
    is not counted against the next one."""
    count = spublish_calls(r)
    for _ in range(30):
        time.sleep(0.1)
        now = spublish_calls(r)
        if now == count:
            break
        count = now
    return count


def start_node(redis_srv: RedisServer, name: str) -> ServerProcess:
    return start_server("--broker", redis_srv.url, "--node-id", name, *NODE_ARGS)


# --------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def redis_srv() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def nodes(redis_srv: RedisServer) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    a = start_node(redis_srv, "nodeA")
    try:
        b = start_node(redis_srv, "nodeB")
    except BaseException:
        a.stop()
        raise
    try:
        yield a, b
    finally:
        a.assert_stopped_cleanly()
        b.assert_stopped_cleanly()
        for node in (a, b):
            stats = forwarding_stats(node)
            assert stats["invalid"] == 0 and stats["timed_out"] == 0, stats
            assert stats["pending"] == 0 and stats["remote"] == 0, stats


# ------------------------------------------------- alternating requests


def test_requests_alternating_between_nodes_keep_the_session(
    nodes: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = nodes
    client = Client()
    pub_a = Client().ready(a)  # a publisher on each node, local there
    pub_b = Client().ready(b)
    try:
        assert client.handshake(a)["successful"]
        assert node_of(client.client_id or "") == "nodeA"
        reply, _ = client.connect(b, advice={"timeout": 0})  # forwarded to A
        assert reply["successful"] and reply["advice"]["reconnect"] == "retry", reply
        assert client.request(b, "/meta/subscribe", subscription="/alt/*")["successful"]
        assert client.request(a, "/meta/subscribe", subscription="/alt2")["successful"]

        published: list[Any] = []
        publishers = [pub_a, pub_b, client]
        for i in range(8):
            node = (a, b)[i % 2]
            publisher = publishers[i % 3]
            data = f"m{i}"
            via = (a, b)[(i // 2) % 2] if publisher is client else node
            assert publisher.request(via, "/alt/x", data=data)["successful"]
            published.append(data)
            reply, _ = client.connect(node, advice={"timeout": 0})
            assert reply["successful"], reply
        assert client.data("/alt/x") == published

        # A connect held on the node that does not own the session, released
        # by an event published on either node.
        for publisher, node in ((pub_b, b), (pub_a, a)):
            client.start_connect(b)
            assert not client.answered(b, wait=0.3), "the connect was not held"
            data = f"held-{node.port}"
            assert publisher.request(node, "/alt/y", data=data)["successful"]
            reply, took = client.finish_connect(b)
            assert reply["successful"], reply
            assert took < 0.3 + 0.5, took
            published.append(data)
            assert client.data("/alt/x") + client.data("/alt/y") == published

        # Held until the timeout (2 s, less up to 10 % of jitter) when nothing
        # comes, then answered as usual.
        reply, took = client.connect(b)
        assert reply["successful"] and 1.7 < took < 3.0, (reply, took)
        assert client.request(b, "/meta/unsubscribe", subscription="/alt/*")["successful"]
        assert client.request(b, "/meta/disconnect")["successful"]
        assert_session_unknown(client.connect(a, advice={"timeout": 0})[0])
    finally:
        for c in (client, pub_a, pub_b):
            c.close()


def test_callback_polling_is_forwarded(nodes: tuple[ServerProcess, ServerProcess]) -> None:
    a, b = nodes
    client = Client(jsonp=True)
    pub = Client().ready(a)
    try:
        assert client.handshake(b)["successful"]
        assert node_of(client.client_id or "") == "nodeB"
        assert client.connect(a, advice={"timeout": 0})[0]["successful"]
        assert client.request(a, "/meta/subscribe", subscription="/jp/x")["successful"]
        # The held connect (on A for a session of B) is released by an event.
        client.start_connect(a)
        assert not client.answered(a, wait=0.3)
        assert pub.request(a, "/jp/x", data="to jsonp")["successful"]
        reply, took = client.finish_connect(a)
        assert reply["successful"] and took < 0.8, (reply, took)
        assert client.data("/jp/x") == ["to jsonp"]
        # Publishing over callback-polling through the other node, too.
        assert client.request(a, "/jp/x", data="own")["successful"]
        reply, _ = client.connect(a, advice={"timeout": 0})
        assert client.data("/jp/x") == ["to jsonp", "own"]
    finally:
        client.close()
        pub.close()


def test_browser_cookie_binding_applies_across_nodes(
    nodes: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = nodes
    client = Client().ready(a)
    try:
        good = client.cookie
        assert good
        # A stolen clientId under another cookie (or none) is unknown on the owner too.
        for cookie in ("0" * 32, None):
            messages, _ = client.send(
                b, [client.connect_message(advice={"timeout": 0})], "connect", cookie=cookie
            )
            assert_session_unknown(reply_of(messages, "/meta/connect"))
            messages, _ = client.send(
                b, [client.message("/meta/subscribe", subscription="/c")], cookie=cookie
            )
            assert_session_unknown(reply_of(messages, "/meta/subscribe"), meta=False)
        # The session itself is untouched.
        reply, _ = client.connect(b, advice={"timeout": 0})
        assert reply["successful"], reply
    finally:
        client.close()


def test_the_owner_sees_the_client_address_of_a_forwarded_request(
    nodes: tuple[ServerProcess, ServerProcess],
) -> None:
    """A cookieless request forwarded by B is named in A's log by the
    client's address (as B saw it), not as an unknown one."""
    a, b = nodes
    client = Client().ready(a)
    try:
        messages, _ = client.send(
            b, [client.connect_message(advice={"timeout": 0})], "connect", cookie=None
        )
        assert_session_unknown(reply_of(messages, "/meta/connect"))
        deadline = time.monotonic() + 3
        while "does not send back the BAYEUX_BROWSER cookie" not in a.stderr:
            assert time.monotonic() < deadline, a.stderr
            time.sleep(0.05)
        assert "client 127.0.0.1 (session" in a.stderr, a.stderr
        assert "client ? (session" not in a.stderr, a.stderr
    finally:
        client.close()


def test_unknown_or_forged_node_gets_402_promptly_without_a_loop(
    nodes: tuple[ServerProcess, ServerProcess], redis_srv: RedisServer
) -> None:
    a, b = nodes
    r = redis.Redis(host="127.0.0.1", port=redis_srv.port, socket_timeout=2)
    client = Client().ready(a)  # for its cookie
    try:
        for client_id, node, spublishes in (
            ("0123456789abcdef" * 2 + "nodeZ", a, 1),  # no such node: its PUBLISH reaches no one
            ("0123456789abcdef" * 2 + "nodeB", a, 2),  # forged for B: B answers, 402
            ("0123456789abcdef" * 2 + "nodeA", b, 2),
            ("0123456789abcdef" * 2 + "no-de", b, 0),  # cannot be a node id: answered at once
            ("0123456789abcdef" * 2 + "nodeB", b, 0),  # forged for the node it lands on
            ("short", a, 0),
        ):
            client.client_id = client_id
            # Request and answer, once each: nothing goes round in circles.
            # The nodes' own background traffic (a probe of an earlier test's
            # forwarded hold) can fall into one window: a loop would show in
            # every attempt, a probe in one at most.
            counts = []
            for _attempt in range(3):
                before = settled_spublish_calls(r)
                messages, took = client.send(
                    node, [client.connect_message(advice={"timeout": 0})], "connect"
                )
                assert_session_unknown(reply_of(messages, "/meta/connect"))
                assert took < 0.25, (client_id, took)
                messages, _ = client.send(node, [client.message("/x", data=1)])
                assert_session_unknown(reply_of(messages, "/x"), meta=False)
                counts.append(settled_spublish_calls(r) - before)
                if counts[-1] == 2 * spublishes:
                    break
            assert counts[-1] == 2 * spublishes and min(counts) >= 2 * spublishes, (
                client_id,
                counts,
            )
    finally:
        client.close()
        r.close()


def test_closed_client_connection_abandons_the_forwarded_hold(
    nodes: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = nodes
    client = Client().ready(a)
    pub = Client().ready(b)
    try:
        assert client.request(b, "/meta/subscribe", subscription="/ab/x")["successful"]
        client.start_connect(b)
        assert not client.answered(b, wait=0.3)
        client.drop(b, "connect")  # the browser goes away from B
        time.sleep(1.0)  # B notices within its tick and tells A to drop the hold
        assert pub.request(b, "/ab/x", data="kept")["successful"]
        time.sleep(0.2)
        # Had A still held the connect, the event would have gone to the closed
        # connection; abandoned, the event waits for the next connect.
        reply, took = client.connect(a)
        assert reply["successful"] and took < 0.5, (reply, took)
        assert client.data("/ab/x") == ["kept"]
    finally:
        client.close()
        pub.close()


def test_forwarded_round_trip_latency(nodes: tuple[ServerProcess, ServerProcess]) -> None:
    a, b = nodes
    client = Client().ready(a)
    try:
        took: dict[str, list[float]] = {"local": [], "forwarded": []}
        for _ in range(200):
            for name, node in (("local", a), ("forwarded", b)):
                reply, t = client.connect(node, advice={"timeout": 0})
                assert reply["successful"]
                took[name].append(t * 1000)
        summary = {
            name: (statistics.median(ts), sorted(ts)[int(len(ts) * 0.99)])
            for name, ts in took.items()
        }
        print(
            "\nconnect round trip, median / p99 ms: "
            + ", ".join(f"{k} {m:.2f} / {p:.2f}" for k, (m, p) in summary.items())
        )
        assert summary["forwarded"][0] < 20, summary
    finally:
        client.close()


# ------------------------------------------------------------- failures


def test_owner_killed_its_clients_rehandshake_on_a_survivor(
    nodes: tuple[ServerProcess, ServerProcess], redis_srv: RedisServer
) -> None:
    a, b = nodes
    c = start_node(redis_srv, "nodeC")
    client = Client()
    other = Client().ready(a)  # a client of a surviving node
    pub = Client().ready(b)
    try:
        assert client.handshake(c)["successful"]
        assert client.connect(a, advice={"timeout": 0})[0]["successful"]
        assert client.request(b, "/meta/subscribe", subscription="/k/x")["successful"]
        assert other.request(a, "/meta/subscribe", subscription="/k/x")["successful"]
        client.start_connect(b)  # held on C for B
        assert not client.answered(b, wait=0.3)

        c.proc.send_signal(signal.SIGKILL)
        c.proc.wait(5)
        # B finds the owner gone (probes: nothing listens on its channel any
        # more) and answers the held connect itself: 402 + handshake advice.
        reply, took = client.finish_connect(b)
        assert_session_unknown(reply)
        assert took < 0.3 + 4.0, took
        # Every further request of the client, on any node: 402, at once.
        for node in (a, b):
            reply, took = client.connect(node, advice={"timeout": 0})
            assert_session_unknown(reply)
            assert took < 0.25, took

        # It handshakes again on a survivor and goes on.
        assert client.handshake(a)["successful"]
        assert node_of(client.client_id or "") == "nodeA"
        assert client.connect(b, advice={"timeout": 0})[0]["successful"]
        assert client.request(b, "/meta/subscribe", subscription="/k/x")["successful"]
        assert pub.request(b, "/k/x", data="after")["successful"]
        reply, _ = client.connect(b)
        assert reply["successful"], reply
        assert client.data("/k/x") == ["after"]
        # The surviving node's client saw nothing but its event.
        reply, _ = other.connect(a)
        assert reply["successful"], reply
        assert other.data("/k/x") == ["after"]
    finally:
        for x in (client, other, pub):
            x.close()
        c.stop()


def test_owner_restarted_under_the_same_id(
    nodes: tuple[ServerProcess, ServerProcess], redis_srv: RedisServer
) -> None:
    """A worker restarted by the supervisor keeps its node id, not its sessions."""
    a, b = nodes
    old = start_node(redis_srv, "nodeT")
    new: ServerProcess | None = None
    client = Client()
    try:
        client.ready(old)
        client.start_connect(b)  # held on T for B
        assert not client.answered(b, wait=0.3)
        old.proc.send_signal(signal.SIGKILL)
        old.proc.wait(5)
        new = start_node(redis_srv, "nodeT")
        restarted = time.monotonic()
        # It announces itself; B answers the connect the old process held: 402.
        reply, _ = client.finish_connect(b)
        assert_session_unknown(reply)
        assert time.monotonic() - restarted < 1.0
        # (On a slow machine the probes may notice the old one gone first.)
        said = r"node nodeT (started again|is gone).*: 1 forwarded request"
        deadline = time.monotonic() + 5  # stderr is read by a thread
        while not re.search(said, b.stderr):
            assert time.monotonic() < deadline, b.stderr[-3000:]
            time.sleep(0.02)
        reply, _ = client.connect(a, advice={"timeout": 0})  # forwarded to the new one
        assert_session_unknown(reply)
        client.ready(new)
        assert client.connect(b, advice={"timeout": 0})[0]["successful"]
    finally:
        client.close()
        old.stop()
        if new is not None:
            new.assert_stopped_cleanly()


def test_sigterm_answers_held_connects_forwarded_both_ways_with_retry(
    redis_srv: RedisServer,
) -> None:
    p = start_node(redis_srv, "nodeP")
    q = start_node(redis_srv, "nodeQ")
    x, y, z = Client(), Client(), Client()
    try:
        x.ready(p)  # owned by P, its connect held on P for Q
        y.ready(q)  # owned by Q, its connect held on Q for P
        z.ready(q)  # owned by Q, its connect held on Q
        x.start_connect(q)
        y.start_connect(p)
        z.start_connect(q)
        for client, node in ((x, q), (y, p), (z, q)):
            assert not client.answered(node, wait=0.1 if client is not x else 0.3)

        t0 = time.monotonic()
        q.proc.send_signal(signal.SIGTERM)
        for client, node in ((x, q), (y, p), (z, q)):
            reply, _ = client.finish_connect(node)
            assert reply["successful"], reply
            assert reply["advice"]["reconnect"] == "retry", reply
        assert time.monotonic() - t0 < 1.5
        assert q.proc.wait(10) == 0, q.describe()
        q.stop()
        stats = forwarding_stats(q)
        assert stats["released"] == 0 and stats["served"] >= 1, stats

        # x goes on through P; y and z, whose node is gone, handshake again.
        assert x.connect(p, advice={"timeout": 0})[0]["successful"]
        for client in (y, z):
            reply, took = client.connect(p, advice={"timeout": 0})
            assert_session_unknown(reply)
            assert took < 0.25
    finally:
        for client in (x, y, z):
            client.close()
        p.stop()
        q.stop()
    assert "forwarding:" in p.stderr


def test_draining_origin_has_the_owner_answer_with_its_events(
    redis_srv: RedisServer,
) -> None:
    p = start_node(redis_srv, "nodeR")
    q = start_node(redis_srv, "nodeS")
    client = Client()
    try:
        client.ready(p)
        assert client.request(p, "/meta/subscribe", subscription="/d/x")["successful"]
        client.start_connect(q)  # held on R for S
        assert not client.answered(q, wait=0.3)
        q.proc.send_signal(signal.SIGTERM)  # S drains: R answers the held connect now
        reply, took = client.finish_connect(q)
        assert reply["successful"] and reply["advice"]["reconnect"] == "retry", reply
        assert took < 0.3 + 1.0
        assert q.proc.wait(10) == 0
        q.stop()
        p.stop()
        assert forwarding_stats(p)["released"] == 1, p.stderr
        assert forwarding_stats(q)["answered"] == 1, q.stderr
    finally:
        client.close()
        p.stop()
        q.stop()


def test_redis_down_forwarded_requests_retry_local_ones_go_on() -> None:
    server = RedisServer().start()
    a = b = None
    client = Client()
    try:
        a = start_node(server, "nodeU")
        b = start_node(server, "nodeV")
        client.ready(a)
        client.start_connect(b)  # held on U for V
        assert not client.answered(b, wait=0.3)
        server.kill()
        # V cannot get an answer any more: it tells the client to retry (backoff).
        messages, took = client.finish(b, "connect")
        reply = reply_of(messages, "/meta/connect")
        assert reply["error"] == "503::cluster_unavailable", reply
        assert reply["advice"]["reconnect"] == "retry", reply
        assert took < 0.3 + 1.0, took
        messages, took = client.send(b, [client.connect_message(advice={"timeout": 0})], "connect")
        assert reply_of(messages, "/meta/connect")["error"] == "503::cluster_unavailable"
        assert took < 0.25, took
        # The owner serves the session directly meanwhile.
        reply, _ = client.connect(a, advice={"timeout": 0})
        assert reply["successful"], reply

        server.start()
        deadline = time.monotonic() + 10
        while True:
            reply, _ = client.connect(b, advice={"timeout": 0})
            if reply["successful"]:
                break
            assert reply["error"] == "503::cluster_unavailable", reply
            assert time.monotonic() < deadline, "forwarding did not come back"
            time.sleep(0.05)
    finally:
        client.close()
        for node in (a, b):
            if node is not None:
                node.assert_stopped_cleanly()
        server.stop()


# ------------------------------------------------------ in-process units


def test_unanswered_forward_times_out_with_retry_advice() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        core = BayeuxCore(ServerOptions(timeout=300), loop, node_id="here")
        broker = FakeBroker(receivers=1)  # the owner got it, and never answers
        forwarder = RedisForwarder(core, broker, margin=0.2)  # type: ignore[arg-type]
        forwarder.start()
        connect = {"channel": "/meta/connect", "clientId": "f" * 32 + "there", "id": "7"}
        exchange = FakeExchange()
        forwarder.forward("there", [connect], exchange)
        await asyncio.sleep(0.3)
        assert exchange.sent is None  # held: 0.3 s timeout + 0.2 s margin
        await asyncio.sleep(1.0)
        (reply,) = exchange.replies()
        assert reply == {
            "channel": "/meta/connect",
            "successful": False,
            "error": "504::forward_timeout",
            "id": "7",
            "advice": {"reconnect": "retry", "interval": 0, "timeout": 300},
        }
        # The owner is told to forget it.
        assert broker.sent[-1][0] == b"node:there" and broker.sent[-1][1].startswith(b"A")
        assert forwarder.stats()["timed_out"] == 1

        # Redis unreachable: answered at once, retry advice; a publish fails plainly.
        broker.connected = False
        exchange = FakeExchange()
        publish = {"channel": "/a", "clientId": "f" * 32 + "there", "id": "8", "data": 1}
        forwarder.forward("there", [connect, publish], exchange)
        first, second = exchange.replies()
        assert first["error"] == "503::cluster_unavailable" and first["advice"]["reconnect"]
        assert second == {
            "channel": "/a",
            "successful": False,
            "error": "503::cluster_unavailable",
            "id": "8",
        }
        # A request whose fate is unknown (the connection died under it): the same.
        broker.connected = True
        broker.receivers = None
        exchange = FakeExchange()
        forwarder.forward("there", [connect], exchange)
        await asyncio.sleep(0.05)
        assert exchange.replies()[0]["error"] == "503::cluster_unavailable"

        # No receiver: the owner is gone, its session with it (402, handshake) ...
        broker.receivers = 0
        exchange = FakeExchange()
        forwarder.forward("there", [connect], exchange)
        await asyncio.sleep(0.05)
        assert exchange.replies()[0]["error"] == "402::session_unknown"
        # ... unless this node has just reconnected to Redis: the others may
        # not be back yet (a Redis restart), so the client retries.
        forwarder._on_connect(False)
        exchange = FakeExchange()
        forwarder.forward("there", [connect], exchange)
        await asyncio.sleep(0.05)
        assert exchange.replies()[0]["error"] == "503::cluster_unavailable"

        # A draining owner refuses forwarded connects: the origin tells the
        # client to retry (with backoff) instead of having it poll in a loop.
        core.draining = True
        request = {"r": 5, "o": "there", "t": "long-polling", "b": None, "m": [connect]}
        forwarder._received(b"Q" + json.dumps(request).encode())
        assert broker.sent[-1] == (b"node:there", b"B5")
        forwarder.close()
        core.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("sharded", [True, False], ids=["sharded", "plain"])
def test_broker_direct_messages_survive_a_redis_restart(
    sharded: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not sharded:  # as on a Redis before 7.0

        async def no_sharding(self: RedisBroker, conn: Any) -> bool:
            return False

        monkeypatch.setattr(RedisBroker, "_has_sharded_pubsub", no_sharding)
    server = RedisServer().start()

    async def scenario() -> None:
        got: list[bytes] = []
        replies: list[int | None] = []
        one = RedisBroker(lambda *a: None, node_id="one", url=server.url, backoff_max=0.2)
        two = RedisBroker(lambda *a: None, node_id="two", url=server.url, backoff_max=0.2)
        one.listen(one.node_channel("one"), got.append)
        two.listen(two.node_channel("two"), got.append)
        await one.start()
        await two.start()
        r = redis.Redis(host="127.0.0.1", port=server.port)

        async def exchange(payload: bytes, to: str = "two") -> None:
            assert one.send_direct(one.node_channel(to), payload, replies.append)
            for _ in range(200):
                if len(replies) == n_replies + 1:
                    break
                await asyncio.sleep(0.01)

        n_replies = 0
        await exchange(b"hello")
        assert replies == [1] and got == [b"hello"]
        n_replies = 1
        await exchange(b"nobody", to="three")
        assert replies == [1, 0] and got == [b"hello"]
        # The node channel does not count among the Bayeux subscriptions.
        entry = next(c for c in r.client_list() if c["name"] == "engine-two-sub")
        assert (int(entry["sub"]), int(entry.get("ssub", 0))) == ((0, 1) if sharded else (1, 0))

        server.kill()
        await asyncio.sleep(0.3)
        assert not one.send_direct(one.node_channel("two"), b"lost", replies.append)
        server.start()
        for _ in range(300):
            if one.connected and two.connected:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # the resubscription is written before anything else
        n_replies = 2
        await exchange(b"again")
        assert replies == [1, 0, 1] and got == [b"hello", b"again"]
        assert one.stats()["direct_sent"] == 3
        r.close()
        await one.stop()
        await two.stop()

    try:
        asyncio.run(scenario())
    finally:
        server.stop()


def test_broker_replies_go_to_their_own_direct_messages_under_load(
    redis_srv: RedisServer,
) -> None:
    """Direct messages mixed with broadcasts over many batches: each reply to its sender."""

    async def scenario() -> None:
        one = RedisBroker(lambda *a: None, node_id="load1", url=redis_srv.url, buffer_bytes=1 << 30)
        two = RedisBroker(lambda *a: None, node_id="load2", url=redis_srv.url)
        got: list[bytes] = []
        two.listen(two.node_channel("load2"), got.append)
        await one.start()
        await two.start()
        results: list[tuple[int, int | None]] = []  # every call, in order
        expected: dict[int, int] = {}
        rng = random.Random(7)

        def reply_to(n: int, receivers: int | None) -> None:
            results.append((n, receivers))

        small = b'{"channel":"/load/x","data":1}'
        big = b'{"channel":"/load/x","data":"%s"}' % (b"x" * 1_000_000)
        n = 0
        for turn in range(200):
            for _ in range(rng.randrange(0, 12)):
                kind = rng.randrange(3)
                if kind == 0:
                    # Now and then a big one: the write waits, more is queued meanwhile.
                    one.publish("/load/x", big if rng.randrange(8) == 0 else small)
                    continue
                to, receivers = ("load2", 1) if kind == 1 else ("nobody", 0)
                expected[n] = receivers
                assert one.send_direct(
                    one.node_channel(to), b"%d" % n, functools.partial(reply_to, n)
                )
                n += 1
            await asyncio.sleep(0 if turn % 3 else 0.001)
        for _ in range(300):
            if len(results) == n:
                break
            await asyncio.sleep(0.01)
        assert results == sorted(expected.items())  # once each, in order, the right count
        assert sorted(int(g) for g in got) == [k for k, v in expected.items() if v == 1]
        assert one.stats()["published_lost"] == 0 and one.stats()["direct_lost"] == 0
        await one.stop()
        await two.stop()

    asyncio.run(scenario())


def test_broker_reply_callbacks_while_a_batch_is_being_written() -> None:
    async def scenario() -> None:
        broker = RedisBroker(lambda *a: None, node_id="w", url="redis://127.0.0.1:1/0")
        broker.connected = True
        broker._sharded = True
        broker._wake = asyncio.Event()
        sender = asyncio.get_running_loop().create_task(broker._sender(SlowConnection()))  # type: ignore[arg-type]
        calls: list[tuple[int, int | None]] = []
        expected: list[tuple[int, int]] = []
        rng = random.Random(3)
        for n in range(600):
            # Batches of broadcasts only, of direct messages only, and of both.
            op = rng.randrange(3)
            if op != 1:
                broker.publish("/w", b"{}")
            if op != 0:
                to = rng.choice((b"yes", b"no"))
                expected.append((n, int(to == b"yes")))
                assert broker.send_direct(b"node:" + to, b"x", lambda r, n=n: calls.append((n, r)))
            if rng.randrange(3) == 0:
                await asyncio.sleep(0.001 * rng.randrange(3))
        for _ in range(500):
            if len(calls) >= len(expected):
                break
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.02)
        sender.cancel()
        assert calls == expected
        assert broker.forwarded == broker._seq

    asyncio.run(scenario())
