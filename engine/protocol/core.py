"""The Bayeux protocol core: sessions, meta channels, publish, held connects.

Transports decode a request into a list of message objects and hand it to
`BayeuxCore.process` with an `Exchange`; the core answers through that
exchange, at once or, for a held `/meta/connect`, later.  Data flows one way:
transport -> core -> broker -> session queue -> exchange.

The hot half (a request's messages in order, `/meta/connect` and the held
connects, delivery into session queues) is compiled: `SessionCore` in
src_pyx/protocol/_sessions.pyx, the base class of `BayeuxCore`.  This module is the
rest: handshake, subscriptions, publish, security, services, extensions,
the timer tick and the session lifecycle.

Rules follow the Bayeux specification and CometD 8's server
(https://docs.cometd.org/current/reference/#_bayeux); comments name the rule.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import secrets
from collections.abc import Callable
from time import perf_counter
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from engine.api.context import CURRENT, HttpContext, context_of
from engine.api.extensions import Extension, TimesyncExtension
from engine.api.hooks import Hooks
from engine.api.policy import Deny, SecurityPolicy
from engine.delivery._batch import encode_message
from engine.delivery.broker import Broker, LocalBroker
from engine.delivery.history import History
from engine.delivery.replay import Replay, ReplayRequest
from engine.metrics import ServerMetrics
from engine.options import ServerOptions
from engine.protocol import errors
from engine.protocol._sessions import (
    HTTP_TRANSPORTS,
    META_CONNECT,
    META_DISCONNECT,
    META_HANDSHAKE,
    META_SUBSCRIBE,
    META_UNSUBSCRIBE,
    SessionCore,
    encode_reply,
    valid_id,
)
from engine.protocol.limits import AddressTable, FailureStreaks, backoff_ms
from engine.protocol.message import Message
from engine.protocol.session import AckState, Exchange, Hold, Session
from engine.ratelog import CauseLog, name_of
from engine.routing._channels import (
    CHANNEL_INVALID,
    CHANNEL_OK_PATTERN,
    normalize_channel,
    validate_channel,
)
from engine.stats import Counters
from engine.transport.deadlines import ConnectionDeadlines

if TYPE_CHECKING:
    from engine.presence import Presence

__all__ = ["BayeuxCore"]

log = logging.getLogger("engine.core")
# Limits that bite and failures of application code: one line per cause.
limit_log = CauseLog(log)


META_CHANNELS = frozenset(
    (META_HANDSHAKE, META_CONNECT, META_DISCONNECT, META_SUBSCRIBE, META_UNSUBSCRIBE)
)

# Fields a publisher may not pass on to subscribers: its identity, its own
# request id, and fields that would make a delivery look like a reply or
# steer the receivers' reconnection (Faye acts on advice in any message).
_STRIPPED_ON_DELIVERY = ("clientId", "id", "successful", "advice", "error")

GC_FREEZE_PERIOD = 10.0  # s between moves of long-lived objects out of the GC
CLIENT_ID_RANDOM = 32  # hex characters of randomness at the start of a clientId
HOLD_RESOLUTION = 0.1  # s; held connects are answered at most this late
EXPIRY_RESOLUTION = 0.5  # s; the session sweep's granularity
ADDRESS_SWEEP_PERIOD = 10.0  # s between sweeps of idle per-address entries
# Advised to a connect resuming a session whose old socket is being probed:
# past the probe's grace (engine.transport.websocket.PROBE_GRACE), so the retry finds
# the old socket answered (then it is refused) or cut (then it resumes).
PROBE_RETRY_MS = 2000
# Sessions the server ended (see end_session): their clientIds are answered
# with the reason for a while, this many at most.
MAX_ENDED = 10000


class Forwarder(Protocol):
    def forward(self, owner: str, messages: list[Any], exchange: Exchange) -> None: ...

    def defer(self, messages: list[Any], exchange: Exchange) -> bool: ...


class BayeuxCore(SessionCore):
    def __init__(
        self,
        options: ServerOptions,
        loop: asyncio.AbstractEventLoop,
        *,
        node_id: str,
        policy: SecurityPolicy | None = None,
        broker: Broker | None = None,
        hooks: Hooks | None = None,
    ) -> None:
        super().__init__(
            options, loop, Counters(), hooks or Hooks(), HOLD_RESOLUTION, EXPIRY_RESOLUTION
        )
        self.node_id = node_id
        self.metrics = ServerMetrics()  # histograms (engine.metrics)
        self.publish_to_write = self.metrics.publish_to_write
        self.policy = policy or SecurityPolicy()
        self.policy_is_async = self.policy.is_async
        # The operations whose decision is awaited: only batches that need
        # one take the async path (a connect never does).
        self.async_decisions = self.policy.async_operations
        self.policy.bind(self)
        self.current_exchange: Exchange | None = None  # while a request is processed
        # Decisions of an async policy, awaited before their batch is processed.
        self._decided: dict[tuple[int, str, str], bool | Deny] | None = None
        self.refusal_reason: str | None = None  # of the last decision that denied (deny())
        self._prepared: dict[int, Session] = {}  # handshakes' sessions, during that wait
        self._fresh: list[str] | None = None  # patterns a subscribe adds (history)
        self.broker: Broker = broker or LocalBroker(self.deliver)
        # Channel history and recovery (engine.delivery.history).
        self.history = History(options, self.stats, log)
        for pattern in self.hooks.history_patterns:
            self.history.add_pattern(pattern)
        # The Salesforce replay dialect on top of it (engine.delivery.replay).
        self.replay = Replay(self.history, self.stats)
        for pattern in [*options.replay_patterns, *self.hooks.replay_patterns]:
            self.replay.add_pattern(pattern)
        self._replaying: ReplayRequest | None = None  # a subscribe's ext.replay
        # Set in a cluster: sends HTTP requests for other nodes' sessions there.
        self.forwarder: Forwarder | None = None
        # Set with presence channels (engine.presence): its companion
        # channels need the right to subscribe to the channel itself.
        self.presence: Presence | None = None
        if options.timesync_extension and not any(
            isinstance(e, TimesyncExtension) for e in self.hooks.extensions
        ):
            self.hooks.extensions.append(TimesyncExtension())
        self._tick_handle: asyncio.TimerHandle | None = None
        self._next_freeze = 0.0
        # Every connection's timeouts, on one wheel of their own (coarser
        # than the holds', and swept apart so one cannot delay the other).
        self.deadlines = ConnectionDeadlines(loop)
        self._next_address_sweep = 0.0
        self._tls_unfinished = 0

        o = options
        self.publish_rate = float(o.max_publish_rate)
        self.transports = list(o.transports)
        self.advice_none = {"reconnect": "none", "interval": o.interval, "timeout": o.timeout}
        self.advice_handshake = {"reconnect": "handshake", "interval": 0}
        self.advice_refused = {"reconnect": "none", "interval": 0}
        self.handshake_rate = float(o.max_handshake_rate)
        self.connection_publish_rate = float(
            o.max_publish_rate
            if o.max_connection_publish_rate < 0
            else o.max_connection_publish_rate
        )
        self.max_sessions_per_connection = o.max_sessions_per_connection
        # A WebSocket on which no session connects for this long is closed.
        self.ws_idle_s = (
            self.timeout_s + self.after_reply_s
            if o.ws_idle_timeout < 0
            else o.ws_idle_timeout / 1000.0
        )
        # clientId -> (error, advice, forget after): sessions ended by the server.
        self.ended: dict[str, tuple[str, dict[str, Any], float]] = {}
        self.addresses = AddressTable(
            float(o.max_address_handshake_rate), o.max_sessions_per_address
        )
        self.streaks = FailureStreaks()

    # ------------------------------------------------------------------ life

    def start(self) -> None:
        self._tick_handle = self.loop.call_later(HOLD_RESOLUTION, self._tick)
        self.deadlines.start()

    def drain(self) -> None:
        """Shutting down: answer every held connect now with `reconnect: retry`."""
        self.draining = True
        for session in list(self.sessions.values()):
            if session.hold is not None:
                self._release(session.hold, self.advice)

    def close(self) -> None:
        self.deadlines.close()
        if self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None

    def _tick(self) -> None:
        """Held connects due, lazy messages due, expired sessions, housekeeping.

        Guarded: whatever raises in one part is logged (once per cause) and
        the tick goes on and is rescheduled, so one bug cannot stop every
        heartbeat and every expiry of the process.
        """
        now = self.loop.time()
        try:
            self.release_due_holds(now)
        except Exception:
            self._tick_failed("holds")
        try:
            lazy = [s for s in self.lazy.due(now) if s.lazy_due and s.lazy_due <= now]
            if lazy:
                self._send_queued(lazy)
        except Exception:
            self._tick_failed("lazy")
        for session in self.expiry.due(now):
            if not session.removed and session.hold is None and session.expires_at <= now:
                self.stats.sessions_expired += 1
                try:
                    self.remove_session(session, timeout=True)
                except Exception:
                    self._tick_failed("expiry")
        try:
            if now >= self._next_freeze:
                self._freeze_long_lived(now)
            if now >= self._next_address_sweep:
                self._next_address_sweep = now + ADDRESS_SWEEP_PERIOD
                self.addresses.sweep(now)
                self.streaks.sweep(now)
                self._check_tls()
                if self.ended:
                    self.ended = {k: v for k, v in self.ended.items() if v[2] > now}
        finally:
            # Aligned on the hold wheel's slots, so a hold ends at most one
            # resolution after its deadline, without drift.
            self._tick_handle = self.loop.call_at(self.holds.next_due(), self._tick)

    def _check_tls(self) -> None:
        """TLS handshakes that never completed (plain HTTP on the TLS port, a
        client that does not trust the certificate, a timeout): counted by
        the transports (tls_accepted - tls_established), logged here."""
        stats = self.stats
        unfinished = stats.tls_accepted - stats.tls_established  # (a few: in progress)
        if unfinished > self._tls_unfinished:
            limit_log.warning(
                "tls_handshake",
                "%d TLS handshakes did not complete so far (plain HTTP on the TLS port, "
                "clients that do not trust the certificate, timeouts)",
                unfinished,
            )
        self._tls_unfinished = max(self._tls_unfinished, unfinished)

    def _tick_failed(self, part: str) -> None:
        self.stats.internal_errors += 1
        limit_log.exception(f"tick:{part}", "the timer tick failed in %s; it goes on", part)

    def _freeze_long_lived(self, now: float) -> None:
        """Move what survived so far out of the garbage collector's reach.

        With tens of thousands of sessions, every full collection walks all
        their objects: 100+ ms pauses every few seconds under load, which set
        the delivery latency's tail.  Sessions, sockets and subscriptions are
        long-lived and freed by reference counting (the code breaks its own
        cycles when a connection or session ends), so they need no scans.
        """
        self._next_freeze = now + GC_FREEZE_PERIOD
        if self.options.gc_freeze:
            gc.collect(1)  # young cyclic garbage goes first, not into the freeze
            gc.freeze()

    # -------------------------------------------------------------- sessions

    def new_client_id(self) -> str:
        # 128 random bits from the CSPRNG, then the owning node's id, so any node
        # of a cluster can tell which node owns a session:
        # the random part has a fixed length, so any node can read the owner.
        return secrets.token_hex(16) + self.node_id

    @staticmethod
    def owner_of(client_id: object) -> str | None:
        """The node id inside a clientId, or None if it cannot be one of ours."""
        if type(client_id) is not str or len(client_id) <= CLIENT_ID_RANDOM:
            return None
        return client_id[CLIENT_ID_RANDOM:]

    def add_session_extension(self, session: Session, extension: Extension) -> None:
        if not session.extensions:
            session.extensions = []
            self.session_extensions += 1
        session.extensions.append(extension)

    def add_session(self, session: Session) -> None:
        self.sessions[session.id] = session
        counts = self.by_transport
        counts[session.transport] = counts.get(session.transport, 0) + 1
        if self.hooks.session_added:
            self.hooks.added(session)

    def remove_session(self, session: Session, timeout: bool = False) -> None:
        """Disconnect, expiry or server-side removal: forget everything of it."""
        if session.removed:
            return
        session.removed = True
        self.sessions.pop(session.id, None)
        self.by_transport[session.transport] -= 1
        if session.subscriptions:
            for pattern in session.subscriptions:
                self.broker.unsubscribe(session, pattern)
            session.subscriptions = None
        if session.hold is not None:
            self._release(session.hold, self.advice_none)
        self.stats.discarded += self.discard_queue(session)
        if session.sink is not None:
            session.sink.unbind(session)  # (O(1), whatever their number)
        self.addresses.session_removed(session.address)
        if session.extensions:
            self.session_extensions -= 1
        if self.hooks.session_removed:
            self.hooks.removed(session, timeout)

    def end_session(self, session: Session, error: str, advice: dict[str, Any]) -> None:
        """The server ends a session (the HTTP API's disconnect, an expired token).

        Its held connect, if any, is answered with `error` and `advice`, and
        so is any later message with its clientId, for as long as a client
        could still come back with it (max_interval + timeout); then it is
        an unknown session like any other.  `advice` is
        `{"reconnect": "none"}` to stop the client, `"handshake"` to make it
        start over (CometD's clients do both on a failed connect).
        """
        if session.removed:
            return
        hold = session.hold
        if hold is not None:
            self._unhold(hold)
            reply: Message = {
                "channel": META_CONNECT,
                "successful": False,
                "error": error,
                "advice": advice,
            }
            if hold.message_id is not None:
                reply["id"] = hold.message_id
            hold.exchange.send([encode_reply(reply)])
        if len(self.ended) >= MAX_ENDED:
            self.ended.pop(next(iter(self.ended)))  # the oldest
            self.stats.ended_forgotten += 1
            limit_log.warning(
                "ended_forgotten",
                "more than %d sessions ended by the server are remembered; the oldest "
                "are forgotten (their clients get 402, not the reason)",
                MAX_ENDED,
            )
        forget = self.loop.time() + (self.options.max_interval + self.options.timeout) / 1000.0
        self.ended[session.id] = (error, advice, forget)
        self.stats.sessions_ended += 1
        self.remove_session(session)

    # -------------------------------------------------------------- delivery

    def _extend_delivery(self, session: Session, encoded: bytes) -> bytes | None:
        message = orjson.loads(encoded)
        if not self.hooks.outgoing(session.extensions or [], session, message, None):
            self.stats.deleted_by_extension += 1
            return None
        try:
            return encode_message(message)
        except orjson.JSONEncodeError:  # an extension made it unencodable
            self.stats.messages_invalid += 1
            limit_log.warning(
                "extension_not_json", "an outgoing extension made a message that is not JSON"
            )
            return None

    # ---------------------------------------------------------- held connects

    def abandon(self, hold: Hold) -> None:
        """The connection of a held connect went away: drop the hold quietly."""
        if hold.session.hold is hold:
            self._unhold(hold)

    def _supersede(self, hold: Hold) -> None:
        """A newer connect ends the held one (HTTP: `duplicate_connect_status`,
        500 as CometD's duplicateMetaConnectHttpResponseCode; WebSocket: dropped)."""
        self._unhold(hold)
        self.stats.superseded += 1
        hold.exchange.fail(
            self.options.duplicate_connect_status, "superseded by a newer /meta/connect"
        )

    # ------------------------------------------------------------ processing

    def process(self, messages: list[Any], exchange: Exchange) -> None:
        """Handle one request's messages in order and answer through `exchange`."""
        started = perf_counter()
        if self.forwarder is None and not (self.policy_is_async and self._awaits(messages)):
            # One node, a synchronous policy.  (The exchange is what a
            # policy's current_context() is made of, if it asks.)
            self._process_timed(messages, exchange, started)
            return
        if self.forwarder is not None and exchange.transport in HTTP_TRANSPORTS:
            # In a cluster, an HTTP request for a session another node owns
            # goes to that node, held connects included (no sticky sessions).
            owner = self.owner_of(messages[0].get("clientId")) if messages else None
            if owner is not None and owner != self.node_id:
                self.forwarder.forward(owner, messages, exchange)
                return  # (timed by its owner)
        self.process_here(messages, exchange, started)

    def process_here(self, messages: list[Any], exchange: Exchange, started: float = 0.0) -> None:
        """Handle a request on this node (its own, or one forwarded to it)."""
        started = started or perf_counter()
        forwarder = self.forwarder
        if forwarder is not None and forwarder.defer(messages, exchange):
            return  # its session's events are out with a relay, not yet confirmed
        policy = self.policy_is_async and self._awaits(messages)
        history = self.history.prefetches and self.history.wanted(messages)
        if policy or history:
            # The request's headers are gone once this returns: its context
            # is taken now, for the decisions awaited later.
            context = context_of(exchange)
            self.hooks.spawn(
                self._process_later(messages, exchange, context, started, policy, history)
            )
            return
        self._process_timed(messages, exchange, started)

    def _process_timed(self, messages: list[Any], exchange: Exchange, started: float) -> None:
        # `arrived` dates the deliveries this batch makes (publish-to-write).
        self.current_exchange = exchange
        self.arrived = started
        try:
            self._process_now(messages, exchange)
        finally:
            self.current_exchange = None
            self.arrived = 0.0
        self._observe(messages, exchange, started)

    def _observe(self, messages: list[Any], exchange: Exchange, started: float) -> None:
        """The request's duration, and the handshake's if it was one."""
        elapsed = perf_counter() - started
        metrics = self.metrics
        metrics.request(exchange.transport).observe(elapsed)
        first = messages[0] if messages else None
        if type(first) is dict and first.get("channel") == META_HANDSHAKE:
            metrics.handshake.observe(elapsed)

    def _awaits(self, messages: list[Any]) -> bool:
        """Does this batch need a decision of the policy's async methods?"""
        wanted = self.async_decisions
        for m in messages:
            channel = m.get("channel") if type(m) is dict else None
            if channel == META_CONNECT or type(channel) is not str:
                continue
            if channel == META_HANDSHAKE:
                operations: tuple[str, ...] = ("handshake",)
            elif channel == META_SUBSCRIBE:
                operations = ("create", "subscribe")
            elif channel.startswith("/meta/"):
                continue
            else:
                operations = ("create", "publish")
            if any(op in wanted for op in operations):
                return True
        return False

    def _answer_handshake(self, message: Message, exchange: Exchange) -> None:
        reply = self._refused_by_extension(message) or self._handshake(message, exchange)
        if self.extensions_active:
            session = self.sessions.get(reply.get("clientId"))  # type: ignore[arg-type]
            if not self._extend_reply(session, reply, message):
                exchange.send([])
                return
        exchange.send([encode_reply(reply)])

    def _refused_by_extension(self, message: Message) -> Message | None:
        """Run incoming extensions; a failure reply if they delete the message."""
        client_id = message.get("clientId")
        session = self.sessions.get(client_id) if type(client_id) is str else None
        refusal = self._incoming_refusal(session, message)
        return None if refusal is None else self._failure(message, refusal)

    def _extend_reply(self, session: Session | None, reply: Message, request: Message) -> bool:
        """Outgoing extensions on a reply: the session's, then the server's."""
        hooks = self.hooks
        if session is not None and session.extensions:
            if not hooks.outgoing(session.extensions, session, reply, request):
                return False
        return hooks.outgoing(hooks.extensions, session, reply, request)

    def _unknown_session(
        self, message: Message, meta: bool, exchange: Exchange | None = None
    ) -> Message:
        if self.ended:
            ended = self.ended.get(message.get("clientId"))  # type: ignore[arg-type]
            if ended is not None:
                # Ended by the server: the reason, and on a connect its advice.
                return self._failure(message, ended[0], ended[1] if meta else True)
        self.stats.unknown_session += 1
        reply = self._failure(message, errors.SESSION_UNKNOWN)
        if meta:
            # Only failed connects (and handshakes) carry handshake advice
            # (CometD's rule): the JS client would throw on it anywhere else.
            # An unknown session handshakes again at once; but a session that
            # exists and is refused for its browser cookie (a client that
            # never returns it loops handshake, connect, 402) is told to
            # wait longer each time its connection fails so again.
            client_id = message.get("clientId")
            session = self.sessions.get(client_id) if type(client_id) is str else None
            if session is not None and session.sink is not None and session.sink.probing:
                # Its old socket is being probed (see _resume): retry soon.
                reply["advice"] = {"reconnect": "retry", "interval": PROBE_RETRY_MS}
            elif session is not None:
                reply["advice"] = self._handshake_advice(exchange, errors.SESSION_UNKNOWN, 0)
            else:
                reply["advice"] = self.advice_handshake
        return reply

    def _handshake_advice(self, exchange: Exchange | None, error: str, extra: int) -> Message:
        """`reconnect: handshake`, with an interval that grows while the
        client's connection fails the same way again and again (`extra`:
        failures counted ahead, so a refusal is never retried at once)."""
        limits = exchange.make_limits() if exchange is not None else None
        streak = limits.failed(error) if limits is not None else 0
        if exchange is not None and exchange.client_address is not None:
            streak = max(
                streak, self.streaks.failed(exchange.client_address, error, self.loop.time())
            )
        interval = backoff_ms(streak + extra) if streak else 0
        if not interval:
            return self.advice_handshake
        self.stats.backoff_advised += 1
        return {"reconnect": "handshake", "interval": interval}

    # -------------------------------------------------------------- security

    def _permit(self, operation: str, message: Message, session: Session, name: str) -> str | None:
        """The error string refusing a subscribe or publish, or None (CometD's order:
        create, then the operation, then the channel's authorizers)."""
        if self.broker.subscriber_count(name) == 0 and not self._decide(
            "create", message, session, name
        ):
            if operation == "subscribe":
                return self._refusal("create_denied", errors.CREATE_DENIED)
            return self._refusal("channel_create_denied", errors.CHANNEL_CREATE_DENIED)
        if not self._decide(operation, message, session, name):
            if operation == "subscribe":
                return self._refusal("subscribe_denied", errors.SUBSCRIBE_DENIED)
            return self._refusal("publish_denied", errors.PUBLISH_DENIED)
        try:
            reason = self.policy.authorize(operation, name, session, message)
        except Exception:
            limit_log.exception(
                f"authorizer:{operation}", "authorizer raised on %s %s; denied", operation, name
            )
            reason = errors.POLICY
        if reason is not None:
            return errors.denied(reason, f"{operation}_denied")
        return None

    def _subscribe_refusal(self, session: Session, name: str, message: Message) -> str | None:
        """Would `session` be allowed to subscribe to `name` (the policy's
        subscribe decision and the channel's authorizers; creating it is not
        asked)?  The error refusing it, or None."""
        if not self._decide("subscribe", message, session, name):
            return self._refusal("subscribe_denied", errors.SUBSCRIBE_DENIED)
        try:
            reason = self.policy.authorize("subscribe", name, session, message)
        except Exception:
            limit_log.exception(
                "authorizer:subscribe", "authorizer raised on subscribe %s; denied", name
            )
            reason = errors.POLICY
        return None if reason is None else errors.denied(reason, "subscribe_denied")

    def subscribe_allowed_now(self, session: Session, name: str, message: Message) -> bool | None:
        """`_subscribe_refusal` as a bool, or None when the policy's subscribe
        decisions are async (then `subscribe_allowed`)."""
        if "subscribe" in self.async_decisions:
            return None
        token = CURRENT.set(self.current_exchange) if CURRENT.get() is None else None
        try:
            return self._subscribe_refusal(session, name, message) is None
        finally:
            if token is not None:
                CURRENT.reset(token)

    async def subscribe_allowed(self, session: Session, name: str, message: Message) -> bool:
        """`subscribe_allowed_now`, an async policy's decision awaited."""
        if "subscribe" not in self.async_decisions:
            return self._subscribe_refusal(session, name, message) is None
        decided = await self._awaited("subscribe", message, session, name)
        previous = self._decided
        self._decided = {(id(message), "subscribe", name): decided}
        try:
            return self._subscribe_refusal(session, name, message) is None
        finally:
            self._decided = previous

    def _new_session(self, exchange: Exchange) -> Session:
        """A session not yet registered: the policy sees it before it exists.

        It is bound to its browser: the request's BAYEUX_BROWSER cookie, or a
        new one (HTTP: set with this response; WebSocket: the connection's,
        issued with the upgrade when it came without one).
        """
        browser_id = exchange.browser_id
        if browser_id is None and exchange.transport in HTTP_TRANSPORTS:
            browser_id = secrets.token_hex(16)
        session = Session(self.new_client_id(), browser_id, exchange.transport)
        if exchange.transport == "websocket" and not getattr(exchange, "cookie_presented", True):
            session.resumable = True
        return session

    def _resume(self, session: Session, message: Message, exchange: Exchange) -> bool:
        """May this connection take over `session`, made on another socket
        by a client that keeps no cookies (see `lookup`)?

        Such a client (CometD's Node client: its WebSocket sends no cookies)
        resumes after a network failure on a new socket, with nothing but
        its clientId.  It may, with a /meta/connect on a socket that itself
        came without a cookie, once the session's socket is dead: closed, or
        silent to a ping (`WebSocketConnection.probe`; a half-open socket
        after a partition looks open).  A live owner answers the ping, so a
        clientId learned by someone else does not take a live session.
        """
        if (
            exchange.transport != "websocket"
            or getattr(exchange, "cookie_presented", True)
            or message.get("channel") != META_CONNECT
        ):
            return False
        old = session.sink
        if old is not None and not old.closed:
            old.probe()
            return False
        session.browser_id = exchange.browser_id
        self.stats.ws_resumed += 1
        return True

    def _handshake_limited(self, exchange: Exchange) -> str | None:
        """The error refusing a handshake for making sessions too fast or too
        many, per connection and per client address, or None."""
        now = self.loop.time()
        limits = exchange.make_limits()
        if limits is not None and not limits.handshake_allowed(self.handshake_rate, now):
            return self._limited("handshake_rate", errors.HANDSHAKE_RATE_EXCEEDED, exchange)
        if (
            exchange.transport == "websocket"
            and self.max_sessions_per_connection > 0
            and exchange.session_count() >= self.max_sessions_per_connection
        ):
            return self._limited("connection_sessions", errors.SESSION_LIMIT, exchange)
        why = self.addresses.handshake_refusal(exchange.client_address, now)
        if why == "rate":
            return self._limited("address_handshake_rate", errors.HANDSHAKE_RATE_EXCEEDED, exchange)
        if why == "sessions":
            return self._limited("address_sessions", errors.SESSION_LIMIT, exchange)
        return None

    def _limited(self, cause: str, error: str, exchange: Exchange) -> str:
        counters = self.stats
        if error == errors.SESSION_LIMIT:
            counters.session_limit_reached += 1
        else:
            counters.handshake_rate_exceeded += 1
        limit_log.warning(
            cause,
            "handshake refused (%s) for a client at %s over %s; see --max-handshake-rate, "
            "--max-address-handshake-rate, --max-sessions-per-connection, "
            "--max-sessions-per-address",
            cause.replace("_", " "),
            exchange.client_address,
            exchange.transport,
        )
        return error

    def _policy_call(
        self, operation: str, message: Message, session: Session | None, name: str
    ) -> Any:
        if CURRENT.get() is None:
            token = CURRENT.set(self.current_exchange)
            try:
                return self._ask_policy(operation, message, session, name)
            finally:
                CURRENT.reset(token)
        return self._ask_policy(operation, message, session, name)

    def _ask_policy(
        self, operation: str, message: Message, session: Session | None, name: str
    ) -> Any:
        policy = self.policy
        assert session is not None
        if operation == "handshake":
            return policy.can_handshake(session, message)
        if operation == "create":
            return policy.can_create(session, name, message)
        if operation == "subscribe":
            return policy.can_subscribe(session, name, message)
        return policy.can_publish(session, name, message)

    def _decide(self, operation: str, message: Message, session: Session | None, name: str) -> bool:
        """One policy decision; a policy that raises or answers oddly denies.
        A `deny(reason)` answer denies with that reason (`refusal_reason`)."""
        self.refusal_reason = None
        decided = self._decided
        found = decided.get((id(message), operation, name)) if decided is not None else None
        if found is not None:
            result: Any = found
        else:
            try:
                result = self._policy_call(operation, message, session, name)
            except Exception:
                limit_log.exception(
                    f"policy:{operation}",
                    "security policy raised on %s %s; denied",
                    operation,
                    name,
                )
                return False
        if inspect.isawaitable(result):
            # Only reached if an async decision was not resolved beforehand.
            if inspect.iscoroutine(result):
                result.close()
            limit_log.error(
                f"policy_async:{operation}",
                "async security policy decision for %s was not awaited; denied",
                operation,
            )
            return False
        if type(result) is Deny:
            self.refusal_reason = result.reason
            return False
        if type(result) is not bool:
            limit_log.error(
                f"policy_type:{operation}",
                "security policy returned %r for %s, not a bool or deny(); denied",
                result,
                operation,
            )
            return False
        return result

    def _refusal(self, what: str, default: str) -> str:
        """The error of a denied decision: `default`, or with the policy's reason."""
        reason = self.refusal_reason
        return default if reason is None else errors.denied(reason, what)

    async def _awaited(
        self, operation: str, message: Message, session: Session | None, name: str
    ) -> bool | Deny:
        """One decision of the policy, awaited if async (for `_decide` to find)."""
        try:
            result = self._policy_call(operation, message, session, name)
            if inspect.isawaitable(result):
                result = await result
        except Exception:
            limit_log.exception(
                f"policy:{operation}", "security policy raised on %s %s; denied", operation, name
            )
            return False
        return result if type(result) is Deny else result is True

    async def _process_later(
        self,
        messages: list[Any],
        exchange: Exchange,
        context: HttpContext,
        started: float,
        policy: bool,
        history: bool,
    ) -> None:
        """Await what this batch needs, then process it: every decision of an
        async policy, and (clustered history) the streams its subscribes
        recover from."""
        CURRENT.set(context)  # (this task's own copy of the variable)
        decisions: dict[tuple[int, str, str], bool | Deny] = {}

        async def resolve(operation: str, m: Message, session: Session | None, name: str) -> None:
            decisions[(id(m), operation, name)] = await self._awaited(operation, m, session, name)

        for m in messages if policy else ():
            if type(m) is not dict or type(m.get("channel")) is not str:
                continue
            channel = m["channel"]
            if channel == META_HANDSHAKE:
                self._prepared[id(m)] = prepared = self._new_session(exchange)
                await resolve("handshake", m, prepared, "")
                continue
            session = self.lookup(m, exchange)
            if session is None:
                continue
            if channel == META_SUBSCRIBE:
                items, _ = self._subscriptions(m)
                names = [normalize_channel(i) for i in items or []]
                operation = "subscribe"
            elif not channel.startswith("/meta/"):
                names = [normalize_channel(channel)]
                operation = "publish"
            else:
                continue
            for name in names:
                if validate_channel(name) != CHANNEL_INVALID and not name.startswith("/meta/"):
                    await resolve("create", m, session, name)
                    await resolve(operation, m, session, name)
                    presence = self.presence
                    if operation == "subscribe" and presence and presence.is_companion(name):
                        await resolve("subscribe", m, session, presence.base_of(name))
        fetched = await self.history.prefetch(messages, exchange) if history else None
        try:
            if exchange.is_gone():
                return
            self._decided = decisions if policy else None
            self._process_now(messages, exchange)
        finally:
            self._decided = None
            self._prepared.clear()
            if fetched is not None:
                self.history.release(fetched)
        self._observe(messages, exchange, started)

    # ------------------------------------------------------------- handshake

    def _handshake(self, message: Message, exchange: Exchange) -> Message:
        stats = self.stats
        message_id = message.get("id")
        if message_id is not None and not valid_id(message_id):
            return self._failure(message, errors.MESSAGE_ID_INVALID)
        client_types = message.get("supportedConnectionTypes", self.transports)
        if type(client_types) is not list:
            client_types = []
        common = [t for t in self.transports if t in client_types]
        if not common or self.draining:
            stats.handshakes_refused += 1
            reply = self._failure(
                message,
                errors.connection_types_not_supported([t for t in client_types if type(t) is str]),
            )
            reply["advice"] = self.advice_refused
            return reply
        refusal = self._handshake_limited(exchange)
        if refusal is not None:
            self._prepared.pop(id(message), None)
            reply = self._failure(message, refusal)
            reply["advice"] = self._handshake_advice(exchange, refusal, 1)
            return reply
        session = self._prepared.pop(id(message), None) or self._new_session(exchange)
        if not self._decide("handshake", message, session, ""):
            stats.handshakes_refused += 1
            reply = self._failure(
                message, self._refusal("handshake_denied", errors.HANDSHAKE_DENIED)
            )
            reply["advice"] = self.advice_refused
            return reply
        if session.browser_id is not None and session.browser_id != exchange.browser_id:
            exchange.new_browser_id = session.browser_id  # Set-Cookie on this response
        exchange.bind(session)
        session.address = exchange.client_address
        self.addresses.session_added(session.address, self.loop.time())
        self.add_session(session)
        self._expire_at(session, self.loop.time() + self.after_reply_s)
        stats.handshakes += 1
        reply = {
            "channel": META_HANDSHAKE,
            "successful": True,
            "version": "1.0",
            "minimumVersion": "1.0",
            "clientId": session.id,
            "supportedConnectionTypes": self.transports,
            "advice": self.advice,
        }
        if message.get("id") is not None:
            reply["id"] = message["id"]
        ext = message.get("ext")
        if type(ext) is dict:
            if self.options.ack_extension and ext.get("ack") is True:
                session.ack = AckState()
                reply["ext"] = {"ack": True}
            if ext.get("replay") is True and self.replay.active:
                reply.setdefault("ext", {})["replay"] = True  # as Salesforce answers
        return reply

    # --------------------------------------------------------------- connect

    def _multiple_clients(self, session: Session, message: Message) -> Message:
        """The browser already holds its quota of long-polls (CometD's multiple-clients advice)."""
        self.stats.multiple_clients += 1
        o = self.options
        reply: Message = {"channel": META_CONNECT}
        if message.get("id") is not None:
            reply["id"] = message["id"]
        if o.multi_session_interval <= 0:
            reply["successful"] = False
            reply["advice"] = {"multiple-clients": True, "reconnect": "none", "interval": 0}
            return reply
        reply["successful"] = True
        reply["advice"] = {
            "multiple-clients": True,
            "reconnect": "retry",
            "interval": o.multi_session_interval,
            "timeout": o.timeout,
        }
        session.advice_dirty = True
        self._expire_at(
            session, self.loop.time() + (o.multi_session_interval + o.max_interval) / 1000.0
        )
        return reply

    # ------------------------------------------------------------ disconnect

    def _disconnect(self, message: Message, exchange: Exchange) -> Message:
        session = self.lookup(message, exchange)
        if session is None:
            return self._unknown_session(message, meta=False)
        self.stats.disconnects += 1
        self.remove_session(session)
        reply: Message = {"channel": META_DISCONNECT, "successful": True}
        if message.get("id") is not None:
            reply["id"] = message["id"]
        return reply

    # ---------------------------------------------------- (un)subscriptions

    def _subscriptions(self, message: Message) -> tuple[list[str] | None, str | None]:
        """The `subscription` field as a list, or the error string."""
        value = message.get("subscription")
        if value is None:
            return None, errors.SUBSCRIPTION_MISSING
        items = [value] if type(value) is str else value
        if type(items) is not list or not items or any(type(i) is not str for i in items):
            return None, errors.SUBSCRIPTION_INVALID
        return items, None

    def _subscription_reply(self, message: Message, error: str | None) -> Message:
        reply = (
            self._failure(message, error)
            if error
            else {"channel": message["channel"], "successful": True}
        )
        if error is None and message.get("id") is not None:
            reply["id"] = message["id"]
        reply["subscription"] = message.get("subscription")
        return reply

    def _subscribe(self, message: Message, exchange: Exchange) -> Message:
        if not self.history.active:
            return self._on_subscriptions(message, exchange, self._subscribe_all)
        fresh: list[str] = []
        self._fresh = fresh
        ext = message.get("ext")
        client_id = message.get("clientId")
        session = self.sessions.get(client_id) if type(client_id) is str else None
        queued = len(session.queue) if session is not None and session.queue else 0
        self._replaying = self.replay.request(ext, self.options.max_queue - queued)
        try:
            reply = self._on_subscriptions(message, exchange, self._subscribe_all)
        finally:
            self._fresh = None
            self._replaying = None
        session = self.sessions.get(client_id) if type(client_id) is str else None
        if session is None or session.removed:
            return reply
        requested = ext.get("recover") if type(ext) is dict else None
        if not fresh and requested is None:
            return reply
        queued = len(session.queue) if session.queue else 0
        answers, ignored = self.history.subscribed(
            fresh,
            (p for p in session.subscriptions or () if p not in fresh),
            requested,
            self.options.max_queue - queued,
            lambda encoded: self.deliver(session, encoded),
        )
        if answers or ignored:
            reply_ext = reply.get("ext")
            if type(reply_ext) is not dict:
                reply_ext = reply["ext"] = {}
            reply_ext["recover"] = answers
            if ignored:
                reply_ext["recover_ignored"] = ignored  # positions past max_subscriptions
        return reply

    def _unsubscribe(self, message: Message, exchange: Exchange) -> Message:
        return self._on_subscriptions(message, exchange, self._unsubscribe_all)

    def _on_subscriptions(
        self,
        message: Message,
        exchange: Exchange,
        apply: Callable[[Session, list[str], Message], str | None],
    ) -> Message:
        session = self.lookup(message, exchange)
        if session is None:
            return self._unknown_session(message, meta=False)
        self._touch(session)
        items, error = self._subscriptions(message)
        if items is not None:
            error = apply(session, items, message)
        return self._subscription_reply(message, error)

    def _subscribe_all(self, session: Session, items: list[str], message: Message) -> str | None:
        """Subscribe each entry in order; stop at the first failure (CometD)."""
        for raw in items:
            pattern = normalize_channel(raw)
            if validate_channel(pattern) == CHANNEL_INVALID:
                return errors.SUBSCRIPTION_INVALID
            if pattern.startswith("/meta/"):
                # An existing meta channel: subscribe denied; any other would
                # have to be created first: create denied (CometD's policy).
                return errors.SUBSCRIBE_DENIED if pattern in META_CHANNELS else errors.CREATE_DENIED
            if pattern.startswith("/service/"):
                continue  # accepted, nothing recorded (service channels are not subscribed)
            refusal = self._permit("subscribe", message, session, pattern)
            if (
                refusal is None
                and self.presence is not None
                and self.presence.is_companion(pattern)
            ):
                # Presence events of a channel: the right to subscribe to it.
                refusal = self._subscribe_refusal(session, self.presence.base_of(pattern), message)
            if refusal is not None:
                return refusal
            subs = session.subscriptions
            if subs is None:
                subs = session.subscriptions = set()
            if pattern in subs:
                continue
            if len(subs) >= self.options.max_subscriptions:
                return errors.TOO_MANY_SUBSCRIPTIONS
            if self._replaying is not None:
                # The missed events are queued now, then the channel is
                # subscribed: none between the two, none before them.
                refusal = self._replaying.plan(pattern, lambda e: self.deliver(session, e))
                if refusal is not None:
                    return refusal
            subs.add(pattern)
            self.broker.subscribe(session, pattern)
            self.stats.subscribes += 1
            if self._fresh is not None:
                self._fresh.append(pattern)
            if self.hooks.subscribe_listeners:
                self.hooks.subscribed(self.hooks.subscribe_listeners, session, pattern)
        return None

    def _unsubscribe_all(self, session: Session, items: list[str], message: Message) -> str | None:
        for raw in items:
            pattern = normalize_channel(raw)
            if validate_channel(pattern) == CHANNEL_INVALID:
                return errors.SUBSCRIPTION_INVALID
            if pattern.startswith("/meta/"):
                return errors.UNSUBSCRIBE_FAILED
            subs = session.subscriptions
            if subs is not None and pattern in subs:
                subs.discard(pattern)
                self.broker.unsubscribe(session, pattern)
                if not subs:
                    session.subscriptions = None
                if self.hooks.unsubscribe_listeners:
                    self.hooks.subscribed(self.hooks.unsubscribe_listeners, session, pattern)
        return None

    # --------------------------------------------------------------- publish

    def _publish(self, message: Message, exchange: Exchange, channel: str) -> Message:
        session = self.lookup(message, exchange)
        if session is None:
            return self._unknown_session(message, meta=False)
        self._touch(session)
        if channel.startswith("/meta/"):
            return self._failure(message, errors.CHANNEL_CREATE_DENIED)
        name = normalize_channel(channel)
        code = validate_channel(name)
        if code == CHANNEL_INVALID or code == CHANNEL_OK_PATTERN:
            return self._failure(message, errors.CHANNEL_INVALID)
        if "data" not in message:
            return self._failure(message, errors.DATA_MISSING)
        if self.publish_rate and not self._within_rate(session):
            self._throttle(exchange, self.publish_rate)
            return self._failure(message, errors.PUBLISH_RATE_EXCEEDED)
        if self.connection_publish_rate and not self._connection_within_rate(exchange):
            self._throttle(exchange, self.connection_publish_rate)
            return self._failure(message, errors.PUBLISH_RATE_EXCEEDED)
        refusal = self._admit(session, name, message)
        if refusal is not None:
            return self._failure(message, refusal)
        reply: Message = {"channel": channel, "successful": True}
        if message.get("id") is not None:
            reply["id"] = message["id"]
        if name.startswith("/service/"):
            return self._call_services(session, name, message, reply)
        refusal = self.publish_admitted(name, message)
        return reply if refusal is None else self._failure(message, refusal)

    def _admit(self, session: Session, name: str, message: Message) -> str | None:
        """The policy, the channel's authorizers, then the publish listeners:
        the error refusing a publish, or None."""
        refusal = self._permit("publish", message, session, name)
        if refusal is not None:
            return refusal
        if self.hooks.publish_listeners and not self.hooks.allow_publish(session, name, message):
            self.stats.deleted_by_listener += 1
            return errors.MESSAGE_DELETED
        return None

    def publish_admitted(self, name: str, message: Message) -> str | None:
        """`publish_from`, a message that cannot be encoded refused (the error)."""
        try:
            self.publish_from(name, message)
        except orjson.JSONEncodeError:
            # Parsed, but not encodable again (nested deeper than orjson
            # writes, 254 levels): refused, never a 500.
            self.stats.messages_invalid += 1
            limit_log.warning(
                "publish_not_json", "a publish to %s could not be encoded as JSON", name
            )
            return errors.MESSAGE_INVALID
        return None

    def admit_now(
        self, session: Session, name: str, message: Message, context: HttpContext | None = None
    ) -> str | None:
        """Check a publish made for `session` outside any transport (the HTTP
        API) as a client's publish is checked: incoming extensions, the
        policy and authorizers, publish listeners.  The error refusing it, or
        None: then `publish_admitted` sends it on the rest of a client's path
        (outgoing extensions, lazy channels).  For a policy whose publish
        decisions are async (`publish_awaits`), `admit`.
        """
        message["channel"] = name
        token = CURRENT.set(context)
        try:
            return self._incoming_refusal(session, message) or self._admit(session, name, message)
        finally:
            CURRENT.reset(token)

    @property
    def publish_awaits(self) -> bool:
        """Are the policy's decisions on a publish async (see `admit`)?"""
        return not self.async_decisions.isdisjoint(("create", "publish"))

    async def admit(
        self, session: Session, name: str, message: Message, context: HttpContext | None = None
    ) -> str | None:
        """`admit_now`, the policy's async decisions awaited first."""
        if not self.publish_awaits:
            return self.admit_now(session, name, message, context)
        message["channel"] = name
        token = CURRENT.set(context)
        try:
            refusal = self._incoming_refusal(session, message)
            if refusal is not None:
                return refusal
            decisions: dict[tuple[int, str, str], bool | Deny] = {}
            for operation in ("create", "publish"):
                key = (id(message), operation, name)
                decisions[key] = await self._awaited(operation, message, session, name)
            self._decided = decisions  # (set and used with no await between)
            try:
                return self._admit(session, name, message)
            finally:
                self._decided = None
        finally:
            CURRENT.reset(token)

    def _incoming_refusal(self, session: Session | None, message: Message) -> str | None:
        verdict = self.hooks.incoming(session, message)
        if verdict is True:
            return None
        if verdict is False:
            self.stats.deleted_by_extension += 1
            return errors.MESSAGE_DELETED
        self.stats.extension_failures += 1
        return errors.EXTENSION_FAILED

    def is_lazy(self, channel: str) -> bool:
        return bool(self.hooks.lazy_channels) and bool(self.hooks.lazy_channels.match(channel))

    def publish_from(self, channel: str, message: Message, lazy: bool = False) -> int:
        """Broadcast a message (a client's publish, or the server's own)."""
        delivery = {k: v for k, v in message.items() if k not in _STRIPPED_ON_DELIVERY}
        delivery["channel"] = channel
        if self.hooks.extensions and not self.hooks.outgoing(
            self.hooks.extensions, None, delivery, None
        ):
            self.stats.deleted_by_extension += 1
            return 0
        self.stats.published += 1
        history = self.history
        stream = history.stamp(channel, delivery) if history.active else None
        if stream is not None and self.replay.active:
            self.replay.stamp(channel, delivery, stream)
        # Encoded once, whatever the number of subscribers (its position in
        # the channel's history included).
        encoded = encode_message(delivery)
        lazy = lazy or self.is_lazy(channel)
        if stream is not None:
            return history.publish(self.broker, channel, stream, encoded, lazy)
        return self.broker.publish(channel, encoded, lazy)

    def _throttle(self, exchange: Exchange, rate: float) -> None:
        """A publish refused for its rate: stop reading its connection a while."""
        limits = exchange.make_limits()
        if limits is not None:
            self.stats.connections_throttled += 1
            limits.throttle(rate)

    def _within_rate(self, session: Session) -> bool:
        """Per-session token bucket: max_publish_rate messages/s, as a burst too."""
        now = self.loop.time()
        bucket = session.bucket
        if bucket is None:
            bucket = session.bucket = [self.publish_rate, now]
        tokens = min(self.publish_rate, bucket[0] + (now - bucket[1]) * self.publish_rate)
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            self.stats.publish_rate_exceeded += 1
            limit_log.warning(
                "publish_rate",
                "session %s publishes faster than max_publish_rate=%d/s; refused (%d so far)",
                session.id,
                self.publish_rate,
                self.stats.publish_rate_exceeded,
            )
            return False
        bucket[0] = tokens - 1.0
        return True

    def _connection_within_rate(self, exchange: Exchange) -> bool:
        """Per connection, whatever the number of sessions it carries."""
        limits = exchange.make_limits()
        if limits is None or limits.publish_allowed(self.connection_publish_rate, self.loop.time()):
            return True
        self.stats.publish_rate_exceeded += 1
        limit_log.warning(
            "connection_publish_rate",
            "a connection from %s publishes faster than max_connection_publish_rate=%d/s "
            "over all its sessions; refused (%d so far)",
            exchange.client_address,
            self.connection_publish_rate,
            self.stats.publish_rate_exceeded,
        )
        return False

    # -------------------------------------------------------------- services

    def _call_services(
        self, session: Session, channel: str, message: Message, reply: Message
    ) -> Message:
        """Run the handlers of a service channel; their results go to the caller.

        A handler refuses a caller by raising PermissionError (403::service_denied).
        A result is delivered as `{"id", "channel", "successful": true,
        "data"}`, which is what the JS client's remoteCall() waits for; the
        publish reply is sent as well (the WebSocket transport needs it).
        """
        for entry in self.hooks.services_for(channel):
            if entry.is_async:
                self.hooks.spawn(self._run_async_service(entry.function, session, channel, message))
                continue
            try:
                result = entry.function(session, message)
            except PermissionError as exc:
                # A service's way of refusing a caller: a 403, no traceback.
                limit_log.warning(
                    f"service_refused:{name_of(entry.function)}",
                    "service %s refused session %s: %s",
                    channel,
                    session.id,
                    exc,
                )
                return self._failure(message, errors.SERVICE_DENIED)
            except Exception:
                limit_log.exception(
                    f"service:{name_of(entry.function)}", "service %s raised", channel
                )
                self.stats.service_failures += 1
                return self._failure(message, errors.SERVICE_FAILED)
            self._service_result(session, channel, message, result)
        return reply

    async def _run_async_service(
        self, handler: Any, session: Session, channel: str, message: Message
    ) -> None:
        try:
            result = await handler(session, message)
        except Exception:
            limit_log.exception(f"service:{name_of(handler)}", "service %s raised", channel)
            self.stats.service_failures += 1
            failure = self._failure(message, errors.SERVICE_FAILED)
            if not session.removed:
                self.deliver(session, encode_message(failure))
            return
        self._service_result(session, channel, message, result)

    def _service_result(
        self, session: Session, channel: str, message: Message, result: Any
    ) -> None:
        if result is None or session.removed:
            return
        answer: Message = {"channel": channel, "successful": True, "data": result}
        if message.get("id") is not None:
            answer["id"] = message["id"]
        try:
            encoded = encode_message(answer)
        except TypeError:
            limit_log.exception(
                "service_not_json", "service %s returned data that is not JSON", channel
            )
            self.stats.service_failures += 1
            encoded = encode_message(self._failure(message, errors.SERVICE_FAILED))
        self.deliver(session, encoded)
