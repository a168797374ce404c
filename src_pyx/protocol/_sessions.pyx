# cython: freethreading_compatible = False
"""Sessions and the path every heartbeat and every delivery takes, compiled.

A `Session` is what the server keeps per idle client, so it is a C struct:
typed fields, no timer, no queue object until a message is actually queued.
A `Hold` is a `/meta/connect` waiting for an event or its deadline, and
`TimerWheel` is the one coarse timer structure per process that holds them
(no timer per session).

`SessionCore` is the base class of `engine.protocol.core.BayeuxCore`: the state each
request touches, and the methods of the hot path (a request's messages in
order, `/meta/connect`, the held connects, delivery into session queues and
the flush that answers them).  The rest of the protocol (handshake,
subscriptions, publish, security, services, extensions) is Python in
core.py; methods of it that the hot path needs are called through `self` as
Python attributes (`_answer_handshake`, `_subscribe`, `_publish`...).

Rules follow the Bayeux specification and CometD 8's server
(https://docs.cometd.org/current/reference/#_bayeux); comments name the rule.
"""

from libc.math cimport ceil, isfinite

import logging
import random
import time

import orjson

from engine.protocol import errors
from engine.delivery._batch cimport encode_all, encode_message
from engine.protocol.limits import backoff_ms
from engine.ratelog import CauseLog

META_HANDSHAKE = "/meta/handshake"
META_CONNECT = "/meta/connect"
META_DISCONNECT = "/meta/disconnect"
META_SUBSCRIBE = "/meta/subscribe"
META_UNSUBSCRIBE = "/meta/unsubscribe"
HTTP_TRANSPORTS = frozenset(("long-polling", "callback-polling"))
NEVER = float("inf")
# Message ids: any JSON string up to this length, or a number, echoed as sent
# (clients send counters, UUIDs, hashes...).
MAX_ID_LENGTH = 256

cdef object _random = random.random
cdef object _perf_counter = time.perf_counter
cdef object _JSONEncodeError = orjson.JSONEncodeError

log = logging.getLogger("engine.core")
# Warnings about limits and unexpected failures: one line per cause and
# period, with a count (a flood must not flood the log).
cdef object limit_log = CauseLog(log)


cdef class AckState:
    """Acknowledge extension state of one session (CometD's ack extension)."""

    cdef public Py_ssize_t batch  # the number the next connect reply carries
    cdef public list unacked  # (batch sent in, event)
    # Events of a connect reply being composed (immediate replies).
    cdef public list pending

    def __init__(self):
        self.batch = 1
        self.unacked = []
        self.pending = None


cdef class Hold:
    """A /meta/connect waiting for an event or its deadline."""

    cdef public Session session
    cdef public object exchange
    cdef public object message_id
    cdef public double deadline
    # The browser whose held-connect quota this hold uses (HTTP only).
    cdef public str counted_browser
    # Whether the reply carries full advice (client sent advice, first hold...).
    cdef public bint advise
    # The connect request, kept only while extensions need it for the reply.
    cdef public dict request

    def __init__(self, Session session, exchange, message_id, double deadline, bint advise):
        self.session = session
        self.exchange = exchange
        self.message_id = message_id
        self.deadline = deadline
        self.counted_browser = None
        self.advise = advise
        self.request = None


