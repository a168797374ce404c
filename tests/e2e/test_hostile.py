"""Hostile clients: each attack of the hardening issue, reproduced, and the bound that stops it.

Every test also checks that a polite client next to the attacker is unharmed
(the `canary`: a subscriber with a held connect that must receive a publish
made after the attack), and that nothing was answered with a 500.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from harness import running_server
from hypothesis import given, settings
from hypothesis import strategies as st
from support import Browser
from ws_client import (
    Client,
    RawWs,
    bystander_unharmed,
    handshake_message,
    text,
)

from engine import BayeuxServer

FAST = {"timeout": 1500, "max_interval": 1000}
Message = dict[str, Any]


def deep(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


def post(server: BayeuxServer, body: bytes, cookie: str | None = None) -> tuple[int, bytes]:
    host, port = server.address
    conn = http.client.HTTPConnection(host, port, timeout=5)
    headers = {"Content-Type": "application/json"}
    if cookie:
        headers["Cookie"] = f"BAYEUX_BROWSER={cookie}"
    conn.request("POST", server.options.path, body=body, headers=headers)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, data


def assert_no_internal_errors(server: BayeuxServer) -> None:
    assert server.core.stats.internal_errors == 0


@pytest.fixture(scope="module")
def server() -> Iterator[BayeuxServer]:
    with running_server(**FAST) as srv:
        yield srv


# ============================================================ no 500s


BAD_FIELDS: list[tuple[str, Message]] = [
    (
        "clientId list",
        {"channel": "/meta/connect", "clientId": ["a"], "connectionType": "long-polling"},
    ),
    ("clientId object", {"channel": "/meta/subscribe", "clientId": {"a": 1}, "subscription": "/a"}),
    ("clientId number", {"channel": "/meta/disconnect", "clientId": 12}),
    ("publish clientId list", {"channel": "/a", "clientId": [], "data": 1}),
    ("deep data", {"channel": "/meta/handshake", "version": "1.0", "ext": {"x": deep(300)}}),
    ("deep id", {"channel": "/meta/handshake", "version": "1.0", "id": deep(300)}),
    (
        "deep subscription",
        {"channel": "/meta/subscribe", "clientId": "x", "subscription": deep(300)},
    ),
    ("deep advice", {"channel": "/meta/handshake", "version": "1.0", "advice": deep(300)}),
    ("channel list", {"channel": ["/meta/handshake"]}),
    ("channel deep", {"channel": deep(300)}),
]


@pytest.mark.parametrize(("name", "message"), BAD_FIELDS, ids=[n for n, _ in BAD_FIELDS])
def test_bad_field_types_never_500_over_http(
    server: BayeuxServer, name: str, message: Message
) -> None:
    status, body = post(server, json.dumps([message]).encode())
    assert status in (200, 400), (status, body)
    if status == 200:
        (reply,) = json.loads(body)
        assert isinstance(reply["successful"], bool), reply
        if not reply["successful"]:
            assert "advice" in reply and reply["error"][:3] in ("400", "402", "403", "405"), reply
    assert_no_internal_errors(server)


def test_deep_data_in_a_publish_is_refused_not_500(server: BayeuxServer) -> None:
    browser = Browser(server)
    browser.handshake()
    reply = browser.publish("/deep", deep(300)).reply("/deep")
    assert reply["successful"] is False and reply["error"].startswith("400:")
    assert browser.publish("/deep", deep(50)).reply("/deep")["successful"] is True
    browser.close()
    assert_no_internal_errors(server)


@pytest.mark.parametrize(("name", "message"), BAD_FIELDS, ids=[n for n, _ in BAD_FIELDS])
def test_bad_field_types_never_500_over_websocket(
    server: BayeuxServer, name: str, message: Message
) -> None:
    def attack() -> None:
        ws = RawWs(server)
        ws.sock.sendall(text([message]))
        # A reply (or nothing: a message without id need not be answered),
        # never a close frame (1011, internal error).
        ws.sock.settimeout(0.5)
        try:
            for reply in ws.recv_messages():
                assert isinstance(reply.get("successful"), bool), reply
                if not reply["successful"]:
                    assert "advice" in reply, reply
        except TimeoutError:
            pass
        ws.close()

    bystander_unharmed(server, attack)
    assert_no_internal_errors(server)


# ==================================================== ids and advice


def test_failure_echoes_the_id_and_advises(server: BayeuxServer) -> None:
    status, body = post(
        server,
        json.dumps(
            [
                {
                    "channel": "/meta/connect",
                    "clientId": "nope",
                    "id": "5a3c-uuid-like",
                    "connectionType": "long-polling",
                }
            ]
        ).encode(),
    )
    (reply,) = json.loads(body)
    assert reply["id"] == "5a3c-uuid-like"
    assert reply["error"].startswith("402::")
    assert reply["advice"]["reconnect"] == "handshake"


# ====================================================== session binding


def test_websocket_cannot_use_a_session_made_over_http(server: BayeuxServer) -> None:
    owner = Browser(server)
    owner.handshake()
    owner.subscribe("/owned")
    stolen = owner.client_id

    async def hijack() -> None:
        thief = await Client.open(server)  # another browser: no cookie
        thief.client_id = stolen
        for message in (
            thief.connect_message(),
            thief.message("/meta/subscribe", subscription="/owned/more"),
            thief.message("/meta/unsubscribe", subscription="/owned"),
            thief.message("/meta/disconnect"),
        ):
            reply = await thief.request(message)
            assert reply["successful"] is False and reply["error"].startswith("402::"), reply
        await thief.close()

    asyncio.run(hijack())
    # The owner is untouched: still subscribed, still connected.
    assert server.core.sessions[stolen].subscriptions == {"/owned"}
    publisher = Browser(server)
    publisher.handshake()
    assert publisher.publish("/owned", "mine").reply("/owned")["successful"] is True
    response = owner.connect(advice={"timeout": 0})
    assert any(e["data"] == "mine" for e in response.events())
    owner.close()
    publisher.close()


def test_websocket_cannot_use_another_sockets_session(server: BayeuxServer) -> None:
    async def run() -> None:
        owner = await (await Client.open(server)).ready()
        await owner.subscribe("/ws-owned")
        thief = await Client.open(server)  # no cookie: a browser of its own
        assert thief.cookie != owner.cookie
        thief.client_id = owner.client_id
        for message in (
            thief.connect_message(),
            thief.message("/meta/unsubscribe", subscription="/ws-owned"),
            thief.message("/meta/disconnect"),
            thief.message("/ws-owned", data="forged"),
        ):
            reply = await thief.request(message)
            assert reply["successful"] is False and reply["error"].startswith("402::"), reply
        publisher = await Client.open(server)
        await publisher.handshake()
        await publisher.publish("/ws-owned", "real")
        assert (await owner.event("/ws-owned"))["data"] == "real"
        for client in (owner, thief, publisher):
            await client.close()

    asyncio.run(run())


def test_resume_on_a_new_socket_with_the_same_cookie(server: BayeuxServer) -> None:
    async def run() -> None:
        first = await (await Client.open(server)).ready()
        await first.subscribe("/resume")
        await first.close()
        again = await Client.open(server, cookie=first.cookie)
        again.client_id = first.client_id
        assert (await again.connect())["successful"] is True
        publisher = await Client.open(server)
        await publisher.handshake()
        await publisher.publish("/resume", "back")
        assert (await again.event("/resume"))["data"] == "back"
        await again.close()
        await publisher.close()

    asyncio.run(run())


# ============================================== sessions per connection


def test_sessions_per_websocket_bounded() -> None:
    with running_server(**FAST, max_sessions_per_connection=10) as srv:
        ws = RawWs(srv)
        for _ in range(10):
            ws.handshake()
        (reply,) = ws.request(handshake_message(ws.next_id()))
        assert reply["successful"] is False
        assert reply["error"].startswith("429::session_limit"), reply
        assert reply["advice"]["reconnect"] == "handshake"
        assert reply["advice"]["interval"] > 0
        assert srv.core.stats.session_limit_reached >= 1
        ws.close()


def test_many_sessions_on_one_socket_expire_without_a_scan() -> None:
    """20,000 sessions on one socket expire together; each removal is O(1)."""
    count = 20_000
    with running_server(
        timeout=1000, max_interval=3000, max_sessions_per_connection=0, ws_idle_timeout=0
    ) as srv:
        ws = RawWs(srv)
        # (One frame each: a handshake ignores the rest of its batch.)
        frames = [text([handshake_message(str(n))]) for n in range(count)]
        for start in range(0, count, 500):
            ws.sock.sendall(b"".join(frames[start : start + 500]))
        replies = 0
        while replies < count:
            replies += sum(1 for m in ws.recv_messages() if m.get("successful"))
        conn = next(iter(srv.core.sessions.values())).sink
        assert conn is not None and len(conn.sessions) == count
        assert isinstance(conn.sessions, dict)
        deadline = time.monotonic() + 15
        while srv.core.sessions and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not srv.core.sessions and not conn.sessions
        ws.close()


# ===================================================== rates and back-off


def test_publish_rate_per_connection_not_bypassed_by_sessions() -> None:
    with running_server(**FAST, max_publish_rate=50) as srv:
        ws = RawWs(srv)
        sessions = []
        for _ in range(10):
            ws.handshake()
            sessions.append(ws.client_id)
        started = time.monotonic()
        ok = refused = 0
        batch = []
        for client_id in sessions:
            for n in range(20):
                batch.append(
                    {
                        "channel": "/flood",
                        "clientId": client_id,
                        "data": n,
                        "id": f"p{client_id}{n}",
                    }
                )
        ws.sock.sendall(text(batch))
        seen = 0
        while seen < len(batch):
            for m in ws.recv_messages():
                if m.get("channel") == "/flood" and "successful" in m:
                    seen += 1
                    if m["successful"]:
                        ok += 1
                    else:
                        refused += 1
                        assert m["error"].startswith("409::") or m["error"].startswith("429::"), m
                        assert "advice" in m
        elapsed = time.monotonic() - started
        assert ok <= 50 + 50 * elapsed + 1, (ok, elapsed)
        assert refused > 0
        ws.close()


def test_handshake_rate_per_connection_with_backoff() -> None:
    with running_server(**FAST, max_handshake_rate=5) as srv:
        ws = RawWs(srv)
        intervals = []
        for n in range(20):
            (reply,) = ws.request(handshake_message(f"h{n}"))
            if not reply["successful"]:
                assert reply["error"].startswith("429::handshake_rate"), reply
                intervals.append(reply["advice"]["interval"])
        assert intervals, "no handshake was refused"
        assert intervals == sorted(intervals) and intervals[-1] > intervals[0] >= 0
        assert srv.core.stats.handshake_rate_exceeded == len(intervals)
        ws.close()


def test_sessions_per_address() -> None:
    with running_server(**FAST, max_sessions_per_address=3) as srv:
        browsers = [Browser(srv) for _ in range(4)]
        replies = [b.handshake().reply("/meta/handshake") for b in browsers[:3]]
        assert all(r["successful"] for r in replies)
        status, body = post(srv, json.dumps([handshake_message("x")]).encode())
        (reply,) = json.loads(body)
        assert reply["successful"] is False and reply["error"].startswith("429::"), reply
        # One leaves: room for another.
        browsers[0].send([browsers[0].message("/meta/disconnect")])
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            status, body = post(srv, json.dumps([handshake_message("y")]).encode())
            if json.loads(body)[0]["successful"]:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("a freed session slot was not reusable")
        for b in browsers:
            b.close()


# ====================================================== cookieless clients


def connect_without_cookie(srv: BayeuxServer, client_id: str, n: int) -> Message:
    status, body = post(
        srv,
        json.dumps(
            [
                {
                    "channel": "/meta/connect",
                    "clientId": client_id,
                    "id": str(n),
                    "connectionType": "long-polling",
                    "advice": {"timeout": 0},
                }
            ]
        ).encode(),
    )
    assert status == 200
    (reply,) = json.loads(body)
    return reply


def test_cookieless_client_backs_off_and_is_named_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    with running_server(**FAST) as srv:
        status, body = post(srv, json.dumps([handshake_message()]).encode())
        client_id = json.loads(body)[0]["clientId"]
        intervals = []
        for n in range(5):
            reply = connect_without_cookie(srv, client_id, n)
            assert reply["successful"] is False and reply["id"] == str(n)
            assert reply["error"].startswith("402::")
            intervals.append(reply["advice"]["interval"])
        assert intervals[0] >= 0 and intervals[-1] > intervals[0], intervals
        assert srv.core.stats.cookieless_requests == 5
        named = [r for r in caplog.records if "cookie" in r.getMessage().lower()]
        assert len(named) == 1, [r.getMessage() for r in named]


def test_trust_client_session_accepts_cookieless_clients() -> None:
    with running_server(**FAST, trust_client_session=True) as srv:
        status, body = post(srv, json.dumps([handshake_message()]).encode())
        client_id = json.loads(body)[0]["clientId"]
        reply = connect_without_cookie(srv, client_id, 1)
        assert reply["successful"] is True, reply


# ========================================================= slow readers


def test_slow_websocket_reader_is_bounded_in_bytes_and_cut_off() -> None:
    """A subscriber that never reads: its queue is bounded in bytes, its socket
    gets at most one bounded frame past the high-water mark, and after
    write_timeout it is disconnected; the canary loses nothing."""
    options = dict(
        **FAST,
        max_queue=100_000,
        max_queue_bytes=256 * 1024,
        max_pending_output=64 * 1024,
        write_timeout=1000,
        max_message_size=65536,
    )
    with running_server(**options) as srv:
        slow = RawWs(srv, rcvbuf=4096)
        slow.handshake()
        slow.request(
            slow.message("/stream", subscription="/stream") | {"channel": "/meta/subscribe"}
        )
        slow.sock.sendall(text([slow.message("/meta/connect", connectionType="websocket")]))
        slow_id = slow.client_id
        conn = srv.core.sessions[slow_id].sink
        assert conn is not None and conn.transport is not None
        conn.transport.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 16384
        )

        async def stream() -> None:
            canary = await (await Client.open(srv)).ready()
            await canary.subscribe("/stream")
            publisher = await Client.open(srv)
            await publisher.handshake()
            pad = "x" * 8000
            got: list[int] = []

            async def read() -> None:
                while len(got) < 400:
                    got.append((await canary.event("/stream", timeout=10))["data"]["n"])

            reader = asyncio.create_task(read())
            worst_buffer = worst_queue = 0
            for n in range(400):
                await publisher.send(
                    {
                        "channel": "/stream",
                        "clientId": publisher.client_id,
                        "data": {"n": n, "pad": pad},
                    }
                )
                if n % 20 == 0:
                    await asyncio.sleep(0.01)
                session = srv.core.sessions.get(slow_id)
                if session is not None:
                    worst_queue = max(worst_queue, session.queued_bytes)
                if conn.transport is not None:
                    worst_buffer = max(worst_buffer, conn.transport.get_write_buffer_size())
            await asyncio.wait_for(reader, 20)
            assert got == list(range(400))
            assert worst_queue <= 256 * 1024 + 9000, worst_queue
            assert worst_buffer <= 64 * 1024 + 64 * 1024 + 9000, worst_buffer
            await canary.close()
            await publisher.close()

        asyncio.run(stream())
        assert srv.core.stats.dropped_queue_full > 0
        deadline = time.monotonic() + 5
        while not conn.closed and time.monotonic() < deadline:
            time.sleep(0.1)
        assert conn.closed, "the non-reading socket was not cut off"
        assert srv.core.stats.write_timeouts >= 1
        slow.close()


def test_connect_reply_carries_a_bounded_batch() -> None:
    with running_server(**FAST, max_pending_output=32 * 1024, max_message_size=65536) as srv:
        sub = Browser(srv)
        sub.handshake()
        sub.subscribe("/big")
        publisher = Browser(srv)
        publisher.handshake()
        for n in range(20):
            publisher.publish("/big", {"n": n, "pad": "y" * 8000})
        seen: list[int] = []
        sizes = []
        while len(seen) < 20:
            response = sub.connect(advice={"timeout": 0})
            sizes.append(len(response.body))
            seen.extend(e["data"]["n"] for e in response.events())
        assert seen == list(range(20))
        assert len(sizes) > 1 and max(sizes) <= 32 * 1024 + 9000, sizes
        sub.close()
        publisher.close()


# ============================================================ the tick


def test_tick_survives_an_exception(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR)
    with running_server(timeout=500, max_interval=1000) as srv:
        core = srv.core
        original = core.release_due_holds
        calls = {"n": 0}

        def broken(now: float) -> None:
            calls["n"] += 1
            if calls["n"] <= 3:
                raise RuntimeError("boom")
            original(now)

        core.release_due_holds = broken  # type: ignore[method-assign]
        browser = Browser(srv)
        browser.handshake()
        browser.connect(advice={"timeout": 0})
        started = time.monotonic()
        reply = browser.connect().reply("/meta/connect")  # held, then released by the tick
        assert reply["successful"] is True
        assert time.monotonic() - started < 5
        assert core.stats.internal_errors >= 1
        tracebacks = [r for r in caplog.records if r.exc_info]
        assert len(tracebacks) == 1
        browser.close()


# ======================================================== HTTP parsing


def http_canary(srv: BayeuxServer) -> None:
    """A polite long-polling client still works: handshake, subscribe, publish, receive."""
    sub = Browser(srv).ready()
    sub.subscribe("/canary")
    sub.start_connect()
    pub = Browser(srv)
    pub.handshake()
    assert pub.publish("/canary", "alive").reply("/canary")["successful"] is True
    assert any(e.get("data") == "alive" for e in sub.finish_connect().events())
    sub.close()
    pub.close()


def read_until_closed(sock: socket.socket, limit: float = 5.0) -> bytes:
    sock.settimeout(limit)
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except (ConnectionResetError, TimeoutError):
        pass
    return b"".join(chunks)


@pytest.mark.parametrize("pieces", [1, 5], ids=["one-write", "in-pieces"])
def test_endless_header_is_cut_as_it_arrives(pieces: int) -> None:
    """20 KB of one header value that never ends: answered 431 as soon as the
    limit is passed (before, it was buffered whole, waiting for its end, at a
    quadratic cost)."""
    with running_server(**FAST, max_header_bytes=16384) as srv:
        sock = socket.create_connection(srv.address)
        sock.sendall(b"POST /cometd HTTP/1.1\r\nHost: x\r\nX-Endless: ")
        for _ in range(pieces):
            sock.sendall(b"a" * (20000 // pieces))
            time.sleep(0.02)
        answer = read_until_closed(sock)
        sock.close()
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
        assert srv.core.stats.http_head_too_large >= 1
        http_canary(srv)


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /cometd?" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", b"414"),
        (
            b"GET /cometd HTTP/1.1\r\n"
            + b"".join(b"X-%d: 1\r\n" % n for n in range(101))
            + b"\r\n",
            b"431",
        ),
        (
            b"POST /cometd HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"400",
        ),
        (
            b"POST /cometd HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n[]",
            b"400",
        ),
        (
            b"POST /cometd HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"400",
        ),
        (
            b"GET /cometd?jsonp=cb&"
            + b"&".join(b"p%d=1" % n for n in range(70))
            + b" HTTP/1.1\r\nHost: x\r\n\r\n",
            b"400",
        ),
    ],
    ids=["long-url", "too-many-headers", "two-te", "two-cl", "te-and-cl", "jsonp-params"],
)
def test_bad_heads_refused(server: BayeuxServer, request_bytes: bytes, status: bytes) -> None:
    sock = socket.create_connection(server.address)
    sock.sendall(request_bytes)
    answer = read_until_closed(sock, 3)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 " + status), answer[:300]
    assert_no_internal_errors(server)


def test_head_has_no_body(server: BayeuxServer) -> None:
    sock = socket.create_connection(server.address)
    # A HEAD, then a GET on the same connection: the GET's answer must not be
    # taken for the HEAD's body.
    sock.sendall(
        b"HEAD /cometd HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /cometd/nowhere-else HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    answer = read_until_closed(sock, 3)
    sock.close()
    first_end = answer.index(b"\r\n\r\n") + 4
    head = answer[:first_end]
    assert answer[first_end:].startswith(b"HTTP/1.1 "), answer
    assert b"content-length:" in head.lower()


def test_head_after_other_responses_in_one_turn(server: BayeuxServer) -> None:
    # Two GETs and a HEAD in one write: their answers are queued in the same
    # loop turn, the HEAD's last, and only its body may be cut (this once read
    # outside the queue and crashed the process).
    sock = socket.create_connection(server.address)
    sock.sendall(
        b"GET /cometd/nowhere HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /cometd/nowhere HTTP/1.1\r\nHost: x\r\n\r\n"
        b"HEAD /cometd/nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    answer = read_until_closed(sock, 3)
    sock.close()
    parts = answer.split(b"HTTP/1.1 ")
    assert len(parts) == 4 and parts[0] == b"", answer
    assert parts[3].endswith(b"\r\n\r\n"), answer  # the HEAD's answer: a head alone
    assert all(part.endswith(b"\r\n\r\n") is False for part in parts[1:3]), answer
    assert_no_internal_errors(server)


def test_json_and_jsonp_replies_say_nosniff(server: BayeuxServer) -> None:
    browser = Browser(server)
    response = browser.handshake()
    assert response.headers.get("X-Content-Type-Options") == "nosniff"
    host, port = server.address
    conn = http.client.HTTPConnection(host, port, timeout=5)
    message = json.dumps([handshake_message()])
    from urllib.parse import quote

    conn.request("GET", f"/cometd?jsonp=cb&message={quote(message)}")
    reply = conn.getresponse()
    reply.read()
    assert reply.getheader("X-Content-Type-Options") == "nosniff"
    conn.close()
    browser.close()


def test_non_ascii_admin_token_is_refused_not_500() -> None:
    with running_server(**FAST, admin_token="secret") as srv:
        host, port = srv.address
        conn = http.client.HTTPConnection(host, port, timeout=5)
        conn.putrequest("GET", "/metrics")
        conn.putheader("Authorization", "Bearer sécret".encode())
        conn.endheaders()
        reply = conn.getresponse()
        reply.read()
        assert reply.status == 401
        conn.close()
        browser = Browser(srv)
        browser.handshake()
        reply = browser.send(
            [browser.message("/meta/status", ext={"admin_token": "sécret\udcff"[:-1] + "é"})]
        )
        assert reply.status == 200
        assert srv.core.stats.internal_errors == 0
        browser.close()


# ============================================================ timeouts


def test_header_body_and_idle_timeouts() -> None:
    with running_server(
        **FAST, header_timeout=1000, body_timeout=1000, keepalive_timeout=1000
    ) as srv:
        silent = socket.create_connection(srv.address)  # sends nothing
        partial = socket.create_connection(srv.address)
        partial.sendall(b"POST /cometd HTTP/1.1\r\nHost: x\r\n")  # head never ends
        bodyless = socket.create_connection(srv.address)
        bodyless.sendall(b"POST /cometd HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n[")
        kept = socket.create_connection(srv.address)
        kept.sendall(b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n")
        started = time.monotonic()
        assert read_until_closed(silent, 5) == b""
        assert read_until_closed(partial, 5).startswith(b"HTTP/1.1 408 ")
        assert read_until_closed(bodyless, 5).startswith(b"HTTP/1.1 408 ")
        assert read_until_closed(kept, 5).startswith(b"HTTP/1.1 404 ")  # then closed when idle
        assert time.monotonic() - started < 5
        stats = srv.core.stats
        assert stats.http_header_timeouts == 1 and stats.http_body_timeouts == 1
        assert stats.http_idle_timeouts >= 2
        for s in (silent, partial, bodyless, kept):
            s.close()
        http_canary(srv)


def test_slowloris_connections_are_reaped() -> None:
    with running_server(**FAST, header_timeout=1000) as srv:
        socks = []
        for _ in range(300):
            s = socket.create_connection(srv.address)
            s.sendall(b"GET /cometd HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            socks.append(s)
        for _ in range(4):  # a byte every half second: never enough
            time.sleep(0.5)
            for s in socks:
                try:
                    s.send(b"a")
                except OSError:
                    pass
        deadline = time.monotonic() + 5
        while len(srv.connections) > 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert srv.core.stats.http_header_timeouts >= 300
        for s in socks:
            s.close()
        http_canary(srv)


def test_websocket_upgrade_and_idle_timeouts() -> None:
    with running_server(
        timeout=500, max_interval=500, ws_upgrade_timeout=1000, ws_idle_timeout=1000
    ) as srv:
        mute = RawWs(srv)  # upgraded, then silent
        idle = RawWs(srv)
        idle.handshake()  # a session, but never a connect
        assert mute.close_code()[0] == 1008
        assert idle.close_code()[0] == 1008
        assert srv.core.stats.ws_first_message_timeouts == 1
        assert srv.core.stats.ws_idle_timeouts == 1


def test_http_reader_that_never_reads_is_cut_off() -> None:
    with running_server(**FAST, write_timeout=1000) as srv:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(srv.address)
        request = b"GET /cometd/nowhere HTTP/1.1\r\nHost: x\r\n\r\n"
        sock.settimeout(0.05)
        try:
            for _ in range(200_000):  # pipelined, never reading an answer
                sock.send(request * 16)
        except (TimeoutError, OSError):
            pass
        deadline = time.monotonic() + 5
        while srv.core.stats.write_timeouts == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert srv.core.stats.write_timeouts >= 1
        sock.close()
        http_canary(srv)


# ============================================================= origins


def origin_request(srv: BayeuxServer, origin: str, host: str) -> int:
    sock = socket.create_connection(srv.address)
    body = json.dumps([handshake_message()]).encode()
    sock.sendall(
        b"POST /cometd HTTP/1.1\r\nHost: %s\r\nOrigin: %s\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
        % (host.encode(), origin.encode(), len(body), body)
    )
    answer = read_until_closed(sock, 3)
    sock.close()
    return int(answer.split(b" ", 2)[1])


def test_same_origin_is_configured_not_taken_from_host() -> None:
    with running_server(**FAST, public_origins="https://chat.example.com") as srv:
        # DNS rebinding: the attacker's name, its Host header matching.
        assert origin_request(srv, "http://evil.example:8080", "evil.example:8080") == 403
        assert origin_request(srv, "https://chat.example.com", "chat.example.com") == 200
        host, port = srv.address
        assert origin_request(srv, f"http://{host}:{port}", f"{host}:{port}") == 200
        assert origin_request(srv, f"http://localhost:{port}", f"localhost:{port}") == 200


# ====================================================== trusted proxies


def test_client_address_from_trusted_proxy() -> None:
    with running_server(**FAST, trusted_proxies="127.0.0.0/8", max_sessions_per_address=1) as srv:

        def handshake_from(client: str) -> Message:
            sock = socket.create_connection(srv.address)
            body = json.dumps([handshake_message()]).encode()
            sock.sendall(
                b"POST /cometd HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 6.6.6.6, %s\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n"
                b"Connection: close\r\n\r\n%s" % (client.encode(), len(body), body)
            )
            answer = read_until_closed(sock, 3)
            sock.close()
            (reply,) = json.loads(answer.split(b"\r\n\r\n", 1)[1])
            return reply

        assert handshake_from("10.0.0.1")["successful"] is True
        assert handshake_from("10.0.0.2")["successful"] is True
        refused = handshake_from("10.0.0.1")
        assert refused["successful"] is False and refused["error"].startswith("429::"), refused
        addresses = {s.address for s in srv.core.sessions.values()}
        assert addresses == {"10.0.0.1", "10.0.0.2"}


# ============================================================ the log


def test_a_flood_logs_one_line_per_cause(caplog: pytest.LogCaptureFixture) -> None:
    """2,000 refused publishes and 50 refused handshakes: a line or two per
    cause, with a count, instead of one per event."""
    caplog.set_level(logging.INFO)
    with running_server(**FAST, max_publish_rate=5, max_handshake_rate=5) as srv:
        ws = RawWs(srv)
        ws.handshake()
        flood = [
            {"channel": "/flood", "clientId": ws.client_id, "data": n, "id": f"f{n}"}
            for n in range(2000)
        ]
        for start in range(0, 2000, 500):
            ws.sock.sendall(text(flood[start : start + 500]))
        answered = 0
        while answered < 2000:
            answered += sum(1 for m in ws.recv_messages() if str(m.get("id", "")).startswith("f"))
        for n in range(50):
            ws.request(handshake_message(f"h{n}"))
        ws.close()
        assert srv.core.stats.handshake_rate_exceeded > 0
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert 1 <= len(lines) <= 6, [r.getMessage() for r in lines]


def test_deep_channel_names_are_refused(server: BayeuxServer) -> None:
    """A subscription costs a trie node per segment: 20,000 segments was 4 MB
    for one subscription (1,000 allowed per session)."""
    browser = Browser(server)
    browser.handshake()
    deep_name = "/a" * 20000
    reply = browser.subscribe(deep_name).reply("/meta/subscribe")
    assert reply["successful"] is False and reply["error"].startswith("403::"), reply
    reply = browser.publish(deep_name, 1).reply(deep_name)
    assert reply["successful"] is False and reply["error"].startswith("405::"), reply
    assert browser.subscribe("/a" * 64).reply("/meta/subscribe")["successful"] is True
    browser.close()


# ================================================= any message, no 500


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
CHANNELS = st.sampled_from(
    [
        "/meta/handshake",
        "/meta/connect",
        "/meta/subscribe",
        "/meta/unsubscribe",
        "/meta/disconnect",
        "/meta/unknown",
        "/service/x",
        "/a",
        "/a/*",
        "/a/**",
    ]
)
FIELDS = [
    "clientId",
    "id",
    "data",
    "ext",
    "advice",
    "subscription",
    "connectionType",
    "supportedConnectionTypes",
    "version",
    "minimumVersion",
]
MESSAGES = st.fixed_dictionaries(
    {"channel": CHANNELS | JSON},
    optional={name: JSON for name in FIELDS},
)


@settings(max_examples=300)
@given(batch=st.lists(MESSAGES, min_size=1, max_size=3))
def test_any_message_is_answered_without_a_500(server: BayeuxServer, batch: list[Message]) -> None:
    status, body = post(server, json.dumps(batch).encode())
    assert status in (200, 400), (status, body, batch)
    assert_no_internal_errors(server)


def test_a_connection_past_its_publish_rate_is_not_read_for_a_while() -> None:
    """Refusing costs nearly as much as accepting: a flooder past its rate
    is slowed by TCP (its connection is not read for as long as its refused
    publishes would take at the rate), not answered as fast as it sends."""
    with running_server(timeout=1500, max_interval=5000, max_connection_publish_rate=20) as srv:
        ws = RawWs(srv)
        ws.handshake()
        flood = [
            {"channel": "/flood", "clientId": ws.client_id, "data": n, "id": f"f{n}"}
            for n in range(40)
        ]
        ws.sock.sendall(text(flood))
        replies = []
        while len(replies) < 40:
            replies += [m for m in ws.recv_messages() if str(m.get("id", "")).startswith("f")]
        refused = sum(1 for m in replies if not m["successful"])
        assert refused >= 15 and srv.core.stats.connections_throttled >= 1
        sent = time.monotonic()
        (reply,) = [
            m for m in ws.request(ws.message("/meta/subscribe", subscription="/x")) if "id" in m
        ]
        waited = time.monotonic() - sent
        assert reply["successful"] is True, reply
        # Its refused publishes' worth at 20/s, less the little time it took.
        assert waited >= refused / 20 - 0.3, f"read again after {waited:.3f} s"
        ws.close()
        http_canary(srv)
