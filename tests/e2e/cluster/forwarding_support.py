"""What the forwarding tests share: a long-polling client bound to one node,
each node's forwarding counters, and the in-process fakes (exchange, broker,
a Redis connection that answers slowly) the forwarder's unit tests run on."""

from __future__ import annotations

import ast
import asyncio
import http.client
import json
import re
import select
import time
from typing import Any
from urllib.parse import quote

from harness import ServerProcess

Message = dict[str, Any]


class Client:
    """One browser (one cookie jar) that sends each request to the node a test names.

    Per node it keeps two connections, as a browser does: one for connects,
    one for the rest.  `jsonp=True` makes it a callback-polling client.
    """

    def __init__(self, jsonp: bool = False) -> None:
        self.jsonp = jsonp
        self.cookie: str | None = None
        self.client_id: str | None = None
        self.conns: dict[tuple[int, str], http.client.HTTPConnection] = {}
        self.events: list[Message] = []
        self._ids = 0
        self._callbacks = 0
        self._started: dict[tuple[int, str], tuple[float, str]] = {}

    def conn(self, node: ServerProcess, slot: str) -> http.client.HTTPConnection:
        key = (node.port, slot)
        if key not in self.conns:
            self.conns[key] = http.client.HTTPConnection("127.0.0.1", node.port, timeout=20)
        return self.conns[key]

    def drop(self, node: ServerProcess, slot: str) -> None:
        conn = self.conns.pop((node.port, slot), None)
        if conn is not None:
            conn.close()

    def message(self, channel: str, **fields: Any) -> Message:
        self._ids += 1
        return {"channel": channel, "clientId": self.client_id, "id": str(self._ids), **fields}

    def start(
        self, node: ServerProcess, messages: list[Message], slot: str = "other", cookie: Any = ...
    ) -> None:
        cookie = self.cookie if cookie is ... else cookie
        headers = {"Cookie": f"BAYEUX_BROWSER={cookie}"} if cookie else {}
        conn = self.conn(node, slot)
        callback = ""
        if self.jsonp:
            callback = f"_cometd_jsonp_{self._callbacks}"
            self._callbacks += 1
            url = f"/cometd?jsonp={callback}&message={quote(json.dumps(messages), safe='')}"
            conn.request("GET", url, headers=headers)
        else:
            headers["Content-Type"] = "application/json"
            conn.request("POST", "/cometd", json.dumps(messages), headers)
        self._started[(node.port, slot)] = (time.monotonic(), callback)

    def answered(self, node: ServerProcess, slot: str = "connect", wait: float = 0.0) -> bool:
        """Whether the response of the request started on (node, slot) has arrived."""
        sock = self.conn(node, slot).sock
        assert sock is not None
        return bool(select.select([sock], [], [], wait)[0])

    def finish(self, node: ServerProcess, slot: str = "other") -> tuple[list[Message], float]:
        sent_at, callback = self._started.pop((node.port, slot))
        resp = self.conn(node, slot).getresponse()
        body = resp.read()
        took = time.monotonic() - sent_at
        assert resp.status == 200, (resp.status, body)
        if self.jsonp:
            assert resp.headers["Content-Type"].startswith("text/javascript"), resp.headers
            prefix = callback.encode() + b"("
            assert body.startswith(prefix) and body.endswith(b")"), body
            body = body[len(prefix) : -1]
        set_cookie = resp.headers.get("Set-Cookie")
        if set_cookie and set_cookie.startswith("BAYEUX_BROWSER="):
            self.cookie = set_cookie.split(";", 1)[0].split("=", 1)[1]
        messages = json.loads(body)
        assert isinstance(messages, list), messages
        self.events.extend(m for m in messages if "successful" not in m)
        return messages, took

    def send(
        self, node: ServerProcess, messages: list[Message], slot: str = "other", cookie: Any = ...
    ) -> tuple[list[Message], float]:
        self.start(node, messages, slot, cookie)
        return self.finish(node, slot)

    def request(self, node: ServerProcess, channel: str, **fields: Any) -> Message:
        """One message, its reply (asserting there is exactly one)."""
        messages, _ = self.send(node, [self.message(channel, **fields)])
        return reply_of(messages, channel)

    def handshake(self, node: ServerProcess) -> Message:
        transport = "callback-polling" if self.jsonp else "long-polling"
        message = {
            "channel": "/meta/handshake",
            "version": "1.0",
            "supportedConnectionTypes": [transport],
        }
        messages, _ = self.send(node, [message])
        reply = reply_of(messages, "/meta/handshake")
        if reply["successful"]:
            self.client_id = reply["clientId"]
        return reply

    def connect_message(self, **fields: Any) -> Message:
        transport = "callback-polling" if self.jsonp else "long-polling"
        return self.message("/meta/connect", connectionType=transport, **fields)

    def connect(self, node: ServerProcess, **fields: Any) -> tuple[Message, float]:
        messages, took = self.send(node, [self.connect_message(**fields)], "connect")
        return reply_of(messages, "/meta/connect"), took

    def start_connect(self, node: ServerProcess, **fields: Any) -> None:
        self.start(node, [self.connect_message(**fields)], "connect")

    def finish_connect(self, node: ServerProcess) -> tuple[Message, float]:
        messages, took = self.finish(node, "connect")
        return reply_of(messages, "/meta/connect"), took

    def ready(self, node: ServerProcess) -> Client:
        assert self.handshake(node)["successful"]
        reply, _ = self.connect(node, advice={"timeout": 0})
        assert reply["successful"], reply
        return self

    def data(self, channel: str) -> list[Any]:
        return [e["data"] for e in self.events if e.get("channel") == channel]

    def close(self) -> None:
        for conn in self.conns.values():
            conn.close()
        self.conns.clear()


