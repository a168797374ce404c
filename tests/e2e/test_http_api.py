"""The server HTTP API (engine.http_api): publish, broadcast, deliver, disconnect,
channels and sessions, every bad request refused with nothing delivered."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from harness import running_server
from support import Browser

from engine import BayeuxServer, SecurityPolicy, Session

KEY = "k3y-for-tests"


class Api:
    def __init__(self, server: BayeuxServer, key: str | None = KEY) -> None:
        host, port = server.address
        self.conn = http.client.HTTPConnection(host, port, timeout=10)
        self.key = key

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> tuple[int, Any]:
        sent = {"Content-Type": "application/json", **(headers or {})}
        if self.key is not None and headers is None:
            sent["Authorization"] = f"apikey {self.key}"
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        self.conn.request(method, "/api/" + path, body=data, headers=sent)
        resp = self.conn.getresponse()
        payload = resp.read()
        assert resp.getheader("Content-Type") == "application/json"
        return resp.status, json.loads(payload)

    def post(self, path: str, body: Any, **kw: Any) -> tuple[int, Any]:
        return self.call("POST", path, body, **kw)


class NoSecrets(SecurityPolicy):
    def can_publish(self, session: Session, channel: str, message: dict[str, Any]) -> bool:
        return not channel.startswith("/secret")


@pytest.fixture
def server() -> Iterator[BayeuxServer]:
    def setup(server: BayeuxServer) -> None:
        server.policy = NoSecrets()

    with running_server(setup=setup, api_key=KEY, timeout=1500) as server:
        yield server


def subscriber(server: BayeuxServer, *channels: str) -> Browser:
    browser = Browser(server).ready()
    for channel in channels:
        assert browser.subscribe(channel).reply("/meta/subscribe")["successful"]
    return browser


def events(browser: Browser) -> list[dict[str, Any]]:
    return browser.connect().events()


def test_publish_reaches_subscribers_through_the_client_path(server: BayeuxServer) -> None:
    seen: list[tuple[Any, str]] = []
    server.on_publish("/news/**")(lambda session, channel, message: seen.append((session, channel)))
    browser = subscriber(server, "/news/*")
    api = Api(server)
    status, body = api.post("publish", {"channel": "/news/a", "data": {"n": 1}, "ext": {"x": 1}})
    assert (status, body) == (200, {"result": {"channel": "/news/a"}})
    got = events(browser)
    assert [(e["channel"], e["data"], e.get("ext")) for e in got] == [
        ("/news/a", {"n": 1}, {"x": 1})
    ]
    # The listener saw it, made by the API's own session.
    assert [(s.transport, s.attributes, c) for s, c in seen] == [("api", {"api": True}, "/news/a")]
    assert server.core.stats.api_published == 1


def test_broadcast_and_idempotency(server: BayeuxServer) -> None:
    browser = subscriber(server, "/a", "/b")
    api = Api(server)
    body = {"channels": ["/a", "/b", "/a"], "data": 7, "idempotency_key": "op-1"}
    assert api.post("broadcast", body) == (200, {"result": {"channels": ["/a", "/b"]}})
    again = api.post("broadcast", body)
    assert again == (200, {"result": {"channels": ["/a", "/b"], "duplicate": True}})
    status, _ = api.post("publish", {"channel": "/a", "data": 8, "idempotency_key": "op-2"})
    assert status == 200
    assert api.post("publish", {"channel": "/a", "data": 8, "idempotency_key": "op-2"})[1][
        "result"
    ]["duplicate"]
    got = events(browser)
    assert sorted((e["channel"], e["data"]) for e in got) == [("/a", 7), ("/a", 8), ("/b", 7)]
    assert server.core.stats.api_duplicates == 2


def test_refused_publish_delivers_nothing_and_frees_its_key(server: BayeuxServer) -> None:
    browser = subscriber(server, "/secret/x", "/ok")
    api = Api(server)
    body = {"channels": ["/ok", "/secret/x"], "data": 1, "idempotency_key": "k"}
    status, answer = api.post("broadcast", body)
    assert status == 403 and "/secret/x" in answer["error"]["message"]
    assert answer["error"]["code"] == 403
    # Nothing went out, not even on the allowed channel; the key is free again.
    status, answer = api.post("publish", {"channel": "/ok", "data": 2, "idempotency_key": "k"})
    assert (status, answer) == (200, {"result": {"channel": "/ok"}})
    assert [(e["channel"], e["data"]) for e in events(browser)] == [("/ok", 2)]


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        ({}, "an API key is needed"),
        ({"Authorization": "apikey wrong"}, "wrong API key"),
        ({"X-API-Key": "wrong"}, "wrong API key"),
        ({"Authorization": f"Bearer {KEY}"}, "an API key is needed"),
        ({"X-API-Key": KEY + "x"}, "wrong API key"),
    ],
)
def test_a_missing_or_wrong_key_is_401(
    server: BayeuxServer, headers: dict[str, str], why: str
) -> None:
    browser = subscriber(server, "/a")
    api = Api(server)
    status, body = api.post("publish", {"channel": "/a", "data": 1}, headers=headers)
    assert status == 401 and why in body["error"]["message"]
    assert api.post("publish", {"channel": "/a", "data": 2}, headers={"X-API-Key": KEY})[0] == 200
    assert [e["data"] for e in events(browser)] == [2]


@pytest.mark.parametrize(
    ("path", "body", "status", "why"),
    [
        ("publish", b"{not json", 400, "not JSON"),
        ("publish", b"[1]", 400, "JSON object"),
        ("publish", {"channel": "/a/*", "data": 1}, 400, "no wildcards"),
        ("publish", {"channel": "/a/**", "data": 1}, 400, "no wildcards"),
        ("publish", {"channel": "/meta/connect", "data": 1}, 400, "meta channels"),
        ("publish", {"channel": "/meta/foo", "data": 1}, 400, "meta channels"),
        ("publish", {"channel": "/service/x", "data": 1}, 400, "service channels"),
        ("publish", {"channel": "nochannel", "data": 1}, 400, "not a channel"),
        ("publish", {"channel": 5, "data": 1}, 400, "must be a string"),
        ("publish", {"channel": "/a"}, 400, "data is missing"),
        ("publish", {"channel": "/a", "data": 1, "ext": 3}, 400, "ext must be an object"),
        ("publish", {"channel": "/a", "data": 1, "chanel": "/b"}, 400, "unknown fields"),
        ("publish", {"channel": "/a", "data": 1, "idempotency_key": ""}, 400, "idempotency_key"),
        ("publish", {"channel": "/a", "data": 1, "idempotency_key": 9}, 400, "idempotency_key"),
        ("publish", {"channel": "/a", "data": 1, "idempotency_key": "x" * 129}, 400, "idem"),
        ("broadcast", {"channels": [], "data": 1}, 400, "non-empty list"),
        ("broadcast", {"channels": "/a", "data": 1}, 400, "non-empty list"),
        ("broadcast", {"channels": ["/a"] * 1001, "data": 1}, 400, "more than 1000"),
        ("broadcast", {"channels": ["/a", "/meta/x"], "data": 1}, 400, "meta"),
        ("deliver", {"session": 3, "channel": "/a", "data": 1}, 400, "clientId"),
        ("deliver", {"session": "nobody", "channel": "/a", "data": 1}, 404, "no session"),
        ("disconnect", {"session": "nobody"}, 404, "no session"),
        ("nothing", {}, 404, "no API call"),
        ("publish/extra", {}, 404, "no API call"),
    ],
)
def test_bad_requests_are_refused(
    server: BayeuxServer, path: str, body: Any, status: int, why: str
) -> None:
    browser = subscriber(server, "/a")
    api = Api(server)
    raw = body if isinstance(body, bytes) else None
    got, answer = api.post(path, None if raw else body, raw=raw)
    assert got == status and why in answer["error"]["message"], answer
    assert answer["error"]["code"] == status
    # Nothing was delivered, and the server still serves.
    assert api.post("publish", {"channel": "/a", "data": "after"})[0] == 200
    assert [e["data"] for e in events(browser)] == ["after"]


def test_methods_and_oversized_bodies(server: BayeuxServer) -> None:
    api = Api(server)
    assert api.call("GET", "publish")[0] == 405
    assert api.call("POST", "channels", {})[0] == 405
    big = {"channel": "/a", "data": "x" * (server.options.max_message_size + 10)}
    host, port = server.address
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request("POST", "/api/publish", body=json.dumps(big), headers={"X-API-Key": KEY})
    assert conn.getresponse().status == 413


def test_deliver_disconnect_and_sessions(server: BayeuxServer) -> None:
    browser = subscriber(server, "/a")
    other = subscriber(server, "/a")
    api = Api(server)
    client_id = browser.client_id
    status, info = api.call("GET", f"sessions/{client_id}")
    assert status == 200
    assert info["result"]["session"] == client_id
    assert info["result"]["transport"] == "long-polling"
    assert info["result"]["subscriptions"] == ["/a"]
    assert api.post("deliver", {"session": client_id, "channel": "/private", "data": 1}) == (
        200,
        {"result": {"session": client_id}},
    )
    assert [(e["channel"], e["data"]) for e in events(browser)] == [("/private", 1)]
    # Disconnect: a held connect is answered with the reason and advice none;
    # the clientId is then refused with the same reason.
    browser.start_connect()
    assert api.post("disconnect", {"session": client_id}) == (
        200,
        {"result": {"session": client_id}},
    )
    reply = browser.finish_connect().reply("/meta/connect")
    assert reply["successful"] is False
    assert reply["error"] == "403::disconnected_by_server"
    assert reply["advice"]["reconnect"] == "none"
    again = browser.connect().reply("/meta/connect")
    assert again["error"] == "403::disconnected_by_server"
    assert api.call("GET", f"sessions/{client_id}")[0] == 404
    assert api.post("disconnect", {"session": client_id})[0] == 404
    # The other session is untouched.
    assert api.post("publish", {"channel": "/a", "data": 2})[0] == 200
    assert [e["data"] for e in events(other)] == [2]


def test_channels(server: BayeuxServer) -> None:
    subscriber(server, "/room/1", "/room/*")
    subscriber(server, "/room/1")
    api = Api(server)
    status, body = api.call("GET", "channels")
    assert status == 200
    assert body["result"]["channels"] == {"/room/1": 2, "/room/*": 1}
    status, body = api.call("GET", "channels/room/1")
    assert (status, body["result"]["subscribers"], body["result"]["matching_sessions"]) == (
        200,
        2,
        2,
    )
    assert api.call("GET", "channels/room/*")[1]["result"]["subscribers"] == 1
    assert api.call("GET", "channels/meta/connect")[0] == 400


def test_the_api_is_off_without_a_key() -> None:
    with running_server() as server:
        host, port = server.address
        conn = http.client.HTTPConnection(host, port, timeout=10)
        conn.request("POST", "/api/publish", body=b'{"channel":"/a","data":1}')
        assert conn.getresponse().status == 404


def test_api_path_inside_the_bayeux_path_is_refused() -> None:
    from engine import ServerOptions

    with pytest.raises(ValueError, match="outside the Bayeux path"):
        ServerOptions(api_key="k", api_path="/cometd/api")
    with pytest.raises(ValueError, match="outside the Bayeux path"):
        ServerOptions(api_key="k", path="/")


class AsyncNoSecrets(SecurityPolicy):
    async def can_publish(  # type: ignore[override]
        self, session: Session, channel: str, message: dict[str, Any]
    ) -> bool:
        return not channel.startswith("/secret")


def test_an_async_policy_is_awaited_and_extensions_run() -> None:
    from engine import Extension

    class DropSpam(Extension):
        def incoming(self, session: Any, message: dict[str, Any]) -> bool:
            return message.get("data") != "spam"

    def setup(server: BayeuxServer) -> None:
        server.policy = AsyncNoSecrets()
        server.add_extension(DropSpam())

    with running_server(setup=setup, api_key=KEY, timeout=1500) as server:
        browser = subscriber(server, "/ok", "/secret/a")
        api = Api(server)
        assert api.post("publish", {"channel": "/ok", "data": 1}) == (
            200,
            {"result": {"channel": "/ok"}},
        )
        status, body = api.post("publish", {"channel": "/secret/a", "data": 2})
        assert status == 403 and "publish_denied" in body["error"]["message"]
        status, body = api.post("publish", {"channel": "/ok", "data": "spam"})
        assert status == 404 and "message_deleted" in body["error"]["message"]
        assert [e["data"] for e in events(browser)] == [1]


def test_idempotency_keys_past_their_bound_are_429_and_nothing_is_delivered(
    server: BayeuxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import engine.http_api

    monkeypatch.setattr(engine.http_api, "MAX_KEYS", 3)
    browser = subscriber(server, "/k")
    api = Api(server)
    for n in range(3):
        body = {"channel": "/k", "data": n, "idempotency_key": f"key-{n}"}
        assert api.post("publish", body)[0] == 200
    status, body = api.post("publish", {"channel": "/k", "data": 3, "idempotency_key": "key-3"})
    assert status == 429 and "idempotency keys" in body["error"]["message"]
    # A known key is still recognised (a retry is a duplicate, not a 429).
    status, body = api.post("publish", {"channel": "/k", "data": 1, "idempotency_key": "key-1"})
    assert status == 200 and body["result"]["duplicate"] is True
    assert [e["data"] for e in events(browser)] == [0, 1, 2]  # not 3, not 1 twice


class SlowPolicy(SecurityPolicy):
    """Publishes wait for a gate: calls pile up in progress."""

    gate: Any = None

    async def can_publish(  # type: ignore[override]
        self, session: Session, channel: str, message: dict[str, Any]
    ) -> bool:
        await self.gate.wait()
        return True


def test_calls_in_progress_past_their_bound_are_503(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    import engine.http_api

    monkeypatch.setattr(engine.http_api, "MAX_RUNNING", 2)
    policy = SlowPolicy()

    def setup(server: BayeuxServer) -> None:
        server.policy = policy

    with running_server(setup=setup, api_key=KEY, timeout=1500) as server:
        loop = server.core.loop

        async def make_gate() -> None:
            policy.gate = asyncio.Event()

        asyncio.run_coroutine_threadsafe(make_gate(), loop).result(5)
        waiting = [Api(server) for _ in range(2)]
        for api in waiting:  # two calls awaiting the policy
            body = json.dumps({"channel": "/s", "data": 1}).encode()
            api.conn.request(
                "POST",
                "/api/publish",
                body=body,
                headers={"Content-Type": "application/json", "Authorization": f"apikey {KEY}"},
            )
        for _ in range(100):  # (bounded) until both are in progress
            if server.api is not None and server.api.running >= 2:
                break
            time.sleep(0.02)
        assert server.api is not None and server.api.running == 2
        status, body = Api(server).post("publish", {"channel": "/s", "data": 2})
        assert status == 503 and "in progress" in body["error"]["message"]
        loop.call_soon_threadsafe(policy.gate.set)
        for api in waiting:
            assert api.conn.getresponse().status == 200


def test_ended_sessions_past_their_bound_are_forgotten_oldest_first(
    server: BayeuxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import engine.protocol.core

    monkeypatch.setattr(engine.protocol.core, "MAX_ENDED", 2)
    browsers = [subscriber(server, "/e") for _ in range(3)]
    api = Api(server)
    for b in browsers:
        assert api.post("disconnect", {"session": b.client_id})[0] == 200
    assert server.core.stats.ended_forgotten == 1 and len(server.core.ended) == 2
    oldest = browsers[0].connect().reply("/meta/connect")
    assert oldest["error"].startswith("402::")  # forgotten: unknown, not the reason
    for b in browsers[1:]:
        assert b.connect().reply("/meta/connect")["error"] == "403::disconnected_by_server"
