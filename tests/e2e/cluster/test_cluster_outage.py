"""Nothing acknowledged is lost in a Redis outage, nothing is delivered twice.

* A frozen Redis (SIGSTOP for 10 s) under a steady stream of publishes from
  one node to a subscriber on another: every message arrives once, in order.
* A forwarded long-poll whose relay node is killed while it carries an
  event: the event is put back on the owner's queue and arrives once.
* Units: the receivers' bookkeeping of origin and channel sequences
  (duplicates, gaps, restarted origins, bounds), and the bounds of the
  buffer of publishes waiting for Redis (bytes, seconds), each loss counted
  and logged once per cause.

The cluster tests start a real `redis-server` (tests/redis_server.py) and
engine processes; without redis-server the module is skipped (fails on CI).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from redis_server import RedisServer, require_redis_server

require_redis_server()

from cluster_support import (  # noqa: E402
    Listener,
    broker_stats,
    node_stub,
    redis_client,
    subscribed,
    wait_until,
)
from forwarding_support import Client, forwarding_stats  # noqa: E402
from harness import ServerProcess, start_server  # noqa: E402
from support import Browser  # noqa: E402

from engine.cluster.redis_broker import OriginSequences, RedisBroker  # noqa: E402
from engine.stats import Counters  # noqa: E402

pytestmark = pytest.mark.timeout(90)

NODE_ARGS = ("--timeout", "1500", "--log-level", "info")
MESSAGES = 1000
FREEZE = 10.0  # seconds redis-server stays stopped (the figure)


@pytest.fixture
def redis_srv() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def start_nodes(redis_srv: RedisServer, *names: str) -> list[ServerProcess]:
    started: list[ServerProcess] = []
    try:
        for name in names:
            started.append(start_server("--broker", redis_srv.url, "--node-id", name, *NODE_ARGS))
    except BaseException:
        for node in started:
            node.stop()
        raise
    return started


# ------------------------------------------------------- a frozen Redis


def test_frozen_redis_loses_and_duplicates_nothing(redis_srv: RedisServer) -> None:
    a, b = start_nodes(redis_srv, "frzA", "frzB")
    listener: Listener | None = None
    try:
        listener = Listener(b.port, "/frz/x")
        wait_until(subscribed(redis_client(redis_srv), "frzB", 1, 0), what="frzB subscribed")
        publisher = Browser(node_stub(a.port)).ready()
        sent = 0
        failures: list[BaseException] = []

        def stream() -> None:
            # A steady stream, about 14 s in all: the freeze falls in the middle.
            nonlocal sent
            try:
                for n in range(MESSAGES):
                    assert publisher.publish("/frz/x", n).reply("/frz/x")["successful"]
                    sent = n + 1
                    time.sleep(0.012)
            except BaseException as exc:
                failures.append(exc)

        thread = threading.Thread(target=stream, daemon=True)
        thread.start()
        wait_until(lambda: sent >= 150, timeout=10, what="the stream under way")
        assert redis_srv.proc is not None
        os.kill(redis_srv.proc.pid, signal.SIGSTOP)
        try:
            at_stop = sent
            time.sleep(FREEZE)
            during = sent - at_stop
        finally:
            os.kill(redis_srv.proc.pid, signal.SIGCONT)
        thread.join(40)
        assert not thread.is_alive() and not failures, failures
        assert during > 300, during  # publishes acknowledged while Redis was frozen
        listener.wait_for(lambda data: len(data) >= MESSAGES, timeout=20)
        time.sleep(0.3)  # a duplicate would come right behind
        assert listener.data() == list(range(MESSAGES))
        publisher.close()
        listener.close()
        listener = None
    finally:
        if listener is not None:
            listener.close()
        a.stop()
        b.stop()
    stats_a, stats_b = broker_stats(a), broker_stats(b)
    assert stats_a["published_lost"] == 0 and stats_a["forwarded"] >= MESSAGES, stats_a
    assert stats_b["gaps"] == 0 and stats_b["received"] == MESSAGES, stats_b
    # Both noticed the freeze, kept their connections, and said so.
    assert stats_a["stalls"] >= 1 and stats_a["reconnects"] == 0, stats_a
    assert stats_b["reconnects"] == 0, stats_b
    assert "not answering for" in a.stderr and "does not answer a new connection" in a.stderr
    assert "answering again after" in a.stderr


# ------------------------------------- a relay killed with an event on the way


def test_relay_killed_with_an_event_in_flight_loses_and_duplicates_nothing(
    redis_srv: RedisServer,
) -> None:
    """The session is owned by node A; its long-polls go through node B."""
    a, b = start_nodes(redis_srv, "rlyA", "rlyB")
    client = Client()
    publisher = Client()
    try:
        publisher.ready(a)
        assert client.handshake(a)["successful"]
        assert (client.client_id or "").endswith("rlyA")
        reply, _ = client.connect(b, advice={"timeout": 0})  # forwarded to A
        assert reply["successful"], reply
        assert client.request(a, "/meta/subscribe", subscription="/rly/x")["successful"]

        # A forwarded long-poll that carries an event: written, confirmed.
        client.start_connect(b)
        time.sleep(0.3)  # held at A for B
        assert publisher.request(a, "/rly/x", data=1)["successful"]
        reply, _ = client.finish_connect(b)
        assert reply["successful"] and client.data("/rly/x") == [1], client.events

        # The next one: B freezes, the event goes out to it, B dies without writing it.
        client.start_connect(b)
        time.sleep(0.3)
        os.kill(b.proc.pid, signal.SIGSTOP)
        assert publisher.request(a, "/rly/x", data=2)["successful"]
        time.sleep(0.3)  # the answer sits in B's socket
        os.kill(b.proc.pid, signal.SIGKILL)
        b.proc.wait(5)
        with pytest.raises((http.client.HTTPException, OSError)):
            client.finish_connect(b)
        client.drop(b, "connect")

        # The client reconnects through the owner (as CometD does after a
        # failed connect): the event was put back, ahead of newer ones.
        reply, _ = client.connect(a, advice={"timeout": 0})
        assert reply["successful"], reply
        for n in (3, 4, 5):
            assert publisher.request(a, "/rly/x", data=n)["successful"]
            reply, _ = client.connect(a)
            assert reply["successful"], reply
        time.sleep(0.2)
        reply, _ = client.connect(a, advice={"timeout": 0})
        assert client.data("/rly/x") == [1, 2, 3, 4, 5], client.events
    finally:
        client.close()
        publisher.close()
        a.stop()
        b.stop()
    stats = forwarding_stats(a)
    assert stats["confirmed"] == 1 and stats["requeued"] == 1, stats
    assert stats["unconfirmed"] == 0 and stats["deferred"] >= 1, stats
    assert "put back on its queue: node rlyB did not write them" in a.stderr


# ---------------------------------------------------------------- units


def test_origin_sequences_drop_duplicates_and_count_gaps() -> None:
    seqs = OriginSequences(max_origins=2, max_channels=3)
    ch, other = b"bayeux:0:/a", b"bayeux:0:/b"
    assert seqs.accept(b"n1.t1", 1, ch, 1) == 0  # first sight: no gap whatever came before
    assert seqs.accept(b"n1.t1", 2, other, 1) == 0
    assert seqs.accept(b"n1.t1", 2, ch, 2) == -1  # seen (a re-send): dropped
    assert seqs.accept(b"n1.t1", 1, ch, 1) == -1
    # seq 3 and 4 went to channels this node does not subscribe: no gap on /a.
    assert seqs.accept(b"n1.t1", 5, ch, 2) == 0
    # Channel seq 3 and 4 of /a never arrived.
    assert seqs.accept(b"n1.t1", 8, ch, 5) == 2
    # Another origin has its own sequences.
    assert seqs.accept(b"n2.u1", 1, ch, 1) == 0
    assert seqs.accept(b"n2.u1", 2, ch, 2) == 0
    # n1 restarted (new token): counting starts again, nothing is a duplicate or a gap.
    assert seqs.accept(b"n1.t2", 1, ch, 1) == 0
    assert seqs.restarts == 1 and b"n1.t1" not in seqs.origins
    assert b"n1.t1" not in seqs.channels[ch]
    assert seqs.accept(b"n1.t2", 2, ch, 2) == 0
    # The origin started counting /a again (its table of channels is bounded): a new start.
    assert seqs.accept(b"n1.t2", 9, ch, 1) == 0
    # No longer subscribed: what was published meanwhile is not a gap.
    seqs.forget(ch)
    assert seqs.accept(b"n1.t2", 20, ch, 9) == 0
    seqs.forget_prefix(b"bayeux:0:/")
    assert seqs.channels == {}
    # Bounded: a third node evicts the oldest; many channels, the oldest channel.
    assert seqs.accept(b"n3.v1", 1, ch, 1) == 0
    assert len(seqs.origins) == 2 and set(seqs.nodes) == {b"n1", b"n3"}
    for i in range(5):
        seqs.accept(b"n3.v1", 2 + i, b"bayeux:0:/c%d" % i, 1)
    assert len(seqs.channels) == 3


def unconnected_broker(**options: Any) -> RedisBroker:
    """A broker that never connects (nothing listens on port 1): its buffer fills."""
    return RedisBroker(lambda *a: None, node_id="unit", url="redis://127.0.0.1:1/0", **options)


def test_broker_receiving_drops_duplicates_and_counts_gaps() -> None:
    delivered: list[bytes] = []
    counters = Counters()
    broker = RedisBroker(
        lambda session, encoded, lazy: delivered.append(encoded),
        node_id="rx",
        url="redis://127.0.0.1:1/0",
        counters=counters,
    )
    broker.subscribe(object(), "/g")  # type: ignore[arg-type]
    channel = b"bayeux:0:/g"

    def message(origin: bytes, seq: int, channel_seq: int) -> bytes:
        return b'%s %d %d\n{"n":%d}' % (origin, seq, channel_seq, seq)

    for seq in (1, 2, 3):
        broker._received(channel, message(b"tx.aa", seq, seq))
    broker._received(channel, message(b"tx.aa", 3, 3))  # a copy through a second subscription
    for seq in (2, 3, 4):  # a re-send after a reconnection: 2 and 3 again
        broker._received(channel, message(b"tx.aa", seq, seq))
    broker._received(channel, message(b"tx.aa", 7, 7))  # 5 and 6 never came
    broker._received(channel, message(broker.origin.encode(), 9, 1))  # our own: an echo
    assert delivered == [b'{"n":%d}' % n for n in (1, 2, 3, 4, 7)]
    assert counters.cluster_duplicates == 2 and broker.duplicates == 1
    assert counters.cluster_gaps == 2 and broker.echoes == 1
    assert broker.stats()["gaps"] == 2 and broker.stats()["received_again"] == 2


def test_buffer_bound_in_bytes_counts_and_logs_the_loss(caplog: pytest.LogCaptureFixture) -> None:
    counters = Counters()
    broker = unconnected_broker(buffer_bytes=10_000, counters=counters)
    message = b"x" * 900
    with caplog.at_level(logging.WARNING, logger="engine.redis"):
        for _ in range(20):
            broker.publish("/b", message)
    # What fits waits for Redis (in order); the rest is lost and counted.
    assert broker.buffered == 10 and counters.cluster_published_lost == 10
    assert broker.published_lost == 10
    lines = [r.getMessage() for r in caplog.records if "redis_buffer_bytes" in r.getMessage()]
    assert len(lines) == 1, lines  # once per cause and period, not once per message
    assert "not forwarded to other nodes" in lines[0]
    assert broker.limit_log.counts()["redis_buffer_full"] == 9  # held for the next line


def test_buffer_bound_in_seconds_counts_and_logs_the_loss(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    counters = Counters()
    broker = unconnected_broker(buffer_seconds=30.0, counters=counters)
    broker.clock = lambda: now[0]
    for _ in range(3):
        broker.publish("/s", b"{}")
    now[0] += 20.0
    for _ in range(2):
        broker.publish("/s", b"{}")
    now[0] += 15.0  # the first three are 35 s old, the others 15 s
    with caplog.at_level(logging.WARNING, logger="engine.redis"):
        broker._expire()
    assert broker.buffered == 2 and counters.cluster_published_lost == 3
    assert broker.stats()["buffered_bytes"] > 0
    assert any("redis_buffer_seconds" in r.getMessage() for r in caplog.records)
    now[0] += 20.0
    broker._expire()
    assert broker.buffered == 0 and counters.cluster_published_lost == 5


def test_buffered_publishes_leave_in_order_once_redis_is_there() -> None:
    """Published while Redis is down: kept, then sent in order on the first connection."""
    server = RedisServer()  # a port, nothing listening yet

    async def scenario() -> None:
        got: list[bytes] = []
        one = RedisBroker(
            lambda *a: None, node_id="bufA", url=server.url, backoff_max=0.2, start_timeout=0.1
        )
        two = RedisBroker(
            lambda s, e, lazy: got.append(e),
            node_id="bufB",
            url=server.url,
            backoff_max=0.2,
            start_timeout=0.1,
        )
        two.subscribe(object(), "/o")  # type: ignore[arg-type]
        # The hold after an outage is what lets the other nodes (two, here)
        # come back first; long enough for a loaded machine.
        one.resend_delay = 3.0
        await one.start()
        for n in range(50):
            one.publish("/o", b"%d" % n)
        assert one.buffered == 50
        await asyncio.to_thread(server.start)
        two.start_timeout = 5.0  # Redis is up now: only the machine's load delays it
        await two.start()
        assert two.connected and one.buffered == 50
        for _ in range(1000):
            if len(got) == 50:
                break
            await asyncio.sleep(0.01)
        assert got == [b"%d" % n for n in range(50)]
        assert one.buffered == 0 and one.published_lost == 0
        await one.stop()
        await two.stop()

    try:
        asyncio.run(scenario())
    finally:
        server.stop()


class MutingProxy:
    """A TCP proxy to Redis that can stop passing Redis's replies on the
    connections open so far, while new connections work: a connection lost
    in the network while Redis is fine (what the broker's probe tells apart)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.muted: set[asyncio.StreamWriter] = set()
        self.open: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    def mute_open_connections(self) -> None:
        self.muted.update(self.open)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.open.append(writer)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, down: bool) -> None:
            while data := await src.read(65536):
                if down and writer in self.muted:
                    continue  # lost on the way
                dst.write(data)
            dst.close()

        await asyncio.gather(
            pipe(reader, up_writer, False), pipe(up_reader, writer, True), return_exceptions=True
        )

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for writer in self.open:
            writer.close()


