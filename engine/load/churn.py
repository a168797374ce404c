#!/usr/bin/env python3
"""Churn scenario: reconnect storms over long-polling.

C clients, spread over ``--procs`` load-generator processes, loop for
``--duration`` seconds, each cycle being what a browser does on a page load:

    open a TCP connection (keep-alive for the cycle), from 127.0.0.x
    POST <path>/handshake   -> clientId (the BAYEUX_BROWSER cookie is kept per client)
    POST <path>/            /meta/subscribe to /bench/churn/<k>
    POST <path>/connect     first /meta/connect, advice {"timeout": 0} (answered at once)
    POST <path>/disconnect  /meta/disconnect       (or, for --abandon of the cycles, nothing:
                                                    the session must expire on its own)
    close the connection    (--reuse-connection keeps it for the next cycle)

It reports handshakes and cycles per second, errors by kind, handshake and cycle
latency, server CPU per handshake, and, for leaks, the server's RSS and its
``/stats`` session count: at the start, at the end of each storm and after the
storm settles (every session disconnected or expired). With ``--rounds 2`` or
more, the RSS after each settled round shows whether memory keeps growing with
the number of sessions ever created (a leak) or plateaus (allocator reuse).

The server is started as ``python -m engine serve ... --admin-token T
--max-interval MS`` (``/stats`` needs the token; a short max-interval lets
abandoned sessions expire within the run).

This module also holds the lean HTTP/1.1 client and the load-generator worker
that ``bench/bound.py`` uses (``--worker SPEC``, internal).

Exit status: 0 when the run completed (with --check: no errors and 0 sessions
after the last settle), 1 when it could not run, 2 when --check failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import secrets
import socket
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from engine.load.histogram import Latency, summary_with_hist
from engine.load.procs import (
    DEFAULT_SERVER_CMD,
    ChildGuard,
    LineChild,
    RunError,
    ServerProcess,
    free_port,
    process_tree,
    read_rss_bytes,
    source_addresses,
    split_clients,
    tree_cpu_seconds,
    tree_rss_bytes,
)
from engine.load.records import (
    PEERS,
    add_results_dir_arg,
    format_table,
    human_bytes,
    log,
    na,
    ratio,
    run_scenario,
    save_and_print,
    shell_join,
)

SCENARIO = "churn"
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
MAX_HEAD = 65536
#: The worker's histograms (engine/load/histogram.py), encoded in its snapshots.
HISTS = ("hs_hist", "cycle_hist")


# =========================================================================== client


class ClientError(Exception):
    """One failed exchange; ``kind`` is the key it is counted under."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


class Stats:
    """Counters of one worker process (plain ints: cheap to bump)."""

    __slots__ = (
        "responses",
        "handshakes",
        "subscribes",
        "connects",
        "disconnects",
        "abandoned",
        "cycles",
        "tcp_opens",
        "errors",
        "hs_hist",
        "cycle_hist",
    )

    def __init__(self) -> None:
        self.responses = 0
        self.handshakes = 0
        self.subscribes = 0
        self.connects = 0
        self.disconnects = 0
        self.abandoned = 0
        self.cycles = 0
        self.tcp_opens = 0
        self.errors: dict[str, int] = {}
        self.hs_hist = Latency()
        self.cycle_hist = Latency()

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        return {
            "responses": self.responses,
            "handshakes": self.handshakes,
            "subscribes": self.subscribes,
            "connects": self.connects,
            "disconnects": self.disconnects,
            "abandoned": self.abandoned,
            "cycles": self.cycles,
            "tcp_opens": self.tcp_opens,
            "errors": dict(self.errors),
            "hs_hist": self.hs_hist.encode(),
            "cycle_hist": self.cycle_hist.encode(),
        }


class HttpConn(asyncio.Protocol):
    """A lean HTTP/1.1 keep-alive client connection (one request at a time).

    Two ways to use it:

    * ``await conn.request(data)`` -> ``(status, head, body)``; a sweep of the
      worker fails requests older than their deadline (no timer per request);
    * loop mode (``start_loop``): every complete 200 response whose body holds
      ``"successful":true`` is answered at once by the same request bytes and
      counted; anything else leaves loop mode and calls ``on_loop_failure``.

    Responses must carry ``Content-Length`` (the engine and the bound server
    always do). Only what the bench needs is parsed: status, header block, body.
    """

    __slots__ = (
        "transport",
        "buf",
        "waiter",
        "deadline",
        "stats",
        "loop_req",
        "on_loop_failure",
        "closed",
        "lost",
        "last",
    )

    def __init__(self, stats: Stats) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.waiter: asyncio.Future[tuple[int, bytes, bytes]] | None = None
        self.deadline = 0.0
        self.stats = stats
        self.loop_req: bytes | None = None
        self.on_loop_failure: Any = None
        self.closed = False
        self.lost: asyncio.Future[None] | None = None
        self.last = b""  # loop mode: the last whole, checked response read alone

    # -- asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        w = self.waiter
        if w is not None and not w.done():
            w.set_exception(ClientError("closed_in_flight" if exc is None else "tcp_error"))
        self.waiter = None
        if self.loop_req is not None:
            self._leave_loop("closed_in_flight", b"")
        if self.lost is not None and not self.lost.done():
            self.lost.set_result(None)

    def data_received(self, data: bytes) -> None:
        req = self.loop_req
        if req is not None and data == self.last and not self.buf:
            # Byte for byte the previous response, which passed every check
            # below: count it and loop (a memcmp instead of a parse).
            self.stats.responses += 1
            self.transport.write(req)  # type: ignore[union-attr]
            return
        buf = self.buf + data if self.buf else data
        while True:
            hend = buf.find(b"\r\n\r\n")
            if hend < 0:
                if len(buf) > MAX_HEAD:
                    self._protocol_error("head_too_large")
                    return
                break
            i = buf.find(b"\r\nContent-Length: ", 0, hend)
            if i >= 0:
                j = i + 18
            else:
                i = buf[:hend].lower().find(b"\r\ncontent-length:")
                if i < 0:
                    self._protocol_error("no_content_length")
                    return
                j = i + 17
            k = buf.find(b"\r\n", j, hend + 2)
            try:
                length = int(buf[j : k if 0 <= k < hend else hend])
                status = int(buf[9:12])
            except ValueError:
                self._protocol_error("bad_response")
                return
            end = hend + 4 + length
            if len(buf) < end:
                break
            self.stats.responses += 1
            req = self.loop_req
            if req is not None:
                if status == 200 and buf.find(b'"successful":true', hend, end) >= 0:
                    self.last = data if end == len(buf) == len(data) else b""
                    self.transport.write(req)  # type: ignore[union-attr]
                else:
                    kind = "unsuccessful" if status == 200 else f"http_{status}"
                    self._leave_loop(kind, buf[hend + 4 : end])
            else:
                w = self.waiter
                self.waiter = None
                if w is not None and not w.done():
                    w.set_result((status, buf[:hend], buf[hend + 4 : end]))
                else:
                    self.stats.error("unexpected_response")
            buf = buf[end:]
            if self.transport is None:
                return
        self.buf = buf

    # -- use
    def request(self, data: bytes, timeout: float) -> asyncio.Future[tuple[int, bytes, bytes]]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[tuple[int, bytes, bytes]] = loop.create_future()
        if self.transport is None or self.closed:
            fut.set_exception(ClientError("closed_idle"))
            return fut
        self.waiter = fut
        self.deadline = time.monotonic() + timeout
        self.transport.write(data)
        return fut

    def start_loop(self, req: bytes, on_failure: Any) -> None:
        self.loop_req = req
        self.on_loop_failure = on_failure
        self.deadline = 0.0
        if self.transport is not None:
            self.transport.write(req)

    def stop_loop(self) -> None:
        self.loop_req = None

    def _leave_loop(self, kind: str, body: bytes) -> None:
        self.loop_req = None
        cb, self.on_loop_failure = self.on_loop_failure, None
        if cb is not None:
            cb(self, kind, body)

    def _protocol_error(self, kind: str) -> None:
        self.stats.error(kind)
        self.close()

    def expire(self, now: float) -> None:
        w = self.waiter
        if w is not None and self.deadline and now > self.deadline and not w.done():
            self.waiter = None
            w.set_exception(ClientError("timeout"))
            self.close()

    def close(self) -> None:
        t = self.transport
        if t is not None and not t.is_closing():
            t.close()


