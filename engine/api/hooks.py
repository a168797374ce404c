"""Application code the core calls: services, listeners and extensions.

Registries keyed by channel pattern use the compiled trie, so a listener on
`/chat/**` costs one trie walk per message, not one test per listener.  Every
call into application code is guarded: an exception is logged with its
traceback once, and the message it concerned fails or is refused, never the
server or other clients.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, cast

from engine.api.extensions import Extension
from engine.protocol.message import Message
from engine.ratelog import CauseLog, name_of
from engine.routing._channels import (
    CHANNEL_INVALID,
    ChannelTrie,
    normalize_channel,
    validate_channel,
)

if TYPE_CHECKING:
    from engine.protocol.session import Session

__all__ = [
    "Hooks",
    "MessageListener",
    "ServiceHandler",
    "SessionListener",
    "SubscriptionListener",
]

log = logging.getLogger("engine.hooks")
# Application code that raises: traceback once, then a count per period, so a
# client that makes a listener fail on every message cannot flood the log.
failures = CauseLog(log)

# A service returns the data of its answer to the caller, or None for no answer.
ServiceHandler = Callable[["Session", Message], Any | Awaitable[Any]]
# A publish listener returns False to delete the message (404::message_deleted).
MessageListener = Callable[["Session | None", str, Message], bool | None]
SubscriptionListener = Callable[["Session", str], None]
SessionListener = Callable[["Session"], None]
RemovalListener = Callable[["Session", bool], None]


class _Registered:
    """A function in a trie: hashable by identity, remembers if it is async."""

    __slots__ = ("function", "is_async")

    def __init__(self, function: Callable[..., Any]) -> None:
        self.function = function
        self.is_async = inspect.iscoroutinefunction(function)


def pattern_covers(outer: str, inner: str) -> bool:
    """Does every channel that `inner` matches also match `outer`?"""
    if outer == inner:
        return True
    if outer.endswith("/**"):
        prefix = outer[:-2]
        return inner.startswith(prefix) and len(inner) > len(prefix)
    return False


def _pattern(pattern: str) -> str:
    name = normalize_channel(pattern)
    if validate_channel(name) == CHANNEL_INVALID:
        raise ValueError(f"invalid channel or pattern: {pattern!r}")
    return name


class Hooks:
    __slots__ = (
        "services",
        "publish_listeners",
        "subscribe_listeners",
        "unsubscribe_listeners",
        "session_added",
        "session_removed",
        "extensions",
        "background",
        "lazy_channels",
        "history_patterns",
        "replay_patterns",
    )

    def __init__(self) -> None:
        self.services = ChannelTrie()
        self.publish_listeners = ChannelTrie()
        self.subscribe_listeners = ChannelTrie()
        self.unsubscribe_listeners = ChannelTrie()
        self.session_added: list[SessionListener] = []
        self.session_removed: list[RemovalListener] = []
        self.extensions: list[Extension] = []
        self.lazy_channels = ChannelTrie()
        self.history_patterns: list[str] = []  # (the core's History takes them)
        self.replay_patterns: list[str] = []  # (the core's Replay takes them)
        self.background: set[asyncio.Task[Any]] = set()

    # ----------------------------------------------------------- registering

    def add_service(self, pattern: str, handler: ServiceHandler) -> None:
        name = _pattern(pattern)
        if not name.startswith("/service/"):
            raise ValueError(f"a service channel starts with /service/: {pattern!r}")
        self.services.add(name, _Registered(handler))

    def add_publish_listener(self, pattern: str, listener: MessageListener) -> None:
        self.publish_listeners.add(_pattern(pattern), _Registered(listener))

    def add_subscribe_listener(self, pattern: str, listener: SubscriptionListener) -> None:
        self.subscribe_listeners.add(_pattern(pattern), _Registered(listener))

    def add_unsubscribe_listener(self, pattern: str, listener: SubscriptionListener) -> None:
        self.unsubscribe_listeners.add(_pattern(pattern), _Registered(listener))

    # --------------------------------------------------------------- calling

    def services_for(self, channel: str) -> list[_Registered]:
        return cast("list[_Registered]", self.services.match(channel))

    def allow_publish(self, session: Session | None, channel: str, message: Message) -> bool:
        """Publish listeners; False from any of them deletes the message."""
        for entry in cast("list[_Registered]", self.publish_listeners.match(channel)):
            try:
                if entry.function(session, channel, message) is False:
                    return False
            except Exception:
                failures.exception(
                    name_of(entry.function),
                    "publish listener %r raised; message deleted",
                    entry.function,
                )
                return False
        return True

    def subscribed(self, trie: ChannelTrie, session: Session, pattern: str) -> None:
        """Tell the listeners whose pattern covers what was (un)subscribed."""
        if "*" in pattern:
            entries = [
                entry
                for registered in trie.patterns()
                if pattern_covers(registered, pattern)
                for entry in cast("list[_Registered]", trie.subscribers(registered))
            ]
        else:
            entries = cast("list[_Registered]", trie.match(pattern))
        for entry in entries:
            try:
                entry.function(session, pattern)
            except Exception:
                failures.exception(
                    name_of(entry.function), "subscription listener %r raised", entry.function
                )

    def added(self, session: Session) -> None:
        for listener in self.session_added:
            try:
                listener(session)
            except Exception:
                failures.exception(name_of(listener), "session-added listener %r raised", listener)

    def removed(self, session: Session, timeout: bool) -> None:
        for listener in self.session_removed:
            try:
                listener(session, timeout)
            except Exception:
                failures.exception(
                    name_of(listener), "session-removed listener %r raised", listener
                )

    def spawn(self, coroutine: Awaitable[Any]) -> None:
        """Run an async handler in the background, keeping a reference to it."""
        task = asyncio.ensure_future(coroutine)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    # ------------------------------------------------------------ extensions

    def incoming(self, session: Session | None, message: Message) -> bool | None:
        """Server then session extensions; False deletes, None means one failed."""
        chain = self.extensions
        if session is not None and session.extensions:
            chain = chain + session.extensions
        return _run_chain(
            chain, "incoming", lambda extension: extension.incoming(session, message), None
        )

    def outgoing(
        self,
        extensions: list[Extension],
        session: Session | None,
        message: Message,
        request: Message | None,
    ) -> bool:
        """Run `extensions` in reverse order; False (or a failure) drops the message."""
        return (
            _run_chain(
                reversed(extensions),
                "outgoing",
                lambda extension: extension.outgoing(session, message, request),
                False,
            )
            is True
        )


def _run_chain(
    extensions: Iterable[Extension],
    direction: str,
    call: Callable[[Extension], object],
    failed: bool | None,
) -> bool | None:
    """`call` each extension in turn: True goes on, False stops (the message
    is deleted); a raise or an answer that is not a bool is logged, once per
    extension, and ends the chain with `failed`."""
    for extension in extensions:
        try:
            result = call(extension)
        except Exception:
            failures.exception(
                name_of(extension), "extension %r raised on an %s message", extension, direction
            )
            return failed
        if result is False:
            return False
        if result is not True:
            failures.error(
                name_of(extension), "extension %r returned %r, not a bool", extension, result
            )
            return failed
    return True
