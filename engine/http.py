"""HTTP/1.1 on httptools: keep-alive, pipelining, CORS, and the long-polling transport.

One `HttpConnection` per TCP connection.  httptools calls back while it
parses; a complete request becomes an `HttpExchange` that the core answers
(at once, or later for a held `/meta/connect`).  Responses leave in request
order, as HTTP/1.1 pipelining requires.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import httptools
import orjson

from engine._batch import splice_http, splice_jsonp
from engine.session import Hold
from engine.websocket import WebSocketConnection, upgrade_response

if TYPE_CHECKING:
    from engine.server import BayeuxServer
    from engine.session import Session

__all__ = ["HttpConnection", "HttpExchange"]

log = logging.getLogger("engine.http")

COOKIE_NAME = "BAYEUX_BROWSER"
MAX_HEAD_BYTES = 16384  # request line + headers
MAX_PIPELINE = 16  # requests waiting for their turn before reading pauses

JSON_TYPE = b"Content-Type: application/json;charset=UTF-8\r\n"
JAVASCRIPT_TYPE = b"Content-Type: text/javascript;charset=UTF-8\r\n"
JSONP_CALLBACK = re.compile(r"[A-Za-z0-9._-]{1,64}")
NO_CACHE = b"Cache-Control: no-cache, no-store, must-revalidate\r\n"
REASONS = {
    200: b"OK",
    204: b"No Content",
    301: b"Moved Permanently",
    400: b"Bad Request",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    413: b"Payload Too Large",
    426: b"Upgrade Required",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    503: b"Service Unavailable",
}
HEAD_OK = b"HTTP/1.1 200 OK\r\n" + JSON_TYPE + NO_CACHE


# Shared empty values for idle connections; on_message_begin makes new ones.
_NO_HEADERS: dict[bytes, bytes] = {}
_NO_BODY: list[bytes] = []


class _NoProtocol:
    """Callbacks for a parser that no longer belongs to a connection."""


# A parser of no connection, for connections that are done with theirs: a
# connection and its parser reference each other, and the code breaks such
# cycles itself so that the garbage collector can skip long-lived objects.
_DETACHED = httptools.HttpRequestParser(_NoProtocol())


class _Abort(Exception):
    """Raised inside a parser callback to stop parsing with an HTTP error."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def error_body(status: int, detail: str) -> bytes:
    return orjson.dumps(
        {"error": f"{status} {REASONS.get(status, b'').decode()}", "detail": detail}
    )


def origin_host(origin: str) -> str:
    """`http://example.com:8080` -> `example.com:8080`."""
    return origin.split("://", 1)[-1].rstrip("/")


class HttpExchange:
    """One HTTP request waiting for its response."""

    __slots__ = (
        "conn",
        "transport",
        "browser_id",
        "new_browser_id",
        "hold",
        "cors_origin",
        "keep_alive",
        "response",
        "jsonp",
    )

    def __init__(self, conn: HttpConnection, keep_alive: bool) -> None:
        self.conn = conn
        self.transport = "long-polling"
        self.browser_id: str | None = conn.cookie_browser
        self.new_browser_id: str | None = None
        self.hold: Hold | None = None
        self.cors_origin: bytes | None = conn.cors_origin
        self.keep_alive = keep_alive
        self.response: bytes | None = None
        self.jsonp: bytes | None = None  # the callback name, for callback-polling

    def bind(self, session: Session) -> None:
        # HTTP sessions are bound by their browser cookie instead; a session
        # that moved from WebSocket to HTTP (a fallback) leaves its socket.
        ws = session.ws
        if ws is not None:
            ws.unbind(session)

    def is_gone(self) -> bool:
        return self.conn.closed

    def head(self, content_type: bytes = JSON_TYPE) -> bytes:
        extra = b""
        if self.new_browser_id is not None:
            extra += b"Set-Cookie: %s=%s; Path=/; HttpOnly\r\n" % (
                COOKIE_NAME.encode(),
                self.new_browser_id.encode(),
            )
        if self.cors_origin is not None:
            extra += (
                b"Access-Control-Allow-Origin: %s\r\n"
                b"Access-Control-Allow-Credentials: true\r\nVary: Origin\r\n" % self.cors_origin
            )
        if not self.keep_alive or self.conn.core.draining:
            extra += b"Connection: close\r\n"
        if not extra and content_type is JSON_TYPE:
            return HEAD_OK
        return b"HTTP/1.1 200 OK\r\n" + content_type + NO_CACHE + extra

    def send(self, parts: list[bytes]) -> None:
        if self.jsonp is not None:
            response = splice_jsonp(self.head(JAVASCRIPT_TYPE), self.jsonp, parts)
        else:
            response = splice_http(self.head(), parts)
        self.conn.complete(self, response)

    def fail(self, status: int, detail: str = "") -> None:
        self.conn.complete(self, self.conn.error_response(status, detail, self.keep_alive))


