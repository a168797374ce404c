"""HTTP endpoints beside Bayeux: /health, /stats, /metrics, and static files.

- `GET /health`: 200 `{"status":"ok"}` while serving, 503 while draining
  (a liveness probe); always on.
- `GET /ready`: 200 when new clients are welcome; 503 with the reason while
  starting, while draining, and while the cluster broker (Redis) is
  unreachable (a readiness probe: the balancer sends clients elsewhere).
- `GET /stats` (JSON) and `GET /metrics` (Prometheus text, written by the
  `prometheus_client` library): off unless `admin_token` is set, then they
  need `Authorization: Bearer <admin_token>` (401 otherwise, nothing leaked).
- Static files mounted with `server.static(url_prefix, directory)` or
  `--static-dir` (at `/`): GET and HEAD, no directory listing, no path
  escaping the directory.  Meant for a page and its scripts, not for bulk
  downloads (files are read on the event loop).

The same status is offered over Bayeux by `/service/status` (see
`server_status` and `status_allowed` below).
"""

from __future__ import annotations

import hmac
import mimetypes
import os
import resource
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from engine.transport._http import http_response

if TYPE_CHECKING:
    from engine.protocol.session import Session
    from engine.server import BayeuxServer

__all__ = ["AdminRoutes", "server_status"]

STATUS_CHANNEL = "/service/status"
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE_SIZE


def server_status(server: BayeuxServer, channel: str | None = None) -> dict[str, Any]:
    """What /stats and /service/status report about this node."""
    core = server.core
    by_transport: dict[str, int] = {}
    queued = deepest = held = 0
    for session in core.sessions.values():
        by_transport[session.transport] = by_transport.get(session.transport, 0) + 1
        depth = len(session.queue) if session.queue else 0
        queued += depth
        deepest = max(deepest, depth)
        held += session.hold is not None
    sessions = len(core.sessions)
    rss = rss_bytes()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    status: dict[str, Any] = {
        "node": server.node_id,
        "uptime_s": round(time.monotonic() - server.started_at, 3),
        "sessions": sessions,
        "sessions_by_transport": by_transport,
        "held_connects": held,
        "connections": len(server.connections),
        "channels": len(core.broker.channels()),
        "queued_messages": queued,
        "deepest_queue": deepest,
        "rss_bytes": rss,
        "rss_bytes_per_session": rss // sessions if sessions else None,
        "open_files_limit": soft if soft != resource.RLIM_INFINITY else hard,
        "max_connections": server.max_connections,
        "counters": core.stats.as_dict(),
    }
    broker_stats = getattr(core.broker, "stats", None)
    if callable(broker_stats):
        status["broker"] = broker_stats()
    forwarder = getattr(server, "forwarder", None)
    if forwarder is not None:
        status["forwarding"] = forwarder.stats()
    cluster = getattr(server, "cluster_status", None)
    if cluster is not None:
        status["cluster"] = cluster.cluster(channel)
    if channel is not None:
        status["channel"] = {
            "name": channel,
            "subscribers": core.broker.subscriber_count(channel),
            "matching_sessions": (
                core.broker.matching_count(channel) if "*" not in channel else None
            ),
        }
    return status


class _Collector(Collector):
    """Reads the server's counters at scrape time (nothing to keep in sync)."""

    def __init__(self, server: BayeuxServer) -> None:
        self.server = server

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        status = server_status(self.server)
        node = status["node"]
        gauges = {
            "sessions": "Bayeux sessions on this node",
            "held_connects": "held /meta/connect requests",
            "connections": "open client connections",
            "channels": "subscribed channels and patterns",
            "queued_messages": "messages waiting in session queues",
            "rss_bytes": "resident memory of this process",
        }
        for name, text in gauges.items():
            gauge = GaugeMetricFamily(f"bayeux_{name}", text, labels=["node"])
            gauge.add_metric([node], status[name])
            yield gauge
        by_transport = GaugeMetricFamily(
            "bayeux_sessions_by_transport", "sessions per transport", labels=["node", "transport"]
        )
        for transport, count in sorted(status["sessions_by_transport"].items()):
            by_transport.add_metric([node, transport], count)
        yield by_transport
        cluster = status.get("cluster")
        if cluster is not None:
            for name in ("sessions", "held_connects", "connections", "rss_bytes"):
                gauge = GaugeMetricFamily(
                    f"bayeux_cluster_{name}", f"{name} of each live node", labels=["node"]
                )
                for member, summary in sorted(cluster["nodes"].items()):
                    gauge.add_metric([member], summary.get(name) or 0)
                yield gauge
            nodes = GaugeMetricFamily("bayeux_cluster_nodes", "live nodes in the cluster")
            nodes.add_metric([], cluster["totals"]["nodes"])
            yield nodes
        for name, value in status["counters"].items():
            counter = CounterMetricFamily(f"bayeux_{name}", f"{name} since start", labels=["node"])
            counter.add_metric([node], value)
            yield counter


