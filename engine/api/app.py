"""The application API: what a team writes its server code against.

    server = BayeuxServer(ServerOptions(port=8080))

    @server.service("/service/echo")
    def echo(session, message):
        return message["data"]          # delivered back to the caller

    @server.on_publish("/chat/**")
    def moderate(session, channel, message):
        return "spam" not in str(message["data"])   # False deletes it

    server.publish("/stocks/AAPL", {"price": 189.5})

`Application` holds the registrations; `BayeuxServer` is an Application that
also listens.  Registrations may be made before or after `start()`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from engine.api.extensions import Extension
from engine.api.hooks import (
    Hooks,
    MessageListener,
    RemovalListener,
    ServiceHandler,
    SessionListener,
    SubscriptionListener,
)
from engine.protocol.message import Message
from engine.protocol.session import Session
from engine.routing._channels import (
    CHANNEL_INVALID,
    CHANNEL_OK_CONCRETE,
    ChannelTrie,
    normalize_channel,
    validate_channel,
)

if TYPE_CHECKING:
    from engine.presence import Presence
    from engine.protocol.core import BayeuxCore

__all__ = [
    "Application",
    "LocalSession",
    "MessageListener",
    "ServiceHandler",
    "SubscriptionListener",
]

F = TypeVar("F", bound=Callable[..., Any])


def _kept_pattern(pattern: str, what: str) -> str:
    """A channel or pattern whose messages the server keeps (not /meta, /service)."""
    name = normalize_channel(pattern)
    if validate_channel(name) == CHANNEL_INVALID or name.startswith(("/meta/", "/service/")):
        raise ValueError(f"cannot {what} {pattern!r}")
    return name


class Application:
    """Services, listeners, extensions and server-side publishing."""

    def __init__(self) -> None:
        self.hooks = Hooks()
        # Presence patterns registered with presence() (with presence_channels).
        self.presence_patterns: list[str] = []

    @property
    def core(self) -> BayeuxCore:
        raise NotImplementedError

    # ------------------------------------------------------------ decorators

    def service(self, channel: str) -> Callable[[F], F]:
        """Handle publishes to a `/service/...` channel (or pattern).

        The handler gets `(session, message)`, may be sync or async, and
        returns the data of its answer to the caller (None: no answer).
        """

        def register(handler: F) -> F:
            self.hooks.add_service(channel, handler)
            return handler

        return register

    def on_publish(self, pattern: str) -> Callable[[F], F]:
        """Listen to publishes on matching channels; return False to delete one."""

        def register(listener: F) -> F:
            self.hooks.add_publish_listener(pattern, listener)
            return listener

        return register

    def on_subscribe(self, pattern: str) -> Callable[[F], F]:
        """Called with `(session, channel)` after a subscription it covers."""

        def register(listener: F) -> F:
            self.hooks.add_subscribe_listener(pattern, listener)
            return listener

        return register

    def on_unsubscribe(self, pattern: str) -> Callable[[F], F]:
        def register(listener: F) -> F:
            self.hooks.add_unsubscribe_listener(pattern, listener)
            return listener

        return register

    def on_session_added(self, listener: SessionListener) -> SessionListener:
        self.hooks.session_added.append(listener)
        return listener

    def on_session_removed(self, listener: RemovalListener) -> RemovalListener:
        """Called with `(session, timeout)`; timeout is True for an expiry."""
        self.hooks.session_removed.append(listener)
        return listener

    def lazy_channel(self, pattern: str) -> None:
        """Messages on matching channels are lazy (CometD): they do not wake a
        held connect, and leave with the next reply or after max_lazy_timeout."""
        self.hooks.lazy_channels.add(normalize_channel(pattern), True)

    def history(self, pattern: str) -> None:
        """Keep the recent messages of matching channels for recovery (see
        engine.delivery.history; bounded by the history_* options)."""
        name = _kept_pattern(pattern, "keep the history of")
        self.hooks.history_patterns.append(name)
        core = getattr(self, "_core", None)  # (a started server's)
        if core is not None:
            core.history.add_pattern(name)

    def replay(self, pattern: str) -> None:
        """Matching channels speak the Salesforce replay dialect (see
        engine.delivery.replay) and keep history (bounded by history_*)."""
        name = _kept_pattern(pattern, "replay")
        self.hooks.replay_patterns.append(name)
        core = getattr(self, "_core", None)  # (a started server's)
        if core is not None:
            core.replay.add_pattern(name)

    def add_extension(self, extension: Extension) -> None:
        self.hooks.extensions.append(extension)

    def add_session_extension(self, session: Session, extension: Extension) -> None:
        self.core.add_session_extension(session, extension)

    # --------------------------------------------------------------- presence

    def presence(self, pattern: str) -> None:
        """Track the members of channels matching `pattern` (engine.presence):
        counts, member lists, join/leave events.  Before start(), or after
        it when presence is already on (presence_channels or an earlier call)."""
        name = normalize_channel(pattern)
        if not validate_channel(name) or name.startswith(("/meta/", "/service/")):
            raise ValueError(f"presence needs a broadcast channel or pattern: {pattern!r}")
        if name not in self.presence_patterns:
            self.presence_patterns.append(name)
        try:
            live = self.core.presence
        except RuntimeError:  # (not started: made by start())
            return
        if live is None:
            raise RuntimeError("presence() after start() needs presence on from the start")
        live.add_pattern(name)

    async def presence_of(
        self, channel: str, *, members: bool = True, limit: int = 100
    ) -> dict[str, Any]:
        """`{"channel", "count"[, "members", "truncated"]}` of a presence channel,
        cluster-wide (members: at most `limit`, 1000 at most).  ValueError for a
        channel without presence, engine.presence.PresenceError (503) if the
        cluster's store is unreachable."""
        presence = self._presence()
        name = self._presence_channel(channel)
        result: dict[str, Any] = await presence.query(name, members, presence.query_limit(limit))
        return result

    async def presence_count(self, channel: str) -> int:
        """The exact number of members of a presence channel, cluster-wide."""
        presence = self._presence()
        return await presence.count(self._presence_channel(channel))

    def _presence(self) -> Presence:
        presence = self.core.presence
        if presence is None:
            raise RuntimeError("presence is off: presence_channels or server.presence(pattern)")
        return presence

    def _presence_channel(self, channel: str) -> str:
        from engine.presence import PresenceError

        try:
            return self._presence().check_channel(channel)
        except PresenceError as exc:
            raise ValueError(str(exc)) from None

    # ------------------------------------------------------------- publishing

    def publish(self, channel: str, data: Any, *, lazy: bool = False, **fields: Any) -> int:
        """Publish from the server to every subscriber of `channel`.

        `lazy=True` makes this one message lazy (on this node).  Returns the
        number of sessions (on this node) it was delivered to.
        """
        name = normalize_channel(channel)
        if validate_channel(name) != CHANNEL_OK_CONCRETE or name.startswith(
            ("/meta/", "/service/")
        ):
            raise ValueError(f"not a broadcast channel: {channel!r}")
        return self.core.publish_from(name, {**fields, "data": data}, lazy)

    def deliver(self, session: Session | str, channel: str, data: Any, **fields: Any) -> bool:
        """Send one message to one session only; False if it is gone."""
        target = self.core.sessions.get(session) if isinstance(session, str) else session
        if target is None or target.removed:
            return False
        message = {**fields, "channel": channel, "data": data}
        self.core.deliver(target, orjson.dumps(message))
        return True

    def session(self, client_id: str) -> Session | None:
        return self.core.sessions.get(client_id)

    def local_session(self) -> LocalSession:
        """A session inside this process: subscribes and publishes without HTTP."""
        return LocalSession(self.core)


