"""Channel history: recent messages kept per channel, for recovery.

Opt-in per channel pattern (`--history-channels /chat/**`, or
`server.history("/chat/**")`).  Each history channel has a *stream*: an
*epoch* (a random id, new whenever the stream's past may have been lost: a
server start, a stream evicted and made again) and a strictly increasing
*offset*, one per message, with no holes.  Every message delivered on a
history channel carries its position in `ext.position`:

    {"channel": "/chat/room", "data": ..., "ext": {"position": {"epoch": "9f2c41d7", "offset": 42}}}

It is written into the message before it is encoded, so every subscriber
gets the same bytes (encode once).

Recovery: a `/meta/subscribe` may carry the last positions a client saw,
per channel, in `ext.recover`:

    {"channel": "/meta/subscribe", "subscription": "/chat/room",
     "ext": {"recover": {"/chat/room": {"epoch": "9f2c41d7", "offset": 40}}}}

The server queues the messages after that position, in order, before any
live message of that channel (the subscription and the read of the stream
happen in the same step on the loop: no gap and no duplicate at the seam),
and answers in the reply's `ext.recover`, for each channel it was asked
about and each history channel the subscription names:

    "ext": {"recover": {"/chat/room": {"epoch": "9f2c41d7", "offset": 42,
                                        "recovered": true, "missed": 2}}}

`epoch`/`offset` are the stream's position now (what to recover from next
time); `recovered` is present when a position was sent: true when every
missed message was delivered, false with a `reason` otherwise, and then
nothing is replayed (the client must resynchronise another way):

- `epoch_changed`: the stream is not the one the position is in;
- `expired`: messages after the position were dropped (size, bytes, time);
- `too_many`: more missed messages than a session may queue (`max_queue`);
- `future_offset`: an offset the stream has not reached;
- `invalid_position`: not `{"epoch": str, "offset": int >= 0}`;
- `no_history`: the channel keeps no history;
- `not_subscribed`: the channel is not matched by this subscribe's
  subscriptions (a wildcard subscription recovers the concrete channels
  named in `ext.recover` that it matches, each on its own);
- `already_subscribed`: the session was subscribed already; its live
  messages were never interrupted, so nothing is replayed.

Bounds: `history_size` messages and `history_max_bytes` per channel,
`history_ttl` for each message, at most `history_max_channels` streams and
`history_total_bytes` in all (the streams published to least recently are
dropped whole; their epoch changes if they come back).  Every drop is
counted (`history_*` counters) and logged once per cause.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from engine.ratelog import CauseLog
from engine.routing._channels import (
    CHANNEL_OK_CONCRETE,
    ChannelTrie,
    normalize_channel,
    validate_channel,
)

if TYPE_CHECKING:
    import logging

    from engine.delivery.broker import Broker
    from engine.options import ServerOptions
    from engine.stats import Counters

__all__ = ["History", "Stream", "MAX_OFFSET"]

MAX_OFFSET = 2**53  # offsets stay exact in JavaScript numbers
MAX_EPOCH_LENGTH = 64


class Stream:
    """One channel's retained messages: offsets `first()`..`top`, contiguous."""

    __slots__ = ("epoch", "base", "top", "messages", "times", "size")

    def __init__(self, base: int = 0) -> None:
        self.epoch = secrets.token_hex(4)
        # What a message's offset is added to for its Salesforce replayId
        # (engine.delivery.replay): above the replayIds of older streams.
        self.base = base
        self.top = 0  # the offset of the newest message (0: none yet)
        self.messages: deque[bytes] = deque()
        self.times: deque[float] = deque()  # when each was kept (monotonic)
        self.size = 0  # bytes of the messages

    overflowed = False  # (a Redis snapshot's live messages past their bound)

    def first(self) -> int:
        """Offset of the oldest retained message (top + 1 when none is)."""
        return self.top - len(self.messages) + 1

    def position(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "offset": self.top}

    def tail(self, n: int) -> list[bytes]:
        """The newest `n` messages, oldest first."""
        messages = self.messages
        return [messages[i] for i in range(len(messages) - n, len(messages))]


