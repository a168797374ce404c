"""HTTP endpoints beside Bayeux: /health, /stats, /metrics, and static files.

- `GET /health`: 200 `{"status":"ok"}` while serving, 503 while draining
  (a liveness probe); always on.
- `GET /ready`: 200 when new clients are welcome; 503 with the reason while
  starting, while draining, and while the cluster broker (Redis) is
  unreachable (a readiness probe: the balancer sends clients elsewhere).
- `GET /stats` (JSON) and `GET /metrics` (Prometheus text, see
  `engine.metrics`): off unless `admin_token` is set, then they need
  `Authorization: Bearer <admin_token>` (401 otherwise, nothing leaked).
  Prometheus scrapes `--metrics-port` instead (no token; one endpoint for
  every worker).
- `GET /bayeux-engine/cometd-recovery.js`: the CometD JavaScript client's
  recovery extension (engine/static/cometd-recovery.js, an ES module); always
  on, no auth, `Access-Control-Allow-Origin: *` so that a page of another
  origin may `import` it (module scripts are fetched with CORS).
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
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from prometheus_client import generate_latest

from engine.metrics import CONTENT_TYPE, gauges, server_registry
from engine.transport._http import http_response

if TYPE_CHECKING:
    from engine.protocol.session import Session
    from engine.server import BayeuxServer

__all__ = ["AdminRoutes", "server_status"]

STATUS_CHANNEL = "/service/status"

STATIC_DIR = Path(__file__).resolve().parent / "static"
# Files the engine serves itself: URL path -> file in STATIC_DIR.
BUILTIN_FILES = {b"/bayeux-engine/cometd-recovery.js": "cometd-recovery.js"}
JAVASCRIPT = b"application/javascript; charset=utf-8"


def server_status(server: BayeuxServer, channel: str | None = None) -> dict[str, Any]:
    """What /stats and /service/status report about this node."""
    core = server.core
    values = gauges(server)
    sessions = values["sessions"]
    status: dict[str, Any] = {
        "node": server.node_id,
        "uptime_s": round(time.monotonic() - server.started_at, 3),
        **values,
        "rss_bytes_per_session": values["rss_bytes"] // sessions if sessions else None,
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


class AdminRoutes:
    def __init__(self, server: BayeuxServer) -> None:
        self.server = server
        self.token = server.options.admin_token.encode()
        self.mounts: list[tuple[bytes, Path]] = []
        self.registry = server_registry(server)
        # Read once: a file missing from the installation fails the start.
        self.builtin = {
            path: (STATIC_DIR / name).read_bytes() for path, name in BUILTIN_FILES.items()
        }

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
            return response(200, generate_latest(self.registry), CONTENT_TYPE)
        if method in (b"GET", b"HEAD"):
            builtin = self.builtin.get(path)
            if builtin is not None:
                return response(
                    200,
                    b"" if method == b"HEAD" else builtin,
                    JAVASCRIPT,
                    b"Access-Control-Allow-Origin: *\r\n",
                    length=len(builtin),
                )
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
