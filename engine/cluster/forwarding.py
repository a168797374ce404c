"""Request forwarding: an HTTP request for another node's session goes to that node.

A clientId ends with the id of the node that owns the session
(`BayeuxCore.owner_of`).  Behind a round-robin load balancer without sticky
sessions, a long-polling or callback-polling request often lands on another
node (the *origin*).  The core hands it to the forwarder, which sends it to
the owner through Redis and relays the answer, held connects included:

    origin                          redis                          owner
    HttpExchange waits ---- Q request ---> node:<owner> ---> RemoteExchange
      (pending, deadline)                                     core.process_here
    relays the bytes  <---- R response --- node:<origin> <--- send(parts)

Every node listens on its own channel `<prefix>node:<node_id>` through the
broker's subscription connection (`RedisBroker.listen`; sharded pub/sub on
Redis 7).  The messages on it, one per Redis message, kind in the first byte:

    Q{json}                 a request: {"r": rid, "o": origin node, "t": transport,
                            "b": BAYEUX_BROWSER cookie or null, "m": [messages]}
    R<rid>\\n<bytes>         the response: the encoded messages joined by commas,
                            relayed as they are (never decoded at the origin)
    E<rid> <owner>\\n<bytes> the same, with events taken off the session's queue:
                            the origin confirms it wrote them (C) or did not (X)
    F<rid>\\n<status> <why>  the request failed with an HTTP status (a connect
                            superseded by a newer one: 500, as a local one)
    B<rid>                  the owner cannot take it: its map of remote exchanges
                            is full, or it is shutting down and this is a connect
    A<rid> <origin>         abandon: the client's connection at the origin closed
    L<rid> <origin>         release: the origin is draining, answer the held connect now
    C<rid> <origin>         confirm: the answer E<rid> was written to the client
    X<rid> <origin>         the answer E<rid> was not written (client gone, too late)
    K<rid> <owner>          the owner asks about E<rid> (no C or X came in time)
    k<rid> <origin>         the origin's answer to K: whatever it had to say, it said
    P                       a probe (only its PUBLISH reply matters)

and on `<prefix>nodes`, which every node listens to:

    N<node id>              a node process started (its first Redis connection)

Failure behaviour, and why:

* No owner.  The reply to the request's PUBLISH is the number of receivers;
  0 means no node listens under that id (a node that died, or a clientId
  naming an unknown or forged node): the origin answers the request itself
  with `core.process_here`, which knows no such session: `402::session_unknown`
  and, on a connect, `reconnect: handshake` advice.  The client handshakes
  again, on whichever node, and goes on.  A request that was forwarded is
  always processed where it arrives (`process_here`), so it cannot loop.
  Except just after this node reconnected to Redis: after a Redis restart
  the other nodes come back one by one (their backoff), so for a grace
  period (`reconnect_grace`) no receiver means "not back yet" and the
  client is told to retry (below) rather than to handshake again.
* An owner that dies while holding a forwarded connect.  Every second the
  origin probes the owners it waits for (a `P` message: its PUBLISH reply
  counts their receivers); two probes in a row without a receiver and the
  waiting requests are answered locally as above (402 + handshake advice).
  An owner restarted under the same id (a worker restarted by the
  supervisor) answers the probes again, but it announces itself (`N`) when
  it first connects: the requests its predecessor received are answered
  locally the same way.
* No answer in time (the held-connect timeout + `margin`, 10 s), Redis
  unreachable, or the owner too busy: the origin answers the client itself
  with a Bayeux failure per message, `503::...` or `504::forward_timeout`,
  and, on a connect, `reconnect: retry` with the server's advice.  Not an
  HTTP 502: the CometD client retries a failed connect the same way
  (backoff, then connect), but a Bayeux reply also serves callback-polling
  as it is (of an HTTP error a JSONP client only learns "the script did not
  load", and some only notice on their own timeout), keeps the advice,
  answers each message's callback by its id, and is not retried as a whole
  by Faye (which resends a batch after an HTTP error, and would publish
  twice what the owner may already have done).
* The client's connection at the origin closes while its request is
  forwarded: the origin notices it on its next tick (`exchange.is_gone()`,
  at most `TICK` later) and sends `A` so the owner drops its hold quietly,
  as `core.abandon` does for a local one; events stay queued for the next
  connect.  An answer that arrives for a closed connection is dropped (the
  owner has already forgotten that request).
* An origin that dies (or loses its client) with an answer that carries
  events.  The owner keeps the events of an `E` answer until the origin
  confirms it wrote them (`C`, sent in the loop turn of the write), and
  puts them back at the front of the session's queue, in order, when it
  learns they were not: `X`, an `E` or `K` that no node received (the
  origin is gone), the origin announcing a restart (`N`), a `k` with no `C`
  before it (a node's messages arrive in the order it sent them), or the
  origin's own deadline for the request passed.  Without confirmation
  after `CONFIRM_AFTER`, the owner asks (`K`), and again at that pace.
  Until the events are confirmed or put back, any request for that session
  waits at the owner (`defer`, called by the core): a client whose relay
  died reconnects at once, and its connect must find the events on the
  queue, ahead of newer ones.  Sessions with the acknowledge extension are
  left to it (it resends what the client did not acknowledge).
* SIGTERM.  The owner's `core.drain()` answers the connects it holds for
  other nodes with `reconnect: retry`, as its own; the broker sends those
  answers before it disconnects.  A draining origin sends `L` for each
  forwarded request so the owner answers them now, with the events queued
  for them; what is still unanswered after `drain(timeout)` gets the
  `reconnect: retry` failure above.  Until it is gone, a draining owner
  refuses forwarded connects (`B`: the retry failure, so the client backs
  off) instead of answering them at once, which would make its clients
  poll it in a tight loop through the other nodes.

Timers: no `call_later` per request (one timer per request would cost a
heap entry each, at any number of pending requests).  Deadlines go in a
`TimerWheel` of `TICK` seconds, and one periodic tick takes what is due,
looks for closed client connections and sends the probes.

Bounded: at most `max_pending` forwarded requests waiting at an origin and
`max_remote` remote exchanges at an owner (beyond: the retry failure); an
owner keeps one unconfirmed answer per forwarded request and defers at most
`MAX_DEFERRED` requests per session.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
from typing import TYPE_CHECKING, Any

import orjson

from engine.api.context import HttpContext, context_of
from engine.delivery._batch import encode_all
from engine.protocol._sessions import HTTP_TRANSPORTS, META_CONNECT, META_HANDSHAKE
from engine.protocol.limits import ConnectionLimits
from engine.protocol.timers import TimerWheel
from engine.ratelog import CauseLog

if TYPE_CHECKING:
    from engine.cluster.redis_broker import RedisBroker
    from engine.protocol.core import BayeuxCore
    from engine.protocol.session import Exchange, Hold, Session

__all__ = ["RedisForwarder", "RemoteExchange"]

log = logging.getLogger("engine.forwarding")
limit_log = CauseLog(log)

TICK = 0.5  # s: deadline resolution, closed-connection and probe checks
PROBE_EVERY = 1.0  # s: how often the owners of waiting requests are probed
PROBE_STRIKES = 2  # probes in a row without a receiver: the owner is gone
CONFIRM_AFTER = 1.0  # s: an answer with events not confirmed by then: ask its origin
MAX_DEFERRED = 16  # requests of one session waiting for its events' confirmation

TIMEOUT_ERROR = "504::forward_timeout"
UNAVAILABLE_ERROR = "503::cluster_unavailable"
BUSY_ERROR = "503::owner_unavailable"

_SUBSCRIPTION_CHANNELS = ("/meta/subscribe", "/meta/unsubscribe")


def _valid_node_id(node_id: str) -> bool:
    """Node ids are ASCII letters and digits (ServerOptions); others cannot exist."""
    return 0 < len(node_id) <= 64 and node_id.isascii() and node_id.isalnum()


class _Forward:
    """A request waiting at the origin for its owner's answer."""

    __slots__ = ("exchange", "owner", "messages", "deadline", "sent_at", "delivered")

    def __init__(
        self, exchange: Exchange, owner: str, messages: list[Any], deadline: float, now: float
    ) -> None:
        self.exchange = exchange
        self.owner = owner
        self.messages = messages
        self.deadline = deadline
        self.sent_at = now
        self.delivered = False  # the owner received it (PUBLISH reply >= 1)