cdef class Session:
    """Server-side state of one client (one clientId).

    The scheduling fields (the held connect, the wheel entries and deadlines)
    are readonly from Python: only the compiled core moves them, together
    with the timer wheels that point at them.
    """

    cdef public str id
    cdef public str browser_id
    cdef public str transport
    # Encoded messages waiting for delivery; None while empty (the common,
    # idle case) so an idle session carries no list.
    cdef public list queue
    cdef public Py_ssize_t queued_bytes  # their total size (bounded: max_queue_bytes)
    cdef public set subscriptions
    cdef readonly Hold hold
    # The hold wheel's slot of its one entry there (-1: none); it may come
    # before its hold's deadline, never after.
    cdef readonly Py_ssize_t hold_entry
    cdef readonly double expires_at
    cdef readonly Py_ssize_t expiry_slot
    cdef public bint connected
    cdef public bint removed
    cdef readonly bint flush_pending
    # True after temporary advice (multiple-clients): the next connect
    # reply carries the normal advice again (as CometD does).
    cdef public bint advice_dirty
    cdef public Py_ssize_t dropped
    # Where its events are written as soon as they are queued (a WebSocket
    # connection: engine.protocol.session.EventSink), if any; else they wait for a
    # connect reply.
    cdef public object sink
    # This session's own extensions (rare; None keeps idle sessions small).
    cdef public list extensions
    # For in-process (local) sessions: called with each encoded delivery.
    cdef public object local
    # Application data about the session (e.g. the authenticated user).
    cdef public dict attributes
    cdef public AckState ack  # acknowledge extension, when negotiated
    cdef readonly double lazy_due  # when queued lazy messages must leave at the latest
    cdef public list bucket  # publish rate limit: [tokens, at]
    # The client address of its handshake (per-address limits, logs).
    cdef public str address
    # Made on a WebSocket whose client keeps no cookies (CometD's Node
    # client): another such socket may resume it once its own is dead.
    cdef public bint resumable

    def __init__(self, str client_id, str browser_id, str transport):
        self.id = client_id
        self.browser_id = browser_id
        self.transport = transport
        self.hold_entry = -1
        self.expiry_slot = -1

    cpdef list take_queue(self):
        queue = self.queue
        self.queue = None
        self.queued_bytes = 0
        return queue if queue is not None else []

    cpdef list take_batch(self, Py_ssize_t max_bytes):
        """The oldest queued messages that fit in `max_bytes` (at least one,
        when `max_bytes` > 0); the rest stays queued for the next reply."""
        cdef list queue = self.queue
        cdef Py_ssize_t n, i = 0, size = 0, item
        if queue is None or max_bytes <= 0:
            return []
        if self.queued_bytes <= max_bytes:
            return self.take_queue()
        n = len(queue)
        while i < n:
            item = len(<bytes>queue[i])
            if i > 0 and size + item > max_bytes:
                break
            size += item
            i += 1
        batch = queue[:i]
        del queue[:i]
        self.queued_bytes -= size
        return batch

    def __repr__(self):
        return f"<Session {self.id} {self.transport}{' removed' if self.removed else ''}>"


cdef class TimerWheel:
    """Entries in slots of `resolution` seconds; one periodic tick takes every
    slot whose time has passed.

    Entries are never removed early; an entry that no longer applies (its
    connect was answered, its session was touched again) is recognised as
    stale by the caller when its slot comes due.
    """

    cdef public double resolution
    cdef public dict slots
    cdef public Py_ssize_t next_slot

    def __init__(self, double resolution, double now):
        self.resolution = resolution
        self.slots = {}
        self.next_slot = <Py_ssize_t>(now / resolution)

    cdef Py_ssize_t deadline_slot(self, double when) except? -1:
        """The slot whose time is the first at or after `when`, passed or not."""
        if not isfinite(when):
            raise OverflowError(f"no slot for {when}")
        return <Py_ssize_t>ceil(when / self.resolution)

    cpdef Py_ssize_t slot_of(self, double when) except? -1:
        """The first slot that comes due at or after `when` (never early)."""
        cdef Py_ssize_t slot = self.deadline_slot(when)
        return slot if slot >= self.next_slot else self.next_slot

    cpdef Py_ssize_t add(self, double when, item) except? -1:
        cdef Py_ssize_t slot = self.slot_of(when)
        self.add_to_slot(slot, item)
        return slot

    cpdef add_to_slot(self, Py_ssize_t slot, item):
        bucket = self.slots.get(slot)
        if bucket is None:
            self.slots[slot] = [item]
        else:
            (<list>bucket).append(item)

    def due(self, double now):
        """Pop and yield every entry whose slot time is <= now, oldest first."""
        cdef Py_ssize_t last = <Py_ssize_t>(now / self.resolution)
        while self.next_slot <= last:
            bucket = self.slots.pop(self.next_slot, None)
            self.next_slot += 1
            if bucket:
                yield from bucket

    def next_due(self):
        """When the next slot comes due: the time to schedule the tick for."""
        return self.next_slot * self.resolution

    def __len__(self):
        return sum(len(b) for b in self.slots.values())


