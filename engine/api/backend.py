"""Backend hooks over HTTP: the team's own backend decides, whatever its language.

    python -m engine serve --hook-url http://127.0.0.1:9000/bayeux \
        --hook-operations handshake,subscribe,publish --hook-timeout 2000

For each configured operation the server POSTs a JSON description of the
request to `<hook_url>/<operation>` and waits for the answer (at most
`hook_timeout` ms) before it goes on:

    {"operation": "subscribe", "client_id": "...", "channel": "/chat/room1",
     "message": {...the Bayeux message...}, "transport": "websocket",
     "remote_address": "203.0.113.9", "headers": {"cookie": "...", ...},
     "attributes": {...what an earlier hook set on the session...}}

The answer is a JSON object:

    {"allow": true}                               go on
    {"allow": false, "reason": "not_a_member"}    refused: 403:not_a_member:subscribe_denied
    {"allow": true, "attributes": {"user": "u1"}} (handshake) kept in session.attributes
    {"allow": true, "ext": {...}}                 merged into the message's ext
    {"allow": true, "data": ...}                  (publish) the data subscribers get

The headers are those of the HTTP request behind the message (the
WebSocket's upgrade request), so the backend can read its own session
cookie or `Authorization` header.  When the backend cannot answer (it times
out, answers another status than 200, or something that is not such an
object) the `hook_failure` policy applies: `deny` (the default:
`403:backend_unavailable:...`) or `allow`; every such failure is counted
and logged once per cause.  At most `hook_concurrency` requests are in
flight (a bounded connection pool); up to ten times that many wait for a
turn, and beyond that a request is answered by the failure policy at once,
so a slow backend cannot make memory grow.

Event webhooks (`webhook_url`): `session_added` and `session_removed`
events are POSTed, in batches of at most 100 (`{"events": [...]}`), fire
and forget, retried with back-off (0.1 s to 10 s) while the backend fails;
at most `webhook_queue` events wait, beyond which the oldest are dropped,
counted and logged.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from typing import TYPE_CHECKING, Any

import aiohttp

from engine.api.context import current_context
from engine.api.policy import Deny, SecurityPolicy, deny
from engine.config import mask_password
from engine.protocol.message import Message
from engine.ratelog import CauseLog

if TYPE_CHECKING:
    from engine.protocol.session import Session

__all__ = ["BackendHooks", "Webhooks"]

log = logging.getLogger("engine.backend")
limit_log = CauseLog(log)

OPERATIONS = ("handshake", "subscribe", "publish")
MAX_ANSWER = 1 << 20  # bytes of a hook's answer
WEBHOOK_BATCH = 100
BACKOFF_MIN, BACKOFF_MAX = 0.1, 10.0


class BackendHooks(SecurityPolicy):
    """A security policy whose decisions are the backend's (module docstring)."""

    uses_http_context = True  # the headers go to the backend

    def __init__(
        self,
        url: str,
        operations: tuple[str, ...] = OPERATIONS,
        *,
        timeout: float = 2.0,
        failure: str = "deny",
        concurrency: int = 100,
    ) -> None:
        super().__init__()
        unknown = set(operations) - set(OPERATIONS)
        if unknown or not operations:
            raise ValueError(f"hook operations must be among {OPERATIONS}, not {sorted(unknown)}")
        if failure not in ("deny", "allow"):
            raise ValueError("hook_failure must be deny or allow")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"hook_url must be an http:// or https:// URL, not {url!r}")
        self.url = url.rstrip("/")
        self.operations = operations
        self.timeout = timeout
        self.allow_on_failure = failure == "allow"
        self.concurrency = concurrency
        self.max_waiting = concurrency * 10
        self.waiting = 0
        self._turns: asyncio.Semaphore | None = None
        self._client: aiohttp.ClientSession | None = None
        self.calls = 0
        self.failures = 0
        # The operations without a hook stay synchronous (never awaited).
        for operation in OPERATIONS:
            if operation not in operations:
                name = "can_" + operation
                setattr(self, name, getattr(SecurityPolicy, name).__get__(self))

    @classmethod
    def from_options(cls, options: Any) -> BackendHooks:
        """The hooks the `hook_*` options describe."""
        return cls(
            options.hook_url,
            tuple(op.strip() for op in options.hook_operations.split(",") if op.strip()),
            timeout=options.hook_timeout / 1000.0,
            failure=options.hook_failure,
            concurrency=options.hook_concurrency,
        )

    # ------------------------------------------------------------ decisions

    async def can_handshake(self, session: Session, message: Message) -> bool | Deny:
        answer = await self._ask("handshake", session, "", message)
        if isinstance(answer, dict) and isinstance(answer.get("attributes"), dict):
            session.attributes = {**(session.attributes or {}), **answer["attributes"]}
        return self._verdict(answer, message)

    async def can_subscribe(self, session: Session, channel: str, message: Message) -> bool | Deny:
        return self._verdict(await self._ask("subscribe", session, channel, message), message)

    async def can_publish(self, session: Session, channel: str, message: Message) -> bool | Deny:
        answer = await self._ask("publish", session, channel, message)
        if isinstance(answer, dict) and answer.get("allow") is True and "data" in answer:
            message["data"] = answer["data"]
        return self._verdict(answer, message)

    def _verdict(self, answer: Any, message: Message) -> bool | Deny:
        if answer is None:  # the backend failed: the failure policy
            return True if self.allow_on_failure else deny("backend_unavailable")
        if answer.get("allow") is not True:
            reason = answer.get("reason")
            return deny(reason if isinstance(reason, str) and reason else "denied_by_backend")
        ext = answer.get("ext")
        if isinstance(ext, dict):
            mine = message.get("ext")
            message["ext"] = {**mine, **ext} if isinstance(mine, dict) else ext
        return True

    # -------------------------------------------------------------- calling

    async def _ask(
        self, operation: str, session: Session, channel: str, message: Message
    ) -> dict[str, Any] | None:
        """The backend's answer, or None when it could not give one."""
        context = current_context()
        request = {
            "operation": operation,
            "client_id": session.id,
            "channel": channel or None,
            "message": message,
            "transport": context.transport if context else session.transport,
            "remote_address": context.remote_address if context else session.address,
            "headers": dict(context.headers) if context else {},
            "attributes": session.attributes or {},
        }
        if self.waiting >= self.max_waiting:
            self._failed("overloaded", f"more than {self.max_waiting} hook calls waiting")
            return None
        if self._turns is None:
            self._turns = asyncio.Semaphore(self.concurrency)
        self.waiting += 1
        try:
            async with self._turns:
                return await self._post(operation, request)
        finally:
            self.waiting -= 1

    async def _post(self, operation: str, request: dict[str, Any]) -> dict[str, Any] | None:
        self.calls += 1
        try:
            body = json.dumps(request).encode()
        except (TypeError, ValueError):
            self._failed("not_json", f"the {operation} request is not JSON")
            return None
        try:
            async with self._session().post(
                f"{self.url}/{operation}",
                data=body,
                headers={"Content-Type": "application/json"},
            ) as response:
                if response.status != 200:
                    self._failed(
                        f"status_{response.status}",
                        f"the backend answered {response.status} to {operation}",
                    )
                    return None
                payload = await _read_bounded(response)
        except TimeoutError:
            self._failed("timeout", f"the backend did not answer {operation} in time")
            return None
        except aiohttp.ClientError as exc:
            self._failed("unreachable", f"the backend is unreachable: {mask_password(repr(exc))}")
            return None
        try:
            answer = json.loads(payload) if payload is not None else None
        except ValueError:
            answer = None
        if not isinstance(answer, dict) or not isinstance(answer.get("allow"), bool):
            self._failed("garbage", f"the backend's answer to {operation} is not {{allow}}")
            return None
        return answer

    def _failed(self, cause: str, what: str) -> None:
        self.failures += 1
        limit_log.warning(
            f"hook:{cause}",
            "%s; %s (%d hook failures so far)",
            what,
            "allowed (hook_failure=allow)" if self.allow_on_failure else "denied",
            self.failures,
        )

    def _session(self) -> aiohttp.ClientSession:
        if self._client is None:
            self._client = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                connector=aiohttp.TCPConnector(limit=self.concurrency),
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


