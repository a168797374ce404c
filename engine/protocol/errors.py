"""Bayeux error strings, exactly as CometD 8 sends them (`code:args:message`, Bayeux error format).

Format `code:args:message`; args and message stay inside Faye's error grammar
(no extra colons, no quotes).
"""

from __future__ import annotations

__all__ = [
    "CHANNEL_MISSING",
    "CHANNEL_INVALID",
    "CHANNEL_CREATE_DENIED",
    "CREATE_DENIED",
    "DATA_MISSING",
    "DISCONNECTED_BY_SERVER",
    "EXTENSION_FAILED",
    "HANDSHAKE_DENIED",
    "HANDSHAKE_FAILED",
    "HANDSHAKE_RATE_EXCEEDED",
    "INTERNAL_ERROR",
    "MESSAGE_DELETED",
    "MESSAGE_ID_INVALID",
    "MESSAGE_INVALID",
    "PUBLISH_DENIED",
    "PUBLISH_RATE_EXCEEDED",
    "SERVICE_DENIED",
    "SERVICE_FAILED",
    "SESSION_LIMIT",
    "SESSION_UNKNOWN",
    "SUBSCRIBE_DENIED",
    "SUBSCRIPTION_INVALID",
    "SUBSCRIPTION_MISSING",
    "POLICY",
    "TOKEN_EXPIRED",
    "TOO_MANY_SUBSCRIPTIONS",
    "UNSUBSCRIBE_FAILED",
    "connection_types_not_supported",
    "denied",
]

POLICY = "denied_by_security_policy"

CHANNEL_MISSING = "400::channel_missing"
DATA_MISSING = "400::data_missing"
SESSION_UNKNOWN = "402::session_unknown"
HANDSHAKE_DENIED = "403::handshake_denied"
HANDSHAKE_FAILED = "403::handshake_failed"
SUBSCRIPTION_MISSING = "403::subscription_missing"
SUBSCRIPTION_INVALID = "403::subscription_invalid"
UNSUBSCRIBE_FAILED = "403::unsubscribe_failed"
TOO_MANY_SUBSCRIPTIONS = "403::subscription_limit_reached"
CREATE_DENIED = f"403:{POLICY}:create_denied"
SUBSCRIBE_DENIED = f"403:{POLICY}:subscribe_denied"
CHANNEL_CREATE_DENIED = f"403:{POLICY}:channel_create_denied"
PUBLISH_DENIED = f"403:{POLICY}:publish_denied"
MESSAGE_DELETED = "404::message_deleted"
# Project additions (no CometD string): application code failed.
SERVICE_FAILED = "500::service_failed"
SERVICE_DENIED = "403::service_denied"
PUBLISH_RATE_EXCEEDED = "429::publish_rate_exceeded"
EXTENSION_FAILED = "500::extension_failed"
CHANNEL_INVALID = "405::channel_invalid"
MESSAGE_ID_INVALID = "405::message_id_invalid"
# A message that is not an object, or that cannot be encoded again (nested
# deeper than the JSON encoder goes).
MESSAGE_INVALID = "400::message_invalid"
# Limits on making sessions (per connection, per client address).
HANDSHAKE_RATE_EXCEEDED = "429::handshake_rate_exceeded"
SESSION_LIMIT = "429::session_limit_reached"
# The server failed on this message (a bug): logged once per cause.
INTERNAL_ERROR = "500::internal_error"
# Sessions the server ended (BayeuxCore.end_session): by the HTTP API's
# disconnect (advice reconnect: none), or because the session's token expired
# (advice reconnect: handshake: the client handshakes with a new token).
DISCONNECTED_BY_SERVER = "403::disconnected_by_server"
TOKEN_EXPIRED = "401::token_expired"


def denied(reason: str, what: str) -> str:
    """`403:<reason>:<what>`, e.g. denied("denied_by_not_granting", "publish_denied")."""
    return f"403:{reason}:{what}"


def connection_types_not_supported(client_types: list[str]) -> str:
    """Faye's wording for a handshake with no transport in common (code 301)."""
    safe = [t for t in client_types if t.replace("-", "").isalnum()]
    return f"301:{','.join(safe)}:Connection types not supported"
