#!/usr/bin/env python3
"""The worker processes of the hostile scenario (bench/hostile.py): one per
attack, the newcomers and the canary.

    python bench/hostile_workers.py ROLE --url URL [options]

ROLE is one of:

- ``headers``: ``--count`` connections, each sending a request head whose
  header value never ends (``X-A: aaaa...``, ``--chunk`` bytes every
  ``--interval`` s); a connection the server ends is opened again after
  ``--reconnect-delay`` s.
- ``slowloris``: ``--count`` connections, each sending a partial request head,
  then one byte every ``--interval`` s (spread evenly over the interval);
  reopened when the server ends them.
- ``nonreader``: ``--count`` WebSocket subscribers (``SO_RCVBUF`` ``--rcvbuf``,
  set before ``connect``) that handshake, subscribe to ``--channel``, send
  ``/meta/connect`` and never read again. Every second each sends a 6-byte
  ping: a server that closed the socket answers it with a reset (Linux resets
  a closed socket that still receives data), which is how the cut is seen
  even when the server's unsent output never got through. Reopened when cut.
- ``handshakes``: ``--count`` handshakes requested on one WebSocket (one a
  frame), at most ``--window`` unanswered; a socket the server closes is
  replaced after ``--reconnect-delay`` s.
- ``flood``: ``--sessions`` handshakes on one WebSocket; every session it got
  keeps a ``/meta/connect`` going, and all of them publish to ``--channel``,
  round robin, as fast as ``--window`` unanswered publishes allow, at most
  ``--count``. A socket the server closes is replaced (new sessions).
- ``newcomers`` (a probe, not an attack): a new client every ``--interval``
  s opens a connection and handshakes over HTTP, as a page loading now
  would; the time to its reply.
- ``canary``: ``bench/publisher.py``'s client, which also subscribes to the
  channel it publishes to and counts its own messages coming back (``lost``:
  acknowledged and never received). Its options are the publisher's.

Every attacker connects from ``--source-addrs`` (127.x.y.z, round robin),
prints ``{"type": "stats", ...}`` every ``--report-interval`` s and a last one
with ``"final": true``, and stops on ``stop`` or end of file on stdin,
SIGTERM, after ``--duration`` s or ``--max-seconds``. What it reports is what
the attack achieved as the attacker saw it: connections opened, ended by the
server (and how: end of file, reset, WebSocket close frame with its code),
HTTP status codes and Bayeux errors received, how long each connection lived
before the server cut it, bytes sent, and counters of its own (handshakes,
publishes). Nothing here trusts the server: every wait is bounded, every
reply may be missing or malformed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import math
import os
import signal
import socket
import sys
import time
from array import array
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import orjson
import uvloop

from engine.load import publisher
from engine.load.histogram import Latency, summary_with_hist
from engine.load.stamped import Clock, StampedTransport
from engine.load.wsframes import (
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameError,
    check_upgrade_response,
    client_frame,
    new_key,
    split_frames,
    upgrade_request,
)

__all__ = ["ROLES", "Outcome", "main"]

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
SOCK_NONBLOCK = getattr(socket, "SOCK_NONBLOCK", 0o4000)
#: tcp_info's first byte: the state (include/net/tcp_states.h).
TCP_ESTABLISHED = 1
#: Cut times kept per process (8 bytes each); beyond, only counted.
MAX_SAMPLES = 200_000
#: Bound of every single exchange an attacker waits for (upgrade, handshake).
EXCHANGE_TIMEOUT = 10.0


def emit(d: dict[str, Any]) -> None:
    sys.stdout.buffer.write(orjson.dumps(d) + b"\n")
    sys.stdout.buffer.flush()


def bump(counts: dict[str, int], key: str, n: int = 1, most: int = 64) -> None:
    """counts[key] += n, at most ``most`` keys (the rest under "other")."""
    if key not in counts and len(counts) >= most:
        key = "other"
    counts[key] = counts.get(key, 0) + n


def error_kind(error: Any) -> str:
    """A Bayeux error (``"429::session_limit_reached"``), cut to 60 characters."""
    return str(error)[:60]


def cut_kind(exc: BaseException | None) -> str:
    """How a connection ended: end of file, reset, or the error's name."""
    if exc is None:
        return "eof"
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return "reset"
    if isinstance(exc, OSError) and exc.errno:
        return errno.errorcode.get(exc.errno, "oserror").lower()
    return type(exc).__name__