async def open_conn(
    host: str, port: int, source: str | None, stats: Stats, timeout: float
) -> HttpConn:
    """A connected HttpConn from ``source`` (IP_BIND_ADDRESS_NO_PORT before bind)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if source:
            sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((source, 0))
        await asyncio.wait_for(loop.sock_connect(sock, (host, port)), timeout)
        conn = HttpConn(stats)
        await loop.create_connection(lambda: conn, sock=sock)
    except (OSError, TimeoutError) as exc:
        sock.close()
        kind = "tcp_timeout" if isinstance(exc, TimeoutError) else "tcp_connect"
        raise ClientError(kind, str(exc)) from None
    stats.tcp_opens += 1
    return conn


class Requests:
    """Prebuilt request bytes for one server URL."""

    def __init__(self, url: str) -> None:
        u = urlsplit(url)
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or 80
        self.path = (u.path or "/cometd").rstrip("/") or ""
        self.hostport = f"{self.host}:{self.port}".encode()

    def post(self, suffix: str, body: bytes, cookie: str | None) -> bytes:
        head = (
            b"POST %s%s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json;charset=UTF-8\r\n"
            % ((self.path or "").encode(), suffix.encode(), self.hostport)
        )
        if cookie:
            head += b"Cookie: BAYEUX_BROWSER=%s\r\n" % cookie.encode()
        return head + b"Content-Length: %d\r\n\r\n" % len(body) + body

    def handshake(self, cookie: str | None, mid: int) -> bytes:
        body = (
            b'[{"channel":"/meta/handshake","version":"1.0","minimumVersion":"1.0",'
            b'"supportedConnectionTypes":["long-polling"],"id":"%d"}]' % mid
        )
        return self.post("/handshake", body, cookie)

    def subscribe(self, cookie: str | None, client_id: str, channel: str, mid: int) -> bytes:
        body = b'[{"channel":"/meta/subscribe","subscription":"%s","clientId":"%s","id":"%d"}]' % (
            channel.encode(),
            client_id.encode(),
            mid,
        )
        return self.post("/", body, cookie)

    def connect(self, cookie: str | None, client_id: str, mid: int) -> bytes:
        body = (
            b'[{"channel":"/meta/connect","connectionType":"long-polling","clientId":"%s",'
            b'"advice":{"timeout":0},"id":"%d"}]' % (client_id.encode(), mid)
        )
        return self.post("/connect", body, cookie)

    def disconnect(self, cookie: str | None, client_id: str, mid: int) -> bytes:
        body = b'[{"channel":"/meta/disconnect","clientId":"%s","id":"%d"}]' % (
            client_id.encode(),
            mid,
        )
        return self.post("/disconnect", body, cookie)


def _reply(status: int, body: bytes, what: str) -> dict[str, Any]:
    """The first message of a Bayeux reply; ClientError unless successful."""
    if status != 200:
        raise ClientError(f"{what}_http_{status}")
    try:
        messages = orjson.loads(body)
        msg = messages[0]
    except (ValueError, IndexError, TypeError, KeyError):
        raise ClientError(f"{what}_bad_json") from None
    if not isinstance(msg, dict):
        raise ClientError(f"{what}_bad_json")
    if msg.get("successful") is not True:
        err = str(msg.get("error") or "unsuccessful")
        code = err.split(":", 1)[0]
        raise ClientError(f"{what}_failed_{code}", err)
    return msg


def _cookie(head: bytes) -> str | None:
    i = head.find(b"BAYEUX_BROWSER=")
    if i < 0:
        return None
    j = i + 15
    k = j
    while k < len(head) and head[k : k + 1] not in (b";", b"\r", b"\n", b" "):
        k += 1
    return head[j:k].decode("ascii", "replace") or None


# =========================================================================== worker


class Worker:
    """One load-generator process: churn clients, or connect/bound loops."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.mode: str = spec["mode"]
        self.req = Requests(spec["url"])
        self.stats = Stats()
        self.conns: set[HttpConn] = set()
        self.stopping = False
        self.timeout = float(spec.get("request_timeout", 10.0))
        self.sources: list[str] = spec.get("source_addrs") or ["127.0.0.1"]
        self.rng = random.Random(spec.get("seed", 0) + spec.get("index_start", 0))
        self.ready_clients = 0
        self.loopers: list[tuple[HttpConn, bytes]] = []
        self.window: dict[str, Any] = {}

    def out(self, obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    async def sweep(self) -> None:
        while True:  # ended by cancellation at exit
            await asyncio.sleep(0.25)
            now = time.monotonic()
            for c in list(self.conns):
                c.expire(now)

    async def _open(self, idx: int) -> HttpConn:
        conn = await open_conn(
            self.req.host,
            self.req.port,
            self.sources[idx % len(self.sources)],
            self.stats,
            self.timeout,
        )
        self.conns.add(conn)
        return conn

    def _drop(self, conn: HttpConn | None) -> None:
        if conn is not None:
            conn.close()
            self.conns.discard(conn)

    # -- churn ------------------------------------------------------------------
    async def churn_client(self, idx: int) -> None:
        sp = self.spec
        r, st = self.req, self.stats
        cookie: str | None = None
        conn: HttpConn | None = None
        mid = 0
        channel = f"{sp.get('channel', '/bench/churn')}/{idx % max(1, sp.get('channels', 16))}"
        abandon = float(sp.get("abandon", 0.0))
        while not self.stopping:
            t0 = time.perf_counter_ns()
            try:
                if conn is None or conn.closed:
                    conn = await self._open(idx)
                mid += 1
                status, head, body = await conn.request(r.handshake(cookie, mid), self.timeout)
                msg = _reply(status, body, "handshake")
                client_id = msg.get("clientId")
                if not isinstance(client_id, str):
                    raise ClientError("handshake_no_client_id")
                cookie = _cookie(head) or cookie
                st.handshakes += 1
                st.hs_hist.record_ns(time.perf_counter_ns() - t0)
                if sp.get("subscribe", True):
                    mid += 1
                    req = r.subscribe(cookie, client_id, channel, mid)
                    status, _, body = await conn.request(req, self.timeout)
                    _reply(status, body, "subscribe")
                    st.subscribes += 1
                if sp.get("connect", True):
                    mid += 1
                    req = r.connect(cookie, client_id, mid)
                    status, _, body = await conn.request(req, self.timeout)
                    _reply(status, body, "connect")
                    st.connects += 1
                if abandon and self.rng.random() < abandon:
                    st.abandoned += 1
                    self._drop(conn)
                    conn = None
                else:
                    mid += 1
                    req = r.disconnect(cookie, client_id, mid)
                    status, _, body = await conn.request(req, self.timeout)
                    _reply(status, body, "disconnect")
                    st.disconnects += 1
                    if not sp.get("reuse_connection", False):
                        self._drop(conn)
                        conn = None
                st.cycles += 1
                st.cycle_hist.record_ns(time.perf_counter_ns() - t0)
            except ClientError as exc:
                st.error(exc.kind)
                self._drop(conn)
                conn = None
                if not self.stopping:
                    await asyncio.sleep(0.05 + 0.1 * self.rng.random())
        self._drop(conn)

    # -- connect / bound loops ---------------------------------------------------
    async def setup_looper(self, idx: int) -> None:
        r = self.req
        conn = await self._open(idx)
        if self.mode == "bound":
            # Same request shape and size as the engine's connect, fake clientId.
            req = r.connect(None, "0" * 38, 1)
        else:
            status, head, body = await conn.request(r.handshake(None, 1), self.timeout)
            msg = _reply(status, body, "handshake")
            cookie = _cookie(head)
            self.stats.handshakes += 1
            req = r.connect(cookie, str(msg["clientId"]), 2)
            # The CometD client's first connect; then the measured loop.
            status, _, body = await conn.request(req, self.timeout)
            _reply(status, body, "connect")
        self.loopers.append((conn, req))

    def loop_failed(self, conn: HttpConn, kind: str, body: bytes) -> None:
        self.stats.error(kind)
        if not self.stopping:
            # Re-establish this client from scratch (rare; counted above).
            self._drop(conn)
            asyncio.get_running_loop().create_task(self._relaunch())

    async def _relaunch(self) -> None:
        await asyncio.sleep(0.1)
        if self.stopping:
            return
        try:
            await self.setup_looper(self.rng.randrange(1 << 16))
        except ClientError as exc:
            self.stats.error(exc.kind)
            return
        conn, req = self.loopers[-1]
        if not self.stopping:
            conn.start_loop(req, self.loop_failed)

    # -- phases -------------------------------------------------------------------
    async def setup(self) -> None:
        if self.mode == "churn":
            return
        n = int(self.spec["clients"])
        sem = asyncio.Semaphore(int(self.spec.get("max_pending", 100)))
        base = int(self.spec.get("index_start", 0))

        async def one(i: int) -> None:
            async with sem:
                for _attempt in range(3):
                    try:
                        await self.setup_looper(base + i)
                        return
                    except ClientError as exc:
                        self.stats.error("setup_" + exc.kind)
                        await asyncio.sleep(0.2)

        await asyncio.gather(*(one(i) for i in range(n)))

    async def run(self, warmup: float, measure: float) -> None:
        loop = asyncio.get_running_loop()
        tasks: list[asyncio.Task[None]] = []
        if self.mode == "churn":
            base = int(self.spec.get("index_start", 0))
            tasks = [
                loop.create_task(self.churn_client(base + i))
                for i in range(int(self.spec["clients"]))
            ]
        else:
            for conn, req in self.loopers:
                conn.start_loop(req, self.loop_failed)
        await asyncio.sleep(warmup)
        self.window["start"] = self._mark()
        await asyncio.sleep(measure)
        self.window["end"] = self._mark()
        self.stopping = True
        for conn, _ in self.loopers:
            conn.stop_loop()
        if tasks:
            # In-flight cycles finish (bounded by the request timeout + sweep).
            done, pending = await asyncio.wait(tasks, timeout=self.timeout + 1.0)
            for t in pending:
                t.cancel()
        for c in list(self.conns):
            c.close()
        await asyncio.sleep(0.05)

    def _mark(self) -> dict[str, Any]:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "t": time.monotonic(),
            "cpu_s": ru.ru_utime + ru.ru_stime,
            **self.stats.snapshot(),
        }


