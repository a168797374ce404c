"""The HTTP request behind a Bayeux message, as the security policy sees it.

CometD gives its `SecurityPolicy` a `BayeuxContext` (headers, cookies,
remote address) of the request being processed
(https://docs.cometd.org/current/reference/#_java_server_authorization):
here `current_context()`, called inside a policy method (or an authorizer),
returns an `HttpContext` for every transport:

- long-polling and callback-polling: the HTTP request that carried the
  message;
- WebSocket: the upgrade request of the socket.  Keeping it costs about a
  kilobyte per connection, so it is kept only when the policy says it reads
  it (`SecurityPolicy.uses_http_context = True`, or the names of the headers
  it reads, e.g. `frozenset({"cookie"})`, which keeps only those); otherwise
  a WebSocket message has a context with the address alone;
- a request forwarded to the session's node in a cluster: the headers the
  receiving node saw (forwarded along when the policy uses them).

`remote_address` is the client's: the peer's address, or, from a trusted
proxy (`--trusted-proxies`), the last `X-Forwarded-For` entry that is not a
trusted proxy.  Outside a policy decision `current_context()` is None.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from http.cookies import CookieError, SimpleCookie
from typing import Any

__all__ = ["CURRENT", "HttpContext", "current_context", "context_of"]

# The request being decided on (set by the core): an HttpContext, or the exchange it is made
# from on first use (most decisions never look at it).
CURRENT: ContextVar[Any] = ContextVar("engine_http_context", default=None)


class HttpContext:
    """Headers (lower-case names), cookies and addresses of one request."""

    __slots__ = ("headers", "remote_address", "peer_address", "transport", "secure", "path", "_jar")

    def __init__(
        self,
        headers: Mapping[str, str],
        remote_address: str | None,
        transport: str,
        *,
        peer_address: str | None = None,
        secure: bool = False,
        path: str = "",
    ) -> None:
        self.headers = headers
        self.remote_address = remote_address
        self.peer_address = peer_address if peer_address is not None else remote_address
        self.transport = transport
        self.secure = secure  # the client's connection is TLS (to this server)
        self.path = path
        self._jar: dict[str, str] | None = None

    @classmethod
    def from_raw(
        cls,
        raw: Mapping[bytes, bytes],
        remote_address: str | None,
        transport: str,
        *,
        peer_address: str | None = None,
        secure: bool = False,
        url: bytes = b"",
        only: bool | frozenset[str] = True,
    ) -> HttpContext:
        """From a request's raw headers; `only`: True, or the names to keep."""
        headers = {
            k.decode("latin-1"): v.decode("latin-1")
            for k, v in raw.items()
            if only is True or k.decode("latin-1") in only  # type: ignore[operator]
        }
        path = url.partition(b"?")[0].decode("latin-1")
        return cls(
            headers,
            remote_address,
            transport,
            peer_address=peer_address,
            secure=secure,
            path=path,
        )

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)

    @property
    def cookies(self) -> dict[str, str]:
        """The request's cookies (a malformed Cookie header gives none)."""
        if self._jar is None:
            jar: dict[str, str] = {}
            raw = self.headers.get("cookie")
            if raw:
                parsed: SimpleCookie = SimpleCookie()
                try:
                    parsed.load(raw)
                except CookieError:
                    parsed = SimpleCookie()
                jar = {name: morsel.value for name, morsel in parsed.items()}
            self._jar = jar
        return self._jar

    def cookie(self, name: str) -> str | None:
        return self.cookies.get(name)

    def bearer_token(self) -> str | None:
        """The token of an `Authorization: Bearer <token>` header, if any."""
        value = self.headers.get("authorization", "")
        scheme, _, token = value.partition(" ")
        return token.strip() or None if scheme.lower() == "bearer" else None

    def __repr__(self) -> str:
        return f"<HttpContext {self.transport} from {self.remote_address}>"


def context_of(exchange: Any) -> HttpContext:
    """The context of a transport's exchange (see the module docstring)."""
    kept = getattr(exchange, "http_context", None)
    if kept is not None:
        return kept  # type: ignore[no-any-return]
    conn = getattr(exchange, "conn", None)
    raw = getattr(conn, "headers", None)
    if isinstance(raw, dict) and raw:  # an HTTP request, still being processed
        endpoint = conn.endpoint  # type: ignore[union-attr]
        return HttpContext.from_raw(
            raw,
            exchange.client_address,
            exchange.transport,
            peer_address=conn.client_address,  # type: ignore[union-attr]
            secure=endpoint.context.options.tls,
            url=conn.url,  # type: ignore[union-attr]
        )
    return HttpContext({}, exchange.client_address, exchange.transport)


def current_context() -> HttpContext | None:
    """The HTTP context of the request a policy is deciding on, or None."""
    source = CURRENT.get()
    if source is None or type(source) is HttpContext:
        return source
    context = context_of(source)
    CURRENT.set(context)  # (undone with the decision's own reset)
    return context
