"""The Redis broker: local fan-out through the trie, cross-node through Redis pub/sub.

    broker = RedisBroker(core.deliver, node_id="nodeA", url="redis://127.0.0.1:6379/0")
    await broker.start()   # connects in the background; local traffic never waits
    ...
    await broker.stop()

What travels, and how:

* A publish is delivered to this node's subscribers at once (the compiled
  trie, as `LocalBroker` does), then the bytes the core encoded once are sent
  once to Redis: `PUBLISH bayeux:<db>:<channel> <tag>\\n<encoded>`.  The tag
  names the origin (node id + a per-process token) and a sequence number.
  Publishes of one loop turn leave in one write (a pipeline); the hot path
  never awaits Redis.
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
* Redis unreachable or restarted: local traffic goes on; what cannot be
  forwarded is counted (`published_lost`) and logged (rate-limited); the
  broker reconnects with bounded exponential backoff and resubscribes every
  channel and pattern, then logs what the outage cost.
* Point-to-point messages between nodes (request forwarding, see
  `engine.forwarding`): `listen(name, handler)` subscribes a node's own
  channel, resubscribed on reconnect like the others; `send_direct(name,
  payload, on_reply)` publishes through the same outbox and hands the reply
  (the number of receivers; None if it could not be sent) to `on_reply`.
  They use Redis 7's sharded pub/sub (SSUBSCRIBE / SPUBLISH: in a Redis
  Cluster a message to one node stays on one shard instead of crossing the
  cluster bus), or plain SUBSCRIBE / PUBLISH on an older server.  A batch
  without such messages is read exactly as before.

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
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ResponseError

from engine._channels import ChannelTrie

if TYPE_CHECKING:
    from engine.session import Session

__all__ = ["RedisBroker", "redis_subscription", "glob_escape"]

log = logging.getLogger("engine.redis")

Deliver = Callable[["Session", bytes, bool], None]
# Called with the reply to a direct message: the number of receivers, or None
# when it was not sent or its fate is unknown (connection lost, error reply).
Reply = Callable[[int | None], None]
Handler = Callable[[bytes], None]

_GLOB_SPECIAL = frozenset("*?[]\\")
_PING = b"*1\r\n$4\r\nPING\r\n"
_CHUNK = 512  # names per SUBSCRIBE / UNSUBSCRIBE command
# Redis's default pub/sub output buffer hard limit is 32 MB; keep well below.
DEFAULT_MAX_MESSAGE = 16 * 1024 * 1024


def glob_escape(text: str) -> str:
    """Escape the characters special in Redis glob patterns (`*?[]\\`)."""
    if not any(c in _GLOB_SPECIAL for c in text):
        return text
    return "".join("\\" + c if c in _GLOB_SPECIAL else c for c in text)


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


class RedisBroker:
    """Broker interface of `engine.broker`, clustered through Redis pub/sub."""

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
        max_pending_bytes: int = 32 * 1024 * 1024,
        log_every: float = 5.0,
    ) -> None:
        self.trie = ChannelTrie()
        self.deliver = deliver
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
        self.max_pending_bytes = max_pending_bytes

        # Redis subscriptions wanted by local sessions (name -> local count),
        # and those sent on the current connection.
        self._want_channels: dict[bytes, int] = {}
        self._want_patterns: dict[bytes, int] = {}
        self._applied_channels: set[bytes] = set()
        self._applied_patterns: set[bytes] = set()

        # Publishes waiting for the sender: RESP chunks, message count, bytes.
        self._outbox: list[bytes] = []
        self._outbox_count = 0
        self._outbox_bytes = 0
        self._inflight = 0  # messages written to Redis, replies not read yet
        self._seq = 0
        self._last_tag = b""
        # Direct messages in the outbox: (index among its commands, callback);
        # those of the batch being read, and how many of them are answered.
        self._replies: list[tuple[int, Reply | None]] = []
        self._inflight_replies: list[tuple[int, Reply | None]] = []
        self._replies_done = 0
        # Channels of direct messages listened to: name -> handler.
        self._listen: dict[bytes, Handler] = {}
        self._applied_listen: set[bytes] = set()
        self._sharded = False  # SSUBSCRIBE / SPUBLISH (Redis >= 7) on this connection
        # Called with True on the first connection of this process, False on
        # later ones; what it sends leaves before anything else.
        self.on_connect: Callable[[bool], None] | None = None

        self.connected = False
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._subs_dirty: asyncio.Event | None = None
        self._ready: asyncio.Event | None = None
        self._last_rx = 0.0
        self._down_since: float | None = None
        self._ever_connected = False
        self._lost_at_down = 0
        self._loss_log = _RateLimitedLog(log_every)
        self._retry_log = _RateLimitedLog(log_every * 2)

        # Counters (see `stats()`).
        self.forwarded = 0  # messages sent to Redis and acknowledged
        self.published_lost = 0  # messages that could not be sent to Redis
        self.too_big = 0  # of those, over max_message_bytes (delivered locally only)
        self.max_message_bytes = DEFAULT_MAX_MESSAGE
        self.refused = 0  # PUBLISH answered with an error by Redis
        self.received = 0  # messages from other nodes
        self.received_delivered = 0  # deliveries of those to local sessions
        self.echoes = 0  # own messages coming back (ignored)
        self.duplicates = 0  # one PUBLISH received through several subscriptions
        self.received_invalid = 0  # messages without our tag (not from an engine)
        self.reconnects = 0
        self.connection_failures = 0
        self.direct_sent = 0  # direct messages sent and acknowledged
        self.direct_lost = 0  # direct messages not sent (or fate unknown)
        self.direct_received = 0  # direct messages received

    # ------------------------------------------------------ Broker interface

    def subscribe(self, session: Session, pattern: str) -> bool:
        if not self.trie.add(pattern, session):
            return False
        is_pattern, name = redis_subscription(self.prefix, pattern)
        want = self._want_patterns if is_pattern else self._want_channels
        count = want.get(name, 0)
        want[name] = count + 1
        if count == 0 and self._subs_dirty is not None:
            self._subs_dirty.set()
        return True

    def unsubscribe(self, session: Session, pattern: str) -> bool:
        if not self.trie.remove(pattern, session):
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
        deliver = self.deliver
        sessions = cast("list[Session]", self.trie.match(channel))
        for session in sessions:
            deliver(session, encoded, lazy)
        # Then once to the other nodes, already encoded.
        if not self.connected:
            self._lose(1, "redis unreachable")
            return len(sessions)
        if len(encoded) > self.max_message_bytes:
            self.too_big += 1
            self._lose(
                1, f"message of {len(encoded)} bytes above {self.max_message_bytes} for pub/sub"
            )
            return len(sessions)
        if self._outbox_bytes >= self.max_pending_bytes:
            self._lose(1, f"backlog to redis above {self.max_pending_bytes} bytes")
            return len(sessions)
        self._seq += 1
        name = self._prefix_b + channel.encode()
        tag = b"%s%d\n" % (self._own, self._seq)
        head = b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n$%d\r\n%s" % (
            len(name),
            name,
            len(tag) + len(encoded),
            tag,
        )
        outbox = self._outbox
        outbox.append(head)
        outbox.append(encoded)
        outbox.append(b"\r\n")
        self._outbox_count += 1
        self._outbox_bytes += len(head) + len(encoded)
        wake = self._wake
        if wake is not None and not wake.is_set():
            wake.set()
        return len(sessions)

    def subscriber_count(self, pattern: str) -> int:
        return self.trie.count(pattern)

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

        False if it cannot be sent now (Redis unreachable, backlog full):
        then `on_reply` is never called.  Otherwise `on_reply` gets the
        number of receivers, or None if the message was lost on the way.
        """
        if not self.connected or self._outbox_bytes >= self.max_pending_bytes:
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
        outbox = self._outbox
        outbox.append(head)
        outbox.append(payload)
        outbox.append(b"\r\n")
        self._replies.append((self._outbox_count, on_reply))
        self._outbox_count += 1
        self._outbox_bytes += len(head) + len(payload)
        wake = self._wake
        if wake is not None and not wake.is_set():
            wake.set()
        return True

    def _fail_replies(self, replies: list[tuple[int, Reply | None]]) -> None:
        """Direct messages that were not sent, or whose fate is unknown."""
        self.direct_lost += len(replies)
        for _, on_reply in replies:
            if on_reply is not None:
                _call(on_reply, None)

    def matching_count(self, channel: str) -> int:
        return self.trie.count_matching(channel)

    def channels(self) -> list[str]:
        return self.trie.patterns()

    # ---------------------------------------------------------------- status

    def stats(self) -> dict[str, Any]:
        return {
            "redis": self.where,
            "connected": self.connected,
            "redis_channels": len(self._want_channels),
            "redis_patterns": len(self._want_patterns),
            "forwarded": self.forwarded,
            "published_lost": self.published_lost,
            "too_big": self.too_big,
            "max_message_bytes": self.max_message_bytes,
            "refused": self.refused,
            "received": self.received,
            "received_delivered": self.received_delivered,
            "echoes": self.echoes,
            "duplicates": self.duplicates,
            "received_invalid": self.received_invalid,
            "reconnects": self.reconnects,
            "connection_failures": self.connection_failures,
            "direct_sent": self.direct_sent,
            "direct_lost": self.direct_lost,
            "direct_received": self.direct_received,
        }

    def _lose(self, count: int, why: str) -> None:
        self.published_lost += count
        report = self._loss_log.due(count)
        if report:
            log.warning(
                "node %s: %d message(s) not forwarded to other nodes (%s); %d lost in total",
                self.node_id,
                report,
                why,
                self.published_lost,
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
        while (
            self.connected
            and (self._outbox_count or self._inflight or self._inflight_replies)
            and time.monotonic() < deadline
        ):
            await asyncio.sleep(0.01)
        self._closing = True
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        self._task = None
        if self._outbox_count:
            replies = self._replies
            broadcasts = self._outbox_count - len(replies)
            self._clear_outbox()
            if broadcasts:
                self._lose(broadcasts, "stopping")
            self._fail_replies(replies)
        await self._pool.disconnect()

    def _clear_outbox(self) -> None:
        self._outbox = []
        self._outbox_count = 0
        self._outbox_bytes = 0
        self._replies = []  # a new list: the batch being sent keeps the old one

    # ------------------------------------------------------------ connection

    async def _connect(self, role: str) -> AbstractConnection:
        kwargs = dict(self._pool.connection_kwargs)
        kwargs["client_name"] = f"engine-{self.node_id}-{role}"
        # RESP2: pub/sub messages are plain replies (RESP3 would make them
        # push messages, which redis-py's parser hands to its own handlers).
        kwargs["protocol"] = 2
        # Reads block without a socket timeout: liveness comes from PINGs, and
        # the sender puts one deadline on each batch of replies.
        kwargs["socket_timeout"] = None
        conn = self._pool.connection_class(**kwargs)
        try:
            await asyncio.wait_for(
                conn.connect(),  # type: ignore[no-untyped-call]
                self.connect_timeout,
            )
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
                self._applied_listen.clear()
                self._last_tag = b""
                self._last_rx = loop.time()
                channels, patterns = await self._sync_subscriptions(sub)
                self.connected = True
                self._on_connected(channels, patterns)
                attempts = 0
                delay = self.backoff_min
                tasks = [
                    loop.create_task(self._reader(sub)),
                    loop.create_task(self._sender(pub)),
                    loop.create_task(self._subscriber(sub)),
                    loop.create_task(self._heartbeat(sub)),
                ]
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
                for task in tasks:
                    task.cancel()
                for task in tasks:
                    with contextlib.suppress(BaseException):
                        await task
                if was_connected and not self._closing:
                    self._on_disconnected(failure)
                # The batch being sent and those waiting belong to the outage.
                replies = self._inflight_replies[self._replies_done :] + self._replies
                self._inflight_replies = []
                self._replies_done = 0
                unsent = self._inflight + self._outbox_count - len(self._replies)
                self._inflight = 0
                self._clear_outbox()
                if unsent:
                    self._lose(unsent, "stopping" if self._closing else "redis connection lost")
                if replies:
                    self._fail_replies(replies)
                for conn in (pub, sub):
                    if conn is not None:
                        await _close(conn)
            if self._closing:
                return
            self.connection_failures += 1
            if self._down_since is None:  # never connected yet: the outage starts now
                self._down_since = time.monotonic()
                self._lost_at_down = self.published_lost
            if attempts and self._retry_log.due():
                log.warning(
                    "node %s: redis at %s unreachable (%s); retrying with backoff (<= %.1f s)",
                    self.node_id,
                    self.where,
                    _describe(failure),
                    self.backoff_max,
                )
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
            log.warning(
                "node %s: %s to redis at %s after %.1f s; %s %d channel(s) "
                "and %d pattern(s); %d message(s) published during the outage were not "
                "forwarded to other nodes (%d lost in total)",
                self.node_id,
                "reconnected" if again else "connected",
                self.where,
                time.monotonic() - self._down_since,
                "resubscribed" if again else "subscribed",
                channels,
                patterns,
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
        # Lost messages of the outage are reported when it ends; show the
        # first loss at once, then at the usual rate.
        self._loss_log.next_at = 0.0
        log.warning(
            "node %s: redis connection lost (%s): serving local traffic only, "
            "messages to other nodes are dropped and counted until it is back",
            self.node_id,
            _describe(failure),
        )

    # ----------------------------------------------------- connection tasks

    async def _sender(self, conn: AbstractConnection) -> None:
        """Write the outbox in one go per wake-up, then read the replies."""
        wake = self._wake
        assert wake is not None
        read = conn.read_response
        while True:
            if not self._outbox_count:
                wake.clear()
                try:
                    await asyncio.wait_for(wake.wait(), self.health_interval)
                except TimeoutError:
                    async with asyncio.timeout(self.reply_timeout):
                        await conn.send_packed_command(_PING, check_health=False)
                        await read()
                    continue
                if not self._outbox_count:
                    continue
            chunks, count, replies = self._outbox, self._outbox_count, self._replies
            self._clear_outbox()
            # If the connection fails now, whether Redis got these is unknown:
            # `_run` counts them as lost with the outage.
            self._inflight = count - len(replies)
            try:
                # One deadline for the whole batch, not one per reply.
                async with asyncio.timeout(self.reply_timeout):
                    await conn.send_packed_command(chunks, check_health=False)
                    if replies:
                        await self._read_with_replies(read, count, replies)
                    else:
                        for _ in range(count):
                            try:
                                await read()
                            except ResponseError as exc:
                                self._refused(exc)
            except TimeoutError as exc:
                raise ConnectionError(f"no reply from redis within {self.reply_timeout} s") from exc
            self.forwarded += self._inflight
            self._inflight = 0

    def _refused(self, exc: ResponseError) -> None:
        self.refused += 1
        self._inflight -= 1
        self._lose(1, f"redis refused it: {exc}")

    async def _read_with_replies(
        self, read: Callable[[], Any], count: int, replies: list[tuple[int, Reply | None]]
    ) -> None:
        """Read a batch's replies, handing those of direct messages to their callbacks."""
        self._inflight_replies = replies
        self._replies_done = 0
        j = 0
        direct = replies[0][0]
        for i in range(count):
            if i != direct:
                try:
                    await read()
                except ResponseError as exc:
                    self._refused(exc)
                continue
            on_reply = replies[j][1]
            j += 1
            direct = replies[j][0] if j < len(replies) else -1
            try:
                reply = await read()
            except ResponseError as exc:
                self._replies_done = j
                self.direct_lost += 1
                log.warning("node %s: redis refused a direct message: %s", self.node_id, exc)
                if on_reply is not None:
                    _call(on_reply, None)
                continue
            self._replies_done = j
            self.direct_sent += 1
            if on_reply is not None:
                _call(on_reply, reply if type(reply) is int else None)
        self._inflight_replies = []
        self._replies_done = 0

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
                # subscribe / unsubscribe confirmations and pongs: liveness only

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
        if data.startswith(self._own):
            self.echoes += 1
            return
        self.received += 1
        try:
            name = channel[self._prefix_len :].decode()
            sessions = cast("list[Session]", self.trie.match(name))
            if sessions:
                encoded = data[end + 1 :]
                deliver = self.deliver
                # Lazy channels are configured alike on every node.
                lazy = self.is_lazy(name)
                for session in sessions:
                    deliver(session, encoded, lazy)
                self.received_delivered += len(sessions)
        except Exception:
            self.received_invalid += 1
            log.exception("node %s: message from redis not delivered", self.node_id)

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
            have_l.update(add_l)
            have_l.difference_update(del_l)
        return len(add_c), len(add_p)

    async def _heartbeat(self, conn: AbstractConnection) -> None:
        """PING the subscribed connection; no answer for 3 intervals: reconnect."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.health_interval)
            silent = loop.time() - self._last_rx
            if silent > 3 * self.health_interval:
                raise ConnectionError(f"no answer from redis for {silent:.1f} s")
            await conn.send_packed_command(_PING, check_health=False)


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