def _diff(start: dict[str, Any], end: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in end.items():
        a = start.get(k)
        if k in HISTS and isinstance(v, str) and isinstance(a, str):
            out[k] = Latency.decode(v).minus(Latency.decode(a)).encode()
        elif isinstance(v, int | float) and isinstance(a, int | float):
            out[k] = v - a
        elif isinstance(v, list) and isinstance(a, list):
            out[k] = [x - y for x, y in zip(v, a, strict=False)]
        elif isinstance(v, dict) and isinstance(a, dict):
            out[k] = {kk: vv - a.get(kk, 0) for kk, vv in v.items() if vv - a.get(kk, 0)}
    return out


async def worker_async(spec: dict[str, Any]) -> int:
    w = Worker(spec)
    loop = asyncio.get_running_loop()
    sweeper = loop.create_task(w.sweep())
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    t0 = time.monotonic()
    await asyncio.wait_for(w.setup(), float(spec.get("setup_timeout", 60.0)))
    w.out(
        {
            "type": "ready",
            "clients": len(w.loopers) if w.mode != "churn" else spec["clients"],
            "setup_s": round(time.monotonic() - t0, 3),
            "errors": dict(w.stats.errors),
        }
    )
    # bounded: the parent sends go within max_seconds, or we leave
    try:
        line = await asyncio.wait_for(reader.readline(), float(spec.get("max_seconds", 600)))
    except TimeoutError:
        line = b""
    words = line.decode().split()
    if len(words) == 3 and words[0] == "go":
        await w.run(float(words[1]), float(words[2]))
        res = _diff(w.window["start"], w.window["end"])
        res["window_s"] = round(res.pop("t"), 4)
        w.out(
            {
                "type": "result",
                "window": res,
                "total": w.stats.snapshot(),
                "rss_bytes": read_rss_bytes(os.getpid()) or 0,
            }
        )
    sweeper.cancel()
    return 0


def worker_main(spec_json: str) -> int:
    spec = json.loads(spec_json)
    cpus = spec.get("cpus")
    if cpus:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, set(cpus))
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    return asyncio.run(worker_async(spec))


