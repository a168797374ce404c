# cython: language_level=3
"""RFC 6455 WebSocket framing for the server side, compiled.

The server's codec. Its readable twin, ``tests/oracles/wsframe.py``, states
the same contract in plain Python; the tests hold the two to identical events
and errors. What the compiled one does differently is how:

- frames are parsed in place, straight from the caller's buffer when nothing
  is pending, else from one ``bytearray`` that holds only the partial frame;
- a payload is unmasked in one pass from the input into its result object,
  8 bytes at a time;
- text is validated by a UTF-8 automaton in C whose state survives across
  fragments, with an 8-bytes-at-a-time skip over ASCII.

``WebSocketError`` and the opening-handshake helpers (not hot) are defined
here and shared with the twin, so one ``except`` clause catches the errors of
either.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytearray cimport (
    PyByteArray_AS_STRING,
    PyByteArray_FromStringAndSize,
    PyByteArray_GET_SIZE,
    PyByteArray_Resize,
)
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy

import base64
import binascii
import hashlib

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


class WebSocketError(Exception):
    """A protocol violation: fail the connection with close frame ``code``.

    ``events`` holds the events the failing ``FrameParser.feed`` call had
    decoded before the violation (they were well formed and may be processed).
    """

    def __init__(self, code, reason):
        super().__init__(code, reason)
        self.code = code
        self.reason = reason
        self.events = []

    def __str__(self):
        return f"{self.code} {self.reason}"


_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455, section 1.3


def accept_key(sec_websocket_key: bytes) -> bytes:
    """The ``Sec-WebSocket-Accept`` value answering ``Sec-WebSocket-Key``."""
    return base64.b64encode(hashlib.sha1(sec_websocket_key + _GUID).digest())


def valid_client_key(key: bytes) -> bool:
    """Whether ``key`` is the canonical base64 encoding of exactly 16 bytes."""
    if len(key) != 24:
        return False
    try:
        raw = base64.b64decode(key, validate=True)
    except binascii.Error:
        return False
    return len(raw) == 16 and base64.b64encode(raw) == key

cdef enum:
    # Opcodes and close codes as C constants for the hot paths; the Python
    # names below mirror them.
    _CONT = 0
    _TEXT = 1
    _BINARY = 2
    _CLOSE = 8
    _PING = 9
    _PONG = 10
    _PROTOCOL_ERROR = 1002
    _NO_STATUS = 1005
    _INVALID_DATA = 1007
    _TOO_BIG = 1009
    _MAX_CONTROL = 125
    _MAX_CLOSE_REASON = 123

OP_CONT = _CONT
OP_TEXT = _TEXT
OP_BINARY = _BINARY
OP_CLOSE = _CLOSE
OP_PING = _PING
OP_PONG = _PONG

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = _PROTOCOL_ERROR
CLOSE_UNSUPPORTED = 1003
CLOSE_NO_STATUS = _NO_STATUS
CLOSE_INVALID_DATA = _INVALID_DATA
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = _TOO_BIG
CLOSE_INTERNAL = 1011

MAX_CONTROL_PAYLOAD = _MAX_CONTROL


# --- UTF-8 validation ---------------------------------------------------------------
#
# A deterministic automaton over byte classes (the approach of Bjoern
# Hoehrmann's decoder, with tables derived afresh from RFC 3629 section 4).
# Each byte is mapped to one of 12 classes; the state after a byte is
# NEXT[state * 12 + class]. State 0 accepts (between code points), state 1
# rejects for good, states 2..8 are inside a multi-byte sequence and name the
# bytes still allowed. Surrogates (ED A0..BF), overlong forms (C0, C1,
# E0 80..9F, F0 80..8F) and code points above U+10FFFF (F4 90.., F5..FF) are
# the transitions to state 1.

cdef extern from *:
    """
    /* Byte classes:
         0 ASCII           1 continuation 80..8F   2 continuation 90..9F
         3 continuation A0..BF                     4 never valid (C0 C1 F5..FF)
         5 lead of 2 bytes (C2..DF)  6 E0  7 E1..EC, EE, EF  8 ED
         9 F0  10 F1..F3  11 F4 */
    static const unsigned char ws_utf8_class[256] = {
         0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  /* 00 */
         0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  /* 10 */
         0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  /* 20 */
         0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  /* 30 */
         0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  /* 40 */
         0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  /* 50 */
         0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  /* 60 */
         0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  /* 70 */
         1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  /* 80 */
         2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  /* 90 */
         3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  /* A0 */
         3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  /* B0 */
         4,  4,  5,  5,  5,  5,  5,  5,  5,  5,  5,  5,  5,  5,  5,  5,  /* C0 */
         5,  5,  5,  5,  5,  5,  5,  5,  5,  5,  5,  5,  5,  5,  5,  5,  /* D0 */
         6,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  8,  7,  7,  /* E0 */
         9, 10, 10, 10, 11,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  /* F0 */
    };

    /* States: 0 accept, 1 reject, 2 need 1 continuation, 3 need 2,
       4 after E0 (A0..BF then 1), 5 after ED (80..9F then 1),
       6 after F0 (90..BF then 2), 7 need 3, 8 after F4 (80..8F then 2). */
    static const unsigned char ws_utf8_next[9 * 12] = {
    /* class:  0  1  2  3  4  5  6  7  8  9 10 11 */
    /* 0 */    0, 1, 1, 1, 1, 2, 4, 3, 5, 6, 7, 8,
    /* 1 */    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    /* 2 */    1, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
    /* 3 */    1, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1,
    /* 4 */    1, 1, 1, 2, 1, 1, 1, 1, 1, 1, 1, 1,
    /* 5 */    1, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    /* 6 */    1, 1, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1,
    /* 7 */    1, 3, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1,
    /* 8 */    1, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    };
    """
    const uint8_t ws_utf8_class[256]
    const uint8_t ws_utf8_next[108]

cdef enum:
    _UTF8_ACCEPT = 0
    _UTF8_REJECT = 1

cdef uint64_t _HIGH_BITS = 0x8080808080808080ULL


cdef uint32_t _utf8_run(uint32_t state, const uint8_t* p, Py_ssize_t n) noexcept nogil:
    """Advance the automaton over ``p[:n]``; stops early on rejection."""
    cdef Py_ssize_t i = 0
    cdef uint64_t word
    while i < n:
        if state == _UTF8_ACCEPT:
            # Between code points: skip ASCII a machine word at a time
            # (memcpy is the portable unaligned load; it compiles to one mov).
            while i + 8 <= n:
                memcpy(&word, p + i, 8)
                if word & _HIGH_BITS:
                    break
                i += 8
            while i < n and p[i] < 0x80:
                i += 1
            if i == n:
                break
        state = ws_utf8_next[state * 12 + ws_utf8_class[p[i]]]
        if state == _UTF8_REJECT:
            break
        i += 1
    return state


# --- masking ------------------------------------------------------------------------


cdef void _unmask(uint8_t* dst, const uint8_t* src, Py_ssize_t n,
                  const uint8_t* mask) noexcept nogil:
    """``dst[i] = src[i] ^ mask[i % 4]``, 8 bytes at a time then a byte tail.

    The 64-bit key is the mask laid out twice in memory order, so the XOR is
    right on either endianness. ``dst`` may equal ``src``.
    """
    cdef uint8_t key_bytes[8]
    cdef uint64_t key, word
    cdef Py_ssize_t i = 0
    memcpy(key_bytes, mask, 4)
    memcpy(key_bytes + 4, mask, 4)
    memcpy(&key, key_bytes, 8)
    while i + 32 <= n:
        # Four independent words per round keep the loop from stalling on
        # one load-xor-store chain.
        memcpy(&word, src + i, 8)
        word ^= key
        memcpy(dst + i, &word, 8)
        memcpy(&word, src + i + 8, 8)
        word ^= key
        memcpy(dst + i + 8, &word, 8)
        memcpy(&word, src + i + 16, 8)
        word ^= key
        memcpy(dst + i + 16, &word, 8)
        memcpy(&word, src + i + 24, 8)
        word ^= key
        memcpy(dst + i + 24, &word, 8)
        i += 32
    while i + 8 <= n:
        memcpy(&word, src + i, 8)
        word ^= key
        memcpy(dst + i, &word, 8)
        i += 8
    while i < n:
        # i is a multiple of 8 on entry, so the mask phase is still i % 4.
        dst[i] = src[i] ^ mask[i & 3]
        i += 1


cdef inline bytes _unmasked_bytes(const uint8_t* src, Py_ssize_t n, const uint8_t* mask):
    cdef bytes out = PyBytes_FromStringAndSize(NULL, n)
    _unmask(<uint8_t*>PyBytes_AS_STRING(out), src, n, mask)
    return out


def mask_payload(payload, mask) -> bytes:
    """XOR ``payload`` with the 4-byte ``mask`` repeated (masking is its own inverse)."""
    cdef Py_buffer data, key
    cdef bytes out
    PyObject_GetBuffer(mask, &key, PyBUF_SIMPLE)
    try:
        if key.len != 4:
            raise ValueError("a mask is exactly 4 bytes")
        PyObject_GetBuffer(payload, &data, PyBUF_SIMPLE)
        try:
            out = _unmasked_bytes(<const uint8_t*>data.buf, data.len, <const uint8_t*>key.buf)
        finally:
            PyBuffer_Release(&data)
    finally:
        PyBuffer_Release(&key)
    return out


# --- encoding -----------------------------------------------------------------------


cdef inline Py_ssize_t _header_size(Py_ssize_t length) noexcept nogil:
    if length < 126:
        return 2
    if length < 65536:
        return 4
    return 10


cdef void _write_header(uint8_t* out, uint8_t first, uint8_t mask_bit,
                        Py_ssize_t length) noexcept nogil:
    cdef int shift
    out[0] = first
    if length < 126:
        out[1] = mask_bit | <uint8_t>length
    elif length < 65536:
        out[1] = mask_bit | 126
        out[2] = <uint8_t>(length >> 8)
        out[3] = <uint8_t>length
    else:
        out[1] = mask_bit | 127
        for shift in range(8):
            out[2 + shift] = <uint8_t>((<uint64_t>length) >> (56 - 8 * shift))


cdef inline uint64_t _load_be64(const uint8_t* p) noexcept nogil:
    cdef uint64_t value = 0
    cdef int i
    for i in range(8):
        value = (value << 8) | p[i]
    return value


def encode_frame(int opcode, payload, bint fin=True) -> bytes:
    """One unmasked server frame (7, 16 or 64-bit length as the payload needs)."""
    cdef Py_buffer data
    cdef Py_ssize_t header
    cdef bytes out
    cdef uint8_t* dst
    if not (0 <= opcode <= _BINARY or _CLOSE <= opcode <= _PONG):
        raise ValueError(f"unknown opcode {opcode}")
    PyObject_GetBuffer(payload, &data, PyBUF_SIMPLE)
    try:
        if opcode >= _CLOSE and (data.len > _MAX_CONTROL or not fin):
            raise ValueError("control frames are unfragmented and carry at most 125 bytes")
        header = _header_size(data.len)
        out = PyBytes_FromStringAndSize(NULL, header + data.len)
        dst = <uint8_t*>PyBytes_AS_STRING(out)
        _write_header(dst, (0x80 if fin else 0) | opcode, 0, data.len)
        memcpy(dst + header, data.buf, data.len)
    finally:
        PyBuffer_Release(&data)
    return out


cdef inline bint _valid_close_code(long code) noexcept:
    # RFC 6455 7.4 plus the IANA registry: 1004-1006 and 1015 are reserved and
    # must not appear on the wire; 1016-2999 are unassigned.
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def encode_close(int code, str reason="") -> bytes:
    """A close frame; a reason longer than 123 UTF-8 bytes is cut at a code point."""
    cdef bytes raw
    if not _valid_close_code(code):
        raise ValueError(f"close code {code} may not be sent")
    raw = reason.encode("utf-8", "replace")
    if len(raw) > _MAX_CLOSE_REASON:
        # Cutting may split the last code point; "ignore" drops that fragment only.
        raw = raw[:_MAX_CLOSE_REASON].decode("utf-8", "ignore").encode("utf-8")
    return encode_frame(_CLOSE, bytes((code >> 8, code & 0xFF)) + raw)


def encode_client_frame(int opcode, payload, mask, bint fin=True, int rsv=0) -> bytes:
    """A masked client frame, for tests and load generators.

    No protocol validation beyond field widths (any opcode 0-15, ``rsv`` bits
    0-7 for RSV1..RSV3, oversized control frames), so tests can craft violations.
    """
    cdef Py_buffer data, key
    cdef Py_ssize_t header
    cdef bytes out
    cdef uint8_t* dst
    if not 0 <= opcode <= 15:
        raise ValueError(f"opcode {opcode} does not fit in 4 bits")
    if not 0 <= rsv <= 7:
        raise ValueError(f"rsv {rsv} does not fit in 3 bits")
    PyObject_GetBuffer(mask, &key, PyBUF_SIMPLE)
    try:
        if key.len != 4:
            raise ValueError("a mask is exactly 4 bytes")
        PyObject_GetBuffer(payload, &data, PyBUF_SIMPLE)
        try:
            header = _header_size(data.len) + 4
            out = PyBytes_FromStringAndSize(NULL, header + data.len)
            dst = <uint8_t*>PyBytes_AS_STRING(out)
            _write_header(dst, (0x80 if fin else 0) | (rsv << 4) | opcode, 0x80, data.len)
            memcpy(dst + header - 4, key.buf, 4)
            _unmask(dst + header, <const uint8_t*>data.buf, data.len, <const uint8_t*>key.buf)
        finally:
            PyBuffer_Release(&data)
    finally:
        PyBuffer_Release(&key)
    return out


def parse_close_payload(payload) -> tuple:
    """The ``(code, reason)`` of a received close frame.

    An empty payload gives ``(CLOSE_NO_STATUS, "")``. An invalid payload gives
    the code to close with instead: ``CLOSE_PROTOCOL_ERROR`` for a 1-byte
    payload or a code that may not be sent, ``CLOSE_INVALID_DATA`` for a reason
    that is not UTF-8; the reason then describes the problem.
    """
    cdef Py_buffer data
    cdef const uint8_t* p
    cdef long code
    PyObject_GetBuffer(payload, &data, PyBUF_SIMPLE)
    try:
        p = <const uint8_t*>data.buf
        if data.len == 0:
            return _NO_STATUS, ""
        if data.len == 1:
            return _PROTOCOL_ERROR, "close payload of 1 byte"
        code = (p[0] << 8) | p[1]
        if not _valid_close_code(code):
            return _PROTOCOL_ERROR, "invalid close code"
        if _utf8_run(_UTF8_ACCEPT, p + 2, data.len - 2) != _UTF8_ACCEPT:
            return _INVALID_DATA, "invalid UTF-8 in close reason"
        return code, PyUnicode_DecodeUTF8(<const char*>p + 2, data.len - 2, NULL)
    finally:
        PyBuffer_Release(&data)


# --- parsing ------------------------------------------------------------------------


cdef class FrameParser:
    """Incremental parser of client frames into complete messages.

    Idle, it is an object header and six fields: the input buffer exists only
    while a partial frame is pending and the reassembly buffer only while a
    fragmented message is in progress.
    """

    cdef Py_ssize_t _max_size
    cdef bytearray _buf  # the pending partial frame, or None
    cdef bytearray _msg  # the fragmented message so far, or None
    cdef int _msg_opcode  # _TEXT or _BINARY while _msg is in progress, else 0
    cdef uint32_t _utf8_state  # automaton state across the fragments of a text message
    cdef int _error_code  # nonzero once dead
    cdef str _error_reason

    def __init__(self, Py_ssize_t max_message_size):
        if max_message_size < 0:
            raise ValueError("max_message_size must be >= 0")
        self._max_size = max_message_size
        self._buf = None
        self._msg = None
        self._msg_opcode = 0
        self._utf8_state = _UTF8_ACCEPT
        self._error_code = 0
        self._error_reason = None

    def feed(self, data) -> list:
        """Consume ``data``; return the events completed so far, in order."""
        cdef Py_buffer view
        cdef list events = []
        cdef Py_ssize_t consumed, size
        if self._error_code:
            raise WebSocketError(self._error_code, self._error_reason)
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            if self._buf is None:
                # Nothing pending: parse straight from the caller's bytes and
                # copy only an incomplete tail.
                consumed = self._parse(<const uint8_t*>view.buf, view.len, events)
                if consumed < view.len:
                    self._buf = PyByteArray_FromStringAndSize(
                        <char*>view.buf + consumed, view.len - consumed)
            else:
                size = PyByteArray_GET_SIZE(self._buf)
                PyByteArray_Resize(self._buf, size + view.len)
                memcpy(PyByteArray_AS_STRING(self._buf) + size, view.buf, view.len)
                size += view.len
                # _parse creates only new objects, so the buffer cannot move
                # under the pointer while it runs.
                consumed = self._parse(
                    <const uint8_t*>PyByteArray_AS_STRING(self._buf), size, events)
                if consumed == size:
                    self._buf = None
                elif consumed:
                    # Dropping a bytearray prefix moves its start, not its bytes.
                    del self._buf[:consumed]
        finally:
            PyBuffer_Release(&view)
            if self._error_code:
                self._buf = None
                self._msg = None
        return events

    cdef int _fail(self, int code, str reason, list events) except -1:
        self._error_code = code
        self._error_reason = reason
        exc = WebSocketError(code, reason)
        exc.events = events
        raise exc

    cdef Py_ssize_t _parse(self, const uint8_t* p, Py_ssize_t n, list events) except -1:
        """Decode the complete frames in ``p[:n]``; return the bytes consumed."""
        cdef Py_ssize_t pos = 0, avail, header, start, pending
        cdef uint8_t b0, b1
        cdef int opcode
        cdef bint fin
        cdef uint64_t length
        cdef bytes payload
        while True:
            avail = n - pos
            if avail < 2:
                return pos
            b0 = p[pos]
            b1 = p[pos + 1]
            fin = b0 & 0x80
            opcode = b0 & 0x0F
            length = b1 & 0x7F
            # Header checks, all decidable from the first two bytes, in the
            # same order as the reference.
            if b0 & 0x70:
                self._fail(_PROTOCOL_ERROR, "reserved bits set", events)
            if not (opcode <= _BINARY or _CLOSE <= opcode <= _PONG):
                self._fail(_PROTOCOL_ERROR, "reserved opcode", events)
            if not b1 & 0x80:
                self._fail(_PROTOCOL_ERROR, "unmasked client frame", events)
            if opcode >= _CLOSE:
                if not fin:
                    self._fail(_PROTOCOL_ERROR, "fragmented control frame", events)
                if length > _MAX_CONTROL:
                    self._fail(_PROTOCOL_ERROR, "control frame payload over 125 bytes", events)
            elif opcode == _CONT:
                if self._msg_opcode == 0:
                    self._fail(_PROTOCOL_ERROR,
                               "continuation frame with no message in progress", events)
            elif self._msg_opcode != 0:
                self._fail(_PROTOCOL_ERROR,
                           "new data frame while a fragmented message is in progress", events)

            header = 6  # 2 fixed bytes + 4 mask bytes
            if length == 126:
                header = 8
                if avail < header:
                    return pos
                length = (<uint64_t>p[pos + 2] << 8) | p[pos + 3]
            elif length == 127:
                header = 14
                if avail < header:
                    return pos
                length = _load_be64(p + pos + 2)
                if length >> 63:
                    self._fail(_PROTOCOL_ERROR,
                               "64-bit payload length with the top bit set", events)
            elif avail < header:
                return pos
            # Checked on the header alone, before waiting for (and buffering)
            # the payload.
            if opcode < _CLOSE:
                pending = 0 if self._msg is None else PyByteArray_GET_SIZE(self._msg)
                if <uint64_t>pending + length > <uint64_t>self._max_size:
                    self._fail(_TOO_BIG, "message too big", events)
            if <uint64_t>(avail - header) < length:
                return pos

            start = pos + header
            if opcode >= _CLOSE or (fin and opcode != _CONT):
                # A whole message (or control frame): unmask into its result.
                payload = _unmasked_bytes(p + start, <Py_ssize_t>length, p + start - 4)
                if opcode == _TEXT and _utf8_run(
                        _UTF8_ACCEPT, <const uint8_t*>PyBytes_AS_STRING(payload),
                        <Py_ssize_t>length) != _UTF8_ACCEPT:
                    self._fail(_INVALID_DATA, "invalid UTF-8 in text message", events)
                events.append((opcode, payload))
            else:
                if opcode != _CONT:
                    # The first fragment opens the reassembly buffer.
                    self._msg = PyByteArray_FromStringAndSize(NULL, 0)
                    self._msg_opcode = opcode
                    self._utf8_state = _UTF8_ACCEPT
                self._append_fragment(p + start, <Py_ssize_t>length, p + start - 4, fin, events)
            pos = start + <Py_ssize_t>length

    cdef int _append_fragment(self, const uint8_t* src, Py_ssize_t length,
                              const uint8_t* mask, bint fin, list events) except -1:
        """Unmask a fragment straight onto the end of the reassembly buffer.

        The bytearray over-allocates as it grows, so many small fragments
        cost amortized linear time.
        """
        cdef Py_ssize_t size = PyByteArray_GET_SIZE(self._msg)
        cdef uint8_t* tail
        cdef bytes message
        PyByteArray_Resize(self._msg, size + length)
        tail = <uint8_t*>PyByteArray_AS_STRING(self._msg) + size
        _unmask(tail, src, length, mask)
        if self._msg_opcode == _TEXT:
            # Carrying the automaton state accepts a code point split across
            # fragments and rejects bad bytes as soon as they arrive.
            self._utf8_state = _utf8_run(self._utf8_state, tail, length)
            if self._utf8_state == _UTF8_REJECT or (fin and self._utf8_state != _UTF8_ACCEPT):
                self._fail(_INVALID_DATA, "invalid UTF-8 in text message", events)
        if fin:
            message = PyBytes_FromStringAndSize(PyByteArray_AS_STRING(self._msg), size + length)
            events.append((self._msg_opcode, message))
            self._msg = None
            self._msg_opcode = 0
            self._utf8_state = _UTF8_ACCEPT
        return 0

