"""The server HTTP API: a backend publishes and manages sessions without Bayeux.

On the server's port, under `api_path` (default `/api`), off unless an
`api_key` is configured; every request carries the key, as
`Authorization: apikey <key>` or `X-API-Key: <key>` (compared in constant
time).  Bodies and answers are JSON:

    POST /api/publish     {"channel", "data", ["ext"], ["idempotency_key"]}
    POST /api/broadcast   {"channels": [...], "data", ["ext"], ["idempotency_key"]}
    POST /api/deliver     {"session", "channel", "data", ["ext"]}    to one session
    POST /api/disconnect  {"session"}          ends it: reconnect none, clientId refused
    GET  /api/channels                 {"channels": {channel or pattern: subscribers}}
    GET  /api/channels/<channel>       subscribers of that name, sessions it reaches
    GET  /api/sessions/<clientId>      transport, subscriptions, queue
    GET  /api/presence/<channel>[?members=1&limit=N]   count (and members) of a
                                       presence channel (engine.presence)

Success is `200 {"result": {...}}`; failure is a status and
`{"error": {"code": <status>, "message": "..."}}`, and then nothing was
delivered.  Publishes take the path of a client's publish
(`BayeuxCore.publish_checked`: extensions, the security policy and
authorizers, listeners, lazy channels) as the session `api` (transport
"api", `session.attributes["api"] is True`), so a policy may tell the
backend apart; never a side door.

`idempotency_key` (1..128 printable characters): a publish or broadcast
with a key already used within `api_idempotency_window` ms is answered
`{"result": {..., "duplicate": true}}` and not delivered again.  Keys are
kept in this process (at most MAX_KEYS) or, in a cluster, in Redis
(`SET NX PX`), so a retry that lands on another node is recognised too.

In a cluster any node answers any call: a session's node is asked through
Redis (engine.cluster.api_relay), and counts are summed over every node.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote

import orjson

from engine.admin import response
from engine.api.context import HttpContext, context_of
from engine.presence import PresenceError
from engine.protocol import errors
from engine.protocol.session import Session
from engine.ratelog import CauseLog
from engine.routing._channels import CHANNEL_OK_CONCRETE, normalize_channel, validate_channel

if TYPE_CHECKING:
    from engine.cluster.api_relay import ApiRelay
    from engine.server import BayeuxServer
    from engine.transport.http import HttpConnection, HttpExchange

__all__ = ["HttpApi", "IdempotencyKeys"]

log = logging.getLogger("engine.http_api")
limit_log = CauseLog(log)

JSON = b"application/json"
MAX_KEYS = 1_000_000  # idempotency keys remembered in one process
MAX_KEY_LENGTH = 128
MAX_CHANNELS = 1000  # channels of one broadcast
MAX_RUNNING = 1000  # API calls in progress (awaiting the cluster or the policy)
MAX_LISTED = 10000  # channels one node lists

_FIELDS = {
    "publish": {"channel", "data", "ext", "idempotency_key"},
    "broadcast": {"channels", "data", "ext", "idempotency_key"},
    "deliver": {"session", "channel", "data", "ext"},
    "disconnect": {"session"},
}


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class IdempotencyKeys:
    """Keys used within a window: in this process, or in Redis (a cluster)."""

    def __init__(self, window_ms: int, redis_url: str = "", prefix: str = "") -> None:
        self.window_ms = window_ms
        self.local: OrderedDict[str, float] = OrderedDict()  # key -> expiry, oldest first
        self.redis: Any = None
        self.prefix = prefix + "idem:"
        if redis_url:
            import redis.asyncio

            self.redis = redis.asyncio.Redis.from_url(
                redis_url, socket_timeout=2.0, socket_connect_timeout=2.0
            )

    async def claim(self, key: str) -> bool:
        """True the first time `key` is seen in the window, False after."""
        if self.redis is None:
            return self.claim_here(key)
        try:
            return bool(await self.redis.set(self.prefix + key, b"1", nx=True, px=self.window_ms))
        except Exception as exc:  # (redis-py's errors, OSError, timeouts)
            raise ApiError(503, f"the idempotency store (Redis) is unavailable: {exc}") from None

    def claim_here(self, key: str) -> bool:
        """`claim` in this process's store (no Redis)."""
        now = time.monotonic()
        keys = self.local
        while keys:  # (one window for all: the oldest expire first)
            oldest, expiry = next(iter(keys.items()))
            if expiry > now:
                break
            del keys[oldest]
        if key in keys:
            return False
        if len(keys) >= MAX_KEYS:
            raise ApiError(429, f"more than {MAX_KEYS} idempotency keys in the window; retry later")
        keys[key] = now + self.window_ms / 1000.0
        return True

    async def release(self, key: str) -> None:
        """The publish was refused: a retry may try again."""
        if self.redis is None:
            self.local.pop(key, None)
            return
        try:
            await self.redis.delete(self.prefix + key)
        except Exception:
            pass  # (the key expires with its window)

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()


