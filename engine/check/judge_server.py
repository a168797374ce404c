"""The judge's own Bayeux server (`python -m engine check --client`), on
aiohttp: long-polling (POST JSON), callback-polling (JSONP GET) and WebSocket
at one path. It behaves as a correct Bayeux server (handshake, connects held
for the advised timeout, subscribe, publish delivered to subscribers,
disconnect); what it does on one particular /meta/connect is the business of
the situation being played (engine.check.situations), through a `Stage`.

A `Stage` is one situation's view of the wire: every message the client sent
(an `Arrival`, time-stamped), the exchange log, and the held connects the
situation may answer its own way (`answer`, `answer_at`, `stall`, `cut`).
Whatever a situation leaves alone gets the ordinary answer.

Out of band, `GET /judge/state` says which situation is being played
(`generation` counts them) and whether the script is over (`done`): a driver
that runs the client under test restarts it whenever `generation` changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
from collections.abc import Callable
from typing import Any

from aiohttp import WSMsgType, web

from engine.check.report import Exchange

__all__ = [
    "Timing",
    "Arrival",
    "Stage",
    "JudgeServer",
    "HANDSHAKE",
    "CONNECT",
    "SUBSCRIBE",
    "DISCONNECT",
    "STATE_PATH",
]

HANDSHAKE = "/meta/handshake"
CONNECT = "/meta/connect"
SUBSCRIBE = "/meta/subscribe"
UNSUBSCRIBE = "/meta/unsubscribe"
DISCONNECT = "/meta/disconnect"
STATE_PATH = "/judge/state"
TRANSPORTS = ["long-polling", "callback-polling", "websocket"]

Message = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Timing:
    """Every wait of the judge, in seconds; each one bounds something."""

    hold: float = 2.0  # the advised `timeout`: how long a connect is held
    window: float = 4.0  # how long the judge waits for the client's next move
    interval: float = 1.5  # the `interval` advised by `interval` and `multiple_clients`
    early: float = 0.3  # a connect may come this much before the advised interval
    handshake_wait: float = 20.0  # a (new) client's first handshake
    # How long a client may back off before retrying after a failure (Faye
    # waits its `retry`, 5 s; CometD 1 s more at each failure).
    backoff: float = 8.0
    slow_extra: float = 1.5  # slow_connect: answered this much after the hold
    stall_cap: float = 20.0  # stalled_connect: how long the judge waits for a retry


@dataclasses.dataclass(frozen=True)
class Answer:
    """How a held connect is answered: these fields merged into the reply, or
    the connection cut."""

    fields: Message = dataclasses.field(default_factory=dict)
    cut: bool = False


class Arrival:
    """One message from the client, as the judge received it."""

    def __init__(self, message: Message, at: float, transport: str, holdable: bool) -> None:
        self.message = message
        self.at = at
        self.transport = transport
        # A connect the server would hold (not a session's first, not `timeout: 0`).
        self.holdable = holdable
        self.claimed = False  # a situation answers it (not the hold timer)
        self.outcome: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()

    @property
    def channel(self) -> str:
        return str(self.message.get("channel", ""))

    @property
    def client_id(self) -> str:
        return str(self.message.get("clientId", ""))

    def answer(self, **fields: Any) -> None:
        """Answer now, with `fields` over the ordinary reply."""
        if not self.outcome.done():
            self.outcome.set_result(Answer(fields))

    def answer_at(self, when: float, **fields: Any) -> None:
        """Keep it held until loop time `when`, whatever the hold timer says."""
        self.claimed = True
        loop = asyncio.get_running_loop()
        loop.call_at(when, lambda: self.answer(**fields))

    def stall(self) -> None:
        """Never answer it (until the stage ends or a newer connect supersedes it)."""
        self.claimed = True

    def cut(self) -> None:
        """Close the connection under it, as a network failure would."""
        if not self.outcome.done():
            self.outcome.set_result(Answer(cut=True))


#: What one situation keeps of a client that floods the judge: messages
#: recorded, and sessions handshaken. Past either, the rest is counted and
#: noted once in the exchange (a verdict then rests on what was kept).
MAX_ARRIVALS = 10_000
MAX_SESSIONS = 100


class Stage:
    """One situation's view: what the client sent, in order, and the exchange."""

    def __init__(self, name: str, generation: int) -> None:
        self.name = name
        self.generation = generation
        self.loop = asyncio.get_running_loop()
        self.start = self.loop.time()
        self.arrivals: list[Arrival] = []
        self.exchange = Exchange()
        self.client_ids: set[str] = set()
        self.dropped_arrivals = 0  # past MAX_ARRIVALS
        self.refused_sessions = 0  # handshakes past MAX_SESSIONS
        self._changed = asyncio.Condition()

    def now(self) -> float:
        return self.loop.time()

    def _stamp(self) -> str:
        return f"+{self.now() - self.start:6.2f}s"

    def sent_to_client(self, messages: list[Message], transport: str) -> None:
        self.exchange.sent(f"{self._stamp()} {transport} {_dumps(messages)}")

    def note(self, text: str) -> None:
        self.exchange.note(f"{self._stamp()} {text}")

    async def arrived(self, arrival: Arrival) -> None:
        if len(self.arrivals) >= MAX_ARRIVALS:
            self.dropped_arrivals += 1
            if self.dropped_arrivals == 1:
                self.note(f"over {MAX_ARRIVALS} messages in this situation: the rest not kept")
            return
        self.exchange.received(f"{self._stamp()} {arrival.transport} {_dumps(arrival.message)}")
        self.arrivals.append(arrival)
        async with self._changed:
            self._changed.notify_all()

    async def first(
        self, match: Callable[[Arrival], bool], *, since: float, within: float
    ) -> Arrival | None:
        """The first arrival at or after `since` that `match`es, waiting at most
        `within` seconds from now; None when none came."""
        deadline = self.now() + within

        def found() -> Arrival | None:
            return next((a for a in self.arrivals if a.at >= since and match(a)), None)

        async with self._changed:
            while (hit := found()) is None:
                remaining = deadline - self.now()
                if remaining <= 0:
                    return None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), remaining)
        return hit

    def release(self) -> None:
        """The stage is over: whatever is still held is answered, ending the client."""
        for arrival in self.arrivals:
            arrival.answer(advice={"reconnect": "none"})


