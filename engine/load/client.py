#!/usr/bin/env python3
"""Load generator: one uvloop process holding many Bayeux clients.

Each simulated client is its own browser: its own TCP connection (HTTP/1.1
keep-alive, or a WebSocket with ``--transport websocket``, bound to a
127.0.0.x source address with IP_BIND_ADDRESS_NO_PORT set before ``bind``),
its own ``BAYEUX_BROWSER`` cookie, its own session. It behaves on the wire like
the CometD JavaScript client over long-polling:

    POST <base>/handshake  [{"channel":"/meta/handshake", ...,"id":"1"}]
    POST <base>/           [{"channel":"/meta/subscribe","subscription":CH, ...}]
    POST <base>/connect    [{"channel":"/meta/connect", ...,"advice":{"timeout":0}}]
    POST <base>/connect    [{"channel":"/meta/connect", ...}]   (held, repeated)

and honours advice the way that client does: advice in any reply replaces the
current one (missing fields fall back to timeout 60000 / interval 0);
``reconnect: "retry"`` -> next connect after ``interval``; ``"handshake"`` ->
new handshake (and subscribe again); ``"none"`` -> stop. A failed connect or a
broken connection retries after ``interval`` plus a back-off growing by
``--backoff-ms`` per failure, with ``advice: {timeout: 0}`` on the first
connect after a failure. A request with no answer within 10 s (connect:
``advice.timeout`` + 10 s) counts as failed.

Per-client state is two ``__slots__`` objects (the session logic and the
connection) plus uvloop's transport and an httptools parser: a few KB, and no
coroutine or timer per idle client. Time-outs are found by one sweep a second,
which first lets the loop read what already arrived (a generator sharing two
cores with thirty processes may wake late; a reply sitting in a socket buffer
is not a time-out) and records how late it woke (``loop_lag_max_ms``).

Connections are opened with a non-blocking ``connect()`` done here (uvloop's
``sock_connect`` would resolve the numeric address with ``getaddrinfo`` in
libuv's thread pool: a thread hand-off per connection); over loopback the
handshake is usually complete when ``connect()`` returns. Frame masks and
upgrade keys come from ``os.urandom`` fetched 64 KiB at a time.

TLS: with an ``https://`` or ``wss://`` URL the connected socket (bound and
connected as above) is handed to ``loop.create_connection(sock=...,
ssl=context, server_hostname=<the URL's host>)``: uvloop's TLS transport, the
handshake bounded by ``--connect-timeout``; the context verifies the server's
certificate against ``--ca-file`` (the system's CAs without it) and its
hostname. The connection's protocol is told ``connection_made`` once the TLS
handshake is done, so the session logic is unchanged. uvloop's TLS transport
reads the socket itself, without the kernel's receive stamps: over TLS a
fan-out delivery is timed when its decrypted bytes reach the connection
(``latency_at: "read"`` in the reports) instead of at its arrival in the
socket.

Heartbeat lateness: every held ``/meta/connect`` answered successfully with
no events adds (reply time - send time - the advised timeout it was sent
with) to the process's signed histogram ``lateness``. Negative values are
connects answered early (the engine ends held connects up to
``--timeout-jitter``, 10 %, early on purpose).

Histograms (``engine/load/histogram.py``, HdrHistogram): one per measured
thing and process, nothing per client: ``setup`` (a client's start to its
first successful connect), ``lateness``, and with a hot channel ``fanout`` and
``fanout_read``. Every stats line carries under ``"hist"`` the values recorded
since the previous line, the final and every tagged line under
``"hist_total"`` those of the whole run (the field names are defined there).
Fan-out latencies are appended to an ``array`` in the hot path and recorded
into their histograms at the next stats line (one update per distinct µs
value). ``setup`` and ``lateness`` are timed with the event loop's clock
(uvloop's: 1 ms steps), fan-out with ``time.monotonic_ns()`` and the kernel's
stamps.

Over WebSocket (``--transport websocket``) the same messages travel as masked
text frames on one socket to the endpoint (``GET <base>`` with ``Upgrade:
websocket``), the handshake offering ``supportedConnectionTypes:
["websocket"]``, exactly the JS client's sequence: first connect with
``advice: {timeout: 0}``, then every connect reply answered by the next connect
after ``interval``; ``reconnect: "handshake"`` re-handshakes on the same socket.
A socket the server closes is reopened by the next request.

The session logic (``BayeuxClient``) talks to its connection only through
``Connection.send(kind, body)`` and the callbacks ``on_open``,
``on_messages``, ``on_failure`` and ``on_closed``. ``LongPollingConnection``
frames each exchange as an HTTP request/response; ``WebSocketConnection``
implements the same contract with frames (``complete=False``, since replies
and events arrive on their own). ``CONNECTIONS`` maps ``--transport`` to them.

Fan-out measurements (``bench/fanout.py``): with ``--hot-channel CH
--hot-clients K --total-clients N``, K of the N global client indexes, evenly
spread, subscribe to CH instead of ``--channel``; every event on CH whose
``data.t`` is a ``time.monotonic_ns()`` stamp (CLOCK_MONOTONIC, shared by all
processes of the machine) adds its latency to the histogram ``fanout``: the
time its data arrived in the client's socket (the kernel's receive time, see
``stamped.py``; over TLS when this process read it, ``latency_at: "read"``)
minus ``t``. ``fanout_read`` gets the same events timed when this process
read them, which adds the queue of replies that waited while it served the
clients ahead of them.

Control and reports (for ``bench/idle.py``; the tool also runs alone):

- stdout: one JSON object per line: ``{"type": "stats", ...counters...}``
  every ``--report-interval`` seconds, on request, and a last one with
  ``"final": true``.
- stdin (when it is a pipe): ``report TAG`` -> a stats line carrying ``"tag"``;
  ``churn-window`` -> the churn latencies start anew (the end of a warm-up);
  ``stop`` or end of file -> close every connection, final report, exit.
- SIGTERM/SIGINT stop the same way; ``--max-seconds`` bounds the whole run.

``--channel-count K`` with ``{k}`` in ``--channel``: client i subscribes to
the channel with ``{k}`` = i mod K (one string per channel, shared).

Counters: ``connected`` (clients whose last connect succeeded, a gauge),
``ever_connected``, ``failed`` (failure events before a client first
connected), ``dropped`` (a connected client whose connection broke, whose
connect was unsuccessful or timed out, or that was told to re-handshake or
stop), ``gave_up`` (clients that stopped after ``--max-attempts`` failures in a
row or on ``reconnect: "none"``), ``cycles`` (held connects completed),
``heartbeats`` (those without events: the lateness samples), ``messages``
(events received), ``timeouts_spared`` (sweep candidates whose reply was
already in), ``loop_lags`` (sweeps more than 100 ms late).

Churn (``--churn``, the churn scenario's storms): each client loops
handshake, subscribe, first connect, ``/meta/disconnect`` (POST
``<base>/disconnect``), connection closed, ``--churn-pause-ms``; the report's
``churn`` object counts the cycles and carries the handshake, handshake ->
first connect and drop -> reconnect latencies (see the "churn and restart"
section).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import errno
import gc
import os
import random
import resource
import signal
import socket
import ssl
import stat
import sys
import time
from array import array
from typing import Any
from urllib.parse import urlsplit

import httptools
import orjson
import uvloop

from engine.load.histogram import NAMES, Histogram, Latency, SignedLatency, fold, new_histogram
from engine.load.procs import read_rss_bytes
from engine.load.stamped import Clock, StampedTransport
from engine.load.wsframes import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameError,
    check_upgrade_response,
    split_frames,
    upgrade_request,
)
from engine.transport._wsframe import encode_client_frame as _encode_client_frame

__all__ = [
    "BayeuxClient",
    "Connection",
    "LongPollingConnection",
    "CONNECTIONS",
    "LoadGenerator",
    "Stats",
    "main",
]

#: Linux: let connect() pick the port, so bind() does not reserve one per address.
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
#: At most this many fan-out values in a plain stats line's live sample.
LIVE_SAMPLE = 4096
#: Fan-out values kept unrecorded at the most (8 bytes each, two arrays).
PENDING_MAX = 2_000_000
SOCK_NONBLOCK = getattr(socket, "SOCK_NONBLOCK", 0o4000)

# What a client is waiting for (the kind of the request in flight).
HANDSHAKE, SUBSCRIBE, CONNECT, DISCONNECT = 0, 1, 2, 3  # DISCONNECT: --churn only
KIND_NAMES = ("handshake", "subscribe", "connect", "disconnect")

# Client life cycle.
NEW, ACTIVE, STOPPED = 0, 1, 2

#: JS client defaults when a reply's advice lacks a field.
DEFAULT_TIMEOUT_MS = 60000
DEFAULT_INTERVAL_MS = 0

#: Sweep wake-ups later than this (ms) count as event-loop lag events.
LAG_EVENT_MS = 100.0


class Stats:
    """Counters of one generator process (plain ints: cheap to bump)."""

    # Every counter is a plain int attribute; COUNTERS lists them for reports.
    started: int
    connected: int
    ever_connected: int
    failed: int
    dropped: int
    gave_up: int
    recovered: int
    handshakes: int
    handshake_failures: int
    rehandshakes: int
    subscribes: int
    subscribe_failures: int
    connects_immediate: int
    cycles: int
    connect_failures: int
    early_returns: int
    multiple_clients: int
    server_disconnects: int
    messages: int
    requests: int
    responses: int
    tcp_opens: int
    tcp_errors: int
    timeouts: int
    closed_in_flight: int
    closed_idle: int
    server_close: int
    http_errors: int
    bad_responses: int
    bytes_sent: int
    bytes_received: int
    hot_clients: int
    hot_messages: int
    hot_out_of_order: int
    heartbeats: int
    timeouts_spared: int
    loop_lags: int
    tls_handshakes: int
    tls_errors: int

    COUNTERS = tuple(__annotations__)

    def __init__(self) -> None:
        for name in self.COUNTERS:
            setattr(self, name, 0)
        self.errors: dict[str, int] = {}
        # Full (generation 2) garbage collections: count, longest and total pause.
        self.gc_full = 0
        self.gc_full_max_ms = 0.0
        self.gc_full_total_ms = 0.0
        self.hold_sum = 0.0
        self.hold_min: float | None = None
        self.hold_max = 0.0
        # Histograms of the values since the last stats line (the "hist" of
        # engine/load/histogram.py); each line folds them into ``totals``.
        self.setup = Latency()
        self.lateness = SignedLatency()
        self.fanout = Latency()
        self.fanout_read = Latency()
        # Fan-out latencies (ns) not yet in ``totals``: appended in the hot
        # path (tens of ns each), recorded into the whole-run histograms only
        # at a line that carries them (a tagged or the final one), or when
        # PENDING_MAX of them wait. Recording costs about 0.7 us a value in
        # Python: done every second for 95,000 deliveries a second it took 7 %
        # of the generator's core and, on a saturated 2-core machine, tripled
        # the fan-out p99 it measured. A plain line's "hist" holds an evenly
        # spread sample of the new values instead (at most LIVE_SAMPLE, the
        # stride in "hist_sample"): what a live display needs.
        self.fanout_ns = array("q")
        self.fanout_read_ns = array("q")
        self.fanout_seen = 0  # how many of fanout_ns the previous lines sampled
        self.totals: dict[str, Histogram] = {}
        self.advice_timeout: int | None = None
        self.advice_interval: int | None = None
        self.first_start_at: float | None = None
        self.last_connected_at: float | None = None
        # Fan-out: CLOCK_MONOTONIC ns of the first and last hot event received.
        self.hot_first_ns: int | None = None
        self.hot_last_ns: int | None = None
        # Event-loop lag seen by the once-a-second sweep (how late it woke).
        self.loop_lag_max_ms = 0.0
        # TLS: what the first completed handshake negotiated (None: plain TCP).
        self.tls_version: str | None = None
        self.tls_cipher: str | None = None

    def error(self, reason: str) -> None:
        if len(self.errors) < 64 or reason in self.errors:
            self.errors[reason] = self.errors.get(reason, 0) + 1
        else:
            self.errors["other"] = self.errors.get("other", 0) + 1

    def held(self, seconds: float) -> None:
        self.hold_sum += seconds
        if self.hold_min is None or seconds < self.hold_min:
            self.hold_min = seconds
        if seconds > self.hold_max:
            self.hold_max = seconds

    def setup_latency(self, seconds: float) -> None:
        self.setup.record_ns(int(seconds * 1e9))

    def heartbeat(self, late_s: float) -> None:
        """A held connect answered without events, ``late_s`` after its timeout."""
        self.heartbeats += 1
        self.lateness.record_ns(int(late_s * 1e9))

    def histograms(self, total: bool) -> dict[str, Any]:
        """The stats line's histogram fields: ``hist`` (the values since the
        last call, then started afresh; the fan-out ones a sample, see
        ``fanout_ns``) and with ``total`` ``hist_total``."""
        delta: dict[str, Any] = {}
        clamped: dict[str, int] = {}
        sample: dict[str, int] = {}
        new = len(self.fanout_ns) - self.fanout_seen
        stride = max(1, -(-new // LIVE_SAMPLE))
        for name, values in (("fanout", self.fanout_ns), ("fanout_read", self.fanout_read_ns)):
            if new:
                live = Latency()
                live.record_many_ns(values[self.fanout_seen :: stride])
                delta[name] = live.encode()
                if stride > 1:
                    sample[name] = stride
        self.fanout_seen = len(self.fanout_ns)
        if total or self.fanout_seen >= PENDING_MAX:
            self.fanout.record_many_ns(self.fanout_ns)
            self.fanout_read.record_many_ns(self.fanout_read_ns)
            del self.fanout_ns[:], self.fanout_read_ns[:]
            self.fanout_seen = 0
        for name in NAMES:
            h: Histogram = getattr(self, name)
            if h.count:
                if name not in delta:
                    delta[name] = h.encode()
                self.totals[name] = fold(self.totals.get(name), h)
                setattr(self, name, new_histogram(name))
            if name in self.totals and self.totals[name].clamped:
                clamped[name] = self.totals[name].clamped
        out: dict[str, Any] = {"hist": delta, "hist_clamped": clamped}
        if sample:
            out["hist_sample"] = sample
        if total:
            out["hist_total"] = {name: h.encode() for name, h in self.totals.items()}
        return out

    def snapshot(self) -> dict[str, Any]:
        d: dict[str, Any] = {name: getattr(self, name) for name in self.COUNTERS}
        d["errors"] = dict(self.errors)
        d["hold_sum_s"] = round(self.hold_sum, 3)
        d["hold_min_s"] = None if self.hold_min is None else round(self.hold_min, 3)
        d["hold_max_s"] = round(self.hold_max, 3)
        d["advice_timeout"] = self.advice_timeout
        d["advice_interval"] = self.advice_interval
        d["first_start_at"] = self.first_start_at
        d["last_connected_at"] = self.last_connected_at
        d["hot_first_ns"] = self.hot_first_ns
        d["hot_last_ns"] = self.hot_last_ns
        d["loop_lag_max_ms"] = round(self.loop_lag_max_ms, 1)
        d["gc_full"] = self.gc_full
        d["gc_full_max_ms"] = round(self.gc_full_max_ms, 2)
        d["gc_full_total_ms"] = round(self.gc_full_total_ms, 2)
        d["tls_version"] = self.tls_version
        d["tls_cipher"] = self.tls_cipher
        return d


# --------------------------------------------------------------------------- randomness


class RandomPool:
    """``os.urandom`` fetched 64 KiB at a time: frame masks and upgrade keys
    stay random, without one ``getrandom`` system call per frame."""

    __slots__ = ("buf", "pos")

    SIZE = 65536

    def __init__(self) -> None:
        self.buf = os.urandom(self.SIZE)
        self.pos = 0

    def take(self, n: int) -> bytes:
        pos = self.pos
        if pos + n > self.SIZE:
            self.buf = os.urandom(self.SIZE)
            pos = 0
        self.pos = pos + n
        return self.buf[pos : pos + n]


_RANDOM = RandomPool()


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One masked, final client frame, a fresh random mask each (RFC 6455)."""
    return bytes(_encode_client_frame(opcode, payload, _RANDOM.take(4)))