class History:
    """Every history stream of a node, and the recovery of subscribers."""

    def __init__(
        self,
        options: ServerOptions,
        stats: Counters,
        log: logging.Logger,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.patterns = ChannelTrie()
        self.size = options.history_size
        self.ttl = options.history_ttl / 1000.0
        self.max_bytes = options.history_max_bytes
        self.max_channels = options.history_max_channels
        self.total_limit = options.history_total_bytes
        self.max_recover = max(1, options.max_subscriptions)  # channels per subscribe
        self.stats = stats
        self.limits = CauseLog(log)
        self.clock = clock
        self.wall = wall
        # Above every replayId of the streams dropped so far (see _new_stream).
        self.floor = 0
        # Least recently published first: the first to go past the bounds.
        self.streams: OrderedDict[str, Stream] = OrderedDict()
        self.total = 0  # bytes in every stream
        self.active = False  # any pattern (one test per publish otherwise)
        for pattern in options.history_patterns:
            self.add_pattern(pattern)

    def add_pattern(self, pattern: str) -> None:
        self.patterns.add(normalize_channel(pattern), True)
        self.active = True

    def keeps(self, channel: str) -> bool:
        return bool(self.patterns.match(channel))

    # ---------------------------------------------------------------- publish

    def stamp(self, channel: str, delivery: dict[str, Any]) -> Stream | None:
        """Before encoding: give a history channel's message its position
        (the next offset); None for a channel without history."""
        if not self.patterns.match(channel):
            return None
        stream = self._stream(channel)
        self.streams.move_to_end(channel)
        ext = delivery.get("ext")
        ext = dict(ext) if type(ext) is dict else {}
        ext["position"] = {"epoch": stream.epoch, "offset": stream.top + 1}
        delivery["ext"] = ext
        return stream

    def publish(
        self, broker: Broker, channel: str, stream: Stream, encoded: bytes, lazy: bool
    ) -> int:
        """A stamped message: kept, then delivered (the subscribers reached)."""
        self.keep(channel, stream, encoded)
        return broker.publish(channel, encoded, lazy)

    # A clustered history reads Redis before a subscribe (see process_here).
    prefetches = False

    def wanted(self, messages: list[Any]) -> bool:
        return False

    async def prefetch(self, messages: list[Any], exchange: Any) -> Any:
        return None

    def release(self, fetched: Any) -> None:
        pass

    async def aclose(self) -> None:
        pass

    def keep(self, channel: str, stream: Stream, encoded: bytes) -> None:
        """After encoding: retain the message (the oldest ones past the bounds go)."""
        stream.top += 1
        stream.messages.append(encoded)
        now = self.clock()
        stream.times.append(now)
        size = len(encoded)
        stream.size += size
        self.total += size
        self.stats.history_kept += 1
        dropped = 0
        while len(stream.messages) > 1 and (
            len(stream.messages) > self.size or stream.size > self.max_bytes
        ):
            self._drop_oldest(stream)
            dropped += 1
        if dropped:
            self._count_drops(dropped, "history_size", channel)
        self._expire(stream, now, channel)
        if self.total > self.total_limit:
            self._evict_streams("history_total_bytes")

    def _drop_oldest(self, stream: Stream) -> None:
        size = len(stream.messages.popleft())
        stream.times.popleft()
        stream.size -= size
        self.total -= size

    def _count_drops(self, dropped: int, cause: str, channel: str) -> None:
        self.stats.history_dropped += dropped
        self.limits.warning(
            cause,
            "history of %s: %d oldest message(s) dropped (%s: history_size=%d, "
            "history_max_bytes=%d, history_ttl=%d ms); a client whose position is older "
            "is told recovered: false",
            channel,
            dropped,
            cause,
            self.size,
            self.max_bytes,
            int(self.ttl * 1000),
        )

    def _expire(self, stream: Stream, now: float, channel: str) -> None:
        times = stream.times
        dropped = 0
        while times and times[0] < now - self.ttl:
            self._drop_oldest(stream)
            dropped += 1
        if dropped:
            self._count_drops(dropped, "history_ttl", channel)

    def _evict_streams(self, cause: str) -> None:
        """Whole streams go, least recently published first (the newest stays)."""
        evicted = 0
        while len(self.streams) > 1 and (
            len(self.streams) > self.max_channels or self.total > self.total_limit
        ):
            channel, stream = self.streams.popitem(last=False)
            self.floor = max(self.floor, stream.base + stream.top + 1)
            self.total -= stream.size
            self.stats.history_dropped += len(stream.messages)
            evicted += 1
        self.stats.history_streams_evicted += evicted
        if evicted:
            self.limits.warning(
                cause,
                "history: %d stream(s) dropped whole (%s: history_max_channels=%d, "
                "history_total_bytes=%d); they start again with a new epoch",
                evicted,
                cause,
                self.max_channels,
                self.total_limit,
            )

    # --------------------------------------------------------------- recover

    def _stream(self, channel: str) -> Stream:
        """The channel's stream, made (with a new epoch) if it has none: a
        first subscriber learns a position it can recover from later."""
        stream = self.streams.get(channel)
        if stream is None:
            stream = self.streams[channel] = self._new_stream()
            if len(self.streams) > self.max_channels:
                self._evict_streams("history_max_channels")
        return stream

    def _view(self, channel: str) -> Stream | None:
        """What recovery reads of a channel's stream (None: unavailable)."""
        stream = self._stream(channel)
        self._expire(stream, self.clock(), channel)
        return stream

    def _new_stream(self) -> Stream:
        """A stream whose base (creation time in ms x 1000) is above the
        replayIds of the streams dropped before it: those of a stream from
        before a restart are below it too, while a stream averages fewer
        than 1000 messages a millisecond and the clock does not go back."""
        return Stream(max(int(self.wall() * 1000) * 1000, self.floor))

    def position(self, channel: str) -> dict[str, Any] | None:
        """A history channel's position now; None for another channel or
        when it cannot be known."""
        if not self.patterns.match(channel):
            return None
        view = self._view(channel)
        return None if view is None else view.position()

    def recover(self, channel: str, wanted: Any, room: int) -> tuple[dict[str, Any], list[bytes]]:
        """The answer for a subscriber that saw `wanted` on `channel` and
        may queue `room` more messages, and the messages to queue for it
        (every missed one, or none)."""
        if not self.patterns.match(channel):
            return self._not_recovered({}, "no_history"), []
        stream = self._view(channel)
        if stream is None:  # (Redis unreachable)
            return self._not_recovered({}, "unavailable"), []
        answer: dict[str, Any] = stream.position()
        offset = wanted.get("offset") if type(wanted) is dict else None
        epoch = wanted.get("epoch") if type(wanted) is dict else None
        if (
            type(offset) is not int
            or not 0 <= offset <= MAX_OFFSET
            or type(epoch) is not str
            or len(epoch) > MAX_EPOCH_LENGTH
        ):
            return self._not_recovered(answer, "invalid_position"), []
        if epoch != stream.epoch:
            return self._not_recovered(answer, "epoch_changed"), []
        if offset > stream.top:
            return self._not_recovered(answer, "future_offset"), []
        if offset < stream.first() - 1:
            return self._not_recovered(answer, "expired"), []
        missed = stream.top - offset
        if missed > room or stream.overflowed:
            return self._not_recovered(answer, "too_many"), []
        answer["recovered"] = True
        answer["missed"] = missed
        self.stats.history_recovered += 1
        self.stats.history_replayed += missed
        return answer, stream.tail(missed)

    def subscribed(
        self,
        fresh: list[str],
        others: Iterable[str],
        requested: Any,
        room: int,
        queue: Callable[[bytes], None],
    ) -> tuple[dict[str, Any], int]:
        """After a subscribe: the reply's `ext.recover` and how many
        positions were ignored (past max_subscriptions); the missed messages
        go to `queue`, in order, channel after channel.  `fresh` are the
        patterns this subscribe added, `others` the session's other ones."""
        answers: dict[str, Any] = {}
        for pattern in fresh:
            position = self.position(pattern) if "*" not in pattern else None
            if position is not None:
                answers[pattern] = position
        if type(requested) is not dict or not requested:
            return answers, 0
        covering, before = ChannelTrie(), ChannelTrie()
        for pattern in fresh:
            covering.add(pattern, True)
        for pattern in others:
            before.add(pattern, True)
        for n, (raw, wanted) in enumerate(requested.items()):
            if n >= self.max_recover:
                return answers, len(requested) - n
            channel = normalize_channel(raw) if type(raw) is str and len(raw) <= 1024 else None
            if channel is None or validate_channel(channel) != CHANNEL_OK_CONCRETE:
                continue  # not a channel: nothing to answer it under
            if not self.patterns.match(channel):
                answers[channel] = self._not_recovered({}, "no_history")
            elif before.match(channel):
                # Its live messages never stopped: a replay would duplicate them.
                answers[channel] = self._not_recovered(
                    self.position(channel) or {}, "already_subscribed"
                )
            elif not covering.match(channel):
                answers[channel] = self._not_recovered(
                    self.position(channel) or {}, "not_subscribed"
                )
            else:
                answer, missed = self.recover(channel, wanted, room)
                answers[channel] = answer
                room -= len(missed)
                for encoded in missed:
                    queue(encoded)
        return answers, 0

    def _not_recovered(self, answer: dict[str, Any], reason: str) -> dict[str, Any]:
        self.stats.history_not_recovered += 1
        answer["recovered"] = False
        answer["reason"] = reason
        return answer
