"""Presence in one process (engine.presence): members of a channel with the
info the policy attached, joins and leaves on every path out (unsubscribe,
disconnect, expiry), counts, the /service/presence query and its
authorization, the HTTP API route, companion-channel events, and a burst of
10,000 joins and leaves per second coalesced into bounded events."""

from __future__ import annotations

import asyncio
import http.client
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from harness import running_server
from support import Browser

from engine import BayeuxServer, SecurityPolicy, ServerOptions, Session

KEY = "presence-key"
ADMIN = "admin-secret"


class Users(SecurityPolicy):
    """The handshake's ext.user is the user; only alice may see /chat/private."""

    def can_handshake(self, session: Session, message: dict[str, Any]) -> bool:
        ext = message.get("ext") or {}
        user = ext.get("user")
        info: Any = {"name": f"{user}!"} if user else None
        if user == "odd":
            info = object()  # not JSON: the member has no info, nothing breaks
        session.attributes = {"user": user, "presence": info}
        return True

    def can_subscribe(self, session: Session, channel: str, message: dict[str, Any]) -> bool:
        user = (session.attributes or {}).get("user")
        return not channel.startswith("/chat/private") or user == "alice"


@pytest.fixture
def server() -> Iterator[BayeuxServer]:
    def setup(server: BayeuxServer) -> None:
        server.policy = Users()
        server.presence("/team/*")  # (the Python API, besides presence_channels)

    with running_server(
        setup=setup,
        timeout=1000,
        presence_channels="/chat/**",
        api_key=KEY,
        admin_token=ADMIN,
        presence_event_rate=0,
    ) as server:
        yield server


def user(server: BayeuxServer, name: str | None = None, cookie: str | None = None) -> Browser:
    b = Browser(server, cookie)
    reply = b.handshake(ext={"user": name} if name else {}).reply("/meta/handshake")
    assert reply["successful"], reply
    return b


def on_loop(server: BayeuxServer, coroutine: Any) -> Any:
    return asyncio.run_coroutine_threadsafe(coroutine, server.core.loop).result(5)


def count(server: BayeuxServer, channel: str) -> int:
    return int(on_loop(server, server.presence_count(channel)))


def query(b: Browser, data: Any, **fields: Any) -> list[dict[str, Any]]:
    """The messages a /service/presence call brings back (reply and answer)."""
    messages = b.publish("/service/presence", data, **fields).messages

    def answered() -> bool:
        return any(
            m["channel"] == "/service/presence" and ("data" in m or "error" in m) for m in messages
        )

    for _ in range(3):  # (the first connect returns at once; a later one is held)
        if answered():
            break
        messages = messages + b.connect().messages
    return messages


def answer(messages: list[dict[str, Any]]) -> dict[str, Any]:
    found = [m for m in messages if m["channel"] == "/service/presence" and "data" in m]
    assert len(found) == 1, messages
    return found[0]


def api(server: BayeuxServer, path: str, key: str | None = KEY) -> tuple[int, Any]:
    host, port = server.address
    conn = http.client.HTTPConnection(host, port, timeout=5)
    conn.request("GET", "/api/" + path, headers={"X-API-Key": key} if key else {})
    resp = conn.getresponse()
    body = json.loads(resp.read())
    conn.close()
    return resp.status, body


# --------------------------------------------------------------- membership


