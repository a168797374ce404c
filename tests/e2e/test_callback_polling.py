"""The callback-polling (JSONP) transport, as CometD's clients use it.

`GET <base>?jsonp=<callback>&message=<URL-encoded JSON array>` is answered
with `<callback>([...])` as `text/javascript`.  Events reach a JSONP client
only through /meta/connect replies, and its session is bound to the
BAYEUX_BROWSER cookie as over long-polling.
"""

from __future__ import annotations

import http.client
import json
import select
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from harness import running_server
from support import Browser

from engine import BayeuxServer

FAST = {"timeout": 1500, "max_interval": 1000}
JS_TYPE = "text/javascript;charset=UTF-8"

Message = dict[str, Any]


@pytest.fixture(scope="module")
def server() -> Iterator[BayeuxServer]:
    with running_server(**FAST) as srv:
        yield srv


def handshake_message(message_id: str = "1") -> Message:
    return {
        "channel": "/meta/handshake",
        "version": "1.0",
        "supportedConnectionTypes": ["callback-polling"],
        "id": message_id,
    }


def encoded(messages: Any) -> str:
    return quote(json.dumps(messages), safe="")


class JsonpResponse:
    def __init__(
        self, status: int, headers: http.client.HTTPMessage, body: bytes, took: float, cb: str
    ) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.took = took
        self.callback = cb

    @property
    def messages(self) -> list[Message]:
        """The callback's argument; the body must be exactly `<callback>([...])`."""
        assert self.status == 200, (self.status, self.body)
        prefix = self.callback.encode() + b"("
        assert self.body.startswith(prefix) and self.body.endswith(b")"), self.body
        value = json.loads(self.body[len(prefix) : -1])
        assert isinstance(value, list), value
        return value

    def reply(self, channel: str) -> Message:
        found = [m for m in self.messages if m.get("channel") == channel and "successful" in m]
        assert len(found) == 1, self.messages
        return found[0]

    def events(self) -> list[Message]:
        return [m for m in self.messages if "successful" not in m]


class JsonpClient:
    """A browser using callback-polling: one connection for connects, one for the rest."""

    def __init__(self, server: BayeuxServer, cookie: str | None = None) -> None:
        host, port = server.address
        self.path = server.options.path
        self.connect_conn = http.client.HTTPConnection(host, port, timeout=10)
        self.other_conn = http.client.HTTPConnection(host, port, timeout=10)
        self.cookie = cookie
        self.client_id: str | None = None
        self._ids = 0
        self._callbacks = 0
        self._pending: dict[int, tuple[str, float]] = {}

    def next_id(self) -> str:
        self._ids += 1
        return str(self._ids)

    def start(
        self, messages: Any, conn: http.client.HTTPConnection | None = None, suffix: str = ""
    ) -> http.client.HTTPConnection:
        conn = conn or self.other_conn
        # Callback names as the JS client makes them, one per request.
        callback = f"_cometd_jsonp_{self._callbacks}"
        self._callbacks += 1
        headers = {"Cookie": f"BAYEUX_BROWSER={self.cookie}"} if self.cookie else {}
        url = f"{self.path}{suffix}?jsonp={callback}&message={encoded(messages)}"
        conn.request("GET", url, headers=headers)
        self._pending[id(conn)] = (callback, time.monotonic())
        return conn

    def finish(self, conn: http.client.HTTPConnection | None = None) -> JsonpResponse:
        conn = conn or self.other_conn
        callback, sent_at = self._pending.pop(id(conn))
        resp = conn.getresponse()
        body = resp.read()
        took = time.monotonic() - sent_at
        cookie = resp.headers.get("Set-Cookie")
        if cookie and cookie.startswith("BAYEUX_BROWSER="):
            self.cookie = cookie.split(";", 1)[0].split("=", 1)[1]
        return JsonpResponse(resp.status, resp.headers, body, took, callback)

    def send(self, messages: Any, suffix: str = "") -> JsonpResponse:
        self.start(messages, suffix=suffix)
        return self.finish()

    def message(self, channel: str, **fields: Any) -> Message:
        return {"channel": channel, "clientId": self.client_id, "id": self.next_id(), **fields}

    def handshake(self) -> JsonpResponse:
        resp = self.send([handshake_message(self.next_id())], "/handshake")
        reply = resp.reply("/meta/handshake")
        if reply["successful"]:
            self.client_id = reply["clientId"]
        return resp

    def connect_message(self, **fields: Any) -> Message:
        return self.message("/meta/connect", connectionType="callback-polling", **fields)

    def connect(self, **fields: Any) -> JsonpResponse:
        self.start_connect(**fields)
        return self.finish_connect()

    def start_connect(self, **fields: Any) -> None:
        self.start([self.connect_message(**fields)], self.connect_conn, "/connect")

    def finish_connect(self) -> JsonpResponse:
        return self.finish(self.connect_conn)

    def connect_pending(self, wait: float) -> bool:
        """Whether the connect connection is still waiting after `wait` seconds."""
        sock = self.connect_conn.sock
        assert sock is not None
        readable, _, _ = select.select([sock], [], [], wait)
        return not readable

    def subscribe(self, subscription: Any) -> JsonpResponse:
        return self.send([self.message("/meta/subscribe", subscription=subscription)])

    def unsubscribe(self, subscription: Any) -> JsonpResponse:
        return self.send([self.message("/meta/unsubscribe", subscription=subscription)])

    def publish(self, channel: str, data: Any) -> JsonpResponse:
        return self.send([self.message(channel, data=data)])

    def ready(self) -> JsonpClient:
        assert self.handshake().reply("/meta/handshake")["successful"] is True
        assert self.connect().reply("/meta/connect")["successful"] is True
        return self

    def close(self) -> None:
        self.connect_conn.close()
        self.other_conn.close()


