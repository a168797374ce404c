"""Server options: CometD's names in snake_case, CometD's defaults.

One frozen dataclass is the single source of truth: the command line is
generated from its fields (see `engine.cli`), and the API takes it as is.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass, field

from engine.routing._channels import CHANNEL_INVALID, normalize_channel, validate_channel

__all__ = ["ServerOptions", "TRANSPORTS"]

REPLAY_WITH_BROKER = (
    "replay_channels with a broker: the Salesforce replay dialect runs in one process for now "
    "(history and recovery, --history-channels, work across nodes); run one node, or no replay"
)
# Transport names in our order of preference, as listed in handshake replies.
TRANSPORTS: tuple[str, ...] = ("websocket", "long-polling", "callback-polling")


@dataclass(frozen=True, slots=True)
class ServerOptions:
    host: str = field(default="127.0.0.1", metadata={"help": "address to listen on"})
    port: int = field(default=8080, metadata={"help": "TCP port to listen on (0 picks a free one)"})
    path: str = field(default="/cometd", metadata={"help": "URL path of the Bayeux endpoint"})
    timeout: int = field(
        default=30000, metadata={"help": "ms a /meta/connect is held without events"}
    )
    timeout_jitter: float = field(
        default=0.1,
        metadata={
            "help": "fraction of the timeout by which a held connect may end early, at random, "
            "so that the heartbeats of clients that connected together drift apart"
        },
    )
    interval: int = field(
        default=0,
        metadata={"help": "ms a client waits between a connect reply and its next connect"},
    )
    max_interval: int = field(
        default=10000,
        metadata={"help": "ms without a connect after which a session expires"},
    )
    max_queue: int = field(
        default=1000,
        metadata={
            "help": "messages queued per session; beyond it the oldest is dropped and counted"
        },
    )
    max_message_size: int = field(
        default=65536, metadata={"help": "bytes in one request body or WebSocket message"}
    )
    max_batch: int = field(default=1000, metadata={"help": "messages in one request"})
    history_channels: str = field(
        default="",
        metadata={
            "help": "comma-separated channel patterns whose recent messages are kept for "
            "recovery (ext.position on each message, ext.recover on /meta/subscribe)"
        },
    )
    replay_channels: str = field(
        default="",
        metadata={
            "help": "comma-separated channel patterns that speak the Salesforce replay dialect "
            "(data.event.replayId on each message, ext.replay on /meta/subscribe); they keep "
            "history too"
        },
    )
    history_size: int = field(default=100, metadata={"help": "messages kept per history channel"})
    history_ttl: int = field(
        default=300000, metadata={"help": "ms a message stays in its channel's history"}
    )
    history_max_bytes: int = field(
        default=1024 * 1024, metadata={"help": "bytes of messages kept per history channel"}
    )
    history_max_channels: int = field(
        default=100000,
        metadata={"help": "history channels kept at most (the least recently published go)"},
    )
    history_total_bytes: int = field(
        default=256 * 1024 * 1024,
        metadata={"help": "bytes of history kept in all (the least recently published go)"},
    )
    max_subscriptions: int = field(
        default=1000, metadata={"help": "subscriptions one session may hold"}
    )
    max_lazy_timeout: int = field(
        default=5000, metadata={"help": "ms a lazy message may wait for a connect reply"}
    )
    max_publish_rate: int = field(
        default=0,
        metadata={"help": "publishes per second one session may make (burst too); 0 = no limit"},
    )
    max_sessions_per_browser: int = field(
        default=1,
        metadata={"help": "held long-polls per browser (BAYEUX_BROWSER cookie); <0 = unlimited"},
    )
    multi_session_interval: int = field(
        default=2000,
        metadata={
            "help": "poll interval (ms) advised to a browser's extra sessions; <=0 refuses them"
        },
    )
    allowed_origins: str = field(
        default="",
        metadata={
            "help": "comma-separated Origins allowed cross-origin (CORS, WebSocket); "
            "'*' allows any; empty allows same-origin only"
        },
    )
    allowed_transports: str = field(
        default=",".join(TRANSPORTS),
        metadata={"help": "comma-separated transports offered to clients"},
    )
    meta_connect_deliver_only: bool = field(
        default=False,
        metadata={
            "help": "deliver events only with /meta/connect replies (total order, more latency)"
        },
    )
    ack_extension: bool = field(
        default=False,
        metadata={"help": "offer the acknowledge extension (ext.ack): reliable, ordered delivery"},
    )
    timesync_extension: bool = field(
        default=False, metadata={"help": "answer the timesync extension (ext.timesync)"}
    )
    admin_token: str = field(
        default="",
        metadata={
            "help": "bearer token enabling GET /stats, /metrics and /service/status (off if empty)"
        },
    )
    metrics_port: int = field(
        default=-1,
        metadata={
            "help": "port of GET /metrics for Prometheus, without the admin token (-1: off; "
            "0 picks a free one); under --workers, one endpoint adding up every worker"
        },
    )
    metrics_host: str = field(
        default="",
        metadata={"help": "address the metrics port listens on (empty: the server's --host)"},
    )
    api_key: str = field(
        default="",
        metadata={
            "help": "key of the server HTTP API under api_path (publish, deliver, disconnect, "
            "channels, sessions); off if empty"
        },
    )
    api_path: str = field(
        default="/api", metadata={"help": "URL path of the server HTTP API (with api_key)"}
    )
    api_idempotency_window: int = field(
        default=300000,
        metadata={
            "help": "ms during which an API publish's idempotency_key is remembered "
            "(a retry with it is not delivered again)"
        },
    )
    jwt_secret: str = field(
        default="",
        metadata={"help": "HMAC secret of connection tokens (JWT): handshakes need a valid one"},
    )
    jwt_public_key: str = field(
        default="",
        metadata={"help": "PEM public key (RSA, ECDSA, EdDSA) of connection tokens (JWT)"},
    )
    jwt_jwks_url: str = field(
        default="", metadata={"help": "JWKS URL of the keys of connection tokens (JWT)"}
    )
    jwt_algorithms: str = field(
        default="",
        metadata={"help": "comma-separated JWT algorithms accepted (default: those of the key)"},
    )
    jwt_audience: str = field(
        default="", metadata={"help": "the aud a connection token must name (empty: not checked)"}
    )
    jwt_issuer: str = field(
        default="", metadata={"help": "the iss a connection token must have (empty: not checked)"}
    )
    jwt_cookie: str = field(
        default="",
        metadata={"help": "a cookie that may carry the connection token (besides ext.token)"},
    )
    hook_url: str = field(
        default="",
        metadata={
            "help": "your backend's URL: each operation of hook_operations is POSTed to "
            "<hook_url>/<operation>, which allows, denies or amends it (engine.api.backend)"
        },
    )
    hook_operations: str = field(
        default="handshake,subscribe,publish",
        metadata={"help": "comma-separated operations sent to hook_url"},
    )
    hook_timeout: int = field(default=2000, metadata={"help": "ms a hook may take to answer"})
    hook_failure: str = field(
        default="deny",
        metadata={"help": "deny or allow when the hook backend fails (timeout, error, garbage)"},
    )
    hook_concurrency: int = field(
        default=100, metadata={"help": "hook requests in flight at most (and 10x that waiting)"}
    )
    webhook_url: str = field(
        default="",
        metadata={"help": "URL receiving session_added / session_removed events (batched)"},
    )
    webhook_queue: int = field(
        default=10000,
        metadata={"help": "webhook events waiting at most; beyond, the oldest are dropped"},
    )
    static_dir: str = field(
        default="", metadata={"help": "a directory of files served at / (e.g. a page)"}
    )
    gc_freeze: bool = field(
        default=True,
        metadata={"help": "every 10 s, move long-lived objects out of the garbage collector"},
    )
    node_id: str = field(
        default="",
        metadata={"help": "this node's id, the prefix of every clientId (random when empty)"},
    )
    log_level: str = field(
        default="info",
        metadata={
            "help": "debug, info, warning or error; with log_config, the level of the "
            "engine loggers unless the file sets it"
        },
    )
    log_format: str = field(
        default="text",
        metadata={
            "help": "text or json (one JSON object per line); each line names its node and "
            "worker: 0 alone, 1..N for the workers of --workers N, supervisor for theirs"
        },
    )
    access_log: bool = field(
        default=False,
        metadata={
            "help": "log each HTTP request (engine.access, at INFO): client address, method, "
            "path without its query string, status, bytes, ms"
        },
    )
    log_config: str = field(
        default="",
        metadata={
            "help": "a logging.config.dictConfig file (JSON, or YAML with PyYAML) or a "
            "fileConfig .ini file; replaces log_format's set-up"
        },
    )
    broker: str = field(
        default="",
        metadata={
            "help": "cluster broker URL, redis://HOST:PORT/DB (or rediss://, unix://); "
            "empty: in-process broker, this process alone"
        },
    )
    drain_timeout: int = field(
        default=30000,
        metadata={
            "help": "ms a stopping server (SIGTERM) gives its clients: held connects are "
            "answered with reconnect: retry at once, then it waits for connections to close"
        },
    )
    workers: int = field(
        default=1,
        metadata={
            "help": "worker processes sharing the port (SO_REUSEPORT) under a supervisor; "
            "more than 1 needs --broker"
        },
    )
    reuse_port: bool = field(
        default=False,
        metadata={
            "help": "bind with SO_REUSEPORT so that several processes share the port "
            "(set by the --workers supervisor for its workers)"
        },
    )
    # Cluster through a Redis outage: what waits for Redis, and for how long.
    redis_buffer_bytes: int = field(
        default=64 * 1024 * 1024,
        metadata={
            "help": "bytes of publishes kept for the other nodes until Redis acknowledges "
            "them (Redis down or not answering); beyond it new ones are lost and counted"
        },
    )
    redis_buffer_seconds: float = field(
        default=30.0,
        metadata={
            "help": "seconds a publish may wait for Redis; older ones are lost and counted, "
            "and a Redis that does not answer for that long is reconnected"
        },
    )

    # Presence (engine.presence): who is subscribed to a channel, cluster-wide.
    presence_channels: str = field(
        default="",
        metadata={
            "help": "comma-separated channel patterns with presence (e.g. /chat/**): members "
            "counted and listed, join/leave events; empty: off"
        },
    )
    presence_prefix: str = field(
        default="/presence",
        metadata={
            "help": "prefix of the companion channels of presence events (/presence/chat/room "
            "for /chat/room)"
        },
    )
    presence_ttl: int = field(
        default=15000,
        metadata={
            "help": "ms within which the members of a crashed node disappear (cluster; live "
            "nodes refresh their liveness key every presence_ttl/6)"
        },
    )
    presence_event_rate: int = field(
        default=100,
        metadata={
            "help": "join/leave events per second per channel (per node); past it they are "
            "coalesced into one sync message (the count) per second; 0 = no limit"
        },
    )

    # Hostile clients: bounds per connection, per client address, per session.
    max_queue_bytes: int = field(
        default=2 * 1024 * 1024,
        metadata={
            "help": "bytes queued per session; beyond it the oldest messages are dropped "
            "and counted (as with max_queue)"
        },
    )
    max_pending_output: int = field(
        default=1024 * 1024,
        metadata={
            "help": "bytes of events one reply or WebSocket write carries at most; a WebSocket "
            "whose unwritten output passes it gets no more until it drains"
        },
    )
    write_timeout: int = field(
        default=10000,
        metadata={
            "help": "ms a connection's output may stay blocked by a peer that does not read; "
            "then it is closed (its session stays, to resume); 0 = never"
        },
    )
    max_sessions_per_connection: int = field(
        default=10,
        metadata={"help": "live sessions one WebSocket connection may carry; 0 = unlimited"},
    )
    max_handshake_rate: int = field(
        default=0,
        metadata={
            "help": "handshakes per second one connection may make (burst too); 0 = no limit"
        },
    )
    max_address_handshake_rate: int = field(
        default=0,
        metadata={
            "help": "handshakes per second one client address may make; 0 = no limit "
            "(many users may share an address)"
        },
    )
    max_sessions_per_address: int = field(
        default=0,
        metadata={"help": "live sessions one client address may hold; 0 = no limit"},
    )
    max_connection_publish_rate: int = field(
        default=-1,
        metadata={
            "help": "publishes per second one connection may carry over all its sessions; "
            "-1 = the same as max_publish_rate, 0 = no limit"
        },
    )
    ws_upgrade_timeout: int = field(
        default=10000,
        metadata={"help": "ms a new WebSocket may take to send its first message; 0 = no limit"},
    )
    ws_idle_timeout: int = field(
        default=-1,
        metadata={
            "help": "ms a WebSocket may stay open without any session on it sending "
            "/meta/connect; -1 = timeout + interval + max_interval, 0 = no limit"
        },
    )
    duplicate_connect_status: int = field(
        default=500,
        metadata={
            "help": "HTTP status ending a held /meta/connect superseded by a newer one of its "
            "session (CometD's duplicateMetaConnectHttpResponseCode); e.g. 409 where a "
            "balancer counts 500s as server failures"
        },
    )
    header_timeout: int = field(
        default=10000,
        metadata={
            "help": "ms a client may take to send a request's line and headers, from its first "
            "byte (a new connection: from the accept); then 408 and close; 0 = no limit"
        },
    )
    body_timeout: int = field(
        default=20000,
        metadata={"help": "ms a client may take to send a request's body; 0 = no limit"},
    )
    keepalive_timeout: int = field(
        default=60000,
        metadata={
            "help": "ms a kept-alive HTTP connection may stay idle between requests (a held "
            "long-poll is not idle); 0 = no limit"
        },
    )
    max_headers: int = field(
        default=100,
        metadata={"help": "header fields one HTTP request may have (431 beyond)"},
    )
    max_header_bytes: int = field(
        default=16384,
        metadata={
            "help": "bytes of request line and headers one HTTP request may have "
            "(414 for a longer request line, 431 for headers), checked as they arrive"
        },
    )
    trusted_proxies: str = field(
        default="",
        metadata={
            "help": "comma-separated addresses or networks (CIDR) of proxies whose "
            "X-Forwarded-For gives the client address (per-address limits, logs)"
        },
    )
    public_origins: str = field(
        default="",
        metadata={
            "help": "comma-separated origins this server is published at (e.g. "
            "https://chat.example.com): their pages are same-origin; without it, "
            "only a page whose Host is an IP address or localhost is"
        },
    )
    trust_client_session: bool = field(
        default=False,
        metadata={
            "help": "accept a clientId without its BAYEUX_BROWSER cookie (for clients that keep "
            "no cookies); anyone who learns a clientId can then use its session"
        },
    )

    # TLS and the browser cookie.
    ssl_certfile: str = field(
        default="",
        metadata={"help": "PEM certificate (chain) file: serve https:// and wss:// (off if empty)"},
    )
    ssl_keyfile: str = field(
        default="",
        metadata={"help": "PEM private key file of the certificate (if not in ssl_certfile)"},
    )
    ssl_ca_certs: str = field(
        default="",
        metadata={
            "help": "PEM file of CAs whose client certificates are required (mutual TLS); "
            "empty: no client certificate asked"
        },
    )
    cookie_secure: bool = field(
        default=False,
        metadata={
            "help": "mark the BAYEUX_BROWSER cookie Secure (always so under TLS); for a "
            "server behind a proxy that terminates TLS"
        },
    )
    cookie_same_site: str = field(
        default="",
        metadata={
            "help": "SameSite attribute of the BAYEUX_BROWSER cookie: Lax, Strict or None "
            "(None, for cross-site pages, needs Secure); empty: not sent"
        },
    )

    def __post_init__(self) -> None:
        problems = []
        if not self.path.startswith("/"):
            problems.append("path must start with '/'")
        if not 0 <= self.port <= 65535:
            problems.append("port must be within 0..65535")
        if not -1 <= self.metrics_port <= 65535:
            problems.append("metrics_port must be within -1 (off)..65535")
        elif self.metrics_port > 0 and self.metrics_port == self.port:
            problems.append("metrics_port must differ from port")
        for name in ("timeout", "interval", "max_interval", "max_lazy_timeout", "max_publish_rate"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0")
        for name in (
            "write_timeout",
            "max_sessions_per_connection",
            "max_handshake_rate",
            "max_address_handshake_rate",
            "max_sessions_per_address",
            "ws_upgrade_timeout",
            "header_timeout",
            "body_timeout",
            "keepalive_timeout",
            "drain_timeout",
        ):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0")
        for name in ("max_connection_publish_rate", "ws_idle_timeout"):
            if getattr(self, name) < -1:
                problems.append(f"{name} must be >= -1")
        for name in (
            "max_queue",
            "max_message_size",
            "max_batch",
            "max_subscriptions",
            "max_queue_bytes",
            "max_pending_output",
            "max_headers",
            "history_size",
            "history_ttl",
            "history_max_bytes",
            "history_max_channels",
            "history_total_bytes",
        ):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1")
        if not 400 <= self.duplicate_connect_status <= 599:
            problems.append("duplicate_connect_status must be an HTTP error status (400..599)")
        if self.max_header_bytes < 1024:
            problems.append("max_header_bytes must be >= 1024")
        try:
            self.proxy_networks  # noqa: B018 (parses them)
        except ValueError as exc:
            problems.append(f"trusted_proxies: {exc}")
        unknown = set(self.transports) - set(TRANSPORTS)
        if unknown:
            problems.append(f"unknown transports {sorted(unknown)}; known: {list(TRANSPORTS)}")
        if not self.transports:
            problems.append("allowed_transports lists no transport")
        if self.replay_patterns and self.broker:
            problems.append(REPLAY_WITH_BROKER)
        for option, patterns in (
            ("history_channels", self.history_patterns),
            ("replay_channels", self.replay_patterns),
        ):
            for pattern in patterns:
                name = normalize_channel(pattern)
                reserved = name.startswith(("/meta/", "/service/"))
                if validate_channel(name) == CHANNEL_INVALID or reserved:
                    problems.append(f"{option}: {pattern!r} is not a channel or pattern")
        if self.node_id and not (self.node_id.isascii() and self.node_id.isalnum()):
            problems.append("node_id must be ASCII letters and digits")
        if self.broker and not self.broker.startswith(("redis://", "rediss://", "unix://")):
            problems.append("broker must be a redis://, rediss:// or unix:// URL")
        if not 0.0 <= self.timeout_jitter < 1.0:
            problems.append("timeout_jitter must be within [0, 1)")
        if self.workers < 1:
            problems.append("workers must be >= 1")
        if self.redis_buffer_bytes < 65536:
            problems.append("redis_buffer_bytes must be >= 65536")
        if not self.redis_buffer_seconds > 0:
            problems.append("redis_buffer_seconds must be > 0")
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            problems.append("log_level must be debug, info, warning or error")
        if self.log_format not in ("text", "json"):
            problems.append("log_format must be text or json")
        if (self.ssl_keyfile or self.ssl_ca_certs) and not self.ssl_certfile:
            problems.append("ssl_keyfile and ssl_ca_certs need ssl_certfile")
        if self.cookie_same_site not in ("", "Lax", "Strict", "None"):
            problems.append("cookie_same_site must be Lax, Strict or None (or empty)")
        elif self.cookie_same_site == "None" and not self.tls and not self.cookie_secure:
            problems.append("cookie_same_site None needs a Secure cookie: TLS or cookie_secure")
        if not self.api_path.startswith("/") or self.api_path.rstrip("/") == "":
            problems.append("api_path must start with '/' and not be '/'")
        elif self.api_key and _within(self.api_path, self.path):
            problems.append(f"api_path {self.api_path!r} must be outside the Bayeux path")
        if self.api_idempotency_window < 1000:
            problems.append("api_idempotency_window must be >= 1000 (ms)")
        if self.hook_failure not in ("deny", "allow"):
            problems.append("hook_failure must be deny or allow")
        for name in ("hook_url", "webhook_url"):
            if getattr(self, name) and not getattr(self, name).startswith(("http://", "https://")):
                problems.append(f"{name} must be an http:// or https:// URL")
        if self.hook_url and self.jwt:
            problems.append("give hook_url or a jwt_* key, not both (one policy decides)")
        for name in ("hook_timeout", "hook_concurrency", "webhook_queue"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1")
        if sum(bool(k) for k in (self.jwt_secret, self.jwt_public_key, self.jwt_jwks_url)) > 1:
            problems.append("give one of jwt_secret, jwt_public_key, jwt_jwks_url")
        if self.presence_ttl < 300:
            problems.append("presence_ttl must be >= 300 (ms)")
        if self.presence_event_rate < 0:
            problems.append("presence_event_rate must be >= 0")
        prefix = self.presence_prefix
        if (
            not prefix.startswith("/")
            or prefix.rstrip("/") != prefix
            or "*" in prefix
            or prefix.startswith(("/meta/", "/service/"))
            or prefix in ("/meta", "/service")
        ):
            problems.append(
                "presence_prefix must be a channel name like /presence (no wildcard, not "
                "/meta or /service, no trailing /)"
            )
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def tls(self) -> bool:
        """Whether the server speaks TLS (https://, wss://)."""
        return bool(self.ssl_certfile)

    @property
    def jwt(self) -> bool:
        """Whether handshakes need a connection token (a jwt_* key is set)."""
        return bool(self.jwt_secret or self.jwt_public_key or self.jwt_jwks_url)

    @property
    def cookie_attributes(self) -> str:
        """What follows `BAYEUX_BROWSER=<id>` in the Set-Cookie header."""
        attributes = "; Path=/; HttpOnly"
        if self.tls or self.cookie_secure:
            attributes += "; Secure"
        if self.cookie_same_site:
            attributes += "; SameSite=" + self.cookie_same_site
        return attributes

    @property
    def history_patterns(self) -> list[str]:
        return [p.strip() for p in self.history_channels.split(",") if p.strip()]

    @property
    def replay_patterns(self) -> list[str]:
        return [p.strip() for p in self.replay_channels.split(",") if p.strip()]

    @property
    def transports(self) -> tuple[str, ...]:
        """Allowed transports, in our order of preference."""
        wanted = {t.strip() for t in self.allowed_transports.split(",") if t.strip()}
        known = [t for t in TRANSPORTS if t in wanted]
        return tuple(known) + tuple(sorted(wanted - set(known)))

    @property
    def origins(self) -> frozenset[str]:
        return frozenset(o.strip() for o in self.allowed_origins.split(",") if o.strip())

    @property
    def own_origins(self) -> frozenset[str]:
        return frozenset(o.strip().rstrip("/") for o in self.public_origins.split(",") if o.strip())

    @property
    def proxy_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(
            ipaddress.ip_network(p.strip(), strict=False)
            for p in self.trusted_proxies.split(",")
            if p.strip()
        )

    def replace(self, **changes: object) -> ServerOptions:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def _within(path: str, base: str) -> bool:
    """Is URL path `path` the path `base` or below it (as the server routes)?"""
    root = base.rstrip("/")
    return not root or path.rstrip("/") == root or path.startswith(root + "/")
