"""The application API: services, listeners, extensions, server-side publish,
local sessions, and the timesync extension."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from harness import running_server
from support import Browser

from engine import BayeuxServer, Extension, Session, TimesyncExtension


@contextmanager
def app(setup: Any, **options: Any) -> Iterator[BayeuxServer]:
    """A running server whose registrations `setup(server)` made before start."""
    options.setdefault("timeout", 1500)
    with running_server(setup=setup, **options) as server:
        yield server


def on_loop(server: BayeuxServer, fn: Any, *args: Any) -> Any:
    """Run `fn(*args)` on the server's loop thread and return its result."""

    async def call() -> Any:
        return fn(*args)

    return asyncio.run_coroutine_threadsafe(call(), server.core.loop).result(5)


# ------------------------------------------------------------------ services


def test_sync_service_answers_the_caller() -> None:
    def setup(server: BayeuxServer) -> None:
        @server.service("/service/echo")
        def echo(session: Session, message: dict[str, Any]) -> Any:
            return {"echo": message["data"], "from": session.id}

    with app(setup) as server:
        b = Browser(server).ready()
        every = Browser(server).ready()
        every.subscribe("/**")
        resp = b.publish("/service/echo", "hi")
        reply = resp.reply("/service/echo")
        assert reply["successful"] is True and "data" not in reply
        # The answer: same id and channel, successful, with data (remoteCall's shape).
        answer = [m for m in resp.messages if "data" in m]
        assert answer == [
            {
                "channel": "/service/echo",
                "successful": True,
                "id": reply["id"],
                "data": {"echo": "hi", "from": b.client_id},
            }
        ]
        assert every.connect(advice={"timeout": 0}).events() == []


def test_async_service_answer_wakes_the_held_connect() -> None:
    def setup(server: BayeuxServer) -> None:
        @server.service("/service/slow")
        async def slow(session: Session, message: dict[str, Any]) -> Any:
            await asyncio.sleep(0.2)
            return message["data"] * 2

    with app(setup) as server:
        b = Browser(server).ready()
        b.start_connect()
        time.sleep(0.05)
        assert b.publish("/service/slow", 21).reply("/service/slow")["successful"]
        resp = b.finish_connect()
        assert resp.took < 1
        assert [m["data"] for m in resp.messages if "data" in m] == [42]


def test_service_that_raises_fails_only_its_caller(caplog: pytest.LogCaptureFixture) -> None:
    def setup(server: BayeuxServer) -> None:
        @server.service("/service/broken")
        def broken(session: Session, message: dict[str, Any]) -> Any:
            raise RuntimeError("boom")

        @server.service("/service/broken_async")
        async def broken_async(session: Session, message: dict[str, Any]) -> Any:
            raise RuntimeError("async boom")

    with app(setup) as server:
        b = Browser(server).ready()
        reply = b.publish("/service/broken", 1).reply("/service/broken")
        assert reply["successful"] is False
        assert reply["error"] == "500::service_failed"
        assert b.publish("/service/broken_async", 1).reply("/service/broken_async")["successful"]
        failure = b.connect(advice={"timeout": 0})
        assert [m.get("error") for m in failure.messages if m["channel"] != "/meta/connect"] == [
            "500::service_failed"
        ]
        assert sum("service /service/broken raised" in r.message for r in caplog.records) == 1
        # The server and other clients go on.
        other = Browser(server).ready()
        assert other.subscribe("/x").reply("/meta/subscribe")["successful"]
        assert server.core.stats.service_failures == 2


def test_service_registration_checks_the_channel() -> None:
    server = BayeuxServer()
    with pytest.raises(ValueError):
        server.service("/chat")(lambda s, m: None)
    with pytest.raises(ValueError):
        server.service("/service//x")(lambda s, m: None)


# ----------------------------------------------------------------- listeners


def test_publish_listener_can_delete() -> None:
    seen: list[str] = []

    def setup(server: BayeuxServer) -> None:
        @server.on_publish("/chat/**")
        def moderate(session: Session | None, channel: str, message: dict[str, Any]) -> bool:
            seen.append(channel)
            return "spam" not in str(message["data"])

    with app(setup) as server:
        sub = Browser(server).ready()
        sub.subscribe("/chat/*")
        p = Browser(server).ready()
        assert p.publish("/chat/a", "hello").reply("/chat/a")["successful"]
        refused = p.publish("/chat/a", "spam!").reply("/chat/a")
        assert refused["error"] == "404::message_deleted"
        assert [e["data"] for e in sub.connect(advice={"timeout": 0}).events()] == ["hello"]
        assert seen == ["/chat/a", "/chat/a"]


