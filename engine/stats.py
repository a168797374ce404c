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
    # Hostile or broken clients (limits that bit, each also logged once per cause):
    cookieless_requests: int = 0  # requests for a session without its browser cookie
    backoff_advised: int = 0  # failure replies advising a longer interval (a failure streak)
    handshake_rate_exceeded: int = 0  # per connection or per address
    session_limit_reached: int = 0  # sessions per WebSocket connection or per address
    messages_invalid: int = 0  # messages that could not be encoded again (too deep)
    internal_errors: int = 0  # unexpected exceptions (answered with one error, logged)
    http_header_timeouts: int = 0  # HTTP connections closed: a request head too slow (408)
    http_body_timeouts: int = 0  # HTTP connections closed: a request body too slow (408)
    http_idle_timeouts: int = 0  # kept-alive HTTP connections closed: no request in time
    http_head_too_large: int = 0  # requests refused for their head's size (414, 431)
    connections_throttled: int = 0  # reads paused: publishes past their rate
    write_timeouts: int = 0  # connections closed: output not drained within write_timeout
    ws_first_message_timeouts: int = 0  # WebSockets closed: no message after the upgrade
    ws_resumed: int = 0  # sessions of cookieless WebSocket clients resumed on a new socket
    ws_probe_timeouts: int = 0  # WebSockets cut: silent to the ping of a session's resume
    ws_idle_timeouts: int = 0  # WebSockets closed: no session connecting on them
    # Cluster (Redis broker and request forwarding), each also logged once per cause:
    cluster_published_lost: int = 0  # publishes the other nodes never got (buffer bound, ...)
    cluster_resent: int = 0  # publishes sent again on a new Redis connection (fate unknown)
    cluster_duplicates: int = 0  # messages from other nodes received again (dropped)
    cluster_gaps: int = 0  # messages from other nodes known to be missing (by sequence)
    cluster_requeued: int = 0  # events of a forwarded reply put back: its relay did not confirm
    # TLS: connections accepted, and those whose handshake completed (the
    # difference: handshakes that failed, timed out or are in progress).
    tls_accepted: int = 0
    tls_established: int = 0
    # Ended by the server (HTTP API disconnect, an expired token):
    sessions_ended: int = 0
    ended_forgotten: int = 0  # ended clientIds forgotten early (bound): later 402, not the reason
    # The HTTP API (engine.api.http_api):
    api_requests: int = 0
    api_refused: int = 0  # answered with an error (bad key, bad request, policy)
    api_published: int = 0
    api_duplicates: int = 0  # publishes with an idempotency key already used (not delivered)
    # Presence (engine.presence), limits and failures also logged once per cause:
    presence_joins: int = 0  # sessions that joined a presence channel on this node
    presence_leaves: int = 0  # ... and left it (unsubscribe, disconnect, expiry, removal)
    presence_events_coalesced: int = 0  # join/leave events dropped past presence_event_rate
    presence_syncs: int = 0  # sync messages (the count) sent for coalesced channels
    presence_expired: int = 0  # members of dead nodes this node removed from Redis
    presence_refused: int = 0  # presence queries refused (no right to subscribe, not admin)
    presence_redis_errors: int = 0  # presence writes, heartbeats, queries failed on Redis
    presence_reconciles: int = 0  # this node's members written back to Redis in full

    # Channel history (engine.delivery.history):
    history_kept: int = 0  # messages kept in a channel's history
    history_dropped: int = 0  # kept messages dropped (size, bytes, time, streams evicted)
    history_streams_evicted: int = 0  # whole streams dropped (history_max_channels / _total_bytes)
    history_recovered: int = 0  # subscribes that recovered every missed message
    history_not_recovered: int = 0  # positions answered recovered: false (with a reason)
    history_replayed: int = 0  # missed messages queued by recoveries
    # The Salesforce replay dialect (engine.delivery.replay):
    replay_subscribes: int = 0  # channels subscribed with -2 or a replayId, replayed
    replay_refused: int = 0  # subscribes failed for their ext.replay

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)