class Outcome:
    """What one attack achieved, as the attacker saw it."""

    def __init__(self, role: str) -> None:
        self.role = role
        self.t0 = time.monotonic()
        self.opened = 0
        self.open_failed = 0
        self.open_errors: dict[str, int] = {}
        #: Connections the server ended, by how (eof, reset, close_<code>, ...).
        self.cut = 0
        self.cut_how: dict[str, int] = {}
        self.statuses: dict[str, int] = {}
        self.close_codes: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        #: Durations in seconds, by name: "cut_after" (a connection's start, or
        #: the start of the attack on it, to its cut) and the workers' own.
        self.series: dict[str, array[float]] = {"cut_after": array("d")}
        self.first_cut_s: float | None = None
        self.bytes_sent = 0
        self.counts: dict[str, int] = {}
        #: Start time of every connection still open (id -> monotonic).
        self.live: dict[int, float] = {}

    def opening(self, key: int, at: float | None = None) -> None:
        self.opened += 1
        self.live[key] = time.monotonic() if at is None else at

    def open_error(self, exc: BaseException) -> None:
        self.open_failed += 1
        bump(self.open_errors, cut_kind(exc) if isinstance(exc, OSError) else type(exc).__name__)

    def restart_clock(self, key: int) -> None:
        """The attack proper starts now on this connection (after its setup)."""
        if key in self.live:
            self.live[key] = time.monotonic()

    def ended(self, key: int, how: str, by_server: bool, at: float | None = None) -> None:
        """Connection ``key`` ended (``at``: when, if known better than now)."""
        started = self.live.pop(key, None)
        if not by_server or started is None:
            return
        self.cut += 1
        bump(self.cut_how, how)
        lived = (time.monotonic() if at is None else at) - started
        self.sample("cut_after", lived)
        if self.first_cut_s is None:
            self.first_cut_s = round(time.monotonic() - self.t0, 3)

    def sample(self, series: str, seconds: float) -> None:
        values = self.series.setdefault(series, array("d"))
        if len(values) < MAX_SAMPLES:
            values.append(seconds)

    def count(self, key: str, n: int = 1) -> None:
        bump(self.counts, key, n)

    def snapshot(self, final: bool = False) -> dict[str, Any]:
        now = time.monotonic()
        d: dict[str, Any] = {
            "type": "stats",
            "role": self.role,
            "elapsed_s": round(now - self.t0, 3),
            "opened": self.opened,
            "open_failed": self.open_failed,
            "open_errors": dict(self.open_errors),
            "open_now": len(self.live),
            "cut": self.cut,
            "cut_how": dict(self.cut_how),
            "statuses": dict(self.statuses),
            "close_codes": dict(self.close_codes),
            "errors": dict(self.errors),
            "bytes_sent": self.bytes_sent,
            "first_cut_s": self.first_cut_s,
            "oldest_open_s": (round(now - min(self.live.values()), 3) if self.live else None),
            **self.counts,
        }
        if final:
            d["final"] = True
            for name, values in self.series.items():
                d[f"{name}_s"] = seconds_stats(values)
        return d


def seconds_stats(values: array[float]) -> dict[str, Any]:
    """count, min, p50, p99, max (nearest rank) of durations in seconds."""
    s = sorted(values)
    n = len(s)

    def q(p: float) -> float | None:
        return round(s[min(n - 1, max(0, math.ceil(p * n) - 1))], 3) if n else None

    return {"count": n, "min": q(0.0), "p50": q(0.5), "p99": q(0.99), "max": q(1.0)}


# --------------------------------------------------------------------------- sockets


def _resolve(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)


async def open_socket(
    address: tuple[str, int], source: str, timeout: float, rcvbuf: int = 0
) -> tuple[socket.socket, float]:
    """A connected non-blocking TCP socket from ``source``, and when it was
    connected (time.monotonic()); ``rcvbuf`` (when set) is applied before
    ``connect`` so the advertised window follows it.

    The time is taken as ``connect()`` returns, which over loopback is when
    the server's kernel queued the connection for its accept, so that a busy
    attacker process does not add its own delays to the server's timeouts."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | SOCK_NONBLOCK)
    try:
        sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind((source, 0))
        err = sock.connect_ex(address)
        at = time.monotonic()
        if err == errno.EINPROGRESS:
            ready: asyncio.Future[None] = loop.create_future()
            loop.add_writer(sock.fileno(), _resolve, ready)
            try:
                await asyncio.wait_for(ready, timeout)
            finally:
                loop.remove_writer(sock.fileno())
            at = time.monotonic()
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, os.strerror(err))
    except BaseException:
        sock.close()
        raise
    return sock, at


def tcp_state(sock: socket.socket) -> int | None:
    """The kernel's TCP state of ``sock`` (1 = established), None if unknown."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
    except OSError:
        return None
    return info[0] if info else None


class Target:
    """Where the attacks go: the server's address, Host header and path."""

    def __init__(self, url: str, sources: list[str]) -> None:
        u = urlsplit(url)
        host = u.hostname or "127.0.0.1"
        if host == "localhost":
            host = "127.0.0.1"
        if not host.startswith("127."):
            raise SystemExit("hostile_workers: loopback servers only")
        self.address = (host, u.port or 80)
        self.host_header = f"{u.hostname}:{self.address[1]}".encode()
        self.path = (u.path or "/").encode()
        self.sources = sources

    def source(self, i: int) -> str:
        return self.sources[i % len(self.sources)]


# --------------------------------------------------------------------------- HTTP heads