def get(server: BayeuxServer, query: str, cookie: str | None = None) -> tuple[int, Any, bytes]:
    host, port = server.address
    conn = http.client.HTTPConnection(host, port, timeout=5)
    headers = {"Cookie": f"BAYEUX_BROWSER={cookie}"} if cookie else {}
    conn.request("GET", f"{server.options.path}?{query}", headers=headers)
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, resp.headers, body


# ================================================================ the JSONP exchange


@pytest.mark.parametrize(
    "path,callback,message_first",
    [
        pytest.param("", "cb_1", False, id="plain"),
        pytest.param("/handshake", "_cometd_jsonp_0", False, id="cometd-js"),
        pytest.param("", "__jsonp1__", True, id="faye"),
        pytest.param("", "a" * 64, False, id="64-characters"),
        pytest.param("/", "a.b-c_9", False, id="dots-and-dashes"),
    ],
)
def test_handshake_over_jsonp(
    server: BayeuxServer, path: str, callback: str, message_first: bool
) -> None:
    host, port = server.address
    params = [f"jsonp={callback}", f"message={encoded([handshake_message('1')])}"]
    if message_first:
        params.reverse()
    conn = http.client.HTTPConnection(host, port, timeout=5)
    conn.request("GET", f"{server.options.path}{path}?{'&'.join(params)}")
    raw = conn.getresponse()
    resp = JsonpResponse(raw.status, raw.headers, raw.read(), 0.0, callback)
    conn.close()
    assert resp.status == 200
    assert resp.headers["Content-Type"] == JS_TYPE
    assert "no-cache" in resp.headers["Cache-Control"]
    assert resp.body.startswith(callback.encode() + b"([{")
    assert resp.body.endswith(b"}])")
    reply = resp.reply("/meta/handshake")
    assert reply["successful"] is True
    assert reply["id"] == "1"
    assert "callback-polling" in reply["supportedConnectionTypes"]
    assert reply["clientId"] in server.core.sessions
    cookie = resp.headers["Set-Cookie"]
    assert cookie.startswith("BAYEUX_BROWSER=") and "HttpOnly" in cookie


