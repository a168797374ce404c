"""Clustered history's bounds without a Redis: the live messages captured
for one recovery are bounded, and a full capture is answered too_many."""

from __future__ import annotations

import logging

import pytest

import engine.cluster.redis_broker as redis_broker
from engine.cluster.history_streams import Snapshot
from engine.cluster.redis_broker import RedisBroker
from engine.delivery.history import History
from engine.options import ServerOptions
from engine.stats import Counters


def test_a_capture_is_bounded_and_marked_full(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_broker, "MAX_CAPTURED", 3)
    broker = RedisBroker(lambda *a: None, node_id="n", url="redis://127.0.0.1:1/0")
    captured = broker.capture("/h/a")
    name = broker.prefix.encode() + b"/h/a"
    for offset in range(1, 8):
        data = b"~e %d\n{}" % offset
        broker._received(name, data)
    assert [o for o, _ in captured] == [1, 2, 3, -1]  # bounded, then marked once
    broker.uncapture("/h/a", captured)
    assert not broker._captures


def test_a_full_capture_is_answered_too_many() -> None:
    history = History(ServerOptions(history_channels="/h/**"), Counters(), logging.getLogger())
    full = Snapshot("e", 5, [(5, b"m5")], [(6, b"m6"), (7, b"m7"), (-1, b"")])
    assert full.overflowed and full.top == 7
    history._view = lambda channel: full  # type: ignore[method-assign,assignment,return-value]
    answer, missed = history.recover("/h/a", {"epoch": "e", "offset": 4}, room=100)
    assert answer["reason"] == "too_many" and missed == []
    whole = Snapshot("e", 5, [(5, b"m5")], [(6, b"m6"), (7, b"m7")])
    history._view = lambda channel: whole  # type: ignore[method-assign,assignment,return-value]
    answer, missed = history.recover("/h/a", {"epoch": "e", "offset": 4}, room=100)
    assert answer["recovered"] is True and missed == [b"m5", b"m6", b"m7"]


def test_streams_past_max_channels_or_total_bytes_go_whole_least_recent_first() -> None:
    stats = Counters()
    options = ServerOptions(
        history_channels="/h/**", history_max_channels=3, history_total_bytes=1000
    )
    history = History(options, stats, logging.getLogger())

    def publish(channel: str, size: int) -> None:
        stream = history.stamp(channel, {"channel": channel, "data": 0})
        assert stream is not None
        history.keep(channel, stream, b"x" * size)

    for c in ("/h/a", "/h/b", "/h/c"):
        publish(c, 10)
    publish("/h/a", 10)  # /h/a is now the most recent
    epoch_b = history.streams["/h/b"].epoch
    publish("/h/d", 10)  # a fourth stream: the least recently published (/h/b) goes
    assert list(history.streams) == ["/h/c", "/h/a", "/h/d"]
    assert stats.history_streams_evicted == 1 and stats.history_dropped == 1
    assert history.position("/h/b")["epoch"] != epoch_b  # back with a new epoch
    publish("/h/e", 900)  # past history_total_bytes: old streams go until under
    assert history.total <= 1000 and "/h/e" in history.streams
    assert "/h/c" not in history.streams