def test_members_join_and_leave_on_unsubscribe_and_disconnect(server: BayeuxServer) -> None:
    alice, bob, anon = user(server, "alice"), user(server, "bob"), user(server)
    for b in (alice, bob, anon):
        assert b.subscribe("/chat/room").reply("/meta/subscribe")["successful"]
    assert bob.subscribe("/chat/*").reply("/meta/subscribe")["successful"]  # (no membership)
    assert bob.subscribe("/news").reply("/meta/subscribe")["successful"]  # (no presence)
    assert alice.subscribe("/team/a").reply("/meta/subscribe")["successful"]
    assert count(server, "/chat/room") == 3
    assert count(server, "/team/a") == 1
    result = on_loop(server, server.presence_of("/chat/room"))
    assert result["count"] == 3 and result["truncated"] is False
    members = {m["clientId"]: m for m in result["members"]}
    assert members[alice.client_id] == {
        "clientId": alice.client_id,
        "user": "alice",
        "info": {"name": "alice!"},
    }
    assert members[anon.client_id] == {"clientId": anon.client_id, "user": None, "info": None}
    odd = user(server, "odd")
    assert odd.subscribe("/chat/odd").reply("/meta/subscribe")["successful"]
    assert on_loop(server, server.presence_of("/chat/odd"))["members"] == [
        {"clientId": odd.client_id, "user": None, "info": None}
    ]
    with pytest.raises(ValueError, match="no presence"):
        on_loop(server, server.presence_count("/news"))
    with pytest.raises(ValueError, match="no wildcards"):
        on_loop(server, server.presence_count("/chat/*"))

    # Subscribing again is no second membership; unsubscribing leaves.
    assert alice.subscribe("/chat/room").reply("/meta/subscribe")["successful"]
    assert count(server, "/chat/room") == 3
    assert bob.unsubscribe("/chat/room").reply("/meta/unsubscribe")["successful"]
    assert count(server, "/chat/room") == 2
    # Disconnect: the session-removed path (no unsubscribe listener is called).
    alice.send([alice.message("/meta/disconnect")])
    assert count(server, "/chat/room") == 1
    assert count(server, "/team/a") == 0
    assert server.core.presence is not None
    assert alice.client_id not in server.core.presence.of_session
    stats = server.core.stats
    assert (stats.presence_joins, stats.presence_leaves) == (5, 3)


def test_members_leave_when_their_session_expires() -> None:
    with running_server(timeout=500, max_interval=300, presence_channels="/chat/**") as server:
        b = Browser(server).ready()
        assert b.subscribe("/chat/room").reply("/meta/subscribe")["successful"]
        assert count(server, "/chat/room") == 1
        deadline = time.monotonic() + 5
        while count(server, "/chat/room") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert count(server, "/chat/room") == 0
        assert server.core.stats.sessions_expired == 1
        assert server.core.presence is not None and not server.core.presence.of_session


def test_a_count_without_the_members(server: BayeuxServer) -> None:
    browsers = [user(server, f"u{i}") for i in range(30)]
    for b in browsers:
        assert b.subscribe("/chat/big").reply("/meta/subscribe")["successful"]
    result = on_loop(server, server.presence_of("/chat/big", members=False))
    assert result == {"channel": "/chat/big", "count": 30}
    result = on_loop(server, server.presence_of("/chat/big", limit=7))
    assert result["count"] == 30 and len(result["members"]) == 7 and result["truncated"]


# ------------------------------------------------------------------ queries


def test_the_presence_service_answers_authorized_sessions_only(server: BayeuxServer) -> None:
    alice, bob = user(server, "alice"), user(server, "bob")
    assert alice.subscribe("/chat/private").reply("/meta/subscribe")["successful"]
    assert not bob.subscribe("/chat/private").reply("/meta/subscribe")["successful"]

    messages = query(alice, {"channel": "/chat/private", "members": True})
    data = answer(messages)["data"]
    assert data["count"] == 1 and [m["user"] for m in data["members"]] == ["alice"]
    assert answer(query(alice, {"channel": "/chat/private"}))["data"] == {
        "channel": "/chat/private",
        "count": 1,
    }

    # Bob may not subscribe there: refused, and nothing of it leaks.
    messages = query(bob, {"channel": "/chat/private", "members": True})
    assert messages[0]["successful"] is False
    assert messages[0]["error"] == "403::service_denied"
    assert "alice" not in json.dumps(messages) and '"count"' not in json.dumps(messages)
    assert server.core.stats.presence_refused == 1

    # An admin (the admin token in ext) may.
    messages = query(bob, {"channel": "/chat/private", "members": True}, ext={"admin_token": ADMIN})
    assert answer(messages)["data"]["count"] == 1
    messages = query(bob, {"channel": "/chat/private"}, ext={"admin_token": "wrong"})
    assert messages[0]["error"] == "403::service_denied"

    # Bad questions: a failure answer naming the problem.
    for data, code in (
        ("nope", "400"),
        ({"channel": "/chat/*"}, "400"),
        ({"channel": "/news"}, "404"),
        ({"channel": "/chat/room", "limit": -1}, "400"),
    ):
        messages = query(bob, data)
        failures = [m for m in messages if m.get("successful") is False]
        assert failures and failures[0]["error"] == f"{code}::presence_query_invalid", messages


