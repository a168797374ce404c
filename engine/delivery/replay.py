"""The Salesforce `replay` dialect, on top of channel history.

Opt-in per channel pattern (`--replay-channels /topic/**`, or
`server.replay("/topic/**")`); a replay channel keeps history too (its
pattern is added to the history patterns: the `history_*` bounds are the
retention window).  Salesforce Streaming API clients (jsforce's
`StreamingExtension.Replay`, aiosfstream, EMP-Connector) then work as
they do against Salesforce:

Handshake: a client that asks with `ext.replay: true` is answered
`ext.replay: true` (clients that do not ask, as jsforce, may still use
`ext.replay` on their subscribes).

Events: a replay channel's message carries its replayId and creation date,
written before the one encoding; the published `data` becomes the
`payload`, as in a Salesforce platform event:

    {"channel": "/topic/orders",
     "data": {"event": {"replayId": 1764768000123001, "createdDate": "2026-12-03T13:20:00.123Z"},
              "payload": <the data as published>},
     "ext": {"position": {"epoch": "9f2c41d7", "offset": 1}}}

Subscribe: `ext.replay` maps channels to a replayId:

    {"channel": "/meta/subscribe", "subscription": "/topic/orders",
     "ext": {"replay": {"/topic/orders": 1764768000123001}}}

- `-1`, or no entry for the channel: new events only;
- `-2`: every retained event, then new ones;
- a replayId R the server sent: the retained events after R, then new ones
  (the subscription and the read of the stream happen in the same step on
  the loop: no gap, no duplicate at the seam);
- an R the server no longer retains (dropped by the history bounds, or from
  before a restart), one it has not reached, or anything but an integer:
  the subscribe fails, with Salesforce's error (aiosfstream's
  `replay_fallback` resubscribes on a `400` error):

      "400::The replayId {R} you provided was invalid.  Please provide a valid ID,
       -2 to replay all events, or -1 to replay only new events."

- `-2` or R on a channel that is not a replay channel (a wildcard
  subscription included): `400::The channel {C} keeps no replay history.
  Please provide -1 to receive only new events.`;
- more missed events than the session may queue (`max_queue`):
  `409::The replayId {R} is too far behind: N events to replay, at most M
  may be queued.  Please provide a later ID, or -1 to replay only new events.`;
- `ext.replay` that is not an object: `400::ext.replay must map channels
  to replayIds`.

Entries for channels the subscribe does not name are ignored (jsforce sends
its channel's entry on every subscribe).  A channel the session is
subscribed to already is not replayed: its events never stopped.  Without
any replay channel the server ignores `ext.replay`, like any extension it
does not know.

ReplayId: `stream.base + offset`.  A stream's base is its creation time in
milliseconds x 1000 (about 1.8e15, below 2**53 until the year 2255), and
above every replayId of the streams the process dropped; so the replayIds
of a stream from before a restart (or before it was dropped) are below the
new stream's, and answered with the invalid-replayId error, never replayed
from the wrong place.  This holds while a stream averages fewer than a
million events per second over its life, and while the wall clock does not
go back across a restart.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from engine.routing._channels import ChannelTrie, normalize_channel

if TYPE_CHECKING:
    from engine.delivery.history import History, Stream
    from engine.stats import Counters

__all__ = ["Replay", "ReplayRequest", "NEW_EVENTS", "ALL_EVENTS", "created_date"]

NEW_EVENTS = -1
ALL_EVENTS = -2
NOT_A_MAP = "400::ext.replay must map channels to replayIds"


def invalid(replay_id: Any) -> str:
    """Salesforce's error for a replayId it cannot replay from."""
    shown = replay_id if type(replay_id) is int else repr(replay_id)[:64]
    return (
        f"400::The replayId {{{shown}}} you provided was invalid.  Please provide a valid ID, "
        "-2 to replay all events, or -1 to replay only new events."
    )


def created_date(now: float) -> str:
    """ISO 8601 in UTC with milliseconds, as Salesforce writes createdDate
    (fixed width: the strings sort as the times do)."""
    ms = int(now * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


class Replay:
    """Which channels speak the replay dialect, and their events' stamps."""

    def __init__(self, history: History, stats: Counters) -> None:
        self.patterns = ChannelTrie()
        self.history = history
        self.stats = stats
        self.active = False

    def add_pattern(self, pattern: str) -> None:
        name = normalize_channel(pattern)
        self.patterns.add(name, True)
        self.history.add_pattern(name)  # replay is read from the history
        self.active = True

    def keeps(self, channel: str) -> bool:
        return bool(self.patterns.match(channel))

    def stamp(self, channel: str, delivery: dict[str, Any], stream: Stream) -> None:
        """Before encoding (after History.stamp): the replay event envelope."""
        if not self.patterns.match(channel):
            return
        event = {
            "replayId": stream.base + stream.top + 1,
            "createdDate": created_date(self.history.wall()),
        }
        delivery["data"] = {"event": event, "payload": delivery.get("data")}

    def request(self, ext: Any, room: int) -> ReplayRequest | None:
        """The replay asked by a subscribe's `ext` (None: none asked)."""
        if not self.active or type(ext) is not dict or "replay" not in ext:
            return None
        return ReplayRequest(self, ext["replay"], room)


class ReplayRequest:
    """One subscribe's `ext.replay`: checked channel by channel as the
    subscribe adds them (after the policy allowed each)."""

    __slots__ = ("replay", "wanted", "room")

    def __init__(self, replay: Replay, wanted: Any, room: int) -> None:
        self.replay = replay
        self.wanted = wanted
        self.room = room  # events the session may still queue

    def plan(self, channel: str, queue: Callable[[bytes], None]) -> str | None:
        """Just before `channel` is subscribed: the error that fails the
        subscribe, or None once its missed events (if any) went to `queue`."""
        wanted = self.wanted
        if type(wanted) is not dict:
            self.replay.stats.replay_refused += 1
            return NOT_A_MAP
        if channel not in wanted:
            return None
        replay_id = wanted[channel]
        error = self._plan(channel, replay_id, queue)
        if error is not None:
            self.replay.stats.replay_refused += 1
        return error

    def _plan(self, channel: str, replay_id: Any, queue: Callable[[bytes], None]) -> str | None:
        if type(replay_id) is not int:  # (bool is not int here)
            return invalid(replay_id)
        if replay_id == NEW_EVENTS:
            return None
        replay = self.replay
        if "*" in channel or not replay.keeps(channel):
            if replay_id == ALL_EVENTS or replay_id >= 0:
                return (
                    f"400::The channel {{{channel}}} keeps no replay history.  "
                    "Please provide -1 to receive only new events."
                )
            return invalid(replay_id)
        history = replay.history
        stream = history._stream(channel)
        if replay_id == ALL_EVENTS:
            history._expire(stream, history.clock(), channel)
            offset = stream.first() - 1
        elif replay_id < stream.base:  # negative, or from an older stream
            return invalid(replay_id)
        else:
            offset = replay_id - stream.base
        answer, missed = history.recover(
            channel, {"epoch": stream.epoch, "offset": offset}, self.room
        )
        if answer["recovered"] is not True:
            if answer["reason"] == "too_many":
                return (
                    f"409::The replayId {{{replay_id}}} is too far behind: "
                    f"{stream.top - offset} events to replay, at most {self.room} may be "
                    "queued.  Please provide a later ID, or -1 to replay only new events."
                )
            return invalid(replay_id)  # expired, future_offset
        self.room -= len(missed)
        self.replay.stats.replay_subscribes += 1
        for encoded in missed:
            queue(encoded)
        return None
