"""Reuse the application's login: the security policy reads its session cookie.

The web application sets a cookie `session=<user>:<expiry>:<HMAC>` when the
user logs in (signed as in examples/hmac_auth.py, with AUTH_SECRET).  The
page's CometD client sends it with every long-poll and with the WebSocket
upgrade (same site), and the policy reads it from the HTTP request behind
the handshake (`current_context()`), whatever the transport:

    python -m engine serve --app examples.cookie_login:server

A handshake without a valid cookie is refused (403::handshake_denied); a
signed-in user may subscribe to its own /private/<user>/** channels only.
"""

from __future__ import annotations

from typing import Any

from engine import BayeuxServer, SecurityPolicy, ServerOptions, Session, current_context
from examples.hmac_auth import private_channels, verify


class SessionCookiePolicy(SecurityPolicy):
    # Keep each WebSocket's upgrade request, so its cookies are there too.
    uses_http_context = True

    def can_handshake(self, session: Session, message: dict[str, Any]) -> bool:
        context = current_context()
        user = verify(context.cookie("session")) if context is not None else None
        if user is None:
            return False
        session.attributes = {"user": user, "address": context.remote_address}  # type: ignore[union-attr]
        return True


policy = SessionCookiePolicy()
policy.add_authorizer("/private/**", private_channels)
server = BayeuxServer(ServerOptions(), policy=policy)