class HeadConn(asyncio.Protocol):
    """One connection of the ``headers`` or ``slowloris`` attack: it writes
    what its attack tells it to and keeps the start of whatever comes back,
    and when it came (the kernel's receive time: a busy attacker reads late)."""

    def __init__(self, attack: HeadAttack, slot: int) -> None:
        self.attack = attack
        self.slot = slot
        self.transport: StampedTransport | None = None
        self.answer = b""
        self.answered_at: float | None = None
        self.next_at = math.inf  # set once the first piece is written

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.answered_at is None and self.transport is not None:
            self.answered_at = self.transport.arrived_ns / 1e9
        if len(self.answer) < 64:
            self.answer += data[: 64 - len(self.answer)]

    def eof_received(self) -> bool:
        return False  # close

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.attack.lost(self, exc)

    def write(self, data: bytes) -> None:
        t = self.transport
        if t is None or t.is_closing() or t.out:  # the server is not reading: no pile-up
            return
        t.write(data)
        self.attack.outcome.bytes_sent += len(data)


class HeadAttack:
    """``--count`` connections sending a request head that never ends: an
    endless header value (``headers``) or a byte now and then (``slowloris``)."""

    def __init__(self, args: argparse.Namespace, outcome: Outcome, target: Target) -> None:
        self.args = args
        self.outcome = outcome
        self.target = target
        self.slots: list[HeadConn | None] = [None] * args.count
        self.reopen_at = [0.0] * args.count
        self.opening = 0
        self.stopping = False
        self.clock = Clock()
        host = target.host_header
        if args.role == "headers":
            self.first = b"POST %s HTTP/1.1\r\nHost: %s\r\nX-A: " % (target.path, host)
            self.piece = b"a" * args.chunk
        else:
            self.first = b"GET %s HTTP/1.1\r\nHost: %s\r\nX-Slow: " % (target.path, host)
            self.piece = b"a"

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        a = self.args
        t0 = loop.time()
        for i in range(a.count):  # first opens spread over the first second
            self.reopen_at[i] = t0 + i / max(1.0, a.open_rate)
        tick = min(0.1, a.interval / 4)
        resync_at = t0 + 1.0
        # bounded: ends when stopped (--duration, --max-seconds, stop)
        while not self.stopping:
            now = loop.time()
            if now >= resync_at:
                resync_at = now + 1.0
                self.clock.resync()
            for i, conn in enumerate(self.slots):
                if conn is None:
                    if now >= self.reopen_at[i] and self.opening < a.max_opening:
                        self.reopen_at[i] = math.inf  # until it is open or failed
                        self.opening += 1
                        loop.create_task(self._open(i))
                elif conn.transport is not None and now >= conn.next_at:
                    conn.next_at += a.interval
                    conn.write(self.piece)
            await asyncio.sleep(tick)

    async def _open(self, slot: int) -> None:
        loop = asyncio.get_running_loop()
        a = self.args
        try:
            sock, connected_at = await open_socket(
                self.target.address, self.target.source(slot), a.timeout
            )
        except (OSError, TimeoutError) as exc:
            self.outcome.open_error(exc)
            self.reopen_at[slot] = loop.time() + a.reconnect_delay
            return
        finally:
            self.opening -= 1
        if self.stopping:
            sock.close()
            return
        conn = HeadConn(self, slot)
        self.slots[slot] = conn
        self.outcome.opening(id(conn), connected_at)
        StampedTransport(loop, sock, conn, self.clock)
        conn.write(self.first)
        # spread the later writes of all the slots evenly over one interval
        conn.next_at = loop.time() + a.interval * (1 + (slot % a.count) / a.count)

    def lost(self, conn: HeadConn, exc: Exception | None) -> None:
        out = self.outcome
        if self.slots[conn.slot] is conn:
            self.slots[conn.slot] = None
        self.reopen_at[conn.slot] = asyncio.get_running_loop().time() + self.args.reconnect_delay
        by_server = not self.stopping
        if by_server:
            status = conn.answer.split(b" ", 2)
            code = (
                status[1].decode("latin-1")
                if len(status) >= 2 and status[0].startswith(b"HTTP/")
                else "none"
            )
            bump(out.statuses, code)
        out.ended(id(conn), cut_kind(exc), by_server, conn.answered_at)

    def stop(self) -> None:
        self.stopping = True
        for conn in self.slots:
            if conn is not None and conn.transport is not None:
                conn.transport.abort()


# --------------------------------------------------------------------------- WebSocket