class AdminRoutes:
    def __init__(self, server: BayeuxServer) -> None:
        self.server = server
        self.token = server.options.admin_token.encode()
        self.mounts: list[tuple[bytes, Path]] = []
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(server))

    def not_ready(self) -> str | None:
        """Why a balancer should send no new clients here now, or None (/ready)."""
        server = self.server
        if server.endpoint is None:
            return "starting"
        if server.core.draining:
            return "draining"
        broker = getattr(server.core.broker, "available", None)
        if broker is False:
            return "the cluster broker (Redis) is unreachable"
        return None

    def mount(self, prefix: str, directory: str | os.PathLike[str]) -> None:
        root = Path(directory).resolve()
        if not root.is_dir():
            raise ValueError(f"not a directory: {directory}")
        self.mounts.append(((prefix.rstrip("/") + "/").encode(), root))
        self.mounts.sort(key=lambda m: -len(m[0]))  # longest prefix first

    def handle(
        self, method: bytes, path: bytes, headers: dict[bytes, bytes], query: bytes = b""
    ) -> bytes | None:
        """A complete HTTP response for `path`, or None when it is not ours."""
        if path == b"/health":
            draining = self.server.core.draining
            body = b'{"status":"draining"}' if draining else b'{"status":"ok"}'
            return response(503 if draining else 200, body, b"application/json")
        if path == b"/ready":
            why = self.not_ready()
            body = orjson.dumps({"status": "ready" if why is None else "not ready", "why": why})
            return response(200 if why is None else 503, body, b"application/json")
        if path in (b"/stats", b"/metrics"):
            if not self.token:
                return None
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, b"Bearer " + self.token):
                return response(
                    401,
                    b'{"error":"401 Unauthorized"}',
                    b"application/json",
                    b'WWW-Authenticate: Bearer realm="engine"\r\n',
                )
            if path == b"/stats":
                return response(200, orjson.dumps(server_status(self.server)), b"application/json")
            return response(200, generate_latest(self.registry), b"text/plain; version=0.0.4")
        if method in (b"GET", b"HEAD"):
            return self.static_file(path, query, head_only=method == b"HEAD")
        return None

    def static_file(self, path: bytes, query: bytes, head_only: bool) -> bytes | None:
        for prefix, root in self.mounts:
            if path + b"/" == prefix and prefix != b"/":
                # A directory without its slash: redirect, so the page's
                # relative URLs resolve inside it.
                location = prefix + (b"?" + query if query else b"")
                return response(301, b"", b"text/plain", b"Location: " + location + b"\r\n")
            if not path.startswith(prefix):
                continue
            relative = (
                path[len(prefix) :].decode("utf-8", "replace") if len(path) > len(prefix) else ""
            )
            target = (root / (relative or "index.html")).resolve()
            if target.is_dir():
                target = target / "index.html"
            if root not in target.parents or not target.is_file():
                return response(404, b'{"error":"404 Not Found"}', b"application/json")
            kind = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
            if kind.startswith("text/") or kind in ("application/javascript", "application/json"):
                kind += "; charset=utf-8"
            body = target.read_bytes()
            return response(200, b"" if head_only else body, kind.encode(), length=len(body))
        return None


def response(
    status: int, body: bytes, content_type: bytes, extra: bytes = b"", length: int | None = None
) -> bytes:
    headers = b"Content-Type: %s\r\nCache-Control: no-cache\r\n%s" % (content_type, extra)
    return http_response(status, body, headers, length=length)


def status_allowed(server: BayeuxServer, session: Session, message: dict[str, Any]) -> bool:
    """A status request needs the admin token in `ext`, or a session the
    application marked as admin (`session.attributes["admin"] = True`)."""
    if session.attributes and session.attributes.get("admin") is True:
        return True
    token = server.options.admin_token
    ext = message.get("ext")
    given = ext.get("admin_token") if isinstance(ext, dict) else None
    # (As bytes: compare_digest refuses str that are not ASCII.)
    return (
        bool(token)
        and isinstance(given, str)
        and hmac.compare_digest(given.encode("utf-8", "surrogatepass"), token.encode())
    )