def close_frame(code: int = 1000) -> bytes:
    return client_frame(OP_CLOSE, code.to_bytes(2, "big"))


def new_key() -> bytes:
    """A Sec-WebSocket-Key: 16 random bytes, base64."""
    return base64.b64encode(_RANDOM.take(16))


# --------------------------------------------------------------------------- connections


class Connection(asyncio.Protocol):
    """What a Bayeux client needs from its connection (the transport contract).

    ``send(kind, body)`` writes one request (``body`` is a JSON array). The
    connection calls back its client with ``on_open(conn)`` once connected,
    ``on_messages(conn, messages, complete)`` for each decoded array
    (``complete`` is True when the exchange is over, as at the end of an HTTP
    response, so a missing reply is an error), ``on_failure(conn, reason)``
    for a failed exchange, and ``on_closed(conn)`` when the connection ends.
    """

    __slots__ = ()
    name = "abstract"

    def send(self, kind: int, body: bytes) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class LongPollingConnection(Connection):
    """One keep-alive HTTP/1.1 connection: one request in flight at a time."""

    __slots__ = (
        "gen",
        "client",
        "transport",
        "parser",
        "chunks",
        "is_open",
        "in_flight",
    )
    name = "long-polling"

    def __init__(self, gen: LoadGenerator, client: BayeuxClient) -> None:
        self.gen = gen
        self.client: BayeuxClient | None = client
        self.transport: asyncio.Transport | None = None
        self.parser: Any = None
        self.chunks: list[bytes] = []
        self.is_open = False
        self.in_flight = False

    # asyncio.Protocol --------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.parser = httptools.HttpResponseParser(self)
        self.is_open = True
        if self.client is not None:
            self.client.on_open(self)
        else:
            transport.close()

    def data_received(self, data: bytes) -> None:
        self.gen.stats.bytes_received += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail("http_parse_error", exc)

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.is_open = False
        client = self.client
        self.client = None
        self.parser = None
        if client is not None:
            client.on_closed(self, self.in_flight, exc)

    # httptools callbacks ------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) == 10 and name.lower() == b"set-cookie" and self.client is not None:
            self.client.set_cookie(value)

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        parser = self.parser
        status = parser.get_status_code()
        keep_alive = parser.should_keep_alive()
        body = b"".join(self.chunks)
        self.chunks.clear()
        self.in_flight = False
        gen = self.gen
        gen.stats.responses += 1
        client = self.client
        if not keep_alive:
            # Server ends the connection after this response: the next request
            # opens a new one. Not a failure in itself.
            gen.stats.server_close += 1
            self.client = None
            if client is not None:
                client.conn = None
            self.close()
        if client is None:
            return
        if status != 200:
            gen.stats.http_errors += 1
            client.on_failure(self, f"http_{status}")
            return
        try:
            messages = orjson.loads(body)
        except orjson.JSONDecodeError:
            gen.stats.bad_responses += 1
            client.on_failure(self, "bad_json")
            return
        if isinstance(messages, dict):
            messages = [messages]
        elif not isinstance(messages, list):
            gen.stats.bad_responses += 1
            client.on_failure(self, "bad_json")
            return
        client.on_messages(self, messages, True)

    # contract -------------------------------------------------------------

    def send(self, kind: int, body: bytes) -> None:
        client = self.client
        gen = self.gen
        cookie = client.cookie if client is not None else None
        head = b"POST %s HTTP/1.1\r\nHost: %s\r\n%sContent-Length: %d\r\n%s\r\n" % (
            gen.paths[kind],
            gen.host_header,
            b"Content-Type: application/json\r\n",
            len(body),
            b"Cookie: " + cookie + b"\r\n" if cookie else b"",
        )
        self.in_flight = True
        data = head + body
        gen.stats.requests += 1
        gen.stats.bytes_sent += len(data)
        assert self.transport is not None
        self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None and self.is_open:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None and self.is_open:
            self.transport.abort()

    def _fail(self, reason: str, exc: BaseException | None = None) -> None:
        client = self.client
        self.client = None
        self.abort()
        if client is not None:
            client.conn = None
            client.on_failure(self, reason)


