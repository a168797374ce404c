"""Connection timeouts on one timer wheel per process (no timer per connection).

Every wait a client can impose on the server has a deadline: the rest of a
request's head, its body, the next request on a kept-alive connection, the
first message on a new WebSocket, a live session on a WebSocket.  Each
connection keeps one `deadline` (a loop time; infinity when nothing is
awaited) and moves it as its state changes; this wheel holds each connection
at most once and, once a slot comes due, calls `on_deadline(now)` on the
connections whose deadline has really passed.  A connection whose deadline
moved later since it was filed is filed again at its new slot, so moving a
deadline costs a float store, not a wheel operation.

A connection that takes part provides:

    deadline: float        when it must hear from its peer (inf: no deadline)
    deadline_slot: int     the slot of its one entry in the wheel (-1: none)
    closed: bool
    on_deadline(now)       its deadline has passed: count it and close

The tick is guarded: an exception in one connection's `on_deadline` is
logged once per cause and the sweep goes on, so one bug cannot stop every
timeout of the process.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from engine.protocol._sessions import TimerWheel
from engine.ratelog import CauseLog

__all__ = ["ConnectionDeadlines", "TimedConnection"]

log = logging.getLogger("engine.deadlines")

RESOLUTION = 0.5  # s: a timeout fires at most this much late


class TimedConnection(Protocol):
    deadline: float
    deadline_slot: int
    closed: bool

    def on_deadline(self, now: float) -> None: ...


class ConnectionDeadlines:
    """The wheel and its periodic tick (see the module docstring)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, resolution: float = RESOLUTION) -> None:
        self.loop = loop
        self.wheel: TimerWheel[Any] = TimerWheel(resolution, loop.time())
        self._handle: asyncio.TimerHandle | None = None
        self._errors = CauseLog(log)
        self.fired = 0  # deadlines that passed (the connection was told)

    def arm(self, conn: Any, when: float) -> None:
        """Set `conn`'s deadline to `when` (earlier or later than before)."""
        conn.deadline = when
        if when == float("inf"):
            return
        wheel = self.wheel
        slot = wheel.slot_of(when)
        current = conn.deadline_slot
        if current < 0 or current > slot:
            wheel.add_to_slot(slot, conn)
            conn.deadline_slot = slot

    @staticmethod
    def disarm(conn: Any) -> None:
        """No deadline for `conn` (its wheel entry, if any, goes stale)."""
        conn.deadline = float("inf")

    def start(self) -> None:
        if self._handle is None:
            self._handle = self.loop.call_at(self.wheel.next_due(), self._tick)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        try:
            self.sweep(self.loop.time())
        except Exception:  # (sweep guards each connection; this is a last resort)
            self._errors.exception("sweep", "connection deadline sweep failed")
        self._handle = self.loop.call_at(self.wheel.next_due(), self._tick)

    def sweep(self, now: float) -> None:
        """Tell every connection whose deadline has passed; refile the others."""
        wheel = self.wheel
        last = int(now / wheel.resolution)
        while wheel.next_slot <= last:
            slot = wheel.next_slot
            wheel.next_slot += 1
            bucket = wheel.slots.pop(slot, None)
            if bucket is None:
                continue
            for conn in bucket:
                if conn.deadline_slot != slot:
                    continue  # a stale entry: the connection is filed earlier
                conn.deadline_slot = -1
                if conn.closed:
                    continue
                deadline = conn.deadline
                if deadline <= now:
                    self.fired += 1
                    try:
                        conn.on_deadline(now)
                    except Exception:
                        self._errors.exception(
                            type(conn).__name__, "%s.on_deadline raised", type(conn).__name__
                        )
                elif deadline != float("inf"):
                    self.arm(conn, deadline)  # moved later since it was filed
