"""The Bayeux protocol over the WebSocket transport, as CometD's clients use it.

Protocol tests use the `websockets` library as the client; malformed frames
and refused upgrades are sent on raw sockets (frames built with
`engine.transport._wsframe.encode_client_frame`).  Every bad-input case is followed by a
check that a bystander, a second WebSocket client subscribed to a channel
with a held connect, still gets a publish.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import websockets
from harness import running_server
from support import Browser
from ws_client import (
    MASK,
    Client,
    RawWs,
    bystander_unharmed,
    frame,
    handshake_message,
    http_exchange,
    is_event,
    ready_client,
    text,
    upgrade_request,
    ws_url,
)

from engine import BayeuxServer
from engine.transport._wsframe import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
)

FAST = {"timeout": 1500, "max_interval": 1000}
MAX_MESSAGE_SIZE = 1024
ALLOWED_ORIGIN = "http://allowed.example"

Message = dict[str, Any]


@pytest.fixture(scope="module")
def server() -> Iterator[BayeuxServer]:
    with running_server(
        **FAST, max_message_size=MAX_MESSAGE_SIZE, allowed_origins=ALLOWED_ORIGIN
    ) as srv:
        yield srv


# ------------------------------------------------------- websockets client


# ------------------------------------------------------------ raw sockets


# -------------------------------------------------------------- bystander


# ================================================================ protocol


def test_upgrade_and_handshake(server: BayeuxServer) -> None:
    async def body() -> None:
        async with websockets.connect(ws_url(server)) as ws:
            assert ws.subprotocol is None
            headers = ws.response.headers
            assert "Sec-WebSocket-Protocol" not in headers
            assert "Sec-WebSocket-Extensions" not in headers  # deflate offered, not taken
            await ws.send(json.dumps([handshake_message("7")]))
            raw = await asyncio.wait_for(ws.recv(), 3)
            assert isinstance(raw, str)  # a text frame
            value = json.loads(raw)
            assert isinstance(value, list) and len(value) == 1
            reply = value[0]
            assert reply["channel"] == "/meta/handshake"
            assert reply["successful"] is True
            assert reply["id"] == "7"
            assert reply["version"] == "1.0"
            assert re.fullmatch(r"[A-Za-z0-9]+", reply["clientId"])
            assert reply["supportedConnectionTypes"] == [
                "websocket",
                "long-polling",
                "callback-polling",
            ]
            assert reply["advice"] == {"reconnect": "retry", "interval": 0, "timeout": 1500}
            assert reply["clientId"] in server.core.sessions
        # `<base>/` is accepted too, and an offered subprotocol is not answered.
        async with websockets.connect(ws_url(server, "/"), subprotocols=["cometd"]) as ws:
            assert ws.subprotocol is None
            assert "Sec-WebSocket-Protocol" not in ws.response.headers
            await ws.send(json.dumps([handshake_message()]))
            reply = json.loads(await asyncio.wait_for(ws.recv(), 3))[0]
            assert reply["successful"] is True

    asyncio.run(body())


def test_connect_first_and_timeout_zero_at_once_then_held(server: BayeuxServer) -> None:
    async def body() -> None:  # handshake, connect, held connect: over WebSocket
        c = await Client.open(server)
        await c.handshake()
        started = time.monotonic()
        first = await c.connect()
        assert time.monotonic() - started < 0.5
        assert first["successful"] is True
        assert first["advice"]["reconnect"] == "retry"
        started = time.monotonic()
        zero = await c.connect(advice={"timeout": 0})
        assert time.monotonic() - started < 0.5
        assert zero["successful"] is True and zero["advice"]["timeout"] == 1500
        started = time.monotonic()
        held = await c.connect(timeout=4)
        took = time.monotonic() - started
        assert held["successful"] is True
        assert 1.5 - 1 <= took <= 1.5 + 1, took
        await c.close()

    asyncio.run(body())


def test_events_written_while_connect_held(server: BayeuxServer) -> None:
    async def body() -> None:
        holder = await ready_client(server)
        await holder.subscribe("/held/events")
        lp = Browser(server)
        await asyncio.to_thread(lp.ready)
        ws_publisher = await Client.open(server)
        await ws_publisher.handshake()

        held = holder.connect_message()
        held_at = time.monotonic()
        await holder.send(held)
        assert await holder.gather(0.2) == []  # really held

        # A publish by a long-polling client...
        sent = time.monotonic()
        resp = await asyncio.to_thread(lp.publish, "/held/events", {"from": "long-polling"})
        assert resp.reply("/held/events")["successful"] is True
        event = await holder.event("/held/events", timeout=1)
        assert time.monotonic() - sent < 0.1
        assert event["data"] == {"from": "long-polling"}
        # ... and by another WebSocket client: both written at once.
        sent = time.monotonic()
        await ws_publisher.send(ws_publisher.message("/held/events", data={"from": "websocket"}))
        event = await holder.event("/held/events", timeout=1)
        assert time.monotonic() - sent < 0.1
        assert event["data"] == {"from": "websocket"}
        assert not holder.inbox  # the connect reply did not come with them

        # The connect is still answered at its timeout, not at the events.
        reply = await holder.reply(held["id"], timeout=4)
        took = time.monotonic() - held_at
        assert reply["channel"] == "/meta/connect" and reply["successful"] is True
        assert 1.2 <= took <= 2.5, took
        lp.close()
        await ws_publisher.close()
        await holder.close()

    asyncio.run(body())


def test_every_message_with_id_answered(server: BayeuxServer) -> None:
    async def body() -> None:
        c = await ready_client(server)
        await c.subscribe("/ids")
        batch = [
            c.message("/ids", data=1),
            c.message("/service/nobody", data=2),
            c.message("/ids/*", data=3),  # a pattern: refused
            c.message("/no/data"),  # refused: no data
            c.message("/meta/nothing", data=4),  # refused
            c.message("/meta/subscribe", subscription="/other"),
            c.message("/meta/unsubscribe", subscription="/other"),
            c.connect_message(),  # batched: answered at once
        ]
        await c.send(*batch)
        singles = [c.message("/ids", data=n) for n in range(5)]
        for message in singles:
            await c.send(message)
        stranger = {"channel": "/ids", "clientId": "nosuchclient", "data": 0, "id": "x1"}
        await c.send(stranger)
        expected = [m["id"] for m in batch + singles + [stranger]]
        replies = {}
        for message_id in expected:
            replies[message_id] = await c.reply(message_id, timeout=10)
        rest = await c.gather(0.3)
        assert not [m for m in rest if not is_event(m)], rest  # each answered exactly once
        assert [e["data"] for e in rest] == [1, 0, 1, 2, 3, 4]
        refused = {batch[2]["id"], batch[3]["id"], batch[4]["id"], "x1"}
        for message_id, reply in replies.items():
            assert reply["successful"] is (message_id not in refused), reply
        assert replies["x1"]["error"] == "402::session_unknown"
        assert [replies[m["id"]]["channel"] for m in batch] == [m["channel"] for m in batch]
        await c.close()

    asyncio.run(body())


def test_connect_on_new_socket_resumes_session(server: BayeuxServer) -> None:
    async def body() -> None:
        first = await ready_client(server)
        await first.subscribe("/moved")
        second = await Client.open(server, cookie=first.cookie)  # the same browser
        second.client_id = first.client_id
        # The first frame on the new socket is a connect: no handshake.  Not
        # the session's first connect, so it is held; events flow meanwhile.
        connect = second.connect_message()
        await second.send(connect)
        publisher = await Client.open(server)
        await publisher.handshake()
        assert (await publisher.publish("/moved", "here"))["successful"] is True
        assert (await second.event("/moved"))["data"] == "here"
        reply = await second.reply(connect["id"], timeout=4)
        assert reply["channel"] == "/meta/connect"
        assert reply["successful"] is True, reply
        assert await first.gather(0.2) == []  # events follow the session to the new socket
        # A session handshaken over long-polling continues over WebSocket (aiocometd).
        lp = Browser(server)
        await asyncio.to_thread(lp.handshake)
        upgraded = await Client.open(server, cookie=lp.cookie)
        upgraded.client_id = lp.client_id
        assert (await upgraded.connect())["successful"] is True
        await upgraded.subscribe("/switched")
        # (The first publisher's session has expired meanwhile: it never connected.)
        publisher2 = await Client.open(server)
        await publisher2.handshake()
        assert (await publisher2.publish("/switched", 5))["successful"] is True
        assert (await upgraded.event("/switched"))["data"] == 5
        lp.close()
        for c in (first, second, publisher, publisher2, upgraded):
            await c.close()

    asyncio.run(body())


def test_invalid_json_closes_only_that_connection(server: BayeuxServer) -> None:
    async def body() -> None:
        ws_other = await ready_client(server)
        await ws_other.subscribe("/survivors")
        held = ws_other.connect_message()
        await ws_other.send(held)
        lp = Browser(server)
        await asyncio.to_thread(lp.ready)
        await asyncio.to_thread(lp.subscribe, "/survivors")
        await asyncio.to_thread(lp.start_connect)

        bad = await ready_client(server)
        await bad.ws.send('[{"channel": "/meta/connect", ')
        with pytest.raises(websockets.ConnectionClosedError):
            await asyncio.wait_for(bad.ws.recv(), 3)
        assert bad.ws.close_code == 1011

        publisher = await Client.open(server)
        await publisher.handshake()
        await publisher.publish("/survivors", "ok")
        assert (await ws_other.event("/survivors"))["data"] == "ok"
        resp = await asyncio.to_thread(lp.finish_connect)
        assert [e["data"] for e in resp.events()] == ["ok"]
        lp.close()
        for c in (ws_other, publisher):
            await c.close()

    asyncio.run(body())


def test_closed_socket_leaves_session_until_max_interval(server: BayeuxServer) -> None:
    async def body() -> None:
        # Reconnect on a new socket within max_interval: the session, with its
        # subscriptions, is still there.
        a = await ready_client(server)
        await a.subscribe("/kept")
        await a.send(a.connect_message())  # held when the socket goes
        await asyncio.sleep(0.1)
        await a.close()  # no /meta/disconnect
        publisher = await Client.open(server)
        await publisher.handshake()
        await publisher.publish("/kept", "while away")  # queued for the session
        await asyncio.sleep(0.4)
        assert a.client_id in server.core.sessions
        again = await Client.open(server, cookie=a.cookie)
        again.client_id = a.client_id
        started = time.monotonic()
        reply = await again.connect()
        assert time.monotonic() - started < 0.5  # answered at once: events are waiting
        assert reply["successful"] is True
        assert (await again.event("/kept", timeout=0.5))["data"] == "while away"
        await publisher.publish("/kept", "still subscribed")
        assert (await again.event("/kept"))["data"] == "still subscribed"
        await publisher.close()

        # Without a reconnect, max_interval expires it (counted from the
        # socket's loss, as the held connect is dropped then).
        await again.send(again.connect_message())
        await asyncio.sleep(0.1)
        assert server.core.sessions[again.client_id].hold is not None  # type: ignore[index]
        await again.close()
        closed = time.monotonic()
        await asyncio.sleep(0.5)
        assert again.client_id in server.core.sessions
        while again.client_id in server.core.sessions and time.monotonic() - closed < 4:
            await asyncio.sleep(0.05)
        assert again.client_id not in server.core.sessions
        assert time.monotonic() - closed >= 0.9  # not before max_interval (1 s)
        late = await Client.open(server)
        late.client_id = again.client_id
        reply = await late.connect()
        assert reply["successful"] is False
        assert reply["error"] == "402::session_unknown"
        assert reply["advice"]["reconnect"] == "handshake"
        await late.close()

    asyncio.run(body())


def test_own_publish_arrives_once(server: BayeuxServer) -> None:
    async def body() -> None:
        c = await ready_client(server)
        await c.subscribe("/echo")
        reply = await c.publish("/echo", {"n": 1})
        assert reply["successful"] is True
        received = await c.gather(0.3)
        assert received == [{"channel": "/echo", "data": {"n": 1}}]
        await c.close()

    asyncio.run(body())


def test_wildcard_subscriptions(server: BayeuxServer) -> None:
    async def body() -> None:
        c = await ready_client(server)
        await c.subscribe(["/wild/*", "/deep/**"])
        await c.subscribe(["/both/*", "/both/**"])
        publisher = await Client.open(server)
        await publisher.handshake()
        for channel in ("/wild/a", "/wild/a/b", "/deep/x", "/deep/x/y/z", "/both/x", "/other"):
            await publisher.publish(channel, channel)
        received = await c.gather(0.3)
        assert [(e["channel"], e["data"]) for e in received] == [
            ("/wild/a", "/wild/a"),
            ("/deep/x", "/deep/x"),
            ("/deep/x/y/z", "/deep/x/y/z"),
            ("/both/x", "/both/x"),  # once, though two subscriptions match
        ]
        await publisher.close()
        await c.close()

    asyncio.run(body())


def test_batch_subscribe_publish_replies_in_order(server: BayeuxServer) -> None:
    async def body() -> None:
        c = await ready_client(server)
        subscribe = c.message("/meta/subscribe", subscription="/batch")
        publish = c.message("/batch", data="in batch")
        await c.send(subscribe, publish)
        messages = await c.gather(0.5)
        replies = [m for m in messages if not is_event(m)]
        assert [(m["channel"], m["id"]) for m in replies] == [
            ("/meta/subscribe", subscribe["id"]),
            ("/batch", publish["id"]),
        ]
        assert all(m["successful"] is True for m in replies)
        # The publish reached the subscription made just before it, once.
        assert [m for m in messages if is_event(m)] == [{"channel": "/batch", "data": "in batch"}]
        await c.close()

    asyncio.run(body())


def test_unsubscribe_and_disconnect(server: BayeuxServer) -> None:
    async def body() -> None:
        c = await ready_client(server)
        await c.subscribe("/cycle")
        reply = await c.request(c.message("/meta/unsubscribe", subscription="/cycle"))
        assert reply["successful"] is True and reply["subscription"] == "/cycle"
        publisher = await Client.open(server)
        await publisher.handshake()
        await publisher.publish("/cycle", 1)
        assert await c.gather(0.2) == []
        reply = await c.request(c.message("/meta/disconnect"))
        assert reply["successful"] is True
        assert c.client_id not in server.core.sessions
        reply = await c.connect()
        assert reply["error"] == "402::session_unknown"
        await publisher.close()
        await c.close()

    asyncio.run(body())


# =============================================================== bad input

UNMASKED = bytes((0x81, 2)) + b"[]"
OVERSIZE = b"[" + b" " * MAX_MESSAGE_SIZE + b"]"
EURO = "€".encode()

BAD_FRAMES = [
    pytest.param(UNMASKED, 1002, id="unmasked"),
    pytest.param(frame(OP_TEXT, OVERSIZE), 1009, id="frame-over-max-size"),
    pytest.param(
        bytes((0x81, 0xFF)) + (1 << 40).to_bytes(8, "big") + MASK, 1009, id="huge-declared-length"
    ),
    pytest.param(
        frame(OP_TEXT, OVERSIZE[:600], fin=False) + frame(OP_CONT, OVERSIZE[600:]),
        1009,
        id="message-over-max-size",
    ),
    pytest.param(frame(OP_TEXT, b'[{"channel": "/\xff"}]'), 1007, id="invalid-utf8"),
    pytest.param(
        frame(OP_TEXT, b'["' + EURO[:2], fin=False) + frame(OP_CONT, b'x"]'),
        1007,
        id="invalid-utf8-across-fragments",
    ),
    pytest.param(frame(OP_BINARY, b"[]"), 1003, id="binary"),
    pytest.param(frame(OP_TEXT, b"[]", rsv=4), 1002, id="rsv1"),
    pytest.param(frame(OP_TEXT, b"[]", rsv=1), 1002, id="rsv3"),
    pytest.param(frame(3, b"[]"), 1002, id="reserved-data-opcode"),
    pytest.param(frame(0xB, b""), 1002, id="reserved-control-opcode"),
    pytest.param(frame(OP_PING, b"p" * 126), 1002, id="control-over-125"),
    pytest.param(frame(OP_PING, b"p", fin=False), 1002, id="fragmented-control"),
    pytest.param(frame(OP_CONT, b"[]"), 1002, id="continuation-without-start"),
    pytest.param(
        frame(OP_TEXT, b"[", fin=False) + frame(OP_TEXT, b"[]"), 1002, id="interleaved-data"
    ),
    pytest.param(frame(OP_TEXT, b'[{"channel": '), 1011, id="invalid-json"),
    pytest.param(frame(OP_TEXT, b"[]"), 1011, id="empty-array"),
    pytest.param(frame(OP_TEXT, b"[1]"), 1011, id="array-of-non-objects"),
]


@pytest.mark.parametrize("data,code", BAD_FRAMES)
def test_bad_frame_closes_only_that_connection(
    server: BayeuxServer, data: bytes, code: int
) -> None:
    def bad() -> None:
        raw = RawWs(server)
        raw.handshake()
        raw.sock.sendall(data)
        assert raw.close_code()[0] == code
        raw.close()

    bystander_unharmed(server, bad)


@pytest.mark.parametrize(
    "fields,status",
    [
        pytest.param({"key": None}, 400, id="missing-key"),
        pytest.param({"key": "not a key"}, 400, id="bad-key"),
        pytest.param({"key": base64.b64encode(b"x" * 15).decode()}, 400, id="15-byte-key"),
        pytest.param({"version": "8"}, 426, id="version-8"),
        pytest.param({"version": None}, 426, id="missing-version"),
        pytest.param({"origin": "http://evil.example"}, 403, id="origin-not-allowed"),
        pytest.param({"path": "/elsewhere"}, 404, id="wrong-path"),
        pytest.param({"path": "/cometdx"}, 404, id="path-only-prefixed"),
        pytest.param({"method": "POST"}, 400, id="post"),
    ],
)
def test_upgrade_refused(server: BayeuxServer, fields: dict[str, Any], status: int) -> None:
    def bad() -> None:
        got, response = http_exchange(server, upgrade_request(server, **fields))
        assert got == status, response
        head = response.split(b"\r\n\r\n", 1)[0]
        assert b"\r\nUpgrade: websocket" not in head
        if status == 426:
            assert b"\r\nSec-WebSocket-Version: 13\r\n" in head + b"\r\n"

    bystander_unharmed(server, bad)


def test_upgrade_under_the_bayeux_path(server: BayeuxServer) -> None:
    """/cometd/45.0, as Salesforce clients (aiosfstream) open it, like the
    HTTP transports' /cometd/handshake."""
    with socket.create_connection(server.address, timeout=3) as sock:
        request = upgrade_request(server, path=server.options.path + "/45.0")
        sock.sendall(request + text([handshake_message("7")]))
        data = b""
        while b'"id":"7"' not in data:
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
    assert data.startswith(b"HTTP/1.1 101 ") and b'"successful":true' in data