@pytest.mark.parametrize(
    "callback",
    [
        pytest.param("alert(1);x", id="statement"),
        pytest.param("alert(1)", id="call"),
        pytest.param("a" * 65, id="65-characters"),
        pytest.param("a" * 10240, id="10KB"),
        pytest.param("cb<script>", id="markup"),
        pytest.param("a b", id="space"),
        pytest.param("cb\n", id="newline"),
    ],
)
def test_bad_callback_name(server: BayeuxServer, callback: str) -> None:
    status, headers, body = get(
        server, f"jsonp={quote(callback, safe='')}&message={encoded([handshake_message()])}"
    )
    assert status == 400, body
    assert headers["Content-Type"].startswith("application/json")
    assert not body.startswith(callback.encode())  # never echoed as script


@pytest.mark.parametrize(
    "query",
    [
        pytest.param(f"message={encoded([handshake_message()])}", id="missing-jsonp"),
        pytest.param(f"jsonp=&message={encoded([handshake_message()])}", id="empty-jsonp"),
        pytest.param(f"jsonp=a&jsonp=b&message={encoded([handshake_message()])}", id="two-jsonp"),
        pytest.param("jsonp=cb", id="missing-message"),
        pytest.param("jsonp=cb&message=", id="empty-message"),
        pytest.param("jsonp=cb&message=" + quote('[{"channel": '), id="message-not-json"),
        pytest.param("jsonp=cb&message=%5B%5D", id="message-empty-array"),
        pytest.param("jsonp=cb&message=%5B1%5D", id="message-not-objects"),
        pytest.param("", id="no-query"),
    ],
)
def test_bad_jsonp_request(server: BayeuxServer, query: str) -> None:
    status, headers, body = get(server, query)
    assert status == 400, body
    assert headers["Content-Type"].startswith("application/json")


def test_callback_polling_not_allowed() -> None:
    with running_server(**FAST, allowed_transports="websocket,long-polling") as srv:
        status, _, body = get(srv, f"jsonp=cb&message={encoded([handshake_message()])}")
        assert status == 400, body


# ============================================================= full cycle


def test_full_cycle(server: BayeuxServer) -> None:
    client = JsonpClient(server)
    other = Browser(server).ready()
    try:
        # Handshake, then the first connect, answered at once.
        client.handshake()
        assert client.cookie is not None
        first = client.connect()
        assert first.took < 0.5
        assert first.headers["Content-Type"] == JS_TYPE
        reply = first.reply("/meta/connect")
        assert reply["successful"] is True and reply["advice"]["reconnect"] == "retry"

        assert client.subscribe("/cp/cycle").reply("/meta/subscribe")["successful"] is True

        # A held connect, released by another client's publish with the event inside.
        client.start_connect()
        assert client.connect_pending(0.3)
        published = time.monotonic()
        assert other.publish("/cp/cycle", {"n": 1}).reply("/cp/cycle")["successful"] is True
        resp = client.finish_connect()
        assert time.monotonic() - published < 0.5
        assert resp.headers["Content-Type"] == JS_TYPE
        assert resp.body.startswith(resp.callback.encode() + b"([")
        assert [m["channel"] for m in resp.messages] == ["/cp/cycle", "/meta/connect"]
        assert resp.messages[0] == {"channel": "/cp/cycle", "data": {"n": 1}}
        assert resp.reply("/meta/connect")["successful"] is True

        # Unsubscribed: the next publish is not delivered; the connect is
        # held for the whole timeout and answered without events.
        reply = client.unsubscribe("/cp/cycle").reply("/meta/unsubscribe")
        assert reply["successful"] is True
        client.start_connect()
        time.sleep(0.2)
        other.publish("/cp/cycle", {"n": 2})
        resp = client.finish_connect()
        assert 1.0 <= resp.took <= 2.5, resp.took
        assert resp.events() == []
        assert resp.reply("/meta/connect")["successful"] is True

        reply = client.send([client.message("/meta/disconnect")]).reply("/meta/disconnect")
        assert reply["successful"] is True
        assert client.client_id not in server.core.sessions
        reply = client.connect().reply("/meta/connect")
        assert reply["successful"] is False
        assert reply["error"] == "402::session_unknown"
        assert reply["advice"]["reconnect"] == "handshake"
    finally:
        client.close()
        other.close()