def test_publishes_unacknowledged_on_a_lost_connection_are_sent_again_once(
    redis_srv: RedisServer,
) -> None:
    """Redis got them but its replies were lost: the broker connects again and
    sends them again; the receiver drops the copies and misses nothing."""

    async def scenario() -> None:
        proxy = MutingProxy(redis_srv.port)
        port = await proxy.start()
        got: list[bytes] = []
        fast = {"reply_timeout": 0.3, "health_interval": 0.5, "connect_timeout": 0.5}
        one = RedisBroker(
            lambda *a: None, node_id="lossA", url=f"redis://127.0.0.1:{port}/0",
            backoff_max=0.2, **fast,
        )  # fmt: skip
        two = RedisBroker(lambda s, e, lazy: got.append(e), node_id="lossB", url=redis_srv.url)
        two.subscribe(object(), "/l")  # type: ignore[arg-type]
        await one.start()
        await two.start()
        await asyncio.sleep(0.1)  # two's SUBSCRIBE is in
        for n in range(20):
            one.publish("/l", b"%d" % n)
        await asyncio.sleep(0.1)
        proxy.mute_open_connections()
        for n in range(20, 60):  # one batch: Redis gets it, its replies are lost
            one.publish("/l", b"%d" % n)
        for _ in range(400):
            if one.reconnects and len(got) >= 60 and not one.buffered:
                break
            await asyncio.sleep(0.01)
        for n in range(60, 70):
            one.publish("/l", b"%d" % n)
        for _ in range(300):
            if len(got) >= 70:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        assert got == [b"%d" % n for n in range(70)]
        assert one.reconnects == 1 and one.stalls >= 1
        assert one.counters.cluster_resent == 40 and one.published_lost == 0
        assert two.counters.cluster_duplicates == 40
        assert two.counters.cluster_gaps == 0
        await one.stop()
        await two.stop()
        proxy.close()

    asyncio.run(scenario())