def test_upgrade_variants_accepted(server: BayeuxServer) -> None:
    """Firefox's `Connection: keep-alive, Upgrade`; a first frame in the upgrade's packet."""

    def good() -> None:
        request = upgrade_request(server).replace(
            b"Connection: Upgrade", b"Connection: keep-alive, Upgrade"
        )
        request = request.replace(b"Upgrade: websocket", b"Upgrade: WebSocket")
        with socket.create_connection(server.address, timeout=3) as sock:
            sock.sendall(request + text([handshake_message("5")]))
            data = b""
            while b'"id":"5"' not in data:
                chunk = sock.recv(65536)
                assert chunk, data
                data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 ")
        assert rest[0] == 0x81  # one text frame
        assert b'"successful":true' in rest

    bystander_unharmed(server, good)


@pytest.mark.parametrize(
    "payload,code",
    [
        pytest.param((1000).to_bytes(2, "big"), 1000, id="normal"),
        pytest.param((1001).to_bytes(2, "big") + b"bye", 1001, id="going-away"),
        pytest.param(b"", 1000, id="no-status"),
    ],
)
def test_close_handshake(server: BayeuxServer, payload: bytes, code: int) -> None:
    def good() -> None:
        raw = RawWs(server)
        raw.handshake()
        raw.sock.sendall(frame(OP_CLOSE, payload))
        assert raw.close_code()[0] == code
        raw.close()

    bystander_unharmed(server, good)


