"""Counters of what the server did, for logs, /stats and benchmarks.

Plain integer attributes incremented on the hot path; nothing is lost
silently, so every drop or refusal has a counter here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

__all__ = ["Counters"]


@dataclass(slots=True)
class Counters:
    messages_in: int = 0
    handshakes: int = 0
    handshakes_refused: int = 0
    connects: int = 0
    disconnects: int = 0
    subscribes: int = 0
    published: int = 0
    delivered: int = 0
    dropped_queue_full: int = 0  # oldest message dropped from a full session queue
    dropped_with_handshake: int = 0  # messages batched with a handshake (ignored)
    discarded: int = 0  # queued messages of sessions that went away
    sessions_expired: int = 0
    superseded: int = 0  # held connects ended by a newer connect
    multiple_clients: int = 0  # connects not held because of the browser quota
    unknown_session: int = 0
    browser_mismatch: int = 0  # clientId presented with another browser's cookie
    deleted_by_extension: int = 0
    deleted_by_listener: int = 0
    extension_failures: int = 0
    service_failures: int = 0
    publish_rate_exceeded: int = 0
    connections_refused: int = 0  # at the open-files limit (HTTP 503)
    http_requests: int = 0
    http_errors: int = 0
    ws_upgrades: int = 0
    ws_protocol_errors: int = 0  # WebSocket connections closed for bad frames or JSON

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)
