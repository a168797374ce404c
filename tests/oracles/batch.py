"""Pure-Python twin of the compiled `engine.delivery._batch` module (a test oracle).

The server always runs the compiled module (this one is not shipped); the
tests hold the two equal.
"""

from __future__ import annotations

from typing import Any

import orjson

__all__ = [
    "encode_all",
    "encode_message",
    "splice_array",
    "splice_http",
    "splice_jsonp",
    "splice_ws",
]


def _check(parts: list[bytes]) -> None:
    for part in parts:
        if type(part) is not bytes:
            raise TypeError(f"encoded message must be bytes, not {type(part).__name__}")


def splice_array(parts: list[bytes]) -> bytes:
    _check(parts)
    return b"[" + b",".join(parts) + b"]"


def splice_http(head: bytes, parts: list[bytes]) -> bytes:
    body = splice_array(parts)
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


def splice_jsonp(head: bytes, callback: bytes, parts: list[bytes]) -> bytes:
    body = callback + b"(" + splice_array(parts) + b")"
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


def splice_ws(parts: list[bytes]) -> bytes:
    body = splice_array(parts)
    n = len(body)
    if n < 126:
        header = bytes((0x81, n))
    elif n < 65536:
        header = bytes((0x81, 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x81, 127)) + n.to_bytes(8, "big")
    return header + body


def encode_message(message: Any) -> bytes:
    return orjson.dumps(message)


def encode_all(messages: list[Any]) -> list[bytes]:
    return [orjson.dumps(m) for m in messages]