class _Kept:
    """Events an answer took off a session's queue, kept by the owner until confirmed."""

    __slots__ = ("session", "events", "origin", "rid", "give_up_at", "asked_at")

    def __init__(
        self, session: Session, events: list[bytes], origin: str, rid: int, give_up_at: float
    ) -> None:
        self.session = session
        self.events = events
        self.origin = origin
        self.rid = rid
        self.give_up_at = give_up_at  # the origin's own deadline for the request is past
        self.asked_at = 0.0


def _leading_events(parts: list[bytes]) -> int:
    """How many of a response's parts are events: the replies come last, and
    only they have `successful` (the core strips it from deliveries)."""
    n = len(parts)
    while n:
        part = parts[n - 1]
        if b'"successful"' not in part:
            break
        try:
            value = orjson.loads(part)
        except orjson.JSONDecodeError:
            break
        if type(value) is not dict or "successful" not in value:
            break
        n -= 1
    return n


class RemoteExchange:
    """The `Exchange` of a forwarded request, on the owner: answers go back by Redis."""

    __slots__ = (
        "forwarder",
        "origin",
        "rid",
        "transport",
        "browser_id",
        "new_browser_id",
        "hold",
        "done",
        "client_address",
        "limits",
        "session",
        "http_context",
    )

    def __init__(
        self,
        forwarder: RedisForwarder,
        origin: str,
        rid: int,
        transport: str,
        browser_id: str | None,
    ) -> None:
        self.forwarder = forwarder
        self.origin = origin
        self.rid = rid
        self.transport = transport
        self.browser_id = browser_id
        # Only a handshake sets it, and handshakes are never forwarded.
        self.new_browser_id: str | None = None
        self.hold: Hold | None = None
        self.done = False  # answered, or abandoned by the origin
        self.client_address: str | None = None
        # Connection limits apply where the client's connection is (the origin).
        self.limits: ConnectionLimits | None = None
        self.session: Session | None = None  # the session it is for, once looked up
        self.http_context: HttpContext | None = None  # (from the origin's request)

    def make_limits(self) -> ConnectionLimits | None:
        return None

    def session_count(self) -> int:
        return 0

    def room(self) -> int:
        return int(self.forwarder.core.max_batch_bytes)

    def bind(self, session: Session) -> None:
        self.session = session
        # As HttpExchange: a session that fell back from WebSocket leaves its socket.
        if session.sink is not None:
            session.sink.unbind(session)

    def is_gone(self) -> bool:
        return self.done

    def send(self, parts: list[bytes]) -> None:
        if self.done:
            # Abandoned meanwhile: events taken for it go back to the queue.
            self.forwarder._taken_in_vain(self, parts)
            return
        self.done = True
        self.forwarder._reply(self, parts)

    def fail(self, status: int, detail: str = "") -> None:
        if self.done:
            return
        self.done = True
        payload = b"F%d\n%d %s" % (self.rid, status, detail.encode("utf-8", "replace"))
        self.forwarder._answer(self, payload)