class WebSocketConnection(Connection):
    """One WebSocket (RFC 6455) carrying one client's Bayeux messages.

    ``connection_made`` sends the upgrade request; once the ``101`` arrives the
    client is told ``on_open`` and its requests go out as masked text frames,
    each a JSON array. Every text frame from the server is one JSON array
    handed to ``on_messages(conn, messages, complete=False)``: replies and
    events arrive on their own, so a frame without the reply in flight is not
    an error (the sweep's deadline catches a reply that never comes).

    Between frames an idle connection holds no buffer and no parser: ``buf`` is
    ``b""`` and ``frag`` None, so its cost is this object and uvloop's
    transport. Pings are answered with pongs; a close frame is answered and the
    connection closed (the session then lives on at the server until
    ``maxInterval``, and the next request opens a new socket, as the CometD
    client does).
    """

    __slots__ = (
        "gen",
        "client",
        "transport",
        "buf",
        "key",
        "frag",
        "is_open",
        "upgraded",
    )
    name = "websocket"
    #: A socket takes a new request while another awaits its reply.
    in_flight = False

    def __init__(self, gen: LoadGenerator, client: BayeuxClient) -> None:
        self.gen = gen
        self.client: BayeuxClient | None = client
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.key: bytes | None = None
        self.frag: tuple[int, list[bytes]] | None = None
        self.is_open = False
        self.upgraded = False

    # asyncio.Protocol --------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.is_open = True
        if self.client is None:
            transport.close()
            return
        gen = self.gen
        # The client holds its socket from now on, the upgrade included: the
        # sweep's deadline covers an upgrade never answered, and a close
        # before the 101 is a failed exchange (retried), not silence.
        self.client.conn = self
        self.key = new_key()
        data = upgrade_request(gen.ws_path, gen.host_header, self.key)
        gen.stats.bytes_sent += len(data)
        self.transport.write(data)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        gen = self.gen
        gen.stats.bytes_received += len(data)
        if self.buf:
            data = self.buf + data
            self.buf = b""
        if not self.upgraded:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                if len(data) > 16384:
                    self._fail("ws_upgrade_too_long")
                else:
                    self.buf = data
                return
            why = check_upgrade_response(data[:end], self.key or b"")
            if why is not None:
                gen.stats.http_errors += 1
                self._fail("ws_upgrade_" + why)
                return
            self.key = None
            self.upgraded = True
            data = data[end + 4 :]
            client = self.client
            if client is not None:
                client.on_open(self)
            if not data:
                return
        try:
            frames, self.buf = split_frames(data)
        except FrameError as exc:
            gen.stats.bad_responses += 1
            self._fail("ws_" + str(exc).replace(" ", "_"))
            return
        for first, payload in frames:
            opcode = first & 0x0F
            if opcode == OP_TEXT and first & 0x80 and self.frag is None:
                self._on_text(payload)
            elif opcode == OP_PING:
                self._write(client_frame(OP_PONG, payload))
            elif opcode == OP_CLOSE:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                gen.stats.error(f"ws_close_{code}")
                self._write(close_frame(1000 if code == 1005 else code))
                if self.transport is not None:
                    self.transport.close()
                return
            elif opcode == OP_PONG:
                continue
            elif opcode == OP_CONT and self.frag is not None:
                self.frag[1].append(payload)
                if first & 0x80:
                    op, chunks = self.frag
                    self.frag = None
                    if op == OP_TEXT:
                        self._on_text(b"".join(chunks))
            elif opcode in (OP_TEXT, OP_BINARY) and not first & 0x80 and self.frag is None:
                self.frag = (opcode, [payload])
            else:
                gen.stats.bad_responses += 1
                self._fail(f"ws_unexpected_opcode_{opcode}")
                return

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.is_open = False
        client = self.client
        self.client = None
        self.buf = b""
        self.frag = None
        if client is not None:
            client.on_closed(self, client.pending_id is not None, exc)

    # frames ------------------------------------------------------------------

    def _on_text(self, payload: bytes) -> None:
        gen = self.gen
        gen.stats.responses += 1
        client = self.client
        if client is None:
            return
        try:
            messages = orjson.loads(payload)
        except orjson.JSONDecodeError:
            gen.stats.bad_responses += 1
            self._fail("bad_json")
            return
        if isinstance(messages, dict):
            messages = [messages]
        elif not isinstance(messages, list):
            gen.stats.bad_responses += 1
            self._fail("bad_json")
            return
        client.on_messages(self, messages, False)

    def _write(self, data: bytes) -> None:
        if self.transport is not None and self.is_open:
            self.gen.stats.bytes_sent += len(data)
            self.transport.write(data)

    # contract -------------------------------------------------------------

    def send(self, kind: int, body: bytes) -> None:
        if not self.upgraded:  # on_open sends it once the 101 is in
            if self.client is not None:
                self.client.outbox = body
            return
        gen = self.gen
        gen.stats.requests += 1
        self._write(client_frame(OP_TEXT, body))

    def close(self) -> None:
        if self.transport is not None and self.is_open:
            if self.upgraded:
                self._write(close_frame(1000))
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None and self.is_open:
            self.transport.abort()

    def _fail(self, reason: str) -> None:
        client = self.client
        self.client = None
        self.abort()
        if client is None:
            return
        if client.conn is self:
            client.conn = None
        if client.outbox is not None:  # the upgrade failed: the request never left
            client.on_open_failed(reason)
        else:
            client.on_failure(self, reason)