# =========================================================================== parent side


class WorkerProc(LineChild):
    """A worker child process (this script, ``--worker SPEC``): ready line,
    go, result line; its stderr is kept for error reports, not echoed."""

    def __init__(self, index: int, spec: dict[str, Any]) -> None:
        super().__init__(
            [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
            f"worker {index}",
            echo=False,
        )
        self.index = index
        self.spec = spec
        self.lines: dict[str, dict[str, Any]] = {}
        self._events = {"ready": asyncio.Event(), "result": asyncio.Event()}

    def on_line(self, d: dict[str, Any]) -> None:
        kind = d.get("type")
        if isinstance(kind, str) and kind in self._events:
            self.lines[kind] = d
            self._events[kind].set()

    def on_eof(self) -> None:
        for event in self._events.values():
            event.set()

    async def _wait_line(self, kind: str, timeout: float, late: str) -> dict[str, Any]:
        """Its ``kind`` line, waited for at most ``timeout`` s; RunError when
        late (``late``) or when the worker exited without printing it."""
        try:
            await asyncio.wait_for(self._events[kind].wait(), timeout)
        except TimeoutError:
            raise RunError(f"worker {self.index} {late} within {timeout:.0f} s") from None
        line = self.lines.get(kind)
        if line is None:
            raise RunError(f"worker {self.index} died:\n" + "\n".join(self.stderr_tail))
        return line

    async def wait_ready(self, timeout: float) -> dict[str, Any]:
        return await self._wait_line("ready", timeout, "not ready")

    def go(self, warmup: float, measure: float) -> None:
        self.send(f"go {warmup} {measure}")

    async def wait_result(self, timeout: float) -> dict[str, Any]:
        return await self._wait_line("result", timeout, "gave no result")


def split_even(n: int, parts: int) -> list[tuple[int, int]]:
    """(start index, count) per worker, as even as possible, none empty."""
    return [x for x in split_clients(n, parts) if x[1] > 0]


def cpu_plan(pin: bool) -> tuple[list[int] | None, list[int] | None]:
    """(server CPUs, load-generator CPUs): the server gets the first CPU we may
    use and the generators the rest, so both sides are measured on their own cores."""
    if not pin:
        return None, None
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None, None
    if len(cpus) < 2:
        return None, None
    return cpus[:1], cpus[1:]


def pin_tree(pid: int, cpus: list[int] | None) -> None:
    """Set the CPU affinity of every thread of ``pid`` and its descendants."""
    if not cpus:
        return
    for p in process_tree(pid):
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{p}/task")]
        except OSError:
            tids = [p]
        for tid in tids:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(tid, set(cpus))


def worker_specs(
    args: argparse.Namespace, mode: str, url: str, cpus: list[int] | None, **extra: Any
) -> list[dict[str, Any]]:
    """One ``--worker`` spec per load-generator process: its share of
    --clients, the options every mode takes, then the mode's own ``extra``."""
    addrs = source_addresses(args.source_addrs)
    return [
        {
            "mode": mode,
            "url": url,
            "clients": count,
            "index_start": start,
            "source_addrs": addrs,
            "cpus": cpus,
            "request_timeout": args.request_timeout,
            **extra,
            "max_seconds": 120,
        }
        for start, count in split_even(args.clients, args.procs)
    ]


async def start_pinned(
    server: ServerProcess,
    startup_timeout: float,
    cpus: list[int] | None,
    label: str,
    progress: bool,
) -> str:
    """Start a server, pin every thread of its process tree to ``cpus`` (its
    own core, away from the generators') and say where it listens."""
    url = await server.start(startup_timeout)
    assert server.pid is not None
    pin_tree(server.pid, cpus)
    log(progress, f"{label} ready at {url} (pid {server.pid}, cpus {cpus or 'any'})")
    return url


async def run_workers(
    *,
    specs: list[dict[str, Any]],
    guard: ChildGuard,
    warmup: float,
    measure: float,
    server_pid: int | None,
    server_alive: Any,
    ready_timeout: float,
    result_timeout: float,
    on_sample: Any = None,
) -> dict[str, Any]:
    """Start workers, wait until ready, run one measured window; aggregate.

    Server CPU is read at the start and end of the window (the parent's clock;
    the workers' windows start within milliseconds of it).
    """
    workers = [WorkerProc(i, s) for i, s in enumerate(specs)]
    try:
        for w in workers:
            await w.start(guard)
        readies = await asyncio.gather(*(w.wait_ready(ready_timeout) for w in workers))
        for w in workers:
            w.go(warmup, measure)
        t_go = time.monotonic()
        await asyncio.sleep(warmup)
        cpu0 = tree_cpu_seconds(server_pid) if server_pid else None
        cores0 = read_cpu_times()
        lg0 = sum(tree_cpu_seconds(w.pid) or 0.0 for w in workers if w.pid)
        t0 = time.monotonic()
        samples = []
        # bounded by measure
        while time.monotonic() < t0 + measure:
            await asyncio.sleep(min(1.0, max(0.0, t0 + measure - time.monotonic())))
            if server_alive is not None and not server_alive():
                raise RunError("server exited during the run")
            if on_sample is not None:
                samples.append(on_sample(time.monotonic() - t0))
        cpu1 = tree_cpu_seconds(server_pid) if server_pid else None
        cores1 = read_cpu_times()
        lg1 = sum(tree_cpu_seconds(w.pid) or 0.0 for w in workers if w.pid)
        wall = time.monotonic() - t0
        results = await asyncio.gather(*(w.wait_result(result_timeout) for w in workers))
    finally:
        for w in workers:
            with contextlib.suppress(Exception):
                await w.stop(5.0, word=None)
    agg: dict[str, Any] = {"errors": {}, "hs_hist": None, "cycle_hist": None}
    setup_errors: dict[str, int] = {}
    for rd in readies:
        for k, v in (rd.get("errors") or {}).items():
            setup_errors[k] = setup_errors.get(k, 0) + v
    for res in results:
        win = res["window"]
        for k, v in win.items():
            if isinstance(v, int | float) and k != "window_s":
                agg[k] = agg.get(k, 0) + v
            elif k == "errors":
                for ek, ev in v.items():
                    agg["errors"][ek] = agg["errors"].get(ek, 0) + ev
            elif k in HISTS:
                h = Latency.decode(v)
                agg[k] = h.encode() if agg[k] is None else h.merge(Latency.decode(agg[k])).encode()
    windows = [r["window"]["window_s"] for r in results]
    agg["window_s"] = round(sum(windows) / len(windows), 4)
    agg["window_spread_s"] = round(max(windows) - min(windows), 4)
    agg["total_errors"] = {}
    for res in results:
        for k, v in (res["total"].get("errors") or {}).items():
            agg["total_errors"][k] = agg["total_errors"].get(k, 0) + v
    agg["setup_errors"] = setup_errors
    agg["clients_ready"] = sum(int(r.get("clients") or 0) for r in readies)
    agg["server_cpu_s"] = None if cpu0 is None or cpu1 is None else round(cpu1 - cpu0, 4)
    agg["parent_wall_s"] = round(wall, 4)
    agg["go_to_end_s"] = round(time.monotonic() - t_go, 3)
    agg["loadgen_cpu_tree_s"] = round(lg1 - lg0, 4)
    agg["loadgen_rss_bytes"] = sum(int(r.get("rss_bytes") or 0) for r in results)
    agg["samples"] = samples
    agg["cores"] = cpu_busy(cores0, cores1)
    return agg


def read_cpu_times() -> dict[int, tuple[int, int, int]]:
    """Per CPU (total, idle + iowait, softirq + irq) jiffies from /proc/stat.

    Loopback TCP work done in softirq context is charged to no process: the
    per-CPU view shows whether a core was really saturated.
    """
    out: dict[int, tuple[int, int, int]] = {}
    try:
        with open("/proc/stat") as f:
            for line in f:
                if not line.startswith("cpu") or line.startswith("cpu "):
                    continue
                name, *vals = line.split()
                v = [int(x) for x in vals[:8]]
                out[int(name[3:])] = (sum(v), v[3] + v[4], v[5] + v[6])
    except (OSError, ValueError):
        pass
    return out


def cpu_busy(
    a: dict[int, tuple[int, int, int]], b: dict[int, tuple[int, int, int]]
) -> dict[str, dict[str, float]]:
    """Per CPU busy % and softirq % between two read_cpu_times() readings."""
    out: dict[str, dict[str, float]] = {}
    for cpu, (t1, i1, s1) in b.items():
        t0, i0, s0 = a.get(cpu, (t1, i1, s1))
        dt = t1 - t0
        if dt > 0:
            out[str(cpu)] = {
                "busy_percent": round(100 * (1 - (i1 - i0) / dt), 1),
                "softirq_percent": round(100 * (s1 - s0) / dt, 1),
            }
    return out


def cores_mean(cores: dict[str, Any], which: list[int] | None, key: str) -> float | None:
    vals = [cores[str(c)][key] for c in (which or []) if str(c) in cores]
    return round(sum(vals) / len(vals), 1) if vals else None


def limiter(server_core: float | None, loadgen_cores: float | None) -> str:
    """What held a phase back, from how busy the pinned cores were (process time
    plus the loopback TCP work done in softirq, which no process is charged for)."""
    if server_core is None:
        return "unknown (not pinned)"
    server_full = server_core >= 90
    loadgen_full = loadgen_cores is not None and loadgen_cores >= 90
    if server_full and loadgen_full:
        return "both cores saturated (server and load generator)"
    if server_full:
        return "server core saturated"
    if loadgen_full:
        return "load generator cores saturated"
    return "neither core saturated (latency bound: add clients)"


def http_get_json(url: str, token: str | None, timeout: float = 5.0) -> dict[str, Any] | None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        req = urllib.request.Request(url, headers=headers)
        with urllib.request.urlopen(req, timeout=timeout) as r:
            reply: dict[str, Any] = json.loads(r.read())
            return reply
    except (OSError, ValueError):
        return None


def stats_url(url: str) -> str:
    u = urlsplit(url)
    return f"{u.scheme}://{u.netloc}/stats"


# =========================================================================== churn scenario


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="churn.py",
        description="Churn scenario: C long-polling clients handshake, subscribe, connect and "
        "disconnect in a loop (reconnect storms) for T seconds, in R rounds; report "
        "handshakes/s, errors by kind, server CPU, RSS and /stats sessions at the start, "
        "after each storm and after it settles; write a JSON record.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--clients", type=int, default=200, help="concurrent clients (C)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of storm per round (T)")
    p.add_argument("--rounds", type=int, default=2, help="storm + settle rounds (leak check)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds before the measured window")
    p.add_argument(
        "--procs", type=int, default=1, help="load generator processes (2 cores: 1 is right)"
    )
    p.add_argument("--source-addrs", type=int, default=4, help="source addresses 127.0.0.1..x")
    p.add_argument(
        "--abandon",
        type=float,
        default=0.1,
        help="fraction of cycles that end without /meta/disconnect (sessions must expire)",
    )
    p.add_argument("--channels", type=int, default=16, help="distinct channels subscribed to")
    p.add_argument("--no-subscribe", action="store_true", help="cycles without /meta/subscribe")
    p.add_argument("--no-connect", action="store_true", help="cycles without the first connect")
    p.add_argument(
        "--reuse-connection",
        action="store_true",
        help="keep the TCP connection across cycles (default: a new one per cycle)",
    )
    p.add_argument(
        "--max-interval", type=int, default=2000, help="server --max-interval, ms (expiry)"
    )
    p.add_argument("--timeout", type=int, default=30000, help="server connect timeout, ms")
    p.add_argument("--request-timeout", type=float, default=10.0, help="client request bound, s")
    p.add_argument(
        "--settle-timeout",
        type=float,
        default=None,
        help="bound on waiting for 0 sessions after a storm, s (default 2 * max-interval + 10)",
    )
    p.add_argument("--settle", type=float, default=1.0, help="pause before baseline readings, s")
    p.add_argument(
        "--server-cmd",
        default=DEFAULT_SERVER_CMD,
        help="server command template ({python} {host} {port} {path} {timeout}); "
        "--admin-token and --max-interval are appended for the default engine command",
    )
    p.add_argument("--admin-token", default=None, help="token for /stats (default random)")
    p.add_argument(
        "--peer",
        choices=sorted(PEERS),
        default=None,
        help="first run the identical storm against this peer server (no /stats there: "
        "sessions n/a, a max-interval wait instead of the settle), then against the engine; "
        "print both and the ratios, write one record with both",
    )
    p.add_argument("--host", default="127.0.0.1", help="address the server listens on")
    p.add_argument("--path", default="/cometd", help="server path")
    p.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="pin the server to the first CPU and the generators to the others",
    )
    p.add_argument("--startup-timeout", type=float, default=30.0, help="server start bound, s")
    add_results_dir_arg(p, "where the record goes")
    p.add_argument("--check", action="store_true", help="exit 2 on errors or leftover sessions")
    p.add_argument("--no-progress", action="store_true", help="no progress lines")
    p.add_argument("--note", default="", help="free text stored in the record")
    p.add_argument("--seed", type=int, default=1, help="seed of the abandon draws")
    return p