def test_subscription_and_session_listeners() -> None:
    events: list[tuple[str, ...]] = []

    def setup(server: BayeuxServer) -> None:
        @server.on_subscribe("/room/**")
        def joined(session: Session, channel: str) -> None:
            events.append(("subscribe", channel))

        @server.on_unsubscribe("/room/**")
        def left(session: Session, channel: str) -> None:
            events.append(("unsubscribe", channel))

        server.on_session_added(lambda s: events.append(("added",)))
        server.on_session_removed(lambda s, timeout: events.append(("removed", str(timeout))))

    with app(setup, max_interval=500) as server:
        a = Browser(server).ready()
        a.subscribe(["/room/1", "/room/*", "/other"])
        a.unsubscribe("/room/1")
        a.send([a.message("/meta/disconnect")])
        Browser(server).ready()  # expires: no connect after the first
        time.sleep(1.6)
    assert events == [
        ("added",),
        ("subscribe", "/room/1"),
        ("subscribe", "/room/*"),
        ("unsubscribe", "/room/1"),
        ("removed", "False"),
        ("added",),
        ("removed", "True"),
    ]


# ---------------------------------------------------------------- extensions


class Stamp(Extension):
    """Adds ext.stamp to incoming publishes and to outgoing replies."""

    def incoming(self, session: Session | None, message: dict[str, Any]) -> bool:
        if message.get("channel") == "/deleted":
            return False
        if "data" in message:
            message.setdefault("ext", {})["stamp"] = "in"
        return True

    def outgoing(
        self, session: Session | None, message: dict[str, Any], request: dict[str, Any] | None
    ) -> bool:
        if request is not None:
            message.setdefault("ext", {})["reply_to"] = request.get("channel")
        return True


def test_server_extension_incoming_and_outgoing() -> None:
    with app(lambda s: s.add_extension(Stamp())) as server:
        sub = Browser(server).ready()
        sub.subscribe("/stamped")
        p = Browser(server).ready()
        reply = p.publish("/stamped", 1).reply("/stamped")
        assert reply["ext"] == {"reply_to": "/stamped"}
        (event,) = sub.connect(advice={"timeout": 0}).events()
        assert event["ext"] == {"stamp": "in"}
        deleted = p.publish("/deleted", 1).reply("/deleted")
        assert deleted["error"] == "404::message_deleted"
        # Held connect replies go through outgoing extensions too.
        held = sub.connect(advice={"timeout": 300}).reply("/meta/connect")
        assert held["ext"] == {"reply_to": "/meta/connect"}


class Broken(Extension):
    def __init__(self, result: Any) -> None:
        self.result = result

    def incoming(self, session: Session | None, message: dict[str, Any]) -> bool:
        if message.get("channel") == "/bad":
            if isinstance(self.result, Exception):
                raise self.result
            return self.result  # type: ignore[no-any-return]
        return True


@pytest.mark.parametrize("result", [RuntimeError("ext boom"), "garbage"])
def test_extension_that_raises_or_returns_garbage(result: Any) -> None:
    with app(lambda s: s.add_extension(Broken(result))) as server:
        b = Browser(server).ready()
        reply = b.publish("/bad", 1).reply("/bad")
        assert reply["error"] == "500::extension_failed"
        assert b.publish("/good", 1).reply("/good")["successful"] is True
        assert server.core.stats.extension_failures == 1


class Censor(Extension):
    """A per-session outgoing extension: changes deliveries for one session."""

    def outgoing(
        self, session: Session | None, message: dict[str, Any], request: dict[str, Any] | None
    ) -> bool:
        if request is None and "data" in message:
            message["data"] = "***"
        return True


def test_session_extension_changes_one_session_only() -> None:
    with app(lambda s: None) as server:
        censored = Browser(server).ready()
        plain = Browser(server).ready()
        for b in (censored, plain):
            b.subscribe("/news")
        session = server.core.sessions[censored.client_id]  # type: ignore[index]
        on_loop(server, server.add_session_extension, session, Censor())
        Browser(server).ready().publish("/news", "secret")
        assert [e["data"] for e in censored.connect(advice={"timeout": 0}).events()] == ["***"]
        assert [e["data"] for e in plain.connect(advice={"timeout": 0}).events()] == ["secret"]


