"""The server object: options, the core, the listening socket, graceful stop.

    server = BayeuxServer(ServerOptions(port=8080))
    server.run()                 # blocking, uvloop, until SIGINT/SIGTERM

or, inside a running loop: `await server.start()` ... `await server.stop()`.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import secrets
import signal
import ssl
import sys
import time
from typing import TYPE_CHECKING, Any, cast

import uvloop
from prometheus_client import generate_latest

from engine.admin import STATUS_CHANNEL, AdminRoutes, server_status, status_allowed
from engine.api.app import Application
from engine.api.backend import BackendHooks, Webhooks
from engine.api.policy import SecurityPolicy
from engine.api.tokens import JwtPolicy
from engine.cluster.api_relay import ApiRelay
from engine.cluster.status import MAX_PATTERNS, ClusterStatus
from engine.http_api import HttpApi
from engine.logs import set_node
from engine.metrics import MetricsListener
from engine.options import REPLAY_WITH_BROKER, ServerOptions
from engine.presence import PRESENCE_SERVICE, Presence
from engine.protocol.core import BayeuxCore
from engine.transport.endpoint import Endpoint
from engine.transport.http import HttpConnection, HttpEndpoint
from engine.transport.websocket import WebSocketConnection

if TYPE_CHECKING:
    from engine.cluster.forwarding import RedisForwarder
    from engine.cluster.redis_broker import RedisBroker

__all__ = ["BayeuxServer", "raise_files_limit"]

FILES_RESERVED = 64


def raise_files_limit() -> int:
    """Raise the soft open-files limit to the hard one; the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= hard:
        return int(min(soft, hard) if soft != resource.RLIM_INFINITY else hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        return int(soft)
    return int(hard)


log = logging.getLogger("engine.server")


class BayeuxServer(Application):
    def __init__(
        self, options: ServerOptions | None = None, *, policy: SecurityPolicy | None = None
    ) -> None:
        super().__init__()
        self.options = options or ServerOptions()
        self.policy = policy
        self._derive()
        self.connections: set[HttpConnection | WebSocketConnection] = set()
        self.files_limit = 0
        self._max_connections = 1 << 30  # set from the open-files limit by start()
        self.endpoint: Endpoint | None = None  # what the transports see, from start()
        self._core: BayeuxCore | None = None
        self.started_at = time.monotonic()
        self.admin = AdminRoutes(self)
        self._listener: asyncio.Server | None = None
        self._stopped: asyncio.Event | None = None
        self._broker: RedisBroker | None = None
        # In a cluster: sends HTTP requests for other nodes' sessions there.
        self.forwarder: RedisForwarder | None = None
        self.cluster_status: ClusterStatus | None = None
        self.api: HttpApi | None = None  # the server HTTP API, with an api_key
        self.webhooks: Webhooks | None = None  # session events to webhook_url
        self.metrics: MetricsListener | None = None  # --metrics-port

    def _derive(self) -> None:
        """Values computed once from the options."""
        self.node_id = self.options.node_id or secrets.token_hex(3)
        self.base_path = self.options.path.rstrip("/").encode()

    def configure(self, **changes: Any) -> None:
        """Change options before start(): e.g. the command line's on top of an app's."""
        if self._core is not None:
            raise RuntimeError("configure() must come before start()")
        self.options = self.options.replace(**changes)
        self._derive()

    def static(self, prefix: str, directory: str) -> None:
        """Serve the files of `directory` under the URL path `prefix`."""
        self.admin.mount(prefix, directory)

    def status(self, channel: str | None = None) -> dict[str, Any]:
        """This node's status: sessions, channels, queues, counters (see /stats)."""
        return server_status(self, channel)

    def _node_summary(self) -> dict[str, Any]:
        """What this node tells the others about itself (see ClusterStatus)."""
        status = server_status(self)
        broker = self.core.broker
        counts = sorted(((broker.subscriber_count(p), p) for p in broker.channels()), reverse=True)[
            :MAX_PATTERNS
        ]
        return {
            key: status[key]
            for key in (
                "sessions",
                "sessions_by_transport",
                "held_connects",
                "connections",
                "channels",
                "queued_messages",
                "rss_bytes",
                "uptime_s",
            )
        } | {"patterns": {pattern: count for count, pattern in counts}}

    def _status_service(self, session: Any, message: dict[str, Any]) -> Any:
        if not status_allowed(self, session, message):
            raise PermissionError("status requests need the admin token")
        data = message.get("data")
        channel = data.get("channel") if isinstance(data, dict) else None
        return self.status(channel if isinstance(channel, str) else None)

    # The core needs the running loop, so it is made by start().
    @property
    def core(self) -> BayeuxCore:
        if self._core is None:
            raise RuntimeError("the server is not started")
        return self._core

    @property
    def url(self) -> str:
        host, port = self.address
        scheme = "https" if self.options.tls else "http"
        return f"{scheme}://{host}:{port}{self.options.path}"

    @property
    def max_connections(self) -> int:
        """Client connections this process accepts at most (then 503)."""
        return self._max_connections

    @max_connections.setter
    def max_connections(self, value: int) -> None:
        self._max_connections = value
        if self.endpoint is not None:
            self.endpoint.max_connections = value

    @property
    def address(self) -> tuple[str, int]:
        if self._listener is None or not self._listener.sockets:
            return self.options.host, self.options.port
        name = self._listener.sockets[0].getsockname()
        return str(name[0]), int(name[1])

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        set_node(self.node_id)  # from now on, this process's log lines name it
        self.files_limit = raise_files_limit()
        # Keep some descriptors for the listener, Redis, logs and accept().
        self._max_connections = max(1, self.files_limit - FILES_RESERVED)
        self.admin.token = self.options.admin_token.encode()
        if self.options.static_dir:
            self.admin.mount("/", self.options.static_dir)
        if self.options.admin_token and not self.hooks.services.count(STATUS_CHANNEL):
            self.hooks.add_service(STATUS_CHANNEL, self._status_service)
        policy = self.policy
        o = self.options
        if o.jwt or o.hook_url:
            if policy is not None:
                raise ValueError(
                    "jwt_* or hook_url options and an application's own policy: give the "
                    "application a JwtPolicy or BackendHooks policy (engine.api) instead"
                )
            policy = JwtPolicy.from_options(o) if o.jwt else BackendHooks.from_options(o)

        if o.broker and self.hooks.replay_patterns:
            raise ValueError(REPLAY_WITH_BROKER)
        self._core = BayeuxCore(
            self.options, loop, node_id=self.node_id, policy=policy, hooks=self.hooks
        )
        if self.options.workers > 1:
            log.warning(
                "workers=%d: worker processes are started by `python -m engine serve "
                "--workers N`; this process serves alone",
                self.options.workers,
            )
        if self.options.broker:
            # Clustered: the Redis broker replaces the in-process one before
            # anything can subscribe; it needs the core's delivery callback.
            from engine.cluster.forwarding import RedisForwarder
            from engine.cluster.redis_broker import RedisBroker

            self._broker = RedisBroker(
                self._core.deliver,
                node_id=self.node_id,
                url=self.options.broker,
                buffer_bytes=self.options.redis_buffer_bytes,
                buffer_seconds=self.options.redis_buffer_seconds,
                counters=self._core.stats,
            )
            self._broker.is_lazy = self._core.is_lazy
            self._core.broker = self._broker
            # History in Redis Streams: the same offsets on every node.
            from engine.cluster.history_streams import RedisHistory

            history = RedisHistory(o, self._core.stats, log, self._broker)
            for pattern in self.hooks.history_patterns:
                history.add_pattern(pattern)
            self._core.history = history
            # Long-polls for other nodes' sessions go there (no sticky sessions).
            self.forwarder = RedisForwarder(self._core, self._broker)
            self._core.forwarder = self.forwarder
            self.forwarder.start()  # listens on its node channel from the first connection
            self.cluster_status = ClusterStatus(self._broker, self.node_id, self._node_summary)
            if self.options.api_key:
                self.api = HttpApi(self, self._broker.prefix)
                self.api.relay = ApiRelay(self._broker, self.node_id, self.api.answer)
                self.api.relay.start()
            await self._broker.start()
            self.cluster_status.start()
        elif self.options.api_key:
            self.api = HttpApi(self)
        patterns = [p.strip() for p in o.presence_channels.split(",") if p.strip()]
        if patterns or self.presence_patterns:
            await self._start_presence(self._core, patterns + self.presence_patterns)
        if o.webhook_url:
            self.webhooks = Webhooks(o.webhook_url, max_queue=o.webhook_queue)
            self.hooks.session_added.append(self.webhooks.session_added)
            self.hooks.session_removed.append(self.webhooks.session_removed)
            self.webhooks.start()
        self._core.start()
        self.started_at = time.monotonic()
        self._stopped = asyncio.Event()
        # The transports see this context, not the server (engine.transport.endpoint).
        self.endpoint = Endpoint(
            self.options, self._core, self.admin, self.connections, self._max_connections
        )
        self.endpoint.api = self.api
        endpoint = HttpEndpoint(self.endpoint)
        self._core.write_flushers.append(endpoint.flush)
        try:
            if o.metrics_port >= 0:
                self.metrics = MetricsListener(
                    self._render_metrics, o.metrics_host or o.host, o.metrics_port
                )
                await self.metrics.start()
            tls = tls_context(self.options)
            handshake_s = (self.options.header_timeout or 60000) / 1000 if tls else None
            self._listener = await loop.create_server(
                # (HttpConnection has the methods of an asyncio.Protocol; being
                # compiled, it does not derive from the class.)
                lambda: cast(asyncio.Protocol, self._accepted(endpoint, tls is not None)),
                host=self.options.host,
                port=self.options.port,
                backlog=4096,
                reuse_address=True,
                reuse_port=self.options.reuse_port or None,
                ssl=tls,
                # A connection is counted and timed by the transports once its
                # TLS handshake is done; before, this bounds it.
                ssl_handshake_timeout=handshake_s,
            )
        except BaseException:
            await self._close_parts()
            raise
        log.info("listening on %s (node %s)", self.url, self.node_id)
        if self.metrics is not None:
            log.info("metrics on %s", self.metrics.url)
        log.info(
            "open-files limit %d: this process holds at most %d client connections",
            self.files_limit,
            self.max_connections,
        )

    async def _start_presence(self, core: BayeuxCore, patterns: list[str]) -> None:
        o = self.options
        presence = Presence(
            core,
            prefix=o.presence_prefix,
            event_rate=o.presence_event_rate,
            ttl_ms=o.presence_ttl,
            is_admin=lambda session, message: status_allowed(self, session, message),
        )
        for pattern in patterns:
            presence.add_pattern(pattern)
        if self._broker is not None:
            presence.use_redis(o.broker, self._broker.prefix, self.node_id)
        core.presence = presence
        if not self.hooks.services.count(PRESENCE_SERVICE):
            self.hooks.add_service(PRESENCE_SERVICE, self._presence_service)
        await presence.start()

    def _presence_service(self, session: Any, message: dict[str, Any]) -> Any:
        presence = self.core.presence
        if presence is None:
            raise PermissionError("presence is off")
        return presence.service(session, message)

    async def _render_metrics(self) -> bytes:
        return generate_latest(self.admin.registry)

    def _accepted(self, endpoint: HttpEndpoint, tls: bool) -> HttpConnection:
        """A new connection's protocol (under TLS, made before its handshake)."""
        if tls:
            self.core.stats.tls_accepted += 1
        return HttpConnection(endpoint)

    async def _close_parts(self) -> None:
        """The core's timers, then the cluster parts, in reverse order of start."""
        self.core.close()
        await self.core.policy.aclose()
        await self.core.history.aclose()
        if self.metrics is not None:
            await self.metrics.close()
            self.metrics = None
        if self.webhooks is not None:
            self.hooks.session_added.remove(self.webhooks.session_added)
            self.hooks.session_removed.remove(self.webhooks.session_removed)
            await self.webhooks.aclose()
            self.webhooks = None
        if self.core.presence is not None:
            await self.core.presence.stop()
            self.core.presence = None
        if self.api is not None:
            if self.api.relay is not None:
                self.api.relay.close()
            await self.api.close()
            self.api = None
        if self.cluster_status is not None:
            self.cluster_status.close()
            self.cluster_status = None
        if self.forwarder is not None:
            self.forwarder.close()
            self.forwarder = None
        if self._broker is not None:
            await self._broker.stop()
            self._broker = None

    async def stop(self) -> None:
        """Stop accepting, answer held connects with `reconnect: retry`, close."""
        if self._listener is None:
            return
        self._listener.close()
        self.core.drain()
        if self.forwarder is not None:
            # Requests forwarded from here: their owners answer them now.
            await self.forwarder.drain()
        for conn in list(self.connections):
            conn.shutdown()
        # Give written responses and closing sockets up to drain_timeout to
        # leave (CometD's clients reconnect elsewhere on the retry advice),
        # then close what remains.
        deadline = time.monotonic() + self.options.drain_timeout / 1000.0
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
        await self._close_parts()
        await self._listener.wait_closed()
        self._listener = None
        if self._stopped is not None:
            self._stopped.set()

    async def serve_until_signalled(self, ready: Any = None) -> None:
        await self.start()
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if ready is not None:
            ready(self)
        await stop.wait()
        log.info("signal received: draining")
        await self.stop()

    def run(self, ready: Any = None) -> None:
        """Serve on uvloop until SIGINT or SIGTERM; then stop gracefully."""
        if sys.version_info >= (3, 12):
            uvloop.run(self.serve_until_signalled(ready))
        else:
            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
            asyncio.run(self.serve_until_signalled(ready))


def tls_context(options: ServerOptions) -> ssl.SSLContext | None:
    """The server's TLS context (`ssl_certfile`...), or None for plain HTTP.

    Raises ValueError naming the file when a certificate or key cannot be
    loaded."""
    if not options.tls:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(options.ssl_certfile, options.ssl_keyfile or None)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(
            f"ssl_certfile {options.ssl_certfile!r} / ssl_keyfile {options.ssl_keyfile!r}: "
            f"cannot load the certificate: {exc}"
        ) from None
    if options.ssl_ca_certs:
        try:
            context.load_verify_locations(options.ssl_ca_certs)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"ssl_ca_certs {options.ssl_ca_certs!r}: cannot load: {exc}") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context