cpdef bint valid_id(value):
    """A usable message id: a JSON string of at most MAX_ID_LENGTH characters
    or a number (CometD's JS client sends decimal counters, other clients
    UUIDs or hashes; the Bayeux spec only asks for a string)."""
    if type(value) is str:
        return len(<str>value) <= MAX_ID_LENGTH
    return type(value) is int or type(value) is float


cdef dict failure(dict message, str error, advice):
    """A failure reply: the request's channel and id when usable, and advice."""
    reply = {"successful": False, "error": error}
    channel = message.get("channel")
    if type(channel) is str:
        reply["channel"] = channel
    message_id = message.get("id")
    if message_id is not None and valid_id(message_id):
        reply["id"] = message_id
    if advice is not None:
        reply["advice"] = advice
    return reply


cdef list encode_replies(list replies):
    """Encode replies; one that cannot be encoded (data nested deeper than
    orjson's limit, say, echoed by an extension) becomes a failure."""
    try:
        return encode_all(replies)
    except _JSONEncodeError:
        pass
    cdef list parts = []
    for reply in replies:
        parts.append(encode_reply(<dict>reply))
    return parts


cpdef bytes encode_reply(dict reply):
    try:
        return encode_message(reply)
    except _JSONEncodeError:
        limit_log.warning("reply_not_json", "a reply could not be encoded as JSON; failed instead")
        return encode_message(failure(reply, errors.MESSAGE_INVALID, None))