def on(*channels: str, client_id: str | None = None) -> Callable[[Arrival], bool]:
    """A match for `Stage.first`: a message on one of `channels` (from `client_id`)."""

    def match(arrival: Arrival) -> bool:
        return arrival.channel in channels and (client_id is None or arrival.client_id == client_id)

    return match


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def channel_matches(pattern: str, channel: str) -> bool:
    """Bayeux channel globbing: `/a/*` one segment, `/a/**` any depth."""
    if pattern.endswith("/**"):
        return channel.startswith(pattern[:-2])
    if pattern.endswith("/*"):
        head = pattern[:-1]
        return channel.startswith(head) and "/" not in channel[len(head) :]
    return pattern == channel


@dataclasses.dataclass
class Session:
    client_id: str
    stage: Stage
    subscriptions: set[str] = dataclasses.field(default_factory=set)
    queue: list[Message] = dataclasses.field(default_factory=list)
    wake: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    connects: int = 0
    held: Arrival | None = None
    # Once set, every message of this session is answered 402 with this advice.
    gone: str | None = None

    def deliver(self, message: Message) -> None:
        self.queue.append(message)
        self.wake.set()

    def take(self) -> list[Message]:
        out, self.queue = self.queue, []
        self.wake.clear()
        return out


class Cut(Exception):
    """The situation asked for the connection under a held connect to be cut."""


