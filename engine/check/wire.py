"""The wire under `engine check`: a minimal HTTP/1.1 client and a raw
WebSocket client on asyncio streams.

The checks speak through these on purpose rather than through a Bayeux client
library: a client library filters (drops unknown replies, retries, reorders)
and would hide exactly the server bugs the suite looks for.  Everything is
bounded: header and body sizes, frame sizes, and every read has a timeout.
Each request and response is written to the check's `Exchange`.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import os
import ssl
import struct
from urllib.parse import urlsplit

from engine.check.report import Exchange
from engine.transport._wsframe import (
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    accept_key,
    encode_client_frame,
)

__all__ = [
    "MAX_BODY",
    "Endpoint",
    "WireError",
    "Response",
    "HttpConnection",
    "WebSocket",
    "WebSocketClosed",
    "read_frame",
    "cookie_pairs",
]

MAX_HEADER = 64 * 1024
MAX_BODY = 8 * 1024 * 1024
MAX_FRAME = 8 * 1024 * 1024
LOOPBACK_NAMES = ("localhost", "localhost.", "ip6-localhost")


class WireError(Exception):
    """The peer closed, timed out or sent something that is not HTTP/WebSocket."""


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """Where the server under test is: `http://host:port/path` (or https)."""

    scheme: str
    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http:// or https:// URL: {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return cls(parts.scheme, parts.hostname, port, parts.path.rstrip("/") or "")

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.path}"

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def is_loopback(self) -> bool:
        """127.0.0.0/8, ::1 or localhost: no other machine is touched."""
        import ipaddress

        if self.host.lower() in LOOPBACK_NAMES:
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    async def open(self, timeout: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        context = ssl.create_default_context() if self.scheme == "https" else None
        try:
            return await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, ssl=context, limit=MAX_HEADER),
                timeout,
            )
        except TimeoutError as exc:
            raise WireError(f"no TCP connection within {timeout:.1f} s") from exc
        except OSError as exc:
            raise WireError(f"cannot connect: {exc.strerror or exc}") from exc


@dataclasses.dataclass
class Response:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    def all_headers(self, name: str) -> list[str]:
        name = name.lower()
        return [value for key, value in self.headers if key.lower() == name]

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def cookie_pairs(set_cookie: str) -> tuple[str, str, dict[str, str]]:
    """`name=value; Path=/; HttpOnly` as (name, value, {attribute: value})."""
    first, *attrs = (part.strip() for part in set_cookie.split(";"))
    name, _, value = first.partition("=")
    attributes = {}
    for attr in attrs:
        key, _, val = attr.partition("=")
        attributes[key.strip().lower()] = val.strip()
    return name.strip(), value.strip(), attributes


async def _read_head(reader: asyncio.StreamReader, timeout: float) -> tuple[str, list[str]]:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    except TimeoutError as exc:
        raise WireError(f"no response within {timeout:.1f} s") from exc
    except asyncio.IncompleteReadError as exc:
        raise WireError("connection closed before a complete response head") from exc
    except asyncio.LimitOverrunError as exc:
        raise WireError(f"response head over {MAX_HEADER} bytes") from exc
    lines = head.decode("latin-1").split("\r\n")
    return lines[0], [line for line in lines[1:] if line]


async def _read_body(
    reader: asyncio.StreamReader, headers: list[tuple[str, str]], timeout: float
) -> tuple[bytes, bool]:
    """The body, and whether the connection can be used again."""
    fields = {k.lower(): v for k, v in headers}
    try:
        if "chunked" in fields.get("transfer-encoding", "").lower():
            chunks = bytearray()
            while True:
                size_line = await asyncio.wait_for(reader.readuntil(b"\r\n"), timeout)
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    await asyncio.wait_for(reader.readuntil(b"\r\n"), timeout)
                    return bytes(chunks), True
                if len(chunks) + size > MAX_BODY:
                    raise WireError(f"response body over {MAX_BODY} bytes")
                chunks += await asyncio.wait_for(reader.readexactly(size + 2), timeout)
                del chunks[-2:]
        if "content-length" in fields:
            length = int(fields["content-length"])
            if length > MAX_BODY:
                raise WireError(f"response body over {MAX_BODY} bytes")
            return await asyncio.wait_for(reader.readexactly(length), timeout), True
        body = await asyncio.wait_for(reader.read(MAX_BODY), timeout)
        return body, False
    except TimeoutError as exc:
        raise WireError(f"response body not complete within {timeout:.1f} s") from exc
    except asyncio.IncompleteReadError as exc:
        raise WireError("connection closed in the middle of the response body") from exc
    except (ValueError, asyncio.LimitOverrunError) as exc:
        raise WireError(f"malformed response body framing: {exc}") from exc


class HttpConnection:
    """One keep-alive HTTP/1.1 connection; reopened when the server closed it."""

    def __init__(self, endpoint: Endpoint, exchange: Exchange, label: str = "") -> None:
        self.endpoint = endpoint
        self.exchange = exchange
        self.label = label
        self.busy = False
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(
        self,
        method: str,
        target: str,
        body: bytes | None = None,
        *,
        headers: dict[str, str] | None = None,
        timeout: float,
    ) -> Response:
        if self._writer is None or self._writer.is_closing():
            self._reader, self._writer = await self.endpoint.open(timeout)
        assert self._reader is not None and self._writer is not None
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.endpoint.host_header}"]
        for key, value in (headers or {}).items():
            lines.append(f"{key}: {value}")
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")
        tag = f"[{self.label}] " if self.label else ""
        shown = {k: v for k, v in (headers or {}).items() if k.lower() == "cookie"}
        self.exchange.sent(
            f"{tag}{method} {target}"
            + (f" {shown}" if shown else "")
            + (f" {body.decode('utf-8', 'replace')}" if body else "")
        )
        try:
            self._writer.write(raw)
            await asyncio.wait_for(self._writer.drain(), timeout)
            status_line, header_lines = await _read_head(self._reader, timeout)
            parts = status_line.split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
                raise WireError(f"not an HTTP status line: {status_line[:200]!r}")
            fields = []
            for line in header_lines:
                key, sep, value = line.partition(":")
                if not sep:
                    raise WireError(f"malformed header line: {line[:200]!r}")
                fields.append((key.strip(), value.strip()))
            body_bytes, reusable = await _read_body(self._reader, fields, timeout)
        except (WireError, OSError, TimeoutError) as exc:
            self.close()
            message = str(exc) if isinstance(exc, WireError) else f"{type(exc).__name__}: {exc}"
            self.exchange.note(f"{tag}{message}")
            raise WireError(message) from exc
        response = Response(int(parts[1]), parts[2] if len(parts) > 2 else "", fields, body_bytes)
        interesting = [
            f"{k}: {v}"
            for k, v in fields
            if k.lower() in ("content-type", "set-cookie", "location", "connection")
        ]
        self.exchange.received(
            f"{tag}{response.status} {'; '.join(interesting)} {response.text}".rstrip()
        )
        connection = (response.header("connection") or "").lower()
        if not reusable or connection == "close":
            self.close()
        return response

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


class WebSocketClosed(WireError):
    """The server closed the WebSocket; `code` is its close code (1005 if none)."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"WebSocket closed by the server with code {code} {reason}".rstrip())
        self.code = code


