"""A Bayeux WebSocket client for the tests: the websockets-library client,
raw frames on a socket, and the bystander check (a second client is still
served after a bad input)."""

from __future__ import annotations

import asyncio
import base64
import inspect
import json
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import websockets

from engine import BayeuxServer
from engine.transport._wsframe import (
    OP_CLOSE,
    OP_TEXT,
    accept_key,
    encode_client_frame,
)

MASK = b"\x1f\x8b\x3c\xd2"

Message = dict[str, Any]


def ws_url(server: BayeuxServer, suffix: str = "") -> str:
    host, port = server.address
    return f"ws://{host}:{port}{server.options.path}{suffix}"


def handshake_message(message_id: str = "1") -> Message:
    return {
        "channel": "/meta/handshake",
        "version": "1.0",
        "minimumVersion": "1.0",
        "supportedConnectionTypes": ["websocket", "long-polling"],
        "id": message_id,
    }


def is_event(message: Message) -> bool:
    return "successful" not in message


class Client:
    """A Bayeux client on one `websockets` connection.

    Received messages go to `inbox`; `expect` takes out the first that
    matches, reading more frames until it turns up.
    """

    def __init__(self, ws: Any, cookie: str | None = None) -> None:
        self.ws = ws
        self.client_id: str | None = None
        self.inbox: list[Message] = []
        self.frames: list[list[Message]] = []
        self._ids = 0
        # The BAYEUX_BROWSER cookie of this socket: the one it was opened
        # with, or the one the server set with the 101 (as a browser keeps it).
        self.cookie = cookie
        set_cookie = ws.response.headers.get("Set-Cookie") if ws.response else None
        if set_cookie and set_cookie.startswith("BAYEUX_BROWSER="):
            self.cookie = set_cookie.split(";", 1)[0].split("=", 1)[1]

    @classmethod
    async def open(cls, server: BayeuxServer, cookie: str | None = None, **kwargs: Any) -> Client:
        """A new socket; `cookie`: the browser's BAYEUX_BROWSER, to resume its sessions."""
        if cookie is not None:
            kwargs["additional_headers"] = {"Cookie": f"BAYEUX_BROWSER={cookie}"}
        return cls(await websockets.connect(ws_url(server), **kwargs), cookie)

    def next_id(self) -> str:
        self._ids += 1
        return str(self._ids)

    def message(self, channel: str, **fields: Any) -> Message:
        return {"channel": channel, "clientId": self.client_id, "id": self.next_id(), **fields}

    def connect_message(self, **fields: Any) -> Message:
        return self.message("/meta/connect", connectionType="websocket", **fields)

    async def send(self, *messages: Message) -> None:
        await self.ws.send(json.dumps(list(messages)))

    async def read_frame(self, timeout: float) -> list[Message]:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        assert isinstance(raw, str), f"expected a text frame, got {raw!r}"
        value = json.loads(raw)
        assert isinstance(value, list) and value, f"a frame must hold a JSON array: {raw}"
        self.frames.append(value)
        self.inbox.extend(value)
        return value

    async def expect(self, match: Callable[[Message], bool], timeout: float = 3.0) -> Message:
        deadline = time.monotonic() + timeout
        while True:
            for index, message in enumerate(self.inbox):
                if match(message):
                    return self.inbox.pop(index)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no matching message within {timeout}s; got {self.inbox}")
            try:
                await self.read_frame(remaining)
            except TimeoutError:
                raise AssertionError(
                    f"no matching message within {timeout}s; got {self.inbox}"
                ) from None

    async def reply(self, message_id: str, timeout: float = 3.0) -> Message:
        return await self.expect(lambda m: m.get("id") == message_id and not is_event(m), timeout)

    async def event(self, channel: str, timeout: float = 3.0) -> Message:
        return await self.expect(lambda m: m.get("channel") == channel and is_event(m), timeout)

    async def gather(self, duration: float) -> list[Message]:
        """Everything in the inbox plus whatever arrives within `duration`."""
        deadline = time.monotonic() + duration
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                await self.read_frame(remaining)
            except TimeoutError:
                break
        taken, self.inbox = self.inbox, []
        return taken

    async def request(self, message: Message, timeout: float = 3.0) -> Message:
        await self.send(message)
        return await self.reply(message["id"], timeout)

    async def handshake(self) -> Message:
        reply = await self.request(handshake_message(self.next_id()))
        assert reply["successful"] is True, reply
        self.client_id = reply["clientId"]
        return reply

    async def connect(self, **fields: Any) -> Message:
        return await self.request(self.connect_message(**fields))

    async def ready(self) -> Client:
        """Handshake and the first (immediate) connect."""
        await self.handshake()
        assert (await self.connect())["successful"] is True
        return self

    async def subscribe(self, subscription: Any) -> Message:
        reply = await self.request(self.message("/meta/subscribe", subscription=subscription))
        assert reply["successful"] is True, reply
        return reply

    async def publish(self, channel: str, data: Any, **fields: Any) -> Message:
        reply = await self.request(self.message(channel, data=data, **fields))
        assert reply["successful"] is True, reply
        return reply

    async def close(self) -> None:
        await self.ws.close()


async def ready_client(server: BayeuxServer, **kwargs: Any) -> Client:
    return await (await Client.open(server, **kwargs)).ready()


