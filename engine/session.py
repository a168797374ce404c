"""A Bayeux session, its held /meta/connect, and the exchange the core answers.

`Session`, `Hold` and `AckState` are compiled (src_pyx/_sessions.pyx): they
are what the server keeps per idle client, so they are C structs with typed
fields, no timer, and no queue object until a message is actually queued.
"""

from __future__ import annotations

from typing import Protocol

from engine._sessions import AckState, Hold, Session

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
