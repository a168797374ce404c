"""The Salesforce replay dialect (engine.delivery.replay) in one process:
the handshake ext, each event's data.event.replayId and createdDate,
subscribes with -1, -2 and a stored replayId (no gap, no duplicate at the
seam), and Salesforce's errors for what cannot be replayed."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from harness import running_server
from support import Browser

from engine import BayeuxServer, ServerOptions
from engine.delivery.history import History
from engine.options import ServerOptions as Options
from engine.stats import Counters

REPLAY = {"replay_channels": "/topic/**", "timeout": 1500, "max_interval": 5000}
INVALID = re.compile(
    r"^400::The replayId \{(.*)\} you provided was invalid\.  Please provide a valid ID, "
    r"-2 to replay all events, or -1 to replay only new events\.$"
)
CREATED = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def events(resp: Any, channel: str) -> list[dict[str, Any]]:
    return [m for m in resp.messages if m.get("channel") == channel and "data" in m]


def drain(b: Browser, channel: str) -> list[dict[str, Any]]:
    return events(b.connect(advice={"timeout": 0}), channel)


def subscribe(b: Browser, channel: str, replay: Any = None, **ext: Any) -> Any:
    fields: dict[str, Any] = {"subscription": channel}
    if replay is not None:
        ext["replay"] = replay
    if ext:
        fields["ext"] = ext
    return b.send([b.message("/meta/subscribe", **fields)])


def payloads(got: list[dict[str, Any]]) -> list[Any]:
    return [m["data"]["payload"] for m in got]


def ids(got: list[dict[str, Any]]) -> list[int]:
    return [m["data"]["event"]["replayId"] for m in got]


def published(server: BayeuxServer, channel: str, *values: Any) -> list[dict[str, Any]]:
    """Publish `values` with a subscriber watching; the events it saw."""
    watcher = Browser(server).ready()
    subscribe(watcher, channel)
    pub = Browser(server).ready()
    for v in values:
        assert pub.publish(channel, v).reply(channel)["successful"]
    return drain(watcher, channel)


def test_handshake_ext_and_event_shape() -> None:
    with running_server(**REPLAY) as server:
        b = Browser(server)
        reply = b.handshake(ext={"replay": True}).reply("/meta/handshake")
        assert reply["ext"] == {"replay": True}
        plain = Browser(server).handshake().reply("/meta/handshake")
        assert "ext" not in plain  # answered only when asked
        before = int(time.time() * 1000) * 1000
        got = published(server, "/topic/a", {"n": 1}, "two", None)
        assert payloads(got) == [{"n": 1}, "two", None]  # the data as published
        first = got[0]["data"]["event"]["replayId"]
        assert before <= first < 2**53
        assert ids(got) == [first, first + 1, first + 2]
        assert all(CREATED.match(m["data"]["event"]["createdDate"]) for m in got)
        assert set(got[0]["data"]) == {"event", "payload"}
        # A channel that is not a replay channel: its data untouched.
        other = published(server, "/plain", {"n": 1})
        assert other[0]["data"] == {"n": 1}
    with running_server(history_channels="/topic/**") as server:  # no replay at all
        reply = Browser(server).handshake(ext={"replay": True}).reply("/meta/handshake")
        assert "ext" not in reply


def test_new_all_and_stored_replay_ids() -> None:
    with running_server(**REPLAY) as server:
        seen = published(server, "/topic/o", 1, 2, 3, 4, 5)
        stored = seen[1]["data"]["event"]["replayId"]  # the client saw 1 and 2
        pub = Browser(server).ready()

        # A stored replayId: 3, 4, 5, then live 6; none twice.  (No handshake
        # ext: jsforce never sends one.)
        b = Browser(server).ready()
        resp = subscribe(b, "/topic/o", {"/topic/o": stored})
        assert resp.reply("/meta/subscribe")["successful"] is True
        recovered = events(resp, "/topic/o") + drain(b, "/topic/o")
        pub.publish("/topic/o", 6)
        got = recovered + drain(b, "/topic/o")
        assert payloads(got) == [3, 4, 5, 6]
        assert ids(got) == [stored + n for n in range(1, 5)]

        # -2: every retained event, then live.
        c = Browser(server).ready()
        resp = subscribe(c, "/topic/o", {"/topic/o": -2})
        assert resp.reply("/meta/subscribe")["successful"] is True
        pub.publish("/topic/o", 7)
        assert payloads(events(resp, "/topic/o") + drain(c, "/topic/o")) == [1, 2, 3, 4, 5, 6, 7]

        # -1 (and no entry for the channel): new events only.
        for replay in ({"/topic/o": -1}, {"/topic/other": 5}, None):
            d = Browser(server).ready()
            assert subscribe(d, "/topic/o", replay).reply("/meta/subscribe")["successful"]
            assert drain(d, "/topic/o") == []
            pub.publish("/topic/o", "live")
            assert payloads(drain(d, "/topic/o")) == ["live"]

        # The newest replayId: nothing missed.
        top = ids(published(server, "/topic/o", "last"))[0]
        e = Browser(server).ready()
        assert subscribe(e, "/topic/o", {"/topic/o": top}).reply("/meta/subscribe")["successful"]
        assert drain(e, "/topic/o") == []
        assert server.core.stats.replay_subscribes == 3


@pytest.mark.parametrize(
    "replay_id",
    ["123", 1.5, True, None, [1], {"id": 1}, -3, -100, 0, 10**30, "older", "future", "expired"],
)
def test_replay_ids_that_cannot_be_replayed_fail_the_subscribe(replay_id: Any) -> None:
    with running_server(**{**REPLAY, "history_size": 3}) as server:
        got = published(server, "/topic/bad", *range(6))  # 3 of 6 retained
        first, top = ids(got)[0], ids(got)[-1]
        replay_id = (
            {
                "older": first - 10**6,  # a stream from before (a restart)
                "future": top + 1,
                "expired": first + 1,  # 3 was dropped: 2 -> 3 cannot be replayed
            }.get(replay_id, replay_id)
            if type(replay_id) is str
            else replay_id
        )
        b = Browser(server).ready()
        reply = subscribe(b, "/topic/bad", {"/topic/bad": replay_id}).reply("/meta/subscribe")
        assert reply["successful"] is False
        assert INVALID.match(reply["error"]), reply["error"]
        assert reply["subscription"] == "/topic/bad"
        assert server.core.stats.replay_refused == 1
        # Not subscribed: nothing comes.
        Browser(server).ready().publish("/topic/bad", "x")
        assert drain(b, "/topic/bad") == []
        # The one before the oldest retained (4, 5, "x" now): all retained.
        resp = subscribe(b, "/topic/bad", {"/topic/bad": first + 3})
        assert payloads(events(resp, "/topic/bad") + drain(b, "/topic/bad")) == [4, 5, "x"]


def test_not_a_replay_channel_not_a_map_too_many_and_wildcards() -> None:
    options = {**REPLAY, "replay_channels": "/topic/*", "history_channels": "/h/*"}
    with running_server(**options, max_queue=3) as server:
        published(server, "/topic/q", *range(5))
        b = Browser(server).ready()
        for channel in ("/plain", "/h/x", "/topic/*"):  # history is not replay
            for replay_id in (-2, 42):
                reply = subscribe(b, channel, {channel: replay_id}).reply("/meta/subscribe")
                assert reply["successful"] is False
                assert reply["error"] == (
                    f"400::The channel {{{channel}}} keeps no replay history.  "
                    "Please provide -1 to receive only new events."
                )
            assert subscribe(b, channel, {channel: -1}).reply("/meta/subscribe")["successful"]
        for bad in (True, [1], "x", 5):
            reply = subscribe(b, "/topic/q", bad).reply("/meta/subscribe")
            assert reply["successful"] is False
            assert reply["error"] == "400::ext.replay must map channels to replayIds"
        reply = subscribe(b, "/topic/q", {"/topic/q": -2}).reply("/meta/subscribe")
        assert reply["successful"] is False and reply["error"].startswith("409::")
        assert "5 events to replay, at most 3 may be queued" in reply["error"]
        # Subscribed already: its events never stopped, nothing replayed.
        assert subscribe(b, "/topic/q").reply("/meta/subscribe")["successful"]
        resp = subscribe(b, "/topic/q", {"/topic/q": -2})
        assert resp.reply("/meta/subscribe")["successful"] is True
        assert events(resp, "/topic/q") == [] and drain(b, "/topic/q") == []


def test_replayed_events_come_before_one_published_on_subscription() -> None:
    """A subscribe listener that publishes (a welcome message): the missed
    events first, then it, each once."""

    def setup(server: BayeuxServer) -> None:
        @server.on_subscribe("/topic/w")
        def welcome(session: Any, channel: str) -> None:
            server.publish(channel, "welcome")

    with running_server(setup=setup, **REPLAY) as server:
        pub = Browser(server).ready()
        pub.publish("/topic/w", 1)
        pub.publish("/topic/w", 2)
        b = Browser(server).ready()
        resp = subscribe(b, "/topic/w", {"/topic/w": -2})
        got = events(resp, "/topic/w") + drain(b, "/topic/w")
        assert payloads(got) == [1, 2, "welcome"]
        assert ids(got) == [ids(got)[0] + n for n in range(3)]


def test_replay_subscribes_from_no_session() -> None:
    with running_server(**REPLAY) as server:
        b = Browser(server).ready()
        for client_id in ("nope", ["x"], None, 5):
            message = {
                "channel": "/meta/subscribe",
                "clientId": client_id,
                "subscription": "/topic/a",
                "ext": {"replay": {"/topic/a": -2}},
            }
            reply = b.send([message]).reply("/meta/subscribe")
            assert reply["successful"] is False and reply["error"].startswith("402::")


def test_replay_ids_do_not_repeat_across_streams() -> None:
    """A stream made again (a restart, an eviction) starts above every
    replayId of the one before: an old replayId is invalid, never replayed
    from the wrong place."""
    wall = [1_700_000_000.0]
    history = History(Options(history_max_channels=1), Counters(), _log(), wall=lambda: wall[0])
    a = history._stream("/a")
    assert a.base == 1_700_000_000_000_000
    for _ in range(5000):  # more than 1000 in one millisecond
        history.keep("/a", a, b"x")
    history._stream("/b")  # evicts /a (history_max_channels=1)
    again = history._stream("/a")
    assert again is not a and again.base > a.base + a.top
    # After a restart (a later wall clock): above the old stream's ids.
    restarted = History(Options(), Counters(), _log(), wall=lambda: wall[0] + 60)
    assert restarted._stream("/a").base > a.base + a.top


def test_replay_options_and_api() -> None:
    for bad in ("/meta/**", "/service/x", "no-slash"):
        with pytest.raises(ValueError, match="replay_channels"):
            ServerOptions(replay_channels=bad)
    with pytest.raises(ValueError, match="with a broker"):
        ServerOptions(replay_channels="/topic/**", broker="redis://127.0.0.1:1/0")
    server = BayeuxServer(ServerOptions())
    with pytest.raises(ValueError, match="cannot replay"):
        server.replay("/meta/connect")

    def setup(server: BayeuxServer) -> None:
        server.replay("/event/**")

    with running_server(setup=setup, timeout=1500) as server:
        assert server.core.history.keeps("/event/x")  # replay implies history
        got = published(server, "/event/x", {"a": 1})
        assert got[0]["data"]["payload"] == {"a": 1} and "ext" in got[0]
        assert got[0]["ext"]["position"]["offset"] == 1  # the history position too


def _log() -> Any:
    import logging

    return logging.getLogger("test_replay")