async def _read_bounded(response: aiohttp.ClientResponse) -> bytes | None:
    """The body, or None past MAX_ANSWER bytes (not read further)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(65536):
        size += len(chunk)
        if size > MAX_ANSWER:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


class Webhooks:
    """Session events POSTed to the backend, in the background (module docstring)."""

    def __init__(self, url: str, *, max_queue: int = 10000, timeout: float = 5.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"webhook_url must be an http:// or https:// URL, not {url!r}")
        self.url = url
        self.timeout = timeout
        self.queue: collections.deque[dict[str, Any]] = collections.deque()
        self.max_queue = max_queue
        self.sent = 0
        self.dropped = 0
        self.failures = 0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    def session_added(self, session: Session) -> None:
        self._event("session_added", session, {})

    def session_removed(self, session: Session, timeout: bool) -> None:
        self._event("session_removed", session, {"timeout": timeout})

    def _event(self, kind: str, session: Session, extra: dict[str, Any]) -> None:
        if session.local is not None:
            return  # (the server's own local sessions)
        if len(self.queue) >= self.max_queue:
            self.queue.popleft()
            self.dropped += 1
            limit_log.warning(
                "webhook_dropped",
                "the webhook backend is behind: %d events waiting, the oldest dropped "
                "(%d dropped so far)",
                self.max_queue,
                self.dropped,
            )
        user = (session.attributes or {}).get("user")
        self.queue.append(
            {
                "event": kind,
                "client_id": session.id,
                "transport": session.transport,
                "remote_address": session.address,
                "user": user if isinstance(user, str | int) else None,
                "time": time.time(),
                **extra,
            }
        )
        if self._wake is not None:
            self._wake.set()

    async def _run(self) -> None:
        assert self._wake is not None
        backoff = BACKOFF_MIN
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout)
        ) as client:
            while True:
                if not self.queue:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                batch = [self.queue[i] for i in range(min(WEBHOOK_BATCH, len(self.queue)))]
                try:
                    async with client.post(
                        self.url,
                        data=json.dumps({"events": batch}).encode(),
                        headers={"Content-Type": "application/json"},
                    ) as response:
                        ok = 200 <= response.status < 300
                        why = f"answered {response.status}"
                except (aiohttp.ClientError, TimeoutError) as exc:
                    ok, why = False, mask_password(repr(exc))  # (a URL's password: never)
                if ok:
                    for event in batch:  # (unless dropped meanwhile, as the oldest)
                        if self.queue and self.queue[0] is event:
                            self.queue.popleft()
                    self.sent += len(batch)
                    backoff = BACKOFF_MIN
                    continue
                self.failures += 1
                limit_log.warning(
                    "webhook_failed",
                    "the webhook backend %s; %d events wait, retried in %.1f s",
                    why,
                    len(self.queue),
                    backoff,
                )
                await asyncio.sleep(backoff)
                backoff = min(BACKOFF_MAX, backoff * 2)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
