"""The Bayeux protocol over raw HTTP long-polling.

The rules are those of the Bayeux protocol as CometD implements it
(https://docs.cometd.org/current/reference/#_bayeux); each test's name says the rule it
holds.  The server runs in-process with short timeouts so holds and expiry
take a second or two.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator

import pytest
from harness import running_server
from support import Browser

from engine import BayeuxServer, ServerOptions

FAST = {"timeout": 1500, "max_interval": 1000}


@pytest.fixture(scope="module")
def server() -> Iterator[BayeuxServer]:
    with running_server(**FAST) as srv:
        yield srv


@pytest.fixture
def browser(server: BayeuxServer) -> Iterator[Browser]:
    b = Browser(server)
    yield b
    b.close()


def make(server: BayeuxServer) -> Browser:
    return Browser(server).ready()


# ---------------------------------------------------------------- handshake


def test_handshake_reply(browser: Browser) -> None:
    resp = browser.handshake()
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/json;charset=UTF-8"
    reply = resp.reply("/meta/handshake")
    assert reply["id"] == "1"
    assert reply["successful"] is True
    assert reply["version"] == "1.0"
    assert re.fullmatch(r"[A-Za-z0-9]+", reply["clientId"])
    assert "long-polling" in reply["supportedConnectionTypes"]
    advice = reply["advice"]
    assert advice["reconnect"] == "retry"
    assert isinstance(advice["interval"], int) and isinstance(advice["timeout"], int)
    cookie = resp.headers["Set-Cookie"]
    assert cookie.startswith("BAYEUX_BROWSER=")
    assert "Path=/" in cookie and "HttpOnly" in cookie
    # A handshake presenting the cookie gets no new one.
    again = browser.handshake()
    assert again.headers.get("Set-Cookie") is None


def test_client_ids_distinct_and_random(server: BayeuxServer) -> None:
    b = Browser(server)
    ids = set()
    for _ in range(1000):
        ids.add(b.handshake().reply("/meta/handshake")["clientId"])
    b.close()
    assert len(ids) == 1000
    node = server.node_id
    for cid in ids:
        assert cid.endswith(node)
        assert re.fullmatch(r"[0-9a-f]{32}", cid[:32])  # 128 random bits
        assert server.core.owner_of(cid) == node
    for cid in list(ids):  # leave no sessions behind for other tests
        session = server.core.sessions.get(cid)
        if session is not None:
            server.core.loop.call_soon_threadsafe(server.core.remove_session, session)


def test_handshake_without_common_transport(browser: Browser) -> None:
    reply = browser.handshake(supportedConnectionTypes=["iframe"]).reply("/meta/handshake")
    assert reply["successful"] is False
    assert reply["error"].startswith("301:")
    assert "clientId" not in reply
    assert reply["advice"]["reconnect"] == "none"


def test_handshake_batched_with_publish(server: BayeuxServer) -> None:
    watcher = make(server)
    watcher.subscribe("/batched")
    b = Browser(server)
    handshake = {
        "channel": "/meta/handshake",
        "version": "1.0",
        "supportedConnectionTypes": ["long-polling"],
        "id": "1",
    }
    resp = b.send([handshake, {"channel": "/batched", "data": 1, "id": "2"}])
    assert [m["channel"] for m in resp.messages] == ["/meta/handshake"]
    assert watcher.connect(advice={"timeout": 0}).events() == []


def test_single_object_body(browser: Browser) -> None:
    resp = browser.send(
        {
            "channel": "/meta/handshake",
            "version": "1.0",
            "supportedConnectionTypes": ["long-polling"],
            "id": "9",
        }
    )
    assert isinstance(resp.messages, list)
    assert resp.reply("/meta/handshake")["id"] == "9"


# ------------------------------------------------------------------ connect


def test_first_connect_and_timeout_zero_answered_at_once(browser: Browser) -> None:  # 8, 9
    browser.handshake()
    first = browser.connect()
    assert first.took < 1
    reply = first.reply("/meta/connect")
    assert reply["successful"] is True and reply["id"] == "2"
    zero = browser.connect(advice={"timeout": 0})
    assert zero.took < 1
    advice = zero.reply("/meta/connect")["advice"]
    assert advice["timeout"] == FAST["timeout"] and advice["reconnect"] == "retry"


def test_connect_held_for_timeout(browser: Browser) -> None:
    browser.ready()
    resp = browser.connect()
    assert resp.reply("/meta/connect")["successful"] is True
    # Held for the timeout, less the random timeout_jitter share (10 %).
    shortest = FAST["timeout"] / 1000 * (1 - ServerOptions().timeout_jitter)
    assert shortest - 0.05 <= resp.took <= 2.6, resp.took


def test_connect_unknown_or_missing_client(browser: Browser) -> None:
    for client_id in ("nosuchclient", None):
        browser.client_id = client_id
        resp = browser.connect()
        assert resp.took < 1
        reply = resp.reply("/meta/connect")
        assert reply["successful"] is False
        assert reply["error"].startswith("402::")
        assert reply["advice"] == {"reconnect": "handshake", "interval": 0}


def test_held_connect_released_by_publish(server: BayeuxServer) -> None:
    holder = make(server)
    holder.subscribe("/release/me")
    publisher = make(server)
    holder.start_connect()
    time.sleep(0.2)
    publisher.publish("/release/me", {"n": 1})
    resp = holder.finish_connect()
    assert resp.took < 0.2 + 0.5
    assert [m["channel"] for m in resp.messages] == ["/release/me", "/meta/connect"]
    assert resp.messages[0]["data"] == {"n": 1}


def test_queued_events_returned_at_once(server: BayeuxServer) -> None:
    a = make(server)
    a.subscribe("/queued")
    make(server).publish("/queued", 1)
    resp = a.connect()
    assert resp.took < 0.5
    assert [e["data"] for e in resp.events()] == [1]


def test_connect_with_subscribe_not_held(server: BayeuxServer) -> None:
    a = make(server)
    resp = a.send([a.connect_message(), a.message("/meta/subscribe", subscription="/x")])
    assert resp.took < 0.5
    assert resp.reply("/meta/subscribe")["successful"] is True
    assert resp.reply("/meta/connect")["successful"] is True


def test_second_connect_ends_first(server: BayeuxServer) -> None:
    a = make(server)
    a.start_connect()
    time.sleep(0.2)
    # The second connect on another connection: the first request finishes
    # at once (CometD answers it with HTTP 500).
    second = a.start([a.connect_message()])
    first = a.finish_connect()
    assert first.took < 1
    assert first.status == 500
    resp = a.finish(second)
    assert resp.reply("/meta/connect")["successful"] is True


def test_session_expires_without_connect(server: BayeuxServer) -> None:
    a = make(server)
    time.sleep((FAST["max_interval"] / 1000) + 1.2)
    reply = a.connect().reply("/meta/connect")
    assert reply["successful"] is False
    assert reply["error"] == "402::session_unknown"
    assert reply["advice"]["reconnect"] == "handshake"


def test_session_kept_alive_by_connects(server: BayeuxServer) -> None:
    a = make(server)
    for _ in range(2):  # each hold lasts 1.5 s > max_interval 1 s
        assert a.connect().reply("/meta/connect")["successful"] is True


# ---------------------------------------------------------------- disconnect


def test_disconnect(server: BayeuxServer) -> None:
    a = make(server)
    a.start_connect()
    time.sleep(0.2)
    resp = a.send([a.message("/meta/disconnect")])
    reply = resp.reply("/meta/disconnect")
    assert reply["successful"] is True and reply["id"] == str(a._ids)
    held = a.finish_connect()
    assert held.took < 1
    connect_reply = held.reply("/meta/connect")
    assert connect_reply["successful"] is True
    assert connect_reply["advice"]["reconnect"] == "none"
    after = a.publish("/x", 1).messages[0]
    assert after["error"] == "402::session_unknown"
    # Every failure carries advice, but only a connect's says "handshake".
    assert after["advice"]["reconnect"] == "retry"


# ------------------------------------------------------ subscribe/unsubscribe


def test_subscribe_echo(server: BayeuxServer) -> None:
    a = make(server)
    reply = a.subscribe("/foo/bar").reply("/meta/subscribe")
    assert reply == {
        "channel": "/meta/subscribe",
        "successful": True,
        "id": reply["id"],
        "subscription": "/foo/bar",
    }
    reply = a.subscribe(["/a", "/b/*"]).reply("/meta/subscribe")
    assert reply["successful"] is True and reply["subscription"] == ["/a", "/b/*"]
    session = server.core.sessions[a.client_id]  # type: ignore[index]
    assert session.subscriptions == {"/foo/bar", "/a", "/b/*"}


@pytest.mark.parametrize(
    "subscription,error",
    [
        ("/meta/connect", "403:denied_by_security_policy:subscribe_denied"),
        ("/meta/*", "403:denied_by_security_policy:create_denied"),
        (None, "403::subscription_missing"),
        ("/foo/*/bar", "403::subscription_invalid"),
        ("foo", "403::subscription_invalid"),
        ("/a/**/b", "403::subscription_invalid"),
        ("/a//b", "403::subscription_invalid"),
        ("a/b", "403::subscription_invalid"),
        ("/", "403::subscription_invalid"),
        ({}, "403::subscription_invalid"),
        (5, "403::subscription_invalid"),
        ([], "403::subscription_invalid"),
    ],
)
def test_subscribe_refused(server: BayeuxServer, subscription: object, error: str) -> None:
    a = make(server)
    fields = {} if subscription is None else {"subscription": subscription}
    reply = a.send([a.message("/meta/subscribe", **fields)]).reply("/meta/subscribe")
    assert reply["successful"] is False
    assert reply["error"] == error
    # The server and other clients go on.
    b = make(server)
    assert b.subscribe("/ok").reply("/meta/subscribe")["successful"] is True


def test_array_subscription_stops_at_first_failure(server: BayeuxServer) -> None:
    a = make(server)
    reply = a.subscribe(["/ok/1", "/meta/x", "/ok/2"]).reply("/meta/subscribe")
    assert reply["successful"] is False
    session = server.core.sessions[a.client_id]  # type: ignore[index]
    assert session.subscriptions == {"/ok/1"}


def test_service_subscription_is_noop(server: BayeuxServer) -> None:
    a = make(server)
    assert a.subscribe("/service/echo").reply("/meta/subscribe")["successful"] is True
    b = make(server)
    assert b.publish("/service/echo", "x").reply("/service/echo")["successful"] is True
    assert a.connect(advice={"timeout": 0}).events() == []


def test_wildcards(server: BayeuxServer) -> None:
    one, deep, every = make(server), make(server), make(server)
    one.subscribe("/wc/*")
    deep.subscribe("/wc/**")
    every.subscribe("/**")
    p = make(server)
    for channel in ("/wc/bar", "/wc/bar/baz", "/wc"):
        p.publish(channel, channel)

    def received(b: Browser) -> list[str]:
        return [e["channel"] for e in b.connect(advice={"timeout": 0}).events()]

    assert received(one) == ["/wc/bar"]
    assert received(deep) == ["/wc/bar", "/wc/bar/baz"]
    assert received(every) == ["/wc/bar", "/wc/bar/baz", "/wc"]


def test_one_copy_for_overlapping_subscriptions(server: BayeuxServer) -> None:
    a = make(server)
    a.subscribe(["/dup/*", "/dup/bar", "/dup/**"])
    make(server).publish("/dup/bar", 7)
    events = a.connect(advice={"timeout": 0}).events()
    assert events == [{"channel": "/dup/bar", "data": 7}]


def test_unsubscribe(server: BayeuxServer) -> None:
    a = make(server)
    a.subscribe("/unsub")
    reply = a.unsubscribe("/unsub").reply("/meta/unsubscribe")
    assert reply["successful"] is True and reply["subscription"] == "/unsub"
    make(server).publish("/unsub", 1)
    assert a.connect(advice={"timeout": 0}).events() == []
    never = a.unsubscribe("/never/subscribed").reply("/meta/unsubscribe")
    assert never["successful"] is True


# ------------------------------------------------------- publish and delivery


def test_publish_reply_and_delivery(server: BayeuxServer) -> None:
    sub = make(server)
    sub.subscribe("/chat/room")
    pub = make(server)
    pub.subscribe("/chat/room")
    resp = pub.publish("/chat/room", {"text": "hi"}, ext={"custom": [1, 2]}, extra={"app": "field"})
    reply = resp.reply("/chat/room")
    assert reply == {"channel": "/chat/room", "successful": True, "id": reply["id"]}
    expected = {
        "channel": "/chat/room",
        "data": {"text": "hi"},
        "ext": {"custom": [1, 2]},
        "extra": {"app": "field"},
    }
    # The publisher gets its own message, piggy-backed on the publish reply (32).
    assert resp.events() == [expected]
    assert sub.connect(advice={"timeout": 0}).events() == [expected]


@pytest.mark.parametrize(
    "channel,fields,error",
    [
        ("/meta/foo", {"data": 1}, "403:"),
        ("/foo/*", {"data": 1}, "405::channel_invalid"),
        ("/foo/**", {"data": 1}, "405::channel_invalid"),
        ("/foo bar%", {"data": 1}, "405::channel_invalid"),
        ("/a//b", {"data": 1}, "405::channel_invalid"),
        ("/x", {}, "400::data_missing"),
        (5, {"data": 1}, "405::channel_invalid"),
    ],
)
def test_publish_refused(server: BayeuxServer, channel: object, fields: dict, error: str) -> None:
    every = make(server)
    every.subscribe("/**")
    a = make(server)
    reply = a.send([{"channel": channel, "clientId": a.client_id, "id": "77", **fields}])
    message = reply.messages[0]
    assert message["successful"] is False
    assert message["error"].startswith(error)
    assert message["id"] == "77"
    assert every.connect(advice={"timeout": 0}).events() == []


def test_publish_without_channel(server: BayeuxServer) -> None:
    a = make(server)
    message = a.send([{"clientId": a.client_id, "data": 1, "id": "5"}]).messages[0]
    assert message["error"] == "400::channel_missing" and message["id"] == "5"


def test_publish_unknown_client(browser: Browser) -> None:
    browser.client_id = "unknown"
    message = browser.publish("/x", 1).messages[0]
    assert message["error"] == "402::session_unknown"
    assert message["advice"]["reconnect"] == "retry"  # not "handshake"


def test_service_publish_not_broadcast(server: BayeuxServer) -> None:
    every = make(server)
    every.subscribe("/**")
    reply = make(server).publish("/service/x", 1).reply("/service/x")
    assert reply["successful"] is True
    assert every.connect(advice={"timeout": 0}).events() == []


def test_order_preserved(server: BayeuxServer) -> None:
    a = make(server)
    a.subscribe("/order")
    p = make(server)
    for i in range(50):
        p.publish("/order", i)
    assert [e["data"] for e in a.connect(advice={"timeout": 0}).events()] == list(range(50))


def test_delivery_strips_publisher_identity(server: BayeuxServer) -> None:
    a = make(server)
    a.subscribe("/strip")
    p = make(server)
    p.publish("/strip", 1, advice={"reconnect": "none"}, successful=True)
    (event,) = a.connect(advice={"timeout": 0}).events() or [{}]
    assert event == {"channel": "/strip", "data": 1}


def test_message_id_invalid(server: BayeuxServer) -> None:
    a = make(server)
    for bad in ({"an": "object"}, ["a"], True, "x" * 257):
        message = a.send([{"channel": "/x", "clientId": a.client_id, "data": 1, "id": bad}])
        reply = message.messages[0]
        assert reply["error"] == "405::message_id_invalid"
        assert "id" not in reply  # not a usable id: not echoed
        assert reply["advice"]["reconnect"] == "retry"


def test_ids_echoed_verbatim(server: BayeuxServer) -> None:
    # Any JSON string up to 256 characters, or a number: clients send
    # counters, UUIDs with dashes, hashes (they were refused once: 405 on
    # every message, with no id to tell which).
    a = make(server)
    uuid = "5f0c6c1e-8d1b-4a43-9d8e-2f7a0e5c9b11"
    for value in ("0", 0, 17, "abc", uuid, "a b", "ünï", 1.5, "x" * 256, ""):
        message = a.send(
            [{"channel": "/x", "clientId": a.client_id, "data": 1, "id": value}]
        ).messages[0]
        assert message["id"] == value and type(message["id"]) is type(value)


# ------------------------------------------------------------ HTTP transport


def test_transport_errors(browser: Browser) -> None:
    resp = browser.send(b"{not json")
    assert resp.status == 400
    assert "invalid JSON" in json.loads(resp.body)["detail"]
    assert browser.send(b"[]").status == 400
    assert browser.send(b"[1, 2]").status == 400
    assert browser.send(b'"a string"').status == 400


@pytest.mark.parametrize("suffix", ["", "/", "/handshake", "/connect", "/disconnect", "/x/y"])
def test_any_path_under_base(server: BayeuxServer, suffix: str) -> None:
    b = Browser(server)
    reply = b.send(
        [
            {
                "channel": "/meta/handshake",
                "version": "1.0",
                "supportedConnectionTypes": ["long-polling"],
            }
        ],
        suffix,
    ).reply("/meta/handshake")
    assert reply["successful"] is True
    b.close()


def test_multiple_clients(server: BayeuxServer) -> None:
    tab1 = make(server)
    tab2 = Browser(server, cookie=tab1.cookie).ready()
    assert tab2.cookie == tab1.cookie
    tab1.start_connect()
    time.sleep(0.2)
    resp = tab2.connect()
    assert resp.took < 1
    reply = resp.reply("/meta/connect")
    assert reply["successful"] is True
    assert reply["advice"]["multiple-clients"] is True
    assert reply["advice"]["reconnect"] == "retry"
    assert reply["advice"]["interval"] == 2000
    tab1.finish_connect()
    # Once the other tab's hold ended, this one is held again, with normal advice.
    resp = tab2.connect()
    assert resp.took > 1
    assert resp.reply("/meta/connect")["advice"]["interval"] == 0


def test_cookie_binds_session(server: BayeuxServer) -> None:
    a = make(server)
    thief = Browser(server, cookie="someoneelse0000")
    thief.client_id = a.client_id
    reply = thief.connect().reply("/meta/connect")
    assert reply["error"] == "402::session_unknown"
    no_cookie = Browser(server)
    no_cookie.client_id = a.client_id
    assert no_cookie.publish("/x", 1).messages[0]["error"] == "402::session_unknown"


def test_browser_cookie_among_others(server: BayeuxServer) -> None:
    from support import raw_exchange

    b = make(server)
    b.subscribe("/cookies")
    body = json.dumps([b.message("/meta/connect", connectionType="long-polling")]).encode()
    for cookie in (
        b"a=1; BAYEUX_BROWSER=%s; z=2",
        b"BAYEUX_BROWSERX=no;BAYEUX_BROWSER=;  BAYEUX_BROWSER=%s  ",
        b"\tBAYEUX_BROWSER=%s",
    ):
        value = cookie.replace(b"%s", b.cookie.encode())  # type: ignore[union-attr]
        answer = raw_exchange(
            server,
            b"POST /cometd/connect HTTP/1.1\r\nhost: x\r\nCOOKIE: " + value + b"\r\n"
            b"connection: close\r\ncontent-length: %d\r\n\r\n" % len(body) + body,
        )
        # The session is recognised, so the connect succeeds (held, then answered).
        assert b'"successful":true' in answer, (cookie, answer)


def test_pipelined_requests_answered_in_order(server: BayeuxServer) -> None:
    import socket

    b = make(server)
    host, port = server.address
    bodies = [
        json.dumps([b.message("/meta/subscribe", subscription=f"/pipe/{i}")]).encode()
        for i in range(5)
    ]
    data = b"".join(
        b"POST /cometd HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Cookie: BAYEUX_BROWSER=" + b.cookie.encode() + b"\r\n"  # type: ignore[union-attr]
        b"Content-Length: %d\r\n\r\n" % len(body) + body
        for body in bodies
    )
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(data)
        received = b""
        while received.count(b"HTTP/1.1 200") < 5 or not received.endswith(b"]"):
            chunk = sock.recv(65536)
            assert chunk
            received += chunk
    order = re.findall(rb'"subscription":"/pipe/(\d)"', received)
    assert order == [b"0", b"1", b"2", b"3", b"4"]


def test_cors_preflight_and_headers() -> None:
    with running_server(allowed_origins="http://app.example") as srv:
        from support import raw_exchange

        pre = raw_exchange(
            srv,
            b"OPTIONS /cometd/handshake HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Origin: http://app.example\r\nAccess-Control-Request-Method: POST\r\n"
            b"Access-Control-Request-Headers: content-type\r\nConnection: close\r\n\r\n",
        )
        assert pre.startswith(b"HTTP/1.1 200")
        assert b"Access-Control-Allow-Origin: http://app.example\r\n" in pre
        assert b"Access-Control-Allow-Credentials: true\r\n" in pre
        body = json.dumps(
            [{"channel": "/meta/handshake", "supportedConnectionTypes": ["long-polling"]}]
        ).encode()
        post = raw_exchange(
            srv,
            b"POST /cometd HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: http://app.example\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body,
        )
        assert post.startswith(b"HTTP/1.1 200")
        assert b"Access-Control-Allow-Origin: http://app.example\r\n" in post
        evil = raw_exchange(
            srv,
            b"POST /cometd HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: http://evil.example\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body,
        )
        assert evil.startswith(b"HTTP/1.1 403")


def test_form_encoded_body(browser: Browser) -> None:
    from urllib.parse import quote

    handshake = json.dumps(
        [
            {
                "channel": "/meta/handshake",
                "version": "1.0",
                "supportedConnectionTypes": ["long-polling"],
                "id": "1",
            }
        ]
    )
    resp = browser.send(b"message=" + quote(handshake).encode())
    assert resp.reply("/meta/handshake")["successful"] is True


def test_held_connects_end_at_jittered_deadlines() -> None:
    # Clients that connected together (a ramp, a reconnect storm) would send
    # their heartbeats together forever: each hold ends at a random point in
    # the last `timeout_jitter` of the timeout, never after it.
    with running_server(timeout=3000, timeout_jitter=0.5) as srv:
        browsers = [Browser(srv).ready() for _ in range(16)]
        started = time.monotonic()
        for b in browsers:
            b.start_connect()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            holds = [s.hold for s in list(srv.core.sessions.values()) if s.hold is not None]
            if len(holds) == len(browsers):
                break
            time.sleep(0.02)
        assert len(holds) == len(browsers)
        loop_now = srv.core.loop.time()
        left = sorted(hold.deadline - loop_now for hold in holds)
        assert left[0] >= 1.5 - (time.monotonic() - started) - 0.1, left
        assert left[-1] <= 3.0, left
        assert left[-1] - left[0] > 0.2, left  # spread, not all at one instant
        for b in browsers:
            reply = b.finish_connect().reply("/meta/connect")
            assert reply["successful"] is True
            b.close()


def test_answered_holds_leave_one_wheel_entry_per_session() -> None:
    # Answered holds used to wait in the timer wheel until their deadline
    # (most of the heap at high connect rates): the wheel keeps each session
    # once, and a hold still ends at its deadline after its entry moved.
    from engine.protocol.session import Session

    with running_server(timeout=1000, timeout_jitter=0) as srv:
        sub = Browser(srv).ready()
        sub.subscribe("/wheel")
        session = srv.core.sessions[sub.client_id]  # type: ignore[index]
        pub = Browser(srv).ready()
        for i in range(20):
            sub.start_connect()
            deadline = time.monotonic() + 5
            while session.hold is None and time.monotonic() < deadline:
                time.sleep(0.005)
            pub.publish("/wheel", i)
            assert [e["data"] for e in sub.finish_connect().events()] == [i]
        entries = [e for bucket in list(srv.core.holds.slots.values()) for e in bucket]
        assert entries == [session]
        assert all(isinstance(e, Session) for e in entries)
        started = time.monotonic()
        reply = sub.connect().reply("/meta/connect")
        took = time.monotonic() - started
        assert reply["successful"] is True
        assert 0.8 <= took <= 2.0, took
        sub.close()
        pub.close()


def test_timeout_jitter_is_validated() -> None:
    with pytest.raises(ValueError, match="timeout_jitter"):
        ServerOptions(timeout_jitter=1.0)
