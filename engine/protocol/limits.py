"""Limits that making more sessions does not bypass: per connection, per address.

A per-session limit alone is no limit: a client that is refused simply
handshakes again.  So what one client may do is also bounded where the
client cannot multiply itself for free:

* per **connection** (`ConnectionLimits`, one per HTTP or WebSocket
  connection that is not a trusted proxy): handshakes per second, publishes
  per second, and the streak of identical failures that sets the back-off
  advised to a client that keeps failing the same way;
* per **client address** (`AddressTable`, the peer address or, behind
  trusted proxies, the forwarded one): handshakes per second and live
  sessions.  Off by default: many users may share one address (NAT).

Rates are token buckets refilled continuously: `rate` events per second,
bursts of up to `rate` events.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["AddressTable", "ConnectionLimits", "FailureStreaks", "TokenBucket", "backoff_ms"]

BACKOFF_START_MS = 1000  # interval advised after the second identical failure in a row
BACKOFF_MAX_MS = 30000


def backoff_ms(streak: int) -> int:
    """The interval to advise after `streak` identical failures in a row.

    The first failure gets 0 (an expired session handshakes again at once,
    as it should); from the second on, 1 s doubling to 30 s, so a client in
    a loop (one that never returns the browser cookie, say) slows down.
    """
    if streak <= 1:
        return 0
    return min(BACKOFF_MAX_MS, BACKOFF_START_MS << min(streak - 2, 16))


class TokenBucket:
    """`rate` events per second, bursts of `rate`."""

    __slots__ = ("rate", "tokens", "at")

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.tokens = rate
        self.at = now

    def take(self, now: float) -> bool:
        """Spend one token if there is one."""
        tokens = min(self.rate, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if tokens < 1.0:
            self.tokens = tokens
            return False
        self.tokens = tokens - 1.0
        return True

    def full(self, now: float) -> bool:
        return self.tokens + (now - self.at) * self.rate >= self.rate


class ConnectionLimits:
    """What one connection may still do (see the module docstring).

    `pause(owed)`, given by the connection, stops reading it now and, at the
    end of the loop turn (once the rest of what it sent is handled), for
    `owed()` seconds: a client that keeps publishing past its rate is slowed
    by TCP instead of costing the server a refusal per message.
    """

    __slots__ = (
        "handshakes",
        "publishes",
        "streak_error",
        "streak",
        "pause",
        "refused",
        "refused_rate",
    )

    def __init__(self, pause: Callable[[Callable[[], float]], None] | None = None) -> None:
        self.pause = pause
        self.refused = 0  # publishes refused for their rate since the last pause
        self.refused_rate = 0.0
        self.handshakes: TokenBucket | None = None
        self.publishes: TokenBucket | None = None
        self.streak_error = ""
        self.streak = 0

    def handshake_allowed(self, rate: float, now: float) -> bool:
        if rate <= 0:
            return True
        if self.handshakes is None:
            self.handshakes = TokenBucket(rate, now)
        return self.handshakes.take(now)

    def publish_allowed(self, rate: float, now: float) -> bool:
        if rate <= 0:
            return True
        if self.publishes is None:
            self.publishes = TokenBucket(rate, now)
        return self.publishes.take(now)

    def throttle(self, rate: float) -> None:
        """A publish refused for going past `rate` per second: the connection
        stops reading (see the class docstring)."""
        self.refused += 1
        self.refused_rate = rate
        if self.pause is not None:
            self.pause(self.owed)

    def owed(self) -> float:
        """How long a throttled connection is not read: the time its refused
        publishes would take at the rate (0.1 to 4 s); the count restarts."""
        rate = self.refused_rate
        wait = self.refused / rate if rate > 0 else 1.0
        self.refused = 0
        return min(4.0, max(0.1, wait))

    def failed(self, error: str) -> int:
        """One more failure `error`; the length of the streak of that failure."""
        if error == self.streak_error:
            self.streak += 1
        else:
            self.streak_error = error
            self.streak = 1
        return self.streak

    def succeeded(self) -> None:
        self.streak = 0
        self.streak_error = ""


class _Address:
    __slots__ = ("handshakes", "sessions", "seen")

    def __init__(self, now: float) -> None:
        self.handshakes: TokenBucket | None = None
        self.sessions = 0
        self.seen = now


class AddressTable:
    """Handshake rate and live sessions per client address, bounded in size.

    An address is forgotten once it has no session and a full bucket (it
    would be allowed everything anyway), by `sweep`, which the core's tick
    runs now and then; past `max_entries` the table stops tracking new
    addresses' rates rather than grow (their sessions are still counted).
    """

    __slots__ = ("handshake_rate", "max_sessions", "max_entries", "entries")

    def __init__(self, handshake_rate: float, max_sessions: int, max_entries: int = 200_000):
        self.handshake_rate = handshake_rate
        self.max_sessions = max_sessions
        self.max_entries = max_entries
        self.entries: dict[str, _Address] = {}

    @property
    def active(self) -> bool:
        return self.handshake_rate > 0 or self.max_sessions > 0

    def _entry(self, address: str, now: float) -> _Address | None:
        entry = self.entries.get(address)
        if entry is None:
            if len(self.entries) >= self.max_entries:
                return None
            entry = self.entries[address] = _Address(now)
        entry.seen = now
        return entry

    def handshake_refusal(self, address: str | None, now: float) -> str | None:
        """Why a handshake from `address` is refused now ("rate", "sessions"), or None."""
        if address is None or not self.active:
            return None
        entry = self._entry(address, now)
        if entry is None:
            return None
        if self.max_sessions > 0 and entry.sessions >= self.max_sessions:
            return "sessions"
        if self.handshake_rate > 0:
            bucket = entry.handshakes
            if bucket is None:
                bucket = entry.handshakes = TokenBucket(self.handshake_rate, now)
            if not bucket.take(now):
                return "rate"
        return None

    def session_added(self, address: str | None, now: float) -> None:
        if address is None or self.max_sessions <= 0:
            return
        entry = self.entries.get(address)
        if entry is None:
            entry = self.entries[address] = _Address(now)  # counted even past max_entries
        entry.sessions += 1

    def session_removed(self, address: str | None) -> None:
        if address is None or self.max_sessions <= 0:
            return
        entry = self.entries.get(address)
        if entry is not None and entry.sessions > 0:
            entry.sessions -= 1

    def sweep(self, now: float) -> None:
        idle = [
            address
            for address, entry in self.entries.items()
            if entry.sessions == 0
            and (entry.handshakes is None or entry.handshakes.full(now))
            and now - entry.seen > 1.0
        ]
        for address in idle:
            del self.entries[address]


class FailureStreaks:
    """The streak of identical failures per client address.

    A client in a failure loop may open a new connection each time (a
    per-connection streak would then never grow), so the back-off also
    follows its address.  Any success from the address ends its streak; an
    entry unused for `forget_after` seconds is swept; past `max_entries`
    new addresses are not tracked (the per-connection streak still is).
    """

    __slots__ = ("entries", "max_entries", "forget_after")

    def __init__(self, max_entries: int = 10_000, forget_after: float = 60.0) -> None:
        self.entries: dict[str, list[Any]] = {}  # address -> [error, count, last]
        self.max_entries = max_entries
        self.forget_after = forget_after

    def __len__(self) -> int:
        return len(self.entries)

    def failed(self, address: str | None, error: str, now: float) -> int:
        if address is None:
            return 0
        entry = self.entries.get(address)
        if entry is None:
            if len(self.entries) >= self.max_entries:
                return 0
            entry = self.entries[address] = [error, 0, now]
        if entry[0] != error:
            entry[0], entry[1] = error, 0
        entry[1] += 1
        entry[2] = now
        return int(entry[1])

    def succeeded(self, address: str | None) -> None:
        if address is not None:
            self.entries.pop(address, None)

    def sweep(self, now: float) -> None:
        stale = [a for a, e in self.entries.items() if now - e[2] > self.forget_after]
        for address in stale:
            del self.entries[address]
