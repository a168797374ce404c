"""RFC 6455 frame codec (the server side of the WebSocket transport).

Every table test runs on both implementations: the compiled `engine.transport._wsframe`
and its pure-Python twin `tests/oracles/wsframe.py`. Hypothesis then checks that the two
agree on random streams (valid and corrupted, under random chunking), that
client frames round-trip, and the `websockets` library checks both directions
of the wire format independently of our own encoder and parser.
"""

from __future__ import annotations

import gc
import os
import sys
import tracemalloc
from collections.abc import Iterable, Sequence
from types import ModuleType

import oracles.wsframe as reference
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.frames import Close, Frame, Opcode
from websockets.streams import StreamReader

import engine.transport._wsframe as compiled
from engine.transport._wsframe import WebSocketError

IMPLS = [
    pytest.param(compiled, id="compiled"),
    pytest.param(reference, id="python"),
]

MASK = b"\x37\xfa\x21\x3d"
Event = tuple[int, bytes]
Outcome = tuple[list[Event], tuple[int, str] | None]

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(params=IMPLS)
def ws(request: pytest.FixtureRequest) -> ModuleType:
    module: ModuleType = request.param
    return module


def cframe(opcode: int, payload: bytes, fin: bool = True, rsv: int = 0) -> bytes:
    """A masked client frame from the reference encoder (checked against websockets below)."""
    return reference.encode_client_frame(opcode, payload, MASK, fin, rsv)


def run(ws: ModuleType, chunks: Iterable[bytes], max_size: int = 1 << 20) -> Outcome:
    """Feed ``chunks``; all events, plus ``(code, reason)`` if the stream was refused."""
    parser = ws.FrameParser(max_size)
    events: list[Event] = []
    for chunk in chunks:
        try:
            events.extend(parser.feed(chunk))
        except WebSocketError as exc:
            events.extend(exc.events)
            return events, (exc.code, exc.reason)
    return events, None