class WsProtocol(asyncio.Protocol):
    """A client WebSocket for the attacks: the upgrade, then each text
    message's JSON array handed to ``on_messages``; pings answered, the close
    frame's code kept, pause/resume of writing honoured by its owner."""

    def __init__(
        self,
        target: Target,
        outcome: Outcome,
        on_messages: Callable[[list[Any]], None],
        on_lost: Callable[[WsProtocol, str], None],
    ) -> None:
        self.target = target
        self.outcome = outcome
        self.on_messages = on_messages
        self.on_lost = on_lost
        self.transport: Any = None
        self.key = new_key()
        self.upgraded: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.buf = b""
        self.frag: list[bytes] | None = None
        self.close_code: int | None = None
        self.paused = False
        self.resumed = asyncio.Event()
        self.resumed.set()
        self.closed_by_us = False

    def connection_made(self, transport: Any) -> None:  # uvloop's is no asyncio.Transport
        self.transport = transport
        request = upgrade_request(self.target.path, self.target.host_header, self.key)
        transport.write(request)
        self.outcome.bytes_sent += len(request)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        if not self.upgraded.done():
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf[-65536:]
                return
            why = check_upgrade_response(buf[:end], self.key)
            if why is not None:
                self.upgraded.set_exception(ConnectionError("upgrade refused: " + why))
                self._abort()
                return
            self.upgraded.set_result(None)
            buf = buf[end + 4 :]
        try:
            frames, self.buf = split_frames(buf)
        except FrameError:
            self.buf = b""
            self._abort()
            return
        for first, payload in frames:
            opcode = first & 0x0F
            if opcode == OP_PING:
                self.write(client_frame(OP_PONG, payload))
            elif opcode == OP_CLOSE:
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self._abort()
                return
            elif opcode == OP_TEXT or (opcode == OP_CONT and self.frag is not None):
                if not first & 0x80:
                    self.frag = [*(self.frag or []), payload]
                    continue
                if self.frag is not None:
                    payload, self.frag = b"".join([*self.frag, payload]), None
                try:
                    messages = orjson.loads(payload)
                except orjson.JSONDecodeError:
                    bump(self.outcome.errors, "bad_json")
                    continue
                self.on_messages(messages if isinstance(messages, list) else [messages])

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.resumed.set()
        if not self.upgraded.done():
            self.upgraded.set_exception(ConnectionError("closed before the upgrade"))
        if self.close_code is not None:
            bump(self.outcome.close_codes, str(self.close_code))
            how = f"close_{self.close_code}"
        else:
            how = cut_kind(exc)
        self.on_lost(self, how)

    def pause_writing(self) -> None:
        self.paused = True
        self.resumed.clear()

    def resume_writing(self) -> None:
        self.paused = False
        self.resumed.set()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
            self.outcome.bytes_sent += len(data)

    def send(self, messages: list[dict[str, Any]]) -> None:
        self.write(client_frame(OP_TEXT, orjson.dumps(messages)))

    def close(self) -> None:
        self.closed_by_us = True
        self._abort()


class WsAttack:
    """The base of the WebSocket attacks on one socket: open it (again after
    a cut, ``--reconnect-delay`` later), count its cut, record Bayeux errors."""

    def __init__(self, args: argparse.Namespace, outcome: Outcome, target: Target) -> None:
        self.args = args
        self.outcome = outcome
        self.target = target
        self.ws: WsProtocol | None = None
        self.stopping = False
        self.done = False
        self.lost_event = asyncio.Event()
        self.next_id = 0
        #: Requests sent and not answered yet on the current socket (--window).
        self.outstanding = 0
        self.answered = asyncio.Event()

    def msg_id(self, prefix: str) -> str:
        self.next_id += 1
        return f"{prefix}{self.next_id}"

    async def open(self) -> WsProtocol | None:
        loop = asyncio.get_running_loop()
        try:
            sock, connected_at = await open_socket(
                self.target.address, self.target.source(0), self.args.timeout
            )
            ws = WsProtocol(self.target, self.outcome, self.on_messages, self.on_lost)
            await loop.create_connection(lambda: ws, sock=sock)
            self.outcome.opening(id(ws), connected_at)
            await asyncio.wait_for(asyncio.shield(ws.upgraded), EXCHANGE_TIMEOUT)
        except (OSError, TimeoutError, ConnectionError) as exc:
            self.outcome.open_error(exc)
            return None
        self.ws = ws
        self.lost_event.clear()
        return ws

    def on_lost(self, ws: WsProtocol, how: str) -> None:
        self.outcome.ended(id(ws), how, by_server=not (self.stopping or ws.closed_by_us))
        if ws is self.ws:
            self.ws = None
            self.lost_event.set()
        self.connection_lost()

    #: What the windowed requests are called in the counters.
    kind = "requests"

    async def send_windowed(
        self, ws: WsProtocol, total: int, make: Callable[[], dict[str, Any]]
    ) -> int:
        """Send up to ``total`` requests (one frame each, ``make()`` builds
        one), at most ``--window`` unanswered; how many were sent."""
        sent = 0
        # bounded: at most `total` requests; each round sends some or waits 0.5 s
        while not self.stopping and self.ws is ws and sent < total:
            room = min(self.args.window - self.outstanding, total - sent, 500)
            if room > 0 and not ws.paused:
                ws.write(
                    b"".join(client_frame(OP_TEXT, orjson.dumps([make()])) for _ in range(room))
                )
                sent += room
                self.outstanding += room
                self.outcome.count(f"{self.kind}_sent", room)
            self.answered.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.answered.wait(), 0.5)
        return sent

    def answered_one(self, ok: bool) -> None:
        self.outstanding = max(0, self.outstanding - 1)
        self.outcome.count(f"{self.kind}_ok" if ok else f"{self.kind}_refused")

    def connection_lost(self) -> None:
        """The socket is gone: its unanswered requests are counted."""
        if self.outstanding:
            state = "in_flight_at_stop" if self.stopping else "unanswered"
            self.outcome.count(f"{self.kind}_{state}", self.outstanding)
            self.outstanding = 0
        self.answered.set()

    def on_messages(self, messages: list[Any]) -> None:
        raise NotImplementedError

    def reply(self, m: Any) -> tuple[str, bool] | None:
        """(id, successful) of a reply, its error counted; None for anything else."""
        if type(m) is not dict or "successful" not in m:
            return None
        ok = m.get("successful") is True
        if not ok:
            bump(self.outcome.errors, error_kind(m.get("error", "no_error")))
        return str(m.get("id")), ok

    async def run(self) -> None:
        # bounded: ends when stopped or done; each round waits for the socket's end
        while not self.stopping and not self.done:
            ws = await self.open()
            if ws is not None:
                await self.attack(ws)
            if self.stopping or self.done:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped(), self.args.reconnect_delay)

    async def _stopped(self) -> None:
        while not self.stopping:
            await asyncio.sleep(0.05)

    async def attack(self, ws: WsProtocol) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self.stopping = True
        if self.ws is not None:
            self.ws.close()


