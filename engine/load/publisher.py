#!/usr/bin/env python3
"""Publisher for the fan-out scenario: one Bayeux client that publishes M
messages at R per second to one channel, each message's data carrying its send
time.

    python bench/publisher.py --url http://127.0.0.1:8080/cometd \
        --transport websocket --channel /bench/hot --messages 500 --rate 50

It handshakes (``supportedConnectionTypes: [TRANSPORT]``), keeps its session
alive with the usual ``/meta/connect`` loop (first with ``advice: {timeout:
0}``, then after ``interval``; ``reconnect: "handshake"`` re-handshakes), and
when told ``go`` publishes on an open-loop schedule: message ``i`` is due at
``start + i / R`` whatever the replies do. Its data is ``{"seq": i, "t":
time.monotonic_ns(), "pad": ...}``; ``t`` is taken when the message is
published, as an application calling ``publish()`` would see it
(CLOCK_MONOTONIC is one clock for every process of the machine, so receivers
subtract it from their own ``monotonic_ns()``).

- long-polling: the connect loop has its own keep-alive HTTP connection (the
  JS client uses two as well); publishes go over ``--conns`` (default 1)
  other keep-alive connections, one request in flight on each, all with the
  session's ``BAYEUX_BROWSER`` cookie. Publishes made while every connection
  is busy wait in the client and leave together in the next request (one JSON
  array), as the CometD client coalesces queued envelopes; their wait counts
  in their latency. ``max_batch`` reports the largest such batch.
- websocket: one socket carries the handshake, the connect loop and the
  publishes (one frame each, sent without waiting for the replies), as the JS
  client.

stdout, one JSON object per line: ``{"type": "ready"}`` once the first connect
succeeded; ``{"type": "done", ...}`` once every publish was answered or
``--ack-timeout`` passed after the last one; ``{"type": "final", ...}`` at exit.
stdin: ``go`` starts publishing (or ``--go`` at once); ``stop`` or end of file
ends the run; ``--max-seconds`` bounds it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import stat
import sys
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httptools
import orjson
import uvloop

from engine.load.histogram import Latency, summary_with_hist
from engine.load.wsframes import (
    OP_CLOSE,
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

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
DEFAULT_TIMEOUT_MS = 60000
#: Most publishes one long-polling request carries (the engine's --max-batch is 1000).
MAX_BATCH = 500


def emit(d: dict[str, Any]) -> None:
    sys.stdout.buffer.write(orjson.dumps(d) + b"\n")
    sys.stdout.buffer.flush()


class ProtocolError(Exception):
    pass


def _replies(status: int, body: bytes) -> list[dict[str, Any]]:
    """The messages of an HTTP reply (a lone object counts as one); ProtocolError
    unless it is a 200: one reading for the session's and the publishes' replies."""
    if status != 200:
        raise ProtocolError(f"http_{status}")
    replies = orjson.loads(body)
    if isinstance(replies, dict):
        replies = [replies]
    return [m for m in replies if type(m) is dict]


async def _open_socket(host: str, port: int, source: str, timeout: float) -> socket.socket:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((source, 0))
        await asyncio.wait_for(loop.sock_connect(sock, (host, port)), timeout)
    except BaseException:
        sock.close()
        raise
    return sock


# --------------------------------------------------------------------------- HTTP


class _Response:
    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.done = False
        self.keep_alive = False
        self.parser: httptools.HttpResponseParser | None = None

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        self.done = True
        # Only valid here: once the message is complete the parser resets,
        # and should_keep_alive() says False whatever the response said.
        if self.parser is not None:
            self.keep_alive = self.parser.should_keep_alive()


class HttpConn:
    """One keep-alive HTTP/1.1 connection, one request at a time."""

    def __init__(self, host: str, port: int, source: str, host_header: bytes) -> None:
        self.host, self.port, self.source = host, port, source
        self.host_header = host_header
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(
        self, path: bytes, body: bytes, cookie: bytes | None, timeout: float
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        return await asyncio.wait_for(self._request(path, body, cookie, timeout), timeout)

    async def _request(
        self, path: bytes, body: bytes, cookie: bytes | None, timeout: float
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        if self.writer is None or self.writer.is_closing():
            sock = await _open_socket(self.host, self.port, self.source, min(timeout, 10.0))
            self.reader, self.writer = await asyncio.open_connection(sock=sock)
        assert self.reader is not None and self.writer is not None
        head = b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n" % (
            path,
            self.host_header,
        )
        if cookie:
            head += b"Cookie: " + cookie + b"\r\n"
        head += b"Content-Length: %d\r\n\r\n" % len(body)
        self.writer.write(head + body)
        resp = _Response()
        parser = httptools.HttpResponseParser(resp)
        resp.parser = parser
        # bounded by wait_for(timeout) in request()
        while not resp.done:
            data = await self.reader.read(65536)
            if not data:
                self.close()
                raise ProtocolError("connection closed before the response")
            parser.feed_data(data)
        status = parser.get_status_code()
        if not resp.keep_alive:
            self.close()
        return status, resp.headers, b"".join(resp.chunks)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


# --------------------------------------------------------------------------- WebSocket


class WsConn:
    """One client WebSocket; replies are matched to their request by id."""

    def __init__(self, host: str, port: int, source: str, host_header: bytes, path: bytes):
        self.host, self.port, self.source = host, port, source
        self.host_header, self.path = host_header, path
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.waiters: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.on_reply: Any = None  # called with replies nobody waits for
        self.task: asyncio.Task[None] | None = None
        self.closed = asyncio.Event()

    async def open(self, timeout: float) -> None:
        sock = await _open_socket(self.host, self.port, self.source, timeout)
        self.reader, self.writer = await asyncio.open_connection(sock=sock)
        key = new_key()
        self.writer.write(upgrade_request(self.path, self.host_header, key))
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), timeout)
        why = check_upgrade_response(head[:-4], key)
        if why is not None:
            self.writer.close()
            raise ProtocolError("websocket upgrade refused: " + why)
        self.closed.clear()
        self.task = asyncio.create_task(self._read())

    def send(self, messages: list[dict[str, Any]]) -> None:
        if self.writer is None or self.writer.is_closing():
            raise ProtocolError("websocket closed")
        self.writer.write(client_frame(OP_TEXT, orjson.dumps(messages)))

    async def call(self, message: dict[str, Any], timeout: float) -> dict[str, Any]:
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiters[message["id"]] = fut
        try:
            self.send([message])
            return await asyncio.wait_for(fut, timeout)
        finally:
            self.waiters.pop(message["id"], None)

    async def _read(self) -> None:
        assert self.reader is not None
        buf = b""
        frag: list[bytes] | None = None
        try:
            # bounded: ends with the connection
            while True:
                data = await self.reader.read(65536)
                if not data:
                    return
                frames, buf = split_frames(buf + data)
                for first, payload in frames:
                    opcode = first & 0x0F
                    if opcode == OP_PING:
                        self.writer.write(client_frame(OP_PONG, payload))  # type: ignore[union-attr]
                        continue
                    if opcode == OP_CLOSE:
                        return
                    if opcode == OP_TEXT and not first & 0x80:
                        frag = [payload]
                        continue
                    if opcode == 0 and frag is not None:
                        frag.append(payload)
                        if not first & 0x80:
                            continue
                        payload, frag = b"".join(frag), None
                    elif opcode != OP_TEXT:
                        continue
                    self._dispatch(orjson.loads(payload))
        except (ConnectionError, FrameError, orjson.JSONDecodeError, OSError):
            return
        finally:
            self.closed.set()
            for fut in self.waiters.values():
                if not fut.done():
                    fut.set_exception(ProtocolError("websocket closed"))
            if self.writer is not None:
                self.writer.close()

    def _dispatch(self, messages: Any) -> None:
        if isinstance(messages, dict):
            messages = [messages]
        for m in messages:
            if type(m) is not dict:
                continue
            fut = self.waiters.get(m.get("id"))  # type: ignore[arg-type]
            if fut is not None and not fut.done():
                fut.set_result(m)
            elif self.on_reply is not None and "successful" in m:
                self.on_reply(m)

    def close(self) -> None:
        if self.writer is not None and not self.writer.is_closing():
            with contextlib.suppress(Exception):
                self.writer.write(client_frame(OP_CLOSE, (1000).to_bytes(2, "big")))
            self.writer.close()
        if self.task is not None:
            self.task.cancel()


# --------------------------------------------------------------------------- publisher


class Publisher:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        url = urlsplit(args.url)
        self.host = url.hostname or "127.0.0.1"
        if self.host == "localhost":
            self.host = "127.0.0.1"
        if not self.host.startswith("127."):
            raise SystemExit("publisher: loopback servers only")
        self.port = url.port or 80
        self.host_header = f"{url.hostname}:{self.port}".encode()
        self.base = (url.path or "/").rstrip("/")
        self.transport = args.transport
        self.client_id: str | None = None
        self.cookie: bytes | None = None
        self.timeout_ms = DEFAULT_TIMEOUT_MS
        self.interval_ms = 0
        self.reconnect: str | None = None
        self.next_id = 0
        self.stopping = asyncio.Event()
        self.go = asyncio.Event()
        self.ready = False
        self.ws: WsConn | None = None
        self.connect_conn: HttpConn | None = None
        self.http_conns: list[HttpConn] = []
        # long-polling: published, not yet sent (coalesced into the next request)
        self.outq: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.in_flight = 0
        self.max_batch = 0
        self.publish_requests = 0
        # counters
        self.handshakes = 0
        self.connects = 0
        self.connect_failures = 0
        self.published = 0
        self.acked = 0
        self.failed = 0
        self.errors: dict[str, int] = {}
        self.first_send_ns: int | None = None
        self.last_send_ns: int | None = None
        self.max_lag_s = 0.0
        # Publish -> successful reply, timed when the reply was read.
        self.ack_latency = Latency()
        self.sent_at: dict[str, int] = {}
        self.pad = "x" * max(0, args.payload_bytes)

    def _id(self) -> str:
        self.next_id += 1
        return str(self.next_id)

    def error(self, reason: str) -> None:
        if len(self.errors) < 32 or reason in self.errors:
            self.errors[reason] = self.errors.get(reason, 0) + 1

    # one exchange ------------------------------------------------------------

    async def exchange(
        self, kind: str, message: dict[str, Any], timeout: float, conn: HttpConn | None = None
    ) -> dict[str, Any]:
        """Send one message, return its reply (raises on failure)."""
        if self.transport == "websocket":
            assert self.ws is not None
            return await self.ws.call(message, timeout)
        assert conn is not None
        path = (self.base + ("/" + kind if kind in ("handshake", "connect") else "/")).encode()
        status, headers, body = await conn.request(
            path, orjson.dumps([message]), self.cookie, timeout
        )
        for name, value in headers:
            if name == b"set-cookie":
                self._set_cookie(value)
        for m in _replies(status, body):
            if m.get("id") == message["id"]:
                return m
        raise ProtocolError("no_reply")

    def _set_cookie(self, value: bytes) -> None:
        pair = value.split(b";", 1)[0].strip()
        name, sep, _ = pair.partition(b"=")
        if not sep:
            return
        kept = [c for c in (self.cookie or b"").split(b"; ") if c and not c.startswith(name + b"=")]
        self.cookie = b"; ".join([*kept, pair])

    def _advice(self, reply: dict[str, Any]) -> None:
        advice = reply.get("advice")
        if type(advice) is dict:
            t = advice.get("timeout", DEFAULT_TIMEOUT_MS)
            i = advice.get("interval", 0)
            self.timeout_ms = t if type(t) is int and t >= 0 else DEFAULT_TIMEOUT_MS
            self.interval_ms = i if type(i) is int and i >= 0 else 0
            r = advice.get("reconnect")
            self.reconnect = r if type(r) is str else None

    # session -----------------------------------------------------------------

    async def open(self) -> None:
        a = self.args
        if self.transport == "websocket":
            if self.ws is not None:
                self.ws.close()
            self.ws = WsConn(
                self.host, self.port, a.source_addr, self.host_header, self.base.encode() or b"/"
            )
            self.ws.on_reply = self._on_publish_reply
            await self.ws.open(10.0)
        else:
            if self.connect_conn is None:
                self.connect_conn = HttpConn(self.host, self.port, a.source_addr, self.host_header)
                self.http_conns = [
                    HttpConn(self.host, self.port, a.source_addr, self.host_header)
                    for _ in range(max(1, a.conns))
                ]

    async def handshake(self) -> None:
        self.client_id = None
        self.timeout_ms, self.interval_ms, self.reconnect = DEFAULT_TIMEOUT_MS, 0, None
        reply = await self.exchange(
            "handshake",
            {
                "channel": "/meta/handshake",
                "version": "1.0",
                "supportedConnectionTypes": [self.transport],
                "id": self._id(),
            },
            10.0,
            self.connect_conn,
        )
        if reply.get("successful") is not True or type(reply.get("clientId")) is not str:
            raise ProtocolError("handshake_unsuccessful: " + str(reply.get("error")))
        self.client_id = reply["clientId"]
        self.handshakes += 1
        self._advice(reply)

    async def connect(self, first: bool) -> None:
        msg: dict[str, Any] = {
            "channel": "/meta/connect",
            "connectionType": self.transport,
            "clientId": self.client_id,
            "id": self._id(),
        }
        if first:
            msg["advice"] = {"timeout": 0}
        wait = 10.0 + (0 if first else self.timeout_ms / 1000.0)
        reply = await self.exchange("connect", msg, wait, self.connect_conn)
        self._advice(reply)
        if reply.get("successful") is not True:
            raise ProtocolError("connect_unsuccessful: " + str(reply.get("error")))
        self.connects += 1

    async def session_loop(self) -> None:
        """Handshake, first connect, then held connects until stopped (bounded by
        --max-seconds through the caller's stop)."""
        first = True
        failures = 0
        while not self.stopping.is_set():
            try:
                if self.client_id is None:
                    await self.open()
                    await self.handshake()
                    first = True
                await self.connect(first)
                first = False
                failures = 0
                if not self.ready:
                    self.ready = True
                    emit({"type": "ready", "client_id": self.client_id, "time": time.time()})
                if self.reconnect == "handshake":
                    self.client_id = None
                elif self.reconnect == "none":
                    self.error("connect_reconnect_none")
                    return
            except (ProtocolError, OSError, TimeoutError, orjson.JSONDecodeError) as exc:
                self.connect_failures += 1
                failures += 1
                self.error("session:" + (str(exc) or type(exc).__name__)[:60])
                if failures > 5:
                    emit({"type": "error", "error": "session failed 5 times in a row"})
                    self.stopping.set()
                    return
                if self.connect_conn is not None:
                    self.connect_conn.close()
                if self.reconnect == "handshake" or self.transport == "websocket":
                    self.client_id = None
                first = True
                await self._sleep(failures * 1.0)
                continue
            if self.interval_ms:
                await self._sleep(self.interval_ms / 1000.0)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)

    # publishing --------------------------------------------------------------

    def _message(self, seq: int, due: float) -> dict[str, Any]:
        """Publish ``seq``, due at ``due`` (time.monotonic()); stamped now."""
        now = time.monotonic_ns()
        lag = now / 1e9 - due  # late against the open-loop schedule
        if lag > self.max_lag_s:
            self.max_lag_s = lag
        if self.first_send_ns is None:
            self.first_send_ns = now
        self.last_send_ns = now
        data: dict[str, Any] = {"seq": seq, "t": now}
        if self.pad:
            data["pad"] = self.pad
        return {
            "channel": self.args.channel,
            "clientId": self.client_id,
            "data": data,
            "id": self._id(),
        }

    def _on_publish_reply(self, reply: dict[str, Any]) -> None:
        sent = self.sent_at.pop(reply.get("id"), None)  # type: ignore[arg-type]
        if sent is None:
            return
        self._count_reply(reply, sent)

    def _count_reply(self, reply: dict[str, Any], sent_ns: int) -> None:
        if reply.get("successful") is True:
            self.acked += 1
            self.ack_latency.record_ns(time.monotonic_ns() - sent_ns)
        else:
            self.failed += 1
            self.error("publish:" + str(reply.get("error"))[:60])

    async def _http_sender(self, conn: HttpConn) -> None:
        """Send what was published, all of it in one request; repeat (bounded:
        cancelled at the end of publish_all)."""
        path = (self.base + "/").encode()
        while True:
            batch = [await self.outq.get()]
            while not self.outq.empty() and len(batch) < MAX_BATCH:
                batch.append(self.outq.get_nowait())
            self.max_batch = max(self.max_batch, len(batch))
            self.in_flight += len(batch)
            self.publish_requests += 1
            try:
                status, headers, body = await conn.request(
                    path, orjson.dumps(batch), self.cookie, self.args.ack_timeout
                )
                for m in _replies(status, body):
                    self._on_publish_reply(m)
            except (ProtocolError, OSError, TimeoutError, orjson.JSONDecodeError) as exc:
                self.error("publish:" + (str(exc) or type(exc).__name__)[:60])
                conn.close()
            finally:
                self.in_flight -= len(batch)
                for m in batch:  # no reply: failed
                    if self.sent_at.pop(m["id"], None) is not None:
                        self.failed += 1

    async def publish_all(self) -> None:
        a = self.args
        loop = asyncio.get_running_loop()
        start = time.monotonic()
        senders = [asyncio.create_task(self._http_sender(c)) for c in self.http_conns]
        # bounded: M iterations
        for seq in range(a.messages):
            if self.stopping.is_set():
                break
            due = start + seq / a.rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            msg = self._message(seq, due)
            self.sent_at[msg["id"]] = msg["data"]["t"]
            if self.transport == "long-polling":
                self.published += 1
                self.outq.put_nowait(msg)
            else:
                try:
                    assert self.ws is not None
                    self.ws.send([msg])
                    self.published += 1
                except ProtocolError as exc:
                    self.sent_at.pop(msg["id"], None)
                    self.failed += 1
                    self.error("publish:" + str(exc))
        publish_end = loop.time()
        # replies: bounded by --ack-timeout after the last publish
        deadline = publish_end + a.ack_timeout
        while self.sent_at and loop.time() < deadline and not self.stopping.is_set():
            await asyncio.sleep(0.05)
        for t in senders:
            t.cancel()
        await asyncio.gather(*senders, return_exceptions=True)
        unanswered = len(self.sent_at)
        if unanswered:
            self.failed += unanswered
            self.error("publish:no_reply")
            self.sent_at.clear()
        emit({"type": "done", **self.summary()})

    def summary(self) -> dict[str, Any]:
        return {
            "transport": self.transport,
            "messages": self.args.messages,
            "rate": self.args.rate,
            "published": self.published,
            "acked": self.acked,
            "failed": self.failed,
            "first_send_ns": self.first_send_ns,
            "last_send_ns": self.last_send_ns,
            "publish_s": (
                round((self.last_send_ns - self.first_send_ns) / 1e9, 3)
                if self.first_send_ns is not None and self.last_send_ns is not None
                else None
            ),
            "max_lag_ms": round(self.max_lag_s * 1000, 2),
            "publish_requests": self.publish_requests or self.published,
            "max_batch": self.max_batch or (1 if self.published else 0),
            "ack_ms": summary_with_hist(self.ack_latency),
            "handshakes": self.handshakes,
            "connects": self.connects,
            "connect_failures": self.connect_failures,
            "errors": self.errors,
            "cpu_s": round(sum(os.times()[:2]), 3),
            "time": time.time(),
        }

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()
        if self.connect_conn is not None:
            self.connect_conn.close()
        for c in self.http_conns:
            c.close()


