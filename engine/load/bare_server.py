#!/usr/bin/env python3
"""The bound: the fastest a Python HTTP/1.1 loop can answer, on uvloop + httptools.

Every request, whatever its method, path or body, gets the same fixed response
(by default the body of a successful ``/meta/connect`` reply, with the headers
the engine sends), over keep-alive connections (``Connection: close`` and
HTTP/1.0 are honoured). Nothing else happens per request: httptools parses,
``on_message_complete`` writes a prebuilt ``bytes``. A Bayeux server on the
same loop and parser cannot be faster than this, so the bound scenario (``bench/bound.py``) reports
the engine's ``/meta/connect`` cycles per second as a fraction of it.

Prints ``bound serving http://HOST:PORT/`` once it accepts connections; runs
until SIGINT/SIGTERM (or ``--max-seconds``).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys

import httptools
import uvloop

#: What the engine answers to a long-polling /meta/connect with advice timeout 0
#: (same bytes on the wire for both servers).
DEFAULT_BODY = (
    b'[{"channel":"/meta/connect","successful":true,"id":"2",'
    b'"advice":{"reconnect":"retry","interval":0,"timeout":30000}}]'
)
#: Same headers as the engine's JSON responses (engine.transport._http.HEAD_OK).
HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: application/json;charset=UTF-8\r\n"
    b"Cache-Control: no-cache, no-store, must-revalidate\r\n"
)
BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


def responses(body: bytes) -> tuple[bytes, bytes]:
    keep = HEAD + b"Content-Length: %d\r\n\r\n" % len(body) + body
    close = HEAD + b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    return keep, close


class BoundProtocol(asyncio.Protocol):
    __slots__ = ("transport", "parser", "keep", "close")

    def __init__(self, keep: bytes, close: bytes) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.keep = keep
        self.close = close

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.write(BAD_REQUEST)
                self.transport.close()

    def on_message_complete(self) -> None:
        t = self.transport
        if t is None:
            return
        if self.parser.should_keep_alive():
            t.write(self.keep)
        else:
            t.write(self.close)
            t.close()


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    keep, close = responses(args.body.encode())
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if args.reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((args.host, args.port))
    server = await loop.create_server(
        lambda: BoundProtocol(keep, close), sock=sock, backlog=args.backlog
    )
    host, port = server.sockets[0].getsockname()[:2]
    print(f"bound serving http://{host}:{port}/", flush=True)
    stop: asyncio.Future[None] = loop.create_future()

    def stopped() -> None:
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopped)
    try:
        if args.max_seconds > 0:
            await asyncio.wait_for(stop, args.max_seconds)
        else:
            await stop
    except TimeoutError:
        pass
    server.close()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m engine.load.bare_server",
        description="Minimal uvloop + httptools HTTP/1.1 server answering every request "
        "with one fixed body (keep-alive): the bound a Python HTTP loop can reach.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=0, help="port (0: a free one)")
    p.add_argument("--body", default=DEFAULT_BODY.decode(), help="the fixed response body")
    p.add_argument("--backlog", type=int, default=1024, help="listen backlog")
    p.add_argument("--reuse-port", action="store_true", help="bind with SO_REUSEPORT")
    p.add_argument("--max-seconds", type=float, default=0.0, help="exit after this long (0: never)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    uvloop.install()
    try:
        asyncio.run(serve(args))
    except OSError as exc:
        print(f"bare_server: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
