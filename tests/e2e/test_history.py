"""Channel history and recovery in one process: positions on every message,
recovery on /meta/subscribe over long-polling, WebSocket and JSONP, with no
gap and no duplicate at the seam, and an honest `recovered: false`."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from typing import Any

import pytest
from harness import running_server
from support import Browser
from test_callback_polling import JsonpClient
from ws_client import ready_client

from engine import BayeuxServer, ServerOptions

HISTORY = {"history_channels": "/h/**", "timeout": 1500, "max_interval": 5000}


def events(resp: Any, channel: str) -> list[dict[str, Any]]:
    return [m for m in resp.messages if m.get("channel") == channel and "data" in m]


def drain(b: Browser, channel: str) -> list[dict[str, Any]]:
    """Every event queued for `b` on `channel` (one immediate connect)."""
    return events(b.connect(advice={"timeout": 0}), channel)


def recover_reply(resp: Any) -> dict[str, Any]:
    return resp.reply("/meta/subscribe")["ext"]["recover"]


def subscribe(b: Browser, subscription: Any, recover: dict[str, Any] | None = None) -> Any:
    fields: dict[str, Any] = {"subscription": subscription}
    if recover is not None:
        fields["ext"] = {"recover": recover}
    return b.send([b.message("/meta/subscribe", **fields)])


def test_positions_then_recovery_after_a_rehandshake() -> None:
    with running_server(**HISTORY) as server:
        sub = Browser(server).ready()
        first = recover_reply(subscribe(sub, "/h/room"))["/h/room"]
        assert first == {"epoch": first["epoch"], "offset": 0}
        pub = Browser(server).ready()
        for n in range(1, 6):
            assert pub.publish("/h/room", n).reply("/h/room")["successful"]
        got = drain(sub, "/h/room")
        assert [m["data"] for m in got] == [1, 2, 3, 4, 5]
        positions = [m["ext"]["position"] for m in got]
        assert positions == [{"epoch": first["epoch"], "offset": n} for n in range(1, 6)]

        # The client saw up to 3, then its session went away; 6..8 are
        # published while it is gone.
        sub.send([sub.message("/meta/disconnect")])
        for n in range(6, 9):
            pub.publish("/h/room", n)
        again = Browser(server).ready()
        resp = subscribe(again, "/h/room", {"/h/room": positions[2]})
        answer = recover_reply(resp)["/h/room"]
        assert answer == {"epoch": first["epoch"], "offset": 8, "recovered": True, "missed": 5}
        # The missed ones, then live ones: in order, none twice.
        recovered = events(resp, "/h/room") + drain(again, "/h/room")
        pub.publish("/h/room", 9)
        live = drain(again, "/h/room")
        assert [m["data"] for m in recovered + live] == [4, 5, 6, 7, 8, 9]
        assert [m["ext"]["position"]["offset"] for m in recovered + live] == [4, 5, 6, 7, 8, 9]
        stats = server.core.stats
        assert stats.history_recovered == 1 and stats.history_replayed == 5


def test_recovery_over_websocket_and_jsonp() -> None:
    with running_server(**HISTORY) as server:
        pub = Browser(server).ready()
        epoch = recover_reply(subscribe(pub, "/h/ws"))["/h/ws"]["epoch"]
        for n in range(1, 4):
            pub.publish("/h/ws", n)

        async def over_websocket() -> list[Any]:
            client = await ready_client(server)
            message = client.message(
                "/meta/subscribe",
                subscription="/h/ws",
                ext={"recover": {"/h/ws": {"epoch": epoch, "offset": 1}}},
            )
            reply = await client.request(message)
            assert reply["ext"]["recover"]["/h/ws"]["recovered"] is True
            got = [await client.event("/h/ws") for _ in range(2)]
            await client.close()
            return [m["data"] for m in got]

        assert asyncio.run(over_websocket()) == [2, 3]

        jsonp = JsonpClient(server)
        jsonp.handshake()
        jsonp.connect()
        resp = jsonp.send(
            [
                jsonp.message(
                    "/meta/subscribe",
                    subscription="/h/ws",
                    ext={"recover": {"/h/ws": {"epoch": epoch, "offset": 0}}},
                )
            ]
        )
        assert resp.reply("/meta/subscribe")["ext"]["recover"]["/h/ws"]["missed"] == 3
        got = [m["data"] for m in jsonp.connect().events() if m["channel"] == "/h/ws"]
        assert got == [1, 2, 3]


@pytest.mark.parametrize(
    ("position", "reason"),
    [
        ({"epoch": "00000000", "offset": 1}, "epoch_changed"),
        ({"epoch": None, "offset": 1}, "invalid_position"),
        ({"offset": 1}, "invalid_position"),
        ("3", "invalid_position"),
        ({"epoch": "E", "offset": -1}, "invalid_position"),
        ({"epoch": "E", "offset": 1.5}, "invalid_position"),
        ({"epoch": "E", "offset": True}, "invalid_position"),
        ({"epoch": "E", "offset": "2"}, "invalid_position"),
        ({"epoch": "E", "offset": 10**30}, "invalid_position"),
        ({"epoch": "E" * 1000, "offset": 1}, "invalid_position"),
        ({"epoch": "E", "offset": 99}, "future_offset"),
    ],
)
def test_bad_positions_are_answered_not_recovered(position: Any, reason: str) -> None:
    with running_server(**HISTORY) as server:
        pub = Browser(server).ready()
        epoch = recover_reply(subscribe(pub, "/h/bad"))["/h/bad"]["epoch"]
        for n in range(3):
            pub.publish("/h/bad", n)
        if type(position) is dict and position.get("epoch") == "E":
            position = {**position, "epoch": epoch}
        b = Browser(server).ready()
        resp = subscribe(b, "/h/bad", {"/h/bad": position})
        assert resp.reply("/meta/subscribe")["successful"] is True  # live from now on
        answer = recover_reply(resp)["/h/bad"]
        assert answer["recovered"] is False and answer["reason"] == reason
        assert answer["epoch"] == epoch and answer["offset"] == 3  # where to start from
        assert events(resp, "/h/bad") == [] and drain(b, "/h/bad") == []  # nothing invented
        pub.publish("/h/bad", "live")
        assert [m["data"] for m in drain(b, "/h/bad")] == ["live"]


def test_expired_and_too_many_and_flooded() -> None:
    options = {**HISTORY, "history_size": 5, "max_queue": 3, "history_ttl": 300}
    with running_server(**options) as server:
        pub = Browser(server).ready()
        epoch = recover_reply(subscribe(pub, "/h/f"))["/h/f"]["epoch"]
        for n in range(1, 21):  # 20 into a history of 5: 15 dropped, counted
            pub.publish("/h/f", n)
        stats = server.core.stats
        assert stats.history_dropped == 15 and stats.history_kept == 20
        b = Browser(server).ready()
        resp = subscribe(b, "/h/f", {"/h/f": {"epoch": epoch, "offset": 10}})
        assert recover_reply(resp)["/h/f"]["reason"] == "expired"
        c = Browser(server).ready()
        resp = subscribe(c, "/h/f", {"/h/f": {"epoch": epoch, "offset": 16}})  # 4 > max_queue
        assert recover_reply(resp)["/h/f"]["reason"] == "too_many"
        d = Browser(server).ready()
        resp = subscribe(d, "/h/f", {"/h/f": {"epoch": epoch, "offset": 17}})
        assert recover_reply(resp)["/h/f"]["missed"] == 3
        time.sleep(0.4)  # past history_ttl: kept messages expire
        e = Browser(server).ready()
        resp = subscribe(e, "/h/f", {"/h/f": {"epoch": epoch, "offset": 19}})
        assert recover_reply(resp)["/h/f"]["reason"] == "expired"
        f = Browser(server).ready()  # at the top: nothing missed, even expired
        resp = subscribe(f, "/h/f", {"/h/f": {"epoch": epoch, "offset": 20}})
        assert recover_reply(resp)["/h/f"] == {
            "epoch": epoch,
            "offset": 20,
            "recovered": True,
            "missed": 0,
        }


def test_wildcards_other_channels_and_already_subscribed() -> None:
    with running_server(**{**HISTORY, "history_channels": "/h/**,/x"}) as server:
        pub = Browser(server).ready()
        for channel in ("/h/a", "/h/b", "/x", "/plain"):
            subscribe(pub, channel)
            pub.publish(channel, 1)
            pub.publish(channel, 2)
        epochs = {c: server.core.history.streams[c].epoch for c in ("/h/a", "/h/b", "/x")}
        b = Browser(server).ready()
        resp = subscribe(
            b,
            "/h/*",
            {
                "/h/a": {"epoch": epochs["/h/a"], "offset": 1},
                "/h/b": {"epoch": epochs["/h/b"], "offset": 0},
                "/x": {"epoch": epochs["/x"], "offset": 0},  # not this subscribe's
                "/plain": {"epoch": "e", "offset": 0},  # no history
                "not a channel": {"epoch": "e", "offset": 0},  # nothing to answer under
            },
        )
        answers = recover_reply(resp)
        assert answers["/h/a"]["missed"] == 1 and answers["/h/b"]["missed"] == 2
        assert answers["/x"]["reason"] == "not_subscribed"
        assert answers["/plain"] == {"recovered": False, "reason": "no_history"}
        assert "not a channel" not in answers
        got = events(resp, "/h/a") + events(resp, "/h/b") + drain(b, "/h/a") + drain(b, "/h/b")
        assert sorted((m["channel"], m["data"]) for m in got) == [
            ("/h/a", 2),
            ("/h/b", 1),
            ("/h/b", 2),
        ]
        # Subscribed already (through /h/*): its messages kept coming, no replay.
        resp = subscribe(b, "/h/a", {"/h/a": {"epoch": epochs["/h/a"], "offset": 0}})
        assert recover_reply(resp)["/h/a"]["reason"] == "already_subscribed"
        assert events(resp, "/h/a") == [] and drain(b, "/h/a") == []
        # Non-history messages carry no position.
        c = Browser(server).ready()
        subscribe(c, "/plain")
        pub.publish("/plain", 3)
        plain = drain(c, "/plain")
        assert [m["data"] for m in plain] == [3] and "ext" not in plain[0]


def test_server_and_api_publishes_are_kept_and_a_forged_position_is_replaced() -> None:
    def setup(server: BayeuxServer) -> None:
        server.history("/app/**")

    with running_server(setup=setup, timeout=1500, api_key="k3y") as server:
        b = Browser(server).ready()
        epoch = recover_reply(subscribe(b, "/app/x"))["/app/x"]["epoch"]
        server.core.loop.call_soon_threadsafe(server.publish, "/app/x", "from the server")
        time.sleep(0.2)
        forged = {"position": {"epoch": "bad", "offset": 999}, "app": 1}
        got = events(b.publish("/app/x", "forged", ext=forged), "/app/x")
        request = urllib.request.Request(
            server.url.replace("/cometd", "/api/publish"),
            data=json.dumps({"channel": "/app/x", "data": "from the API"}).encode(),
            headers={"X-API-Key": "k3y", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as resp:
            assert resp.status == 200
        got += drain(b, "/app/x")
        assert [m["data"] for m in got] == ["from the server", "forged", "from the API"]
        assert [m["ext"]["position"] for m in got] == [
            {"epoch": epoch, "offset": n} for n in (1, 2, 3)
        ]
        assert got[1]["ext"]["app"] == 1  # the publisher's own ext is kept


def test_history_options_are_validated() -> None:
    for bad in ("/meta/**", "/service/x", "no-slash", "/a/**/b"):
        with pytest.raises(ValueError, match="history_channels"):
            ServerOptions(history_channels=bad)
    with pytest.raises(ValueError, match="history_size"):
        ServerOptions(history_size=0)