def handshake_message(msg_id: str) -> dict[str, Any]:
    return {
        "channel": "/meta/handshake",
        "version": "1.0",
        "supportedConnectionTypes": ["websocket"],
        "id": msg_id,
    }


class HandshakeFlood(WsAttack):
    """``--count`` handshakes on one WebSocket, ``--window`` unanswered at most."""

    kind = "handshakes"

    def __init__(self, args: argparse.Namespace, outcome: Outcome, target: Target) -> None:
        super().__init__(args, outcome, target)
        self.sent = 0

    async def attack(self, ws: WsProtocol) -> None:
        self.outcome.count("sockets_used")
        self.sent += await self.send_windowed(
            ws, self.args.count - self.sent, lambda: handshake_message(self.msg_id("h"))
        )
        if self.sent >= self.args.count:
            # the last replies, bounded
            deadline = time.monotonic() + EXCHANGE_TIMEOUT
            while self.outstanding > 0 and self.ws is ws and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if self.outstanding:
                self.outcome.count("handshakes_unanswered", self.outstanding)
                self.outstanding = 0
            self.done = True

    def on_messages(self, messages: list[Any]) -> None:
        for m in messages:
            if type(m) is dict and m.get("channel") == "/meta/handshake":
                r = self.reply(m)
                if r is not None:
                    self.answered_one(r[1])
        self.answered.set()


class PublishFlood(WsAttack):
    """``--sessions`` handshakes on one WebSocket, then publishes from every
    session obtained, round robin, ``--window`` unanswered at most."""

    kind = "publishes"

    def __init__(self, args: argparse.Namespace, outcome: Outcome, target: Target) -> None:
        super().__init__(args, outcome, target)
        self.sessions: list[str] = []
        self.pending_handshakes = 0
        self.published = 0
        #: The session of each connect in flight (a reply need not carry it).
        self.connecting: dict[str, str] = {}

    async def attack(self, ws: WsProtocol) -> None:
        a = self.args
        out = self.outcome
        out.count("sockets_used")
        self.sessions = []
        self.connecting = {}
        frames = [
            client_frame(OP_TEXT, orjson.dumps([handshake_message(self.msg_id("h"))]))
            for _ in range(a.sessions)
        ]
        self.pending_handshakes = a.sessions
        ws.write(b"".join(frames))
        out.count("handshakes_sent", a.sessions)
        deadline = time.monotonic() + EXCHANGE_TIMEOUT
        # bounded by the deadline
        while self.pending_handshakes > 0 and self.ws is ws and time.monotonic() < deadline:
            if self.stopping:
                return
            await asyncio.sleep(0.05)
        if not self.sessions:
            out.count("rounds_without_session")
            ws.close()
            return
        for cid in self.sessions:  # each session keeps a connect going
            self._connect(ws, cid, first=True)
        self.published += await self.send_windowed(ws, a.count - self.published, self._publish)
        if self.published >= a.count:
            self.done = True

    def _publish(self) -> dict[str, Any]:
        n = self.next_id
        return {
            "channel": self.args.channel,
            "clientId": self.sessions[n % len(self.sessions)],
            "data": {"n": n},
            "id": self.msg_id("p"),
        }

    def _connect(self, ws: WsProtocol, cid: str, first: bool) -> None:
        msg: dict[str, Any] = {
            "channel": "/meta/connect",
            "clientId": cid,
            "connectionType": "websocket",
            "id": self.msg_id("c"),
        }
        if first:
            msg["advice"] = {"timeout": 0}
        self.connecting[msg["id"]] = cid
        ws.send([msg])

    def on_messages(self, messages: list[Any]) -> None:
        out = self.outcome
        for m in messages:
            r = self.reply(m)
            if r is None:
                continue
            mid, ok = r
            channel = m.get("channel")
            if channel == "/meta/handshake":
                self.pending_handshakes = max(0, self.pending_handshakes - 1)
                out.count("handshakes_ok" if ok else "handshakes_refused")
                if ok and type(m.get("clientId")) is str:
                    self.sessions.append(m["clientId"])
            elif channel == "/meta/connect":
                out.count("connects_ok" if ok else "connects_failed")
                cid = self.connecting.pop(mid, None)
                if ok and self.ws is not None and cid in self.sessions:
                    self._connect(self.ws, cid, first=False)
            elif mid.startswith("p"):
                self.answered_one(ok)
        self.answered.set()

    def connection_lost(self) -> None:
        super().connection_lost()
        self.pending_handshakes = 0