@pytest.mark.parametrize(
    "payload,code",
    [
        pytest.param(b"\x03", 1002, id="one-byte-payload"),
        pytest.param((999).to_bytes(2, "big"), 1002, id="code-999"),
        pytest.param((1005).to_bytes(2, "big"), 1002, id="code-1005-never-on-wire"),
        pytest.param((1000).to_bytes(2, "big") + b"\xff\xfe", 1007, id="reason-not-utf8"),
    ],
)
def test_invalid_close_frame(server: BayeuxServer, payload: bytes, code: int) -> None:
    """RFC 6455 5.5.1, 7.4, 8.1: an invalid close frame fails the connection.

    `engine.transport.wsframe.parse_close_payload` returns exactly these codes for these
    payloads ("the code to close with instead"); the connection must use them.
    """

    def bad() -> None:
        raw = RawWs(server)
        raw.handshake()
        raw.sock.sendall(frame(OP_CLOSE, payload))
        assert raw.close_code()[0] == code
        raw.close()

    bystander_unharmed(server, bad)


def test_upgrade_pipelined_behind_held_connect(server: BayeuxServer) -> None:
    """HTTP/1.1 answers pipelined requests in order (RFC 9112 9.3.2).

    A held long-poll connect followed on the same connection by an upgrade:
    the connect's response must come first (the server may then switch or
    refuse); it must not be lost behind the 101.
    """

    def bad() -> None:
        b = Browser(server).ready()
        assert b.cookie is not None
        body = json.dumps([b.connect_message()]).encode()
        post = (
            b"POST /cometd HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Cookie: BAYEUX_BROWSER=%s\r\nContent-Length: %d\r\n\r\n"
            % (b.cookie.encode(), len(body))
        )
        with socket.create_connection(server.address, timeout=4) as sock:
            sock.sendall(post + body + upgrade_request(server))
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        assert data.startswith(b"HTTP/1.1 200 "), data
        b.close()

    bystander_unharmed(server, bad)