class LocalSession:
    """A server-side client (CometD's LocalSession)."""

    def __init__(self, core: BayeuxCore) -> None:
        self.core = core
        self.session = Session("L" + core.new_client_id(), None, "local")
        self.session.local = self._receive
        self.session.connected = True
        self._callbacks = ChannelTrie()
        self._patterns: dict[str, list[Callable[[Message], Any]]] = {}
        core.add_session(self.session)  # never expires: it is not in the sweep

    @property
    def id(self) -> str:
        return self.session.id

    def subscribe(self, pattern: str, callback: Callable[[Message], Any]) -> None:
        name = normalize_channel(pattern)
        if validate_channel(name) == 0 or name.startswith("/meta/"):
            raise ValueError(f"cannot subscribe to {pattern!r}")
        self._callbacks.add(name, callback)
        subs = self.session.subscriptions
        if subs is None:
            subs = self.session.subscriptions = set()
        if name not in subs:
            subs.add(name)
            self.core.broker.subscribe(self.session, name)

    def unsubscribe(self, pattern: str) -> None:
        name = normalize_channel(pattern)
        for callback in self._callbacks.subscribers(name):
            self._callbacks.remove(name, callback)
        subs = self.session.subscriptions
        if subs is not None and name in subs:
            subs.discard(name)
            self.core.broker.unsubscribe(self.session, name)

    def publish(self, channel: str, data: Any, **fields: Any) -> int:
        name = normalize_channel(channel)
        if validate_channel(name) != CHANNEL_OK_CONCRETE or name.startswith("/meta/"):
            raise ValueError(f"cannot publish to {channel!r}")
        return self.core.publish_from(name, {**fields, "data": data})

    def disconnect(self) -> None:
        self.core.remove_session(self.session)

    def _receive(self, encoded: bytes) -> None:
        message = orjson.loads(encoded)
        for callback in self._callbacks.match(message["channel"]):
            callback(message)  # type: ignore[operator]