def upgrade_request(
    server: BayeuxServer,
    *,
    method: str = "GET",
    path: str | None = None,
    key: str | None = "dGhlIHNhbXBsZSBub25jZQ==",
    version: str | None = "13",
    origin: str | None = None,
) -> bytes:
    host, port = server.address
    lines = [
        f"{method} {server.options.path if path is None else path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
    ]
    if key is not None:
        lines.append(f"Sec-WebSocket-Key: {key}")
    if version is not None:
        lines.append(f"Sec-WebSocket-Version: {version}")
    if origin is not None:
        lines.append(f"Origin: {origin}")
    if method == "POST":
        lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def http_exchange(server: BayeuxServer, data: bytes, timeout: float = 3.0) -> tuple[int, bytes]:
    """Send raw bytes; (status, whole response). The server must close the connection."""
    with socket.create_connection(server.address, timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            chunk = sock.recv(65536)  # a timeout here means the server kept it open
            if not chunk:
                break
            chunks.append(chunk)
    response = b"".join(chunks)
    return int(response.split(b" ", 2)[1]), response


def frame(opcode: int, payload: bytes, fin: bool = True, rsv: int = 0) -> bytes:
    return encode_client_frame(opcode, payload, MASK, fin, rsv)


def text(messages: list[Message]) -> bytes:
    return frame(OP_TEXT, json.dumps(messages).encode())


class RawWs:
    """A WebSocket client on a blocking socket, for bytes `websockets` will not send."""

    def __init__(
        self, server: BayeuxServer, rcvbuf: int | None = None, origin: str | None = None
    ) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(5)
        self.sock.connect(server.address)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(upgrade_request(server, key=key, origin=origin))
        self.buf = bytearray()
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(4096)
            assert chunk, f"closed during the upgrade: {bytes(self.buf)!r}"
            self.buf += chunk
        end = self.buf.index(b"\r\n\r\n") + 4
        head = bytes(self.buf[:end])
        del self.buf[:end]
        assert head.startswith(b"HTTP/1.1 101 "), head
        assert b"\r\nSec-WebSocket-Accept: " + accept_key(key.encode()) + b"\r\n" in head
        self.client_id: str | None = None
        self._ids = 0

    def next_id(self) -> str:
        self._ids += 1
        return str(self._ids)

    def _exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed by the server")
            self.buf += chunk
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def recv_frame(self) -> tuple[bool, int, bytes]:
        """One server frame: (fin, opcode, payload). Server frames are never masked."""
        b0, b1 = self._exact(2)
        assert not b0 & 0x70, "server frame with reserved bits"
        assert not b1 & 0x80, "server frames must not be masked"
        length = b1 & 0x7F
        if length == 126:
            length = int.from_bytes(self._exact(2), "big")
        elif length == 127:
            length = int.from_bytes(self._exact(8), "big")
        return bool(b0 & 0x80), b0 & 0x0F, self._exact(length)

    def recv_messages(self) -> list[Message]:
        fin, opcode, payload = self.recv_frame()
        assert fin and opcode == OP_TEXT, (fin, opcode, payload)
        value = json.loads(payload)
        assert isinstance(value, list), value
        return value

    def request(self, message: Message) -> list[Message]:
        """Send one message; read frames until its reply; return everything read."""
        self.sock.sendall(text([message]))
        seen: list[Message] = []
        while not any(m.get("id") == message["id"] and not is_event(m) for m in seen):
            seen.extend(self.recv_messages())
        return seen

    def handshake(self) -> None:
        (reply,) = self.request(handshake_message(self.next_id()))
        assert reply["successful"] is True, reply
        self.client_id = reply["clientId"]

    def message(self, channel: str, **fields: Any) -> Message:
        return {"channel": channel, "clientId": self.client_id, "id": self.next_id(), **fields}

    def close_code(self) -> tuple[int, str]:
        """Read up to the server's close frame; the server then closes the TCP connection."""
        while True:
            _, opcode, payload = self.recv_frame()
            if opcode == OP_CLOSE:
                break
        assert len(payload) >= 2, payload
        code = int.from_bytes(payload[:2], "big")
        try:
            tail = self.sock.recv(65536)
        except ConnectionResetError:
            tail = b""
        assert tail == b"" and not self.buf, "the server did not close after its close frame"
        return code, payload[2:].decode()

    def close(self) -> None:
        self.sock.close()


async def _with_bystander(server: BayeuxServer, bad: Callable[[], Any]) -> None:
    watcher = await ready_client(server)
    await watcher.subscribe("/bystander")
    held = watcher.connect_message()
    await watcher.send(held)  # held: not the first connect
    held_at = time.monotonic()
    if inspect.iscoroutinefunction(bad):
        await bad()
    else:
        await asyncio.to_thread(bad)
    publisher = await Client.open(server)
    await publisher.handshake()
    assert (await publisher.publish("/bystander", "still here"))["successful"] is True
    event = await watcher.event("/bystander")
    assert event["data"] == "still here"
    if time.monotonic() - held_at < 1.2:  # (its timeout is 1.5 s)
        # The held connect is still held: events do not end it on WebSocket.
        assert not any(m.get("id") == held["id"] for m in watcher.inbox)
    await publisher.close()
    await watcher.close()


def bystander_unharmed(server: BayeuxServer, bad: Callable[[], Any]) -> None:
    asyncio.run(_with_bystander(server, bad))
