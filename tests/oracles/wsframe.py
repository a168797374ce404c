"""RFC 6455 WebSocket framing for the server side, in plain Python.

This is the readable reference twin of the compiled module ``engine.transport._wsframe``
(a test oracle, not shipped): both expose the same names and must behave
identically (the tests feed both the same byte streams and compare every event
and every error). :class:`WebSocketError` and the opening-handshake helpers are
the compiled module's own, so one ``except`` clause catches the errors of either.

Scope: no extensions are negotiated (so any RSV bit is a protocol error), no
subprotocol. Clients must mask every frame; the server never masks.

:class:`FrameParser` turns bytes read from a client into complete events::

    parser = FrameParser(max_message_size=1 << 20)
    for opcode, payload in parser.feed(chunk):
        ...  # OP_TEXT (valid UTF-8, as bytes), OP_BINARY, OP_PING, OP_PONG, OP_CLOSE

A protocol violation raises :class:`WebSocketError` carrying the close code to
fail the connection with; the parser then stays dead.
"""

from __future__ import annotations

import codecs

from engine.transport._wsframe import WebSocketError, accept_key, valid_client_key

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_INTERNAL",
    "CLOSE_INVALID_DATA",
    "CLOSE_NORMAL",
    "CLOSE_NO_STATUS",
    "CLOSE_POLICY",
    "CLOSE_PROTOCOL_ERROR",
    "CLOSE_TOO_BIG",
    "CLOSE_UNSUPPORTED",
    "MAX_CONTROL_PAYLOAD",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONT",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "FrameParser",
    "WebSocketError",
    "accept_key",
    "encode_client_frame",
    "encode_close",
    "encode_frame",
    "mask_payload",
    "parse_close_payload",
    "valid_client_key",
]

OP_CONT = 0
OP_TEXT = 1
OP_BINARY = 2
OP_CLOSE = 8
OP_PING = 9
OP_PONG = 10

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_UNSUPPORTED = 1003
# Never sent on the wire: what parse_close_payload reports for an empty close payload.
CLOSE_NO_STATUS = 1005
CLOSE_INVALID_DATA = 1007
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011

# RFC 6455 5.5: control frames carry at most 125 bytes and are never fragmented.
MAX_CONTROL_PAYLOAD = 125
# A close reason shares the control payload with the 2-byte code.
_MAX_CLOSE_REASON = MAX_CONTROL_PAYLOAD - 2

_DATA_OPCODES = (OP_CONT, OP_TEXT, OP_BINARY)
_KNOWN_OPCODES = (OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG)
_NO_MESSAGE = -1

# The error reasons are part of the contract between the two implementations:
# the differential tests compare them verbatim.
_ERR_RSV = "reserved bits set"
_ERR_OPCODE = "reserved opcode"
_ERR_UNMASKED = "unmasked client frame"
_ERR_CONTROL_FRAGMENTED = "fragmented control frame"
_ERR_CONTROL_TOO_LONG = "control frame payload over 125 bytes"
_ERR_NO_MESSAGE = "continuation frame with no message in progress"
_ERR_INTERLEAVED = "new data frame while a fragmented message is in progress"
_ERR_LENGTH_TOP_BIT = "64-bit payload length with the top bit set"
_ERR_TOO_BIG = "message too big"
_ERR_UTF8 = "invalid UTF-8 in text message"

Event = tuple[int, bytes]


# --- encoding ---------------------------------------------------------------------


def _length_header(first: int, mask_bit: int, length: int) -> bytes:
    if length < 126:
        return bytes((first, mask_bit | length))
    if length < 65536:
        return bytes((first, mask_bit | 126)) + length.to_bytes(2, "big")
    return bytes((first, mask_bit | 127)) + length.to_bytes(8, "big")


def encode_frame(opcode: int, payload: bytes | bytearray | memoryview, fin: bool = True) -> bytes:
    """One unmasked server frame (7, 16 or 64-bit length as the payload needs)."""
    if opcode not in _KNOWN_OPCODES:
        raise ValueError(f"unknown opcode {opcode}")
    length = len(memoryview(payload))
    if opcode >= OP_CLOSE and (length > MAX_CONTROL_PAYLOAD or not fin):
        raise ValueError("control frames are unfragmented and carry at most 125 bytes")
    header = _length_header((0x80 if fin else 0) | opcode, 0, length)
    return b"".join((header, payload))


