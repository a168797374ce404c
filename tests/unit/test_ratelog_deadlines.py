"""The shared pieces behind every limit: per-cause rate-limited logs, and the
connection deadline wheel."""

from __future__ import annotations

import logging

import pytest

from engine.ratelog import CauseLog
from engine.transport.deadlines import ConnectionDeadlines


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_cause_log_one_line_per_period_with_the_count(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    causes = CauseLog(logging.getLogger("test.ratelog"), every=10.0)
    causes.clock = clock
    with caplog.at_level(logging.WARNING, logger="test.ratelog"):
        for i in range(18_720):
            causes.warning("flood", "refused publish %d", i)
        causes.warning("other", "another cause")
        clock.now += 10.0
        causes.warning("flood", "refused publish %s", "again")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "refused publish 0",
        "another cause",
        "refused publish again (18720 times in the last 10 s)",
    ]
    assert causes.counts() == {"flood": 0, "other": 0}


def test_cause_log_traceback_only_the_first_time(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    causes = CauseLog(logging.getLogger("test.ratelog2"), every=1.0)
    causes.clock = clock
    with caplog.at_level(logging.ERROR, logger="test.ratelog2"):
        for _ in range(3):
            try:
                raise KeyError("x")
            except KeyError:
                causes.exception("KeyError", "handler failed")
            clock.now += 2.0
    assert [bool(r.exc_info) for r in caplog.records] == [
        True,
        False,
        False,
    ]


class Conn:
    def __init__(self) -> None:
        self.deadline = float("inf")
        self.deadline_slot = -1
        self.closed = False
        self.fired: list[float] = []

    def on_deadline(self, now: float) -> None:
        self.fired.append(now)


class BadConn(Conn):
    def on_deadline(self, now: float) -> None:
        raise RuntimeError("bug")


class FakeLoop:
    def __init__(self) -> None:
        self.now = 1000.0

    def time(self) -> float:
        return self.now


def test_deadlines_fire_once_move_later_and_survive_a_raising_connection() -> None:
    loop = FakeLoop()
    wheel = ConnectionDeadlines(loop, resolution=0.5)  # type: ignore[arg-type]
    early, moved, never, bad = Conn(), Conn(), Conn(), BadConn()
    wheel.arm(early, 1001.0)
    wheel.arm(moved, 1001.0)
    wheel.arm(never, 1001.0)
    wheel.arm(bad, 1000.5)
    wheel.arm(moved, 1005.0)  # later: stays filed early, refiled when due
    wheel.disarm(never)
    wheel.sweep(1001.2)
    assert early.fired == [1001.2]
    assert moved.fired == [] and never.fired == []
    assert len(wheel.wheel) == 1  # only `moved`, refiled once
    wheel.arm(early, 1003.0)
    wheel.sweep(1004.0)
    assert early.fired == [1001.2, 1004.0]
    wheel.sweep(1005.0)
    assert moved.fired == [1005.0]
    assert len(wheel.wheel) == 0 and wheel.fired == 4


def test_deadline_moved_earlier_leaves_one_live_entry() -> None:
    loop = FakeLoop()
    wheel = ConnectionDeadlines(loop, resolution=0.5)  # type: ignore[arg-type]
    conn = Conn()
    wheel.arm(conn, 1010.0)
    wheel.arm(conn, 1002.0)
    wheel.sweep(1002.0)
    assert conn.fired == [1002.0]
    wheel.sweep(1011.0)  # the stale later entry does not fire again
    assert conn.fired == [1002.0]