#: Transport name -> connection class.
CONNECTIONS: dict[str, type[LongPollingConnection] | type[WebSocketConnection]] = {
    LongPollingConnection.name: LongPollingConnection,
    WebSocketConnection.name: WebSocketConnection,
}


# --------------------------------------------------------------------------- client


class BayeuxClient:
    """One simulated browser + Bayeux session, driven by callbacks only."""

    __slots__ = (
        "gen",
        "index",
        "source",
        "channel",
        "conn",
        "state",
        "client_id",
        "cookie",
        "next_id",
        "pending_id",
        "pending_kind",
        "outbox",
        "sent_at",
        "deadline",
        "timeout_ms",
        "interval_ms",
        "reconnect",
        "connected",
        "ever_connected",
        "attempts",
        "zero_timeout",
        "timer",
        "start_time",
        "last_seq",
        "handshake_at",  # churn/restart section: when the last handshake was sent
        "dropped_at",  # churn/restart section: when the connected client last dropped
    )

    def __init__(self, gen: LoadGenerator, index: int, source: str, channel: str | None) -> None:
        self.gen = gen
        self.index = index
        self.source = source
        self.channel = channel
        self.conn: Any = None
        self.state = NEW
        self.client_id: str | None = None
        self.cookie: bytes | None = None
        self.next_id = 0
        self.pending_id: str | None = None
        self.pending_kind = HANDSHAKE
        self.outbox: bytes | None = None
        self.sent_at = 0.0
        self.deadline = 0.0
        self.timeout_ms = DEFAULT_TIMEOUT_MS
        self.interval_ms = DEFAULT_INTERVAL_MS
        self.reconnect: str | None = None
        self.connected = False
        self.ever_connected = False
        self.attempts = 0
        self.zero_timeout = True
        self.timer: asyncio.TimerHandle | None = None
        self.start_time = 0.0
        self.last_seq = -1  # fan-out: the last hot event's data.seq
        self.handshake_at = 0.0
        self.dropped_at: float | None = None

    # life cycle -------------------------------------------------------------

    def start(self) -> None:
        self.state = ACTIVE
        self.start_time = self.gen.loop.time()
        self.handshake()

    def stop(self) -> None:
        """Stop quietly (end of the run): no counter changes."""
        self.state = STOPPED
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        conn = self.conn
        self.conn = None
        self.pending_id = None
        if conn is not None:
            conn.client = None
            conn.close()

    def give_up(self, reason: str) -> None:
        stats = self.gen.stats
        stats.gave_up += 1
        stats.error("gave_up:" + reason)
        if self.connected:
            self.connected = False
            stats.connected -= 1
        self.stop()

    # requests ----------------------------------------------------------------

    def handshake(self) -> None:
        self.handshake_at = self.gen.loop.time()
        self.client_id = None
        self.timeout_ms = DEFAULT_TIMEOUT_MS  # JS resets advice before a handshake
        self.interval_ms = DEFAULT_INTERVAL_MS
        self.reconnect = None
        self.zero_timeout = True
        self._send(
            HANDSHAKE,
            {
                "channel": "/meta/handshake",
                "version": "1.0",
                "supportedConnectionTypes": self.gen.connection_types,
            },
        )

    def subscribe(self) -> None:
        self._send(
            SUBSCRIBE,
            {
                "channel": "/meta/subscribe",
                "subscription": self.channel,
                "clientId": self.client_id,
            },
        )

    def connect(self) -> None:
        msg: dict[str, Any] = {
            "channel": "/meta/connect",
            "connectionType": self.gen.connection_types[0],
            "clientId": self.client_id,
        }
        if self.zero_timeout:
            msg["advice"] = {"timeout": 0}
        self._send(CONNECT, msg)

    def _send(self, kind: int, msg: dict[str, Any]) -> None:
        if self.state != ACTIVE:
            return
        self.next_id += 1
        mid = str(self.next_id)
        msg["id"] = mid
        body = orjson.dumps([msg])
        gen = self.gen
        now = gen.loop.time()
        self.pending_id = mid
        self.pending_kind = kind
        self.sent_at = now
        wait = gen.network_delay
        if kind == CONNECT and not self.zero_timeout:
            wait += self.timeout_ms / 1000.0
        self.deadline = now + wait
        conn = self.conn
        if conn is not None and conn.is_open and not conn.in_flight:
            conn.send(kind, body)
        else:
            if conn is not None:
                conn.client = None
                conn.close()
                self.conn = None
            self.outbox = body
            gen.open_connection(self)

    def _later(self, delay_ms: float, action: Any) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if delay_ms <= 0:
            action()
        else:
            self.timer = self.gen.loop.call_later(delay_ms / 1000.0, self._fire, action)

    def _fire(self, action: Any) -> None:
        self.timer = None
        if self.state == ACTIVE:
            action()

    # connection callbacks -----------------------------------------------------

    def on_open(self, conn: Any) -> None:
        if self.state != ACTIVE or self.outbox is None:
            conn.client = None
            conn.close()
            return
        self.conn = conn
        body = self.outbox
        self.outbox = None
        conn.send(self.pending_kind, body)

    def on_open_failed(self, reason: str) -> None:
        if self.state != ACTIVE or self.outbox is None:
            return
        self.outbox = None
        self.gen.stats.tcp_errors += 1
        self._exchange_failed(reason)

    def on_closed(self, conn: Any, in_flight: bool, exc: BaseException | None) -> None:
        if conn is not self.conn:
            return
        self.conn = None
        if self.state != ACTIVE:
            return
        if in_flight and self.pending_id is not None:
            self.gen.stats.closed_in_flight += 1
            self._exchange_failed("closed_in_flight")
        else:
            self.gen.stats.closed_idle += 1  # reopened lazily by the next request

    def on_failure(self, conn: Any, reason: str) -> None:
        if self.state != ACTIVE or self.pending_id is None:
            return
        if conn is self.conn and conn.is_open and conn.in_flight:
            conn.client = None  # an answer may still come: do not reuse
            conn.abort()
            self.conn = None
        self._exchange_failed(reason)

    def on_timeout(self) -> None:
        self.gen.stats.timeouts += 1
        conn = self.conn
        self.conn = None
        self.outbox = None  # a WebSocket whose upgrade was never answered
        if conn is not None:
            conn.client = None
            conn.abort()
        self._exchange_failed("timeout_" + KIND_NAMES[self.pending_kind])

    def set_cookie(self, value: bytes) -> None:
        pair = value.split(b";", 1)[0].strip()
        name, sep, _ = pair.partition(b"=")
        if not sep:
            return
        cookies = [
            c for c in (self.cookie or b"").split(b"; ") if c and not c.startswith(name + b"=")
        ]
        cookies.append(pair)
        self.cookie = b"; ".join(cookies)

    def on_messages(self, conn: Any, messages: list[Any], complete: bool) -> None:
        if self.state != ACTIVE:
            return
        stats = self.gen.stats
        pending = self.pending_id
        reply = None
        events = 0
        server_disconnect = False
        for m in messages:
            if type(m) is not dict:
                continue
            channel = m.get("channel")
            if (
                pending is not None
                and reply is None
                and m.get("id") == pending
                and (type(channel) is str and channel.startswith("/meta/"))
            ):
                reply = m
            elif "data" in m and "successful" not in m:
                events += 1
                if channel == self.gen.hot_channel:
                    # StampedTransport: the kernel's receive time; uvloop's
                    # TLS transport has none: now, the read (see the docstring).
                    arrived = getattr(conn.transport, "arrived_ns", 0) or time.monotonic_ns()
                    self._hot_event(m["data"], arrived)
            elif channel == "/meta/disconnect" and "id" not in m:
                server_disconnect = True
        if events:
            stats.messages += events
        if server_disconnect:
            stats.server_disconnects += 1
            self._lost("server_disconnect")
            self.give_up("server_disconnect")
            return
        if reply is None:
            if complete and pending is not None:
                stats.bad_responses += 1
                self._exchange_failed("no_reply_" + KIND_NAMES[self.pending_kind])
            return
        self.pending_id = None
        advice = reply.get("advice")
        if type(advice) is dict:
            # JS client: new advice replaces the old one, defaults fill the gaps.
            t = advice.get("timeout", DEFAULT_TIMEOUT_MS)
            i = advice.get("interval", DEFAULT_INTERVAL_MS)
            self.timeout_ms = t if type(t) is int and t >= 0 else DEFAULT_TIMEOUT_MS
            self.interval_ms = i if type(i) is int and i >= 0 else DEFAULT_INTERVAL_MS
            r = advice.get("reconnect")
            self.reconnect = r if type(r) is str else None
            if reply.get("successful"):
                # The server's timeout, as successful replies advise it (a
                # failed connect's handshake advice has none: the JS default).
                stats.advice_timeout = self.timeout_ms
                stats.advice_interval = self.interval_ms
            if advice.get("multiple-clients"):
                stats.multiple_clients += 1
        kind = self.pending_kind
        ok = reply.get("successful") is True
        if kind == CONNECT:
            self._connect_reply(reply, ok, events)
        elif kind == DISCONNECT:
            churn_disconnect_reply(self, reply, ok)
        elif kind == HANDSHAKE:
            self._handshake_reply(reply, ok)
        else:
            self._subscribe_reply(reply, ok)

    def _hot_event(self, data: Any, arrived: int) -> None:
        """Fan-out: one event of the hot channel; data = {"seq": int, "t": ns},
        ``arrived`` when its bytes reached the socket (monotonic ns)."""
        gen = self.gen
        stats = gen.stats
        now = time.monotonic_ns()
        stats.hot_messages += 1
        if stats.hot_first_ns is None:
            stats.hot_first_ns = now
        stats.hot_last_ns = now
        if type(data) is not dict:
            return
        t = data.get("t")
        if type(t) is int:
            stats.fanout_ns.append(arrived - t)
            stats.fanout_read_ns.append(now - t)
        seq = data.get("seq")
        if type(seq) is int:
            if seq <= self.last_seq:
                stats.hot_out_of_order += 1
            self.last_seq = seq

    # replies -------------------------------------------------------------------

    def _handshake_reply(self, reply: dict[str, Any], ok: bool) -> None:
        stats = self.gen.stats
        cid = reply.get("clientId")
        if ok and type(cid) is str and cid:
            stats.handshakes += 1
            self.gen.churn_stats.handshake_ms(self.gen.loop.time() - self.sent_at)
            self.client_id = cid
            if self.reconnect == "none":
                self.give_up("handshake_reconnect_none")
                return
            if self.channel:
                self.subscribe()
            else:
                self.zero_timeout = True
                self._later(self.interval_ms, self.connect)
            return
        stats.handshake_failures += 1
        stats.error("handshake:" + error_kind(reply))
        self._failed_event()
        action = self.reconnect or "handshake"
        if action == "none":
            self.give_up("handshake_denied")
        elif self._count_attempt():
            self._later(self.interval_ms + self._backoff(), self.handshake)

    def _subscribe_reply(self, reply: dict[str, Any], ok: bool) -> None:
        stats = self.gen.stats
        if ok:
            stats.subscribes += 1
        else:
            # The JS client does not retry a subscription; neither do we.
            stats.subscribe_failures += 1
            stats.error("subscribe:" + error_kind(reply))
            self._failed_event()
        self.zero_timeout = True
        self._later(self.interval_ms, self.connect)

    def _connect_reply(self, reply: dict[str, Any], ok: bool, events: int) -> None:
        gen = self.gen
        stats = gen.stats
        if not ok:
            stats.connect_failures += 1
            stats.error("connect:" + error_kind(reply))
            self._lost("connect_unsuccessful")
            action = self.reconnect or "retry"
            if action == "none":
                self.give_up("connect_reconnect_none")
            elif action == "handshake":
                if self._count_attempt():
                    stats.rehandshakes += 1
                    self._later(self.interval_ms, self.handshake)
            elif self._count_attempt():
                self.zero_timeout = True
                self._later(self.interval_ms + self._backoff(), self.connect)
            return
        now = gen.loop.time()
        if self.zero_timeout:
            stats.connects_immediate += 1
        else:
            stats.cycles += 1
            held = now - self.sent_at
            stats.held(held)
            if not events:
                # The timeout this connect was sent with (the advice then in
                # force; this reply's advice is already applied): its deadline
                # was sent_at + timeout + network delay.
                advised = self.deadline - self.sent_at - gen.network_delay
                stats.heartbeat(held - advised)
                if held < 0.5 * advised:
                    stats.early_returns += 1
        self.attempts = 0
        if gen.churn is not None and churn_connected(self, now):
            return
        if not self.connected:
            self.connected = True
            stats.connected += 1
            stats.last_connected_at = time.time()
            if self.ever_connected:
                stats.recovered += 1
                gen.churn_stats.recovered(self, now)
            else:
                self.ever_connected = True
                stats.ever_connected += 1
                stats.setup_latency(now - self.start_time)
        action = self.reconnect or "retry"
        if action == "none":
            self._lost("connect_reconnect_none")
            self.give_up("connect_reconnect_none")
            return
        if action == "handshake":
            # The JS client throws here; the only sane reading is a new session.
            stats.error("connect:handshake_advice_on_success")
            self._lost("handshake_advice")
            stats.rehandshakes += 1
            self._later(self.interval_ms, self.handshake)
            return
        self.zero_timeout = False
        self._later(self.interval_ms, self.connect)

    # failures ----------------------------------------------------------------

    def _failed_event(self) -> None:
        if not self.ever_connected:
            self.gen.stats.failed += 1

    def _lost(self, reason: str) -> None:
        """A connected client stops being connected: one drop."""
        if self.connected:
            self.connected = False
            stats = self.gen.stats
            stats.connected -= 1
            stats.dropped += 1
            stats.error("drop:" + reason)
            self.dropped_at = self.gen.loop.time()

    def _count_attempt(self) -> bool:
        self.attempts += 1
        if self.attempts > self.gen.max_attempts:
            self.give_up("max_attempts")
            return False
        return True

    def _backoff(self) -> float:
        return min(self.attempts * self.gen.backoff_ms, 60000.0)

    def _exchange_failed(self, reason: str) -> None:
        """No usable reply to the request in flight (transport-level failure)."""
        stats = self.gen.stats
        kind = self.pending_kind
        self.pending_id = None
        stats.error(KIND_NAMES[kind] + ":" + reason)
        if kind == DISCONNECT:
            churn_disconnect_failed(self)
        elif kind == CONNECT:
            self._lost(reason)
            if not self.ever_connected:
                stats.failed += 1
            if self._count_attempt():
                self.zero_timeout = True
                self._later(self.interval_ms + self._backoff(), self.connect)
        else:
            if kind == HANDSHAKE:
                stats.handshake_failures += 1
            else:
                stats.subscribe_failures += 1
            self._failed_event()
            if self._count_attempt():
                if self.client_id is not None:
                    stats.rehandshakes += 1
                self._later(self.interval_ms + self._backoff(), self.handshake)


