#!/usr/bin/env python3
"""The lean load generator of the bound scenario (``engine/load/bound.py``):
a minimal HTTP/1.1 keep-alive client looping one request at a time, in
worker processes.

``bound.py`` compares the engine's long-polling ``/meta/connect`` cycles with
a minimal server answering a fixed body; both must be driven by the same,
cheapest possible client, so that the generator is not what limits either.
The load tool's real client (``engine/load/client.py``) parses every reply
and follows advice: right for scenarios, too costly for this comparison.

Each worker process (``python -m engine.load.cycler --worker SPEC``, SPEC a JSON object)
sets up its clients (``mode`` "connect": handshake and a first connect to the
engine; "bound": nothing, a fake clientId), prints a ``ready`` line, waits
for ``go WARMUP MEASURE`` on stdin, then loops every client's request for
that long and prints a ``result`` line with its counters over the measured
window.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import socket
import sys
import time
from typing import Any
from urllib.parse import urlsplit

import orjson

from engine.load.churn import cpu_busy, read_cpu_times
from engine.load.procs import (
    ChildGuard,
    LineChild,
    RunError,
    read_rss_bytes,
    source_addresses,
    split_clients,
    tree_cpu_seconds,
)

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
MAX_HEAD = 65536


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
    """One load-generator process: connect loops (engine) or bound loops."""

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
        for conn, req in self.loopers:
            conn.start_loop(req, self.loop_failed)
        await asyncio.sleep(warmup)
        self.window["start"] = self._mark()
        await asyncio.sleep(measure)
        self.window["end"] = self._mark()
        self.stopping = True
        for conn, _ in self.loopers:
            conn.stop_loop()
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
        if isinstance(v, int | float) and isinstance(a, int | float):
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
            "clients": len(w.loopers),
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


class WorkerProc(LineChild):
    """A worker child process (this script, ``--worker SPEC``): ready line,
    go, result line; its stderr is kept for error reports, not echoed."""

    def __init__(self, index: int, spec: dict[str, Any]) -> None:
        super().__init__(
            [sys.executable, "-m", "engine.load.cycler", "--worker", json.dumps(spec)],
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
    agg: dict[str, Any] = {"errors": {}}
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


if __name__ == "__main__":
    if sys.argv[1:2] != ["--worker"] or len(sys.argv) != 3:
        sys.exit("engine.load.cycler: run by the bound scenario as --worker SPEC")
    sys.exit(worker_main(sys.argv[2]))