def test_timesync_extension() -> None:
    with app(lambda s: s.add_extension(TimesyncExtension())) as server:
        b = Browser(server)
        tc = int(time.time() * 1000)
        reply = b.handshake(ext={"timesync": {"tc": tc, "l": 0, "o": 0}}).reply("/meta/handshake")
        sync = reply["ext"]["timesync"]
        assert sync["tc"] == tc
        assert all(isinstance(sync[k], int) for k in ("ts", "p", "a"))
        # Old clients send tc only: tc, ts and p come back.
        connect = b.connect(ext={"timesync": {"tc": tc}}).reply("/meta/connect")
        assert set(connect["ext"]["timesync"]) == {"tc", "ts", "p"}


# ------------------------------------------------- server publish and locals


def test_server_publish_and_deliver_to_one_session() -> None:
    with app(lambda s: None) as server:
        a, b = Browser(server).ready(), Browser(server).ready()
        a.subscribe("/stocks/*")
        b.subscribe("/stocks/*")
        assert on_loop(server, server.publish, "/stocks/AAPL", {"price": 1}) == 2
        assert on_loop(server, server.deliver, a.client_id, "/private", "for a") is True
        assert on_loop(server, server.deliver, "gone", "/private", "x") is False
        with pytest.raises(ValueError):
            on_loop(server, server.publish, "/service/x", 1)
        assert a.connect(advice={"timeout": 0}).events() == [
            {"channel": "/stocks/AAPL", "data": {"price": 1}},
            {"channel": "/private", "data": "for a"},
        ]
        assert b.connect(advice={"timeout": 0}).events() == [
            {"channel": "/stocks/AAPL", "data": {"price": 1}}
        ]


def test_local_session_subscribes_and_publishes() -> None:
    with app(lambda s: None) as server:
        received: list[dict[str, Any]] = []
        local = on_loop(server, server.local_session)
        on_loop(server, local.subscribe, "/chat/**", received.append)
        remote = Browser(server).ready()
        remote.subscribe("/chat/room")
        own = remote.publish("/chat/room", "from remote").events()  # piggy-backed
        assert [e["data"] for e in own] == ["from remote"]
        on_loop(server, local.publish, "/chat/room", "from local")
        time.sleep(0.1)
        assert [m["data"] for m in received] == ["from remote", "from local"]
        events = [e["data"] for e in remote.connect(advice={"timeout": 0}).events()]
        assert events == ["from local"]
        on_loop(server, local.unsubscribe, "/chat/**")
        remote.publish("/chat/room", "after")
        time.sleep(0.1)
        assert len(received) == 2


# ------------------------------------------------------ lazy and flood policy


def test_lazy_channel_waits_for_the_next_reply_or_the_lazy_timeout() -> None:
    with app(lambda s: s.lazy_channel("/ticks/**"), timeout=3000, max_lazy_timeout=800) as server:
        b = Browser(server).ready()
        b.subscribe(["/ticks/a", "/alerts"])
        p = Browser(server).ready()
        b.start_connect()
        time.sleep(0.05)
        p.publish("/ticks/a", 1)
        # Not woken by the lazy message: it leaves after max_lazy_timeout.
        resp = b.finish_connect()
        assert 0.6 < resp.took < 1.6
        assert [e["data"] for e in resp.events()] == [1]
        # A non-lazy message takes queued lazy ones along at once.
        b.start_connect()
        time.sleep(0.05)
        p.publish("/ticks/a", 2)
        p.publish("/alerts", "now")
        resp = b.finish_connect()
        assert resp.took < 0.5
        assert [e["data"] for e in resp.events()] == [2, "now"]
        # A server publish can be lazy on its own.
        b.start_connect()
        time.sleep(0.05)
        on_loop(server, lambda: server.publish("/alerts", "later", lazy=True))
        resp = b.finish_connect()
        assert resp.took > 0.6 and [e["data"] for e in resp.events()] == ["later"]


def test_publish_rate_limit() -> None:
    with app(lambda s: None, max_publish_rate=5) as server:
        fast = Browser(server).ready()
        sub = Browser(server).ready()
        sub.subscribe("/flood")
        replies = [fast.publish("/flood", i).reply("/flood") for i in range(8)]
        refused = [r for r in replies if not r["successful"]]
        assert refused and all(r["error"] == "429::publish_rate_exceeded" for r in refused)
        assert len(replies) - len(refused) >= 5
        assert server.core.stats.publish_rate_exceeded == len(refused)
        # Other clients are not limited by this one, and the bucket refills.
        assert Browser(server).ready().publish("/flood", "x").reply("/flood")["successful"]
        time.sleep(0.5)
        assert fast.publish("/flood", "again").reply("/flood")["successful"]