# --------------------------------------------------------------------------- churn and restart
#
# ``--churn``: every client loops through what a browser does on a page load
# (handshake, subscribe, a first connect, ``/meta/disconnect``, the connection
# closed), pauses ``--churn-pause-ms`` and starts again; ``--churn-abandon F``
# skips the disconnect of that fraction of cycles (the session must then
# expire at the server). Without ``--churn`` the same section still times how
# long a connected client that dropped (a server restart) took to connect
# again. The hooks in BayeuxClient are one line each; the logic is here.


class ChurnStats:
    """Counters and latencies of the churn cycles and of reconnections."""

    __slots__ = (
        "cycles",
        "disconnects",
        "disconnect_failures",
        "abandoned",
        "recovered_clients",
        "rehandshaked",
        "handshake",
        "first_connect",
        "recovery",
    )

    def __init__(self) -> None:
        self.cycles = 0  # cycles ended (disconnected, abandoned or disconnect failed)
        self.disconnects = 0  # successful /meta/disconnect replies
        self.disconnect_failures = 0  # unsuccessful, or no reply
        self.abandoned = 0  # cycles ended without a disconnect (--churn-abandon)
        self.recovered_clients = 0  # dropped clients connected again (restart)
        self.rehandshaked = 0  # ... of which with a new handshake first
        self.handshake = Latency()  # handshake sent -> its successful reply
        self.first_connect = Latency()  # handshake sent -> first connect answered
        self.recovery = Latency()  # drop -> next successful connect

    def new_window(self) -> None:
        """Latencies from now on only (``churn-window`` on stdin: the end of a
        warm-up); the counters go on (windows of them are differences)."""
        self.handshake = Latency()
        self.first_connect = Latency()
        self.recovery = Latency()

    def handshake_ms(self, seconds: float) -> None:
        self.handshake.record_ns(int(seconds * 1e9))

    def recovered(self, client: BayeuxClient, now: float) -> None:
        """A dropped client connected again: time it from its drop, once."""
        if client.dropped_at is None:
            return
        self.recovery.record_ns(int((now - client.dropped_at) * 1e9))
        self.recovered_clients += 1
        if client.handshake_at > client.dropped_at:
            self.rehandshaked += 1
        client.dropped_at = None

    def snapshot(self) -> dict[str, Any]:
        return {
            "cycles": self.cycles,
            "disconnects": self.disconnects,
            "disconnect_failures": self.disconnect_failures,
            "abandoned": self.abandoned,
            "recovered_clients": self.recovered_clients,
            "rehandshaked": self.rehandshaked,
            "handshake_hist": self.handshake.encode(),
            "first_connect_hist": self.first_connect.encode(),
            "recovery_hist": self.recovery.encode(),
        }


