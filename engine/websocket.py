"""The WebSocket transport: the upgrade, then Bayeux messages in text frames.

Each text frame carries a JSON array of messages (bayeux.md 7.4).  Frames are
parsed by the compiled codec; messages go to the core like an HTTP request's,
through a `WsExchange`.  A `/meta/connect` is held as over HTTP, but events
are written to the socket as soon as they are queued (the core calls
`write_events`), unless the client reads too slowly: then they stay in the
session's bounded queue until the socket drains.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import orjson

from engine._batch import splice_ws
from engine._wsframe import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL,
    CLOSE_NORMAL,
    CLOSE_UNSUPPORTED,
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameParser,
    encode_close,
    encode_frame,
    parse_close_payload,
)
from engine.wsframe import WebSocketError, accept_key, valid_client_key

if TYPE_CHECKING:
    from engine.server import BayeuxServer
    from engine.session import Hold, Session

__all__ = ["WebSocketConnection", "WsExchange", "upgrade_response"]

log = logging.getLogger("engine.websocket")


def upgrade_response(headers: dict[bytes, bytes]) -> tuple[int, bytes, str]:
    """Check an upgrade request's headers (RFC 6455 4.2.1).

    Returns (101, response head, "") or (status, extra headers, why not).
    """
    if headers.get(b"upgrade", b"").lower() != b"websocket":
        return 400, b"", "Upgrade header is not websocket"
    if b"upgrade" not in headers.get(b"connection", b"").lower():
        return 400, b"", "Connection header lacks upgrade"
    if headers.get(b"sec-websocket-version") != b"13":
        return 426, b"Sec-WebSocket-Version: 13\r\n", "only WebSocket version 13 is supported"
    key = headers.get(b"sec-websocket-key", b"").strip()
    if not valid_client_key(key):
        return 400, b"", "missing or invalid Sec-WebSocket-Key"
    head = (
        b"HTTP/1.1 101 Switching Protocols\r\n"
        b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept_key(key) + b"\r\n\r\n"
    )
    return 101, head, ""


class WsExchange:
    """The messages of one text frame, as the core sees them."""

    __slots__ = ("conn", "hold")

    transport = "websocket"
    browser_id: str | None = None  # the cookie plays no role on WebSocket (7.4)
    new_browser_id: str | None = None

    def __init__(self, conn: WebSocketConnection) -> None:
        self.conn = conn
        self.hold: Hold | None = None

    def bind(self, session: Session) -> None:
        self.conn.bind(session)

    def is_gone(self) -> bool:
        return self.conn.closed

    def send(self, parts: list[bytes]) -> None:
        self.conn.write_frame(splice_ws(parts))

    def fail(self, status: int, detail: str = "") -> None:
        # A superseded connect on WebSocket is just dropped (CometD).
        pass


class WebSocketConnection(asyncio.Protocol):
    __slots__ = (
        "server",
        "core",
        "transport",
        "parser",
        "sessions",
        "holds",
        "paused",
        "closed",
        "close_sent",
    )

    def __init__(self, server: BayeuxServer, transport: asyncio.Transport) -> None:
        self.server = server
        self.core = server.core
        self.transport: asyncio.Transport | None = transport
        self.parser = FrameParser(server.options.max_message_size)
        # Sessions whose events this socket carries (one, nearly always).
        self.sessions: list[Session] = []
        self.holds: list[Hold] = []
        self.paused = False
        self.closed = False
        self.close_sent = False

    # ---------------------------------------------------------- connection

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        self.server.connections.discard(self)
        core = self.core
        for hold in self.holds:
            core.abandon(hold)
        self.holds.clear()
        for session in self.sessions:
            if session.ws is self:
                # The session stays until max_interval expires it, so a
                # client that reconnects quickly keeps it (CometD).
                session.ws = None
        self.sessions.clear()

    def pause_writing(self) -> None:
        # A slow reader: stop reading its frames and let events wait in the
        # sessions' bounded queues until the socket drains.
        self.paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.paused = False
        if self.transport is None:
            return
        self.transport.resume_reading()
        for session in self.sessions:
            if session.queue and session.ws is self:
                self.write_events(session)

    def shutdown(self) -> None:
        self.close(CLOSE_GOING_AWAY, "server shutting down")

    def unbind(self, session: Session) -> None:
        if session.ws is self:
            session.ws = None
        if session in self.sessions:
            self.sessions.remove(session)

    def bind(self, session: Session) -> None:
        previous = session.ws
        if previous is self:
            return
        if previous is not None and session in previous.sessions:
            previous.sessions.remove(session)
        session.ws = self
        self.sessions.append(session)

    # --------------------------------------------------------------- writing

    def write_frame(self, frame: bytes) -> None:
        if self.transport is not None and not self.close_sent:
            self.transport.write(frame)

    def write_events(self, session: Session) -> None:
        """Write a session's queued events now, in one frame, unless paused."""
        if self.paused or self.transport is None or self.close_sent:
            return  # they wait in the session's queue (bounded by max_queue)
        self.transport.write(splice_ws(session.take_queue()))

    def close(self, code: int, reason: str) -> None:
        if self.transport is None:
            return
        if not self.close_sent:
            self.close_sent = True
            self.transport.write(encode_close(code, reason))
        self.transport.close()

    # --------------------------------------------------------------- reading

    def data_received(self, data: bytes) -> None:
        try:
            events = self.parser.feed(data)
        except WebSocketError as exc:
            for opcode, payload in exc.events:
                self.on_event(opcode, payload)
            log.debug("closing WebSocket: %s", exc)
            self.core.stats.ws_protocol_errors += 1
            self.close(exc.code, exc.reason)
            return
        for opcode, payload in events:
            self.on_event(opcode, payload)

    def on_event(self, opcode: int, payload: bytes) -> None:
        if self.close_sent:
            return
        if opcode == OP_TEXT:
            self.on_text(payload)
        elif opcode == OP_PING:
            self.write_frame(encode_frame(OP_PONG, payload))
        elif opcode == OP_CLOSE:
            self.close(self.close_reply_code(payload), "")
        elif opcode == OP_BINARY:
            self.close(CLOSE_UNSUPPORTED, "binary frames are not supported")
        # OP_PONG: nothing to do

    @staticmethod
    def close_reply_code(payload: bytes) -> int:
        """The code answering a peer's close frame (RFC 6455 5.5.1, 7.4).

        The peer's own code is echoed; a malformed close payload (one byte, a
        code that may not be sent, a reason that is not UTF-8) is answered
        with the error code parse_close_payload gives instead.
        """
        if not payload:
            return CLOSE_NORMAL
        code, _ = parse_close_payload(payload)
        return code

    def on_text(self, payload: bytes) -> None:
        messages: Any
        try:
            messages = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self.core.stats.ws_protocol_errors += 1
            self.close(CLOSE_INTERNAL, "invalid JSON")  # CometD closes with 1011
            return
        if type(messages) is dict:
            messages = [messages]
        if (
            type(messages) is not list
            or not messages
            or len(messages) > self.server.options.max_batch
            or any(type(m) is not dict for m in messages)
        ):
            self.core.stats.ws_protocol_errors += 1
            self.close(CLOSE_INTERNAL, "a frame must hold a JSON array of message objects")
            return
        exchange = WsExchange(self)
        try:
            self.core.process(messages, exchange)
        except Exception:
            log.exception("internal error handling a WebSocket frame")
            self.close(CLOSE_INTERNAL, "internal error")
            return
        if exchange.hold is not None:
            self.holds.append(exchange.hold)
            if len(self.holds) > 1:
                self.holds = [h for h in self.holds if h.session.hold is h]
