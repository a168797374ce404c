"""Channel history across nodes: one Redis Stream per history channel.

The protocol is `engine.delivery.history`'s (ext.position, ext.recover); here
the streams live in Redis, so a client recovers on any node, and after the
node it was on died.  Keys, under the broker's prefix (`bayeux:<db>:`):

    h:<channel>   hash: epoch, top (the last offset), o:<node> (its last publish)
    s:<channel>   stream: entry id <offset>-0, fields t (ms, Redis's clock), m (message)

A publish on a history channel is one script run in Redis (`PUBLISH_SCRIPT`,
atomic there): it takes the next offset, writes the position into the
message, appends it to the stream (`XADD ... MAXLEN ~ history_size`),
publishes it on the channel's pub/sub channel and refreshes the keys' time
to live.  So every node sees the same offsets, in offset order, and a resent
publish (after a lost connection) is recognised by its origin and sequence
and not appended twice.  The publishing node's own subscribers get the
message back from Redis like every node's: a history channel is delivered in
offset order everywhere, one Redis round trip after the publish.

A subscribe that touches a history channel waits for Redis before it is
processed (`prefetch`): the channel's pub/sub subscription first (so that
nothing published afterwards is missed), then, in one round trip, the
stream's epoch and top and the entries after the client's position, then
a fence on the subscribed connection (`RedisBroker.fence`: a PING answered
after every message Redis sent there before it), so that an entry read that
is also on its way live has arrived by then.  The
live messages that arrive meanwhile are captured; the subscribe then
replays the stream's entries and the captured messages after them, deduped
by offset, in the same step that adds the subscription: no gap and no
duplicate at the seam.  Redis unreachable: the subscribe succeeds (live
from then on) and the answer is `recovered: false`, reason `unavailable`.

Bounds in Redis: `history_size` entries per stream (approximately: MAXLEN ~
trims whole nodes of the stream), entries older than `history_ttl` are not
replayed (a position before them is `expired`), and a stream idle for
`history_ttl` expires; its hash (epoch and top) lives ten times longer, so
a client that saw the last message before a quiet spell recovers nothing
missed rather than `epoch_changed`.  `history_max_bytes` and
`history_total_bytes` bound a single process's memory; in Redis the bound is
`history_size` x the message size, and Redis's own `maxmemory`.  FLUSHALL or
a Redis restart without persistence makes a new epoch: clients are told
`recovered: false` (`epoch_changed`), nothing is invented.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from engine.delivery.history import History, Stream
from engine.routing._channels import CHANNEL_OK_CONCRETE, normalize_channel, validate_channel

if TYPE_CHECKING:
    from engine.cluster.redis_broker import RedisBroker
    from engine.delivery.broker import Broker
    from engine.options import ServerOptions
    from engine.stats import Counters

__all__ = ["PUBLISH_SCRIPT", "RedisHistory", "Snapshot"]

log = logging.getLogger("engine.history")

# KEYS: hash, stream.  ARGV: node, origin, seq (the broker's), new epoch,
# MAXLEN, stream ttl ms, hash ttl ms, pub/sub channel, the message up to its
# position (it ends with ext.position, see RedisHistory.stamp).
PUBLISH_SCRIPT = b"""
local meta, stream = KEYS[1], KEYS[2]
local seen = redis.call('HGET', meta, 'o:' .. ARGV[1])
if seen then
  local origin, seq = string.match(seen, '^(%S+) (%d+)$')
  if origin == ARGV[2] and tonumber(ARGV[3]) <= tonumber(seq) then return 0 end
end
redis.call('HSET', meta, 'o:' .. ARGV[1], ARGV[2] .. ' ' .. ARGV[3])
local epoch = redis.call('HGET', meta, 'epoch')
if not epoch then
  epoch = ARGV[4]
  redis.call('HSET', meta, 'epoch', epoch)
