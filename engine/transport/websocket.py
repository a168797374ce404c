"""The WebSocket transport: the upgrade, then Bayeux messages in text frames.

Each text frame carries a JSON array of messages, as CometD's WebSocket
transport sends them.  Frames are parsed by the compiled codec; messages go
to the core like an HTTP request's, through a `WsExchange`.  A `/meta/connect`
is held as over HTTP, but events are written to the socket as soon as they
are queued (the core calls `write_events`), unless the client reads too
slowly: then they stay in the session's bounded queue until the socket drains.

What one connection can cost is bounded, whatever its peer does:

* output: events leave in frames of at most `max_pending_output` bytes, and
  only while the transport is below its high-water mark; a peer that does
  not read for `write_timeout` is cut off (its session stays, so a client
  that was only slow resumes on a new socket and finds its queue);
* sessions: at most `max_sessions_per_connection` live sessions, kept in a
  dict (O(1) to add and remove, whatever their number);
* time: the first message must come within `ws_upgrade_timeout`, and some
  session on the connection must send `/meta/connect` at least every
  `timeout + interval + max_interval` (`ws_idle_timeout`), else it is closed.
  The deadlines are on the server's one connection wheel (engine.transport.deadlines).

Sessions are bound to the connection's browser: the `BAYEUX_BROWSER` cookie
of the upgrade request, or one the server issues with the 101 response.  A
new connection may resume a session (its first message a connect with a
live clientId, as CometD's clients do after a network failure) only with
the same cookie; a clientId alone, learned by someone else, is not enough.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING

from engine.api.context import HttpContext
from engine.delivery._batch import splice_ws
from engine.protocol._sessions import META_CONNECT
from engine.protocol.limits import ConnectionLimits
from engine.ratelog import CauseLog
from engine.transport._http import decode_messages
from engine.transport._wsframe import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_UNSUPPORTED,
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameParser,
    WebSocketError,
    accept_key,
    encode_close,
    encode_frame,
    parse_close_payload,
    valid_client_key,
)

if TYPE_CHECKING:
    from engine.protocol.session import Hold, Session
    from engine.transport.endpoint import Endpoint

__all__ = ["WebSocketConnection", "WsExchange", "upgrade_response"]

log = logging.getLogger("engine.websocket")
limit_log = CauseLog(log)

NO_DEADLINE = float("inf")
PROBE_GRACE = 1.5  # s a socket has to answer the ping sent when its session is resumed


def new_browser_cookie(set_cookie: bytes) -> tuple[str, bytes]:
    """A new browser id, and the header that sets it (`set_cookie % id`, the
    endpoint's, as the HTTP handshake uses)."""
    browser_id = secrets.token_hex(16)
    return browser_id, set_cookie % browser_id.encode()


def upgrade_response(headers: dict[bytes, bytes], extra: bytes = b"") -> tuple[int, bytes, str]:
    """Check an upgrade request's headers (RFC 6455 4.2.1).

    Returns (101, response head, "") or (status, extra headers, why not);
    `extra` goes into the 101 head (the browser cookie).
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
        b"Sec-WebSocket-Accept: " + accept_key(key) + b"\r\n" + extra + b"\r\n"
    )
    return 101, head, ""


class WsExchange:
    """The messages of one text frame, as the core sees them."""

    __slots__ = ("conn", "hold")

    transport = "websocket"
    new_browser_id: str | None = None  # (the cookie was set with the upgrade)

    def __init__(self, conn: WebSocketConnection) -> None:
        self.conn = conn
        self.hold: Hold | None = None

    @property
    def browser_id(self) -> str | None:
        return self.conn.browser_id

    @property
    def client_address(self) -> str | None:
        return self.conn.client_address

    @property
    def cookie_presented(self) -> bool:
        return self.conn.cookie_presented

    @property
    def http_context(self) -> HttpContext:
        kept = self.conn.http_context
        return kept if kept is not None else HttpContext({}, self.client_address, "websocket")

    @property
    def limits(self) -> ConnectionLimits | None:
        return self.conn.limits

    def make_limits(self) -> ConnectionLimits:
        conn = self.conn
        if conn.limits is None:
            conn.limits = ConnectionLimits(conn.throttle)
        return conn.limits

    def session_count(self) -> int:
        return len(self.conn.sessions)

    def room(self) -> int:
        return self.conn.room()

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
        "context",
        "core",
        "transport",
        "parser",
        "sessions",
        "holds",
        "paused",
        "closed",
        "close_sent",
        "browser_id",
        "cookie_presented",
        "client_address",
        "limits",
        "deadline",
        "deadline_slot",
        "write_due",
        "idle_due",
        "probe_due",
        "greeted",
        "throttled",
        "http_context",
    )

    def __init__(
        self,
        context: Endpoint,
        transport: asyncio.Transport,
        browser_id: str | None = None,
        client_address: str | None = None,
        cookie_presented: bool = False,
        http_context: HttpContext | None = None,
    ) -> None:
        self.context = context
        self.core = context.core
        self.transport: asyncio.Transport | None = transport
        self.parser = FrameParser(context.options.max_message_size)
        # Sessions whose events this socket carries (one, nearly always), in
        # a dict: O(1) removal however many a hostile client makes.
        self.sessions: dict[Session, None] = {}
        self.holds: dict[Session, Hold] = {}
        self.paused = False
        self.closed = False
        self.close_sent = False
        # The browser its sessions are bound to (the upgrade's cookie, or
        # the one issued with the 101), and where it comes from.
        self.browser_id = browser_id
        self.cookie_presented = cookie_presented  # (else the 101 issued browser_id)
        self.client_address = client_address
        self.limits: ConnectionLimits | None = None
        # Deadlines (engine.transport.deadlines): output blocked since, and the next
        # message or connect expected by.
        self.deadline = NO_DEADLINE
        self.deadline_slot = -1
        self.write_due = NO_DEADLINE
        self.idle_due = NO_DEADLINE
        self.probe_due = NO_DEADLINE  # a ping of ours unanswered (see probe)
        self.greeted = False  # a first message came
        self.throttled = False  # reading paused a while (see ConnectionLimits)
        # The upgrade request, for a policy that reads it (engine.api.context).
        self.http_context = http_context
        wait = context.options.ws_upgrade_timeout
        if wait > 0:
            self.idle_due = self.core.loop.time() + wait / 1000.0
            self.core.deadlines.arm(self, self.idle_due)

    # ----------------------------------------------------------- deadlines

    def _rearm(self) -> None:
        self.core.deadlines.arm(self, min(self.write_due, self.idle_due, self.probe_due))

    @property
    def probing(self) -> bool:
        return self.probe_due != NO_DEADLINE

    def probe(self) -> None:
        """Is the peer still there?  A ping; the connection is cut unless
        something (the pong) arrives within PROBE_GRACE (see core._resume)."""
        if self.probing or self.transport is None or self.close_sent:
            return
        self.write_frame(encode_frame(OP_PING, b"resume"))
        self.probe_due = self.core.loop.time() + PROBE_GRACE
        self._rearm()

    def on_deadline(self, now: float) -> None:
        """The wheel: output blocked too long, or no message / connect in time."""
        stats = self.core.stats
        if now >= self.write_due:
            stats.write_timeouts += 1
            limit_log.warning(
                "ws_write_timeout",
                "WebSocket from %s closed: it read nothing for %d ms (write_timeout) "
                "with output waiting; its sessions stay and may resume",
                self.client_address,
                self.context.options.write_timeout,
            )
            # Not close(): it would wait for the unread output to leave.
            if self.transport is not None:
                self.transport.abort()
            return
        if now >= self.probe_due:
            stats.ws_probe_timeouts += 1
            limit_log.warning(
                "ws_probe_timeout",
                "WebSocket from %s cut: its session resumes on a new socket and it did not "
                "answer a ping in %.1f s",
                self.client_address,
                PROBE_GRACE,
            )
            if self.transport is not None:
                self.transport.abort()
            return
        if now >= self.idle_due:
            if self.greeted:
                stats.ws_idle_timeouts += 1
                cause, why = "ws_idle_timeout", "no /meta/connect in time"
            else:
                stats.ws_first_message_timeouts += 1
                cause, why = "ws_upgrade_timeout", "no message after the upgrade"
            limit_log.warning(cause, "WebSocket from %s closed: %s", self.client_address, why)
            self.close(CLOSE_POLICY, why)
            return
        self._rearm()

    def _connected(self) -> None:
        """A session on this connection sent a connect: the idle deadline moves."""
        idle = self.core.ws_idle_s
        self.idle_due = self.core.loop.time() + idle if idle > 0 else NO_DEADLINE
        if self.write_due == NO_DEADLINE:
            # (A move later costs a float store; the wheel refiles when due.)
            self.core.deadlines.arm(self, self.idle_due)

    # ---------------------------------------------------------- connection

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        self.context.connections.discard(self)
        self.deadline = NO_DEADLINE
        core = self.core
        for hold in self.holds.values():
            core.abandon(hold)
        self.holds.clear()
        for session in self.sessions:
            if session.sink is self:
                # The session stays until max_interval expires it, so a
                # client that reconnects quickly keeps it (CometD).
                session.sink = None
        self.sessions.clear()

    def pause_writing(self) -> None:
        # A slow reader: stop reading its frames and let events wait in the
        # sessions' bounded queues until the socket drains, for write_timeout.
        self.paused = True
        if self.transport is not None:
            self.transport.pause_reading()
        wait = self.context.options.write_timeout
        if wait > 0:
            self.write_due = self.core.loop.time() + wait / 1000.0
            self._rearm()

    def resume_writing(self) -> None:
        self.paused = False
        self.write_due = NO_DEADLINE
        if self.transport is None:
            return
        self._rearm()
        if not self.throttled:
            self.transport.resume_reading()
        for session in list(self.sessions):
            if session.queue and session.sink is self:
                self.write_events(session)
                if self.paused:
                    break

    def throttle(self, owed: Callable[[], float]) -> None:
        """Read nothing for `owed()` seconds, decided at the end of this loop
        turn (a client past its publish rate; see ConnectionLimits)."""
        if self.throttled or self.transport is None:
            return
        self.throttled = True
        self.transport.pause_reading()
        self.core.loop.call_soon(self._pause_for, owed)

    def _pause_for(self, owed: Callable[[], float]) -> None:
        wait = owed()
        # Not read meanwhile, so it cannot show it is alive: its idle
        # deadline moves by the pause (later: a store, see engine.transport.deadlines).
        if self.idle_due != NO_DEADLINE:
            self.idle_due += wait
            self.deadline = min(self.write_due, self.idle_due, self.probe_due)
        # (One timer per throttled connection: rare, and bounded by them.)
        self.core.loop.call_later(wait, self._unthrottle)

    def _unthrottle(self) -> None:
        self.throttled = False
        if self.transport is not None and not self.paused:
            self.transport.resume_reading()

    def shutdown(self) -> None:
        self.close(CLOSE_GOING_AWAY, "server shutting down")

    def unbind(self, session: Session) -> None:
        if session.sink is self:
            session.sink = None
        self.sessions.pop(session, None)

    def bind(self, session: Session) -> None:
        previous = session.sink
        if previous is self:
            return
        if previous is not None:
            previous.unbind(session)
        session.sink = self
        self.sessions[session] = None

    # --------------------------------------------------------------- writing

    def write_frame(self, frame: bytes) -> None:
        if self.transport is not None and not self.close_sent:
            self.transport.write(frame)

    def room(self) -> int:
        """Bytes of events that may be written now: none while the peer does
        not read, else up to max_pending_output less what is not written yet."""
        transport = self.transport
        if self.paused or transport is None or self.close_sent:
            return 0
        return max(0, self.core.max_batch_bytes - transport.get_write_buffer_size())

    def write_events(self, session: Session) -> None:
        """Write a session's queued events now, in frames of a bounded size,
        until the queue is empty or the transport asks us to pause."""
        while session.queue:
            room = self.room()
            if room <= 0:
                return  # they wait in the session's queue (bounded, oldest dropped)
            assert self.transport is not None
            self.transport.write(splice_ws(self.core.take(session, room)))

    def close(self, code: int, reason: str) -> None:
        if self.transport is None:
            return
        if not self.close_sent:
            self.close_sent = True
            self.transport.write(encode_close(code, reason))
        self.transport.close()

    # --------------------------------------------------------------- reading

    def data_received(self, data: bytes) -> None:
        if self.probe_due != NO_DEADLINE:
            self.probe_due = NO_DEADLINE  # alive (a later deadline costs nothing)
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
        # The batch decoder every transport shares (engine.transport._http).
        messages, why = decode_messages(payload, self.context.options.max_batch)
        if messages is None:
            self.core.stats.ws_protocol_errors += 1
            self.close(CLOSE_INTERNAL, why)  # CometD closes with 1011
            return
        if not self.greeted:
            self.greeted = True
            self._connected()  # the upgrade deadline gives way to the idle one
        elif messages[0].get("channel") == META_CONNECT or (
            len(messages) > 1 and any(m.get("channel") == META_CONNECT for m in messages)
        ):
            self._connected()
        exchange = WsExchange(self)
        try:
            self.core.process(messages, exchange)
        except Exception as exc:
            self.core.stats.internal_errors += 1
            limit_log.exception(
                f"ws_frame:{type(exc).__name__}", "internal error handling a WebSocket frame"
            )
            self.close(CLOSE_INTERNAL, "internal error")
            return
        hold = exchange.hold
        if hold is not None:
            self.holds[hold.session] = hold