def forwarding_stats(node: ServerProcess) -> dict[str, int]:
    """The counters a node logs when it stops."""
    match = re.search(r"forwarding: (\{.*\})", node.stderr)
    assert match, node.stderr
    value = ast.literal_eval(match.group(1))
    assert isinstance(value, dict)
    return value


class FakeExchange:
    transport = "long-polling"
    browser_id: str | None = "cookie"
    new_browser_id: str | None = None
    client_address: str | None = "127.0.0.1"
    hold = None

    def __init__(self) -> None:
        self.sent: list[bytes] | None = None

    def bind(self, session: Any) -> None:
        pass

    def is_gone(self) -> bool:
        return False

    def send(self, parts: list[bytes]) -> None:
        assert self.sent is None, "answered twice"
        self.sent = parts

    def fail(self, status: int, detail: str = "") -> None:
        raise AssertionError(f"failed with {status}: {detail}")

    def replies(self) -> list[Message]:
        assert self.sent is not None
        value = json.loads(b"[" + b",".join(self.sent) + b"]")
        assert isinstance(value, list)
        return value


class FakeBroker:
    """What the forwarder needs of RedisBroker; every message 'reaches' `receivers`."""

    prefix = "bayeux:0:"
    backoff_max = connect_timeout = 0.5

    def __init__(self, receivers: int | None) -> None:
        self.connected = True
        self.receivers = receivers
        self.sent: list[tuple[bytes, bytes]] = []

    @property
    def available(self) -> bool:
        return self.connected

    def node_channel(self, node_id: str) -> bytes:
        return b"node:" + node_id.encode()

    def listen(self, name: bytes, handler: Any) -> None:
        pass

    def unlisten(self, name: bytes) -> None:
        pass

    on_connect: Any = None

    def send_direct(self, name: bytes, payload: bytes, on_reply: Any = None) -> bool:
        if not self.connected:
            return False
        self.sent.append((name, payload))
        if on_reply is not None:
            asyncio.get_running_loop().call_soon(on_reply, self.receivers)
        return True


class SlowConnection:
    """A stand-in for the publishing connection whose writes take a while (a
    full socket buffer): the broker queues more while a batch is being sent."""

    def __init__(self) -> None:
        self.replies: asyncio.Queue[int] = asyncio.Queue()

    async def send_packed_command(self, chunks: list[bytes], check_health: bool = False) -> None:
        data = b"".join(chunks)
        await asyncio.sleep(0.002)
        pos = 0
        while pos < len(data):  # RESP arrays of bulk strings
            end = data.index(b"\r\n", pos)
            count = int(data[pos + 1 : end])
            pos = end + 2
            args = []
            for _ in range(count):
                end = data.index(b"\r\n", pos)
                size = int(data[pos + 1 : end])
                args.append(data[end + 2 : end + 2 + size])
                pos = end + 2 + size + 2
            # Broadcasts reach 5 nodes; direct messages 1 if sent to "yes", else 0.
            direct = args[0] == b"SPUBLISH"
            self.replies.put_nowait(int(args[1].endswith(b"yes")) if direct else 5)

    async def read_response(self) -> int:
        return await self.replies.get()


def reply_of(messages: list[Message], channel: str) -> Message:
    found = [m for m in messages if m.get("channel") == channel and "successful" in m]
    assert len(found) == 1, messages
    return found[0]
