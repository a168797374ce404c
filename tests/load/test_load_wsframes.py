"""engine/load/wsframes.py: the load generator's WebSocket frames (server
frames split anywhere, client frames masked, the upgrade checked)."""

from __future__ import annotations

import pytest

from engine.load import wsframes as ws
from engine.transport._wsframe import FrameParser


def test_ws_client_frames() -> None:
    # Server frames are never masked: 7-bit, 16-bit and 64-bit lengths, split anywhere.
    small, mid, big = b"a" * 5, b"b" * 300, b"c" * 70000
    stream = (
        bytes([0x81, 5]) + small
        + bytes([0x81, 126]) + len(mid).to_bytes(2, "big") + mid
        + bytes([0x01, 127]) + len(big).to_bytes(8, "big") + big
        + bytes([0x80, 1]) + b"!"
        + bytes([0x89, 0])
    )  # fmt: skip
    for cut in (1, 3, 7, 200, len(stream) - 1):
        frames, rest = ws.split_frames(stream[:cut])
        more, rest = ws.split_frames(rest + stream[cut:])
        got = frames + more
        assert rest == b""
        assert [(f & 0x80, f & 0x0F) for f, _ in got] == [
            (0x80, 1), (0x80, 1), (0, 1), (0x80, 0), (0x80, 9)
        ]  # fmt: skip
        assert [p for _, p in got] == [small, mid, big, b"!", b""]
    with pytest.raises(ws.FrameError):
        ws.split_frames(bytes([0x81, 0x85]) + b"mask" + small)  # masked server frame
    with pytest.raises(ws.FrameError):
        ws.split_frames(bytes([0xC1, 1]) + b"x")  # RSV1 without an extension
    # Client frames are masked and decode back (the engine's own parser checks).
    parser = FrameParser(1 << 20)
    assert parser.feed(ws.client_frame(ws.OP_TEXT, b'[{"x":1}]')) == [(1, b'[{"x":1}]')]
    assert ws.client_frame(ws.OP_TEXT, b"abc")[1] & 0x80
    key = ws.new_key()
    head = b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: " + ws.accept_for(key)
    assert ws.check_upgrade_response(head, key) is None
    assert ws.check_upgrade_response(b"HTTP/1.1 400 Bad Request", key) == "http_400"
    assert ws.check_upgrade_response(head, ws.new_key()) == "bad_accept"
