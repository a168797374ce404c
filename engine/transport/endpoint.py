"""What the transports are given of the server, and nothing more.

The HTTP and WebSocket connections receive this context instead of the
`BayeuxServer`: the options, the core they hand messages to, the admin
routes (other paths than the Bayeux one), the registry of open connections
and its bound, and the origin checks.  So the transports import nothing of
the server, and the server is the only place that puts the parts together.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any

from engine.options import ServerOptions
from engine.transport._http import COOKIE_NAME, origin_host

if TYPE_CHECKING:
    from engine.admin import AdminRoutes
    from engine.protocol.core import BayeuxCore

__all__ = ["Endpoint"]


class Endpoint:
    """The transports' view of one server (see the module docstring)."""

    __slots__ = (
        "options",
        "core",
        "admin",
        "api",
        "connections",
        "max_connections",
        "base_path",
        "max_body",
        "origins",
        "own_origins",
        "set_cookie",
    )

    def __init__(
        self,
        options: ServerOptions,
        core: BayeuxCore,
        admin: AdminRoutes,
        connections: set[Any],
        max_connections: int,
    ) -> None:
        self.options = options
        self.core = core
        self.admin = admin
        self.api: Any = None  # the server HTTP API (engine.http_api), when configured
        self.connections = connections  # every open connection (HTTP or WebSocket)
        self.max_connections = max_connections  # from the open-files limit
        self.base_path = options.path.rstrip("/").encode()
        self.max_body = options.max_message_size
        self.origins = options.origins
        self.own_origins = options.own_origins
        # The Set-Cookie header of a new browser id, `% id` (every transport).
        self.set_cookie = b"Set-Cookie: %s=%%s%s\r\n" % (
            COOKIE_NAME.encode(),
            options.cookie_attributes.encode(),
        )

    def origin_allowed(self, origin: str) -> bool:
        """May a page of `origin` use this server cross-origin (`allowed_origins`)?"""
        return "*" in self.origins or origin in self.origins

    def same_origin(self, origin: str, host: str) -> bool:
        """Is a page of `origin` one of this server's own?

        Listed in `public_origins`; or its host is the request's `Host` and
        that is an IP address or localhost.  A `Host` that is a DNS name is
        not trusted alone: a page of the attacker's name, rebound to this
        server's address (DNS rebinding), would send a matching one.
        """
        if origin.rstrip("/") in self.own_origins:
            return True
        return origin_host(origin) == host and _literal_host(host)


def _literal_host(host: str) -> bool:
    """A Host header naming an IP address or localhost (a port aside)."""
    if host.startswith("["):
        return "]" in host  # an IPv6 literal
    name = host.rsplit(":", 1)[0] if ":" in host else host
    if name == "localhost":
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