def test_upgrade_allowed_origins(server: BayeuxServer) -> None:
    def good() -> None:
        host, port = server.address
        for origin in (ALLOWED_ORIGIN, f"http://{host}:{port}"):
            raw = RawWs(server, origin=origin)  # asserts 101
            raw.handshake()
            raw.close()

    bystander_unharmed(server, good)


def test_peer_vanishes_mid_frame(server: BayeuxServer) -> None:
    def bad() -> None:
        raw = RawWs(server)
        raw.handshake()
        raw.sock.sendall(text([raw.message("/meta/connect", connectionType="websocket")]))
        raw.recv_messages()  # the first connect, at once
        raw.sock.sendall(text([raw.message("/meta/connect", connectionType="websocket")]))
        session = server.core.sessions[raw.client_id]  # type: ignore[index]
        deadline = time.monotonic() + 2
        while session.hold is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert session.hold is not None
        whole = text([raw.message("/x", data="y" * 100)])
        raw.sock.sendall(whole[: len(whole) // 2])
        raw.close()
        deadline = time.monotonic() + 2
        while session.hold is not None or session.sink is not None:
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
        # The hold is dropped and the socket forgotten; the session waits for a reconnect.
        assert session.hold is None and session.sink is None
        assert raw.client_id in server.core.sessions

    bystander_unharmed(server, bad)


def test_ping_flood(server: BayeuxServer) -> None:
    def bad() -> None:
        raw = RawWs(server)
        count = 2000
        raw.sock.sendall(b"".join(frame(OP_PING, b"%08d" % i) for i in range(count)))
        for i in range(count):
            fin, opcode, payload = raw.recv_frame()
            assert (fin, opcode, payload) == (True, OP_PONG, b"%08d" % i)
        raw.sock.sendall(frame(OP_PING, b"m" * 125))  # the largest control payload
        assert raw.recv_frame() == (True, OP_PONG, b"m" * 125)
        raw.handshake()  # the connection still works
        raw.close()

    bystander_unharmed(server, bad)


def test_fragmented_message_accepted(server: BayeuxServer) -> None:
    def good() -> None:
        raw = RawWs(server)
        payload = json.dumps([handshake_message(raw.next_id())]).encode()
        raw.sock.sendall(
            frame(OP_TEXT, payload[:10], fin=False)
            + frame(OP_PING, b"between")  # control frames may come between fragments
            + frame(OP_CONT, payload[10:30], fin=False)
            + frame(OP_CONT, payload[30:])
        )
        assert raw.recv_frame() == (True, OP_PONG, b"between")
        (reply,) = raw.recv_messages()
        assert reply["channel"] == "/meta/handshake" and reply["successful"] is True
        raw.client_id = reply["clientId"]
        raw.request(raw.message("/meta/subscribe", subscription="/frag"))
        publish = json.dumps([raw.message("/frag", data="€uro")], ensure_ascii=False).encode()
        cut = publish.index(EURO) + 1  # inside the 3-byte code point
        for piece in (
            frame(OP_TEXT, publish[:cut], fin=False),
            frame(OP_CONT, publish[cut : cut + 1], fin=False),
            frame(OP_CONT, publish[cut + 1 :]),
        ):
            raw.sock.sendall(piece)
            time.sleep(0.02)  # separate reads on the server
        event = {"channel": "/frag", "data": "€uro"}
        received = raw.recv_messages()
        while event not in received or not any(m.get("successful") for m in received):
            received += raw.recv_messages()  # (the socket times out after 5 s)
        assert received.count(event) == 1
        raw.close()

    bystander_unharmed(server, good)


def test_websocket_not_allowed() -> None:
    with running_server(**FAST, allowed_transports="long-polling") as srv:
        status, response = http_exchange(srv, upgrade_request(srv))
        assert status == 400, response
        b = Browser(srv)
        reply = b.handshake().reply("/meta/handshake")
        assert reply["successful"] is True
        assert reply["supportedConnectionTypes"] == ["long-polling"]
        # The long-polling session works.
        assert b.connect(advice={"timeout": 0}).reply("/meta/connect")["successful"] is True
        b.close()


# ============================================================ slow reader


def test_slow_reader_is_bounded() -> None:
    """A client that stops reading costs at most max_queue messages plus a socket buffer."""
    total, per_frame, max_queue = 5000, 20, 100
    with running_server(
        **FAST, max_queue=max_queue, max_message_size=65536, meta_connect_deliver_only=False
    ) as srv:
        slow = RawWs(srv, rcvbuf=4096)
        slow.handshake()
        slow.request(slow.message("/meta/subscribe", subscription="/flood"))
        slow.request(slow.message("/meta/connect", connectionType="websocket"))
        slow_id = slow.client_id
        assert slow_id is not None
        # Small kernel buffers on both ends, so that whatever the host's TCP
        # autotuning, most of the flood has to wait in the server.
        conn = srv.core.sessions[slow_id].sink
        assert conn is not None and conn.transport is not None
        conn.transport.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 65536
        )

        async def flood() -> tuple[int, int]:
            # The well-behaved client buffers whatever arrives (no client-side limit).
            good = await ready_client(srv, max_queue=None)
            await good.subscribe("/flood")
            publisher = await Client.open(srv)
            await publisher.handshake()
            received: list[int] = []

            async def read_good() -> None:
                while len(received) < total:
                    received.append((await good.event("/flood", timeout=10))["data"]["n"])

            reader = asyncio.create_task(read_good())
            pad = "x" * 1000
            most_queued = biggest_buffer = 0
            for start in range(0, total, per_frame):
                batch = [
                    {
                        "channel": "/flood",
                        "clientId": publisher.client_id,
                        "data": {"n": n, "pad": pad},
                    }
                    for n in range(start, start + per_frame)
                ]
                batch[-1]["id"] = last = publisher.next_id()
                await publisher.send(*batch)
                await publisher.reply(last)
                publisher.inbox.clear()
                session = srv.core.sessions[slow_id]
                most_queued = max(most_queued, len(session.queue or ()))
                ws = session.sink
                if ws is not None and ws.transport is not None:
                    biggest_buffer = max(biggest_buffer, ws.transport.get_write_buffer_size())
            await asyncio.wait_for(reader, 20)
            assert received == list(range(total))  # the good client lost nothing
            assert srv.core.sessions[good.client_id].dropped == 0  # type: ignore[index]
            await good.close()
            await publisher.close()
            return most_queued, biggest_buffer

        most_queued, biggest_buffer = asyncio.run(flood())
        session = srv.core.sessions[slow_id]
        assert most_queued <= max_queue
        assert srv.core.stats.dropped_queue_full > 0
        assert session.dropped > 0
        # What is not in the queue sits in the transport's buffer: about the
        # high-water mark plus one frame of at most max_queue messages.
        assert biggest_buffer <= 64 * 1024 + max_queue * 1100 + 16 * 1024, biggest_buffer

        # The slow reader catches up: the newest messages, in order, and
        # nothing lost silently (every missing one was counted as dropped).
        seen: list[int] = []
        while not seen or seen[-1] != total - 1:
            for m in slow.recv_messages():
                if m.get("channel") == "/flood" and is_event(m):
                    seen.append(m["data"]["n"])
        assert seen == sorted(seen) and len(set(seen)) == len(seen)
        assert len(seen) + session.dropped == total
        # And the connection is usable again.
        reply = slow.request(slow.message("/flood", data={"n": -1, "pad": ""}))
        assert any(m.get("channel") == "/flood" and m.get("successful") for m in reply)
        slow.close()
