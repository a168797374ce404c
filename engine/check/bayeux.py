"""Raw Bayeux sessions for the server checks: the shared helpers (handshake,
connect, subscribe, publish, collect events) on top of `engine.check.wire`.

A `Context` is what one check gets: its wire log (`exchange`), the features
asked for on the command line, what the probe learnt about the server
(`facts`: advice and connection types), and factories for browsers (a cookie
jar with its own connections) and handshaken sessions.  Nothing here filters
what the server sends: every message of every response is kept, so a check
can look at duplicates, stray fields and order.

Protocol reference: https://docs.cometd.org/current/reference/#_bayeux
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import secrets
from collections.abc import Callable, Iterable
from typing import Any

from engine.check.report import Exchange
from engine.check.wire import (
    Endpoint,
    HttpConnection,
    Response,
    WebSocket,
    WireError,
    cookie_pairs,
)

__all__ = [
    "Message",
    "CheckFailed",
    "CheckSkipped",
    "expect",
    "Facts",
    "Browser",
    "Session",
    "WsSession",
    "Context",
    "reply_to",
    "events_of",
    "error_code",
    "parse_messages",
]

Message = dict[str, Any]
MAX_CONNECTIONS = 8  # per browser: a check opens a handful, a runaway loop stops here
MAX_POLLS = 50  # connects one `collect` may send


class CheckFailed(Exception):
    """The server broke the rule; the message says how."""


class CheckSkipped(Exception):
    """The check cannot run against this server (feature off or not offered)."""


def expect(condition: object, reason: str) -> None:
    if not condition:
        raise CheckFailed(reason)


def error_code(message: Message) -> str:
    """`402` of `"402::session_unknown"` ("" when there is no error string)."""
    error = message.get("error")
    return error.split(":", 1)[0] if isinstance(error, str) else ""


def events_of(messages: Iterable[Message]) -> list[Message]:
    """Deliveries: messages that are not replies (a reply has `successful`)."""
    return [m for m in messages if "successful" not in m and not m["channel"].startswith("/meta/")]


def reply_to(messages: list[Message], request: Message) -> Message:
    """The one reply to `request` (same channel and id); a missing or doubled
    reply fails the check."""
    found = [
        m
        for m in messages
        if m.get("channel") == request["channel"] and m.get("id") == request.get("id")
    ]
    expect(found, f"no {request['channel']} reply with id {request.get('id')!r}")
    expect(len(found) == 1, f"{len(found)} replies to {request['channel']} id {request.get('id')}")
    return found[0]


def parse_messages(text: str) -> list[Message]:
    """A Bayeux response body: a JSON array of objects each with a `channel`."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise CheckFailed(f"response is not JSON: {exc}") from exc
    expect(isinstance(value, list), f"response is JSON but not an array: {text[:200]!r}")
    for item in value:
        expect(
            isinstance(item, dict) and isinstance(item.get("channel"), str),
            f"response array holds a non-message {str(item)[:200]!r}",
        )
    return value  # type: ignore[no-any-return]


@dataclasses.dataclass
class Facts:
    """What a probe handshake learnt about the server (defaults when it failed)."""

    timeout_ms: int = 30_000
    interval_ms: int = 0
    connection_types: tuple[str, ...] = ()
    probe_error: str = ""

    @property
    def hold(self) -> float:
        """Seconds the server holds a connect (its advice `timeout`)."""
        return self.timeout_ms / 1000


class Browser:
    """A cookie jar and its own keep-alive connections, like one browser."""

    def __init__(self, ctx: Context, label: str) -> None:
        self.ctx = ctx
        self.label = label
        self.cookies: dict[str, str] = {}
        self.set_cookies: list[str] = []  # every Set-Cookie seen, in order
        self._connections: list[HttpConnection] = []

    def cookie_header(self) -> str | None:
        return "; ".join(f"{k}={v}" for k, v in self.cookies.items()) or None

    def absorb(self, set_cookies: Iterable[str]) -> None:
        for header in set_cookies:
            self.set_cookies.append(header)
            name, value, _ = cookie_pairs(header)
            if name:
                self.cookies[name] = value

    def _idle_connection(self) -> HttpConnection:
        for connection in self._connections:
            if not connection.busy:
                return connection
        expect(
            len(self._connections) < MAX_CONNECTIONS,
            f"the check needed more than {MAX_CONNECTIONS} connections at once",
        )
        connection = HttpConnection(
            self.ctx.endpoint, self.ctx.exchange, f"{self.label}.{len(self._connections) + 1}"
        )
        self._connections.append(connection)
        return connection

    async def request(
        self,
        method: str,
        target: str,
        body: bytes | None = None,
        *,
        content_type: str | None = "application/json;charset=UTF-8",
        timeout: float | None = None,
    ) -> Response:
        """One HTTP request with this browser's cookies; Set-Cookie is kept."""
        headers = {}
        if body is not None and content_type:
            headers["Content-Type"] = content_type
        cookie = self.cookie_header()
        if cookie:
            headers["Cookie"] = cookie
        connection = self._idle_connection()
        connection.busy = True
        try:
            response = await connection.request(
                method,
                target,
                body,
                headers=headers,
                timeout=timeout or self.ctx.request_timeout,
            )
        except WireError as exc:
            raise CheckFailed(str(exc)) from exc
        finally:
            connection.busy = False
        self.absorb(response.all_headers("set-cookie"))
        return response

    async def post(
        self, messages: Any, *, path: str = "", timeout: float | None = None
    ) -> list[Message]:
        """POST a message list (or one object) as JSON; the reply must be 200
        with a JSON array of messages."""
        response = await self.request(
            "POST", self.ctx.target(path), json.dumps(messages).encode(), timeout=timeout
        )
        expect(response.status == 200, f"HTTP {response.status} to a valid Bayeux request")
        return parse_messages(response.text)

    def close(self) -> None:
        for connection in self._connections:
            connection.close()


