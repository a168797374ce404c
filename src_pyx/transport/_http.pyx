# cython: freethreading_compatible = False
"""The HTTP/1.1 path every request takes, compiled.

httptools parses and calls back into `HttpProtocol` for each piece of a
request; a complete request becomes an `HttpExchange`, and a Bayeux POST goes
straight from here to the core.  Finished responses leave in request order
(HTTP/1.1 pipelining), written by the server's `HttpEndpoint` once per loop
iteration.  Per long-polling cycle, the only Python code that runs is the
Bayeux core's.

`engine.transport.http.HttpConnection` subclasses `HttpProtocol` with the requests that
are not on that path: other routes, the WebSocket upgrade, callback-polling,
CORS preflights, form bodies, transport errors.  The methods it provides are
declared on `HttpProtocol` (and in the stub), each raising until overridden.

What a connection may cost is bounded as the bytes arrive, whatever the peer
sends: the request line and headers (`max_header_bytes`, counted across
reads, so a header that never ends is cut at that size instead of being
buffered whole by the parser), the number of headers, the body; and in time,
on the server's connection wheel (engine.transport.deadlines): the head must arrive
within `header_timeout`, the body within `body_timeout`, the next request on
a kept-alive connection within `keepalive_timeout`, and output the peer does
not read must drain within `write_timeout`.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeLatin1
from libc.math cimport ceil
from libc.string cimport memchr, memcmp

import asyncio
import logging

import httptools
import orjson

from engine.delivery._batch cimport splice_http, splice_jsonp
from engine.logs import log_access
from engine.protocol.limits import ConnectionLimits
from engine.ratelog import CauseLog

COOKIE_NAME = "BAYEUX_BROWSER"
MAX_HEAD_BYTES = 16384  # request line + headers (the default of max_header_bytes)
MAX_PIPELINE = 16  # requests waiting for their turn before reading pauses

# Every JSON and JSONP response says what it is and forbids sniffing (a JSONP
# reply must never be taken for HTML).
JSON_TYPE = b"Content-Type: application/json;charset=UTF-8\r\nX-Content-Type-Options: nosniff\r\n"
JAVASCRIPT_TYPE = (
    b"Content-Type: text/javascript;charset=UTF-8\r\nX-Content-Type-Options: nosniff\r\n"
)
NO_CACHE = b"Cache-Control: no-cache, no-store, must-revalidate\r\n"
HEAD_OK = b"HTTP/1.1 200 OK\r\n" + JSON_TYPE + NO_CACHE
REASONS = {
    200: b"OK",
    204: b"No Content",
    301: b"Moved Permanently",
    400: b"Bad Request",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    409: b"Conflict",
    413: b"Payload Too Large",
    414: b"URI Too Long",
    426: b"Upgrade Required",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    503: b"Service Unavailable",
}

log = logging.getLogger("engine.http")
limit_log = CauseLog(log)

cdef double INF = float("inf")

cdef bytes _COOKIE_PREFIX = COOKIE_NAME.encode() + b"="
cdef object _loads = orjson.loads
cdef object _JSONDecodeError = orjson.JSONDecodeError
cdef object _get_running_loop = asyncio.get_running_loop
cdef object _new_parser = httptools.HttpRequestParser
# The parser's methods, called unbound: no attribute lookup per request.
cdef object _feed_data = httptools.HttpRequestParser.feed_data
cdef object _get_method = httptools.HttpRequestParser.get_method
cdef object _should_keep_alive = httptools.HttpRequestParser.should_keep_alive

# Shared empty headers for idle connections; a request's first header makes
# its own dict.
cdef dict _NO_HEADERS = {}

# Header names as clients usually spell them, with their lowercase form: the
# lookup spares a lowered copy of each name per request.
cdef dict _LOWERED = {name: name.lower() for name in (
    b"Host", b"Content-Type", b"Content-Length", b"Cookie", b"Origin", b"Connection",
    b"User-Agent", b"Accept", b"Accept-Encoding", b"Accept-Language", b"Referer",
    b"Cache-Control", b"Pragma", b"Upgrade", b"Transfer-Encoding", b"Sec-WebSocket-Key",
    b"Sec-WebSocket-Version", b"Sec-WebSocket-Extensions", b"Sec-WebSocket-Protocol",
    b"Sec-Fetch-Site", b"Sec-Fetch-Mode", b"Sec-Fetch-Dest", b"X-Forwarded-For",
)}


cdef bytes ascii_lower(bytes name):
    """`name.lower()` without its method call, and no copy if already lower."""
    cdef const char* s = PyBytes_AS_STRING(name)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(name), i, first = -1
    for i in range(n):
        if b'A' <= s[i] <= b'Z':
            first = i
            break
    if first < 0:
        return name
    cdef bytes lowered = PyBytes_FromStringAndSize(s, n)  # new, not yet shared
    cdef char* d = PyBytes_AS_STRING(lowered)
    for i in range(first, n):
        if b'A' <= d[i] <= b'Z':
            d[i] = d[i] + 32
    return lowered


cdef long long decimal_length(bytes value):
    """A Content-Length value, or -1 if it is not plain digits (llhttp rejects
    those itself) or has more than 18 of them."""
    cdef const char* s = PyBytes_AS_STRING(value)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(value), i
    cdef long long length = 0
    if n == 0 or n > 18:
        return -1 if n == 0 else 10 ** 18
    for i in range(n):
        if not b'0' <= s[i] <= b'9':
            return -1
        length = length * 10 + (s[i] - 48)
    return length


cdef object cookie_value(bytes header):
    """The BAYEUX_BROWSER value in a Cookie header, as str, or None.

    Cookies are `name=value` pairs separated by `;` and optional spaces.
    """
    cdef const char* s = PyBytes_AS_STRING(header)
    cdef const char* end = s + PyBytes_GET_SIZE(header)
    cdef const char* prefix = PyBytes_AS_STRING(_COOKIE_PREFIX)
    cdef Py_ssize_t plen = PyBytes_GET_SIZE(_COOKIE_PREFIX)
    cdef const char* stop
    cdef const char* value_end
    while s < end:
        while s < end and (s[0] == b' ' or s[0] == b'\t'):
            s += 1
        stop = <const char*>memchr(s, b';', end - s)
        if stop == NULL:
            stop = end
        if stop - s > plen and memcmp(s, prefix, plen) == 0:
            value_end = stop
            while value_end > s + plen and (value_end[-1] == b' ' or value_end[-1] == b'\t'):
                value_end -= 1
            if value_end > s + plen:
                return PyUnicode_DecodeLatin1(s + plen, value_end - s - plen, NULL)
        s = stop + 1
    return None


class Abort(Exception):
    """Raised inside a parser callback to stop parsing with an HTTP error."""

    def __init__(self, status, detail):
        super().__init__(detail)
        self.status = status
        self.detail = detail


def http_response(int status, bytes body=b"", bytes headers=b"", bint close=False, length=None):
    """Every HTTP response off the long-polling path, built in one place.

    `headers`: complete header lines (each ending in CRLF), the content type
    among them; `length`: the Content-Length when it is not `len(body)` (a
    HEAD answer).  Responses say `nosniff` unless `headers` already do.
    """
    cdef bytes head = b"HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, b"Error")) + headers
    if b"X-Content-Type-Options" not in headers:
        head += b"X-Content-Type-Options: nosniff\r\n"
    if close:
        head += b"Connection: close\r\n"
    return head + b"Content-Length: %d\r\n\r\n" % (len(body) if length is None else length) + body


def error_body(status, detail):
    return orjson.dumps(
        {"error": f"{status} {REASONS.get(status, b'').decode()}", "detail": detail}
    )


def origin_host(str origin):
    """`http://example.com:8080` -> `example.com:8080`."""
    _, sep, rest = origin.partition("://")
    return (rest if sep else origin).rstrip("/")


def decode_messages(bytes body, Py_ssize_t max_batch):
    """A request body as a list of message objects, or None and why not."""
    result = decode_batch(body, max_batch)
    return (None, result) if type(result) is str else (result, "")


cdef object decode_batch(bytes body, Py_ssize_t max_batch):
    """The list of message objects in a request body, or why not (a str)."""
    cdef Py_ssize_t index
    try:
        value = _loads(body)
    except _JSONDecodeError as exc:
        return f"invalid JSON: {exc}"
    if type(value) is dict:
        return [value]
    if type(value) is not list:
        return "a Bayeux request is a JSON array of message objects"
    cdef list messages = <list>value
    if not messages:
        return "empty message array"
    if len(messages) > max_batch:
        return f"batch of {len(messages)} messages exceeds max_batch={max_batch}"
    for index in range(len(messages)):
        if type(messages[index]) is not dict:
            return f"message {index} is not a JSON object"
    return messages


cdef class HttpEndpoint:
    """What every HTTP connection of one server shares, and their writes.

    Connections hold one reference to it instead of a copy of each setting.

    Responses leave once per loop iteration, after every request read in it:
    a burst of answers (a publish releasing held connects, many sockets
    readable at once) then leaves together.  A write to a peer asleep in its
    poll wakes it, and one wake-up serves every response written in the
    burst instead of one each.  The delay is the rest of the iteration.
    """

    cdef readonly object context  # engine.transport.endpoint.Endpoint
    cdef readonly object core
    cdef object stats
    cdef object process
    cdef Py_ssize_t max_body
    cdef Py_ssize_t max_batch
    cdef Py_ssize_t max_head
    cdef Py_ssize_t max_headers
    cdef bytes base_path
    cdef readonly bytes set_cookie  # `% browser id`: the header of a new browser cookie
    cdef list conns  # connections with responses to write
    cdef bint scheduled
    cdef object call_soon
    # Timeouts in seconds (INF: none), and the wheel they are kept on.
    cdef public double header_timeout
    cdef public double body_timeout
    cdef public double keepalive_timeout
    cdef public double write_timeout
    cdef object deadlines
    cdef double resolution
    cdef public object time
    # Networks of trusted proxies (their X-Forwarded-For names the client).
    cdef public tuple proxies
    cdef public bint access_log  # a line per request (engine.logs.log_access)

    def __init__(self, context):
        self.context = context
        self.core = context.core
        self.stats = self.core.stats
        self.process = self.core.process
        options = context.options
        self.max_body = context.max_body
        self.max_batch = options.max_batch
        self.max_head = options.max_header_bytes
        self.max_headers = options.max_headers
        self.base_path = context.base_path
        self.set_cookie = context.set_cookie
        self.conns = []
        self.scheduled = False
        self.call_soon = None
        self.header_timeout = seconds(options.header_timeout)
        self.body_timeout = seconds(options.body_timeout)
        self.keepalive_timeout = seconds(options.keepalive_timeout)
        self.write_timeout = seconds(options.write_timeout)
        self.deadlines = self.core.deadlines
        self.resolution = self.deadlines.wheel.resolution
        self.time = self.core.loop.time
        self.proxies = options.proxy_networks
        self.access_log = options.access_log

    cdef schedule(self, HttpProtocol conn):
        self.conns.append(conn)
        if not self.scheduled:
            self.scheduled = True
            if self.call_soon is None:  # (asking for the loop costs a getpid())
                self.call_soon = _get_running_loop().call_soon
            self.call_soon(self.flush)

    def flush(self):
        cdef HttpProtocol conn
        self.scheduled = False
        conns = self.conns
        self.conns = []
        for conn in conns:
            conn.flush()

    cdef bint is_bayeux_path(self, bytes url):
        """The base path, or below it (query string aside)."""
        cdef const char* s = PyBytes_AS_STRING(url)
        cdef const char* query = <const char*>memchr(s, b'?', PyBytes_GET_SIZE(url))
        cdef Py_ssize_t n = query - s if query != NULL else PyBytes_GET_SIZE(url)
        cdef Py_ssize_t base = PyBytes_GET_SIZE(self.base_path)
        if n < base or memcmp(s, PyBytes_AS_STRING(self.base_path), base) != 0:
            return False
        return n == base or s[base] == b'/'


def log_exchange(HttpExchange exchange, bytes written):
    """The access-log line of an answered request (`written`: its response)."""
    method, url, start = exchange.access
    log_access(
        exchange.client_address,
        (<bytes>method).decode("latin-1"),
        # Never the query string: it may carry a token or a JSONP callback.
        (<bytes>url).partition(b"?")[0].decode("latin-1"),
        int(written[9:12]),
        PyBytes_GET_SIZE(written),
        (exchange.conn.endpoint.time() - <double>start) * 1000.0,
    )


cdef double seconds(int ms):
    return ms / 1000.0 if ms > 0 else INF


cdef class HttpExchange:
    """One HTTP request waiting for its response."""

    cdef public HttpProtocol conn
    cdef public str transport
    cdef public object browser_id
    cdef public object new_browser_id
    cdef public object hold
    cdef public object cors_origin
    cdef public object response
    cdef public object jsonp  # the callback name, for callback-polling
    cdef public bint keep_alive
    # The connection's limits (engine.protocol.limits), once the core needed them.
    cdef public object limits
    cdef public object client_address
    cdef public bint head_only  # a HEAD request: the response goes without its body
    # With access_log on: (method, url, loop time when read), for its line.
    cdef public object access

    def __init__(self, HttpProtocol conn, bint keep_alive):
        self.setup(conn, keep_alive)

    cdef setup(self, HttpProtocol conn, bint keep_alive):
        self.conn = conn
        self.transport = "long-polling"
        self.browser_id = conn.cookie_browser
        self.new_browser_id = None
        self.hold = None
        self.cors_origin = conn.cors_origin
        self.keep_alive = keep_alive
        self.response = None
        self.jsonp = None
        self.limits = conn.limits
        self.client_address = conn.client_address
        self.head_only = False
        self.access = None

    @property
    def cookie_presented(self):
        return self.browser_id is not None

    def make_limits(self):
        """This connection's limits, made on first use (most never need them);
        none for a trusted proxy's connection (it carries many clients)."""
        conn = self.conn
        if conn.via_proxy:
            return None
        if conn.limits is None:
            conn.limits = ConnectionLimits(conn.throttle)
        self.limits = conn.limits
        return self.limits

    def session_count(self):
        return 0  # HTTP sessions are counted per browser, not per connection

    def room(self):
        return self.conn.endpoint.core.max_batch_bytes

    def bind(self, session):
        # HTTP sessions are bound by their browser cookie instead; a session
        # that moved from WebSocket to HTTP (a fallback) leaves its socket.
        sink = session.sink
        if sink is not None:
            sink.unbind(session)

    def is_gone(self):
        return self.conn.closed

    cpdef bytes head(self, bytes content_type=JSON_TYPE):
        cdef bytes extra = b""
        if self.new_browser_id is not None:
            extra += self.conn.endpoint.set_cookie % self.new_browser_id.encode()
        if self.cors_origin is not None:
            extra += (
                b"Access-Control-Allow-Origin: %s\r\n"
                b"Access-Control-Allow-Credentials: true\r\nVary: Origin\r\n" % self.cors_origin
            )
        if not self.keep_alive or self.conn.endpoint.core.draining:
            extra += b"Connection: close\r\n"
        if not extra and content_type is JSON_TYPE:
            return HEAD_OK
        return b"HTTP/1.1 200 OK\r\n" + content_type + NO_CACHE + extra

    def send(self, list parts):
        if self.jsonp is not None:
            response = splice_jsonp(self.head(JAVASCRIPT_TYPE), self.jsonp, parts)
        else:
            response = splice_http(self.head(JSON_TYPE), parts)
        self.conn.complete(self, response)

    def fail(self, int status, str detail=""):
        self.conn.complete(self, self.conn.error_response(status, detail, self.keep_alive))


