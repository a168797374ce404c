# cython: freethreading_compatible = False
"""Splice already-encoded Bayeux messages into one response.

Every delivered message is encoded to JSON bytes once, when it is published
(encode once); a session's queue holds references to those bytes.  A
response is the messages joined into a JSON array, behind the HTTP head (or
inside a JSONP call).  These functions build that response with one
allocation and one memcpy per part, instead of the several temporary bytes
objects that `b"[" + b",".join(parts) + b"]"` and a header concatenation cost.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.string cimport memcpy

import orjson

cdef object _dumps = orjson.dumps


cdef Py_ssize_t _array_size(list parts) except -1:
    """Size of `[` + parts joined by `,` + `]`; every part must be bytes."""
    # These functions are cpdef (other compiled modules cimport them), where
    # `not None` is not available: None is refused here, not dereferenced.
    if parts is None:
        raise TypeError("parts must be a list of bytes, not None")
    cdef Py_ssize_t n = len(parts)
    cdef Py_ssize_t size = 2 + (n - 1 if n > 0 else 0)
    cdef object part
    for part in parts:
        if type(part) is not bytes:
            raise TypeError(f"encoded message must be bytes, not {type(part).__name__}")
        size += PyBytes_GET_SIZE(part)
    return size


cdef char* _write_array(char* out, list parts):
    cdef Py_ssize_t i, n = len(parts), length
    cdef bytes part
    out[0] = b'['
    out += 1
    for i in range(n):
        if i:
            out[0] = b','
            out += 1
        part = <bytes>parts[i]
        length = PyBytes_GET_SIZE(part)
        memcpy(out, PyBytes_AS_STRING(part), length)
        out += length
    out[0] = b']'
    return out + 1


cdef int _length_line(char* out, Py_ssize_t length):
    """Write `Content-Length: <length>` and the blank line; return its size.

    (snprintf's format parsing cost more than the rest of a small response.)
    """
    cdef char digits[24]
    cdef int n = 0, i, size
    cdef const char* name = b"Content-Length: "
    while True:
        digits[n] = <char>(48 + length % 10)
        n += 1
        length //= 10
        if length == 0:
            break
    memcpy(out, name, 16)
    for i in range(n):
        out[16 + i] = digits[n - 1 - i]
    size = 16 + n
    memcpy(out + size, b"\r\n\r\n", 4)
    return size + 4


cpdef bytes splice_array(list parts):
    """`[part,part,...]`: the body of one response or one WebSocket frame."""
    cdef Py_ssize_t size = _array_size(parts)
    cdef bytes result = PyBytes_FromStringAndSize(NULL, size)
    _write_array(PyBytes_AS_STRING(result), parts)
    return result


cpdef bytes splice_http(bytes head, list parts):
    """An HTTP response whose body is the JSON array of `parts`.

    `head` is the status line and every header except Content-Length, each
    ending in CRLF; this adds `Content-Length`, the blank line and the body.
    """
    if head is None:
        raise TypeError("head must be bytes, not None")
    cdef Py_ssize_t body = _array_size(parts)
    cdef char length_line[48]
    cdef int line = _length_line(length_line, body)
    cdef Py_ssize_t hsize = PyBytes_GET_SIZE(head)
    cdef bytes result = PyBytes_FromStringAndSize(NULL, hsize + line + body)
    cdef char* out = PyBytes_AS_STRING(result)
    memcpy(out, PyBytes_AS_STRING(head), hsize)
    memcpy(out + hsize, length_line, line)
    _write_array(out + hsize + line, parts)
    return result


cpdef bytes splice_jsonp(bytes head, bytes callback, list parts):
    """An HTTP response whose body is `callback([parts...])` (callback-polling).

    The callback name must have been validated by the caller (identifier
    characters only); it is copied verbatim.
    """
    if head is None or callback is None:
        raise TypeError("head and callback must be bytes, not None")
    cdef Py_ssize_t cb = PyBytes_GET_SIZE(callback)
    cdef Py_ssize_t body = _array_size(parts) + cb + 2
    cdef char length_line[48]
    cdef int line = _length_line(length_line, body)
    cdef Py_ssize_t hsize = PyBytes_GET_SIZE(head)
    cdef bytes result = PyBytes_FromStringAndSize(NULL, hsize + line + body)
    cdef char* out = PyBytes_AS_STRING(result)
    memcpy(out, PyBytes_AS_STRING(head), hsize)
    out += hsize
    memcpy(out, length_line, line)
    out += line
    memcpy(out, PyBytes_AS_STRING(callback), cb)
    out += cb
    out[0] = b'('
    out = _write_array(out + 1, parts)
    out[0] = b')'
    return result


cpdef bytes encode_message(object message):
    """Encode one message object with orjson (the single JSON encoder used)."""
    return _dumps(message)


cpdef list encode_all(list messages):
    """Encode each message of a list; the reply half of a response."""
    cdef object m
    if messages is None:
        raise TypeError("messages must be a list, not None")
    return [_dumps(m) for m in messages]


cpdef bytes splice_ws(list parts):
    """One unmasked, final WebSocket text frame whose payload is `[parts...]`.

    Server frames are never masked (RFC 6455 5.1); the header takes 2, 4 or
    10 bytes depending on the payload length.
    """
    cdef Py_ssize_t body = _array_size(parts)
    cdef Py_ssize_t header = 2 if body < 126 else (4 if body < 65536 else 10)
    cdef bytes result = PyBytes_FromStringAndSize(NULL, header + body)
    cdef unsigned char* out = <unsigned char*>PyBytes_AS_STRING(result)
    cdef int i
    out[0] = 0x81  # FIN + text
    if body < 126:
        out[1] = <unsigned char>body
    elif body < 65536:
        out[1] = 126
        out[2] = <unsigned char>(body >> 8)
        out[3] = <unsigned char>(body & 0xFF)
    else:
        out[1] = 127
        for i in range(8):
            out[2 + i] = <unsigned char>((body >> (8 * (7 - i))) & 0xFF)
    _write_array(<char*>out + header, parts)
    return result