class RedisForwarder:
    """The core's `Forwarder` over the Redis broker (see the module docstring)."""

    def __init__(
        self,
        core: BayeuxCore,
        broker: RedisBroker,
        *,
        margin: float = 10.0,
        max_pending: int = 100_000,
        max_remote: int = 100_000,
    ) -> None:
        self.core = core
        self.broker = broker
        self.node_id = core.node_id
        self.channel = broker.node_channel(self.node_id)
        self.cluster_channel = broker.prefix.encode() + b"nodes"
        self.margin = margin
        self.max_pending = max_pending
        self.max_remote = max_remote
        self.loop = core.loop
        # After a reconnection, how long the other nodes may take to be back.
        self.reconnect_grace = broker.backoff_max + broker.connect_timeout + 1.0
        self._grace_until = 0.0
        # Origin side: request id -> the request waiting for its answer.
        # Ids start at a random point: a restarted node (same id) does not
        # reuse the ids its predecessor left at the owners.
        self._next_rid = secrets.randbits(48)
        self._pending: dict[int, _Forward] = {}
        self._deadlines: TimerWheel[int] = TimerWheel(TICK, self.loop.time())
        self._strikes: dict[str, int] = {}  # owner -> probes in a row without receiver
        self._next_probe = 0.0
        # Owner side: (origin, request id) -> its exchange, while unanswered.
        self._remote: dict[tuple[str, int], RemoteExchange] = {}
        # Answers with events not confirmed yet: by (origin, request id), and
        # per session (in the order they were sent); requests of those
        # sessions waiting for them; when to look at them again.
        self._kept: dict[tuple[str, int], _Kept] = {}
        self._kept_of: dict[str, list[_Kept]] = {}
        self._deferred: dict[str, list[tuple[list[Any], Exchange]]] = {}
        self._kept_wheel: TimerWheel[tuple[str, int]] = TimerWheel(TICK, self.loop.time())
        self._tick_handle: asyncio.TimerHandle | None = None
        # Origin side: confirmations (`C`) not sent yet: request id -> owner.
        self._unsent_confirms: dict[int, str] = {}

        # Counters (see `stats()`).  Origin side:
        self.forwarded = 0  # requests sent to their owner
        self.answered = 0  # answers relayed to the client
        self.failed = 0  # owner's HTTP failures relayed (superseded connects)
        self.timed_out = 0  # no answer before the deadline: retry failure
        self.no_owner = 0  # no node under that id (or it died): answered here, 402
        self.abandoned = 0  # client connection closed before the answer: abandon sent
        self.dropped = 0  # answers that came for a closed client connection
        self.unavailable = 0  # redis unreachable / backlog full / owner busy: retry failure
        self.late = 0  # answers for requests already answered otherwise
        # Owner side:
        self.served = 0  # forwarded requests processed here
        self.remote_abandoned = 0  # holds dropped because the origin's client left
        self.released = 0  # holds answered early for a draining origin
        self.refused = 0  # requests refused: too many remote exchanges, or draining
        self.undelivered = 0  # answers no origin received (it died meanwhile)
        self.confirmed = 0  # answers with events the origin confirmed it wrote
        self.requeued = 0  # answers with events put back: not written by the origin
        self.deferred = 0  # requests that waited for their session's confirmation
        self.invalid = 0  # unreadable messages on the node channel

    # ------------------------------------------------------------ life cycle

    def start(self) -> None:
        """Listen on this node's channel (before or after the broker starts)."""
        self.broker.listen(self.channel, self._received)
        self.broker.listen(self.cluster_channel, self._on_cluster)
        self.broker.on_connect = self._on_connect
        if self._tick_handle is None:
            self._tick_handle = self.loop.call_later(TICK, self._tick)

    async def drain(self, timeout: float = 0.5) -> None:
        """Shutting down: have the owners answer our waiting requests now."""
        if not self._pending:
            return
        for rid, entry in self._pending.items():
            self._send(entry.owner, b"L%d %s" % (rid, self.node_id.encode()))
        deadline = self.loop.time() + timeout
        while self._pending and self.loop.time() < deadline:
            await asyncio.sleep(0.01)
        self._fail_all(UNAVAILABLE_ERROR)

    def close(self) -> None:
        if self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None
        self._fail_all(UNAVAILABLE_ERROR)
        self.broker.unlisten(self.channel)
        self.broker.unlisten(self.cluster_channel)
        self._remote.clear()
        self._kept.clear()
        self._kept_of.clear()
        self._deferred.clear()
        log.info("node %s: forwarding: %s", self.node_id, self.stats())

    def stats(self) -> dict[str, Any]:
        return {
            "pending": len(self._pending),
            "remote": len(self._remote),
            "forwarded": self.forwarded,
            "answered": self.answered,
            "failed": self.failed,
            "timed_out": self.timed_out,
            "no_owner": self.no_owner,
            "abandoned": self.abandoned,
            "dropped": self.dropped,
            "unavailable": self.unavailable,
            "late": self.late,
            "served": self.served,
            "remote_abandoned": self.remote_abandoned,
            "released": self.released,
            "refused": self.refused,
            "undelivered": self.undelivered,
            "unconfirmed": len(self._kept),
            "confirmed": self.confirmed,
            "requeued": self.requeued,
            "deferred": self.deferred,
            "invalid": self.invalid,
        }

    # ------------------------------------------------------- origin side

    def forward(self, owner: str, messages: list[Any], exchange: Exchange) -> None:
        """The core's hook: send a request for `owner`'s session there."""
        if not _valid_node_id(owner) or any(
            type(m) is dict and m.get("channel") == META_HANDSHAKE for m in messages
        ):
            # No node has such an id (402 here); a handshake is this node's.
            if not _valid_node_id(owner):
                self.no_owner += 1
            self.core.process_here(messages, exchange)
            return
        broker = self.broker
        if not broker.available or len(self._pending) >= self.max_pending:
            self.unavailable += 1
            self._answer_failure(exchange, messages, UNAVAILABLE_ERROR)
            return
        try:
            body = orjson.dumps(
                {
                    "r": self._next_rid,
                    "o": self.node_id,
                    "t": exchange.transport,
                    "b": exchange.browser_id,
                    "a": exchange.client_address,
                    # The request's headers, for a policy that reads them.
                    "h": self._headers(exchange),
                    "m": messages,
                }
            )
        except orjson.JSONEncodeError:
            self.core.process_here(messages, exchange)
            return
        rid = self._next_rid
        self._next_rid += 1
        now = self.loop.time()
        first = messages[0] if len(messages) == 1 else None
        held = type(first) is dict and first.get("channel") == META_CONNECT
        deadline = now + self.margin + (self.core.timeout_s if held else 0.0)
        self._pending[rid] = _Forward(exchange, owner, messages, deadline, now)
        if not broker.send_direct(
            broker.node_channel(owner), b"Q" + body, functools.partial(self._published, rid)
        ):
            del self._pending[rid]
            self.unavailable += 1
            self._answer_failure(exchange, messages, UNAVAILABLE_ERROR)
            return
        self._deadlines.add(deadline, rid)
        self.forwarded += 1

    def _headers(self, exchange: Exchange) -> dict[str, str] | None:
        """The headers a policy reads (see SecurityPolicy.uses_http_context), or None."""
        wanted = self.core.policy.uses_http_context
        if not wanted:
            return None
        headers = context_of(exchange).headers
        return dict(headers) if wanted is True else {k: headers[k] for k in wanted if k in headers}

    def _published(self, rid: int, receivers: int | None) -> None:
        """The PUBLISH reply of a request: did its owner get it?"""
        entry = self._pending.get(rid)
        if entry is None:  # answered already (the answer can overtake this reply)
            return
        if receivers is None:
            del self._pending[rid]
            self.unavailable += 1
            self._answer_failure(entry.exchange, entry.messages, UNAVAILABLE_ERROR)
        elif receivers == 0:
            del self._pending[rid]
            if self.loop.time() < self._grace_until:
                self.unavailable += 1  # the owner may not have reconnected yet
                self._answer_failure(entry.exchange, entry.messages, UNAVAILABLE_ERROR)
            else:
                self.no_owner += 1
                self.core.process_here(entry.messages, entry.exchange)
        else:
            entry.delivered = True

    def _on_answer(self, data: bytes, kind: bytes) -> None:
        end = data.find(b"\n")
        if end < 0 and kind != b"B":
            self.invalid += 1
            return
        head = data[1:end] if end > 0 else data[1:]
        owner = ""
        if kind == b"E":
            rid_text, _, owner_b = head.partition(b" ")
            owner = owner_b.decode("ascii", "replace")
            head = rid_text
            if not _valid_node_id(owner):
                self.invalid += 1
                return
        try:
            rid = int(head)
        except ValueError:
            self.invalid += 1
            return
        entry = self._pending.pop(rid, None)
        if entry is None:
            self.late += 1
            if kind == b"E":  # not written: the owner puts its events back
                self._send(owner, b"X%d %s" % (rid, self.node_id.encode()))
            return
        exchange = entry.exchange
        if exchange.is_gone():
            self.dropped += 1
            if kind == b"E":
                self._send(entry.owner, b"X%d %s" % (rid, self.node_id.encode()))
            return
        if kind == b"R" or kind == b"E":
            self.answered += 1
            # The owner's encoded messages, as they are: the exchange adds `[ ]`.
            exchange.send([data[end + 1 :]])
            if kind == b"E":
                self._confirm(entry.owner, rid)
        elif kind == b"F":
            self.failed += 1
            status, _, detail = data[end + 1 :].partition(b" ")
            exchange.fail(
                int(status) if status.isdigit() else 500, detail.decode("utf-8", "replace")
            )
        else:  # B: the owner is too busy
            self.unavailable += 1
            self._answer_failure(exchange, entry.messages, BUSY_ERROR)

    def _confirm(self, owner: str, rid: int) -> None:
        """Tell the owner its events are written (`C`); kept until sent, for its `K`."""
        if not self.broker.send_direct(
            self.broker.node_channel(owner),
            b"C%d %s" % (rid, self.node_id.encode()),
            functools.partial(self._confirm_sent, owner, rid),
        ):
            self._confirm_later(owner, rid)

    def _confirm_sent(self, owner: str, rid: int, receivers: int | None) -> None:
        if receivers is None:
            self._confirm_later(owner, rid)

    def _confirm_later(self, owner: str, rid: int) -> None:
        """A `C` that could not go (Redis down): sent again on reconnection or
        when the owner asks, never to let the owner put back what was written."""
        confirms = self._unsent_confirms
        if len(confirms) >= self.max_pending:
            del confirms[next(iter(confirms))]
        confirms[rid] = owner

    def _answer_failure(self, exchange: Exchange, messages: list[Any], error: str) -> None:
        """Answer a request here: a failure per message, `reconnect: retry` on a connect."""
        replies: list[dict[str, Any]] = []
        for message in messages:
            if type(message) is not dict:
                continue
            reply: dict[str, Any] = {"successful": False, "error": error}
            channel = message.get("channel")
            if type(channel) is str:
                reply["channel"] = channel
            if message.get("id") is not None:
                reply["id"] = message["id"]
            if channel == META_CONNECT:
                reply["advice"] = self.core.advice
            elif channel in _SUBSCRIPTION_CHANNELS:
                reply["subscription"] = message.get("subscription")
            replies.append(reply)
        exchange.send(encode_all(replies))

    def _fail_all(self, error: str) -> None:
        """Answer every waiting request here (retry), telling the owners to forget them."""
        pending, self._pending = self._pending, {}
        for rid, entry in pending.items():
            self.unavailable += 1
            self._send(entry.owner, b"A%d %s" % (rid, self.node_id.encode()))
            if not entry.exchange.is_gone():
                self._answer_failure(entry.exchange, entry.messages, error)

    def _tick(self) -> None:
        now = self.loop.time()
        if self._kept:
            self._check_kept(now)
        pending = self._pending
        late: set[str] = set()
        for rid in self._deadlines.due(now):
            entry = pending.get(rid)
            if entry is not None and entry.deadline <= now:
                del pending[rid]
                self.timed_out += 1
                late.add(entry.owner)
                self._send(entry.owner, b"A%d %s" % (rid, self.node_id.encode()))
                if not entry.exchange.is_gone():
                    self._answer_failure(entry.exchange, entry.messages, TIMEOUT_ERROR)
        if late:
            log.warning(
                "node %s: forwarded request(s) not answered in time by node(s) %s: "
                "clients told to retry (%d in total)",
                self.node_id,
                ", ".join(sorted(late)),
                self.timed_out,
            )
        if pending:
            if not self.broker.available:
                # Answers cannot arrive now: the clients retry (with backoff).
                self._fail_all(UNAVAILABLE_ERROR)
            else:
                self._sweep(now)
        elif self._strikes:
            self._strikes.clear()
        self._tick_handle = self.loop.call_later(TICK, self._tick)

    def _sweep(self, now: float) -> None:
        """Closed client connections (abandon), and probes of the owners waited for."""
        pending = self._pending
        probe = now >= self._next_probe
        gone: list[int] = []
        owners: set[str] = set()
        probe_before = now - PROBE_EVERY
        for rid, entry in pending.items():
            if entry.exchange.is_gone():
                gone.append(rid)
            elif probe and entry.delivered and entry.sent_at <= probe_before:
                owners.add(entry.owner)
        node = self.node_id.encode()
        for rid in gone:
            entry = pending.pop(rid)
            self.abandoned += 1
            self._send(entry.owner, b"A%d %s" % (rid, node))
        if probe:
            self._next_probe = now + PROBE_EVERY
            for owner in owners:
                self.broker.send_direct(
                    self.broker.node_channel(owner), b"P", functools.partial(self._probed, owner)
                )

    def _probed(self, owner: str, receivers: int | None) -> None:
        if receivers is None or self.loop.time() < self._grace_until:
            return
        if receivers > 0:
            self._strikes.pop(owner, None)
            return
        strikes = self._strikes.get(owner, 0) + 1
        if strikes < PROBE_STRIKES:
            self._strikes[owner] = strikes
            return
        self._strikes.pop(owner, None)
        self._owner_lost(owner, "is gone (nothing listens on its channel)")

    def _on_connect(self, first: bool) -> None:
        if not first:
            self._grace_until = self.loop.time() + self.reconnect_grace
            confirms, self._unsent_confirms = self._unsent_confirms, {}
            for rid, owner in confirms.items():
                self._confirm(owner, rid)
        else:
            # A new process under this id: what its predecessor held is lost.
            # Sent with the first batch, before this node has any session.
            self.broker.send_direct(self.cluster_channel, b"N" + self.node_id.encode())

    def _on_cluster(self, data: bytes) -> None:
        if data[:1] != b"N":
            self.invalid += 1
            return
        node = data[1:].decode("utf-8", "replace")
        if node != self.node_id:
            self._owner_lost(node, "started again")
            self._origin_lost(node)

    def _owner_lost(self, owner: str, why: str) -> None:
        """The owner's sessions are gone: answer what it received here (402, handshake)."""
        lost = [
            rid for rid, entry in self._pending.items() if entry.owner == owner and entry.delivered
        ]
        if not lost:
            return
        log.warning(
            "node %s: node %s %s: %d forwarded request(s) answered here (402, handshake)",
            self.node_id,
            owner,
            why,
            len(lost),
        )
        for rid in lost:
            entry = self._pending.pop(rid)
            self.no_owner += 1
            self.core.process_here(entry.messages, entry.exchange)

    # -------------------------------------------------------- owner side

    def _serve(self, data: bytes) -> None:
        try:
            request = orjson.loads(memoryview(data)[1:])
            rid = request["r"]
            origin = request["o"]
            transport = request["t"]
            browser_id = request["b"]
            address = request.get("a")  # (absent from an older node's request)
            messages = request["m"]
        except (orjson.JSONDecodeError, TypeError, KeyError):
            self.invalid += 1
            return
        if not (
            type(rid) is int
            and type(origin) is str
            and _valid_node_id(origin)
            and transport in HTTP_TRANSPORTS
            and (browser_id is None or type(browser_id) is str)
            and type(messages) is list
            and messages
        ):
            self.invalid += 1
            return
        if len(self._remote) >= self.max_remote or (
            self.core.draining
            and any(type(m) is dict and m.get("channel") == META_CONNECT for m in messages)
        ):
            self.refused += 1
            self._send(origin, b"B%d" % rid)
            return
        exchange = RemoteExchange(self, origin, rid, transport, browser_id)
        if type(address) is str and len(address) <= 64:
            # The client's address as the relay saw it (per-address limits, logs).
            exchange.client_address = address
        headers = request.get("h")
        if type(headers) is dict and all(
            type(k) is str and type(v) is str for k, v in headers.items()
        ):
            exchange.http_context = HttpContext(headers, exchange.client_address, transport)
        self._remote[(origin, rid)] = exchange
        self.served += 1
        # Processed here whatever it says: a forwarded request is never forwarded.
        self.core.process_here(messages, exchange)

    def _answer(self, exchange: RemoteExchange, payload: bytes) -> None:
        self._remote.pop((exchange.origin, exchange.rid), None)
        if not self.broker.send_direct(
            self.broker.node_channel(exchange.origin), payload, self._delivered
        ):
            self.undelivered += 1

    def _delivered(self, receivers: int | None) -> None:
        if not receivers:
            self.undelivered += 1

    # ------------------------------------- owner side: events until confirmed

    def _reply(self, exchange: RemoteExchange, parts: list[bytes]) -> None:
        """Send a forwarded request's response; keep the events it carries."""
        session = exchange.session
        count = _leading_events(parts) if session is not None and session.ack is None else 0
        if not count or session is None:
            self._answer(exchange, b"R%d\n" % exchange.rid + b",".join(parts))
            return
        key = (exchange.origin, exchange.rid)
        self._remote.pop(key, None)
        now = self.loop.time()
        # The origin gives up on the request at timeout + margin after it
        # sent it: past that, it writes nothing more for it.
        give_up_at = now + self.core.timeout_s + self.margin
        kept = _Kept(session, parts[:count], exchange.origin, exchange.rid, give_up_at)
        self._kept[key] = kept
        self._kept_of.setdefault(session.id, []).append(kept)
        self._kept_wheel.add(now + CONFIRM_AFTER, key)
        payload = b"E%d %s\n" % (exchange.rid, self.node_id.encode()) + b",".join(parts)
        if not self.broker.send_direct(
            self.broker.node_channel(exchange.origin),
            payload,
            functools.partial(self._kept_published, key),
        ):
            self.undelivered += 1
            self._settle(key, False, "redis unavailable")

    def _kept_published(self, key: tuple[str, int], receivers: int | None) -> None:
        if receivers == 0:
            self.undelivered += 1
            self._settle(key, False, "no node received the answer")
        elif receivers is None and key in self._kept:
            self._ask(self._kept[key])  # its fate is unknown: ask

    def _taken_in_vain(self, exchange: RemoteExchange, parts: list[bytes]) -> None:
        session = exchange.session
        if session is not None and session.ack is None:
            count = _leading_events(parts)
            if count:
                self._requeue(session, parts[:count], exchange.origin, "its request was abandoned")

    def _ask(self, kept: _Kept) -> None:
        """Ask the origin about an answer with events (`K`); `k` comes after its C or X."""
        kept.asked_at = self.loop.time()
        key = (kept.origin, kept.rid)
        self.broker.send_direct(
            self.broker.node_channel(kept.origin),
            b"K%d %s" % (kept.rid, self.node_id.encode()),
            functools.partial(self._asked, key),
        )

    def _asked(self, key: tuple[str, int], receivers: int | None) -> None:
        if receivers == 0:
            self._settle(key, False, "the origin is gone")

    def _settle(self, key: tuple[str, int], written: bool, why: str = "") -> None:
        """An answer with events is confirmed (`written`) or known not written: put back."""
        kept = self._kept.pop(key, None)
        if kept is None:
            return
        session = kept.session
        batches = self._kept_of.get(session.id)
        if batches is not None:
            batches.remove(kept)
            if not batches:
                del self._kept_of[session.id]
        if written:
            self.confirmed += 1
        else:
            self._requeue(session, kept.events, kept.origin, why)
        if session.id not in self._kept_of:
            waiting = self._deferred.pop(session.id, None)
            if waiting:
                for messages, exchange in waiting:
                    if not exchange.is_gone():
                        self.core.process_here(messages, exchange)

    def _requeue(self, session: Session, events: list[bytes], origin: str, why: str) -> None:
        """Put events back at the front of their session's queue, in order."""
        core = self.core
        self.requeued += len(events)
        core.stats.cluster_requeued += len(events)
        limit_log.warning(
            "forward_requeued",
            "node %s: %d event(s) of session %s put back on its queue: node %s did not "
            "write them to the client (%s); %d in all",
            self.node_id,
            len(events),
            session.id,
            origin,
            why,
            self.requeued,
        )
        if session.removed:
            core.stats.discarded += len(events)
            return
        queue = events + session.queue if session.queue else list(events)
        size = session.queued_bytes + sum(len(e) for e in events)
        # Bounded as every queue: beyond max_queue / max_queue_bytes the oldest go.
        max_queue, max_bytes = core.options.max_queue, core.options.max_queue_bytes
        drop = 0
        while len(queue) - drop > 1 and (len(queue) - drop > max_queue or size > max_bytes):
            size -= len(queue[drop])
            drop += 1
        if drop:
            del queue[:drop]
            session.dropped += drop
            core.stats.dropped_queue_full += drop
            limit_log.warning(
                "queue_full",
                "session %s: queue full with events put back: %d oldest dropped",
                session.id,
                drop,
            )
        core.requeue(session, queue, size)
        core._send_queued([session])  # to its held connect or WebSocket, if any

    def defer(self, messages: list[Any], exchange: Exchange) -> bool:
        """The core's hook: hold a request while its session's events are out
        with an origin that has not confirmed them (True: it is kept here)."""
        kept_of = self._kept_of
        if not kept_of:
            return False
        first = messages[0] if messages else None
        client_id = first.get("clientId") if type(first) is dict else None
        if type(client_id) is not str:
            return False
        batches = kept_of.get(client_id)
        if batches is None:
            return False
        waiting = self._deferred.setdefault(client_id, [])
        if len(waiting) >= MAX_DEFERRED:
            return False
        waiting.append((messages, exchange))
        self.deferred += 1
        for kept in batches:
            self._ask(kept)
        return True

    def _check_kept(self, now: float) -> None:
        """Answers with events still unconfirmed: ask again, or give up (put back)."""
        for key in self._kept_wheel.due(now):
            kept = self._kept.get(key)
            if kept is None:
                continue
            if now >= kept.give_up_at:
                self._settle(key, False, "no confirmation before the request's deadline")
                continue
            if now - kept.asked_at >= CONFIRM_AFTER:
                self._ask(kept)
            self._kept_wheel.add(min(now + CONFIRM_AFTER, kept.give_up_at), key)

    def _control_key(self, data: bytes) -> tuple[str, int] | None:
        """(node, request id) of a control message `<kind><rid> <node>`; None if unreadable."""
        rid_text, _, node = data[1:].partition(b" ")
        try:
            key = (node.decode("ascii"), int(rid_text))
        except (UnicodeDecodeError, ValueError):
            key = None
        if key is None or not _valid_node_id(key[0]):
            self.invalid += 1
            return None
        return key

    def _on_settled(self, data: bytes, kind: bytes) -> None:
        """`C`, `X` or `k` from the origin of an answer with events."""
        key = self._control_key(data)
        if key is None:
            return
        if kind == b"C":
            self._settle(key, True)
        elif kind == b"X":
            self._settle(key, False, "it could not")
        else:
            self._settle(key, False, "it says it never did")

    def _on_ask(self, data: bytes) -> None:
        """`K` from an owner: answer `k`, after the `C` or `X` already sent if any."""
        key = self._control_key(data)
        if key is None:
            return
        owner, rid = key
        if self._unsent_confirms.pop(rid, None) is not None:
            self._confirm(owner, rid)  # written: the `C` goes before the `k`
        entry = self._pending.get(rid)
        if entry is not None and entry.owner == owner:
            # Its answer was lost on the way (the owner sent it before asking):
            # whatever may still come for it is not written; the client retries.
            del self._pending[rid]
            self.unavailable += 1
            if not entry.exchange.is_gone():
                self._answer_failure(entry.exchange, entry.messages, UNAVAILABLE_ERROR)
        self._send(owner, b"k%d %s" % (rid, self.node_id.encode()))

    def _origin_lost(self, origin: str) -> None:
        """A node restarted: the answers with events it had not confirmed go back."""
        for key in [k for k in self._kept if k[0] == origin]:
            self._settle(key, False, "it restarted")

    def _on_control(self, data: bytes, kind: bytes) -> None:
        """`A` (abandon) or `L` (release) for one of our remote exchanges."""
        key = self._control_key(data)
        if key is None:
            return
        exchange = self._remote.get(key)
        if exchange is None:
            return
        hold = exchange.hold
        if kind == b"A":
            del self._remote[key]
            exchange.done = True
            self.remote_abandoned += 1
            if hold is not None:
                self.core.abandon(hold)
        elif hold is not None and hold.session.hold is hold:
            # Answered now with the events queued for it, as core.drain() does.
            self.released += 1
            self.core._release(hold, self.core.advice)

    # ------------------------------------------------------------- wire

    def _received(self, data: bytes) -> None:
        kind = data[:1]
        if kind == b"R" or kind == b"E" or kind == b"F" or kind == b"B":
            self._on_answer(data, kind)
        elif kind == b"Q":
            self._serve(data)
        elif kind == b"C" or kind == b"X" or kind == b"k":
            self._on_settled(data, kind)
        elif kind == b"K":
            self._on_ask(data)
        elif kind == b"A" or kind == b"L":
            self._on_control(data, kind)
        elif kind != b"P":
            self.invalid += 1

    def _send(self, node: str, payload: bytes) -> None:
        self.broker.send_direct(self.broker.node_channel(node), payload)