def test_the_http_api_route(server: BayeuxServer) -> None:
    browsers = [user(server, f"u{i}") for i in range(5)]
    for b in browsers:
        assert b.subscribe("/chat/room").reply("/meta/subscribe")["successful"]
    assert api(server, "presence/chat/room") == (
        200,
        {"result": {"channel": "/chat/room", "count": 5}},
    )
    status, body = api(server, "presence/chat/room?members=1&limit=2")
    assert status == 200
    result = body["result"]
    assert result["count"] == 5 and len(result["members"]) == 2 and result["truncated"] is True
    assert {m["user"] for m in result["members"]} <= {f"u{i}" for i in range(5)}
    status, body = api(server, "presence/chat/room?members=true&limit=5000")
    assert status == 200 and len(body["result"]["members"]) == 5
    assert not body["result"]["truncated"]

    assert api(server, "presence/chat/room", key=None)[0] == 401
    assert api(server, "presence/chat/room", key="wrong")[0] == 401
    assert api(server, "presence/news")[0] == 404
    assert api(server, "presence/chat/*")[0] == 400
    assert api(server, "presence/chat/room?limit=x")[0] == 400
    host, port = server.address
    conn = http.client.HTTPConnection(host, port, timeout=5)
    conn.request("POST", "/api/presence/chat/room", body=b"{}", headers={"X-API-Key": KEY})
    assert conn.getresponse().status == 405


# ------------------------------------------------------------------ events


def events(b: Browser, seconds: float) -> list[dict[str, Any]]:
    """Everything `b` receives within `seconds` (held connects)."""
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        got.extend(b.connect().events())
    return got


def test_join_and_leave_events_on_the_companion_channel(server: BayeuxServer) -> None:
    watcher = user(server, "watcher")
    assert watcher.connect(advice={"timeout": 0}).reply("/meta/connect")["successful"]
    assert watcher.subscribe("/presence/chat/room").reply("/meta/subscribe")["successful"]
    alice = user(server, "alice")
    assert alice.subscribe("/chat/room").reply("/meta/subscribe")["successful"]
    assert alice.unsubscribe("/chat/room").reply("/meta/unsubscribe")["successful"]
    assert alice.subscribe("/chat/room").reply("/meta/subscribe")["successful"]
    alice.send([alice.message("/meta/disconnect")])
    got = events(watcher, 1.5)
    assert [(e["channel"], e["data"]["action"]) for e in got] == [
        ("/presence/chat/room", a) for a in ("join", "leave", "join", "leave")
    ]
    assert got[0]["data"] == {
        "action": "join",
        "channel": "/chat/room",
        "clientId": alice.client_id,
        "user": "alice",
        "info": {"name": "alice!"},
    }


def test_companion_channels_need_the_right_to_the_channel(server: BayeuxServer) -> None:
    bob, alice = user(server, "bob"), user(server, "alice")
    reply = bob.subscribe("/presence/chat/private").reply("/meta/subscribe")
    assert reply["successful"] is False and "subscribe_denied" in reply["error"]
    reply = bob.subscribe("/presence/chat/private/**").reply("/meta/subscribe")
    assert reply["successful"] is False
    assert alice.subscribe("/presence/chat/private").reply("/meta/subscribe")["successful"]
    assert bob.subscribe("/presence/chat/room").reply("/meta/subscribe")["successful"]


