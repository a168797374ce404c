"""The client side of RFC 6455, as small as the bench needs it.

- ``upgrade_request`` / ``check_upgrade_response``: the opening handshake
  (``GET`` with ``Upgrade: websocket``, ``101`` with the right
  ``Sec-WebSocket-Accept``);
- ``client_frame``: a masked client frame (``engine.transport._wsframe.encode_client_frame``
  when the engine is importable, else the plain-Python masking below), with a
  fresh ``os.urandom(4)`` mask each time;
- ``split_frames``: the complete server frames (never masked) at the front of a
  buffer, plus the unparsed rest. It keeps no state, so a connection that holds
  nothing between frames (the idle case) holds no parser object either; a
  caller keeps the chunks of a fragmented message only while one is in
  progress.

The server side's ``engine.transport._wsframe.FrameParser`` cannot be reused: it requires
every frame to be masked, as a server must.
"""

from __future__ import annotations

import base64
import hashlib
import os

from engine.transport._wsframe import encode_client_frame as _encode_client_frame

__all__ = [
    "OP_CONT",
    "OP_TEXT",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_PING",
    "OP_PONG",
    "FrameError",
    "accept_for",
    "check_upgrade_response",
    "client_frame",
    "close_frame",
    "new_key",
    "split_frames",
    "upgrade_request",
]

OP_CONT = 0
OP_TEXT = 1
OP_BINARY = 2
OP_CLOSE = 8
OP_PING = 9
OP_PONG = 10

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: Largest server message accepted (the engine's default limit is 64 KiB).
MAX_MESSAGE = 16 << 20


class FrameError(Exception):
    """The server broke the framing rules (the connection is dropped)."""


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One masked, final client frame (a fresh random mask per frame)."""
    return bytes(_encode_client_frame(opcode, payload, os.urandom(4)))


def close_frame(code: int = 1000) -> bytes:
    return client_frame(OP_CLOSE, code.to_bytes(2, "big"))


def new_key() -> bytes:
    return base64.b64encode(os.urandom(16))


def accept_for(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


def upgrade_request(path: bytes, host: bytes, key: bytes, extra: bytes = b"") -> bytes:
    return (
        b"GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n%s\r\n" % (path, host, key, extra)
    )


def check_upgrade_response(head: bytes, key: bytes) -> str | None:
    """None when ``head`` (up to and without the blank line) accepts the
    upgrade for ``key``; otherwise why not."""
    lines = head.split(b"\r\n")
    status = lines[0].split(None, 2)
    if len(status) < 2 or not status[0].startswith(b"HTTP/1."):
        return "bad_status_line"
    if status[1] != b"101":
        return "http_" + status[1].decode("latin-1", "replace")
    want = accept_for(key)
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == b"sec-websocket-accept":
            return None if value.strip() == want else "bad_accept"
    return "no_accept"


def split_frames(data: bytes, max_size: int = MAX_MESSAGE) -> tuple[list[tuple[int, bytes]], bytes]:
    """The complete frames at the front of ``data`` and what is left.

    Each frame is ``(first byte, payload)``: FIN is ``first & 0x80``, the
    opcode ``first & 0x0F``. Raises ``FrameError`` on a masked frame, reserved
    bits, or a frame over ``max_size``.
    """
    out: list[tuple[int, bytes]] = []
    pos = 0
    n = len(data)
    # bounded: every iteration consumes one whole frame (>= 2 bytes) or stops
    while n - pos >= 2:
        b0 = data[pos]
        b1 = data[pos + 1]
        if b1 & 0x80:
            raise FrameError("masked server frame")
        if b0 & 0x70:
            raise FrameError("reserved bits set")
        length = b1 & 0x7F
        start = pos + 2
        if length == 126:
            if n - pos < 4:
                break
            length = (data[pos + 2] << 8) | data[pos + 3]
            start = pos + 4
        elif length == 127:
            if n - pos < 10:
                break
            length = int.from_bytes(data[pos + 2 : pos + 10], "big")
            start = pos + 10
        if length > max_size:
            raise FrameError("frame too big")
        end = start + length
        if end > n:
            break
        out.append((b0, data[start:end]))
        pos = end
    if pos == 0:
        return out, data
    return out, data[pos:] if pos < n else b""
