"""An engine application that Salesforce streaming clients (jsforce,
aiosfstream-ng) take for an org: replay on /topic/** and /event/**, and a
policy that admits the bearer token they send (`Authorization: OAuth <token>`
from jsforce, `Bearer <token>` from aiosfstream), over long-polling and
WebSocket alike.

    python -m engine serve --app tests.interop.salesforce_app:app --path /cometd
"""

from __future__ import annotations

from engine import BayeuxServer, ServerOptions
from engine.api.context import current_context
from engine.api.policy import SecurityPolicy
from engine.protocol.message import Message
from engine.protocol.session import Session

TOKEN = "00Dxx0000000001!interop.access.token"


def bearer_ok() -> bool:
    context = current_context()
    header = context.headers.get("authorization", "") if context is not None else ""
    scheme, _, token = header.partition(" ")
    return scheme.lower() in ("bearer", "oauth") and token == TOKEN


class BearerPolicy(SecurityPolicy):
    uses_http_context = frozenset({"authorization"})

    def can_handshake(self, session: Session, message: Message) -> bool:
        return bearer_ok()

    def can_subscribe(self, session: Session, channel: str, message: Message) -> bool:
        return bearer_ok()


app = BayeuxServer(ServerOptions(replay_channels="/topic/**,/event/**"), policy=BearerPolicy())