class ChurnMode:
    """The ``--churn`` options of a generator (None without ``--churn``)."""

    __slots__ = ("pause_ms", "abandon", "rng")

    def __init__(self, pause_ms: float, abandon: float, seed: int) -> None:
        self.pause_ms = pause_ms
        self.abandon = abandon
        self.rng = random.Random(seed)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ChurnMode | None:
        if not getattr(args, "churn", False):
            return None
        return cls(float(args.churn_pause_ms), float(args.churn_abandon), args.index_start)


def churn_connected(client: BayeuxClient, now: float) -> bool:
    """--churn: the first connect of a cycle succeeded: disconnect (or
    abandon) instead of holding connects. True: the reply is handled."""
    gen = client.gen
    mode = gen.churn
    assert mode is not None
    cs = gen.churn_stats
    cs.first_connect.record_ns(int((now - client.handshake_at) * 1e9))
    if not client.ever_connected:
        # The ramp counts clients that set up once; after that, cycles.
        client.ever_connected = True
        gen.stats.ever_connected += 1
    if mode.abandon and mode.rng.random() < mode.abandon:
        cs.abandoned += 1
        _churn_next_cycle(client)
        return True
    client._send(DISCONNECT, {"channel": "/meta/disconnect", "clientId": client.client_id})
    return True


def churn_disconnect_reply(client: BayeuxClient, reply: dict[str, Any], ok: bool) -> None:
    cs = client.gen.churn_stats
    if ok:
        cs.disconnects += 1
    else:
        cs.disconnect_failures += 1
        client.gen.stats.error("disconnect:" + error_kind(reply))
    _churn_next_cycle(client)


def churn_disconnect_failed(client: BayeuxClient) -> None:
    """No reply to the disconnect (already counted as an error by kind)."""
    client.gen.churn_stats.disconnect_failures += 1
    _churn_next_cycle(client)


def _churn_next_cycle(client: BayeuxClient) -> None:
    """End the cycle as a page unload does (the connection closed), then a
    new page load after the pause, keeping the browser's cookie."""
    gen = client.gen
    assert gen.churn is not None
    gen.churn_stats.cycles += 1
    conn = client.conn
    client.conn = None
    client.pending_id = None
    if conn is not None:
        conn.client = None
        conn.close()
    client.client_id = None
    client._later(gen.churn.pause_ms, client.handshake)


def error_kind(reply: dict[str, Any]) -> str:
    """The kind a failed reply is counted under: its Bayeux error
    ``code:args:message`` without the args, which often name the clientId
    (Faye's ``401:<clientId>:Unknown client``): one kind, not one per client."""
    error = str(reply.get("error", "unsuccessful"))
    code, sep, rest = error.partition(":")
    if not sep:
        return error
    _, sep, message = rest.rpartition(":")
    return f"{code}::{message}" if sep else error


def add_churn_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--churn",
        action="store_true",
        help="each client loops: handshake, subscribe, first connect, disconnect, pause",
    )
    p.add_argument(
        "--churn-pause-ms", type=float, default=100.0, help="--churn: pause between cycles, ms"
    )
    p.add_argument(
        "--churn-abandon",
        type=float,
        default=0.0,
        help="--churn: fraction of cycles that end without /meta/disconnect (sessions expire)",
    )


# --------------------------------------------------------------------------- generator