cdef class SessionCore:
    """The hot half of the Bayeux core (see the module docstring)."""

    cdef public object options
    cdef public object loop
    cdef public object stats
    cdef public object hooks
    cdef public dict sessions
    # Held long-polls per BAYEUX_BROWSER id (multiple-clients); zero entries removed.
    cdef public dict browsers
    cdef public bint draining
    cdef public TimerWheel holds  # sessions, in the slot of their hold's deadline
    cdef public TimerWheel expiry
    cdef public TimerWheel lazy
    # Called after each delivery flush: transports that batch their writes.
    cdef public list write_flushers
    cdef public Py_ssize_t session_extensions  # sessions with extensions of their own
    cdef public double timeout_s
    cdef public double timeout_jitter
    cdef public double lazy_timeout_s
    cdef public double max_interval_s
    cdef public double after_reply_s
    cdef public dict advice
    cdef object time  # the loop's clock
    cdef list dirty  # sessions with queued messages, until the next flush
    cdef bint flush_scheduled
    cdef Py_ssize_t max_queue
    cdef Py_ssize_t max_queue_bytes
    # Bytes of queued events one reply or frame carries at most; the rest
    # waits for the next (max_pending_output).
    cdef public Py_ssize_t max_batch_bytes
    cdef bint deliver_only  # meta_connect_deliver_only
    cdef Py_ssize_t max_sessions_per_browser
    # CometD's trustClientSession: a clientId alone is enough, whatever the
    # browser cookie (for clients that keep no cookies; see lookup()).
    cdef public bint trust_client_session
    # Addresses already named in the log for not returning the cookie.
    cdef set cookieless_named
    # Failure streaks per client address (engine.protocol.limits.FailureStreaks):
    # a client that fails the same way on new connections is slowed too.
    cdef public object streaks
    # Running totals for /metrics and the status (read at scrape time, so a
    # scrape never walks the sessions): messages in session queues, held
    # connects, and sessions per transport (kept by BayeuxCore).
    cdef public Py_ssize_t queued_total
    cdef public Py_ssize_t held_total
    cdef public dict by_transport
    # Publish-to-write latency (engine.metrics): when the batch being
    # processed arrived (perf_counter; 0 outside processing), and when the
    # oldest delivery waiting for the next flush was made.
    cdef public double arrived
    cdef double flush_origin
    cdef public object publish_to_write  # a Histogram, observed once per flush

    def __init__(self, options, loop, stats, hooks, double hold_resolution, double expiry_resolution):
        self.options = options
        self.loop = loop
        self.time = loop.time
        self.stats = stats
        self.hooks = hooks
        self.sessions = {}
        self.browsers = {}
        self.draining = False
        now = loop.time()
        self.holds = TimerWheel(hold_resolution, now)
        self.expiry = TimerWheel(expiry_resolution, now)
        self.lazy = TimerWheel(hold_resolution, now)
        self.write_flushers = []
        self.session_extensions = 0
        self.dirty = []
        self.flush_scheduled = False
        o = options
        self.timeout_s = o.timeout / 1000.0
        self.timeout_jitter = o.timeout_jitter
        self.lazy_timeout_s = o.max_lazy_timeout / 1000.0
        self.max_interval_s = o.max_interval / 1000.0
        self.after_reply_s = (o.interval + o.max_interval) / 1000.0
        self.advice = {"reconnect": "retry", "interval": o.interval, "timeout": o.timeout}
        self.max_queue = o.max_queue
        self.max_queue_bytes = o.max_queue_bytes
        self.max_batch_bytes = o.max_pending_output
        self.trust_client_session = o.trust_client_session
        self.cookieless_named = set()
        self.streaks = None
        self.queued_total = 0
        self.held_total = 0
        self.by_transport = {}
        self.arrived = 0.0
        self.flush_origin = 0.0
        self.publish_to_write = None
        self.deliver_only = o.meta_connect_deliver_only
        self.max_sessions_per_browser = o.max_sessions_per_browser

    @property
    def extensions_active(self):
        return self.extensions_on()

    cdef bint extensions_on(self):
        return bool(self.hooks.extensions) or self.session_extensions > 0

    def _failure(self, dict message, str error, advice=True):
        """A failure reply with the server's normal advice (or `advice`).

        Every failure carries advice: the CometD JS client replaces its
        advice with the one of any message that has some, so the normal
        `retry` advice keeps it on course, where handshake advice on
        anything but a connect would make it throw (see _unknown_session).
        """
        return failure(message, error, self.advice if advice is True else advice)

    # -------------------------------------------------------------- sessions

    cpdef _expire_at(self, Session session, double when):
        session.expires_at = when
        cdef Py_ssize_t slot = self.expiry.slot_of(when)
        if slot != session.expiry_slot:
            self.expiry.add_to_slot(slot, session)
            session.expiry_slot = slot

    cpdef _touch(self, Session session):
        """Any message other than a held connect keeps the session alive."""
        cdef double when
        if session.hold is None:
            when = self.time() + self.max_interval_s
            if when > session.expires_at:
                self._expire_at(session, when)

    cpdef Session lookup(self, dict message, exchange):
        client_id = message.get("clientId")
        if type(client_id) is not str:
            return None
        session = self.sessions.get(client_id)
        if session is None:
            return None
        cdef Session found = <Session>session
        # A session is bound to the browser it was created under: its
        # BAYEUX_BROWSER cookie over HTTP, the WebSocket connection's cookie
        # (or the one issued with the upgrade) over WebSocket.  A stolen
        # clientId presented by another browser or connection is unknown.
        browser = found.browser_id
        if browser is not None and exchange.browser_id != browser and not self.trust_client_session:
            if not found.resumable:
                self._browser_mismatch(found, exchange)
                return None
            if not self._resume(found, message, exchange):
                self.stats.browser_mismatch += 1
                return None
        exchange.bind(found)
        return found

    cdef _browser_mismatch(self, Session session, exchange):
        self.stats.browser_mismatch += 1
        if exchange.browser_id is not None:
            return  # another browser's cookie: a stolen or stale clientId
        # No cookie at all: most often a client whose cookie jar drops the
        # cookie (aiohttp's at an IP-address host, node-fetch): named once.
        self.stats.cookieless_requests += 1
        address = getattr(exchange, "client_address", None)
        key = address if address is not None else "?"
        if key in self.cookieless_named or len(self.cookieless_named) >= 10000:
            return
        self.cookieless_named.add(key)
        log.warning(
            "client %s (session %s, %s) does not send back the BAYEUX_BROWSER cookie: "
            "its session cannot be authenticated and it is told 402::session_unknown. "
            "Use a client that keeps cookies (with aiohttp, a host name rather than an IP "
            "address), or accept clientIds without the cookie with --trust-client-session "
            "(anyone who learns a clientId can then use that session)",
            key,
            session.id,
            exchange.transport,
        )

    # -------------------------------------------------------------- delivery

    cpdef deliver(self, Session session, bytes encoded, bint lazy=False):
        """Queue one encoded message for a session; wake its held connect soon.

        A lazy message (CometD's lazy channels) wakes nothing: it leaves with
        the next connect reply or frame, or after max_lazy_timeout at most.
        """
        if session.extensions:
            # The one case that re-encodes: this session's own extensions.
            changed = self._extend_delivery(session, encoded)
            if changed is None:
                return
            encoded = changed
        if session.local is not None:
            self.stats.delivered += 1
            session.local(encoded)
            return
        cdef list queue = session.queue
        cdef Py_ssize_t size = len(encoded)
        self.queued_total += 1
        if queue is None:
            session.queue = [encoded]
            session.queued_bytes = size
        else:
            queue.append(encoded)
            session.queued_bytes += size
            if len(queue) > self.max_queue or session.queued_bytes > self.max_queue_bytes:
                self._drop_oldest(session, queue)
        self.stats.delivered += 1
        if lazy:
            if not session.lazy_due and (session.hold is not None or session.sink is not None):
                session.lazy_due = self.time() + self.lazy_timeout_s
                self.lazy.add(session.lazy_due, session)
            return
        if (session.hold is not None or session.sink is not None) and not session.flush_pending:
            # Not now: a request being processed may still take the queue
            # into its own response (piggy-backing), and several publishes in
            # one loop turn should leave in one response or frame.
            session.flush_pending = True
            self.dirty.append(session)
            if not self.flush_scheduled:
                self.flush_scheduled = True
                self.flush_origin = self.arrived if self.arrived else _perf_counter()
                self.loop.call_soon(self._flush)

    cdef _drop_oldest(self, Session session, list queue):
        """A full queue (in messages or bytes) loses its oldest messages; the
        newest one always stays."""
        cdef Py_ssize_t n = 0, size = 0
        while len(queue) - n > 1 and (
            len(queue) - n > self.max_queue or session.queued_bytes - size > self.max_queue_bytes
        ):
            size += len(<bytes>queue[n])
            n += 1
        del queue[:n]
        session.queued_bytes -= size
        self.queued_total -= n
        session.dropped += n
        self.stats.dropped_queue_full += n
        limit_log.warning(
            "queue_full",
            "session %s: queue full (max_queue=%d messages, max_queue_bytes=%d): "
            "%d oldest message(s) dropped, %d in all for this session",
            session.id,
            self.max_queue,
            self.max_queue_bytes,
            n,
            session.dropped,
        )

    def _flush(self):
        self.flush_scheduled = False
        dirty = self.dirty
        self.dirty = []
        self._send_queued(dirty)
        # The responses released here leave now: a flush the transports
        # schedule from here would wait for the next poll of every socket.
        for flush in self.write_flushers:
            flush()
        if self.publish_to_write is not None:
            self.publish_to_write.observe(_perf_counter() - self.flush_origin)

    cpdef _send_queued(self, list sessions):
        cdef Session session
        cdef bint direct = not self.deliver_only
        for session in sessions:
            session.flush_pending = False
            session.lazy_due = 0.0
            if not session.queue:
                continue
            sink = session.sink
            if sink is not None and direct and session.ack is None:
                # WebSocket: events go out at once; the held connect stays a
                # heartbeat until its timeout (CometD's WebSocket transport).
                sink.write_events(session)
            elif session.hold is not None:
                self._release(session.hold, None)

    cpdef list take(self, Session session, Py_ssize_t max_bytes):
        """Session.take_batch, kept in the running total of queued messages
        (every reply and frame takes its events through here)."""
        cdef list batch = session.take_batch(max_bytes)
        self.queued_total -= len(batch)
        return batch

    cpdef requeue(self, Session session, list queue, Py_ssize_t size):
        """Replace a session's queue (events put back ahead of it)."""
        self.queued_total += len(queue) - (len(session.queue) if session.queue else 0)
        session.queue = queue
        session.queued_bytes = size

    cpdef discard_queue(self, Session session):
        """Drop a session's queue (it went away); returns how many were in it."""
        cdef Py_ssize_t n = len(session.queue) if session.queue else 0
        self.queued_total -= n
        session.queue = None
        session.queued_bytes = 0
        return n

    # ---------------------------------------------------------- held connects

    cdef Py_ssize_t _room(self, exchange):
        """Bytes of queued events the reply on `exchange` may carry: a bounded
        batch, less what a WebSocket has not written yet (nothing while its
        peer does not read)."""
        if exchange.transport == "websocket":
            return exchange.room()
        return self.max_batch_bytes

    cdef list _ack_batch(self, Session session, dict reply, Py_ssize_t room):
        """Acknowledge extension: number this connect reply's batch and
        return every event not yet acknowledged, oldest first."""
        cdef AckState ack = session.ack
        cdef Py_ssize_t batch = ack.batch, excess
        if session.queue:
            ack.unacked.extend([(batch, event) for event in self.take(session, room)])
            excess = len(ack.unacked) - self.max_queue
            if excess > 0:
                del ack.unacked[:excess]
                session.dropped += excess
                self.stats.dropped_queue_full += excess
                limit_log.warning(
                    "unacked_full",
                    "session %s: %d unacknowledged message(s) dropped (max_queue=%d)",
                    session.id,
                    excess,
                    self.max_queue,
                )
        ext = reply.get("ext")
        if type(ext) is not dict:
            ext = reply["ext"] = {}
        ext["ack"] = batch
        ack.batch = batch + 1
        return [event for _, event in ack.unacked]

    cpdef Session _unhold(self, Hold hold):
        cdef Session session = hold.session
        session.hold = None
        hold.exchange.hold = None
        self.held_total -= 1
        browser = hold.counted_browser
        if browser is not None:
            left = self.browsers.get(browser, 1) - 1
            if left > 0:
                self.browsers[browser] = left
            else:
                self.browsers.pop(browser, None)
        if not session.removed:
            self._expire_at(session, self.time() + self.after_reply_s)
        return session

    cpdef _release(self, Hold hold, dict advice):
        """Answer a held connect: the queued events, then the connect reply."""
        cdef Session session = self._unhold(hold)
        session.lazy_due = 0.0
        if advice is None and hold.advise:
            advice = self.advice
        reply = {"channel": META_CONNECT, "successful": True}
        if hold.message_id is not None:
            reply["id"] = hold.message_id
        if advice is not None:
            reply["advice"] = advice
        cdef Py_ssize_t room = self._room(hold.exchange)
        cdef list parts = (
            self._ack_batch(session, reply, room) if session.ack is not None
            else self.take(session, room)
        )
        if hold.request is None or self._extend_reply(session, reply, hold.request):
            parts.append(encode_reply(reply))
        hold.exchange.send(parts)

    cpdef release_due_holds(self, double now):
        """Answer every held connect whose deadline has passed (the tick).

        A session's entry may be earlier than its current hold (held again
        since): the entry then moves to the hold's slot.  An entry that is
        not the session's latest is stale and dropped.
        """
        cdef TimerWheel wheel = self.holds
        cdef Py_ssize_t slot, due, last = <Py_ssize_t>(now / wheel.resolution)
        cdef Session session
        while wheel.next_slot <= last:
            slot = wheel.next_slot
            wheel.next_slot += 1
            bucket = wheel.slots.pop(slot, None)
            if bucket is None:
                continue
            for session in bucket:
                if session.hold_entry != slot:
                    continue
                session.hold_entry = -1
                if session.hold is None:
                    continue
                due = wheel.deadline_slot(session.hold.deadline)
                if due <= slot:
                    self._release(session.hold, None)
                else:
                    wheel.add_to_slot(due, session)
                    session.hold_entry = due

    # ------------------------------------------- the Python subclass's part
    # The protocol steps engine.protocol.core.BayeuxCore implements in Python (rare
    # paths, policy, extensions).  Declared here, with the stub's types in
    # engine/protocol/_sessions.pyi, so a rename is a type error, not a crash.

    def _answer_handshake(self, message, exchange):
        raise NotImplementedError

    def _subscribe(self, message, exchange):
        raise NotImplementedError

    def _unsubscribe(self, message, exchange):
        raise NotImplementedError

    def _disconnect(self, message, exchange):
        raise NotImplementedError

    def _publish(self, message, exchange, channel):
        raise NotImplementedError

    def _unknown_session(self, message, meta, exchange=None):
        raise NotImplementedError

    def _multiple_clients(self, session, message):
        raise NotImplementedError

    def _supersede(self, hold):
        raise NotImplementedError

    def _resume(self, session, message, exchange):
        raise NotImplementedError

    def _refused_by_extension(self, message):
        raise NotImplementedError

    def _extend_reply(self, session, reply, request):
        raise NotImplementedError

    def _extend_delivery(self, session, encoded):
        raise NotImplementedError

    # ------------------------------------------------------------ processing

    cpdef _process_now(self, list messages, exchange):
        stats = self.stats
        stats.messages_in += len(messages)
        cdef bint extensions = self.extensions_on()
        if len(messages) == 1 and not extensions:
            # The common request (a lone connect, publish or subscribe): the
            # general path below, without its per-batch bookkeeping.
            message = messages[0]
            if type(message) is dict and (<dict>message).get("channel") != META_HANDSHAKE:
                reply = self._dispatch(<dict>message, exchange, True)
                if reply is not None:  # (None: a held connect, answered later)
                    client_id = (<dict>message).get("clientId")
                    session = self.sessions.get(client_id) if type(client_id) is str else None
                    if session is not None and (
                        (<Session>session).queue or (<Session>session).ack is not None
                    ):
                        parts = self._events_for(
                            session, exchange, reply.get("channel") == META_CONNECT
                        )
                    else:
                        parts = []
                    parts.append(encode_reply(reply))
                    exchange.send(parts)
                return
        for message in messages:
            if type(message) is dict and (<dict>message).get("channel") == META_HANDSHAKE:
                if len(messages) > 1:
                    # A handshake ignores the rest of its batch (as CometD's server does).
                    stats.dropped_with_handshake += len(messages) - 1
                    log.debug("dropped %d message(s) batched with a handshake", len(messages) - 1)
                self._answer_handshake(message, exchange)
                return

        cdef bint alone = len(messages) == 1
        cdef list replies = []
        cdef list requests = []
        cdef Session owner = None
        cdef bint with_connect = False
        for message in messages:
            if type(message) is not dict:
                replies.append(self._failure({}, errors.MESSAGE_INVALID))
                requests.append({})
                continue
            reply = self._refused_by_extension(message) if extensions else None
            if reply is None:
                reply = self._dispatch(<dict>message, exchange, alone)
                if reply is None:  # a held connect: answered later
                    return
            replies.append(reply)
            requests.append(message)
            if owner is None:
                client_id = (<dict>message).get("clientId")
                if type(client_id) is str:
                    owner = self.sessions.get(client_id)
            if reply.get("channel") == META_CONNECT:
                with_connect = True

        parts = self._events_for(owner, exchange, with_connect)
        if extensions:
            replies = [
                reply
                for reply, request in zip(replies, requests, strict=True)
                if self._extend_reply(owner, reply, request)
            ]
        parts.extend(encode_replies(replies))
        exchange.send(parts)

    cdef list _events_for(self, Session owner, exchange, bint with_connect):
        """The queued events that go out with this response, taken from the queue."""
        if owner is not None:
            if owner.ack is not None:
                # Only connect replies carry events, numbered (ack extension).
                if owner.ack.pending is not None:
                    parts = owner.ack.pending
                    owner.ack.pending = None
                    return parts
            elif owner.queue and self._may_piggyback(exchange, with_connect):
                return self.take(owner, self._room(exchange))
        return []

    cdef bint _may_piggyback(self, exchange, bint with_connect):
        """May this response carry the session's queued events (7.2, 7.3, 8)?

        A connect reply always may.  Other replies may on long-polling and
        WebSocket, but not on callback-polling (scripts run in order, so the
        held connect must be woken instead) nor with meta_connect_deliver_only.
        """
        if with_connect:
            return True
        if self.deliver_only:
            return False
        return exchange.transport != "callback-polling"

    cdef dict _dispatch(self, dict message, exchange, bint alone):
        channel = message.get("channel")
        message_id = message.get("id")
        if message_id is not None and not valid_id(message_id):
            return failure(message, errors.MESSAGE_ID_INVALID, self.advice)
        if channel is None:
            return failure(message, errors.CHANNEL_MISSING, self.advice)
        if type(channel) is not str:
            return failure(message, errors.CHANNEL_INVALID, self.advice)
        if channel == META_CONNECT:
            return self._connect(message, exchange, alone)
        if channel == META_SUBSCRIBE:
            return self._subscribe(message, exchange)
        if channel == META_UNSUBSCRIBE:
            return self._unsubscribe(message, exchange)
        if channel == META_DISCONNECT:
            return self._disconnect(message, exchange)
        return self._publish(message, exchange, channel)

    # --------------------------------------------------------------- connect

    cdef dict _connect(self, dict message, exchange, bint alone):
        cdef Session session = self.lookup(message, exchange)
        if session is None:
            return self._unknown_session(message, True, exchange)
        self.stats.connects += 1
        limits = exchange.limits
        if limits is not None and limits.streak:
            limits.succeeded()  # back to no back-off (see _unknown_session)
        if self.streaks:
            self.streaks.succeeded(exchange.client_address)
        cdef bint first = not session.connected
        session.connected = True
        transport = exchange.transport
        if session.transport != transport:
            counts = self.by_transport
            counts[session.transport] = counts.get(session.transport, 1) - 1
            counts[transport] = counts.get(transport, 0) + 1
            session.transport = transport
        if session.hold is not None:
            self._supersede(session.hold)

        cdef double timeout = self.timeout_s
        client_advice = message.get("advice")
        cdef bint advised = type(client_advice) is dict
        if advised:
            wanted = (<dict>client_advice).get("timeout")
            if (type(wanted) is int or type(wanted) is float) and wanted >= 0:
                timeout = min(wanted / 1000.0, self.timeout_s)
        cdef bint advise = first or advised or session.advice_dirty
        session.advice_dirty = False
        cdef bint resend = session.ack is not None and self._acknowledge(session, message)

        # Answer at once instead of holding (Bayeux /meta/connect rules).
        if first or timeout <= 0 or session.queue or not alone or self.draining or resend:
            self._expire_at(session, self.time() + self.after_reply_s)
            return self._connect_now(session, message, advise, self._room(exchange))

        browser = session.browser_id if exchange.transport in HTTP_TRANSPORTS else None
        cdef Py_ssize_t limit = self.max_sessions_per_browser
        if browser is not None and limit >= 0 and self.browsers.get(browser, 0) >= limit:
            return self._multiple_clients(session, message)

        # Clients that connected together (a ramp, a reconnect storm after a
        # restart) would otherwise send their heartbeats together forever.
        timeout *= 1.0 - self.timeout_jitter * _random()
        cdef Hold hold = Hold(session, exchange, message.get("id"), self.time() + timeout, advise)
        if self.extensions_on():
            hold.request = message  # for the outgoing extensions of its reply
        if browser is not None:
            self.browsers[browser] = self.browsers.get(browser, 0) + 1
            hold.counted_browser = browser
        session.hold = hold
        exchange.hold = hold
        self.held_total += 1
        session.expires_at = NEVER  # never expires while held
        # The wheel holds the session, once, not the hold: answered holds
        # waiting there for their deadline were most of the heap (and of the
        # garbage collector's work) at high connect rates.
        cdef Py_ssize_t slot = self.holds.slot_of(hold.deadline)
        if session.hold_entry < 0 or session.hold_entry > slot:
            self.holds.add_to_slot(slot, session)
            session.hold_entry = slot
        return None

    cdef dict _connect_now(self, Session session, dict message, bint advise, Py_ssize_t room):
        reply = {"channel": META_CONNECT, "successful": True}
        message_id = message.get("id")
        if message_id is not None:
            reply["id"] = message_id
        if advise:
            reply["advice"] = self.advice
        if session.ack is not None:
            session.ack.pending = self._ack_batch(session, reply, room)
        return reply

    cdef bint _acknowledge(self, Session session, dict message):
        """Drop the events the client confirmed (`ext.ack`: the last batch it got).

        True when sent events remain unconfirmed: they were lost, so this
        connect is answered at once to send them again.
        """
        cdef AckState ack = session.ack
        ext = message.get("ext")
        confirmed = (<dict>ext).get("ack") if type(ext) is dict else None
        if type(confirmed) is int:
            ack.unacked = [(b, e) for b, e in ack.unacked if b > confirmed]
        return bool(ack.unacked) and ack.unacked[0][0] < ack.batch
