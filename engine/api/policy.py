"""Security: the policy (who may handshake, create, subscribe, publish) and
per-channel authorizers, as CometD defines them.

`SecurityPolicy` methods receive the session (None before a handshake
succeeds) and the whole message, so a token in the handshake `ext` (or in a
top-level field) can be checked.  Each may be sync or async; if any is async
the server awaits all its decisions for a batch before processing it.  Each
answers True, False, or `deny(reason)`: refused with the reason in the error
(`403:<reason>:handshake_denied`, `...:publish_denied`).

Authorizers answer `GRANT`, `IGNORE` or `deny(reason)` for an operation on a
channel (CometD's Authorizer): a DENY from any authorizer that applies wins;
otherwise at least one GRANT is needed once any authorizer applies
(`403:denied_by_not_granting:...`).  An authorizer registered on a pattern
applies to the channels it matches and, for subscriptions, to every pattern
that overlaps it, so `/**` cannot read `/private/**` behind its back (the
wildcard hole Faye's documentation warns about).

Meta channels are refused by the core whatever the policy says.

The HTTP request behind a decision (headers, cookies, the client's address)
is `engine.api.context.current_context()`; a policy that reads it over
WebSocket sets `uses_http_context = True` (see that module).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from engine.protocol.message import Message
from engine.routing._channels import (
    CHANNEL_INVALID,
    ChannelTrie,
    normalize_channel,
    validate_channel,
)

if TYPE_CHECKING:
    from engine.protocol.session import Session

__all__ = [
    "Authorizer",
    "Deny",
    "GRANT",
    "IGNORE",
    "SecurityPolicy",
    "deny",
    "patterns_overlap",
]


@dataclass(frozen=True, slots=True)
class Deny:
    reason: str = "denied_by_security_policy"


# What a decision method answers (or, if async, what it awaits to).
Decision = bool | Deny | Awaitable[bool | Deny]

GRANT = "grant"
IGNORE = "ignore"
AuthorizerResult = str | Deny
# (operation, channel, session, message) -> GRANT | IGNORE | Deny
Authorizer = Callable[[str, str, "Session | None", Message], AuthorizerResult]


def deny(reason: str = "denied_by_security_policy") -> Deny:
    safe = "".join(c for c in reason if c.isalnum() or c in "_-") or "denied"
    return Deny(safe)


def patterns_overlap(a: str, b: str) -> bool:
    """Could some channel match both `a` and `b` (channels or patterns)?"""
    sa, sb = a.strip("/").split("/"), b.strip("/").split("/")
    for i in range(max(len(sa), len(sb))):
        x = sa[i] if i < len(sa) else None
        y = sb[i] if i < len(sb) else None
        if x == "**" or y == "**":
            # `**` takes one or more segments: the other must have one here.
            return x is not None and y is not None
        if x is None or y is None:
            return False
        if x != y and x != "*" and y != "*":
            return False
    return True


class SecurityPolicy:
    """Allows everything the protocol allows; subclass to restrict."""

    # Keep each WebSocket's upgrade request (and forward the headers of
    # requests sent to another node) so that current_context() has them:
    # True for every header, or the (lower-case) names of those to keep.
    uses_http_context: bool | frozenset[str] = False

    def __init__(self) -> None:
        self._authorizers = ChannelTrie()
        self._registered: dict[str, list[Authorizer]] = {}

    def can_handshake(self, session: Session, message: Message) -> Decision:
        """`session` is the one being created; store what you learn in
        `session.attributes` (e.g. the authenticated user)."""
        return True

    def can_create(self, session: Session, channel: str, message: Message) -> Decision:
        return True

    def can_subscribe(self, session: Session, channel: str, message: Message) -> Decision:
        return True

    def can_publish(self, session: Session, channel: str, message: Message) -> Decision:
        return True

    # ------------------------------------------------------------ authorizers

    def add_authorizer(self, pattern: str, authorizer: Authorizer) -> None:
        name = normalize_channel(pattern)
        if validate_channel(name) == CHANNEL_INVALID:
            raise ValueError(f"invalid channel or pattern: {pattern!r}")
        self._authorizers.add(name, authorizer)
        self._registered.setdefault(name, []).append(authorizer)

    def authorize(
        self, operation: str, channel: str, session: Session | None, message: Message
    ) -> str | None:
        """The refusal reason for `operation` on `channel`, or None if allowed."""
        if not self._registered:
            return None
        if "*" in channel:  # a wildcard subscription: every overlapping authorizer
            found = [
                a
                for pattern, authorizers in self._registered.items()
                if patterns_overlap(pattern, channel)
                for a in authorizers
            ]
        else:
            found = cast("list[Authorizer]", self._authorizers.match(channel))
        if not found:
            return None
        granted = False
        for authorizer in found:
            result = authorizer(operation, channel, session, message)
            if isinstance(result, Deny):
                return result.reason
            if result == GRANT:
                granted = True
            elif result != IGNORE:
                raise TypeError(f"authorizer {authorizer!r} returned {result!r}")
        return None if granted else "denied_by_not_granting"

    def bind(self, core: Any) -> None:
        """Called by the server's core when it starts with this policy (a
        policy that ends sessions itself keeps it: see engine.api.tokens)."""

    async def aclose(self) -> None:
        """Called when the server stops (a policy with connections closes them)."""

    @property
    def async_operations(self) -> frozenset[str]:
        """The operations (handshake, create, subscribe, publish) whose
        method is a coroutine function: requests that need one are decided
        before they are processed; the others (every connect) are not delayed."""
        return frozenset(
            op
            for op in ("handshake", "create", "subscribe", "publish")
            if inspect.iscoroutinefunction(getattr(self, "can_" + op))
        )

    @property
    def is_async(self) -> bool:
        """True when a decision method is a coroutine function."""
        return bool(self.async_operations)
