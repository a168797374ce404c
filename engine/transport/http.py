"""HTTP/1.1 on httptools: keep-alive, pipelining, CORS, and the long-polling transport.

One `HttpConnection` per TCP connection.  The path every request takes (the
parser's callbacks, the Bayeux POST, in-order batched writes) is compiled in
`engine.transport._http` (src_pyx/transport/_http.pyx); this subclass adds what only some requests
need: routes other than the Bayeux POST, the WebSocket upgrade,
callback-polling (JSONP), CORS preflights and transport-level errors.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

import httptools

from engine.api.context import HttpContext
from engine.transport._http import (
    COOKIE_NAME,
    JSON_TYPE,
    MAX_PIPELINE,
    REASONS,
    HttpEndpoint,
    HttpExchange,
    HttpProtocol,
    decode_messages,
    error_body,
    http_response,
    log_exchange,
    origin_host,
)
from engine.transport.websocket import WebSocketConnection, new_browser_cookie, upgrade_response

__all__ = [
    "COOKIE_NAME",
    "REASONS",
    "HttpConnection",
    "HttpEndpoint",
    "HttpExchange",
    "decode_messages",
    "http_response",
    "origin_host",
]

log = logging.getLogger("engine.http")

JSONP_CALLBACK = re.compile(r"[A-Za-z0-9._-]{1,64}")
MAX_QUERY_FIELDS = 64


def _in_networks(address: str, networks: tuple[Any, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


class _NoProtocol:
    """Callbacks for a parser that no longer belongs to a connection."""


# A parser of no connection, for connections that are done with theirs: a
# connection and its parser reference each other, and the code breaks such
# cycles itself so that the garbage collector can skip long-lived objects.
_DETACHED = httptools.HttpRequestParser(_NoProtocol())


class HttpConnection(HttpProtocol):
    __slots__ = ()

    # ----------------------------------------------------------- connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        if len(self.context.connections) >= self.context.max_connections:
            # At the open-files limit: refuse cleanly now rather than fail at
            # random later (the client retries, elsewhere behind a balancer).
            self.core.stats.connections_refused += 1
            self.closed = True
            body = error_body(503, "server at its connection limit; retry later")
            transport.write(  # type: ignore[attr-defined]
                http_response(503, body, b"Retry-After: 2\r\n" + JSON_TYPE, close=True)
            )
            transport.close()
            return
        self.context.connections.add(self)
        if self.context.options.tls:
            self.core.stats.tls_established += 1  # (see BayeuxCore._check_tls)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self.client_address = peer[0]
            if self.endpoint.proxies:
                self.via_proxy = _in_networks(peer[0], self.endpoint.proxies)
        # The first request's head must come within header_timeout.
        self.expect_request(self.endpoint.header_timeout)

    def eof_received(self) -> bool | None:
        """The client ended its side (a TLS close_notify, a TCP half-close):
        the transport closes (None), as for any HTTP client that left."""
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.parser = _DETACHED  # break the connection <-> parser cycle (no GC needed)
        self.context.connections.discard(self)
        self.out = None
        for exchange in self.pending:
            if exchange.hold is not None:
                self.core.abandon(exchange.hold)
        self.pending.clear()

    def shutdown(self) -> None:
        """Server stopping: close now unless a response is still owed."""
        self.flush()
        if self.transport is not None and not self.pending:
            self.transport.close()

    def pause_writing(self) -> None:
        # The peer reads slowly: stop reading its requests until it catches
        # up, for write_timeout at most.
        if self.transport is not None and not self.reading_paused:
            self.transport.pause_reading()
            self.reading_paused = True
        timeout = self.endpoint.write_timeout
        if timeout != float("inf"):
            self.write_due = self.endpoint.time() + timeout
            self.rearm()

    def resume_writing(self) -> None:
        self.write_due = float("inf")  # (its wheel entry goes stale)
        if self.transport is not None and self.reading_paused and not self.closed:
            if not self.throttled:
                self.transport.resume_reading()
                self.reading_paused = False

    def throttle(self, owed: Callable[[], float]) -> None:
        """Read nothing for `owed()` seconds, decided at the end of this loop
        turn (a client past its publish rate; see ConnectionLimits)."""
        if self.throttled or self.transport is None or self.closed:
            return
        self.throttled = True
        if not self.reading_paused:
            self.transport.pause_reading()
            self.reading_paused = True
        asyncio.get_running_loop().call_soon(self._pause_for, owed)

    def _pause_for(self, owed: Callable[[], float]) -> None:
        wait = owed()
        # Not read meanwhile: a request it is sending gets the pause on top
        # of its timeout (later: a store, see engine.transport.deadlines).
        if self.phase_due != float("inf"):
            self.phase_due += wait
            self.rearm()
        # (One timer per throttled connection: rare, and bounded by them.)
        asyncio.get_running_loop().call_later(wait, self._unthrottle)

    def _unthrottle(self) -> None:
        self.throttled = False
        if (
            self.transport is not None
            and not self.closed
            and self.reading_paused
            and self.write_due == float("inf")
            and len(self.pending) < MAX_PIPELINE
        ):
            self.transport.resume_reading()
            self.reading_paused = False

    def forwarded_address(self) -> str | None:
        """The client behind a trusted proxy: the last X-Forwarded-For entry
        that is not itself a trusted proxy (entries before it are the
        client's word only), else the proxy's own address."""
        value = self.headers.get(b"x-forwarded-for")
        if not value:
            return self.client_address
        for entry in reversed(value.decode("latin-1").split(",")):
            address = entry.strip()
            if not address:
                continue
            try:
                ipaddress.ip_address(address)
            except ValueError:
                return self.client_address  # not an address: trust nothing of it
            if not _in_networks(address, self.endpoint.proxies):
                return address
        return self.client_address

    def abort(self, status: int, detail: str) -> None:
        """A transport-level error: answer it after what is pending, then close."""
        if self.closed or self.transport is None:
            return
        exchange = HttpExchange(self, keep_alive=False)
        if self.endpoint.access_log:
            # Its request line is whole only once the body began.
            known = self.phase == 2
            exchange.access = (
                self.parser.get_method() if known else b"-",
                self.url if known else b"-",
                self.endpoint.time(),
            )
        self.pending.append(exchange)
        self.complete(exchange, self.error_response(status, detail, keep_alive=False))
        self.parser = httptools.HttpRequestParser(self)  # stop using the broken stream
        self.transport.pause_reading()
        self.reading_paused = True

    # --------------------------------------------------------------- routing

    def cross_origin_refused(self) -> bool:
        origin = self.headers.get(b"origin")
        if origin is None:
            return False
        text = origin.decode("latin-1")
        host = self.headers.get(b"host", b"").decode("latin-1")
        return not self.context.same_origin(text, host) and not self.context.origin_allowed(text)

    def route(self, exchange: HttpExchange) -> None:
        path, _, query = self.url.partition(b"?")
        base = self.context.base_path
        method = self.parser.get_method()
        if not (path == base or path.startswith(base + b"/") or (not base and path == b"/")):
            api = self.context.api
            if api is not None and api.owns(path):
                pieces = self.body
                api.handle(
                    self,
                    exchange,
                    method,
                    path,
                    b"".join(pieces) if type(pieces) is list else pieces,
                )
                return
            answer = self.context.admin.handle(method, path, self.headers, query)
            if answer is None:
                exchange.fail(404, "no Bayeux endpoint at this path")
            else:
                self.complete(exchange, answer)
            return
        if self.cross_origin_refused():
            exchange.fail(403, "origin not allowed (see --allowed-origins)")
            return
        # (A POST to the Bayeux path never comes here: see HttpProtocol.)
        if method == b"OPTIONS":
            self.preflight(exchange)
        elif method == b"GET":
            self.callback_poll(exchange, query)
        else:
            exchange.fail(405, f"method {method.decode('latin-1')} not allowed")

    def upgrade(self, exchange: HttpExchange) -> None:
        """Switch this connection to the WebSocket transport (RFC 6455 4.2)."""
        exchange.keep_alive = False  # any refusal below closes the connection
        path = self.url.partition(b"?")[0]
        base = self.context.base_path
        # The Bayeux path and any path under it, as for the HTTP transports
        # (Salesforce clients open <instanceUrl>/cometd/<apiVersion>).
        if not (path == base or path.startswith(base + b"/") or (not base and path == b"/")):
            exchange.fail(404, "no WebSocket endpoint at this path")
            return
        if "websocket" not in self.core.transports:
            exchange.fail(400, "the websocket transport is not allowed on this server")
            return
        if self.parser.get_method() != b"GET":
            exchange.fail(400, "a WebSocket upgrade must be a GET")
            return
        if self.cross_origin_refused():
            exchange.fail(403, "origin not allowed (see --allowed-origins)")
            return
        if len(self.pending) > 1:
            # Earlier requests are unanswered (a held long-poll): their
            # responses come first, so this connection cannot switch now.
            exchange.fail(400, "WebSocket upgrade pipelined behind unanswered requests")
            return
        # Sessions made on the socket are bound to this browser: the cookie
        # it came with, or a new one set by the 101 (browsers keep it).
        browser_id = self.cookie_browser
        set_cookie = b""
        if browser_id is None:
            browser_id, set_cookie = new_browser_cookie(self.endpoint.set_cookie)
        status, head, why = upgrade_response(self.headers, set_cookie)
        if status != 101:
            self.complete(
                exchange, http_response(status, error_body(status, why), head + JSON_TYPE, True)
            )
            return
        transport = self.transport
        assert transport is not None
        self.flush()  # responses to earlier requests go before the switch
        self.pending.clear()
        ws = WebSocketConnection(
            self.context,
            transport,
            browser_id,
            exchange.client_address,
            cookie_presented=not set_cookie,
            # Kept for the socket's life only if the policy reads it.
            http_context=(
                HttpContext.from_raw(
                    self.headers,
                    exchange.client_address,
                    "websocket",
                    peer_address=self.client_address,
                    secure=self.context.options.tls,
                    url=self.url,
                    only=self.core.policy.uses_http_context,
                )
                if self.core.policy.uses_http_context
                else None
            ),
        )
        self.upgraded = ws
        self.context.connections.discard(self)
        self.context.connections.add(ws)
        self.core.stats.ws_upgrades += 1
        transport.write(head)
        if exchange.access is not None:
            log_exchange(exchange, head)
        transport.set_protocol(ws)
        self.parser = _DETACHED  # this object is done: no cycle left for the GC

    def callback_poll(self, exchange: HttpExchange, query: bytes) -> None:
        """callback-polling (JSONP): GET ?jsonp=<callback>&message=<JSON array>."""
        if "callback-polling" not in self.core.transports:
            exchange.fail(400, "the callback-polling transport is not allowed on this server")
            return
        try:
            params = parse_qs(query.decode("latin-1"), max_num_fields=MAX_QUERY_FIELDS)
        except ValueError:
            exchange.fail(400, f"more than {MAX_QUERY_FIELDS} query parameters")
            return
        callbacks = params.get("jsonp", [])
        if len(callbacks) != 1 or not JSONP_CALLBACK.fullmatch(callbacks[0]):
            exchange.fail(400, "jsonp must be one callback name of [A-Za-z0-9._-], 64 at most")
            return
        values = params.get("message")
        if not values:
            exchange.fail(400, "callback-polling needs a message parameter")
            return
        messages: list[Any] = []
        for value in values:
            batch, why = decode_messages(value.encode(), self.context.options.max_batch)
            if batch is None:
                exchange.fail(400, why)
                return
            messages.extend(batch)
        if len(messages) > self.context.options.max_batch:
            exchange.fail(400, f"batch exceeds max_batch={self.context.options.max_batch}")
            return
        exchange.transport = "callback-polling"
        exchange.jsonp = callbacks[0].encode()
        self.core.process(messages, exchange)

    def preflight(self, exchange: HttpExchange) -> None:
        if exchange.cors_origin is None:
            self.complete(exchange, self.plain_response(204, b"", exchange.keep_alive))
            return
        wanted = self.headers.get(b"access-control-request-headers", b"Content-Type")
        cors = (
            b"Access-Control-Allow-Origin: %s\r\n"
            b"Access-Control-Allow-Credentials: true\r\n"
            b"Access-Control-Allow-Methods: GET, POST, OPTIONS\r\n"
            b"Access-Control-Allow-Headers: %s\r\n"
            b"Access-Control-Max-Age: 86400\r\nVary: Origin\r\n" % (exchange.cors_origin, wanted)
        )
        self.complete(exchange, http_response(200, b"", cors, not exchange.keep_alive))

    @staticmethod
    def plain_response(status: int, body: bytes, keep_alive: bool) -> bytes:
        return http_response(status, body, b"", not keep_alive)

    def form_message(self, body: bytes, exchange: HttpExchange) -> bytes | None:
        """The `message` field of a form body, or None (and the exchange failed)."""
        values = parse_qs(body.decode("ascii", "replace")).get("message")
        if not values:
            exchange.fail(400, "form body without a message parameter")
            return None
        return values[0].encode()