def split(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = sorted({min(max(c, 0), len(data)) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def ws_parse(data: bytes, count: int) -> list[Frame]:
    """Parse ``count`` unmasked server frames with the websockets library."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    frames = []
    for _ in range(count):
        parser = Frame.parse(reader.read_exact, mask=False)
        try:
            next(parser)
        except StopIteration as stop:
            frames.append(stop.value)
        else:
            raise AssertionError("websockets wanted more bytes")
    return frames


# --- module surface ----------------------------------------------------------


def test_same_surface() -> None:
    assert compiled.__all__ == reference.__all__
    for name in reference.__all__:
        value = getattr(reference, name)
        if isinstance(value, int):
            assert getattr(compiled, name) == value, name
    assert compiled.WebSocketError is reference.WebSocketError
    assert (reference.OP_CONT, reference.OP_TEXT, reference.OP_BINARY) == (0, 1, 2)
    assert (reference.OP_CLOSE, reference.OP_PING, reference.OP_PONG) == (8, 9, 10)
    assert reference.CLOSE_PROTOCOL_ERROR == 1002
    assert reference.CLOSE_INVALID_DATA == 1007
    assert reference.CLOSE_TOO_BIG == 1009


def test_error_shape() -> None:
    exc = WebSocketError(1002, "bad")
    assert (exc.code, exc.reason, exc.events) == (1002, "bad", [])
    assert str(exc) == "1002 bad"


# --- opening handshake --------------------------------------------------------


def test_accept_key_rfc_example(ws: ModuleType) -> None:
    # RFC 6455 section 1.3.
    assert ws.accept_key(b"dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@pytest.mark.parametrize(
    ("key", "ok"),
    [
        (b"dGhlIHNhbXBsZSBub25jZQ==", True),
        (b"AAAAAAAAAAAAAAAAAAAAAA==", True),
        (b"dGhlIHNhbXBsZSBub25jZQ=", False),  # 23 chars
        (b"dGhlIHNhbXBsZSBub25jZQ", False),
        (b"dGhlIHNhbXBsZSBub25jZR==", False),  # non-canonical trailing bits
        (b"dGhlIHNhbXBsZSBub25j!Q==", False),
        (b"dGhlIHNhbXBsZSBub25jZQ==\n", False),
        (b"dGhlIHNhbXBsZSBub25jZXM=", False),  # 17 bytes
        (b"", False),
    ],
)
def test_valid_client_key(ws: ModuleType, key: bytes, ok: bool) -> None:
    assert ws.valid_client_key(key) is ok


# --- encoding ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "header"),
    [
        (0, b"\x81\x00"),
        (125, b"\x81\x7d"),
        (126, b"\x81\x7e\x00\x7e"),
        (65535, b"\x81\x7e\xff\xff"),
        (65536, b"\x81\x7f\x00\x00\x00\x00\x00\x01\x00\x00"),
        (70000, b"\x81\x7f\x00\x00\x00\x00\x00\x01\x11\x70"),
    ],
)
def test_encode_frame_length_boundaries(ws: ModuleType, length: int, header: bytes) -> None:
    payload = b"a" * length
    frame = ws.encode_frame(ws.OP_TEXT, payload)
    assert frame == header + payload
    (parsed,) = ws_parse(frame, 1)
    assert (parsed.opcode, parsed.fin, bytes(parsed.data)) == (Opcode.TEXT, True, payload)


@pytest.mark.parametrize("length", [0, 1, 125, 126, 65535, 65536])
def test_encode_client_frame_length_boundaries(ws: ModuleType, length: int) -> None:
    payload = bytes(range(256)) * (length // 256) + bytes(range(length % 256))
    frame = ws.encode_client_frame(ws.OP_BINARY, payload, MASK)
    size = 2 if length < 126 else 4 if length < 65536 else 10
    assert frame[0] == 0x82
    assert frame[1] & 0x80
    assert frame[size : size + 4] == MASK
    assert len(frame) == size + 4 + length
    assert frame == reference.encode_client_frame(reference.OP_BINARY, payload, MASK)
    assert ws.FrameParser(1 << 20).feed(frame) == [(ws.OP_BINARY, payload)]


def test_encode_frame_flags(ws: ModuleType) -> None:
    assert ws.encode_frame(ws.OP_TEXT, b"ab", fin=False) == b"\x01\x02ab"
    assert ws.encode_frame(ws.OP_CONT, b"", fin=True) == b"\x80\x00"
    assert ws.encode_frame(ws.OP_PING, bytearray(b"x")) == b"\x89\x01x"
    assert ws.encode_frame(ws.OP_PONG, memoryview(b"x")) == b"\x8a\x01x"
    assert ws.encode_client_frame(ws.OP_TEXT, b"", MASK, fin=False, rsv=5) == b"\x51\x80" + MASK


@pytest.mark.parametrize(
    ("opcode", "payload", "fin"),
    [(3, b"", True), (11, b"", True), (16, b"", True), (-1, b"", True)]
    + [(9, b"x" * 126, True), (8, b"", False), (10, b"", False)],
)
def test_encode_frame_refuses(ws: ModuleType, opcode: int, payload: bytes, fin: bool) -> None:
    with pytest.raises(ValueError):
        ws.encode_frame(opcode, payload, fin)


def test_encode_client_frame_refuses(ws: ModuleType) -> None:
    with pytest.raises(ValueError):
        ws.encode_client_frame(16, b"", MASK)
    with pytest.raises(ValueError):
        ws.encode_client_frame(1, b"", MASK, rsv=8)
    with pytest.raises(ValueError):
        ws.encode_client_frame(1, b"", b"abc")


def test_encode_close(ws: ModuleType) -> None:
    assert ws.encode_close(1000) == b"\x88\x02\x03\xe8"
    assert ws.encode_close(ws.CLOSE_INTERNAL, "oops") == b"\x88\x06\x03\xf3oops"
    assert ws.encode_close(4999, "") == b"\x88\x02\x13\x87"
    # 40 x 3-byte code points = 120 bytes, then a 4-byte one that cannot fit.
    reason = "\u20ac" * 40 + "\U0001f600"
    frame = ws.encode_close(1001, reason)
    assert frame[1] == 2 + 120
    assert frame[4:].decode("utf-8") == "\u20ac" * 40
    assert ws.encode_close(1000, "x" * 500)[1] == 125
    for code in (999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 0):
        with pytest.raises(ValueError):
            ws.encode_close(code)


def test_mask_payload(ws: ModuleType) -> None:
    for length in range(41):
        payload = bytes((i * 7 + 3) & 0xFF for i in range(length))
        expected = bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))
        assert ws.mask_payload(payload, MASK) == expected
        assert ws.mask_payload(expected, MASK) == payload
    assert ws.mask_payload(bytearray(b"abcd"), b"\0\0\0\0") == b"abcd"
    with pytest.raises(ValueError):
        ws.mask_payload(b"abcd", b"abcde")


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"", (1005, "")),
        (b"\x03", (1002, "close payload of 1 byte")),
        (b"\x03\xe8", (1000, "")),
        (b"\x03\xe9bye", (1001, "bye")),
        (b"\x0f\xa0caf\xc3\xa9", (4000, "caf\u00e9")),
        (b"\x0b\xb8", (3000, "")),
        (b"\x03\xf6", (1014, "")),
        (b"\x03\xe7", (1002, "invalid close code")),
        (b"\x03\xec", (1002, "invalid close code")),  # 1004
        (b"\x03\xed", (1002, "invalid close code")),  # 1005
        (b"\x03\xee", (1002, "invalid close code")),  # 1006
        (b"\x03\xf7", (1002, "invalid close code")),  # 1015
        (b"\x0b\xb7", (1002, "invalid close code")),  # 2999
        (b"\x13\x88", (1002, "invalid close code")),  # 5000
        (b"\x03\xe8\xff", (1007, "invalid UTF-8 in close reason")),
        (b"\x03\xe8\xed\xa0\x80", (1007, "invalid UTF-8 in close reason")),
    ],
)
def test_parse_close_payload(ws: ModuleType, payload: bytes, expected: tuple[int, str]) -> None:
    assert ws.parse_close_payload(payload) == expected


# --- parser: protocol violations --------------------------------------------------

TOP_BIT_64 = b"\x82\xff\x80\x00\x00\x00\x00\x00\x00\x00" + MASK

ERRORS = [
    ("unmasked", reference.encode_frame(1, b"hi"), 1002, "unmasked client frame"),
    ("rsv1", cframe(1, b"x", rsv=4), 1002, "reserved bits set"),
    ("rsv2", cframe(2, b"x", rsv=2), 1002, "reserved bits set"),
    ("rsv3", cframe(9, b"x", rsv=1), 1002, "reserved bits set"),
    *[(f"opcode{op}", cframe(op, b""), 1002, "reserved opcode") for op in (3, 7, 11, 15)],
    ("ping126", cframe(9, b"x" * 126), 1002, "control frame payload over 125 bytes"),
    ("close126", cframe(8, b"\x03\xe8" + b"x" * 124), 1002, "control frame payload over 125 bytes"),
    ("ping_nofin", cframe(9, b"", fin=False), 1002, "fragmented control frame"),
    ("close_nofin", cframe(8, b"", fin=False), 1002, "fragmented control frame"),
    ("lone_cont", cframe(0, b"x"), 1002, "continuation frame with no message in progress"),
    (
        "text_in_text",
        cframe(1, b"a", fin=False) + cframe(1, b"b"),
        1002,
        "new data frame while a fragmented message is in progress",
    ),
    (
        "binary_in_text",
        cframe(1, b"a", fin=False) + cframe(2, b"b", fin=False),
        1002,
        "new data frame while a fragmented message is in progress",
    ),
    (
        "cont_after_end",
        cframe(2, b"a", fin=False) + cframe(0, b"b") + cframe(0, b"c"),
        1002,
        "continuation frame with no message in progress",
    ),
    ("top_bit_64", TOP_BIT_64, 1002, "64-bit payload length with the top bit set"),
    ("frame_too_big", cframe(2, b"x" * 101), 1009, "message too big"),
    (
        "message_too_big",
        cframe(1, b"x" * 60, fin=False) + cframe(9, b"p") + cframe(0, b"y" * 41),
        1009,
        "message too big",
    ),
    ("bad_utf8", cframe(1, b"abc\xff"), 1007, "invalid UTF-8 in text message"),
    ("surrogate", cframe(1, b"\xed\xa0\x80"), 1007, "invalid UTF-8 in text message"),
    (
        "bad_utf8_fragment",
        cframe(1, b"ok", fin=False) + cframe(0, b"\xc0\xaf", fin=False),
        1007,
        "invalid UTF-8 in text message",
    ),
    (
        "truncated_utf8_message",
        cframe(1, b"ok", fin=False) + cframe(0, b"\xe2\x82"),
        1007,
        "invalid UTF-8 in text message",
    ),
]


@pytest.mark.parametrize(
    ("stream", "code", "reason"), [pytest.param(*e[1:], id=e[0]) for e in ERRORS]
)
def test_protocol_errors(ws: ModuleType, stream: bytes, code: int, reason: str) -> None:
    parser = ws.FrameParser(100)
    with pytest.raises(WebSocketError) as info:
        parser.feed(stream)
    assert (info.value.code, info.value.reason) == (code, reason)
    # Dead for good, whatever comes next.
    for more in (cframe(1, b"fine"), b""):
        with pytest.raises(WebSocketError) as again:
            parser.feed(more)
        assert (again.value.code, again.value.reason) == (code, reason)
    # Same verdict when the stream arrives a byte at a time.
    assert run(ws, [stream[i : i + 1] for i in range(len(stream))], 100)[1] == (code, reason)


def test_too_big_detected_from_header_alone(ws: ModuleType) -> None:
    parser = ws.FrameParser(1 << 20)
    header = cframe(2, b"x" * (16 << 20))[:14]  # 64-bit length, mask; no payload yet
    assert parser.feed(header[:13]) == []
    with pytest.raises(WebSocketError) as info:
        parser.feed(header[13:])
    assert info.value.code == ws.CLOSE_TOO_BIG
    # A fragmented message is refused as soon as the fragment that overflows it is announced.
    parser = ws.FrameParser(1000)
    assert parser.feed(cframe(2, b"x" * 900, fin=False)) == []
    with pytest.raises(WebSocketError) as info:
        parser.feed(cframe(0, b"y" * 101)[:8])
    assert info.value.code == ws.CLOSE_TOO_BIG


def test_size_limit_is_inclusive(ws: ModuleType) -> None:
    parser = ws.FrameParser(10)
    stream = cframe(1, b"x" * 10) + cframe(2, b"y" * 4, fin=False) + cframe(0, b"z" * 6)
    assert parser.feed(stream) == [(1, b"x" * 10), (2, b"yyyyzzzzzz")]
    # Control frames are bounded by 125 bytes, not by the message limit.
    assert ws.FrameParser(0).feed(cframe(9, b"p" * 125)) == [(9, b"p" * 125)]


def test_events_before_error_are_kept(ws: ModuleType) -> None:
    parser = ws.FrameParser(100)
    with pytest.raises(WebSocketError) as info:
        parser.feed(cframe(1, b"first") + cframe(9, b"ping") + cframe(1, b"\xff"))
    assert info.value.events == [(1, b"first"), (9, b"ping")]


# --- parser: valid streams ------------------------------------------------------------


def test_single_frames(ws: ModuleType) -> None:
    parser = ws.FrameParser(1 << 20)
    stream = b"".join(
        [
            cframe(1, "h\u00e9llo \u20ac \U0001f600".encode()),
            cframe(2, b"\x00\xff" * 100),
            cframe(9, b""),
            cframe(10, b"pong"),
            cframe(1, b""),
            cframe(8, b"\x03\xe8bye"),
        ]
    )
    assert parser.feed(stream) == [
        (1, "h\u00e9llo \u20ac \U0001f600".encode()),
        (2, b"\x00\xff" * 100),
        (9, b""),
        (10, b"pong"),
        (1, b""),
        (8, b"\x03\xe8bye"),
    ]
    assert parser.feed(b"") == []


def test_fragmented_with_interleaved_control(ws: ModuleType) -> None:
    stream = b"".join(
        [
            cframe(1, b"Hel", fin=False),
            cframe(9, b"ping"),
            cframe(0, b"lo, ", fin=False),
            cframe(10, b"pong"),
            cframe(0, b"", fin=False),
            cframe(0, b"world"),
            cframe(2, b"\x01", fin=False),
            cframe(8, b"\x03\xe8"),
            cframe(0, b"\x02"),
        ]
    )
    expected = [
        (9, b"ping"),
        (10, b"pong"),
        (1, b"Hello, world"),
        (8, b"\x03\xe8"),
        (2, b"\x01\x02"),
    ]
    assert run(ws, [stream]) == (expected, None)


@pytest.mark.parametrize("text", ["\u00e9", "\u20ac", "\U0001f600", "a\u00e9\u20ac\U0001f600z"])
def test_code_point_split_across_fragments(ws: ModuleType, text: str) -> None:
    raw = text.encode()
    for cut in range(len(raw) + 1):
        for cut2 in range(cut, len(raw) + 1):
            stream = (
                cframe(1, raw[:cut], fin=False)
                + cframe(0, raw[cut:cut2], fin=False)
                + cframe(0, raw[cut2:])
            )
            assert run(ws, [stream]) == ([(1, raw)], None)


VALID_UTF8 = [chr(c) for c in (0, 0x7F, 0x80, 0x7FF, 0x800, 0xD7FF, 0xE000, 0xFFFD, 0xFFFF)]
VALID_UTF8 += [chr(c) for c in (0x10000, 0x10FFFF)]
INVALID_UTF8 = [
    b"\x80",  # lone continuation
    b"\xbf",
    b"\xc0\x80",  # overlong NUL
    b"\xc1\xbf",
    b"\xe0\x80\x80",  # overlong 3-byte
    b"\xe0\x9f\xbf",
    b"\xed\xa0\x80",  # U+D800
    b"\xed\xbf\xbf",  # U+DFFF
    b"\xf0\x80\x80\x80",  # overlong 4-byte
    b"\xf0\x8f\xbf\xbf",
    b"\xf4\x90\x80\x80",  # U+110000
    b"\xf5\x80\x80\x80",
    b"\xf8\x88\x80\x80\x80",
    b"\xfe",
    b"\xff",
    b"\xc2",  # truncated
    b"\xe2\x82",
    b"\xf0\x9f\x98",
    b"\xc2A",
    b"\xe2\x28\xa1",
    b"abcdefgh\x80ijklmnop",  # after an 8-byte ASCII run
    b"abcdefghijklmnop\xc3",
]


@pytest.mark.parametrize("text", VALID_UTF8)
def test_valid_utf8_edges(ws: ModuleType, text: str) -> None:
    raw = ("abcdefghij" + text + "klmnopqrstu").encode()
    assert run(ws, [cframe(1, raw)]) == ([(1, raw)], None)


@pytest.mark.parametrize("raw", INVALID_UTF8)
def test_invalid_utf8(ws: ModuleType, raw: bytes) -> None:
    error = (1007, "invalid UTF-8 in text message")
    assert run(ws, [cframe(1, raw)]) == ([], error)
    assert run(ws, [cframe(1, b"ok", fin=False) + cframe(0, raw)]) == ([], error)
    # Binary payloads are not text: anything goes.
    assert run(ws, [cframe(2, raw)]) == ([(2, raw)], None)


def mixed_stream() -> tuple[bytes, list[Event]]:
    parts = [
        (cframe(1, b"small"), [(1, b"small")]),
        (cframe(2, bytes(range(256)) * 2), [(2, bytes(range(256)) * 2)]),
        (cframe(1, "\u20ac".encode() * 60), [(1, "\u20ac".encode() * 60)]),
        (
            cframe(2, b"ab", fin=False) + cframe(9, b"!") + cframe(0, b"cd"),
            [(9, b"!"), (2, b"abcd")],
        ),
        (cframe(10, b""), [(10, b"")]),
        (cframe(8, b"\x03\xe8done"), [(8, b"\x03\xe8done")]),
    ]
    return b"".join(p[0] for p in parts), [e for p in parts for e in p[1]]


def test_split_at_every_byte(ws: ModuleType) -> None:
    stream, expected = mixed_stream()
    for cut in range(len(stream) + 1):
        assert run(ws, [stream[:cut], stream[cut:]]) == (expected, None), cut
    assert run(ws, [stream[i : i + 1] for i in range(len(stream))]) == (expected, None)
    for step in (2, 3, 5, 7, 13):
        chunks = [stream[i : i + step] for i in range(0, len(stream), step)]
        assert run(ws, chunks) == (expected, None)


def test_split_64bit_header(ws: ModuleType) -> None:
    payload = os.urandom(65536 + 3)
    stream = cframe(2, payload) + cframe(9, b"x")
    expected = ([(2, payload), (9, b"x")], None)
    for cut in [*range(16), 1000, len(stream) - 7, len(stream) - 1]:
        assert run(ws, [stream[:cut], stream[cut:]]) == expected, cut
    assert run(ws, [stream[i : i + 1000] for i in range(0, len(stream), 1000)]) == expected


def test_feed_accepts_buffers(ws: ModuleType) -> None:
    frame = cframe(1, b"buffered")
    parser = ws.FrameParser(100)
    assert parser.feed(bytearray(frame[:3])) == []
    assert parser.feed(memoryview(frame)[3:]) == [(1, b"buffered")]


def test_idle_parser_memory(ws: ModuleType) -> None:
    """After complete messages nothing is retained: no input or reassembly buffer."""
    parser = ws.FrameParser(4 << 20)
    big = b"x" * (1 << 20)
    fragments = [cframe(2, big, fin=False), cframe(0, big, fin=False), cframe(0, big)]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for frame in fragments:
            for i in range(0, len(frame), 65536):
                events = parser.feed(frame[i : i + 65536])
        assert len(events) == 1 and len(events[0][1]) == 3 << 20
        del events
        gc.collect()
        retained = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert retained < 4096, retained
    # And a fresh parser is a small fixed-size object.
    assert sys.getsizeof(ws.FrameParser(100)) <= 128


def test_bad_constructor(ws: ModuleType) -> None:
    with pytest.raises(ValueError):
        ws.FrameParser(-1)


# --- cross-checks with the websockets library ------------------------------------------

WS_OPCODES = [Opcode.TEXT, Opcode.BINARY, Opcode.PING, Opcode.PONG, Opcode.CLOSE]


@pytest.mark.parametrize("length", [0, 5, 125, 126, 65535, 65536])
def test_websockets_client_frames_parse(ws: ModuleType, length: int) -> None:
    payload = b"z" * length
    stream = Frame(Opcode.TEXT, payload).serialize(mask=True, extensions=[])
    stream += Frame(Opcode.BINARY, payload[:7], fin=False).serialize(mask=True)
    stream += Frame(Opcode.PING, b"hb").serialize(mask=True)
    stream += Frame(Opcode.CONT, payload).serialize(mask=True)
    stream += Frame(Opcode.CLOSE, Close(1000, "bye").serialize()).serialize(mask=True)
    events, error = run(ws, [stream])
    assert error is None
    assert events == [(1, payload), (9, b"hb"), (2, payload[:7] + payload), (8, b"\x03\xe8bye")]
    assert ws.parse_close_payload(events[-1][1]) == (1000, "bye")


def test_our_frames_parse_with_websockets(ws: ModuleType) -> None:
    frames = [
        ws.encode_frame(ws.OP_TEXT, b"hello"),
        ws.encode_frame(ws.OP_BINARY, b"\x00" * 126, fin=False),
        ws.encode_frame(ws.OP_CONT, b"\x01" * 65536),
        ws.encode_frame(ws.OP_PING, b"p" * 125),
        ws.encode_frame(ws.OP_PONG, b""),
        ws.encode_close(ws.CLOSE_GOING_AWAY, "shutting down"),
    ]
    parsed = ws_parse(b"".join(frames), len(frames))
    assert [(f.opcode, f.fin, bytes(f.data)) for f in parsed] == [
        (Opcode.TEXT, True, b"hello"),
        (Opcode.BINARY, False, b"\x00" * 126),
        (Opcode.CONT, True, b"\x01" * 65536),
        (Opcode.PING, True, b"p" * 125),
        (Opcode.PONG, True, b""),
        (Opcode.CLOSE, True, Close(1001, "shutting down").serialize()),
    ]


payloads = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=100).map(lambda s: s.encode()),
    st.integers(min_value=65530, max_value=65540).map(lambda n: b"q" * n),
)


@FAST
@given(
    opcode=st.sampled_from(WS_OPCODES),
    payload=payloads,
    fin=st.booleans(),
    impl=st.sampled_from([compiled, reference]),
)
def test_websockets_agree_random(
    opcode: Opcode, payload: bytes, fin: bool, impl: ModuleType
) -> None:
    if opcode in (Opcode.PING, Opcode.PONG, Opcode.CLOSE):
        payload, fin = payload[:125], True
    (parsed,) = ws_parse(impl.encode_frame(int(opcode), payload, fin), 1)
    assert (parsed.opcode, parsed.fin, bytes(parsed.data)) == (opcode, fin, payload)

    if opcode is Opcode.TEXT:
        payload = payload.decode("utf-8", "replace").encode()
    stream = Frame(opcode, payload).serialize(mask=True)
    assert run(impl, [stream]) == ([(int(opcode), payload)], None)


# --- property tests: reference and compiled agree -----------------------------------------

masks = st.binary(min_size=4, max_size=4)


@st.composite
def message_streams(draw: st.DrawFn) -> tuple[bytes, list[Event]]:
    """A valid client stream of fragmented and whole messages with interleaved control frames."""
    stream: list[bytes] = []
    events: list[Event] = []
    for _ in range(draw(st.integers(0, 6))):
        opcode = draw(st.sampled_from([1, 2, 9, 10, 8]))
        if opcode >= 8:
            payload = draw(st.binary(max_size=125))
            stream.append(reference.encode_client_frame(opcode, payload, draw(masks)))
            events.append((opcode, payload))
            continue
        if opcode == 1:
            payload = draw(st.text(max_size=200)).encode()
        else:
            payload = draw(st.binary(max_size=400))
        cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=4)))
        pieces = split(payload, cuts) if cuts else [payload]
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            frame_opcode = opcode if i == 0 else 0
            stream.append(reference.encode_client_frame(frame_opcode, piece, draw(masks), last))
            if not last and draw(st.booleans()):
                ping = draw(st.binary(max_size=20))
                stream.append(reference.encode_client_frame(9, ping, draw(masks)))
                events.append((9, ping))
        events.append((opcode, payload))
    return b"".join(stream), events


@FAST
@given(message_streams(), st.lists(st.integers(0, 3000), max_size=8))
def test_property_valid_streams(case: tuple[bytes, list[Event]], cuts: list[int]) -> None:
    stream, expected = case
    chunks = split(stream, cuts)
    assert run(reference, chunks) == (expected, None)
    assert run(compiled, chunks) == (expected, None)


@st.composite
def hostile_streams(draw: st.DrawFn) -> bytes:
    """Mostly plausible frames with random flags, lengths and corruptions."""
    frames = []
    for _ in range(draw(st.integers(1, 6))):
        opcode = draw(st.sampled_from([0, 0, 1, 1, 2, 8, 9, 10, 3, 15]))
        payload = draw(
            st.one_of(
                st.binary(max_size=140),
                st.text(max_size=60).map(lambda s: s.encode()),
                st.sampled_from([b"\xe2\x82", b"\xac", b"\xf0\x9f", b"\x98\x80", b"\xed\xa0"]),
            )
        )
        fin = draw(st.booleans())
        rsv = draw(st.sampled_from([0] * 12 + [1, 2, 4]))
        if draw(st.integers(0, 15)) == 0:
            frames.append(reference.encode_frame(2, payload[:125], True))  # unmasked
        else:
            frames.append(reference.encode_client_frame(opcode, payload, draw(masks), fin, rsv))
    data = bytearray(b"".join(frames))
    for _ in range(draw(st.integers(0, 2))):
        index = draw(st.integers(0, len(data) - 1))
        data[index] = draw(st.integers(0, 255))
    return bytes(data)


@FAST
@given(
    hostile_streams(),
    st.lists(st.integers(0, 1000), max_size=6),
    st.sampled_from([0, 10, 100, 1 << 20]),
)
def test_property_hostile_streams_agree(stream: bytes, cuts: list[int], max_size: int) -> None:
    chunks = split(stream, cuts)
    outcome = run(reference, [stream], max_size)
    # Neither implementation depends on how the bytes were chunked...
    assert run(reference, chunks, max_size) == outcome
    # ...and they agree on every event and every error.
    assert run(compiled, chunks, max_size) == outcome
    assert run(compiled, [stream], max_size) == outcome


@FAST
@given(st.binary(max_size=64), st.lists(st.integers(0, 64), max_size=3))
def test_property_utf8_matches_python(raw: bytes, cuts: list[int]) -> None:
    try:
        raw.decode("utf-8")
        expected: Outcome = ([(1, raw)], None)
    except UnicodeDecodeError:
        expected = ([], (1007, "invalid UTF-8 in text message"))
    pieces = split(raw, cuts) if cuts else [raw]
    stream = b"".join(
        reference.encode_client_frame(1 if i == 0 else 0, piece, MASK, i == len(pieces) - 1)
        for i, piece in enumerate(pieces)
    )
    assert run(reference, [stream]) == expected
    assert run(compiled, [stream]) == expected


@FAST
@given(
    opcode=st.integers(0, 15),
    payload=st.binary(max_size=600),
    mask=masks,
    fin=st.booleans(),
    rsv=st.integers(0, 7),
)
def test_property_encoders_agree(
    opcode: int, payload: bytes, mask: bytes, fin: bool, rsv: int
) -> None:
    frame = compiled.encode_client_frame(opcode, payload, mask, fin, rsv)
    assert frame == reference.encode_client_frame(opcode, payload, mask, fin, rsv)
    assert compiled.mask_payload(payload, mask) == reference.mask_payload(payload, mask)
    assert compiled.mask_payload(compiled.mask_payload(payload, mask), mask) == payload
    if opcode in (0, 1, 2) or (opcode in (8, 9, 10) and fin and len(payload) <= 125):
        assert compiled.encode_frame(opcode, payload, fin) == reference.encode_frame(
            opcode, payload, fin
        )


@FAST
@given(st.binary(max_size=130))
def test_property_close_payload_agrees(payload: bytes) -> None:
    assert compiled.parse_close_payload(payload) == reference.parse_close_payload(payload)


def test_round_trip_large_random(ws: ModuleType) -> None:
    sizes: Sequence[int] = [0, 1, 7, 8, 9, 31, 32, 33, 1000, 70001]
    for size in sizes:
        payload = os.urandom(size)
        mask = os.urandom(4)
        frame = ws.encode_client_frame(ws.OP_BINARY, payload, mask)
        assert ws.FrameParser(1 << 20).feed(frame) == [(ws.OP_BINARY, payload)]


@pytest.mark.parametrize("impl", [compiled, reference], ids=["compiled", "reference"])
@pytest.mark.parametrize("prefix", [b"\xed\xa0", b"\xe0\x80", b"\xf0\x80", b"\xf4\x90"])
def test_impossible_utf8_prefix_fails_at_once(impl, prefix: bytes) -> None:  # type: ignore[no-untyped-def]
    # A fragment ending in a prefix no continuation can make valid (found by
    # hypothesis): both implementations refuse it before the next frame.
    parser = impl.FrameParser(100)
    with pytest.raises(WebSocketError) as info:
        parser.feed(impl.encode_client_frame(1, prefix, b"\x00\x00\x00\x00", fin=False))
    assert info.value.code == 1007
