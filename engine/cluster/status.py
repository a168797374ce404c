"""Cluster-wide status: every node's summary, shared through Redis.

Each node publishes a small summary of itself (sessions by transport, held
connects, connections, memory, counters, and the subscriber count of each of
its subscription patterns, bounded) on one Redis channel every `period`
seconds, and keeps the latest summary of every other node.  /stats,
/metrics and /service/status then report the cluster's totals and each
node's detail without asking anyone anything at request time; a node whose
summary is older than three periods is considered gone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from engine.cluster.redis_broker import RedisBroker

__all__ = ["ClusterStatus", "MAX_PATTERNS"]

log = logging.getLogger("engine.cluster_status")

MAX_PATTERNS = 1000  # subscriber counts per node summary (the largest ones)
SUMMED = ("sessions", "held_connects", "connections", "channels", "queued_messages", "rss_bytes")


class ClusterStatus:
    def __init__(
        self,
        broker: RedisBroker,
        node_id: str,
        summary: Callable[[], dict[str, Any]],
        period: float = 2.0,
    ) -> None:
        self.broker = broker
        self.node_id = node_id
        self.summary = summary
        self.period = period
        self.channel = broker.prefix.encode() + b"status"
        self.nodes: dict[str, tuple[float, dict[str, Any]]] = {}
        self.invalid = 0
        self._handle: asyncio.Handle | None = None

    def start(self) -> None:
        self.broker.listen(self.channel, self._received)
        self._handle = asyncio.get_running_loop().call_soon(self._publish)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self.broker.unlisten(self.channel)

    def _publish(self) -> None:
        try:
            mine = self.summary()
            self.nodes[self.node_id] = (time.monotonic(), mine)
            self.broker.send_direct(self.channel, orjson.dumps({"node": self.node_id, **mine}))
        except Exception:
            log.exception("node %s: status summary not published", self.node_id)
        self._handle = asyncio.get_running_loop().call_later(self.period, self._publish)

    def _received(self, payload: bytes) -> None:
        try:
            summary = orjson.loads(payload)
            node = summary.pop("node")
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            self.invalid += 1
            return
        if isinstance(node, str) and isinstance(summary, dict) and node != self.node_id:
            self.nodes[node] = (time.monotonic(), summary)

    def cluster(self, channel: str | None = None) -> dict[str, Any]:
        """The live nodes' summaries and their totals."""
        now = time.monotonic()
        live = {
            node: summary
            for node, (at, summary) in self.nodes.items()
            if now - at <= 3 * self.period or node == self.node_id
        }
        totals: dict[str, Any] = {key: 0 for key in SUMMED}
        by_transport: dict[str, int] = {}
        for summary in live.values():
            for key in SUMMED:
                totals[key] += summary.get(key) or 0
            for transport, count in (summary.get("sessions_by_transport") or {}).items():
                by_transport[transport] = by_transport.get(transport, 0) + count
        totals["sessions_by_transport"] = by_transport
        totals["nodes"] = len(live)
        result: dict[str, Any] = {"totals": totals, "nodes": live}
        if channel is not None:
            result["channel"] = {
                "name": channel,
                "subscribers": sum(
                    (summary.get("patterns") or {}).get(channel, 0) for summary in live.values()
                ),
            }
        return result