async def read_frame(reader: asyncio.StreamReader) -> tuple[bool, int, bytes]:
    """One WebSocket frame, masked or not: (fin, opcode, payload)."""
    first, second = await reader.readexactly(2)
    length = second & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", await reader.readexactly(2))
    elif length == 127:
        (length,) = struct.unpack("!Q", await reader.readexactly(8))
    if length > MAX_FRAME:
        raise WireError(f"WebSocket frame over {MAX_FRAME} bytes")
    mask = await reader.readexactly(4) if second & 0x80 else b""
    payload = await reader.readexactly(length)
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bool(first & 0x80), first & 0x0F, payload


class WebSocket:
    """A raw client WebSocket (RFC 6455) carrying Bayeux text frames."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        exchange: Exchange,
        set_cookies: list[str],
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.exchange = exchange
        self.set_cookies = set_cookies

    @classmethod
    async def connect(
        cls, endpoint: Endpoint, exchange: Exchange, *, cookie: str | None, timeout: float
    ) -> WebSocket:
        reader, writer = await endpoint.open(timeout)
        key = base64.b64encode(os.urandom(16))
        lines = [
            f"GET {endpoint.path or '/'} HTTP/1.1",
            f"Host: {endpoint.host_header}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key.decode()}",
            "Sec-WebSocket-Version: 13",
        ]
        if cookie:
            lines.append(f"Cookie: {cookie}")
        exchange.sent(f"[ws] GET {endpoint.path or '/'} Upgrade: websocket")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        try:
            status_line, header_lines = await _read_head(reader, timeout)
        except WireError as exc:
            writer.close()
            exchange.note(f"[ws] {exc}")
            raise
        exchange.received(f"[ws] {status_line}")
        fields = [tuple(p.strip() for p in line.split(":", 1)) for line in header_lines]
        headers = {f[0].lower(): f[1] for f in fields if len(f) == 2}
        if status_line.split(" ")[1:2] != ["101"]:
            writer.close()
            raise WireError(f"WebSocket upgrade refused: {status_line}")
        if headers.get("sec-websocket-accept", "").encode() != accept_key(key):
            writer.close()
            raise WireError("WebSocket upgrade answered with a wrong Sec-WebSocket-Accept")
        set_cookies = [f[1] for f in fields if len(f) == 2 and f[0].lower() == "set-cookie"]
        return cls(reader, writer, exchange, set_cookies)

    async def send_text(self, text: str) -> None:
        self.exchange.sent(f"[ws] {text}")
        self._writer.write(encode_client_frame(OP_TEXT, text.encode(), os.urandom(4)))
        await self._writer.drain()

    async def receive_text(self, timeout: float) -> str:
        """The next text message; pings are answered, a close raises."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        parts: list[bytes] = []
        for _ in range(10_000):  # bounded: a flood of control frames ends here
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                fin, opcode, payload = await asyncio.wait_for(read_frame(self._reader), remaining)
            except TimeoutError:
                break
            except (asyncio.IncompleteReadError, OSError) as exc:
                self.exchange.note("[ws] connection closed without a close frame")
                raise WebSocketClosed(1006, "(no close frame)") from exc
            if opcode == OP_PING:
                self._writer.write(encode_client_frame(OP_PONG, payload, os.urandom(4)))
                continue
            if opcode == OP_CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                self.exchange.note(f"[ws] close frame {code}")
                raise WebSocketClosed(code, payload[2:].decode("utf-8", "replace"))
            if opcode == OP_PONG:
                continue
            parts.append(payload)
            if fin:
                text = b"".join(parts).decode("utf-8", "replace")
                self.exchange.received(f"[ws] {text}")
                return text
        self.exchange.note(f"[ws] no frame within {timeout:.1f} s")
        raise WireError(f"no WebSocket message within {timeout:.1f} s")

    def abort(self) -> None:
        """Drop the TCP connection without a close frame, like a lost network."""
        self._writer.transport.abort()

    def close(self) -> None:
        try:
            self._writer.write(encode_client_frame(OP_CLOSE, b"\x03\xe8", os.urandom(4)))
        except (OSError, RuntimeError):
            pass
        self._writer.close()