class LoadGenerator:
    """Owns the clients of one process: ramp, time-out sweep, reports, stop."""

    def __init__(self, args: argparse.Namespace, loop: asyncio.AbstractEventLoop) -> None:
        url = urlsplit(args.url)
        if url.scheme not in ("http", "ws", "https", "wss"):
            raise SystemExit(
                f"loadgen: only http:// or https:// (ws://, wss://) URLs, got {args.url}"
            )
        self.tls = url.scheme in ("https", "wss")
        if args.ca_file and not self.tls:
            raise SystemExit("loadgen: --ca-file needs an https:// or wss:// URL")
        self.host = url.hostname or "127.0.0.1"
        self.port = url.port or (443 if self.tls else 80)
        # The name the certificate must carry: the URL's host as written.
        self.server_hostname = self.host
        self.ssl_context = tls_client_context(args.ca_file) if self.tls else None
        if not self.host.startswith("127.") and self.host not in ("localhost", "::1"):
            raise SystemExit(f"loadgen: refusing non-loopback target {self.host}")
        if self.host == "localhost":
            self.host = "127.0.0.1"
        base = (url.path or "/").rstrip("/")
        # JS client (appendMessageTypeToURL): /handshake, /connect, others on the base.
        self.paths = {
            HANDSHAKE: (base + "/handshake").encode(),
            SUBSCRIBE: (base + "/").encode(),
            CONNECT: (base + "/connect").encode(),
            DISCONNECT: (base + "/disconnect").encode(),
        }
        # WebSocket: the endpoint itself (the JS client upgrades on the base URL).
        self.ws_path = (base or "/").encode()
        self.host_header = f"{url.hostname}:{self.port}".encode()
        self.latency_at = "read" if self.tls else "arrival"
        self.address = (self.host, self.port)
        self.loop = loop
        self.args = args
        self.rss_start = _own_rss()  # before any client exists
        self.stats = Stats()
        self.connection_class = CONNECTIONS[args.transport]
        self.connection_types = [args.transport]
        self.network_delay = args.network_delay
        self.connect_timeout = args.connect_timeout
        self.max_attempts = args.max_attempts
        self.backoff_ms = float(args.backoff_ms)
        sources = [s for s in args.source_addrs.split(",") if s]
        for s in sources:
            if not s.startswith("127."):
                raise SystemExit(f"loadgen: refusing non-loopback source address {s}")
        # Fan-out: K of the N global indexes, evenly spread, take the hot channel.
        self.hot_channel: str | None = args.hot_channel or None
        hot_k = args.hot_clients if self.hot_channel else 0
        total = max(args.total_clients or (args.index_start + args.clients), 1)
        self.clock = Clock()  # the kernel's receive stamps to monotonic_ns

        # One string per channel, shared by its clients.
        count = max(1, args.channel_count)
        channels = [args.channel.replace("{k}", str(k)) for k in range(count)]

        def channel_of(i: int) -> str | None:
            if is_hot(i, hot_k, total):
                return self.hot_channel
            return _channel_for(channels[i % count], i)

        self.clients = [
            BayeuxClient(self, i, sources[i % len(sources)], channel_of(i))
            for i in range(args.index_start, args.index_start + args.clients)
        ]
        self.stats.hot_clients = sum(
            1 for c in self.clients if c.channel is not None and c.channel == self.hot_channel
        )
        self.stopping = False
        self.done = loop.create_future()
        self.opening = 0
        self.tag_queue: list[str] = []
        self._stdin_buf = b""
        self.t0 = loop.time()
        self.churn = ChurnMode.from_args(args)
        self.churn_stats = ChurnStats()

    # connections ---------------------------------------------------------------

    def open_connection(self, client: BayeuxClient) -> None:
        self.opening += 1
        self.loop.create_task(self._open(client))

    async def _open(self, client: BayeuxClient) -> None:
        """One TCP connection for ``client``: non-blocking ``connect`` done here
        (``loop.sock_connect`` would resolve the numeric address through
        ``getaddrinfo`` in libuv's thread pool, a thread hand-off per
        connection), the socket then handed to a StampedTransport (reads carry
        the kernel's receive time), or over TLS to uvloop's TLS transport
        (``create_connection(sock=...)``, which does the TLS handshake)."""
        loop = self.loop
        sock = None
        try:
            # non-blocking from the start (no ioctl)
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | SOCK_NONBLOCK)
            sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((client.source, 0))
            err = sock.connect_ex(self.address)
            if err == errno.EINPROGRESS:
                # Over loopback the kernel usually completes the handshake
                # within connect() itself: no need to wait for writability.
                try:
                    sock.getpeername()
                    err = 0
                except OSError:
                    pass
            if err == errno.EINPROGRESS:
                fd = sock.fileno()
                ready: asyncio.Future[None] = loop.create_future()
                loop.add_writer(fd, _set_done, ready)
                try:
                    # a plain future: wait_for adds a timer, not a task
                    await asyncio.wait_for(ready, self.connect_timeout)
                finally:
                    loop.remove_writer(fd)
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, os.strerror(err))
            self.stats.tcp_opens += 1
            if self.ssl_context is None:
                StampedTransport(loop, sock, self.connection_class(self, client), self.clock)
                sock = None  # owned by the transport now
            else:
                await self._open_tls(client, sock)
                sock = None
        except TimeoutError:
            client.on_open_failed("tcp_connect_timeout")
        except TLSHandshakeTimeout:
            self.stats.tls_errors += 1
            client.on_open_failed("tls_handshake_timeout")
        except ssl.SSLError as exc:  # before OSError: SSLError derives from it
            self.stats.tls_errors += 1
            client.on_open_failed("tls_" + str(exc.reason or type(exc).__name__).lower())
        except OSError as exc:
            name = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
            client.on_open_failed("tcp_" + name)
        finally:
            self.opening -= 1
            if sock is not None:
                sock.close()

    async def _open_tls(self, client: BayeuxClient, sock: socket.socket) -> None:
        """The TLS handshake on connected ``sock``, then the connection's
        ``connection_made``. uvloop owns ``sock`` from the call on: it closes
        it with the transport, and detaches it when it fails (no double close
        of a file descriptor another connection may have got meanwhile)."""
        conn = self.connection_class(self, client)
        try:
            transport, _ = await self.loop.create_connection(
                lambda: conn,
                sock=sock,
                ssl=self.ssl_context,
                server_hostname=self.server_hostname,
                ssl_handshake_timeout=self.connect_timeout,
            )
        except ConnectionAbortedError as exc:
            # asyncio's and uvloop's TLS handshake time-out
            if "handshake" in str(exc):
                raise TLSHandshakeTimeout from None
            raise
        stats = self.stats
        stats.tls_handshakes += 1
        if stats.tls_version is None:
            obj = transport.get_extra_info("ssl_object")
            if obj is not None:
                stats.tls_version = obj.version()
                cipher = obj.cipher()
                stats.tls_cipher = cipher[0] if cipher else None

    # phases --------------------------------------------------------------------

    async def ramp(self) -> None:
        """Start clients at ``--ramp-rate`` per second, at most ``--max-pending``
        of them still setting up at once."""
        rate = self.args.ramp_rate
        n = len(self.clients)
        started = 0
        t0 = self.loop.time()
        max_pending = self.args.max_pending
        stats = self.stats
        # bounded: every iteration starts >= 1 client or sleeps 10 ms; the whole
        # ramp is also bounded by --max-seconds through stop().
        while started < n and not self.stopping:
            due = min(n, int((self.loop.time() - t0) * rate) + 1)
            pending = started - stats.ever_connected - stats.gave_up
            while started < due and pending < max_pending:
                if stats.first_start_at is None:
                    stats.first_start_at = time.time()
                self.clients[started].start()
                stats.started += 1
                started += 1
                pending += 1
            await asyncio.sleep(0.01)
        # The clients and their connections live until the end: move them out of
        # the collector's sight, so a full collection does not walk thousands of
        # idle clients and stall every delivery behind it (fan-out latency).
        gc.freeze()

    async def sweep(self) -> None:
        """Once a second: fail requests past their deadline (one pass, no
        per-client timers).

        A reply can already sit in its socket's buffer while this loop was busy
        (a ramp, a CPU shared with 30 other processes): the candidates are only
        failed after the loop has polled its sockets once more, and still have
        no reply. The sweep also measures how late it wakes (event-loop lag)
        and, while clients are still setting up, freezes what the collector
        has seen so far, so full collections do not walk every idle client.
        """
        loop = self.loop
        settled = False
        period = 1.0
        expected = loop.time() + period
        while not self.stopping:
            await asyncio.sleep(period)
            stats = self.stats
            now = loop.time()
            lag_ms = (now - expected) * 1000.0
            if lag_ms > stats.loop_lag_max_ms:
                stats.loop_lag_max_ms = lag_ms
            if lag_ms > LAG_EVENT_MS:
                stats.loop_lags += 1
            self.clock.resync()
            if not settled:
                # the clients and connections made so far live until the end
                gc.freeze()
                settled = stats.ever_connected + stats.gave_up >= len(self.clients)
            late = [
                (c, c.pending_id)
                for c in self.clients
                if c.pending_id is not None
                and c.conn is not None
                and c.state == ACTIVE
                and now > c.deadline
            ]
            if late:
                for _ in range(2):  # two loop iterations: every ready socket read
                    await asyncio.sleep(0)
                now = loop.time()
                for c, pending in late:
                    if c.pending_id == pending and c.state == ACTIVE and now > c.deadline:
                        c.on_timeout()
                    else:
                        stats.timeouts_spared += 1
            expected = loop.time() + period

    async def report_loop(self) -> None:
        while not self.stopping:
            await asyncio.sleep(self.args.report_interval)
            self.report()

    def report(self, tag: str | None = None, final: bool = False) -> None:
        d = self.stats.snapshot()
        d["type"] = "stats"
        d["pid"] = os.getpid()
        d["clients"] = len(self.clients)
        d["time"] = time.time()
        d["uptime_s"] = round(self.loop.time() - self.t0, 3)
        d["rss_bytes"] = _own_rss()
        d["rss_start_bytes"] = self.rss_start
        t = os.times()
        d["cpu_s"] = round(t.user + t.system, 3)
        d["opening"] = self.opening
        d["tls"] = self.tls
        d["latency_at"] = self.latency_at
        d["churn"] = self.churn_stats.snapshot()
        d.update(self.stats.histograms(total=final or tag is not None))
        if tag is not None:
            d["tag"] = tag
        if final:
            d["final"] = True
        sys.stdout.buffer.write(orjson.dumps(d) + b"\n")
        sys.stdout.buffer.flush()

    def stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        for c in self.clients:
            if c.state != STOPPED:
                c.stop()
        if not self.done.done():
            self.done.set_result(None)

    # control -------------------------------------------------------------------

    def on_stdin(self) -> None:
        try:
            data = os.read(0, 4096)
        except OSError:
            data = b""
        if not data:
            self.loop.remove_reader(0)
            self.stop()
            return
        self._stdin_buf += data
        while b"\n" in self._stdin_buf:
            line, self._stdin_buf = self._stdin_buf.split(b"\n", 1)
            words = line.decode("utf-8", "replace").split()
            if not words:
                continue
            if words[0] == "stop":
                self.stop()
            elif words[0] == "report":
                self.report(tag=words[1] if len(words) > 1 else "")
            elif words[0] == "churn-window":
                self.churn_stats.new_window()