end
local offset = redis.call('HINCRBY', meta, 'top', 1)
local message = ARGV[9] .. '{"epoch":"' .. epoch .. '","offset":' .. offset .. '}}}'
local now = redis.call('TIME')
local ms = now[1] .. string.format('%03d', math.floor(now[2] / 1000))
redis.call('XADD', stream, 'MAXLEN', '~', ARGV[5], offset .. '-0', 't', ms, 'm', message)
redis.call('PEXPIRE', stream, ARGV[6])
redis.call('PEXPIRE', meta, ARGV[7])
redis.call('PUBLISH', ARGV[8], '~' .. epoch .. ' ' .. offset .. '\\n' .. message)
return offset
""".strip()

# Written where the position goes; the message then ends with it.
PLACEHOLDER = "\x00position"
PLACEHOLDER_TAIL = b'"\\u0000position"}}'
SUBSCRIBE_TIMEOUT = 2.0  # s for Redis to confirm a recovering channel's subscription
READ_TIMEOUT = 2.0  # s for the stream's read
META_TTL_FACTOR = 10


class Snapshot:
    """What a subscribe recovers from (the interface of a local Stream): the
    stream read from Redis, and the live messages captured since its
    subscription was confirmed (the list grows until the batch is done)."""

    __slots__ = ("epoch", "read_top", "entries", "captured")

    def __init__(
        self,
        epoch: str,
        read_top: int,
        entries: list[tuple[int, bytes]],
        captured: list[tuple[int, bytes]],
    ) -> None:
        self.epoch = epoch
        self.read_top = read_top
        self.entries = entries  # (offset, message) after the client's position
        self.captured = captured

    @property
    def overflowed(self) -> bool:
        """Were more live messages captured than kept (the broker's MAX_CAPTURED)?"""
        return bool(self.captured) and self.captured[-1][0] < 0

    @property
    def top(self) -> int:
        last = self.captured[-2 if self.overflowed else -1][0] if self.captured else 0
        return max(self.read_top, last)

    def _run(self) -> list[tuple[int, bytes]]:
        """The entries then the captured messages after them: the newest
        contiguous run of offsets ending at `top` (a hole ends it)."""
        merged = list(self.entries)
        last = merged[-1][0] if merged else 0
        for offset, message in self.captured:
            if offset > last:
                merged.append((offset, message))
                last = offset
        expected = self.top
        start = len(merged)
        while start > 0 and merged[start - 1][0] == expected:
            start -= 1
            expected -= 1
        return merged[start:]

    def first(self) -> int:
        run = self._run()
        return run[0][0] if run else self.top + 1

    def position(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "offset": self.top}

    def tail(self, n: int) -> list[bytes]:
        run = self._run()
        return [message for _, message in run[len(run) - n :]] if n > 0 else []


class _Fetched:
    """One batch's prefetch: the channels held, and their snapshots."""

    __slots__ = ("held", "captures", "snapshots")

    def __init__(self) -> None:
        self.held: list[str] = []
        self.captures: list[tuple[str, list[tuple[int, bytes]]]] = []
        self.snapshots: dict[str, Snapshot | None] = {}


class RedisHistory(History):
    """History in Redis Streams (see the module docstring)."""

    prefetches = True

    def __init__(
        self, options: ServerOptions, stats: Counters, log: logging.Logger, broker: RedisBroker
    ) -> None:
        super().__init__(options, stats, log)
        self.broker = broker
        self.prefix = broker.prefix.encode()
        self.stream_ttl = b"%d" % options.history_ttl
        self.meta_ttl = b"%d" % (options.history_ttl * META_TTL_FACTOR)
        self.maxlen = b"%d" % options.history_size
        self.ttl_ms = options.history_ttl
        self.max_queue = options.max_queue
        self.reader = aioredis.Redis.from_url(
            options.broker, socket_connect_timeout=READ_TIMEOUT, socket_timeout=READ_TIMEOUT
        )
        self.current: _Fetched | None = None  # the batch being processed

    def keys(self, channel: str) -> tuple[bytes, bytes]:
        name = channel.encode()
        return self.prefix + b"h:" + name, self.prefix + b"s:" + name

    # ---------------------------------------------------------------- publish

    def stamp(self, channel: str, delivery: dict[str, Any]) -> Stream | None:
        if not self.patterns.match(channel):
            return None
        ext = delivery.pop("ext", None)
        ext = dict(ext) if type(ext) is dict else {}
        ext.pop("position", None)
        ext["position"] = PLACEHOLDER  # last key of the last key: the end of the message
        delivery["ext"] = ext
        return _MARK

    def publish(
        self, broker: Broker, channel: str, stream: Stream, encoded: bytes, lazy: bool
    ) -> int:
        if not encoded.endswith(PLACEHOLDER_TAIL):  # (stamp() makes sure it does)
            raise ValueError("history: the message does not end with its position")
        meta, stream_key = self.keys(channel)
        self.broker.publish_history(
            channel,
            PUBLISH_SCRIPT,
            [meta, stream_key],
            [
                secrets.token_hex(4).encode(),  # the epoch, if the stream has none
                self.maxlen,
                self.stream_ttl,
                self.meta_ttl,
                self.prefix + channel.encode(),
            ],
            encoded[: -len(PLACEHOLDER_TAIL)],
        )
        self.stats.history_kept += 1
        return 0  # (delivered when Redis publishes it, on every node)

    # --------------------------------------------------------------- recover

    def wanted(self, messages: list[Any]) -> bool:
        """Does this batch subscribe to a history channel, or recover?"""
        for m in messages:
            if type(m) is dict and m.get("channel") == "/meta/subscribe":
                ext = m.get("ext")
                if type(ext) is dict and ext.get("recover") is not None:
                    return True
                if self._channels(m.get("subscription")):
                    return True
        return False

    def _channels(self, subscription: Any) -> list[str]:
        items = subscription if type(subscription) is list else [subscription]
        found = []
        for item in items[: self.max_recover]:
            if type(item) is str and len(item) <= 1024:
                name = normalize_channel(item)
                if validate_channel(name) == CHANNEL_OK_CONCRETE and self.patterns.match(name):
                    found.append(name)
        return found

    async def prefetch(self, messages: list[Any], exchange: Any) -> _Fetched:
        """Hold the channels' subscriptions, then read their streams."""
        fetched = _Fetched()
        wanted: dict[str, int | None] = {}  # channel -> the offset recovered from
        for m in messages:
            if type(m) is not dict or m.get("channel") != "/meta/subscribe":
                continue
            for name in self._channels(m.get("subscription")):
                wanted.setdefault(name, None)
            ext = m.get("ext")
            recover = ext.get("recover") if type(ext) is dict else None
            if type(recover) is dict:
                for raw, position in list(recover.items())[: self.max_recover]:
                    for name in self._channels(raw):
                        offset = position.get("offset") if type(position) is dict else None
                        wanted[name] = offset if type(offset) is int and offset >= 0 else None
        broker = self.broker
        held = await asyncio.gather(
            *(broker.hold_subscription(name, SUBSCRIBE_TIMEOUT) for name in wanted)
        )
        fetched.held = list(wanted)
        live = [name for name, ok in zip(wanted, held, strict=True) if ok]
        for name in live:
            fetched.captures.append((name, broker.capture(name)))
        for name in wanted:
            fetched.snapshots[name] = None  # unavailable unless read below
        if live:
            try:
                await self._read(fetched, {name: wanted[name] for name in live})
                # The entries read may still be on their way here as live
                # messages: once they are in (captured), the replay dedupes
                # them by offset; without this a late one was delivered twice.
                await broker.fence(READ_TIMEOUT)
            except (RedisError, OSError, TimeoutError) as exc:
                for name in live:
                    fetched.snapshots[name] = None  # (a replay could duplicate)
                self.limits.warning(
                    "history_unavailable",
                    "history: the streams could not be read from redis (%s): "
                    "subscribers are told recovered: false (unavailable)",
                    exc,
                )
        self.current = fetched
        return fetched

    async def _read(self, fetched: _Fetched, wanted: dict[str, int | None]) -> None:
        room = self.max_queue
        async with self.reader.pipeline(transaction=False) as pipe:
            pipe.time()
            for name, offset in wanted.items():
                meta, stream = self.keys(name)
                pipe.hsetnx(meta, "epoch", secrets.token_hex(4))
                pipe.pexpire(meta, int(self.meta_ttl))
                pipe.hmget(meta, ["epoch", "top"])
                if offset is not None:
                    pipe.xrange(stream, min=f"{offset + 1}-0", max="+", count=room + 1)
            replies = await asyncio.wait_for(pipe.execute(), READ_TIMEOUT)
        seconds, micros = replies[0]
        oldest = int(seconds) * 1000 + int(micros) // 1000 - self.ttl_ms
        i = 1
        captures = dict(fetched.captures)
        for name, offset in wanted.items():
            epoch_raw, top_raw = replies[i + 2]
            i += 3
            entries: list[tuple[int, bytes]] = []
            if offset is not None:
                for entry_id, fields in replies[i]:
                    if int(fields.get(b"t", b"0")) >= oldest:  # older: expired
                        entries.append((int(entry_id.split(b"-", 1)[0]), fields[b"m"]))
                i += 1
            fetched.snapshots[name] = Snapshot(
                epoch_raw.decode(), int(top_raw or 0), entries, captures[name]
            )

    def _view(self, channel: str) -> Stream | None:
        current = self.current
        snapshot = current.snapshots.get(channel) if current is not None else None
        return snapshot  # type: ignore[return-value]

    def release(self, fetched: Any) -> None:
        assert isinstance(fetched, _Fetched)
        for name, captured in fetched.captures:
            self.broker.uncapture(name, captured)
        for name in fetched.held:
            self.broker.release_subscription(name)
        if self.current is fetched:
            self.current = None

    async def aclose(self) -> None:
        await self.reader.aclose()


class _Marker(Stream):
    """stamp()'s answer: a history channel (the stream is in Redis)."""


_MARK = _Marker()