def test_a_burst_of_joins_and_leaves_is_coalesced() -> None:
    """10,000 joins and leaves in about a second on one channel: the events
    stay within presence_event_rate, the rest is counted and replaced by
    sync messages carrying the exact count."""
    rate = 50
    with running_server(
        timeout=1000,
        presence_channels="/chat/**",
        presence_event_rate=rate,
        max_message_size=1 << 20,
    ) as server:
        watcher = Browser(server).ready()
        assert watcher.subscribe("/presence/chat/hot").reply("/meta/subscribe")["successful"]
        first = Browser(server)
        first.handshake()
        browsers = [first] + [Browser(server, first.cookie) for _ in range(99)]
        for b in browsers[1:]:
            assert b.handshake().reply("/meta/handshake")["successful"]
        started = time.monotonic()
        for _ in range(10):  # 10 x 1,000 operations
            batch = []
            for i in range(1000):
                b = browsers[i % 100]
                kind = "/meta/subscribe" if (i // 100) % 2 == 0 else "/meta/unsubscribe"
                batch.append(b.message(kind, subscription="/chat/hot"))
            replies = first.send(batch).messages
            assert len(replies) == 1000 and all(r["successful"] for r in replies)
        # The end state: 37 members.
        batch = [b.message("/meta/subscribe", subscription="/chat/hot") for b in browsers[:37]]
        assert all(r["successful"] for r in first.send(batch).messages)
        elapsed = time.monotonic() - started
        got = events(watcher, 2.5)
        total = time.monotonic() - started
        assert elapsed < 5, elapsed  # (about 10,000/s here; the bound holds at any rate)
        stats = server.core.stats
        assert stats.presence_joins == 5037 and stats.presence_leaves == 5000
        joins_leaves = [e for e in got if e["data"]["action"] in ("join", "leave")]
        syncs = [e["data"] for e in got if e["data"]["action"] == "sync"]
        assert len(joins_leaves) <= rate * total + rate  # the bucket: rate/s, burst = rate
        assert len(joins_leaves) + stats.presence_events_coalesced == 10037
        assert syncs and syncs[-1] == {"action": "sync", "channel": "/chat/hot", "count": 37}
        assert len(syncs) <= total / 1.0 + 1  # (one per second at most)
        assert stats.presence_syncs == len(syncs)
        assert count(server, "/chat/hot") == 37


def test_presence_options_are_checked() -> None:
    for bad, text in (
        ({"presence_ttl": 100}, "presence_ttl"),
        ({"presence_event_rate": -1}, "presence_event_rate"),
        ({"presence_prefix": "presence"}, "presence_prefix"),
        ({"presence_prefix": "/service/p"}, "presence_prefix"),
        ({"presence_prefix": "/p/*"}, "presence_prefix"),
    ):
        with pytest.raises(ValueError, match=text):
            ServerOptions(**bad)
    server = BayeuxServer(ServerOptions(port=0, presence_channels="/presence/x"))
    with pytest.raises(ValueError, match="presence events prefix"):
        asyncio.run(server.start())
    with pytest.raises(ValueError, match="broadcast channel"):
        BayeuxServer().presence("/service/x")


class AsyncUsers(Users):
    """As Users, with the subscribe decision awaited (a backend's, say)."""

    async def can_subscribe(  # type: ignore[override]
        self, session: Session, channel: str, message: dict[str, Any]
    ) -> bool:
        await asyncio.sleep(0.01)
        return Users.can_subscribe(self, session, channel, message)


def test_an_async_policy_decides_queries_and_companion_channels() -> None:
    def setup(server: BayeuxServer) -> None:
        server.policy = AsyncUsers()

    with running_server(setup=setup, timeout=1000, presence_channels="/chat/**") as server:
        alice, bob = user(server, "alice"), user(server, "bob")
        assert alice.subscribe("/chat/private").reply("/meta/subscribe")["successful"]
        reply = bob.subscribe("/presence/chat/private").reply("/meta/subscribe")
        assert reply["successful"] is False and "subscribe_denied" in reply["error"]
        assert alice.subscribe("/presence/chat/private").reply("/meta/subscribe")["successful"]

        # The decision is awaited: the answer (or the refusal) comes after the reply.
        messages = query(alice, {"channel": "/chat/private", "members": True})
        assert answer(messages)["data"]["count"] == 1
        messages = query(bob, {"channel": "/chat/private", "members": True})
        failures = [m for m in messages if m.get("successful") is False]
        assert [m["error"] for m in failures] == ["403::service_denied"], messages
        assert "alice" not in json.dumps(messages)
        assert server.core.stats.presence_refused == 1


def test_a_jwt_sub_is_the_member_user() -> None:
    import jwt

    secret = "presence-jwt-secret-of-32-bytes!"
    with running_server(timeout=1000, presence_channels="/chat/**", jwt_secret=secret) as server:
        b = Browser(server)
        token = jwt.encode({"sub": "carol", "exp": int(time.time()) + 60}, secret, "HS256")
        assert b.handshake(ext={"token": token}).reply("/meta/handshake")["successful"]
        assert b.subscribe("/chat/room").reply("/meta/subscribe")["successful"]
        result = on_loop(server, server.presence_of("/chat/room"))
        assert result["members"] == [{"clientId": b.client_id, "user": "carol", "info": None}]
