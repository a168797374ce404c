"""A Bayeux session and its held /meta/connect.

Sessions are what the server keeps per idle client, so they are small:
`__slots__`, no timer, no queue object until a message is actually queued.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from engine.broker import Broker
    from engine.extensions import Extension
    from engine.websocket import WebSocketConnection

__all__ = ["AckState", "Exchange", "Hold", "Session"]


class Exchange(Protocol):
    """One request/response of a transport, as the core sees it.

    An HTTP request, or one WebSocket frame of messages.  The core completes
    it exactly once: `send` with encoded messages, or `fail` with an HTTP
    status (a superseded long-poll ends with 500, as CometD does).
    """

    transport: str
    browser_id: str | None
    new_browser_id: str | None
    hold: Hold | None

    def bind(self, session: Session) -> None: ...

    def is_gone(self) -> bool: ...

    def send(self, parts: list[bytes]) -> None: ...

    def fail(self, status: int, detail: str = "") -> None: ...


class Hold:
    """A /meta/connect waiting for an event or its deadline."""

    __slots__ = (
        "session",
        "exchange",
        "message_id",
        "deadline",
        "counted_browser",
        "advise",
        "request",
    )

    def __init__(
        self, session: Session, exchange: Exchange, message_id: Any, deadline: float, advise: bool
    ) -> None:
        self.session = session
        self.exchange = exchange
        self.message_id = message_id
        self.deadline = deadline
        # The browser whose held-connect quota this hold uses (HTTP only).
        self.counted_browser: str | None = None
        # Whether the reply carries full advice (client sent advice, first hold...).
        self.advise = advise
        # The connect request, kept only while extensions need it for the reply.
        self.request: dict[str, Any] | None = None


class AckState:
    """Acknowledge extension state of one session (bayeux.md 10.1)."""

    __slots__ = ("batch", "unacked", "pending")

    def __init__(self) -> None:
        self.batch = 1  # the number the next connect reply carries
        self.unacked: list[tuple[int, bytes]] = []  # (batch sent in, event)
        # Events of a connect reply being composed (immediate replies).
        self.pending: list[bytes] | None = None


class Session:
    """Server-side state of one client (one clientId)."""

    __slots__ = (
        "id",
        "browser_id",
        "transport",
        "queue",
        "subscriptions",
        "hold",
        "expires_at",
        "expiry_slot",
        "connected",
        "removed",
        "flush_pending",
        "advice_dirty",
        "dropped",
        "broker",
        "ws",
        "extensions",
        "local",
        "attributes",
        "ack",
        "lazy_due",
        "bucket",
    )

    def __init__(self, client_id: str, browser_id: str | None, transport: str, broker: Broker):
        self.id = client_id
        self.browser_id = browser_id
        self.transport = transport
        # Encoded messages waiting for delivery; None while empty (the common,
        # idle case) so an idle session carries no list.
        self.queue: list[bytes] | None = None
        self.subscriptions: set[str] | None = None
        self.hold: Hold | None = None
        self.expires_at = 0.0
        self.expiry_slot = -1
        self.connected = False
        self.removed = False
        self.flush_pending = False
        # True after temporary advice (multiple-clients): the next connect
        # reply carries the normal advice again (bayeux.md 6.3 rule 4).
        self.advice_dirty = False
        self.dropped = 0
        self.broker = broker
        # The WebSocket connection that carries this session's events, if any.
        self.ws: WebSocketConnection | None = None
        # This session's own extensions (rare; None keeps idle sessions small).
        self.extensions: list[Extension] | None = None
        # For in-process (local) sessions: called with each encoded delivery.
        self.local: Callable[[bytes], None] | None = None
        # Application data about the session (e.g. the authenticated user).
        self.attributes: dict[str, Any] | None = None
        self.ack: AckState | None = None  # acknowledge extension, when negotiated
        self.lazy_due = 0.0  # when queued lazy messages must leave at the latest
        self.bucket: list[float] | None = None  # publish rate limit: [tokens, at]

    def take_queue(self) -> list[bytes]:
        queue = self.queue
        self.queue = None
        return queue if queue is not None else []

    def __repr__(self) -> str:
        return f"<Session {self.id} {self.transport}{' removed' if self.removed else ''}>"
