"""Authenticate clients with an HMAC-signed token in the handshake `ext`.

The application's login endpoint gives each user a token
`<user>:<expiry>:<hex HMAC-SHA256 of "user:expiry">`; the CometD client sends
it in its handshake:

    cometd.handshake({ext: {"com.example.auth": {token: "alice:1893456000:9f2c..."}}})

Run it with:  python -m engine serve --app examples.hmac_auth:server
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from typing import Any

from engine import GRANT, IGNORE, BayeuxServer, SecurityPolicy, ServerOptions, Session, deny

SECRET = os.environ.get("AUTH_SECRET", "change-me").encode()


def sign(user: str, expires: int, secret: bytes = SECRET) -> str:
    payload = f"{user}:{expires}"
    digest = hmac.new(secret, payload.encode(), hashlib.sha256).hexdigest()
    return f"{payload}:{digest}"


def verify(token: object, secret: bytes = SECRET) -> str | None:
    """The user a valid, unexpired token names, or None."""
    if not isinstance(token, str) or token.count(":") != 2:
        return None
    user, expires, digest = token.split(":")
    expected = hmac.new(secret, f"{user}:{expires}".encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(digest, expected):
        return None
    if not expires.isdigit() or int(expires) < time.time():
        return None
    return user


class TokenPolicy(SecurityPolicy):
    def can_handshake(self, session: Session, message: dict[str, Any]) -> bool:
        auth = (message.get("ext") or {}).get("com.example.auth") or {}
        user = verify(auth.get("token"))
        if user is None:
            return False
        session.attributes = {"user": user}
        return True


def private_channels(operation: str, channel: str, session: Session | None, message: Any) -> Any:
    """Only a user's own /private/<user>/** channels; nobody else's."""
    user = (session.attributes or {}).get("user") if session else None
    if user is None:
        return deny("not_authenticated")
    if channel.startswith(f"/private/{user}/") or channel == f"/private/{user}/**":
        return GRANT
    return deny("not_your_channel") if channel.startswith("/private/") else IGNORE


policy = TokenPolicy()
policy.add_authorizer("/private/**", private_channels)
server = BayeuxServer(ServerOptions(), policy=policy)