async def settle_sessions(
    url: str, token: str, bound: float, server_alive: Any
) -> tuple[int | None, float, dict[str, Any] | None]:
    """Poll /stats until sessions == 0 (bounded); (sessions, seconds waited, stats)."""
    t0 = time.monotonic()
    last: dict[str, Any] | None = None
    while True:
        last = await asyncio.to_thread(http_get_json, stats_url(url), token)
        sessions = None if last is None else last.get("sessions")
        if sessions == 0 or time.monotonic() - t0 >= bound:
            return sessions, round(time.monotonic() - t0, 2), last
        if not server_alive():
            raise RunError("server exited while settling")
        await asyncio.sleep(0.25)


async def run_churn(args: argparse.Namespace, guard: ChildGuard) -> dict[str, Any]:
    progress = not args.no_progress
    token = args.admin_token or secrets.token_hex(12)
    template = args.server_cmd
    if template == DEFAULT_SERVER_CMD:
        template += f" --admin-token {token} --max-interval {args.max_interval}"
    server_cpus, gen_cpus = cpu_plan(args.pin)
    port = free_port(args.host)
    server = ServerProcess.for_args(template, args, port, guard)
    try:
        url = await start_pinned(server, args.startup_timeout, server_cpus, "server", progress)
        pid = server.pid
        assert pid is not None
        await asyncio.sleep(args.settle)
        base_stats = await asyncio.to_thread(http_get_json, stats_url(url), token)
        rss_base = tree_rss_bytes(pid)
        rounds = []
        settle_bound = (
            args.settle_timeout
            if args.settle_timeout is not None
            else 2 * args.max_interval / 1000 + 10
        )
        for rnd in range(1, args.rounds + 1):
            specs = worker_specs(
                args,
                "churn",
                url,
                gen_cpus,
                abandon=args.abandon,
                channels=args.channels,
                subscribe=not args.no_subscribe,
                connect=not args.no_connect,
                reuse_connection=args.reuse_connection,
                seed=args.seed + 1000 * rnd,
            )
            log(
                progress,
                f"round {rnd}/{args.rounds}: {args.clients} clients for "
                f"{args.warmup + args.duration:.0f} s",
            )
            peak = [rss_base or 0]

            def sample(t: float, peak: list[int] = peak) -> dict[str, Any]:
                r = tree_rss_bytes(pid)
                if r:
                    peak[0] = max(peak[0], r)
                return {"t": round(t, 2), "rss": r, "cpu": tree_cpu_seconds(pid)}

            agg = await run_workers(
                specs=specs,
                guard=guard,
                warmup=args.warmup,
                measure=args.duration,
                server_pid=pid,
                server_alive=server.alive,
                ready_timeout=30.0,
                result_timeout=args.request_timeout + 15.0,
                on_sample=sample,
            )
            rss_end = tree_rss_bytes(pid)
            end_stats = await asyncio.to_thread(http_get_json, stats_url(url), token)
            if base_stats is None:  # no /stats (another server): wait for expiry instead
                await asyncio.sleep(args.max_interval / 1000 + 1.0)
                sessions_left, waited, settled_stats = None, args.max_interval / 1000 + 1.0, None
            else:
                sessions_left, waited, settled_stats = await settle_sessions(
                    url, token, settle_bound, server.alive
                )
            await asyncio.sleep(0.5)
            rss_settled = tree_rss_bytes(pid)
            rounds.append(
                {
                    "round": rnd,
                    "window": agg,
                    "rss_peak_bytes": peak[0],
                    "rss_end_bytes": rss_end,
                    "rss_settled_bytes": rss_settled,
                    "sessions_at_end": None if end_stats is None else end_stats.get("sessions"),
                    "sessions_settled": sessions_left,
                    "settle_s": waited,
                    "counters_settled": None
                    if settled_stats is None
                    else settled_stats.get("counters"),
                    "connections_settled": None
                    if settled_stats is None
                    else settled_stats.get("connections"),
                }
            )
            w = agg
            log(
                progress,
                f"  {w.get('handshakes', 0) / w['window_s']:,.0f} handshakes/s, "
                f"errors {sum(w['errors'].values())}, sessions after settle {sessions_left} "
                f"({waited} s), RSS {human_bytes(rss_settled)}",
            )
        return {
            "url": url,
            "server_argv": server.argv,
            "server_pid": pid,
            "token": token,
            "cpus": {"server": server_cpus, "loadgen": gen_cpus},
            "rss_baseline": rss_base,
            "base_stats": base_stats,
            "rounds": rounds,
        }
    finally:
        await server.stop()


