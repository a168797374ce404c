"""The HTTP API's questions to other nodes: one node's, or every node's answer.

An API call may land on any node (engine.api.http_api), but a session lives
on one node (its owner, named in its clientId) and subscriber counts are
spread over all of them.  This relay sends the call's operation through
Redis, as request forwarding does (engine.cluster.forwarding), on channels
of its own:

    <prefix>api:<node>      a question for one node (deliver, disconnect, session)
    <prefix>api             a question for every node (channels, channel counts)

Each question is `{"r": rid, "o": origin node, "op": name, "a": {args}}`; each
node answers on the origin's channel with `{"r": rid, "n": node, "v": value}`.
The reply to the PUBLISH counts the nodes listening: 0 for one node means it
is not there (the session is unknown), N for every node means N answers are
awaited.  An answer that does not come within `timeout` seconds fails the
call with `RelayError` (the API answers 503 or 504), never a wrong result.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from engine.cluster.redis_broker import RedisBroker

__all__ = ["ApiRelay", "NodeGone", "RelayError"]

log = logging.getLogger("engine.api_relay")

MAX_WAITING = 10000  # questions awaiting answers; beyond, calls fail at once


class RelayError(Exception):
    """The question could not be asked or was not answered in time."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


class NodeGone(Exception):
    """No node listens under that id (it died, or the id names no node)."""


class _Waiting:
    __slots__ = ("future", "expected", "answers")

    def __init__(self, future: asyncio.Future[list[Any]]) -> None:
        self.future = future
        self.expected = -1  # answers to await, once the PUBLISH reply says
        self.answers: list[Any] = []


class ApiRelay:
    def __init__(
        self,
        broker: RedisBroker,
        node_id: str,
        answer: Callable[[str, dict[str, Any]], Any],
        timeout: float = 3.0,
    ) -> None:
        self.broker = broker
        self.node_id = node_id
        self.answer = answer  # (op, args) -> this node's JSON-able value
        self.timeout = timeout
        prefix = broker.prefix.encode()
        self.all_channel = prefix + b"api"
        self.own_channel = self.channel_of(node_id)
        self._waiting: dict[int, _Waiting] = {}
        self._next = 1
        self.asked = 0
        self.served = 0
        self.invalid = 0

    def channel_of(self, node_id: str) -> bytes:
        return self.broker.prefix.encode() + b"api:" + node_id.encode()

    def start(self) -> None:
        self.broker.listen(self.own_channel, self._received)
        self.broker.listen(self.all_channel, self._received)

    def close(self) -> None:
        self.broker.unlisten(self.own_channel)
        self.broker.unlisten(self.all_channel)
        for waiting in self._waiting.values():
            if not waiting.future.done():
                waiting.future.set_exception(RelayError(503, "the server is stopping"))
        self._waiting.clear()

    async def ask(self, node_id: str, op: str, args: dict[str, Any]) -> Any:
        """One node's answer; NodeGone if no node listens under that id."""
        answers = await self._ask(self.channel_of(node_id), op, args)
        return answers[0]

    async def ask_all(self, op: str, args: dict[str, Any]) -> list[Any]:
        """Every live node's answer (this node's included)."""
        return await self._ask(self.all_channel, op, args)

    async def _ask(self, channel: bytes, op: str, args: dict[str, Any]) -> list[Any]:
        if len(self._waiting) >= MAX_WAITING:
            raise RelayError(503, "too many cluster questions waiting")
        rid = self._next
        self._next += 1
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        waiting = self._waiting[rid] = _Waiting(future)
        payload = orjson.dumps({"r": rid, "o": self.node_id, "op": op, "a": args})
        if not self.broker.send_direct(channel, payload, functools.partial(self._sent, rid)):
            del self._waiting[rid]
            raise RelayError(503, "the cluster broker (Redis) is unavailable")
        self.asked += 1
        try:
            return await asyncio.wait_for(future, self.timeout)
        except TimeoutError:
            got = len(waiting.answers)
            raise RelayError(
                504, f"{got} of {max(waiting.expected, 1)} nodes answered in {self.timeout:g} s"
            ) from None
        finally:
            self._waiting.pop(rid, None)

    def _sent(self, rid: int, receivers: int | None) -> None:
        waiting = self._waiting.get(rid)
        if waiting is None or waiting.future.done():
            return
        if receivers is None:
            waiting.future.set_exception(RelayError(503, "the question to the cluster was lost"))
        elif receivers == 0:
            waiting.future.set_exception(NodeGone())
        else:
            waiting.expected = receivers
            self._check(waiting)

    def _check(self, waiting: _Waiting) -> None:
        if 0 <= waiting.expected <= len(waiting.answers) and not waiting.future.done():
            waiting.future.set_result(waiting.answers)

    def _received(self, data: bytes) -> None:
        try:
            message = orjson.loads(data)
        except orjson.JSONDecodeError:
            self.invalid += 1
            return
        if type(message) is not dict or type(message.get("r")) is not int:
            self.invalid += 1
            return
        if "op" in message:
            self._serve(message)
            return
        waiting = self._waiting.get(message["r"])
        if waiting is not None:  # (else: answered too late, or not ours)
            waiting.answers.append(message.get("v"))
            self._check(waiting)

    def _serve(self, message: dict[str, Any]) -> None:
        origin, op, args = message.get("o"), message.get("op"), message.get("a")
        if type(origin) is not str or type(op) is not str or type(args) is not dict:
            self.invalid += 1
            return
        try:
            value = self.answer(op, args)
        except Exception:
            log.exception("node %s: the API question %s failed", self.node_id, op)
            value = {"error": "internal error"}
        self.served += 1
        self.broker.send_direct(
            self.channel_of(origin),
            orjson.dumps({"r": message["r"], "n": self.node_id, "v": value}),
        )