class HttpConnection(asyncio.Protocol):
    __slots__ = (
        "server",
        "core",
        "parser",
        "transport",
        "url",
        "head_bytes",
        "headers",
        "body",
        "body_size",
        "pending",
        "closed",
        "cookie_browser",
        "cors_origin",
        "reading_paused",
        "upgraded",
    )

    def __init__(self, server: BayeuxServer) -> None:
        self.server = server
        self.core = server.core
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.head_bytes = 0
        self.headers: dict[bytes, bytes] = _NO_HEADERS
        self.body: list[bytes] = _NO_BODY
        self.body_size = 0
        # Exchanges in request order; the first one's response goes out first.
        self.pending: list[HttpExchange] = []
        self.closed = False
        self.cookie_browser: str | None = None
        self.cors_origin: bytes | None = None
        self.reading_paused = False
        self.upgraded: WebSocketConnection | None = None

    # ----------------------------------------------------------- connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if len(self.server.connections) >= self.server.max_connections:
            # At the open-files limit: refuse cleanly now rather than fail at
            # random later (the client retries, elsewhere behind a balancer).
            self.core.stats.connections_refused += 1
            self.closed = True
            body = error_body(503, "server at its connection limit; retry later")
            transport.write(  # type: ignore[attr-defined]
                b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 2\r\n"
                + JSON_TYPE
                + b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body)
                + body
            )
            transport.close()
            return
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.parser = _DETACHED  # break the connection <-> parser cycle (no GC needed)
        self.server.connections.discard(self)
        for exchange in self.pending:
            if exchange.hold is not None:
                self.core.abandon(exchange.hold)
        self.pending.clear()

    def shutdown(self) -> None:
        """Server stopping: close now unless a response is still owed."""
        if self.transport is not None and not self.pending:
            self.transport.close()

    def pause_writing(self) -> None:
        # The peer reads slowly: stop reading its requests until it catches up.
        if self.transport is not None and not self.reading_paused:
            self.transport.pause_reading()
            self.reading_paused = True

    def resume_writing(self) -> None:
        if self.transport is not None and self.reading_paused and not self.closed:
            self.transport.resume_reading()
            self.reading_paused = False

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__ or exc.__cause__
            if isinstance(cause, _Abort):
                self.abort(cause.status, cause.detail)
            else:
                log.exception("internal error handling a request")
                self.abort(500, "internal error")
        except httptools.HttpParserUpgrade as exc:
            ws = self.upgraded
            if ws is not None:  # the rest of the bytes are WebSocket frames
                offset = exc.args[0] if exc.args else len(data)
                if offset < len(data):
                    ws.data_received(data[offset:])
            elif not self.closed:
                self.abort(400, "protocol upgrade refused")
        except httptools.HttpParserError as exc:
            self.server.core.stats.http_errors += 1
            self.abort(400, f"malformed HTTP request: {exc}")

    def abort(self, status: int, detail: str) -> None:
        """A transport-level error: answer it after what is pending, then close."""
        if self.closed or self.transport is None:
            return
        exchange = HttpExchange(self, keep_alive=False)
        self.pending.append(exchange)
        self.complete(exchange, self.error_response(status, detail, keep_alive=False))
        self.parser = httptools.HttpRequestParser(self)  # stop using the broken stream
        self.transport.pause_reading()
        self.reading_paused = True

    def error_response(self, status: int, detail: str, keep_alive: bool) -> bytes:
        self.server.core.stats.http_errors += 1
        body = error_body(status, detail)
        head = b"HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, b"Error")) + JSON_TYPE
        if not keep_alive:
            head += b"Connection: close\r\n"
        return head + b"Content-Length: %d\r\n\r\n" % len(body) + body

    def complete(self, exchange: HttpExchange, response: bytes) -> None:
        """Store a response; write every finished one at the head of the line."""
        exchange.response = response
        pending = self.pending
        if self.closed or not pending or pending[0] is not exchange:
            return
        transport = self.transport
        assert transport is not None
        while pending and pending[0].response is not None:
            done = pending.pop(0)
            transport.write(done.response)  # type: ignore[arg-type]
            # The timer wheel may still reference this exchange (through its
            # answered hold) until the original deadline: keep no bytes alive.
            done.response = None
            # While draining, every answered request closes its connection, so
            # clients reconnect elsewhere instead of reusing a closing socket.
            if not done.keep_alive or self.core.draining:
                pending.clear()
                transport.close()
                self.closed = True
                return
        if self.reading_paused and len(pending) < MAX_PIPELINE:
            self.reading_paused = False
            transport.resume_reading()

    # ------------------------------------------------------ parser callbacks

    def on_message_begin(self) -> None:
        self.url = b""
        self.head_bytes = 0
        self.headers = {}
        self.body = []
        self.body_size = 0

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_bytes += len(url)
        if self.head_bytes > MAX_HEAD_BYTES:
            raise _Abort(431, "request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_bytes += len(name) + len(value)
        if self.head_bytes > MAX_HEAD_BYTES:
            raise _Abort(431, "request headers too large")
        self.headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        length = self.headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.server.max_body:
            raise _Abort(
                413, f"body of {int(length)} bytes exceeds max_message_size={self.server.max_body}"
            )

    def on_body(self, body: bytes) -> None:
        self.body_size += len(body)
        if self.body_size > self.server.max_body:
            raise _Abort(413, f"body exceeds max_message_size={self.server.max_body}")
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.core.stats.http_requests += 1
        keep_alive = self.parser.should_keep_alive() and not self.core.draining
        self.read_cookie_and_origin()
        exchange = HttpExchange(self, keep_alive)
        self.pending.append(exchange)
        if len(self.pending) >= MAX_PIPELINE and self.transport is not None:
            self.transport.pause_reading()
            self.reading_paused = True
        if self.parser.should_upgrade():
            self.upgrade(exchange)
            return
        try:
            self.route(exchange)
        except Exception:
            log.exception("internal error handling a request")
            if exchange.response is None and exchange.hold is None:
                exchange.fail(500, "internal error")
        finally:
            # An idle connection (a held long-poll) keeps none of its request:
            # about a kilobyte per client otherwise.
            self.headers = _NO_HEADERS
            self.body = _NO_BODY
            self.url = b""

    # --------------------------------------------------------------- routing

    def read_cookie_and_origin(self) -> None:
        self.cookie_browser = None
        cookie = self.headers.get(b"cookie")
        if cookie:
            for item in cookie.split(b";"):
                name, _, value = item.strip().partition(b"=")
                if name == b"BAYEUX_BROWSER" and value:
                    self.cookie_browser = value.decode("latin-1")
                    break
        self.cors_origin = None
        origin = self.headers.get(b"origin")
        if origin is not None:
            text = origin.decode("latin-1")
            host = self.headers.get(b"host", b"").decode("latin-1")
            if origin_host(text) != host and self.server.origin_allowed(text):
                self.cors_origin = origin

    def cross_origin_refused(self) -> bool:
        origin = self.headers.get(b"origin")
        if origin is None:
            return False
        text = origin.decode("latin-1")
        host = self.headers.get(b"host", b"").decode("latin-1")
        return origin_host(text) != host and not self.server.origin_allowed(text)

    def route(self, exchange: HttpExchange) -> None:
        path, _, query = self.url.partition(b"?")
        base = self.server.base_path
        method = self.parser.get_method()
        if not (path == base or path.startswith(base + b"/") or (not base and path == b"/")):
            answer = self.server.admin.handle(method, path, self.headers, query)
            if answer is None:
                exchange.fail(404, "no Bayeux endpoint at this path")
            else:
                self.complete(exchange, answer)
            return
        if self.cross_origin_refused():
            exchange.fail(403, "origin not allowed (see --allowed-origins)")
            return
        if method == b"POST":
            self.long_poll(exchange)
        elif method == b"OPTIONS":
            self.preflight(exchange)
        elif method == b"GET":
            self.callback_poll(exchange, query)
        else:
            exchange.fail(405, f"method {method.decode('latin-1')} not allowed")

    def upgrade(self, exchange: HttpExchange) -> None:
        """Switch this connection to the WebSocket transport (RFC 6455 4.2)."""
        exchange.keep_alive = False  # any refusal below closes the connection
        path = self.url.partition(b"?")[0]
        base = self.server.base_path
        if not (path == base or path == base + b"/" or (not base and path == b"/")):
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
        status, head, why = upgrade_response(self.headers)
        if status != 101:
            body = error_body(status, why)
            self.complete(
                exchange,
                b"HTTP/1.1 %d %s\r\n%sContent-Type: application/json\r\n"
                b"Connection: close\r\nContent-Length: %d\r\n\r\n"
                % (status, REASONS.get(status, b"Upgrade Required"), head, len(body))
                + body,
            )
            return
        transport = self.transport
        assert transport is not None
        self.pending.clear()
        ws = WebSocketConnection(self.server, transport)
        self.upgraded = ws
        self.server.connections.discard(self)
        self.server.connections.add(ws)
        self.core.stats.ws_upgrades += 1
        transport.write(head)
        transport.set_protocol(ws)
        self.parser = _DETACHED  # this object is done: no cycle left for the GC

    def callback_poll(self, exchange: HttpExchange, query: bytes) -> None:
        """callback-polling (JSONP): GET ?jsonp=<callback>&message=<JSON array> (7.3)."""
        if "callback-polling" not in self.core.transports:
            exchange.fail(400, "the callback-polling transport is not allowed on this server")
            return
        params = parse_qs(query.decode("latin-1"), max_num_fields=64)
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
            batch, why = decode_messages(value.encode(), self.server.options.max_batch)
            if batch is None:
                exchange.fail(400, why)
                return
            messages.extend(batch)
        if len(messages) > self.server.options.max_batch:
            exchange.fail(400, f"batch exceeds max_batch={self.server.options.max_batch}")
            return
        exchange.transport = "callback-polling"
        exchange.jsonp = callbacks[0].encode()
        self.core.process(messages, exchange)

    def preflight(self, exchange: HttpExchange) -> None:
        if exchange.cors_origin is None:
            self.complete(exchange, self.plain_response(204, b"", exchange.keep_alive))
            return
        wanted = self.headers.get(b"access-control-request-headers", b"Content-Type")
        head = (
            b"HTTP/1.1 200 OK\r\n"
            b"Access-Control-Allow-Origin: %s\r\n"
            b"Access-Control-Allow-Credentials: true\r\n"
            b"Access-Control-Allow-Methods: GET, POST, OPTIONS\r\n"
            b"Access-Control-Allow-Headers: %s\r\n"
            b"Access-Control-Max-Age: 86400\r\nVary: Origin\r\n" % (exchange.cors_origin, wanted)
        )
        if not exchange.keep_alive:
            head += b"Connection: close\r\n"
        self.complete(exchange, head + b"Content-Length: 0\r\n\r\n")

    @staticmethod
    def plain_response(status: int, body: bytes, keep_alive: bool) -> bytes:
        head = b"HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, b""))
        if not keep_alive:
            head += b"Connection: close\r\n"
        return head + b"Content-Length: %d\r\n\r\n" % len(body) + body

    def long_poll(self, exchange: HttpExchange) -> None:
        body = b"".join(self.body)
        self.body = _NO_BODY
        if body.startswith(b"message="):
            # Form body (Faye's cross-origin-long-polling, the spec's form).
            values = parse_qs(body.decode("ascii", "replace")).get("message")
            if not values:
                exchange.fail(400, "form body without a message parameter")
                return
            body = values[0].encode()
        messages = self.server.decode_batch(body, exchange)
        if messages is not None:
            self.core.process(messages, exchange)


def decode_messages(body: bytes, max_batch: int) -> tuple[list[Any] | None, str]:
    """A request body as a list of message objects, or None and why not."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return None, f"invalid JSON: {exc}"
    if type(value) is dict:
        return [value], ""
    if type(value) is not list:
        return None, "a Bayeux request is a JSON array of message objects"
    if not value:
        return None, "empty message array"
    if len(value) > max_batch:
        return None, f"batch of {len(value)} messages exceeds max_batch={max_batch}"
    for index, item in enumerate(value):
        if type(item) is not dict:
            return None, f"message {index} is not a JSON object"
    return value, ""