class Session:
    """One handshaken Bayeux client over long-polling in a `Browser`."""

    def __init__(self, browser: Browser, client_id: str, handshake_reply: Message) -> None:
        self.browser = browser
        self.ctx = browser.ctx
        self.client_id = client_id
        self.handshake_reply = handshake_reply
        self.events: list[Message] = []  # every delivery seen, in arrival order
        self.last_connect_reply: Message | None = None

    def message(self, channel: str, **fields: Any) -> Message:
        return {"channel": channel, "clientId": self.client_id, "id": self.ctx.next_id(), **fields}

    async def send(
        self, *messages: Message, timeout: float | None = None, path: str = ""
    ) -> list[Message]:
        """Send messages in one request; deliveries in the response go to `events`."""
        answer = await self.browser.post(list(messages), timeout=timeout, path=path)
        self.events.extend(events_of(answer))
        return answer

    async def call(self, request: Message, timeout: float | None = None) -> Message:
        """Send one message and return its reply."""
        return reply_to(await self.send(request, timeout=timeout), request)

    def connect_message(self, **fields: Any) -> Message:
        return self.message("/meta/connect", connectionType="long-polling", **fields)

    async def connect(self, *, hold: bool = True, **fields: Any) -> Message:
        """One connect; `hold=False` asks the server not to hold it
        (`advice.timeout: 0`, what CometD clients send first)."""
        if not hold:
            fields.setdefault("advice", {"timeout": 0})
        reply = await self.call(self.connect_message(**fields), timeout=self.ctx.hold_timeout)
        self.last_connect_reply = reply
        return reply

    async def subscribe(self, *channels: str) -> Message:
        subscription: str | list[str] = channels[0] if len(channels) == 1 else list(channels)
        reply = await self.call(self.message("/meta/subscribe", subscription=subscription))
        expect(reply.get("successful") is True, f"subscribe to {subscription} failed: {reply}")
        return reply

    async def unsubscribe(self, channel: str) -> Message:
        return await self.call(self.message("/meta/unsubscribe", subscription=channel))

    async def publish(self, channel: str, data: Any, **fields: Any) -> Message:
        reply = await self.call(self.message(channel, data=data, **fields))
        expect(reply.get("successful") is True, f"publish to {channel} failed: {reply}")
        return reply

    async def disconnect(self) -> Message:
        return await self.call(self.message("/meta/disconnect"))

    async def collect(
        self, until: Callable[[list[Message]], bool], *, what: str, within: float | None = None
    ) -> list[Message]:
        """Connect again and again until `until(self.events)` holds; fail after
        `within` seconds (default: two of the server's holds)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (within if within is not None else self.ctx.hold_timeout * 2)
        for _ in range(MAX_POLLS):
            if until(self.events):
                return self.events
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                await asyncio.wait_for(self.connect(), remaining)
            except TimeoutError:
                break
        expect(until(self.events), f"{what}: not delivered (events seen: {self.events})")
        return self.events

    async def receive(self, channel: str, count: int = 1, **kw: Any) -> list[Message]:
        """Poll until `count` events on `channel` arrived; those events."""
        events = await self.collect(
            lambda evs: sum(e["channel"] == channel for e in evs) >= count,
            what=f"{count} event(s) on {channel}",
            **kw,
        )
        return [e for e in events if e["channel"] == channel]


class WsSession:
    """A Bayeux client over one raw WebSocket."""

    def __init__(self, ctx: Context, ws: WebSocket) -> None:
        self.ctx = ctx
        self.ws = ws
        self.client_id = ""
        self.inbox: list[Message] = []

    async def send(self, *messages: Message) -> None:
        await self.ws.send_text(json.dumps(list(messages)))

    async def expect_reply(self, request: Message, timeout: float | None = None) -> Message:
        """Read frames until the reply to `request` arrives (others go to `inbox`)."""
        found = await self.wait_for(
            lambda m: m.get("channel") == request["channel"] and m.get("id") == request.get("id"),
            what=f"the {request['channel']} reply (id {request.get('id')})",
            timeout=timeout,
        )
        return found

    async def wait_for(
        self, match: Callable[[Message], bool], *, what: str, timeout: float | None = None
    ) -> Message:
        for index, message in enumerate(self.inbox):
            if match(message):
                return self.inbox.pop(index)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (timeout if timeout is not None else self.ctx.request_timeout)
        for _ in range(1000):
            remaining = deadline - loop.time()
            expect(remaining > 0, f"{what}: nothing within the time allowed")
            try:
                text = await self.ws.receive_text(remaining)
            except WireError as exc:
                raise CheckFailed(f"{what}: {exc}") from exc
            messages = parse_messages(text)
            for index, message in enumerate(messages):
                if match(message):
                    self.inbox.extend(messages[index + 1 :])
                    return message
                self.inbox.append(message)
        raise CheckFailed(f"{what}: not among 1000 frames")

    def message(self, channel: str, **fields: Any) -> Message:
        return {"channel": channel, "clientId": self.client_id, "id": self.ctx.next_id(), **fields}

    async def handshake(self) -> Message:
        request = self.ctx.handshake_message(["websocket"])
        await self.send(request)
        reply = await self.expect_reply(request)
        expect(reply.get("successful") is True, f"WebSocket handshake refused: {reply}")
        self.client_id = str(reply.get("clientId"))
        return reply

    async def call(self, request: Message, timeout: float | None = None) -> Message:
        await self.send(request)
        return await self.expect_reply(request, timeout)

    def connect_message(self, **fields: Any) -> Message:
        return self.message("/meta/connect", connectionType="websocket", **fields)


class Context:
    """What one check runs with; `close()` ends every connection it opened."""

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        features: frozenset[str],
        facts: Facts,
        request_timeout: float,
        exchange: Exchange | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.features = features
        self.facts = facts
        self.request_timeout = request_timeout
        self.exchange = exchange or Exchange()
        self.run_id = secrets.token_hex(4)
        self._ids = itertools.count(1)
        self._channels = itertools.count(1)
        self._browsers: list[Browser] = []
        self._sockets: list[WebSocket] = []

    @property
    def hold_timeout(self) -> float:
        """Time allowed for a request the server may hold: its advice timeout
        plus the usual request allowance."""
        return self.facts.hold + self.request_timeout

    def next_id(self) -> str:
        return str(next(self._ids))

    def target(self, suffix: str = "") -> str:
        return (self.endpoint.path + suffix) or "/"

    def channel(self, name: str = "c") -> str:
        """A channel of this check alone, under `/check/`."""
        return f"/check/{self.run_id}x{next(self._channels)}/{name}"

    def browser(self) -> Browser:
        browser = Browser(self, f"b{len(self._browsers) + 1}")
        self._browsers.append(browser)
        return browser

    def handshake_message(self, types: list[str] | None = None, **fields: Any) -> Message:
        return {
            "channel": "/meta/handshake",
            "version": "1.0",
            "minimumVersion": "1.0",
            "supportedConnectionTypes": types or ["long-polling"],
            "id": self.next_id(),
            **fields,
        }

    async def handshake(self, browser: Browser | None = None, **fields: Any) -> Session:
        """A handshaken session (no connect yet)."""
        browser = browser or self.browser()
        request = self.handshake_message(**fields)
        reply = reply_to(await browser.post([request]), request)
        expect(reply.get("successful") is True, f"handshake refused: {reply}")
        client_id = reply.get("clientId")
        expect(isinstance(client_id, str) and client_id, f"reply without clientId: {reply}")
        assert isinstance(client_id, str)
        return Session(browser, client_id, reply)

    async def session(self, browser: Browser | None = None, **fields: Any) -> Session:
        """Handshaken and connected once (not held), ready to subscribe and poll."""
        session = await self.handshake(browser, **fields)
        reply = await session.connect(hold=False)
        expect(reply.get("successful") is True, f"first connect refused: {reply}")
        return session

    async def subscriber(self, *channels: str) -> Session:
        session = await self.session()
        await session.subscribe(*channels)
        return session

    async def websocket(self, browser: Browser | None = None) -> WsSession:
        cookie = browser.cookie_header() if browser else None
        try:
            ws = await WebSocket.connect(
                self.endpoint, self.exchange, cookie=cookie, timeout=self.request_timeout
            )
        except WireError as exc:
            raise CheckFailed(str(exc)) from exc
        self._sockets.append(ws)
        if browser is not None:
            browser.absorb(ws.set_cookies)
        return WsSession(self, ws)

    def close(self) -> None:
        for browser in self._browsers:
            browser.close()
        for ws in self._sockets:
            ws.close()