class JudgeServer:
    """The Bayeux server; `stage` is the situation currently being played."""

    def __init__(self, path: str, timing: Timing) -> None:
        self.path = path.rstrip("/") or "/"
        self.timing = timing
        self.stage: Stage | None = None
        self.generation = 0
        self.done = False
        self.sessions: dict[str, Session] = {}
        self._ids = itertools.count(1)
        self.app = web.Application()
        self.app.router.add_get(STATE_PATH, self._state)
        for route in {self.path, self.path.rstrip("/") + "/{tail:.*}"}:
            self.app.router.add_post(route, self._post)
            self.app.router.add_get(route, self._get)

    # ------------------------------------------------------------ stages

    def open_stage(self, name: str) -> Stage:
        self.generation += 1
        self.stage = Stage(name, self.generation)
        return self.stage

    def close_stage(self, stage: Stage) -> None:
        for client_id in stage.client_ids:
            self.forget(client_id, reconnect="none")
        stage.release()
        if self.stage is stage:
            self.stage = None

    def forget(self, client_id: str, reconnect: str) -> None:
        """From now on, answer the session's messages 402 with this `reconnect` advice."""
        session = self.sessions.get(client_id)
        if session is not None:
            session.gone = reconnect

    # ------------------------------------------------------------ HTTP

    async def _state(self, request: web.Request) -> web.Response:
        stage = self.stage
        return web.json_response(
            {
                "generation": self.generation,
                "situation": stage.name if stage else None,
                "done": self.done,
            }
        )

    async def _post(self, request: web.Request) -> web.StreamResponse:
        try:
            messages = _as_list(json.loads(await request.text()))
        except ValueError:
            return web.Response(status=400, text="not JSON")
        try:
            replies = await self._batch(messages, "long-polling")
        except Cut:
            return _cut(request)
        return web.Response(text=_dumps(replies), content_type="application/json")

    async def _get(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._websocket(request)
        callback = request.query.get("jsonp", "")
        if not callback.replace("_", "").replace(".", "").isalnum():
            return web.Response(status=400, text="callback-polling needs ?jsonp=NAME&message=JSON")
        try:
            messages = _as_list(json.loads(request.query.get("message", "")))
        except ValueError:
            return web.Response(status=400, text="message is not JSON")
        try:
            replies = await self._batch(messages, "callback-polling")
        except Cut:
            return _cut(request)
        return web.Response(text=f"{callback}({_dumps(replies)})", content_type="text/javascript")

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(protocols=("cometd",))
        await ws.prepare(request)
        tasks: set[asyncio.Task[None]] = set()

        async def one(message: Message) -> None:
            try:
                replies = await self._batch([message], "websocket")
            except Cut:
                if request.transport is not None:
                    request.transport.abort()
                return
            if not ws.closed:
                with contextlib.suppress(ConnectionError):
                    await ws.send_str(_dumps(replies))

        try:
            async for frame in ws:
                if frame.type is not WSMsgType.TEXT:
                    continue
                try:
                    messages = _as_list(json.loads(frame.data))
                except ValueError:
                    continue
                for message in messages:
                    task = asyncio.create_task(one(message))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
        finally:
            for task in tasks:
                task.cancel()
        return ws

    # ------------------------------------------------------------ Bayeux

    async def _batch(self, messages: list[Message], transport: str) -> list[Message]:
        """The replies to one request's messages, in order; deliveries go first."""
        replies: list[Message] = []
        deliveries: list[Message] = []
        stage: Stage | None = None
        for message in messages:
            reply, session = await self._one(message, transport)
            stage = session.stage if session else (stage or self.stage)
            if reply.get("channel") == CONNECT and session is not None:
                deliveries += session.take()
            replies.append(reply)
        out = deliveries + replies
        if stage is not None:
            stage.sent_to_client(out, transport)
        return out

    async def _one(self, message: Message, transport: str) -> tuple[Message, Session | None]:
        channel = str(message.get("channel", ""))
        reply: Message = {"channel": channel, "successful": True}
        if "id" in message:
            reply["id"] = message["id"]
        if channel == HANDSHAKE:
            return await self._handshake(message, transport, reply)
        session = self.sessions.get(str(message.get("clientId", "")))
        if session is None:
            reply.update(successful=False, error="402::session_unknown")
            reply["advice"] = {"reconnect": "handshake", "interval": 0}
            if self.stage is not None:
                await self.stage.arrived(Arrival(message, self.stage.now(), transport, False))
            return reply, None
        reply["clientId"] = session.client_id
        holdable = channel == CONNECT and session.connects > 0 and _client_timeout(message) != 0
        arrival = Arrival(message, session.stage.now(), transport, holdable)
        if channel == CONNECT and session.held is not None:
            session.held.answer()  # a newer connect supersedes a held one
        await session.stage.arrived(arrival)
        if session.gone is not None:
            reply.update(successful=False, error="402::session_unknown")
            reply["advice"] = {"reconnect": session.gone, "interval": 0}
        elif channel == CONNECT:
            await self._connect(session, arrival, reply)
        elif channel == SUBSCRIBE:
            reply["subscription"] = message.get("subscription")
            session.subscriptions.update(_as_list(message.get("subscription")))
        elif channel == UNSUBSCRIBE:
            reply["subscription"] = message.get("subscription")
            session.subscriptions.difference_update(_as_list(message.get("subscription")))
        elif channel == DISCONNECT:
            session.gone = "none"
            if session.held is not None:
                session.held.answer()
        elif not channel.startswith("/meta/"):
            self.publish(session.stage, channel, message.get("data"))
        return reply, session

    async def _handshake(
        self, message: Message, transport: str, reply: Message
    ) -> tuple[Message, Session | None]:
        stage = self.stage
        if stage is None:
            reply.update(successful=False, error="503::judge_between_situations")
            reply["advice"] = {"reconnect": "handshake", "interval": 1000}
            return reply, None
        await stage.arrived(Arrival(message, stage.now(), transport, False))
        if len(stage.client_ids) >= MAX_SESSIONS:
            stage.refused_sessions += 1
            if stage.refused_sessions == 1:
                stage.note(f"over {MAX_SESSIONS} handshakes in this situation: refused")
            reply.update(successful=False, error="503::judge_too_many_sessions")
            reply["advice"] = {"reconnect": "none"}
            return reply, None
        client_id = f"judge{stage.generation}x{next(self._ids)}"
        session = Session(client_id, stage)
        self.sessions[client_id] = session
        stage.client_ids.add(client_id)
        reply.update(
            version="1.0",
            supportedConnectionTypes=TRANSPORTS,
            clientId=client_id,
            advice=self.advice(),
        )
        return reply, session

    def advice(self) -> Message:
        """The ordinary advice, on handshake and connect replies."""
        return {"reconnect": "retry", "interval": 0, "timeout": int(self.timing.hold * 1000)}

    async def _connect(self, session: Session, arrival: Arrival, reply: Message) -> None:
        session.connects += 1
        session.held = arrival
        reply["advice"] = self.advice()
        try:
            if arrival.holdable and not session.queue:
                await self._hold(session, arrival)
            answer = arrival.outcome.result() if arrival.outcome.done() else Answer()
        finally:
            if session.held is arrival:
                session.held = None
        if answer.cut:
            session.stage.note(f"cut the {arrival.transport} connection under the held connect")
            raise Cut
        if session.gone is not None and "successful" not in answer.fields:
            reply["advice"] = {"reconnect": session.gone, "interval": 0}
        for key, value in answer.fields.items():
            if key == "advice":
                reply["advice"] = {**reply["advice"], **value}
            else:
                reply[key] = value

    async def _hold(self, session: Session, arrival: Arrival) -> None:
        """Until the situation answers, a delivery is due, or the hold is over
        (a claimed connect waits for its situation only, which the stage bounds)."""
        deadline = session.stage.now() + self.timing.hold
        while not arrival.outcome.done():
            remaining = deadline - session.stage.now()
            if remaining <= 0 and not arrival.claimed:
                return
            wake: asyncio.Future[Any] = asyncio.ensure_future(session.wake.wait())
            outcome: asyncio.Future[Any] = arrival.outcome
            try:
                await asyncio.wait(
                    {outcome, wake},
                    timeout=None if arrival.claimed else remaining,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                wake.cancel()
            if session.queue and not arrival.claimed:
                return

    def publish(self, stage: Stage, channel: str, data: Any) -> None:
        """Deliver to every session of `stage` subscribed to `channel`."""
        for session in self.sessions.values():
            if session.stage is stage and session.gone is None:
                if any(channel_matches(p, channel) for p in session.subscriptions):
                    session.deliver({"channel": channel, "data": data})


def _client_timeout(message: Message) -> Any:
    advice = message.get("advice")
    return advice.get("timeout") if isinstance(advice, dict) else None


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, list):
        return value
    return [] if value is None else [value]


def _cut(request: web.Request) -> web.StreamResponse:
    if request.transport is not None:
        request.transport.abort()
    return web.Response(status=500)