def watch_stdin(
    loop: asyncio.AbstractEventLoop, on_word: Callable[[bytes], None], on_eof: Callable[[], None]
) -> None:
    """When stdin is a pipe: ``on_word(line)`` for each line (stripped) read
    from it, ``on_eof()`` at its end (the scenario that started us is gone)."""
    buf = b""

    def on_stdin() -> None:
        nonlocal buf
        try:
            data = os.read(0, 4096)
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(0)
            on_eof()
            return
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            on_word(line.strip())

    with contextlib.suppress(OSError):
        if stat.S_ISFIFO(os.fstat(0).st_mode):
            loop.add_reader(0, on_stdin)


async def run(args: argparse.Namespace, publisher_class: type[Publisher] | None = None) -> int:
    loop = asyncio.get_running_loop()
    pub = (publisher_class or Publisher)(args)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, pub.stopping.set)

    def on_word(word: bytes) -> None:
        if word == b"go":
            pub.go.set()
        elif word == b"stop":
            pub.stopping.set()

    watch_stdin(loop, on_word, pub.stopping.set)
    if args.go:
        pub.go.set()
    loop.call_later(args.max_seconds, pub.stopping.set)
    session = asyncio.create_task(pub.session_loop())

    async def publishing() -> None:
        await pub.go.wait()
        # bounded: the session becomes ready or stops (max-seconds)
        while not pub.ready and not pub.stopping.is_set():
            await asyncio.sleep(0.01)
        if not pub.stopping.is_set():
            await pub.publish_all()

    pub_task = asyncio.create_task(publishing())
    await pub.stopping.wait()
    for t in (pub_task, session):
        t.cancel()
    await asyncio.gather(pub_task, session, return_exceptions=True)
    pub.close()
    emit({"type": "final", **pub.summary()})
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="publisher.py",
        description="Publish M timestamped messages at R/s to one channel (see the docstring).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--url", required=True, help="server URL, e.g. http://127.0.0.1:8080/cometd")
    p.add_argument("--transport", default="long-polling", choices=["long-polling", "websocket"])
    p.add_argument("--channel", default="/bench/hot", help="channel to publish to")
    p.add_argument("--messages", type=int, default=100, help="M, messages to publish")
    p.add_argument("--rate", type=float, default=50.0, help="R, messages per second")
    p.add_argument("--payload-bytes", type=int, default=64, help="padding in each message's data")
    p.add_argument("--conns", type=int, default=1, help="long-polling: publishing connections")
    p.add_argument("--source-addr", default="127.0.0.1", help="127.x.y.z source address")
    p.add_argument("--ack-timeout", type=float, default=10.0, help="wait for replies, s")
    p.add_argument("--go", action="store_true", help="publish as soon as connected")
    p.add_argument("--max-seconds", type=float, default=600.0, help="hard bound on the run, s")
    return p


def main(argv: list[str] | None = None, publisher_class: type[Publisher] | None = None) -> int:
    """``publisher_class``: a subclass of Publisher to run instead (the canary
    of bench/hostile.py subscribes to its own channel)."""
    args = build_parser().parse_args(argv)
    if args.messages < 0 or args.rate <= 0:
        raise SystemExit("publisher: --messages must be >= 0 and --rate > 0")
    if not args.source_addr.startswith("127."):
        raise SystemExit("publisher: loopback source addresses only")
    return uvloop.run(run(args, publisher_class))


if __name__ == "__main__":
    sys.exit(main())