def test_direct_messages_leave_in_their_order_among_publishes() -> None:
    """Batches capped in bytes: each direct message still leaves right after
    the publishes queued before it (a forwarded request sees them)."""
    import random

    from forwarding_support import SlowConnection

    class RecordingConnection(SlowConnection):
        def __init__(self) -> None:
            super().__init__()
            self.written: list[bytes] = []

        async def send_packed_command(
            self, chunks: list[bytes], check_health: bool = False
        ) -> None:
            for i in range(0, len(chunks), 3):
                head, payload = chunks[i], chunks[i + 1]
                self.written.append(payload[:12] if head.endswith(b"\n") else payload)
            await super().send_packed_command(chunks, check_health)

    async def scenario() -> None:
        broker = unconnected_broker()
        broker.connected = True
        broker._wake = asyncio.Event()
        conn = RecordingConnection()
        sender = asyncio.get_running_loop().create_task(broker._sender(conn))  # type: ignore[arg-type]
        rng = random.Random(5)
        expected: list[bytes] = []
        for n in range(300):
            if rng.randrange(3):
                big = rng.randrange(10) == 0  # now and then over the batch cap alone
                body = b"%-12d" % n + (b"x" * 1_200_000 if big else b"")
                broker.publish("/o", body)
                expected.append(body[:12])
            else:
                assert broker.send_direct(b"node:yes", b"d%d" % n)
                expected.append(b"d%d" % n)
            if rng.randrange(4) == 0:
                await asyncio.sleep(0)
        for _ in range(500):
            if len(conn.written) == len(expected) and not broker.buffered:
                break
            await asyncio.sleep(0.01)
        sender.cancel()
        assert conn.written == expected
        assert broker.forwarded == len([e for e in expected if not e.startswith(b"d")])

    asyncio.run(scenario())