def _valid_close_code(code: int) -> bool:
    # RFC 6455 7.4 plus the IANA registry: 1004-1006 and 1015 are reserved and
    # must not appear on the wire; 1016-2999 are unassigned.
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def encode_close(code: int, reason: str = "") -> bytes:
    """A close frame; a reason longer than 123 UTF-8 bytes is cut at a code point."""
    if not _valid_close_code(code):
        raise ValueError(f"close code {code} may not be sent")
    raw = reason.encode("utf-8", "replace")
    if len(raw) > _MAX_CLOSE_REASON:
        # Cutting may split the last code point; "ignore" drops that fragment only.
        raw = raw[:_MAX_CLOSE_REASON].decode("utf-8", "ignore").encode("utf-8")
    return encode_frame(OP_CLOSE, code.to_bytes(2, "big") + raw)


def mask_payload(payload: bytes | bytearray | memoryview, mask: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte ``mask`` repeated (masking is its own inverse)."""
    if len(mask) != 4:
        raise ValueError("a mask is exactly 4 bytes")
    length = len(memoryview(payload))
    if length == 0:
        return b""
    key = (mask * (length // 4 + 1))[:length]
    # One big-integer XOR instead of a Python loop per byte.
    value = int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")
    return value.to_bytes(length, "little")


def encode_client_frame(
    opcode: int,
    payload: bytes | bytearray | memoryview,
    mask: bytes,
    fin: bool = True,
    rsv: int = 0,
) -> bytes:
    """A masked client frame, for tests and load generators.

    No protocol validation beyond field widths (any opcode 0-15, ``rsv`` bits
    0-7 for RSV1..RSV3, oversized control frames), so tests can craft violations.
    """
    if not 0 <= opcode <= 15:
        raise ValueError(f"opcode {opcode} does not fit in 4 bits")
    if not 0 <= rsv <= 7:
        raise ValueError(f"rsv {rsv} does not fit in 3 bits")
    if len(mask) != 4:
        raise ValueError("a mask is exactly 4 bytes")
    length = len(memoryview(payload))
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    header = _length_header(first, 0x80, length)
    return b"".join((header, mask, mask_payload(payload, mask)))


def parse_close_payload(payload: bytes | bytearray | memoryview) -> tuple[int, str]:
    """The ``(code, reason)`` of a received close frame.

    An empty payload gives ``(CLOSE_NO_STATUS, "")``. An invalid payload gives
    the code to close with instead: ``CLOSE_PROTOCOL_ERROR`` for a 1-byte
    payload or a code that may not be sent, ``CLOSE_INVALID_DATA`` for a reason
    that is not UTF-8; the reason then describes the problem.
    """
    raw = bytes(payload)
    if not raw:
        return CLOSE_NO_STATUS, ""
    if len(raw) == 1:
        return CLOSE_PROTOCOL_ERROR, "close payload of 1 byte"
    code = int.from_bytes(raw[:2], "big")
    if not _valid_close_code(code):
        return CLOSE_PROTOCOL_ERROR, "invalid close code"
    try:
        reason = raw[2:].decode("utf-8")
    except UnicodeDecodeError:
        return CLOSE_INVALID_DATA, "invalid UTF-8 in close reason"
    return code, reason


# --- parsing ----------------------------------------------------------------------


class FrameParser:
    """Incremental parser of client frames into complete messages.

    Holds nothing but a few fields while idle: the input buffer exists only
    while a partial frame is pending and the reassembly buffer only while a
    fragmented message is in progress.

    ``max_message_size`` bounds each text or binary message, reassembled
    fragments included, and is enforced from frame headers before any payload
    is waited for. Control frames are bounded by 125 bytes instead. Frames
    after a close frame are still decoded; ignoring them is the caller's call.
    """

    __slots__ = ("_buf", "_error", "_max_size", "_msg", "_msg_opcode", "_utf8")

    _buf: bytearray | None
    _error: tuple[int, str] | None
    _max_size: int
    _msg: bytearray | None
    _msg_opcode: int
    _utf8: codecs.IncrementalDecoder | None

    def __init__(self, max_message_size: int) -> None:
        if max_message_size < 0:
            raise ValueError("max_message_size must be >= 0")
        self._max_size = max_message_size
        self._buf = None
        self._error = None
        self._msg = None
        self._msg_opcode = _NO_MESSAGE
        self._utf8 = None

    def feed(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Consume ``data``; return the events completed so far, in order."""
        if self._error is not None:
            raise WebSocketError(*self._error)
        buf: bytes | bytearray | memoryview
        if self._buf is None:
            buf = data  # nothing pending: parse straight from the caller's bytes
        else:
            self._buf += data
            buf = self._buf
        events: list[Event] = []
        view = memoryview(buf)
        try:
            pos = 0
            while True:
                end = self._parse_frame(view, pos, events)
                if end < 0:
                    break
                pos = end
        except WebSocketError as exc:
            self._error = (exc.code, exc.reason)
            self._buf = self._msg = self._utf8 = None
            exc.events = events
            raise
        finally:
            view.release()
        if pos == len(buf):
            self._buf = None
        elif buf is self._buf:
            del self._buf[:pos]
        else:
            self._buf = bytearray(buf[pos:])
        return events

    def _parse_frame(self, view: memoryview, pos: int, events: list[Event]) -> int:
        """Decode one frame at ``pos``: its end, or -1 if it is not complete yet."""
        avail = len(view) - pos
        if avail < 2:
            return -1
        b0 = view[pos]
        b1 = view[pos + 1]
        fin = bool(b0 & 0x80)
        opcode = b0 & 0x0F
        length = b1 & 0x7F
        # Header checks, all decidable from the first two bytes, in a fixed order.
        if b0 & 0x70:
            raise WebSocketError(CLOSE_PROTOCOL_ERROR, _ERR_RSV)
        if opcode not in _KNOWN_OPCODES:
            raise WebSocketError(CLOSE_PROTOCOL_ERROR, _ERR_OPCODE)
        if not b1 & 0x80:
            raise WebSocketError(CLOSE_PROTOCOL_ERROR, _ERR_UNMASKED)
        if opcode >= OP_CLOSE:
            if not fin:
                raise WebSocketError(CLOSE_PROTOCOL_ERROR, _ERR_CONTROL_FRAGMENTED)
            if length > MAX_CONTROL_PAYLOAD:
                raise WebSocketError(CLOSE_PROTOCOL_ERROR, _ERR_CONTROL_TOO_LONG)
        elif opcode == OP_CONT:
            if self._msg_opcode == _NO_MESSAGE:
                raise WebSocketError(CLOSE_PROTOCOL_ERROR, _ERR_NO_MESSAGE)
        elif self._msg_opcode != _NO_MESSAGE:
            raise WebSocketError(CLOSE_PROTOCOL_ERROR, _ERR_INTERLEAVED)

        header = 6  # 2 fixed bytes + 4 mask bytes
        if length == 126:
            header = 8
            if avail < header:
                return -1
            length = int.from_bytes(view[pos + 2 : pos + 4], "big")
        elif length == 127:
            header = 14
            if avail < header:
                return -1
            length = int.from_bytes(view[pos + 2 : pos + 10], "big")
            if length >> 63:
                raise WebSocketError(CLOSE_PROTOCOL_ERROR, _ERR_LENGTH_TOP_BIT)
        elif avail < header:
            return -1
        # Checked on the header alone, before waiting for (and buffering) the payload.
        if opcode < OP_CLOSE:
            pending = 0 if self._msg is None else len(self._msg)
            if pending + length > self._max_size:
                raise WebSocketError(CLOSE_TOO_BIG, _ERR_TOO_BIG)
        if avail - header < length:
            return -1

        start = pos + header
        payload = mask_payload(view[start : start + length], bytes(view[start - 4 : start]))
        end = start + length
        if opcode >= OP_CLOSE:
            events.append((opcode, payload))
        elif opcode != OP_CONT:
            if fin:
                if opcode == OP_TEXT:
                    _check_utf8(payload)
                events.append((opcode, payload))
            else:
                self._msg = bytearray(payload)
                self._msg_opcode = opcode
                if opcode == OP_TEXT:
                    self._utf8 = codecs.getincrementaldecoder("utf-8")()
                    _feed_utf8(self._utf8, payload, final=False)
        else:
            assert self._msg is not None
            self._msg += payload
            if self._utf8 is not None:
                _feed_utf8(self._utf8, payload, final=fin)
            if fin:
                events.append((self._msg_opcode, bytes(self._msg)))
                self._msg = self._utf8 = None
                self._msg_opcode = _NO_MESSAGE
        return end


def _check_utf8(payload: bytes) -> None:
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        raise WebSocketError(CLOSE_INVALID_DATA, _ERR_UTF8) from None


# Second-byte ranges that Python's incremental decoder does not check while a
# code point is still incomplete (surrogates, overlongs, beyond U+10FFFF).
_SECOND_BYTE = {0xE0: (0xA0, 0xBF), 0xED: (0x80, 0x9F), 0xF0: (0x90, 0xBF), 0xF4: (0x80, 0x8F)}


def _feed_utf8(decoder: codecs.IncrementalDecoder, payload: bytes, *, final: bool) -> None:
    # The incremental decoder keeps an incomplete code point for the next
    # fragment; a pending prefix that can never become valid fails now, as
    # the compiled validator does.
    try:
        decoder.decode(payload, final)
    except UnicodeDecodeError:
        raise WebSocketError(CLOSE_INVALID_DATA, _ERR_UTF8) from None
    pending = decoder.getstate()[0]
    if len(pending) >= 2 and pending[0] in _SECOND_BYTE:
        low, high = _SECOND_BYTE[pending[0]]
        if not low <= pending[1] <= high:
            raise WebSocketError(CLOSE_INVALID_DATA, _ERR_UTF8)