class TLSHandshakeTimeout(Exception):
    """The TLS handshake took longer than --connect-timeout."""


def tls_client_context(ca_file: str | None) -> ssl.SSLContext:
    """A client context that verifies the server: its certificate against
    ``ca_file`` (the system's CAs when empty) and its hostname."""
    try:
        return ssl.create_default_context(cafile=ca_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise SystemExit(f"loadgen: --ca-file {ca_file!r}: cannot load: {exc}") from None


def _set_done(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def is_hot(index: int, hot: int, total: int) -> bool:
    """Whether global client ``index`` is one of the ``hot`` of ``total``
    clients: exactly ``hot`` of the indexes 0..total-1, evenly spread."""
    return hot > 0 and (index + 1) * hot // total > index * hot // total


def _channel_for(template: str, index: int) -> str | None:
    if not template:
        return None
    return template.replace("{i}", str(index))


def _own_rss() -> int:
    """This generator's resident memory, bytes (0 when unreadable)."""
    return read_rss_bytes(os.getpid()) or 0


# --------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="loadgen.py",
        description="Hold many Bayeux clients from one uvloop process (see module docstring).",
    )
    p.add_argument(
        "--url",
        required=True,
        help="server URL, e.g. http://127.0.0.1:8080/cometd (https:// or wss:// for TLS)",
    )
    p.add_argument(
        "--ca-file",
        default="",
        help="TLS: PEM file of the CA(s) the server's certificate must chain to "
        "(default: the system's CAs)",
    )
    p.add_argument("--clients", type=int, required=True, help="clients in this process")
    p.add_argument(
        "--index-start",
        type=int,
        default=0,
        help="global index of this process's first client (source address and {i} choice)",
    )
    p.add_argument(
        "--source-addrs",
        default="127.0.0.1",
        help="comma-separated 127.x.y.z source addresses; client i uses addrs[i %% len]",
    )
    p.add_argument("--transport", default="long-polling", choices=sorted(CONNECTIONS))
    p.add_argument(
        "--channel",
        default="/bench/idle",
        help="subscription ({i} = client index, {k} = index mod --channel-count)",
    )
    p.add_argument(
        "--channel-count",
        type=int,
        default=1,
        help="K channels: client i subscribes to --channel with {k} = i mod K",
    )
    p.add_argument(
        "--hot-channel",
        default="",
        help="fan-out: channel that --hot-clients of the clients subscribe to instead",
    )
    p.add_argument(
        "--hot-clients", type=int, default=0, help="fan-out: K, hot clients among --total-clients"
    )
    p.add_argument(
        "--total-clients",
        type=int,
        default=0,
        help="fan-out: N, clients over all generators (hot ones are spread evenly over them)",
    )
    p.add_argument("--ramp-rate", type=float, default=1000.0, help="clients started per second")
    p.add_argument("--max-pending", type=int, default=1000, help="clients setting up at once")
    p.add_argument("--max-attempts", type=int, default=5, help="failures in a row before giving up")
    p.add_argument("--backoff-ms", type=int, default=1000, help="back-off added per failure")
    p.add_argument("--connect-timeout", type=float, default=10.0, help="TCP connect time-out, s")
    p.add_argument(
        "--network-delay", type=float, default=10.0, help="reply time-out beyond the hold, s"
    )
    p.add_argument("--report-interval", type=float, default=1.0, help="seconds between reports")
    p.add_argument("--max-seconds", type=float, default=3600.0, help="hard bound on the run")
    p.add_argument(
        "--duration",
        type=float,
        default=0.0,
        help="stop after this many seconds (0: on 'stop' / EOF on stdin, or --max-seconds)",
    )
    add_churn_args(p)
    return p


def _watch_gc(stats: Stats) -> None:
    """Time every full collection (the pauses that can stall the event loop)."""
    started = [0.0]

    def callback(phase: str, info: dict[str, Any]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            started[0] = time.perf_counter()
            return
        ms = (time.perf_counter() - started[0]) * 1000.0
        stats.gc_full += 1
        stats.gc_full_total_ms += ms
        if ms > stats.gc_full_max_ms:
            stats.gc_full_max_ms = ms

    gc.callbacks.append(callback)


async def run(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    gen = LoadGenerator(args, loop)
    _watch_gc(gen.stats)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, gen.stop)
    try:
        if stat.S_ISFIFO(os.fstat(0).st_mode):
            loop.add_reader(0, gen.on_stdin)
    except OSError:
        pass
    limit = args.max_seconds if args.duration <= 0 else min(args.duration, args.max_seconds)
    loop.call_later(limit, gen.stop)
    tasks = [
        loop.create_task(gen.ramp()),
        loop.create_task(gen.sweep()),
        loop.create_task(gen.report_loop()),
    ]
    gen.report()
    await gen.done
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(0.05)  # let transports finish closing
    gen.report(final=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.clients < 0 or args.ramp_rate <= 0:
        raise SystemExit("loadgen: --clients must be >= 0 and --ramp-rate > 0")
    if not 0 <= args.churn_abandon <= 1 or args.churn_pause_ms < 0:
        raise SystemExit("loadgen: --churn-abandon is a fraction in 0..1, --churn-pause-ms >= 0")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.clients + 64 > hard:
        raise SystemExit(
            f"loadgen: {args.clients} clients need more than the open-files limit {hard}; "
            "use more processes"
        )
    return uvloop.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