def test_buffer_options_are_validated() -> None:
    from engine.options import ServerOptions

    assert ServerOptions().redis_buffer_bytes == 64 * 1024 * 1024
    assert ServerOptions().redis_buffer_seconds == 30.0
    with pytest.raises(ValueError, match="redis_buffer_bytes"):
        ServerOptions(redis_buffer_bytes=10)
    with pytest.raises(ValueError, match="redis_buffer_seconds"):
        ServerOptions(redis_buffer_seconds=0)


def test_leading_events_are_told_from_replies() -> None:
    from engine.cluster.forwarding import _leading_events

    event = b'{"channel":"/a","data":{"text":"\\"successful\\": true"}}'
    reply = b'{"channel":"/meta/connect","successful":true,"id":"3"}'
    failure = b'{"channel":"/p","successful":false,"error":"403::denied"}'
    assert _leading_events([event, event, reply]) == 2
    assert _leading_events([event, failure, reply]) == 1
    assert _leading_events([reply]) == 0
    assert _leading_events([event]) == 1  # an extension deleted the reply
    assert _leading_events([]) == 0


def test_owner_keeps_a_forwarded_answers_events_until_confirmed() -> None:
    """In process: the owner side of `E`, `C`, `X`, `K` and `k` (see engine/forwarding.py)."""
    from forwarding_support import FakeBroker, FakeExchange

    from engine.cluster.forwarding import RedisForwarder
    from engine.options import ServerOptions
    from engine.protocol.core import BayeuxCore

    class LocalExchange(FakeExchange):
        """A request of a client connected to the owner itself."""

        client_address = "127.0.0.1"
        limits = None

        def make_limits(self) -> None:
            return None

        def session_count(self) -> int:
            return 0

        def room(self) -> int:
            return 1 << 20

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        core = BayeuxCore(ServerOptions(timeout=5000), loop, node_id="here")
        broker = FakeBroker(receivers=1)
        forwarder = RedisForwarder(core, broker)  # type: ignore[arg-type]
        core.forwarder = forwarder
        forwarder.start()
        hello = LocalExchange()
        core.process_here(
            [
                {
                    "channel": "/meta/handshake",
                    "version": "1.0",
                    "supportedConnectionTypes": ["long-polling"],
                }
            ],
            hello,
        )
        client_id = hello.replies()[0]["clientId"]
        session = core.sessions[client_id]
        first = LocalExchange()
        core.process_here([{"channel": "/meta/connect", "clientId": client_id}], first)
        core.process_here(
            [{"channel": "/meta/subscribe", "clientId": client_id, "subscription": "/u"}],
            LocalExchange(),
        )
        rid = 100

        def forwarded_connect() -> int:
            nonlocal rid
            rid += 1
            connect = {"channel": "/meta/connect", "clientId": client_id, "id": str(rid)}
            request = {"r": rid, "o": "there", "t": "long-polling", "b": "cookie", "m": [connect]}
            forwarder._received(b"Q" + json.dumps(request).encode())
            return rid

        async def publish(n: int) -> None:
            core.publish_from("/u", {"channel": "/u", "data": n})
            await asyncio.sleep(0.01)  # the held connect is answered in the next loop turn

        def last_sent() -> bytes:
            return broker.sent[-1][1]

        # Written and confirmed: nothing kept.
        held = forwarded_connect()
        await publish(1)
        assert last_sent().startswith(b"E%d here\n" % held)
        assert forwarder.stats()["unconfirmed"] == 1
        forwarder._received(b"C%d there" % held)
        assert forwarder.stats()["unconfirmed"] == 0 and forwarder.confirmed == 1
        assert not session.queue

        # Not written (X): put back ahead of what came since, in order.
        held = forwarded_connect()
        await publish(2)
        core.publish_from("/u", {"channel": "/u", "data": 3})  # queued meanwhile
        forwarder._received(b"X%d there" % held)
        assert [json.loads(e)["data"] for e in session.queue or []] == [2, 3]
        assert forwarder.requeued == 1 and core.stats.cluster_requeued == 1

        # A request of the session while an answer is unconfirmed waits for it:
        # the owner asks (K); the origin's `k` without a `C` before it: put back.
        local = LocalExchange()
        core.process_here(
            [{"channel": "/meta/connect", "clientId": client_id, "advice": {"timeout": 0}}], local
        )
        assert [json.loads(m)["data"] for m in (local.sent or [])[:-1]] == [2, 3]
        held = forwarded_connect()
        await publish(4)
        local = LocalExchange()
        core.process_here(
            [{"channel": "/meta/connect", "clientId": client_id, "advice": {"timeout": 0}}], local
        )
        assert local.sent is None and forwarder.deferred == 1
        assert last_sent() == b"K%d here" % held and broker.sent[-1][0] == b"node:there"
        forwarder._received(b"k%d there" % held)
        assert [m.get("data") for m in local.replies()] == [4, None]

        # An origin that no longer exists (no receiver for E): put back at once.
        broker.receivers = 0
        held = forwarded_connect()
        await publish(5)
        assert [json.loads(e)["data"] for e in session.queue or []] == [5]
        assert forwarder.requeued == 3 and forwarder.stats()["unconfirmed"] == 0
        forwarder.close()
        core.close()

    asyncio.run(scenario())