class HttpApi:
    def __init__(self, server: BayeuxServer, redis_prefix: str = "") -> None:
        """`redis_prefix`: the cluster broker's key prefix (a cluster), else ""."""
        self.server = server
        options = server.options
        self.key = options.api_key.encode()
        self.prefix = options.api_path.rstrip("/").encode()
        self.keys = IdempotencyKeys(
            options.api_idempotency_window,
            options.broker if redis_prefix else "",
            redis_prefix,
        )
        self.relay: ApiRelay | None = None  # set by the server in a cluster
        self.running = 0
        # The session the API's publishes are made as (never registered).
        self.session = Session("api", None, "api")
        self.session.attributes = {"api": True}

    def owns(self, path: bytes) -> bool:
        return path == self.prefix or path.startswith(self.prefix + b"/")

    # -------------------------------------------------------------- requests

    def handle(
        self, conn: HttpConnection, exchange: HttpExchange, method: bytes, path: bytes, body: bytes
    ) -> None:
        """Answer an API request now, or later from a task (`conn.complete`)."""
        stats = self.server.core.stats
        stats.api_requests += 1
        try:
            self._authorize(conn.headers)
            operation = path[len(self.prefix) :].decode("utf-8", "replace").strip("/")
            call = self._parse(operation, method, body, conn.url.partition(b"?")[2])
        except ApiError as error:
            conn.complete(exchange, self._error(error))
            return
        if self.running >= MAX_RUNNING:
            limit_log.warning("api_running", "more than %d API calls in progress", MAX_RUNNING)
            conn.complete(exchange, self._error(ApiError(503, "too many API calls in progress")))
            return
        context = context_of(exchange)  # (the headers are gone once this returns)
        if self._answers_now(call[0]):
            try:
                answer = self._ok(self._call_now(call, context))
            except ApiError as error:
                answer = self._error(error)
            conn.complete(exchange, answer)
            return
        self.running += 1
        self.server.hooks.spawn(self._run(conn, exchange, call, context))

    def _answers_now(self, name: str) -> bool:
        """Can this call be answered without waiting (for Redis, another
        node, an async policy)?  One process: every call, mostly."""
        if name in ("publish", "broadcast"):
            return self.keys.redis is None and not self.server.core.publish_awaits
        if name == "presence":  # (the store is Redis in a cluster: any node answers)
            presence = self.server.core.presence
            return presence is None or presence.store is None
        return self.relay is None

    def _ok(self, result: Any) -> bytes:
        return response(200, orjson.dumps({"result": result}), JSON)

    async def _run(
        self,
        conn: HttpConnection,
        exchange: HttpExchange,
        call: tuple[str, Any],
        context: HttpContext,
    ) -> None:
        try:
            answer = self._ok(await self._call(call, context))
        except ApiError as error:
            answer = self._error(error)
        except Exception:
            self.server.core.stats.internal_errors += 1
            limit_log.exception("api_internal", "the HTTP API failed on %s", call[0])
            answer = self._error(ApiError(500, "internal error"))
        finally:
            self.running -= 1
        conn.complete(exchange, answer)

    def _error(self, error: ApiError) -> bytes:
        self.server.core.stats.api_refused += 1
        body = orjson.dumps({"error": {"code": error.status, "message": str(error)}})
        extra = b'WWW-Authenticate: apikey realm="engine"\r\n' if error.status == 401 else b""
        return response(error.status, body, JSON, extra)

    def _authorize(self, headers: dict[bytes, bytes]) -> None:
        given = headers.get(b"x-api-key")
        if given is None:
            scheme, _, value = headers.get(b"authorization", b"").partition(b" ")
            given = value.strip() if scheme.lower() == b"apikey" else None
        if given is None:
            raise ApiError(401, "an API key is needed: Authorization: apikey <key> or X-API-Key")
        if not hmac.compare_digest(given, self.key):
            raise ApiError(401, "wrong API key")

    def _parse(
        self, operation: str, method: bytes, body: bytes, query: bytes = b""
    ) -> tuple[str, Any]:
        """The call (name, arguments) of a request, validated; ApiError if not."""
        head, _, rest = operation.partition("/")
        if head == "presence":
            return "presence", self._presence_args(method, unquote(rest), query)
        if head in ("channels", "sessions"):
            if method not in (b"GET", b"HEAD"):
                raise ApiError(405, f"{head} is read with GET")
            name = unquote(rest)
            if head == "sessions":
                if not name:
                    raise ApiError(404, "GET sessions/<clientId>")
                return "session", name
            if not name:
                return "channels", None
            return "channel", self._channel("/" + name.lstrip("/"), patterns=True)
        if head not in _FIELDS or rest:
            raise ApiError(404, f"no API call {operation!r}")
        if method != b"POST":
            raise ApiError(405, f"{operation} is a POST")
        try:
            args = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise ApiError(400, f"the body is not JSON: {exc}") from None
        if type(args) is not dict:
            raise ApiError(400, "the body must be a JSON object")
        unknown = set(args) - _FIELDS[head]
        if unknown:
            raise ApiError(
                400, f"unknown fields {sorted(unknown)}; {head} takes {sorted(_FIELDS[head])}"
            )
        ext = args.get("ext")
        if ext is not None and type(ext) is not dict:
            raise ApiError(400, "ext must be an object")
        if head != "disconnect" and "data" not in args:
            raise ApiError(400, "data is missing")
        key = args.get("idempotency_key")
        if key is not None and not (
            type(key) is str and 0 < len(key) <= MAX_KEY_LENGTH and key.isprintable()
        ):
            raise ApiError(400, f"idempotency_key must be 1..{MAX_KEY_LENGTH} printable characters")
        if head == "broadcast":
            channels = args.get("channels")
            if type(channels) is not list or not channels:
                raise ApiError(400, "channels must be a non-empty list")
            if len(channels) > MAX_CHANNELS:
                raise ApiError(400, f"more than {MAX_CHANNELS} channels")
            args["channels"] = list(dict.fromkeys(self._channel(c) for c in channels))
        elif head in ("publish", "deliver"):
            args["channel"] = self._channel(args.get("channel"), service=head == "deliver")
        if head in ("deliver", "disconnect") and type(args.get("session")) is not str:
            raise ApiError(400, "session must be a clientId (a string)")
        return head, args

    def _presence_args(self, method: bytes, name: str, query: bytes) -> tuple[str, bool, int]:
        if method not in (b"GET", b"HEAD"):
            raise ApiError(405, "presence is read with GET")
        presence = self.server.core.presence
        if presence is None:
            raise ApiError(404, "presence is off (presence_channels)")
        try:
            params = parse_qs(query.decode("latin-1"), max_num_fields=10)
        except ValueError:
            raise ApiError(400, "too many query parameters") from None
        members = params.get("members", ["0"])[-1] in ("1", "true")
        limit_text = params.get("limit", [None])[-1]
        try:
            if limit_text is not None and not limit_text.isdigit():
                raise PresenceError(400, "limit must be an integer >= 0")
            limit = presence.query_limit(None if limit_text is None else int(limit_text))
            channel = presence.check_channel("/" + name.lstrip("/"))
        except PresenceError as exc:
            raise ApiError(exc.status, str(exc)) from None
        return channel, members, limit

    @staticmethod
    def _channel(value: object, patterns: bool = False, service: bool = False) -> str:
        if type(value) is not str:
            raise ApiError(400, "a channel must be a string")
        name = normalize_channel(value)
        code = validate_channel(name)
        if not code or (code != CHANNEL_OK_CONCRETE and not patterns):
            raise ApiError(400, f"{value!r} is not a channel name (no wildcards here)")
        if name.startswith("/meta/"):
            raise ApiError(400, f"{value!r}: meta channels are the protocol's own")
        if name.startswith("/service/") and not service and not patterns:
            raise ApiError(400, f"{value!r}: service channels take a client's requests")
        return name

    # ----------------------------------------------------------------- calls

    def _call_now(self, call: tuple[str, Any], context: HttpContext) -> Any:
        """A call answered at once (see `_answers_now`): the same as `_call`."""
        name, args = call
        if name in ("publish", "broadcast"):
            channels, result = self._targets(name, args)
            key = args.get("idempotency_key")
            if key is not None and not self.keys.claim_here(key):
                return self._duplicate(result)
            core = self.server.core
            try:
                checked = []
                for channel in channels:  # all checked before any goes out
                    message = self._message(args)
                    refusal = core.admit_now(self.session, channel, message, context)
                    self._refused(channel, refusal)
                    checked.append((channel, message))
                self._send_all(checked)
            except ApiError:
                if key is not None:
                    self.keys.local.pop(key, None)  # nothing went out: a retry may
                raise
            return result
        if name == "presence":
            presence = self.server.core.presence
            assert presence is not None
            return presence.query_now(*args)
        return self._result(name, args, [self.answer(*self._local_question(name, args))])

    async def _call(self, call: tuple[str, Any], context: HttpContext) -> Any:
        name, args = call
        if name in ("publish", "broadcast"):
            channels, result = self._targets(name, args)
            key = args.get("idempotency_key")
            if key is not None and not await self.keys.claim(key):
                return self._duplicate(result)
            core = self.server.core
            try:
                checked = []
                for channel in channels:  # all checked before any goes out
                    message = self._message(args)
                    refusal = await core.admit(self.session, channel, message, context)
                    self._refused(channel, refusal)
                    checked.append((channel, message))
                self._send_all(checked)
            except ApiError:
                if key is not None:
                    await self.keys.release(key)  # nothing went out: a retry may
                raise
            return result
        if name == "presence":
            presence = self.server.core.presence
            if presence is None:
                raise ApiError(404, "presence is off (presence_channels)")
            try:
                return await presence.query(*args)
            except PresenceError as exc:
                raise ApiError(exc.status, str(exc)) from None
        if name in ("channels", "channel"):
            op, question = self._local_question(name, args)
            return self._result(name, args, await self._everywhere(op, question))
        session = args if name == "session" else args["session"]
        value = await self._at_owner(name, session, args if name != "session" else {})
        return self._result(name, args, [value])

    @staticmethod
    def _targets(name: str, args: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
        if name == "broadcast":
            return args["channels"], {"channels": args["channels"]}
        return [args["channel"]], {"channel": args["channel"]}

    def _duplicate(self, result: dict[str, Any]) -> dict[str, Any]:
        self.server.core.stats.api_duplicates += 1
        return {**result, "duplicate": True}

    @staticmethod
    def _message(args: dict[str, Any]) -> dict[str, Any]:
        message: dict[str, Any] = {"data": args["data"]}
        if args.get("ext") is not None:
            message["ext"] = args["ext"]
        return message

    @staticmethod
    def _refused(channel: str, refusal: str | None) -> None:
        """Raise the API error of a Bayeux refusal (`403::...`), if any."""
        if refusal is None:
            return
        code = refusal.split(":", 1)[0]
        status = int(code) if code.isdigit() and 400 <= int(code) < 500 else 403
        raise ApiError(status, f"{channel}: refused ({refusal})")

    def _send_all(self, checked: list[tuple[str, dict[str, Any]]]) -> None:
        core = self.server.core
        for channel, message in checked:
            refusal = core.publish_admitted(channel, message)
            if refusal is not None:  # (data nested too deep to encode: the first one)
                raise ApiError(400, f"{channel}: refused ({refusal})")
            core.stats.api_published += 1

    @staticmethod
    def _local_question(name: str, args: Any) -> tuple[str, dict[str, Any]]:
        """The operation and arguments of `answer` for a call."""
        if name == "channels":
            return "channels", {}
        if name == "channel":
            return "channel", {"channel": args}
        if name == "session":
            return "session", {"session": args}
        return name, args

    @staticmethod
    def _result(name: str, args: Any, answers: list[Any]) -> Any:
        """The call's result from the nodes' answers."""
        if name == "channels":
            merged: dict[str, int] = {}
            for answer in answers:
                for channel, count in answer["channels"].items():
                    merged[channel] = merged.get(channel, 0) + count
            return {
                "channels": merged,
                "nodes": len(answers),
                "truncated": any(a["truncated"] for a in answers),
            }
        if name == "channel":
            return {
                "channel": args,
                "subscribers": sum(a["subscribers"] for a in answers),
                "matching_sessions": sum(a["matching_sessions"] for a in answers),
                "nodes": len(answers),
            }
        session = args if name == "session" else args["session"]
        value = answers[0]
        if value is None or value is False:
            raise ApiError(404, f"no session {session!r}")
        return value if name == "session" else {"session": session}

    async def _everywhere(self, op: str, args: dict[str, Any]) -> list[Any]:
        if self.relay is None:
            return [self.answer(op, args)]
        from engine.cluster.api_relay import RelayError

        try:
            return await self.relay.ask_all(op, args)
        except RelayError as exc:
            raise ApiError(exc.status, str(exc)) from None

    async def _at_owner(self, op: str, client_id: str, args: dict[str, Any]) -> Any:
        core = self.server.core
        owner = core.owner_of(client_id)
        if self.relay is None or owner is None or owner == core.node_id:
            return self.answer(op, {**args, "session": client_id})
        from engine.cluster.api_relay import NodeGone, RelayError

        try:
            return await self.relay.ask(owner, op, {**args, "session": client_id})
        except NodeGone:
            return None
        except RelayError as exc:
            raise ApiError(exc.status, str(exc)) from None

    # ----------------------------------------- this node's part of a call

    def answer(self, op: str, args: dict[str, Any]) -> Any:
        """This node's answer to an operation (also asked by other nodes)."""
        core = self.server.core
        if op == "channels":
            broker = core.broker
            names = broker.channels()
            listed = {name: broker.subscriber_count(name) for name in names[:MAX_LISTED]}
            return {"channels": listed, "truncated": len(names) > MAX_LISTED}
        if op == "channel":
            channel = str(args.get("channel"))
            return {
                "subscribers": core.broker.subscriber_count(channel),
                "matching_sessions": (
                    core.broker.matching_count(channel) if "*" not in channel else 0
                ),
            }
        client_id = args.get("session")
        session = core.sessions.get(client_id) if type(client_id) is str else None
        if session is None or session.removed or session.local is not None:
            return None
        if op == "session":
            return {
                "session": session.id,
                "node": core.node_id,
                "transport": session.transport,
                "connected": session.connected,
                "held_connect": session.hold is not None,
                "subscriptions": sorted(session.subscriptions or ()),
                "queued": len(session.queue or ()),
                "address": session.address,
            }
        if op == "deliver":
            fields = {"ext": args["ext"]} if type(args.get("ext")) is dict else {}
            self.server.deliver(session, str(args.get("channel")), args.get("data"), **fields)
            return True
        if op == "disconnect":
            core.end_session(session, errors.DISCONNECTED_BY_SERVER, {"reconnect": "none"})
            return True
        raise ValueError(f"unknown API operation {op!r}")

    async def close(self) -> None:
        await self.keys.close()
