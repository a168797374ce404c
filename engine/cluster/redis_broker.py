"""The Redis broker: local fan-out through the trie, cross-node through Redis pub/sub.

    broker = RedisBroker(core.deliver, node_id="nodeA", url="redis://127.0.0.1:6379/0")
    await broker.start()   # connects in the background; local traffic never waits
    ...
    await broker.stop()

What travels, and how:

* A publish is delivered to this node's subscribers at once (the local
  fan-out this class inherits from `LocalBroker`), then the bytes the core encoded once are sent
  once to Redis: `PUBLISH bayeux:<db>:<channel> <tag>\\n<encoded>`.  The tag
  is `<origin> <seq> <channel seq>`: the origin names the process (node id +
  a per-process token), `seq` numbers its publishes, `channel seq` its
  publishes on that channel.  Publishes of one loop turn leave in one write
  (a pipeline); the hot path never awaits Redis.
* Each node subscribes in Redis only to what its own sessions need: an exact
  channel `/a/b` -> `SUBSCRIBE bayeux:0:/a/b`; `/a/*` and `/a/**` ->
  `PSUBSCRIBE bayeux:0:/a/*` (Redis's `*` also crosses `/`, so `/a/*`
  over-matches; the local trie filters exactly); `/**` -> `bayeux:0:/*`.
  Redis subscriptions are reference-counted: the first local subscriber sends
  SUBSCRIBE, the last one leaving sends UNSUBSCRIBE.
* A message from Redis goes through the trie and `deliver` as is: no
  decoding, no re-encoding.  The origin drops its own messages (tag), and
  one PUBLISH that reaches this node through several Redis subscriptions
  (say `/a/b` and `/a/*`) is delivered once: Redis writes all copies of one
  PUBLISH to a subscriber back to back, so a tag equal to the previous one
  is a copy.

Acknowledged means delivered or reported (through a Redis outage):

* A publish stays in this node's buffer until Redis acknowledges it (the
  PUBLISH reply), within `buffer_bytes` and `buffer_seconds`
  (`redis_buffer_bytes`, `redis_buffer_seconds`).  Redis down: what is
  published meanwhile waits and leaves, in order, on the next connection.
  A connection torn down with publishes written but not acknowledged: they
  are sent again on the next one (Redis may have delivered them already:
  the receivers drop what they have seen).  After an outage the other nodes
  come back one by one (their backoff), and Redis pub/sub keeps nothing for
  a node not subscribed yet: publishes wait `resend_delay` (`backoff_max`)
  on the new connection before they leave.  Beyond the bounds, a publish is
  lost, counted (`published_lost`) and logged once per cause.
* A frozen Redis (SIGSTOP, a stalled host) keeps its TCP connections open
  and answers nothing.  Replies that do not come within `reply_timeout`
  (and a subscribed connection silent to three PINGs) make the broker
  *stalled*: publishes keep being buffered, direct messages are refused (the
  forwarder then answers its clients with a retry), and a new connection is
  tried as a probe.  If Redis answers the probe, the old connections are the
  broken part: they are torn down and the buffer is sent again on new ones.
  If it does not (frozen, or the network to it down), the connections are
  kept: what they carry is delivered, in order and once, when Redis runs
  again, and nothing is lost on the subscribing side either.  A stall longer
  than `buffer_seconds` ends the connections.
* Receivers keep, per origin node, the process token and the last `seq`
  seen: a message at or below it is a duplicate (a re-send) and is dropped
  (`cluster_duplicates`).  Per (channel, origin) they keep the last
  `channel seq`: a jump means messages on that channel never arrived (a
  loss at the origin, or while this node's subscription was being
  re-established), counted (`cluster_gaps`) and logged once per cause.  A
  new token (the origin restarted) starts its bookkeeping afresh.  Both
  tables are bounded (`OriginSequences`).
* Point-to-point messages between nodes (request forwarding, see
  `engine.cluster.forwarding`): `listen(name, handler)` subscribes a node's own
  channel, resubscribed on reconnect like the others; `send_direct(name,
  payload, on_reply)` publishes through the same connection and hands the
  reply (the number of receivers; None if it could not be sent) to
  `on_reply`.  They leave in their order among the publishes (a forwarded
  request sees what its node published before it; only during the wait
  after an outage do they go first).  They are not buffered through an outage (a forwarded request
  has its own deadline): refused while Redis is down or stalled, failed
  (None) when their connection dies.  They use Redis 7's sharded pub/sub
  (SSUBSCRIBE / SPUBLISH: in a Redis Cluster a message to one node stays on
  one shard instead of crossing the cluster bus), or plain SUBSCRIBE /
  PUBLISH on an older server.  A batch without such messages is read
  exactly as before.

The connection handling, handshake (AUTH, SELECT, CLIENT SETNAME, TLS) and
reply parsing (hiredis) are redis-py's; the broker drives two raw redis-py
connections (one publishing, one subscribed) rather than the `PubSub` and
`Pipeline` wrappers, to keep their per-message bookkeeping and retry
machinery (which could send a publish twice) off the hot path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import secrets
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from engine.delivery.broker import Deliver, LocalBroker
from engine.ratelog import CauseLog
from engine.stats import Counters

if TYPE_CHECKING:
    from engine.protocol.session import Session

__all__ = ["RedisBroker", "OriginSequences", "redis_subscription", "glob_escape"]

log = logging.getLogger("engine.redis")

# Called with the reply to a direct message: the number of receivers, or None
# when it was not sent or its fate is unknown (connection lost, error reply).
Reply = Callable[[int | None], None]
Handler = Callable[[bytes], None]
# A direct message waiting: (publishes queued before it, RESP head, payload, callback).
_Direct = tuple[int, bytes, bytes, Reply | None]

_GLOB_SPECIAL = frozenset("*?[]\\")
_PING = b"*1\r\n$4\r\nPING\r\n"
_CRLF = b"\r\n"
_CHUNK = 512  # names per SUBSCRIBE / UNSUBSCRIBE command
BATCH_BYTES = 1024 * 1024  # publishes written before their replies are read
# Redis's default pub/sub output buffer hard limit is 32 MB; keep well below.
DEFAULT_MAX_MESSAGE = 16 * 1024 * 1024
MAX_ORIGINS = 4096  # other node processes whose sequence a receiver tracks
MAX_CHANNELS = 65536  # channels whose per-channel sequence is tracked (each side)
# Live messages of one channel kept for one recovery while it reads Redis
# (a few seconds at most); past it, an (-1, b"") marks the capture as full.
MAX_CAPTURED = 100_000


def name_of_channel(name: bytes, prefix_len: int) -> str:
    return name[prefix_len:].decode("utf-8", "replace")


def glob_escape(text: str) -> str:
    """Escape the characters special in Redis glob patterns (`*?[]\\`)."""
    if not any(c in _GLOB_SPECIAL for c in text):
        return text
    return "".join("\\" + c if c in _GLOB_SPECIAL else c for c in text)


def _glob_prefix(pattern: bytes) -> bytes:
    """The literal prefix of a pattern made by `redis_subscription` (`<escaped>*`)."""
    return re.sub(rb"\\(.)", rb"\1", pattern[:-1])


def redis_subscription(prefix: str, pattern: str) -> tuple[bool, bytes]:
    """The Redis subscription a Bayeux subscription needs: (is_pattern, name).

    Exact channels are subscribed literally (SUBSCRIBE takes no glob); for
    `/a/*` and `/a/**` the prefix `/a/` is glob-escaped and followed by `*`.
    """
    if pattern.endswith("/*") or pattern.endswith("/**"):
        base = pattern[: pattern.rindex("/") + 1]
        return True, (glob_escape(prefix) + glob_escape(base) + "*").encode()
    return False, (prefix + pattern).encode()


def _pack(command: bytes, args: list[bytes]) -> bytes:
    parts = [b"*%d\r\n$%d\r\n%s\r\n" % (len(args) + 1, len(command), command)]
    for arg in args:
        parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(parts)


class _RateLimitedLog:
    """At most one line per `every` seconds; what was held back is summed."""

    __slots__ = ("every", "next_at", "held")

    def __init__(self, every: float) -> None:
        self.every = every
        self.next_at = 0.0
        self.held = 0

    def due(self, count: int = 1) -> int:
        """Add `count`; return the count to report now, or 0 to stay quiet."""
        self.held += count
        now = time.monotonic()
        if now < self.next_at:
            return 0
        self.next_at = now + self.every
        held, self.held = self.held, 0
        return held


class OriginSequences:
    """What a receiver has seen of the other nodes: duplicates and gaps.

    `accept(origin, seq, channel, channel_seq)` for each message from
    another node process (`origin` is `<node id>.<token>`) returns -1 for a
    duplicate (its `seq` is not above the last one seen from that process:
    drop it), else the number of messages on that channel the origin sent
    before this one and that never arrived.

    Per origin: the last `seq`; a new token under a known node id (the node
    restarted) makes its predecessor's state go.  Per channel and origin: the
    last `channel seq`.  A channel seen for the first time, a `channel seq`
    of 1 (the origin started counting that channel again) or one at or below
    the last is taken as a new start, never as a gap.  Both tables are
    bounded, the oldest entries going first (the worst that costs is a gap
    not noticed, or a duplicate not caught, right after).
    """

    __slots__ = ("origins", "nodes", "channels", "max_origins", "max_channels", "restarts")

    def __init__(self, max_origins: int = MAX_ORIGINS, max_channels: int = MAX_CHANNELS) -> None:
        self.origins: dict[bytes, int] = {}  # origin -> its last seq
        self.nodes: dict[bytes, bytes] = {}  # node id -> its current origin
        self.channels: dict[bytes, dict[bytes, int]] = {}  # channel -> origin -> channel seq
        self.max_origins = max_origins
        self.max_channels = max_channels
        self.restarts = 0  # origins seen with a new process token

    def accept(self, origin: bytes, seq: int, channel: bytes, channel_seq: int) -> int:
        origins = self.origins
        last = origins.get(origin)
        if last is None:
            self._new_origin(origin)
        elif seq <= last:
            return -1
        origins[origin] = seq
        seen = self.channels.get(channel)
        if seen is None:
            channels = self.channels
            if len(channels) >= self.max_channels:
                del channels[next(iter(channels))]
            channels[channel] = {origin: channel_seq}
            return 0
        previous = seen.get(origin)
        seen[origin] = channel_seq
        if previous is None or channel_seq <= previous + 1:
            return 0
        return channel_seq - previous - 1

    def _new_origin(self, origin: bytes) -> None:
        node = origin.partition(b".")[0]
        nodes = self.nodes
        old = nodes.pop(node, None)
        if old is not None:
            self.restarts += 1
            self._drop(old)
        elif len(nodes) >= self.max_origins:
            self._drop(nodes.pop(next(iter(nodes))))
        nodes[node] = origin

    def _drop(self, origin: bytes) -> None:
        self.origins.pop(origin, None)
        for seen in self.channels.values():
            seen.pop(origin, None)

    def forget(self, channel: bytes) -> None:
        """This node no longer subscribes to `channel`: what it misses is no gap."""
        self.channels.pop(channel, None)

    def forget_prefix(self, prefix: bytes) -> None:
        for channel in [c for c in self.channels if c.startswith(prefix)]:
            del self.channels[channel]


class RedisBroker(LocalBroker):
    """The local broker (`engine.delivery.broker`), clustered through Redis pub/sub.

    Local fan-out, subscriber counts and channel lists are `LocalBroker`'s;
    this class adds what crosses nodes: publishes to Redis, the Redis
    subscriptions its sessions need, and direct node-to-node messages.
    """

    def __init__(
        self,
        deliver: Deliver,
        *,
        node_id: str,
        url: str,
        backoff_min: float = 0.05,
        backoff_max: float = 2.0,
        connect_timeout: float = 2.0,
        reply_timeout: float = 5.0,
        health_interval: float = 5.0,
        start_timeout: float = 2.0,
        buffer_bytes: int = 64 * 1024 * 1024,
        buffer_seconds: float = 30.0,
        log_every: float = 5.0,
        counters: Counters | None = None,
    ) -> None:
        super().__init__(deliver)
        self.is_lazy: Callable[[str], bool] = lambda channel: False
        self.node_id = node_id
        # The tag prefix of this process's messages: node id + a token, so a
        # restarted node (or two nodes given the same id) are still told apart.
        self.origin = f"{node_id}.{secrets.token_hex(4)}"
        self._own = self.origin.encode() + b" "
        self.url = url
        self._pool = ConnectionPool.from_url(
            url,
            socket_connect_timeout=connect_timeout,
            retry=Retry(NoBackoff(), 0),
        )
        kwargs = self._pool.connection_kwargs
        self.db = int(kwargs.get("db", 0) or 0)
        self.prefix = f"bayeux:{self.db}:"
        self._prefix_b = self.prefix.encode()
        self._prefix_len = len(self._prefix_b)
        self.where = (
            f"unix:{kwargs['path']}"
            if "path" in kwargs
            else f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{self.db}"
        )

        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.connect_timeout = connect_timeout
        self.reply_timeout = reply_timeout
        self.health_interval = health_interval
        self.start_timeout = start_timeout
        self.buffer_bytes = buffer_bytes
        self.buffer_seconds = buffer_seconds
        self.clock: Callable[[], float] = time.monotonic  # of the buffer's ages
        # After a reconnection, publishes wait this long (loop time) before
        # they leave: the other nodes resubscribe within their backoff.
        self.resend_delay = backoff_max
        self._hold_until = 0.0

        # Redis subscriptions wanted by local sessions (name -> local count),
        # and those sent on the current connection.
        self._want_channels: dict[bytes, int] = {}
        self._want_patterns: dict[bytes, int] = {}
        self._applied_channels: set[bytes] = set()
        self._applied_patterns: set[bytes] = set()

        # Publishes not acknowledged by Redis yet, oldest first: (when
        # published, RESP head with the tag, encoded message).  The first
        # `_written` of them are written on the current connection.
        self._backlog: deque[tuple[float, bytes, bytes]] = deque()
        self._backlog_bytes = 0
        self._written = 0
        self._queued = 0  # publishes ever put in the backlog
        self._seq = 0
        self._channel_seqs: dict[bytes, int] = {}  # Redis channel -> its last channel seq
        self._last_tag = b""
        self.sequences = OriginSequences()
        # Direct messages waiting for the sender: (publishes queued before it,
        # RESP head, payload, callback); those of the batch being read, and how
        # many of them are answered.  They leave in their order among the
        # publishes: a forwarded request sees what its node published before.
        self._directs: list[_Direct] = []
        self._directs_bytes = 0
        self._inflight_directs: list[_Direct] = []
        self._directs_done = 0
        # Channels of direct messages listened to: name -> handler.
        self._listen: dict[bytes, Handler] = {}
        self._applied_listen: set[bytes] = set()
        self._sharded = False  # SSUBSCRIBE / SPUBLISH (Redis >= 7) on this connection
        # Called with True on the first connection of this process, False on
        # later ones; what it sends leaves before anything else.
        self.on_connect: Callable[[bool], None] | None = None

        # Channel history (engine.cluster.history_streams): the last (epoch,
        # offset) delivered per Redis channel, the live messages captured for
        # recoveries under way, and the subscriptions confirmed by Redis (a
        # recovery reads the stream only once its subscription is live).
        self._history_seen: dict[bytes, tuple[bytes, int]] = {}
        self._captures: dict[bytes, list[list[tuple[int, bytes]]]] = {}
        self._confirmed: set[bytes] = set()
        self._confirm_waiters: dict[bytes, list[asyncio.Future[None]]] = {}
        # Fences (`fence`): PING <token> on the subscribed connection, each
        # waiter resolved when its PONG comes back after every message
        # Redis had queued for this connection before it.
        self._sub_conn: AbstractConnection | None = None
        self._fences: dict[bytes, asyncio.Future[None]] = {}
        self._fence_seq = 0

        self.connected = False
        # Connected, but Redis answers nothing (frozen?): see the module docstring.
        self.stalled = False
        self._stalled_since = 0.0
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._subs_dirty: asyncio.Event | None = None
        self._ready: asyncio.Event | None = None
        self._last_rx = 0.0
        self._waiting_since: float | None = None  # the sender waits for replies since
        self._replies_read = 0
        self._down_since: float | None = None
        self._ever_connected = False
        self._lost_at_down = 0
        self._resent_at_down = 0
        self.limit_log = CauseLog(log, log_every)
        self._retry_log = _RateLimitedLog(log_every * 2)
        self._stall_log = _RateLimitedLog(log_every)

        # Counters (see `stats()`); those of a loss also in the core's Counters.
        self.counters = counters if counters is not None else Counters()
        self.forwarded = 0  # messages sent to Redis and acknowledged
        self.too_big = 0  # of those lost, over max_message_bytes (delivered locally only)
        self.max_message_bytes = DEFAULT_MAX_MESSAGE
        self.refused = 0  # PUBLISH answered with an error by Redis
        self.received = 0  # messages from other nodes
        self.received_delivered = 0  # deliveries of those to local sessions
        self.echoes = 0  # own messages coming back (ignored)
        self.duplicates = 0  # one PUBLISH received through several subscriptions
        self.received_invalid = 0  # messages without our tag (not from an engine)
        self.reconnects = 0
        self.connection_failures = 0
        self.stalls = 0  # times Redis stopped answering while connected
        self.direct_sent = 0  # direct messages sent and acknowledged
        self.direct_lost = 0  # direct messages not sent (or fate unknown)
        self.direct_received = 0  # direct messages received

    @property
    def published_lost(self) -> int:
        """Publishes the other nodes will not get (bounds, too big, refused, stopping)."""
        return self.counters.cluster_published_lost

    @property
    def available(self) -> bool:
        """Connected and answering: direct messages may be sent."""
        return self.connected and not self.stalled

    @property
    def buffered(self) -> int:
        """Publishes waiting for Redis's acknowledgment."""
        return len(self._backlog)

    # ------------------------------------------------------ Broker interface

    def subscribe(self, session: Session, pattern: str) -> bool:
        if not super().subscribe(session, pattern):
            return False
        is_pattern, name = redis_subscription(self.prefix, pattern)
        want = self._want_patterns if is_pattern else self._want_channels
        count = want.get(name, 0)
        want[name] = count + 1
        if count == 0 and self._subs_dirty is not None:
            self._subs_dirty.set()
        return True

    def unsubscribe(self, session: Session, pattern: str) -> bool:
        if not super().unsubscribe(session, pattern):
            return False
        is_pattern, name = redis_subscription(self.prefix, pattern)
        want = self._want_patterns if is_pattern else self._want_channels
        count = want.get(name, 0)
        if count <= 1:
            want.pop(name, None)
            if self._subs_dirty is not None:
                self._subs_dirty.set()
        else:
            want[name] = count - 1
        return True

    def publish(self, channel: str, encoded: bytes, lazy: bool = False) -> int:
        delivered = self.fan_out(channel, encoded, lazy)
        # Then once to the other nodes, already encoded.  Numbered first: a
        # message that cannot go is a gap the receivers can see.
        self._seq += 1
        name = self._prefix_b + channel.encode()
        seqs = self._channel_seqs
        channel_seq = seqs.get(name, 0) + 1
        if channel_seq == 1 and len(seqs) >= MAX_CHANNELS:
            del seqs[next(iter(seqs))]
        seqs[name] = channel_seq
        if not self._fits(len(encoded)):
            return delivered
        tag = b"%s%d %d\n" % (self._own, self._seq, channel_seq)
        head = b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n$%d\r\n%s" % (
            len(name),
            name,
            len(tag) + len(encoded),
            tag,
        )
        self._enqueue(head, encoded)
        return delivered

    def publish_history(
        self, channel: str, script: bytes, keys: list[bytes], args: list[bytes], prefix: bytes
    ) -> None:
        """A history channel's publish: `script` (engine.cluster.history_streams)
        gives it its offset, keeps it in the channel's stream and publishes it,
        in one step in Redis.  Its local subscribers get it back from Redis,
        like every node, in offset order.  Buffered through an outage like a
        publish; a resent one is recognised by the script (origin + seq)."""
        self._seq += 1
        if not self._fits(len(prefix)):
            return
        fields = [
            b"EVAL",
            script,
            b"%d" % len(keys),
            *keys,
            self.node_id.encode(),
            self.origin.encode(),
            b"%d" % self._seq,
            *args,
        ]
        head = b"*%d\r\n" % (len(fields) + 1)
        head += b"".join(b"$%d\r\n%s\r\n" % (len(f), f) for f in fields)
        self._enqueue(head + b"$%d\r\n" % len(prefix), prefix)

    def _fits(self, size: int) -> bool:
        """Can a message of `size` bytes go to Redis now? (Lost and counted if not.)"""
        if size > self.max_message_bytes:
            self.too_big += 1
            self._lose(
                1,
                "redis_too_big",
                "message of %d bytes above %d for pub/sub",
                size,
                self.max_message_bytes,
            )
            return False
        if self._backlog_bytes + size > self.buffer_bytes:
            self._lose(
                1,
                "redis_buffer_full",
                "%d bytes wait for redis already (redis_buffer_bytes)",
                self._backlog_bytes,
            )
            return False
        return True

    def _enqueue(self, head: bytes, body: bytes) -> None:
        """Into the backlog until Redis acknowledges it; wake the sender."""
        self._backlog.append((self.clock(), head, body))
        self._backlog_bytes += len(head) + len(body)
        self._queued += 1
        wake = self._wake
        if wake is not None and not wake.is_set():
            wake.set()

    async def hold_subscription(self, channel: str, timeout: float) -> bool:
        """Subscribe `channel` in Redis for a recovery (as if a session did)
        and wait until Redis confirms it; False if it did not in time.
        Always followed by `release_subscription`."""
        _, name = redis_subscription(self.prefix, channel)
        count = self._want_channels.get(name, 0)
        self._want_channels[name] = count + 1
        if name in self._confirmed and name in self._applied_channels:
            return True
        if name not in self._applied_channels and self._subs_dirty is not None:
            self._subs_dirty.set()
        waiter = asyncio.get_running_loop().create_future()
        self._confirm_waiters.setdefault(name, []).append(waiter)
        try:
            async with asyncio.timeout(timeout):
                await waiter
            return True
        except TimeoutError:
            return False
        finally:
            waiters = self._confirm_waiters.get(name)
            if waiters is not None and waiter in waiters:
                waiters.remove(waiter)
                if not waiters:
                    del self._confirm_waiters[name]

    async def fence(self, timeout: float) -> None:
        """Return once every message Redis sent this node's subscribed
        connection before now has been read: a PING with a token of its own
        on that connection, answered in order after them. A recovery reads a
        stream on another connection, so a message already in the stream may
        still be on its way here: after the fence it has either arrived
        (captured) or will never come (published before the subscription).
        Raises TimeoutError or ConnectionError."""
        conn = self._sub_conn
        if conn is None:
            raise ConnectionError("not connected to redis")
        self._fence_seq += 1
        token = b"fence-%d" % self._fence_seq
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._fences[token] = waiter
        try:
            await conn.send_packed_command(_pack(b"PING", [token]), check_health=False)
            async with asyncio.timeout(timeout):
                await waiter
        finally:
            self._fences.pop(token, None)

    def release_subscription(self, channel: str) -> None:
        _, name = redis_subscription(self.prefix, channel)
        count = self._want_channels.get(name, 0)
        if count <= 1:
            self._want_channels.pop(name, None)
            if self._subs_dirty is not None:
                self._subs_dirty.set()
        else:
            self._want_channels[name] = count - 1

    def capture(self, channel: str) -> list[tuple[int, bytes]]:
        """Collect the live messages of a history channel from now on:
        (offset, message), for a recovery's seam (`uncapture` to stop)."""
        captured: list[tuple[int, bytes]] = []
        self._captures.setdefault(self._prefix_b + channel.encode(), []).append(captured)
        return captured

    def uncapture(self, channel: str, captured: list[tuple[int, bytes]]) -> None:
        name = self._prefix_b + channel.encode()
        lists = self._captures.get(name)
        if lists is not None:
            lists.remove(captured)
            if not lists:
                del self._captures[name]

    # ------------------------------------------------------ direct messages

    def node_channel(self, node_id: str) -> bytes:
        """The Redis channel a node listens on for direct messages."""
        return b"%snode:%s" % (self._prefix_b, node_id.encode())

    def listen(self, name: bytes, handler: Handler) -> None:
        """Call `handler(payload)` for each direct message sent to channel `name`."""
        self._listen[name] = handler
        if self._subs_dirty is not None:
            self._subs_dirty.set()

    def unlisten(self, name: bytes) -> None:
        if self._listen.pop(name, None) is not None and self._subs_dirty is not None:
            self._subs_dirty.set()

    def send_direct(self, name: bytes, payload: bytes, on_reply: Reply | None = None) -> bool:
        """Queue a direct message to channel `name` (sent with this loop turn's batch).

        False if it cannot be sent now (Redis unreachable or not answering,
        too much waiting): then `on_reply` is never called.  Otherwise
        `on_reply` gets the number of receivers, or None if the message was
        lost on the way.
        """
        if not self.connected or self.stalled or self._directs_bytes >= self.buffer_bytes:
            self.direct_lost += 1
            return False
        command = b"SPUBLISH" if self._sharded else b"PUBLISH"
        head = b"*3\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$%d\r\n" % (
            len(command),
            command,
            len(name),
            name,
            len(payload),
        )
        self._directs.append((self._queued, head, payload, on_reply))
        self._directs_bytes += len(head) + len(payload)
        wake = self._wake
        if wake is not None and not wake.is_set():
            wake.set()
        return True

    def _fail_directs(self, directs: list[_Direct]) -> None:
        """Direct messages that were not sent, or whose fate is unknown."""
        self.direct_lost += len(directs)
        for _, _, _, on_reply in directs:
            if on_reply is not None:
                _call(on_reply, None)

    # ---------------------------------------------------------------- status

    def stats(self) -> dict[str, Any]:
        return {
            "redis": self.where,
            "connected": self.connected,
            "stalled": self.stalled,
            "redis_channels": len(self._want_channels),
            "redis_patterns": len(self._want_patterns),
            "forwarded": self.forwarded,
            "buffered": len(self._backlog),
            "buffered_bytes": self._backlog_bytes,
            "published_lost": self.published_lost,
            "resent": self.counters.cluster_resent,
            "too_big": self.too_big,
            "max_message_bytes": self.max_message_bytes,
            "refused": self.refused,
            "received": self.received,
            "received_delivered": self.received_delivered,
            "echoes": self.echoes,
            "duplicates": self.duplicates,
            "received_again": self.counters.cluster_duplicates,
            "gaps": self.counters.cluster_gaps,
            "origin_restarts": self.sequences.restarts,
            "received_invalid": self.received_invalid,
            "reconnects": self.reconnects,
            "connection_failures": self.connection_failures,
            "stalls": self.stalls,
            "direct_sent": self.direct_sent,
            "direct_lost": self.direct_lost,
            "direct_received": self.direct_received,
        }

    def _lose(self, count: int, cause: str, why: str, *args: Any) -> None:
        self.counters.cluster_published_lost += count
        self.limit_log.warning(
            cause,
            "node %s: %d message(s) not forwarded to other nodes: " + why + "; %d lost in total",
            self.node_id,
            count,
            *args,
            self.published_lost,
        )

    def _expire(self) -> None:
        """Drop the buffered publishes older than `buffer_seconds` (none written yet)."""
        backlog = self._backlog
        if self._written or not backlog:
            return
        limit = self.clock() - self.buffer_seconds
        if backlog[0][0] >= limit:
            return
        count = 0
        size = 0
        while backlog and backlog[0][0] < limit:
            _, head, encoded = backlog.popleft()
            size += len(head) + len(encoded)
            count += 1
        self._backlog_bytes -= size
        self._lose(
            count,
            "redis_buffer_expired",
            "waited for redis more than %g s (redis_buffer_seconds)",
            self.buffer_seconds,
        )

    # ------------------------------------------------------------ life cycle

    async def start(self) -> None:
        """Connect in the background; wait a little for the first connection."""
        if self._task is not None:
            return
        self._closing = False
        self._wake = asyncio.Event()
        self._subs_dirty = asyncio.Event()
        self._ready = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="redis-broker")
        try:
            await asyncio.wait_for(self._ready.wait(), self.start_timeout)
        except TimeoutError:
            log.warning(
                "node %s: redis at %s not reachable yet: serving local traffic, "
                "retrying in the background",
                self.node_id,
                self.where,
            )

    async def stop(self, flush_timeout: float = 1.0) -> None:
        """Send what is waiting (briefly), then disconnect."""
        task = self._task
        if task is None:
            return
        deadline = time.monotonic() + flush_timeout
        # Leaving: what waits for the other nodes to be back goes now rather than never.
        self._hold_until = 0.0
        if self._wake is not None:
            self._wake.set()
        while (
            self.available
            and (self._backlog or self._directs or self._inflight_directs)
            and time.monotonic() < deadline
        ):
            await asyncio.sleep(0.01)
        self._closing = True
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        self._task = None
        if self._backlog:
            self._lose(len(self._backlog), "redis_stopping", "stopping before redis took them")
            self._backlog.clear()
            self._backlog_bytes = 0
        directs, self._directs = self._directs, []
        self._directs_bytes = 0
        self._fail_directs(directs)
        await self._pool.disconnect()
        log.info("node %s: redis broker: %s", self.node_id, self.stats())

    # ------------------------------------------------------------ connection

    async def _connect(self, role: str) -> AbstractConnection:
        kwargs = dict(self._pool.connection_kwargs)
        kwargs["client_name"] = f"engine-{self.node_id}-{role}"
        # RESP2: pub/sub messages are plain replies (RESP3 would make them
        # push messages, which redis-py's parser hands to its own handlers).
        kwargs["protocol"] = 2
        # Reads block without a socket timeout: liveness comes from PINGs and
        # the watchdog, which never cancels a read half done.
        kwargs["socket_timeout"] = None
        conn = self._pool.connection_class(**kwargs)
        try:
            async with asyncio.timeout(self.connect_timeout):  # (see _sender: not wait_for)
                await conn.connect()  # type: ignore[no-untyped-call]
        except BaseException:
            await _close(conn)
            raise
        return conn

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        delay = self.backoff_min
        attempts = 0
        while not self._closing:
            pub: AbstractConnection | None = None
            sub: AbstractConnection | None = None
            tasks: list[asyncio.Task[None]] = []
            failure: BaseException | None = None
            try:
                attempts += 1
                pub = await self._connect("pub")
                sub = await self._connect("sub")
                self._sharded = await self._has_sharded_pubsub(pub)
                self.max_message_bytes = await self._pubsub_message_cap(pub)
                self._applied_channels.clear()
                self._applied_patterns.clear()
                self._confirmed.clear()
                self._applied_listen.clear()
                self._last_tag = b""
                self._last_rx = loop.time()
                channels, patterns = await self._sync_subscriptions(sub)
                self._sub_conn = sub
                self.connected = True
                if self._down_since is not None:
                    # After an outage (or a start during one) the other nodes
                    # come back one by one (their backoff): publishes wait
                    # for them a moment.
                    self._hold_until = loop.time() + self.resend_delay
                self._on_connected(channels, patterns)
                attempts = 0
                delay = self.backoff_min
                tasks = [
                    loop.create_task(self._reader(sub)),
                    loop.create_task(self._sender(pub)),
                    loop.create_task(self._subscriber(sub)),
                    loop.create_task(self._watchdog(sub)),
                ]
                if self._backlog:
                    assert self._wake is not None
                    self._wake.set()  # what waited for this connection
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if not task.cancelled() and task.exception() is not None:
                        failure = task.exception()
                        break
                else:
                    failure = ConnectionError("connection task ended")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # OSError, RedisError, TimeoutError, ...
                failure = exc
            finally:
                was_connected = self.connected
                self.connected = False
                self._sub_conn = None
                for fence in self._fences.values():
                    if not fence.done():
                        fence.set_exception(ConnectionError("redis connection lost"))
                self._fences.clear()
                self.stalled = False
                self._waiting_since = None
                for task in tasks:
                    task.cancel()
                for task in tasks:
                    with contextlib.suppress(BaseException):
                        await task
                if was_connected and not self._closing:
                    self._on_disconnected(failure)
                # Direct messages of the batch being read, and those waiting:
                # their fate is unknown, or they were not sent.
                directs = self._inflight_directs[self._directs_done :] + self._directs
                self._inflight_directs = []
                self._directs_done = 0
                self._directs = []
                self._directs_bytes = 0
                # Publishes written and not acknowledged stay in the buffer,
                # to be sent again (receivers drop what they already have).
                self.counters.cluster_resent += self._written
                self._written = 0
                if directs:
                    self._fail_directs(directs)
                for conn in (pub, sub):
                    if conn is not None:
                        await _close(conn)
            if self._closing:
                return
            self.connection_failures += 1
            if self._down_since is None:  # never connected yet: the outage starts now
                self._down_since = time.monotonic()
                self._lost_at_down = self.published_lost
                self._resent_at_down = self.counters.cluster_resent
            if attempts and self._retry_log.due():
                log.warning(
                    "node %s: redis at %s unreachable (%s); retrying with backoff (<= %.1f s); "
                    "%d publish(es) kept for it",
                    self.node_id,
                    self.where,
                    _describe(failure),
                    self.backoff_max,
                    len(self._backlog),
                )
            self._expire()
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self.backoff_max)

    def _on_connected(self, channels: int, patterns: int) -> None:
        assert self._ready is not None
        if self._down_since is None:
            log.info(
                "node %s: connected to redis at %s (%d channel(s), %d pattern(s))",
                self.node_id,
                self.where,
                channels,
                patterns,
            )
        else:
            again = self._ever_connected
            self.reconnects += int(again)
            lost = self.published_lost - self._lost_at_down
            resent = self.counters.cluster_resent - self._resent_at_down
            log.warning(
                "node %s: %s to redis at %s after %.1f s; %s %d channel(s) "
                "and %d pattern(s); %d message(s) kept meanwhile are sent now "
                "(%d of them sent before, unacknowledged); %d message(s) published "
                "during the outage were lost (%d lost in total)",
                self.node_id,
                "reconnected" if again else "connected",
                self.where,
                time.monotonic() - self._down_since,
                "resubscribed" if again else "subscribed",
                channels,
                patterns,
                len(self._backlog),
                resent,
                lost,
                self.published_lost,
            )
            self._down_since = None
        first = not self._ever_connected
        self._ever_connected = True
        self._ready.set()
        if self.on_connect is not None:
            try:
                self.on_connect(first)
            except Exception:
                log.exception("node %s: on_connect callback raised", self.node_id)
        self._retry_log.next_at = 0.0

    def _on_disconnected(self, failure: BaseException | None) -> None:
        self._down_since = time.monotonic()
        self._lost_at_down = self.published_lost
        self._resent_at_down = self.counters.cluster_resent
        log.warning(
            "node %s: redis connection lost (%s): serving local traffic; messages to other "
            "nodes are kept (up to %d bytes, %g s) until it is back",
            self.node_id,
            _describe(failure),
            self.buffer_bytes,
            self.buffer_seconds,
        )

    # ----------------------------------------------------- connection tasks

    async def _sender(self, conn: AbstractConnection) -> None:
        """Write what waits in one go per wake-up, then read the replies.

        Direct messages go first (in their order), then every buffered
        publish (in theirs).  A publish leaves the buffer when its reply is
        read.  No deadline here: the watchdog decides when silence is a
        failure, and a read is never cancelled half done.
        """
        wake = self._wake
        assert wake is not None
        loop = asyncio.get_running_loop()
        read = conn.read_response
        backlog = self._backlog
        while True:
            held = self._hold_until - loop.time()
            if not self._directs and (not backlog or held > 0):
                wake.clear()
                try:
                    # Not asyncio.wait_for: on Python 3.11 it swallows a
                    # cancellation that comes with the event being set.
                    async with asyncio.timeout(
                        held if backlog and held > 0 else self.health_interval
                    ):
                        await wake.wait()
                except TimeoutError:
                    if backlog:
                        continue  # the hold is over
                    # Idle: a PING, its reply watched like any other.
                    self._waiting_since = loop.time()
                    await conn.send_packed_command(_PING, check_health=False)
                    await read()
                    self._replies_read += 1
                    self._waiting_since = None
                continue
            self._expire()
            directs = self._directs
            pending = len(backlog) if held <= 0 else 0
            if not directs and not pending:
                continue
            # One batch: publishes up to BATCH_BYTES (replies then come while
            # the rest is written), each direct message before the publish
            # queued right after it.
            base = self._queued - len(backlog)  # publishes queued before backlog[0]
            chunks: list[bytes] = []
            positions: list[int] = []  # of the direct messages among the batch's commands
            d = 0
            count = 0
            size = 0
            for _, head, encoded in backlog if pending else ():
                while d < len(directs) and directs[d][0] - base <= count:
                    positions.append(d + count)
                    chunks += (directs[d][1], directs[d][2], _CRLF)
                    d += 1
                if size >= BATCH_BYTES:
                    break
                chunks += (head, encoded, _CRLF)
                size += len(head) + len(encoded)
                count += 1
            if count == pending:  # all publishes (or none, waiting): every direct message
                for _, dhead, payload, _ in directs[d:]:
                    positions.append(len(chunks) // 3)
                    chunks += (dhead, payload, _CRLF)
                d = len(directs)
            self._directs = directs[d:]
            self._directs_bytes = sum(len(h) + len(p) for _, h, p, _ in self._directs)
            directs = directs[:d]
            self._written = count
            self._inflight_directs = directs
            self._directs_done = 0
            self._waiting_since = loop.time()
            await conn.send_packed_command(chunks, check_health=False)
            positions.append(-1)
            j = 0
            direct = positions[0]
            for i in range(count + len(directs)):
                if i == direct:
                    j += 1
                    direct = positions[j]
                    await self._read_direct_reply(read, directs[j - 1][3], j)
                    continue
                try:
                    await read()
                    self.forwarded += 1
                except ResponseError as exc:
                    self.refused += 1
                    self._lose(1, "redis_refused", "redis refused it: %s", exc)
                _, head, encoded = backlog.popleft()
                self._backlog_bytes -= len(head) + len(encoded)
                self._written -= 1
                self._replies_read += 1
            self._inflight_directs = []
            self._directs_done = 0
            self._waiting_since = None

    async def _read_direct_reply(
        self, read: Callable[[], Any], on_reply: Reply | None, done: int
    ) -> None:
        """Read the reply of a direct message (the `done`-th of its batch) for its callback."""
        try:
            reply = await read()
        except ResponseError as exc:
            self._directs_done = done
            self._replies_read += 1
            self.direct_lost += 1
            log.warning("node %s: redis refused a direct message: %s", self.node_id, exc)
            if on_reply is not None:
                _call(on_reply, None)
            return
        self._directs_done = done
        self._replies_read += 1
        self.direct_sent += 1
        if on_reply is not None:
            _call(on_reply, reply if type(reply) is int else None)

    async def _pubsub_message_cap(self, conn: AbstractConnection) -> int:
        """The largest message to publish: half the pub/sub output buffer hard
        limit Redis enforces per subscriber (a bigger one would make Redis cut
        every subscribing node's connection)."""
        try:
            async with asyncio.timeout(self.reply_timeout):
                await conn.send_packed_command(
                    _pack(b"CONFIG", [b"GET", b"client-output-buffer-limit"]), check_health=False
                )
                reply = await conn.read_response()
        except (ResponseError, TimeoutError):
            return DEFAULT_MAX_MESSAGE  # CONFIG may be disabled (managed Redis)
        text = b" ".join(r for r in reply if isinstance(r, bytes)).decode("latin-1")
        match = re.search(r"pubsub (\d+) ", text)
        hard = int(match.group(1)) if match else 0
        return hard // 2 if hard > 0 else DEFAULT_MAX_MESSAGE

    async def _has_sharded_pubsub(self, conn: AbstractConnection) -> bool:
        """Whether the server has SSUBSCRIBE / SPUBLISH (Redis 7.0 and later)."""
        try:
            async with asyncio.timeout(self.reply_timeout):
                await conn.send_packed_command(_pack(b"INFO", [b"server"]), check_health=False)
                info = await conn.read_response()
        except ResponseError:
            return False
        text = info.decode("latin-1") if isinstance(info, bytes) else str(info)
        match = re.search(r"^redis_version:(\d+)", text, re.M)
        return match is not None and int(match.group(1)) >= 7

    async def _reader(self, conn: AbstractConnection) -> None:
        loop = asyncio.get_running_loop()
        read = conn.read_response
        received = self._received
        direct = self._direct
        # Without sharded pub/sub, direct messages arrive as plain messages.
        listen = None if self._sharded else self._listen
        while True:
            reply = await read()
            self._last_rx = loop.time()
            if type(reply) is list:
                kind = reply[0]
                if kind == b"message":
                    if listen and reply[1] in listen:
                        direct(reply[1], reply[2])
                    else:
                        received(reply[1], reply[2])
                elif kind == b"pmessage":
                    received(reply[2], reply[3])
                elif kind == b"smessage":
                    direct(reply[1], reply[2])
                elif kind == b"subscribe":
                    self._confirm(reply[1])
                elif kind == b"pong" and len(reply) > 1 and reply[1]:
                    fence = self._fences.pop(reply[1], None)
                    if fence is not None and not fence.done():
                        fence.set_result(None)
                elif kind == b"unsubscribe":
                    self._confirmed.discard(reply[1])
                # other confirmations and pongs: liveness only

    def _confirm(self, name: bytes) -> None:
        self._confirmed.add(name)
        for waiter in self._confirm_waiters.pop(name, ()):
            if not waiter.done():
                waiter.set_result(None)

    def _direct(self, channel: bytes, data: bytes) -> None:
        handler = self._listen.get(channel)
        if handler is None:
            return
        self.direct_received += 1
        try:
            handler(data)
        except Exception:
            log.exception("node %s: direct message not handled", self.node_id)

    def _received(self, channel: bytes, data: bytes) -> None:
        end = data.find(b"\n")
        if end < 0:
            self.received_invalid += 1
            return
        tag = data[:end]
        if tag == self._last_tag:
            self.duplicates += 1
            return
        self._last_tag = tag
        if data[:1] == b"~":
            self._received_history(channel, tag, data, end)
            return
        if data.startswith(self._own):
            self.echoes += 1
            return
        try:
            origin, seq, channel_seq = tag.split(b" ")
            missed = self.sequences.accept(origin, int(seq), channel, int(channel_seq))
        except ValueError:
            self.received_invalid += 1
            return
        if missed:
            if missed < 0:
                self.counters.cluster_duplicates += 1
                return
            self._gap(origin, channel, missed)
        self.received += 1
        try:
            name = channel[self._prefix_len :].decode()
            # Lazy channels are configured alike on every node.
            self.received_delivered += self.fan_out(name, data[end + 1 :], self.is_lazy(name))
        except Exception:
            self.received_invalid += 1
            log.exception("node %s: message from redis not delivered", self.node_id)

    def _received_history(self, channel: bytes, tag: bytes, data: bytes, end: int) -> None:
        """`~<epoch> <offset>` then the message: a history channel's, from any
        node (this one included), in offset order."""
        try:
            epoch, raw = tag[1:].split(b" ")
            offset = int(raw)
        except ValueError:
            self.received_invalid += 1
            return
        seen = self._history_seen
        last = seen.get(channel)
        if last is not None and last[0] == epoch:
            if offset <= last[1]:
                self.counters.cluster_duplicates += 1
                return
            if offset > last[1] + 1:
                self._gap(b"history", channel, offset - last[1] - 1)
        elif last is None and len(seen) >= MAX_CHANNELS:
            del seen[next(iter(seen))]
        seen[channel] = (epoch, offset)
        message = data[end + 1 :]
        captures = self._captures.get(channel)
        if captures is not None:
            for captured in captures:
                if len(captured) < MAX_CAPTURED:
                    captured.append((offset, message))
                elif captured[-1][0] >= 0:
                    # Bounded: the recovery is then answered too_many.
                    captured.append((-1, b""))
                    self.limit_log.warning(
                        "history_capture_full",
                        "node %s: more than %d live messages of %s while a recovery read "
                        "redis: that subscriber is told recovered: false (too_many)",
                        self.node_id,
                        MAX_CAPTURED,
                        name_of_channel(channel, self._prefix_len),
                    )
        self.received += 1
        try:
            name = channel[self._prefix_len :].decode()
            self.received_delivered += self.fan_out(name, message, self.is_lazy(name))
        except Exception:
            self.received_invalid += 1
            log.exception("node %s: message from redis not delivered", self.node_id)

    def _gap(self, origin: bytes, channel: bytes, missed: int) -> None:
        self.counters.cluster_gaps += missed
        self.limit_log.warning(
            "cluster_gap",
            "node %s: %d message(s) from node %s on %s never arrived; %d missed in total",
            self.node_id,
            missed,
            origin.partition(b".")[0].decode("utf-8", "replace"),
            channel[self._prefix_len :].decode("utf-8", "replace"),
            self.counters.cluster_gaps,
        )

    async def _subscriber(self, conn: AbstractConnection) -> None:
        dirty = self._subs_dirty
        assert dirty is not None
        while True:
            await dirty.wait()
            await self._sync_subscriptions(conn)

    async def _sync_subscriptions(self, conn: AbstractConnection) -> tuple[int, int]:
        """Send the (P)(UN)SUBSCRIBEs that bring Redis in line with local needs."""
        dirty = self._subs_dirty
        assert dirty is not None
        dirty.clear()
        want_c, want_p = self._want_channels, self._want_patterns
        have_c, have_p = self._applied_channels, self._applied_patterns
        add_c = [n for n in want_c if n not in have_c]
        add_p = [n for n in want_p if n not in have_p]
        del_c = [n for n in have_c if n not in want_c]
        del_p = [n for n in have_p if n not in want_p]
        commands: list[bytes] = []
        for command, names in (
            (b"SUBSCRIBE", add_c),
            (b"PSUBSCRIBE", add_p),
            (b"UNSUBSCRIBE", del_c),
            (b"PUNSUBSCRIBE", del_p),
        ):
            # Never an empty list: a bare UNSUBSCRIBE would drop everything.
            for i in range(0, len(names), _CHUNK):
                commands.append(_pack(command, names[i : i + _CHUNK]))
        # Direct-message channels: one per command (sharded channels of one
        # command must share a cluster slot).
        want_l, have_l = self._listen, self._applied_listen
        add_l = [n for n in want_l if n not in have_l]
        del_l = [n for n in have_l if n not in want_l]
        on, off = (
            (b"SSUBSCRIBE", b"SUNSUBSCRIBE") if self._sharded else (b"SUBSCRIBE", b"UNSUBSCRIBE")
        )
        commands.extend(_pack(on, [n]) for n in add_l)
        commands.extend(_pack(off, [n]) for n in del_l)
        if commands:
            await conn.send_packed_command(commands, check_health=False)
            have_c.update(add_c)
            have_p.update(add_p)
            have_c.difference_update(del_c)
            have_p.difference_update(del_p)
            self._confirmed.difference_update(del_c)
            have_l.update(add_l)
            have_l.difference_update(del_l)
        # What is sent on a channel no longer subscribed is not missed.
        sequences = self.sequences
        for name in del_c:
            sequences.forget(name)
        for name in del_p:
            sequences.forget_prefix(_glob_prefix(name))
        return len(add_c), len(add_p)

    async def _watchdog(self, conn: AbstractConnection) -> None:
        """PING the subscribed connection; tell a frozen Redis from a dead connection.

        Silence (publish replies overdue by `reply_timeout`, or the
        subscribed connection silent to three PINGs) makes the broker
        stalled; a probe on a new connection then tells whether Redis itself
        is silent (keep the connections: they deliver when it runs again) or
        only these connections (end them: `_run` connects again).
        """
        loop = asyncio.get_running_loop()
        tick = min(1.0, self.reply_timeout / 2, self.health_interval)
        now = loop.time()
        next_ping = now + self.health_interval
        next_probe = 0.0
        seen = self._replies_read
        moved_at = now
        while True:
            # While stalled, look often: the end of a stall is reported (and
            # direct messages accepted again) as soon as Redis answers.
            await asyncio.sleep(min(tick, 0.1) if self.stalled else tick)
            now = loop.time()
            if now >= next_ping:
                next_ping = now + self.health_interval
                await conn.send_packed_command(_PING, check_health=False)
            if self._replies_read != seen:
                seen = self._replies_read
                moved_at = now
            since = self._waiting_since
            quiet = now - max(since, moved_at) if since is not None else 0.0
            sub_quiet = now - self._last_rx - 2 * self.health_interval
            silent = max(quiet - self.reply_timeout, sub_quiet - self.health_interval)
            if silent <= 0:
                if self.stalled:
                    self._unstalled(now)
                continue
            if not self.stalled:
                self.stalled = True
                self.stalls += 1
                self._stalled_since = now - max(quiet, sub_quiet + 2 * self.health_interval)
                log.warning(
                    "node %s: redis at %s not answering for %.1f s: publishes are kept "
                    "(up to %d bytes, %g s), direct messages refused; trying a new connection",
                    self.node_id,
                    self.where,
                    now - self._stalled_since,
                    self.buffer_bytes,
                    self.buffer_seconds,
                )
            if now - self._stalled_since > self.buffer_seconds:
                raise ConnectionError(
                    f"no answer from redis for {now - self._stalled_since:.1f} s "
                    f"(redis_buffer_seconds {self.buffer_seconds:g})"
                )
            if now >= next_probe:
                await self._probe()
                next_probe = loop.time() + self.reply_timeout

    async def _probe(self) -> None:
        """A new connection and a PING: raises if Redis answers it (or refuses it)."""
        conn: AbstractConnection | None = None
        try:
            conn = await self._connect("probe")
            async with asyncio.timeout(self.reply_timeout):
                await conn.send_packed_command(_PING, check_health=False)
                await conn.read_response()
        except (TimeoutError, RedisTimeoutError):
            if self._stall_log.due():
                log.warning(
                    "node %s: redis at %s does not answer a new connection either "
                    "(frozen, or unreachable): keeping the connections, %d publish(es) "
                    "(%d bytes) wait for it",
                    self.node_id,
                    self.where,
                    len(self._backlog),
                    self._backlog_bytes,
                )
            return
        finally:
            if conn is not None:
                await _close(conn)
        raise ConnectionError("redis answers a new connection, not these: reconnecting")

    def _unstalled(self, now: float) -> None:
        self.stalled = False
        log.warning(
            "node %s: redis at %s answering again after %.1f s (%d publish(es) still wait)",
            self.node_id,
            self.where,
            now - self._stalled_since,
            len(self._backlog),
        )


def _call(on_reply: Reply, reply: int | None) -> None:
    try:
        on_reply(reply)
    except Exception:
        log.exception("callback of a direct message raised")


async def _close(conn: AbstractConnection) -> None:
    with contextlib.suppress(Exception):
        await conn.disconnect(nowait=True)


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown reason"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text != type(exc).__name__ else text
