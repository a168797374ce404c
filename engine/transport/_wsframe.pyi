"""Typed face of the compiled `engine.transport._wsframe` (source: src_pyx/transport/_wsframe.pyx).

Same API as its plain-Python twin, the test oracle `tests/oracles/wsframe.py`,
which shares `WebSocketError`, `accept_key` and `valid_client_key` with it.
"""

from typing import Final, final

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

_Bytes = bytes | bytearray | memoryview

OP_CONT: Final = 0
OP_TEXT: Final = 1
OP_BINARY: Final = 2
OP_CLOSE: Final = 8
OP_PING: Final = 9
OP_PONG: Final = 10

CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001
CLOSE_PROTOCOL_ERROR: Final = 1002
CLOSE_UNSUPPORTED: Final = 1003
CLOSE_NO_STATUS: Final = 1005
CLOSE_INVALID_DATA: Final = 1007
CLOSE_POLICY: Final = 1008
CLOSE_TOO_BIG: Final = 1009
CLOSE_INTERNAL: Final = 1011

MAX_CONTROL_PAYLOAD: Final = 125

class WebSocketError(Exception):
    """A protocol violation: fail the connection with close frame `code`."""

    code: int
    reason: str
    events: list[tuple[int, bytes]]  # decoded before the violation
    def __init__(self, code: int, reason: str) -> None: ...

def accept_key(sec_websocket_key: bytes) -> bytes: ...
def valid_client_key(key: bytes) -> bool: ...
def encode_frame(opcode: int, payload: _Bytes, fin: bool = True) -> bytes: ...
def encode_close(code: int, reason: str = "") -> bytes: ...
def mask_payload(payload: _Bytes, mask: bytes) -> bytes: ...
def encode_client_frame(
    opcode: int, payload: _Bytes, mask: bytes, fin: bool = True, rsv: int = 0
) -> bytes: ...
def parse_close_payload(payload: _Bytes) -> tuple[int, str]: ...

@final
class FrameParser:
    def __init__(self, max_message_size: int) -> None: ...
    def feed(self, data: _Bytes) -> list[tuple[int, bytes]]: ...
