"""A Bayeux session, its held /meta/connect, and the exchange the core answers.

`Session`, `Hold` and `AckState` are compiled (src_pyx/protocol/_sessions.pyx): they
are what the server keeps per idle client, so they are C structs with typed
fields, no timer, and no queue object until a message is actually queued.
"""

from __future__ import annotations

from typing import Protocol

from engine.protocol._sessions import AckState, Hold, Session
from engine.protocol.limits import ConnectionLimits

__all__ = ["AckState", "EventSink", "Exchange", "Hold", "Session"]


class EventSink(Protocol):
    """Where a session's events are written as soon as they are queued.

    A WebSocket connection is one (engine.transport.websocket); the core knows no
    more of the transport than this: it hands a session with queued events
    to `write_events`, and detaches a removed session with `unbind`.
    """

    closed: bool

    @property
    def probing(self) -> bool:
        """A liveness probe is out (see `probe`)."""

    def write_events(self, session: Session) -> None:
        """Write what `session` has queued, as far as the peer reads."""

    def unbind(self, session: Session) -> None:
        """`session` no longer writes here (removed, or moved elsewhere)."""

    def probe(self) -> None:
        """Check that the peer is alive; a silent one is closed."""


class Exchange(Protocol):
    """One request/response of a transport, as the core sees it.

    An HTTP request, or one WebSocket frame of messages.  The core completes
    it exactly once: `send` with encoded messages, or `fail` with an HTTP
    status (a superseded long-poll ends with 500, as CometD does).
    """

    transport: str
    new_browser_id: str | None
    hold: Hold | None

    @property
    def browser_id(self) -> str | None:
        """The browser the request came from (BAYEUX_BROWSER), if known."""

    @property
    def client_address(self) -> str | None:
        """The client's address (the peer, or the one trusted proxies forwarded)."""

    @property
    def limits(self) -> ConnectionLimits | None:
        """The limits of the connection it came on, if already made (else None)."""

    def make_limits(self) -> ConnectionLimits | None:
        """The connection's limits, made now if needed; None where the
        connection is not one client's (a trusted proxy's, another node's)."""

    def session_count(self) -> int:
        """Live sessions on this connection (WebSocket; 0 elsewhere)."""

    def bind(self, session: Session) -> None: ...

    def is_gone(self) -> bool: ...

    def send(self, parts: list[bytes]) -> None: ...

    def room(self) -> int:
        """Bytes of queued events a reply may carry now (WebSocket only)."""

    def fail(self, status: int, detail: str = "") -> None: ...