def compute_churn(args: argparse.Namespace, out: dict[str, Any]) -> dict[str, Any]:
    rounds = out["rounds"]
    per_round = []
    for r in rounds:
        w = r["window"]
        s = w["window_s"] or 1.0
        hs = w.get("handshakes", 0)
        hsh = Latency.decode(w["hs_hist"]) if w.get("hs_hist") else Latency()
        cyh = Latency.decode(w["cycle_hist"]) if w.get("cycle_hist") else Latency()
        per_round.append(
            {
                "round": r["round"],
                "window_s": s,
                "handshakes": hs,
                "handshakes_per_s": round(hs / s, 1),
                "cycles": w.get("cycles", 0),
                "cycles_per_s": round(w.get("cycles", 0) / s, 1),
                "requests_per_s": round(w.get("responses", 0) / s, 1),
                "tcp_opens_per_s": round(w.get("tcp_opens", 0) / s, 1),
                "disconnects": w.get("disconnects", 0),
                "abandoned": w.get("abandoned", 0),
                "errors": w["errors"],
                "errors_total": sum(w["errors"].values()),
                "errors_whole_run": w["total_errors"],
                "handshake_ms": summary_with_hist(hsh),
                "cycle_ms": summary_with_hist(cyh),
                "server_cpu_s": w["server_cpu_s"],
                "server_cpu_percent": None
                if w["server_cpu_s"] is None
                else round(100 * w["server_cpu_s"] / w["parent_wall_s"], 1),
                "server_cpu_per_handshake_us": None
                if not hs or w["server_cpu_s"] is None
                else round(1e6 * w["server_cpu_s"] / hs, 1),
                "loadgen_cpu_percent": round(100 * w["loadgen_cpu_tree_s"] / w["parent_wall_s"], 1),
                "cores": w.get("cores"),
                "server_core_busy_percent": cores_mean(
                    w.get("cores") or {}, out["cpus"]["server"], "busy_percent"
                ),
                "loadgen_cores_busy_percent": cores_mean(
                    w.get("cores") or {}, out["cpus"]["loadgen"], "busy_percent"
                ),
                "rss_peak_bytes": r["rss_peak_bytes"],
                "rss_end_bytes": r["rss_end_bytes"],
                "rss_settled_bytes": r["rss_settled_bytes"],
                "sessions_at_end": r["sessions_at_end"],
                "sessions_settled": r["sessions_settled"],
                "settle_s": r["settle_s"],
                "connections_settled": r["connections_settled"],
                "sessions_expired_total": (r["counters_settled"] or {}).get("sessions_expired"),
                "handshakes_total_server": (r["counters_settled"] or {}).get("handshakes"),
                "samples": w["samples"],
            }
        )
    for pr in per_round:
        pr["limited_by"] = limiter(pr["server_core_busy_percent"], pr["loadgen_cores_busy_percent"])
    base = out["rss_baseline"]
    last = per_round[-1]
    first = per_round[0]
    growth_per_hs = None
    if len(per_round) >= 2 and first["rss_settled_bytes"] and last["rss_settled_bytes"]:
        later_hs = sum(r["handshakes"] for r in per_round[1:])
        if later_hs:
            growth_per_hs = round(
                (last["rss_settled_bytes"] - first["rss_settled_bytes"]) / later_hs, 2
            )
    total_hs = sum(r["handshakes"] for r in per_round)
    total_s = sum(r["window_s"] for r in per_round)
    results = {
        "clients": args.clients,
        "handshakes_per_s": round(total_hs / total_s, 1) if total_s else None,
        "cycles_per_s": (
            round(sum(r["cycles"] for r in per_round) / total_s, 1) if total_s else None
        ),
        "errors_total": sum(r["errors_total"] for r in per_round),
        "errors": _merge([r["errors_whole_run"] for r in per_round]),
        "handshake_ms": last["handshake_ms"],
        "server_cpu_per_handshake_us": last["server_cpu_per_handshake_us"],
        "server_cpu_percent": last["server_cpu_percent"],
        "loadgen_cpu_percent": last["loadgen_cpu_percent"],
        "limited_by": last["limited_by"],
        "rss_baseline_bytes": base,
        "rss_peak_bytes": max((r["rss_peak_bytes"] or 0) for r in per_round),
        "rss_settled_bytes": last["rss_settled_bytes"],
        "rss_settled_over_baseline": None
        if not base or not last["rss_settled_bytes"]
        else round(last["rss_settled_bytes"] / base, 3),
        "rss_growth_after_first_round_per_handshake_bytes": growth_per_hs,
        "sessions_at_start": (out["base_stats"] or {}).get("sessions"),
        "sessions_settled": last["sessions_settled"],
        "rounds": per_round,
        "server_pid": out["server_pid"],
        "cpus": out["cpus"],
    }
    parameters = {
        k: (str(v) if isinstance(v, Path) else v)
        for k, v in vars(args).items()
        if k not in ("admin_token",)
    }
    parameters["url"] = out["url"]
    parameters["server_cmd"] = shell_join(out["server_argv"]).replace(out["token"], "TOKEN")
    return {"parameters": parameters, "results": results}