# --------------------------------------------------------------------------- non-readers


class NonReaders:
    """``--count`` WebSocket subscribers that stop reading after their connect."""

    PING = client_frame(OP_PING, b"")

    def __init__(self, args: argparse.Namespace, outcome: Outcome, target: Target) -> None:
        self.args = args
        self.outcome = outcome
        self.target = target
        self.stopping = False
        self.socks: set[socket.socket] = set()

    async def run(self) -> None:
        await asyncio.gather(*(self.slot(i) for i in range(self.args.count)))

    async def slot(self, i: int) -> None:
        a = self.args
        await asyncio.sleep(i / max(1.0, a.open_rate))
        # bounded: ends when stopped
        while not self.stopping:
            await self.one(i)
            if not self.stopping:
                await asyncio.sleep(a.reconnect_delay)

    async def one(self, i: int) -> None:
        out = self.outcome
        loop = asyncio.get_running_loop()
        try:
            sock, connected_at = await open_socket(
                self.target.address, self.target.source(i), self.args.timeout, self.args.rcvbuf
            )
        except (OSError, TimeoutError) as exc:
            out.open_error(exc)
            return
        key = id(sock)
        self.socks.add(sock)
        out.opening(key, connected_at)
        try:
            try:
                await asyncio.wait_for(self._subscribe(loop, sock), EXCHANGE_TIMEOUT * 2)
            except (OSError, TimeoutError, ConnectionError, FrameError, ValueError) as exc:
                out.count("setup_failed")
                bump(out.errors, "setup:" + (str(exc) or type(exc).__name__)[:50])
                out.ended(key, cut_kind(exc if isinstance(exc, OSError) else None), False)
                return
            out.count("subscribed")
            out.restart_clock(key)  # from here on it never reads
            # bounded: ends with the cut or when stopped
            while not self.stopping:
                await asyncio.sleep(1.0)
                how = self._probe(sock)
                if how is not None:
                    out.ended(key, how, by_server=not self.stopping)
                    return
        finally:
            self.socks.discard(sock)
            out.live.pop(key, None)
            sock.close()

    def _probe(self, sock: socket.socket) -> str | None:
        """None while the server keeps the socket; else how it ended."""
        try:
            sock.send(self.PING)
            self.outcome.bytes_sent += len(self.PING)
        except BlockingIOError:
            pass  # our own send buffer is full: the server is not reading either
        except OSError as exc:
            return cut_kind(exc)
        state = tcp_state(sock)
        if state is not None and state != TCP_ESTABLISHED:
            return "eof" if state == 8 else f"tcp_state_{state}"  # 8: CLOSE_WAIT
        return None

    async def _subscribe(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        """Upgrade, handshake, subscribe (each reply read), then the connect
        that is never read."""
        t = self.target
        key = new_key()
        await loop.sock_sendall(sock, upgrade_request(t.path, t.host_header, key))
        buf = b""
        # bounded by the caller's wait_for
        while b"\r\n\r\n" not in buf:
            data = await loop.sock_recv(sock, 65536)
            if not data:
                raise ConnectionError("closed during the upgrade")
            buf += data
        head, _, buf = buf.partition(b"\r\n\r\n")
        why = check_upgrade_response(head, key)
        if why is not None:
            raise ConnectionError("upgrade refused: " + why)

        async def call(message: dict[str, Any]) -> dict[str, Any]:
            nonlocal buf
            await loop.sock_sendall(sock, client_frame(OP_TEXT, orjson.dumps([message])))
            # bounded by the caller's wait_for
            while True:
                frames, buf = split_frames(buf)
                for first, payload in frames:
                    if first & 0x0F == OP_CLOSE:
                        raise ConnectionError("closed by the server")
                    if first & 0x0F != OP_TEXT:
                        continue
                    for m in orjson.loads(payload):
                        if type(m) is dict and m.get("id") == message["id"]:
                            if m.get("successful") is not True:
                                bump(self.outcome.errors, error_kind(m.get("error")))
                                raise ConnectionError(f"{message['channel']} refused")
                            return m
                data = await loop.sock_recv(sock, 65536)
                if not data:
                    raise ConnectionError("closed by the server")
                buf += data

        reply = await call(handshake_message("1"))
        cid = reply.get("clientId")
        await call(
            {
                "channel": "/meta/subscribe",
                "clientId": cid,
                "subscription": self.args.channel,
                "id": "2",
            }
        )
        connect = {
            "channel": "/meta/connect",
            "clientId": cid,
            "connectionType": "websocket",
            "advice": {"timeout": 0},
            "id": "3",
        }
        await loop.sock_sendall(sock, client_frame(OP_TEXT, orjson.dumps([connect])))
        connect = {**connect, "id": "4"}
        del connect["advice"]
        await loop.sock_sendall(sock, client_frame(OP_TEXT, orjson.dumps([connect])))

    def stop(self) -> None:
        self.stopping = True


# --------------------------------------------------------------------------- newcomers


class Newcomers:
    """Not an attack: a new client every ``--interval`` s (open loop, at most
    ``--window`` at once) opens a connection and handshakes over HTTP, as a
    page that loads now would; how long until its reply (``handshake_s``)."""

    def __init__(self, args: argparse.Namespace, outcome: Outcome, target: Target) -> None:
        self.args = args
        self.outcome = outcome
        self.target = target
        self.stopping = False
        self.body = orjson.dumps(
            [{**handshake_message("1"), "supportedConnectionTypes": ["long-polling"]}]
        )

    async def run(self) -> None:
        tasks: set[asyncio.Task[None]] = set()
        i = 0
        # bounded: ends when stopped
        while not self.stopping:
            if len(tasks) < self.args.window:
                task = asyncio.create_task(self.one(i))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                i += 1
            else:
                self.outcome.count("newcomers_skipped")
            await asyncio.sleep(self.args.interval)
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def one(self, i: int) -> None:
        out = self.outcome
        t = self.target
        conn = publisher.HttpConn(t.address[0], t.address[1], t.source(i), t.host_header)
        out.count("newcomers")
        started = time.monotonic()
        try:
            status, _, body = await conn.request(
                t.path.rstrip(b"/") + b"/handshake", self.body, None, EXCHANGE_TIMEOUT
            )
            replies = publisher._replies(status, body)
            if any(m.get("successful") is True for m in replies):
                out.count("newcomers_ok")
                out.sample("handshake", time.monotonic() - started)
            else:
                out.count("newcomers_refused")
                for m in replies:
                    bump(out.errors, error_kind(m.get("error")))
        except TimeoutError:
            out.count("newcomers_timed_out")
        except (publisher.ProtocolError, OSError, orjson.JSONDecodeError) as exc:
            out.count("newcomers_failed")
            bump(out.errors, (str(exc) or type(exc).__name__)[:60])
        finally:
            conn.close()

    def stop(self) -> None:
        self.stopping = True


# --------------------------------------------------------------------------- canary


class CanaryWs(publisher.WsConn):
    """The publisher's WebSocket, handing events (not replies) to ``on_event``."""

    on_event: Callable[[dict[str, Any]], None] | None = None

    def _dispatch(self, messages: Any) -> None:
        if isinstance(messages, dict):
            messages = [messages]
        rest = []
        for m in messages:
            if type(m) is dict and "successful" not in m and "data" in m:
                if self.on_event is not None:
                    self.on_event(m)
            else:
                rest.append(m)
        super()._dispatch(rest)


class Canary(publisher.Publisher):
    """publisher.py's client, subscribed to the channel it publishes to: every
    message it got acknowledged must come back to it (``lost`` otherwise)."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.seq_of: dict[str, int] = {}
        self.acked_seqs: set[int] = set()
        self.received_seqs: set[int] = set()
        self.duplicates = 0
        # Publish stamp -> this client read the event (no kernel stamps here).
        self.latency = Latency()
        self.subscribes = 0

    async def open(self) -> None:
        if self.transport != "websocket":
            await super().open()
            return
        a = self.args
        if self.ws is not None:
            self.ws.close()
        ws = CanaryWs(self.host, self.port, a.source_addr, self.host_header, self.base.encode())
        ws.on_reply = self._on_publish_reply
        ws.on_event = self._on_event
        self.ws = ws
        await ws.open(EXCHANGE_TIMEOUT)

    async def handshake(self) -> None:
        await super().handshake()
        reply = await self.exchange(
            "subscribe",
            {
                "channel": "/meta/subscribe",
                "clientId": self.client_id,
                "subscription": self.args.channel,
                "id": self._id(),
            },
            EXCHANGE_TIMEOUT,
            self.connect_conn,
        )
        if reply.get("successful") is not True:
            raise publisher.ProtocolError("subscribe_unsuccessful: " + str(reply.get("error")))
        self.subscribes += 1

    async def exchange(
        self,
        kind: str,
        message: dict[str, Any],
        timeout: float,
        conn: publisher.HttpConn | None = None,
    ) -> dict[str, Any]:
        if self.transport == "websocket":
            return await super().exchange(kind, message, timeout, conn)
        # long-polling: events ride on connect (and other) replies
        assert conn is not None
        path = (self.base + ("/" + kind if kind in ("handshake", "connect") else "/")).encode()
        status, headers, body = await conn.request(
            path, orjson.dumps([message]), self.cookie, timeout
        )
        for name, value in headers:
            if name == b"set-cookie":
                self._set_cookie(value)
        found = None
        for m in publisher._replies(status, body):
            if "successful" not in m and "data" in m:
                self._on_event(m)
            elif m.get("id") == message["id"]:
                found = m
        if found is None:
            raise publisher.ProtocolError("no_reply")
        return found

    def _message(self, seq: int, due: float) -> dict[str, Any]:
        msg = super()._message(seq, due)
        self.seq_of[msg["id"]] = seq
        return msg

    def _on_publish_reply(self, reply: dict[str, Any]) -> None:
        if "successful" not in reply and "data" in reply:
            self._on_event(reply)  # long-polling: piggy-backed on a publish reply
        else:
            super()._on_publish_reply(reply)

    def _count_reply(self, reply: dict[str, Any], sent_ns: int) -> None:
        super()._count_reply(reply, sent_ns)
        seq = self.seq_of.pop(str(reply.get("id")), None)
        if reply.get("successful") is True and seq is not None:
            self.acked_seqs.add(seq)

    def _on_event(self, m: dict[str, Any]) -> None:
        data = m.get("data")
        if m.get("channel") != self.args.channel or type(data) is not dict:
            return
        seq, t = data.get("seq"), data.get("t")
        if type(seq) is not int:
            return
        if seq in self.received_seqs:
            self.duplicates += 1
            return
        self.received_seqs.add(seq)
        if type(t) is int:
            self.latency.record_ns(time.monotonic_ns() - t)

    def summary(self) -> dict[str, Any]:
        d = super().summary()
        d.update(
            role="canary",
            subscribes=self.subscribes,
            received=len(self.received_seqs),
            lost=len(self.acked_seqs - self.received_seqs),
            duplicates=self.duplicates,
            latency_at="read",
            latency_ms=summary_with_hist(self.latency),
        )
        return d


# --------------------------------------------------------------------------- main

ROLES: dict[str, Any] = {
    "headers": HeadAttack,
    "slowloris": HeadAttack,
    "nonreader": NonReaders,
    "handshakes": HandshakeFlood,
    "flood": PublishFlood,
    "newcomers": Newcomers,
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hostile_workers.py",
        description="One attack of bench/hostile.py (see the module docstring); "
        "'canary ...' takes bench/publisher.py's options.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("role", choices=sorted(ROLES))
    p.add_argument("--url", required=True, help="server URL, e.g. http://127.0.0.1:8080/cometd")
    p.add_argument("--count", type=int, default=10, help="connections, handshakes or publishes")
    p.add_argument("--source-addrs", default="127.0.0.1", help="comma-separated 127.x.y.z")
    p.add_argument("--interval", type=float, default=1.0, help="s between writes (heads)")
    p.add_argument("--chunk", type=int, default=4096, help="bytes per write (headers)")
    p.add_argument("--reconnect-delay", type=float, default=1.0, help="s before reopening")
    p.add_argument("--open-rate", type=float, default=1000.0, help="first opens per second")
    p.add_argument("--max-opening", type=int, default=200, help="connections opening at once")
    p.add_argument("--rcvbuf", type=int, default=4096, help="SO_RCVBUF (nonreader)")
    p.add_argument("--channel", default="/hostile/stream", help="subscribed or published to")
    p.add_argument("--window", type=int, default=1000, help="unanswered requests at most")
    p.add_argument("--sessions", type=int, default=100, help="handshakes before flooding")
    p.add_argument("--timeout", type=float, default=10.0, help="TCP connect time-out, s")
    p.add_argument("--duration", type=float, default=60.0, help="attack for this long, s")
    p.add_argument("--max-seconds", type=float, default=600.0, help="hard bound on the run, s")
    p.add_argument("--report-interval", type=float, default=1.0, help="s between reports")
    return p


async def run(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    outcome = Outcome(args.role)
    target = Target(args.url, [s for s in args.source_addrs.split(",") if s])
    attack = ROLES[args.role](args, outcome, target)
    stopped = asyncio.Event()

    def stop() -> None:
        attack.stop()
        stopped.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)

    def on_word(word: bytes) -> None:
        if word == b"stop":
            stop()

    publisher.watch_stdin(loop, on_word, stop)
    loop.call_later(min(args.duration, args.max_seconds), stop)
    task = loop.create_task(attack.run())

    async def reports() -> None:
        # bounded: ends when stopped
        while not stopped.is_set():
            emit(outcome.snapshot())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopped.wait(), args.report_interval)

    reporter = loop.create_task(reports())
    waiter = loop.create_task(stopped.wait())
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if task.done() and not stopped.is_set():  # finished early (all answered) or failed
        exc = task.exception()
        if exc is not None:  # report it, keep the figures so far
            sys.stderr.write(f"hostile_workers {args.role}: {exc!r}\n")
            bump(outcome.errors, "worker:" + type(exc).__name__)
        emit({**outcome.snapshot(), "attack_done": True})
        await waiter
    task.cancel()
    await asyncio.gather(task, reporter, return_exceptions=True)
    await asyncio.sleep(0.1)  # let the transports close
    emit(outcome.snapshot(final=True))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["canary"]:
        return publisher.main(argv[1:], publisher_class=Canary)
    args = build_parser().parse_args(argv)
    if args.count < 0 or args.interval <= 0 or args.window <= 0:
        raise SystemExit("hostile_workers: --count >= 0, --interval > 0 and --window > 0")
    if not all(s.startswith("127.") for s in args.source_addrs.split(",") if s):
        raise SystemExit("hostile_workers: loopback source addresses only")
    return uvloop.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