def test_events_wake_held_connect_not_piggybacked(server: BayeuxServer) -> None:  # 7.3
    client = JsonpClient(server).ready()
    try:
        assert client.subscribe("/cp/own").reply("/meta/subscribe")["successful"] is True
        # The client's own publish while its connect is held: the publish
        # reply carries no event; the event wakes the held connect.
        client.start_connect()
        assert client.connect_pending(0.2)
        resp = client.publish("/cp/own", "mine")
        assert resp.headers["Content-Type"] == JS_TYPE
        assert [m["channel"] for m in resp.messages] == ["/cp/own"]
        assert resp.events() == []
        released = client.finish_connect()
        assert released.took < 0.2 + 0.5
        assert [e["data"] for e in released.events()] == ["mine"]
    finally:
        client.close()


def test_queued_events_wait_for_the_connect(server: BayeuxServer) -> None:  # 7.3
    client = JsonpClient(server).ready()
    other = Browser(server).ready()
    try:
        assert client.subscribe("/cp/later").reply("/meta/subscribe")["successful"] is True
        other.publish("/cp/later", 1)
        other.publish("/cp/later", 2)
        # Non-connect requests with events queued: no events in their replies.
        resp = client.subscribe("/cp/unrelated")
        assert resp.events() == [] and len(resp.messages) == 1
        resp = client.publish("/cp/nobody", 3)
        assert resp.events() == [] and len(resp.messages) == 1
        # The next connect gets them, at once.
        resp = client.connect()
        assert resp.took < 0.5
        assert [e["data"] for e in resp.events()] == [1, 2]
        assert [m["channel"] for m in resp.messages][-1] == "/meta/connect"
    finally:
        client.close()
        other.close()


def test_cookie_binds_jsonp_session(server: BayeuxServer) -> None:  # over JSONP
    owner = JsonpClient(server).ready()
    try:
        cookie = owner.cookie
        assert cookie is not None
        for stolen_cookie in (None, "someoneelse0123"):
            thief = JsonpClient(server, cookie=stolen_cookie)
            thief.client_id = owner.client_id
            reply = thief.connect(advice={"timeout": 0}).reply("/meta/connect")
            assert reply["successful"] is False
            assert reply["error"] == "402::session_unknown"
            reply = thief.publish("/cp/stolen", 1).reply("/cp/stolen")
            assert reply["error"] == "402::session_unknown"
            thief.close()
        # The right cookie works, over JSONP and over long-polling alike.
        same = JsonpClient(server, cookie=cookie)
        same.client_id = owner.client_id
        assert same.publish("/cp/stolen", 2).reply("/cp/stolen")["successful"] is True
        same.close()
        lp = Browser(server, cookie=cookie)
        lp.client_id = owner.client_id
        assert lp.publish("/cp/stolen", 3).reply("/cp/stolen")["successful"] is True
        lp.close()
        # A handshake presenting the cookie keeps it.
        assert owner.handshake().headers.get("Set-Cookie") is None
    finally:
        owner.close()


def test_message_parameter_repeated(server: BayeuxServer) -> None:  # 7.3
    client = JsonpClient(server).ready()
    try:
        subscribe = client.message("/meta/subscribe", subscription="/cp/twice")
        publish = client.message("/cp/twice", data="x")
        status, headers, body = get(
            server,
            f"jsonp=cb&message={encoded([subscribe])}&message={encoded(publish)}",
            cookie=client.cookie,
        )
        resp = JsonpResponse(status, headers, body, 0.0, "cb")
        replies = [m for m in resp.messages if "successful" in m]
        assert [(m["channel"], m["id"]) for m in replies] == [
            ("/meta/subscribe", subscribe["id"]),
            ("/cp/twice", publish["id"]),
        ]
        assert all(m["successful"] is True for m in replies)
        assert resp.events() == []  # not piggy-backed
        # The publish reached the subscription made by the first value.
        resp = client.connect()
        assert [e["data"] for e in resp.events()] == ["x"]
        # One bad value fails the whole request.
        status, _, body = get(
            server,
            f"jsonp=cb&message={encoded([publish])}&message=%5B",
            cookie=client.cookie,
        )
        assert status == 400, body
    finally:
        client.close()