def _merge(dicts: list[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def churn_table(record: dict[str, Any]) -> str:
    r = record["results"]
    p = record["parameters"]
    rows: list[tuple[str, str]] = [
        ("clients / rounds x seconds", f"{p['clients']} / {p['rounds']} x {p['duration']:.0f}"),
        ("handshakes / s", f"{r['handshakes_per_s']:,.0f}"),
        ("cycles / s", f"{r['cycles_per_s']:,.0f}"),
        ("errors (all rounds)", f"{r['errors_total']:,}"),
    ]
    for rd in r["rounds"]:
        n = rd["round"]
        rows += [
            (
                f"round {n}: handshakes/s, req/s",
                f"{rd['handshakes_per_s']:,.0f}, {rd['requests_per_s']:,.0f}",
            ),
            (
                f"round {n}: handshake p50/p99 ms",
                f"<= {na(rd['handshake_ms']['p50'], '{:.2f}')} / "
                f"<= {na(rd['handshake_ms']['p99'], '{:.2f}')}",
            ),
            (
                f"round {n}: server CPU, per handshake",
                f"{rd['server_cpu_percent']} %, {rd['server_cpu_per_handshake_us']} us",
            ),
            (f"round {n}: loadgen CPU", f"{rd['loadgen_cpu_percent']} %"),
            (
                f"round {n}: cores busy server / loadgen",
                f"{rd['server_core_busy_percent']} / {rd['loadgen_cores_busy_percent']} %",
            ),
            (f"round {n}: limited by", rd["limited_by"]),
            (
                f"round {n}: sessions end / settled",
                f"{rd['sessions_at_end']} / {rd['sessions_settled']} ({rd['settle_s']} s)",
            ),
            (
                f"round {n}: RSS peak / settled",
                f"{human_bytes(rd['rss_peak_bytes'])} / {human_bytes(rd['rss_settled_bytes'])}",
            ),
        ]
    rows += [
        ("server RSS baseline", human_bytes(r["rss_baseline_bytes"])),
        ("server RSS settled / baseline", f"{r['rss_settled_over_baseline']}"),
        (
            "RSS growth after round 1, per handshake",
            "n/a"
            if r["rss_growth_after_first_round_per_handshake_bytes"] is None
            else f"{r['rss_growth_after_first_round_per_handshake_bytes']:.2f} B",
        ),
        ("sessions at start / settled", f"{r['sessions_at_start']} / {r['sessions_settled']}"),
    ]
    label = record.get("label")
    title = f"churn scenario, {p['clients']} clients" + (f" -- {label}" if label else "")
    table = format_table(rows, title=title)
    if r["errors"]:
        table += "\n  errors: " + ", ".join(f"{k}={v}" for k, v in list(r["errors"].items())[:10])
    return table


def comparison(peer_name: str, peer: dict[str, Any], engine: dict[str, Any]) -> dict[str, Any]:
    """engine / peer ratios and the side-by-side rows."""
    keys = (
        ("handshakes / s", "handshakes_per_s", "{:,.0f}"),
        ("errors", "errors_total", "{:,}"),
        ("handshake p99, ms", None, "{:.2f}"),
        ("server CPU per handshake, us", "server_cpu_per_handshake_us", "{:.0f}"),
        ("server CPU, %", "server_cpu_percent", "{:.0f}"),
        ("server RSS baseline", "rss_baseline_bytes", "{:,}"),
        ("server RSS peak", "rss_peak_bytes", "{:,}"),
        ("server RSS settled", "rss_settled_bytes", "{:,}"),
    )
    rows = []
    for label, key, spec in keys:
        if key is None:
            a, b = (
                (peer.get("handshake_ms") or {}).get("p99"),
                (engine.get("handshake_ms") or {}).get("p99"),
            )
        else:
            a, b = peer.get(key), engine.get(key)
        rows.append([label, na(a, spec), na(b, spec), na(ratio(b, a), "{:.2f}")])
    return {
        "peer": peer_name,
        "handshakes_per_s_ratio": ratio(
            engine.get("handshakes_per_s"), peer.get("handshakes_per_s")
        ),
        "cpu_per_handshake_ratio": ratio(
            engine.get("server_cpu_per_handshake_us"), peer.get("server_cpu_per_handshake_us")
        ),
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    raw = sys.argv[1:] if argv is None else argv
    if raw[:1] == ["--worker"] and len(raw) == 2:
        return worker_main(raw[1])
    args = build_parser().parse_args(argv)
    if args.clients < 1 or args.duration <= 0 or args.rounds < 1 or args.procs < 1:
        raise SystemExit("churn.py: --clients, --duration, --rounds and --procs must be positive")
    if not 0 <= args.abandon <= 1:
        raise SystemExit("churn.py: --abandon is a fraction in 0..1")
    if not 1 <= args.source_addrs <= 254:
        raise SystemExit("churn.py: --source-addrs must be in 1..254")
    if not args.host.startswith("127."):
        raise SystemExit("churn.py: --host must be a loopback address")
    args.procs = min(args.procs, args.clients)
    record = run_scenario(
        SCENARIO,
        __file__,
        args,
        argv,
        lambda a, guard: compute_churn(a, asyncio.run(run_churn(a, guard))),
        comparison=comparison,
    )
    if isinstance(record, int):
        return record
    save_and_print(
        record,
        args.results_dir,
        f"{SCENARIO}-{args.clients}",
        churn_table,
        f"churn side by side, {args.clients} clients",
    )
    r = record["results"]
    if args.check and (r["errors_total"] or r["sessions_settled"] != 0):
        sys.stderr.write("churn.py: --check failed: errors or sessions left after settling\n")
        return 2
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