cdef class HttpProtocol:
    """One TCP connection speaking HTTP/1.1 (see the module docstring)."""

    cdef public HttpEndpoint endpoint
    cdef public object parser
    cdef public object transport
    cdef public bytes url
    cdef public Py_ssize_t head_bytes
    cdef public dict headers
    # The body read so far: b"", its one piece (bytes), or a list of pieces.
    cdef public object body
    cdef public Py_ssize_t body_size
    # Exchanges in request order; the first one's response goes out first.
    cdef public list pending
    # Finished responses waiting for the endpoint's flush: None, one response
    # (bytes), or a list of them.
    cdef public object out
    cdef public bint close_after_out
    cdef public bint closed
    cdef public object cookie_browser
    cdef public object cors_origin
    cdef public bint reading_paused
    cdef public object upgraded
    cdef public object limits  # engine.protocol.limits.ConnectionLimits, made on first use
    cdef public bint throttled  # reading paused for a while (see ConnectionLimits)
    cdef public object client_address  # the peer's address (str), or None
    cdef public bint via_proxy  # the peer is a trusted proxy (see client_address_of)
    # Where the current request is: 0 between requests, 1 in its head, 2 in
    # its body; and the bytes of head read after the read it began in.
    cdef public int phase
    cdef bint began
    cdef bint finished  # a request ended in the current read
    cdef Py_ssize_t head_wait
    cdef Py_ssize_t header_count
    # Deadlines (engine.transport.deadlines): the phase's, the blocked output's, and
    # the earlier of the two, filed in the wheel's slot `deadline_slot`.
    cdef public double phase_due
    cdef public double write_due
    cdef public double deadline
    cdef public Py_ssize_t deadline_slot

    def __init__(self, HttpEndpoint endpoint):
        self.endpoint = endpoint
        self.parser = _new_parser(self)
        self.transport = None
        self.url = b""
        self.head_bytes = 0
        self.headers = _NO_HEADERS
        self.body = b""
        self.body_size = 0
        self.pending = []
        self.out = None
        self.close_after_out = False
        self.closed = False
        self.cookie_browser = None
        self.cors_origin = None
        self.reading_paused = False
        self.upgraded = None
        self.limits = None
        self.throttled = False
        self.client_address = None
        self.via_proxy = False
        self.phase = 0
        self.began = False
        self.finished = False
        self.head_wait = 0
        self.header_count = 0
        self.phase_due = INF
        self.write_due = INF
        self.deadline = INF
        self.deadline_slot = -1

    @property
    def context(self):
        return self.endpoint.context

    @property
    def core(self):
        return self.endpoint.core

    cdef internal_error(self, exc):
        """A bug met handling a request: counted, logged once per cause (with
        its traceback) and per period with a count, never once per request."""
        self.endpoint.stats.internal_errors += 1
        limit_log.exception(
            f"request:{type(exc).__name__}", "internal error handling a request: %r", exc
        )

    # ---------------------------------------------------------- deadlines

    cpdef rearm(self):
        """File the earlier deadline in the wheel, if earlier than its entry
        (a later one costs a store: the wheel refiles it when due)."""
        cdef double when = self.phase_due if self.phase_due < self.write_due else self.write_due
        self.deadline = when
        if when == INF:
            return
        cdef Py_ssize_t slot = <Py_ssize_t>ceil(when / self.endpoint.resolution)
        if self.deadline_slot < 0 or slot < self.deadline_slot:
            self.endpoint.deadlines.arm(self, when)

    cpdef expect_request(self, double timeout):
        """Nothing is owed: the next request must come within `timeout`."""
        self.phase_due = self.endpoint.time() + timeout if timeout != INF else INF
        self.rearm()

    def on_deadline(self, double now):
        """The wheel: output blocked too long, or a request too slow to come."""
        cdef HttpEndpoint endpoint = self.endpoint
        stats = endpoint.stats
        transport = self.transport
        if transport is None or self.closed:
            return
        if now >= self.write_due:
            stats.write_timeouts += 1
            limit_log.warning(
                "http_write_timeout",
                "HTTP connection from %s closed: it read nothing for %.0f s with output waiting",
                self.client_address, endpoint.write_timeout,
            )
            transport.abort()  # (close() would wait for the unread output)
            return
        if now < self.phase_due:
            self.rearm()
            return
        if self.phase == 0 and not self.pending and self.head_wait == 0:
            stats.http_idle_timeouts += 1
            self.closed = True
            transport.close()
            return
        if self.phase == 2:
            stats.http_body_timeouts += 1
            cause, detail = "http_body_timeout", "request body not received within body_timeout"
        else:
            stats.http_header_timeouts += 1
            cause, detail = "http_header_timeout", "request head not received within header_timeout"
        limit_log.warning(cause, "HTTP connection from %s closed: %s", self.client_address, detail)
        self.phase_due = INF
        if self.pending:  # answers owed first: no room for a 408
            transport.close()
        else:
            self.abort(408, detail)

    # ------------------------------------------------------------ reading

    def data_received(self, bytes data):
        self.began = False
        self.finished = False
        try:
            _feed_data(self.parser, data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__ or exc.__cause__
            if isinstance(cause, Abort):
                self.abort(cause.status, cause.detail)
            else:
                self.internal_error(cause)
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
            self.endpoint.stats.http_errors += 1
            self.abort(400, f"malformed HTTP request: {exc}")
            return
        if self.phase == 1 and not self.closed and not (self.began and self.finished):
            # In a head not finished yet: the parser keeps an unfinished
            # header value whole (and copies it on each read), so its size is
            # bounded here, as it arrives.  (A read that also ended a request
            # holds an unknown part of it: not counted, one read at most.)
            self.head_wait += PyBytes_GET_SIZE(data)
            if self.head_wait > self.endpoint.max_head:
                self.endpoint.stats.http_head_too_large += 1
                self.abort(431, "request head too large (max_header_bytes)")

    def on_message_begin(self):
        self.phase = 1
        self.began = True
        self.head_wait = 0
        self.header_count = 0
        cdef HttpEndpoint endpoint = self.endpoint
        if endpoint.header_timeout != INF:
            when = endpoint.time() + endpoint.header_timeout
            if when < self.phase_due:
                self.phase_due = when
                self.rearm()

    def on_url(self, bytes url):
        self.url += url
        self.head_bytes += len(url)
        if self.head_bytes > self.endpoint.max_head:
            self.endpoint.stats.http_head_too_large += 1
            raise Abort(414, "request line too long (max_header_bytes)")

    def on_header(self, bytes name, bytes value):
        cdef long long length
        self.head_bytes += PyBytes_GET_SIZE(name) + PyBytes_GET_SIZE(value)
        self.header_count += 1
        if self.head_bytes > self.endpoint.max_head or self.header_count > self.endpoint.max_headers:
            self.endpoint.stats.http_head_too_large += 1
            raise Abort(431, "request headers too large (max_header_bytes, max_headers)")
        if self.headers is _NO_HEADERS:
            self.headers = {}
        lowered = _LOWERED.get(name)
        name = ascii_lower(name) if lowered is None else <bytes>lowered
        if name in self.headers and (name == b"content-length" or name == b"transfer-encoding"):
            raise Abort(400, f"repeated {name.decode()} header")
        self.headers[name] = value
        if name == b"content-length":
            length = decimal_length(value)
            if length > self.endpoint.max_body:
                raise Abort(
                    413, f"body of {length} bytes exceeds max_message_size={self.endpoint.max_body}"
                )

    def on_headers_complete(self):
        self.phase = 2
        headers = self.headers
        if b"transfer-encoding" in headers and b"content-length" in headers:
            raise Abort(400, "both Transfer-Encoding and Content-Length")
        cdef HttpEndpoint endpoint = self.endpoint
        if endpoint.body_timeout != INF:
            self.phase_due = endpoint.time() + endpoint.body_timeout  # (later: a store)
            self.rearm()

    def on_body(self, bytes body):
        self.body_size += len(body)
        if self.body_size > self.endpoint.max_body:
            raise Abort(413, f"body exceeds max_message_size={self.endpoint.max_body}")
        pieces = self.body
        if type(pieces) is list:
            (<list>pieces).append(body)
        elif pieces:
            self.body = [pieces, body]
        else:
            self.body = body

    def on_message_complete(self):
        cdef HttpEndpoint endpoint = self.endpoint
        endpoint.stats.http_requests += 1
        parser = self.parser
        method = _get_method(parser)
        cdef bint keep_alive = _should_keep_alive(parser) and not endpoint.core.draining
        self.phase = 0
        self.finished = True
        self.phase_due = INF  # a response is owed now; then expect_request
        self.read_cookie_and_origin()
        cdef HttpExchange exchange = HttpExchange.__new__(HttpExchange)  # (no __init__ call)
        exchange.setup(self, keep_alive)
        if self.via_proxy:
            exchange.client_address = self.forwarded_address()
        if method == b"HEAD":
            exchange.head_only = True
        if endpoint.access_log:
            exchange.access = (method, self.url, endpoint.time())
        self.pending.append(exchange)
        if len(self.pending) >= MAX_PIPELINE and self.transport is not None:
            self.transport.pause_reading()
            self.reading_paused = True
        try:
            if (b"upgrade" in self.headers or method == b"CONNECT") and parser.should_upgrade():
                self.upgrade(exchange)
            elif method == b"POST" and endpoint.is_bayeux_path(self.url):
                self.long_poll(exchange)
            else:
                self.route(exchange)
        except Exception as exc:
            self.internal_error(exc)
            if exchange.response is None and exchange.hold is None:
                exchange.fail(500, "internal error")
        finally:
            # An idle connection (a held long-poll) keeps none of its request:
            # about a kilobyte per client otherwise.
            self.url = b""
            self.head_bytes = 0
            self.headers = _NO_HEADERS
            self.body = b""
            self.body_size = 0

    cdef read_cookie_and_origin(self):
        cookie = self.headers.get(b"cookie")
        self.cookie_browser = cookie_value(cookie) if cookie is not None else None
        self.cors_origin = None
        origin = self.headers.get(b"origin")
        if origin is not None:
            text = origin.decode("latin-1")
            host = self.headers.get(b"host", b"").decode("latin-1")
            context = self.endpoint.context
            if not context.same_origin(text, host) and context.origin_allowed(text):
                self.cors_origin = origin

    cdef long_poll(self, HttpExchange exchange):
        """A Bayeux POST: its body is the message batch (JSON, or a form field)."""
        if b"origin" in self.headers and self.cross_origin_refused():
            exchange.fail(403, "origin not allowed (see --allowed-origins)")
            return
        pieces = self.body
        cdef bytes body = b"".join(pieces) if type(pieces) is list else pieces
        self.body = b""
        if PyBytes_GET_SIZE(body) >= 8 and memcmp(PyBytes_AS_STRING(body), b"message=", 8) == 0:
            # Form body (Faye's cross-origin-long-polling, the spec's form).
            body = self.form_message(body, exchange)
            if body is None:
                return
        messages = decode_batch(body, self.endpoint.max_batch)
        if type(messages) is str:
            exchange.fail(400, messages)
            return
        self.endpoint.process(messages, exchange)

    # ------------------------------------------- the Python subclass's part
    # What engine.transport.http.HttpConnection implements in Python (requests off the
    # hot path).  Declared here, with the stub's types in engine/transport/_http.pyi,
    # so a rename is a type error, not a crash.

    def abort(self, status, detail):
        raise NotImplementedError

    def route(self, exchange):
        raise NotImplementedError

    def upgrade(self, exchange):
        raise NotImplementedError

    def cross_origin_refused(self):
        raise NotImplementedError

    def form_message(self, body, exchange):
        raise NotImplementedError

    def forwarded_address(self):
        raise NotImplementedError

    # ------------------------------------------------------------ writing

    cpdef complete(self, HttpExchange exchange, bytes response):
        """Store a response; queue every finished one at the head of the line."""
        cdef HttpExchange done
        exchange.response = response
        pending = self.pending
        if self.closed or not pending or pending[0] is not exchange:
            return
        if self.out is None:
            self.endpoint.schedule(self)
        while pending and (<HttpExchange>pending[0]).response is not None:
            done = pending.pop(0)
            written = <bytes>done.response
            if done.head_only:  # HEAD: the head alone (its Content-Length stays)
                cut = written.find(b"\r\n\r\n")
                if cut >= 0:
                    written = written[: cut + 4]
            out = self.out
            if out is None:
                self.out = written
            elif type(out) is list:
                (<list>out).append(written)
            else:
                self.out = [out, written]
            if done.access is not None:
                log_exchange(done, written)
            # Whatever still references the exchange (the hold being answered)
            # keeps no bytes alive.
            done.response = None
            # While draining, every answered request closes its connection, so
            # clients reconnect elsewhere instead of reusing a closing socket.
            if not done.keep_alive or self.endpoint.core.draining:
                pending.clear()
                self.close_after_out = True
                self.closed = True
                return
        if not pending and self.phase == 0:
            self.expect_request(self.endpoint.keepalive_timeout)
        if (
            self.reading_paused
            and len(pending) < MAX_PIPELINE
            and self.write_due == INF
            and not self.throttled
        ):
            self.reading_paused = False
            self.transport.resume_reading()

    cpdef flush(self):
        """Write the finished responses (the endpoint's flush calls this)."""
        out = self.out
        if out is None:
            return
        self.out = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(b"".join(out) if type(out) is list else out)
        if self.close_after_out:
            transport.close()

    def error_response(self, int status, str detail, bint keep_alive):
        self.endpoint.stats.http_errors += 1
        return http_response(status, error_body(status, detail), JSON_TYPE, not keep_alive)
