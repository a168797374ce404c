"""Security policy: who may handshake, create, subscribe and publish.

The default allows every remote client everything the protocol allows (meta
channels are refused by the core itself, whatever the policy says).
Applications subclass `SecurityPolicy`; each method receives the session
(None before a handshake succeeds) and the whole message, so credentials in
`ext` (or in top-level fields) can be checked.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.session import Session

__all__ = ["SecurityPolicy"]

Message = dict[str, Any]


class SecurityPolicy:
    def can_handshake(self, message: Message) -> bool:
        return True

    def can_subscribe(self, session: Session, channel: str, message: Message) -> bool:
        return True

    def can_publish(self, session: Session, channel: str, message: Message) -> bool:
        return True