def test_origin_confirms_what_it_wrote_even_after_an_outage() -> None:
    """In process: the relaying side of `E`: `C` once written, `X` when its
    client is gone, a `C` that could not go is sent when the owner asks."""
    from forwarding_support import FakeBroker, FakeExchange

    from engine.cluster.forwarding import RedisForwarder
    from engine.options import ServerOptions
    from engine.protocol.core import BayeuxCore

    class GoneExchange(FakeExchange):
        def is_gone(self) -> bool:
            return True

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        core = BayeuxCore(ServerOptions(timeout=5000), loop, node_id="here")
        broker = FakeBroker(receivers=1)
        forwarder = RedisForwarder(core, broker)  # type: ignore[arg-type]
        forwarder.start()
        connect = {"channel": "/meta/connect", "clientId": "f" * 32 + "there"}

        def forward(exchange: FakeExchange) -> int:
            forwarder.forward("there", [connect], exchange)
            return int(json.loads(broker.sent[-1][1][1:])["r"])

        answer = b'{"channel":"/u","data":1},{"channel":"/meta/connect","successful":true}'
        exchange = FakeExchange()
        rid = forward(exchange)
        forwarder._received(b"E%d there\n" % rid + answer)
        assert [m.get("data") for m in exchange.replies()] == [1, None]
        assert broker.sent[-1] == (b"node:there", b"C%d here" % rid)

        rid = forward(GoneExchange())
        forwarder._received(b"E%d there\n" % rid + answer)
        assert broker.sent[-1] == (b"node:there", b"X%d here" % rid)
        forwarder._received(b"E99 there\n" + answer)  # for no request waiting here
        assert broker.sent[-1] == (b"node:there", b"X99 here")

        exchange = FakeExchange()
        rid = forward(exchange)
        broker.connected = False  # the answer arrives, its C cannot go
        forwarder._received(b"E%d there\n" % rid + answer)
        assert exchange.sent is not None and broker.sent[-1][1].startswith(b"Q")
        broker.connected = True
        forwarder._received(b"K%d there" % rid)
        assert [p for _, p in broker.sent[-2:]] == [b"C%d here" % rid, b"k%d here" % rid]

        # Asked about a request still waiting here: its answer was lost on
        # the way; the client is told to retry, and whatever comes is not written.
        exchange = FakeExchange()
        rid = forward(exchange)
        forwarder._received(b"K%d there" % rid)
        assert exchange.replies()[0]["error"] == "503::cluster_unavailable"
        assert broker.sent[-1][1] == b"k%d here" % rid
        forwarder._received(b"E%d there\n" % rid + answer)
        assert broker.sent[-1][1] == b"X%d here" % rid
        forwarder.close()
        core.close()

    asyncio.run(scenario())
