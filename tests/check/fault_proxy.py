"""A fault-injecting proxy for the `engine check` tests.

It sits between the checks and a real engine, HTTP/1.1 and WebSocket, and
with one named fault (see FAULTS) breaks one rule on the wire: drops the
advice of handshake replies, answers 401 instead of 402, delivers an event
twice, ...  tests/check/test_discrimination.py shows each check fails under
its fault and passes without.

A fault is two optional hooks on a `Flow` (one request and its response, or
one WebSocket frame): `on_request` may edit the request (or answer it
locally), `on_response` may edit the response (messages, status, headers) or
delay it.  `state` is the proxy's memory across flows, cleared per fault.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import threading
from collections.abc import Callable
from typing import Any

from engine.check.report import Exchange
from engine.check.wire import Endpoint, HttpConnection, WireError, read_frame
from engine.transport._wsframe import OP_CLOSE, OP_TEXT, encode_client_frame, encode_frame

Message = dict[str, Any]
META_OPS = {
    "/meta/handshake",
    "/meta/connect",
    "/meta/disconnect",
    "/meta/subscribe",
    "/meta/unsubscribe",
}


@dataclasses.dataclass
class Flow:
    kind: str  # "http" or "ws"
    path: str = ""
    query: str = ""
    request: Any = None  # parsed JSON request body / frame
    request_headers: dict[str, str] = dataclasses.field(default_factory=dict)
    status: int = 200
    headers: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    body: bytes = b""
    messages: list[Message] | None = None  # parsed JSON response
    local: list[Message] | None = None  # answer these without asking upstream
    delay: float = 0.0
    conn: dict[str, Any] = dataclasses.field(default_factory=dict)  # per connection
    state: dict[str, Any] = dataclasses.field(default_factory=dict)  # per fault

    def requests(self) -> list[Message]:
        value = self.request
        if isinstance(value, dict):
            return [value]
        return [m for m in value if isinstance(m, dict)] if isinstance(value, list) else []

    def replies(self, channel: str | None = None) -> list[Message]:
        return [
            m
            for m in self.messages or []
            if "successful" in m and (channel is None or m.get("channel") == channel)
        ]

    def events(self) -> list[Message]:
        return [
            m
            for m in self.messages or []
            if "successful" not in m and not str(m.get("channel", "")).startswith("/meta/")
        ]

    def set_header(self, name: str, value: str | None) -> None:
        self.headers = [(k, v) for k, v in self.headers if k.lower() != name.lower()]
        if value is not None:
            self.headers.append((name, value))


Hook = Callable[[Flow], None]


@dataclasses.dataclass(frozen=True)
class Fault:
    on_request: Hook | None = None
    on_response: Hook | None = None


FAULTS: dict[str, Fault] = {}


def fault(name: str, *, request: Hook | None = None, response: Hook | None = None) -> None:
    assert name not in FAULTS
    FAULTS[name] = Fault(request, response)


def each_reply(channel: str | None, edit: Callable[[Message], None]) -> Hook:
    def hook(flow: Flow) -> None:
        for reply in flow.replies(channel):
            edit(reply)

    return hook


def recode(old: str, new: str) -> Hook:
    def edit(reply: Message) -> None:
        error = reply.get("error")
        if isinstance(error, str) and error.startswith(old + ":"):
            reply["error"] = new + error[len(old) :]

    return each_reply(None, edit)


def swallow(channel: str, **reply_fields: Any) -> Hook:
    """Do not pass `channel` messages on; answer them successful locally."""

    def hook(flow: Flow) -> None:
        kept, local = [], []
        for message in flow.requests():
            if message.get("channel") == channel:
                local.append(
                    {
                        "channel": channel,
                        "id": message.get("id"),
                        "successful": True,
                        "clientId": message.get("clientId"),
                        **{k: message.get(v) for k, v in reply_fields.items()},
                    }
                )
            else:
                kept.append(message)
        if local and not kept:
            flow.local = local
        elif local:
            flow.request = kept
            flow.state.setdefault("pending", []).extend(local)

    return hook


def add_pending(flow: Flow) -> None:
    pending = flow.state.pop("pending", [])
    if pending and flow.messages is not None:
        flow.messages.extend(pending)


def edit_subscriptions(edit: Callable[[str], str], undo: Callable[[str], str]) -> Fault:
    """Rewrite subscribe requests with `edit` and their echoes back with `undo`."""

    def apply(message: Message, change: Callable[[str], str]) -> None:
        value = message.get("subscription")
        if isinstance(value, str):
            message["subscription"] = change(value)
        elif isinstance(value, list):
            message["subscription"] = [change(v) if isinstance(v, str) else v for v in value]

    def request(flow: Flow) -> None:
        for message in flow.requests():
            if message.get("channel") == "/meta/subscribe":
                apply(message, edit)

    def response(flow: Flow) -> None:
        for reply in flow.replies("/meta/subscribe"):
            apply(reply, undo)

    return Fault(request, response)


def make_successful(channels: Callable[[str], bool]) -> Hook:
    def edit(reply: Message) -> None:
        if channels(str(reply.get("channel"))) and reply.get("successful") is False:
            reply["successful"] = True
            reply.pop("error", None)

    return each_reply(None, edit)


def only_ws(hook: Hook) -> Hook:
    def wrapped(flow: Flow) -> None:
        if flow.kind == "ws":
            hook(flow)

    return wrapped


def delay_if(predicate: Callable[[Flow], bool], seconds: float = 2.5) -> Hook:
    def hook(flow: Flow) -> None:
        if predicate(flow):
            flow.delay = seconds

    return hook


def has_request(flow: Flow, channel: str) -> bool:
    return any(m.get("channel") == channel for m in flow.requests())


def repeat_client_id(flow: Flow) -> None:
    for reply in flow.replies("/meta/handshake"):
        if "clientId" in reply:
            reply["clientId"] = flow.state.setdefault("first_id", reply["clientId"])


def only_long_polling(flow: Flow) -> None:
    for message in flow.requests():
        if message.get("channel") == "/meta/handshake":
            message["supportedConnectionTypes"] = ["long-polling"]


def refuse_single_object(flow: Flow) -> None:
    if isinstance(flow.request, dict):
        flow.local = []
        flow.state["status"] = 400


def connect_timeout_zero(flow: Flow) -> None:
    for message in flow.requests():
        if message.get("channel") == "/meta/connect":
            message["advice"] = {"timeout": 0}


def drop_request_advice(flow: Flow) -> None:
    for message in flow.requests():
        if message.get("channel") == "/meta/connect":
            message.pop("advice", None)


def unknown_client_retry(reply: Message) -> None:
    if reply.get("successful") is False:
        reply["advice"] = {"reconnect": "retry", "interval": 0}


def remember_service(flow: Flow) -> None:
    for message in flow.requests():
        if str(message.get("channel", "")).startswith("/service/check/") and "data" in message:
            flow.state.setdefault("leak", []).append(
                {"channel": message["channel"], "data": message["data"]}
            )


def leak_service(flow: Flow) -> None:
    if flow.events() and flow.state.get("leak"):
        assert flow.messages is not None
        flow.messages[0:0] = flow.state.pop("leak")


def duplicate_events(flow: Flow) -> None:
    if flow.messages is not None:
        flow.messages[:] = [
            c for m in flow.messages for c in ([m, copy.deepcopy(m)] if m in flow.events() else [m])
        ]


def each_event(edit: Callable[[Message], None]) -> Hook:
    def hook(flow: Flow) -> None:
        for event in flow.events():
            edit(event)

    return hook


def remember_publishes(flow: Flow) -> None:
    for message in flow.requests():
        if "data" in message and "clientId" in message:
            key = (message["channel"], json.dumps(message["data"], sort_keys=True))
            flow.state.setdefault("publishers", {})[key] = message["clientId"]
        if message.get("channel") == "/meta/connect":
            flow.conn["polling"] = message.get("clientId")


def drop_own_events(flow: Flow) -> None:
    publishers = flow.state.get("publishers", {})
    if flow.messages is None:
        return
    flow.messages[:] = [
        m
        for m in flow.messages
        if m not in flow.events()
        or publishers.get((m["channel"], json.dumps(m.get("data"), sort_keys=True)))
        != flow.conn.get("polling")
    ]


def reverse_events(flow: Flow) -> None:
    if flow.messages is not None:
        events = list(reversed(flow.events()))
        flow.messages[:] = [events.pop(0) if m in flow.events() else m for m in flow.messages]


def reverse_batch(flow: Flow) -> None:
    if isinstance(flow.request, list) and len(flow.request) > 1:
        flow.request.reverse()


def no_http_400(flow: Flow) -> None:
    if flow.status == 400:
        flow.status, flow.messages = 200, []
        flow.set_header("Content-Type", "application/json")


def content_type(value: str, *, jsonp: bool) -> Hook:
    def hook(flow: Flow) -> None:
        if flow.kind == "http" and ("jsonp=" in flow.query) == jsonp:
            flow.set_header("Content-Type", value)

    return hook


def drop_set_cookie(flow: Flow) -> None:
    flow.set_header("Set-Cookie", None)


def drop_request_cookie(flow: Flow) -> None:
    flow.request_headers.pop("Cookie", None)


def refuse_subpaths(flow: Flow) -> None:
    if flow.kind == "http" and flow.path.rstrip("/") != "/cometd":
        flow.local = []
        flow.state["status"] = 404


def ws_require_handshake(flow: Flow) -> None:
    if flow.kind != "ws":
        return
    for message in flow.requests():
        if message.get("channel") == "/meta/handshake":
            flow.conn["handshaken"] = True
        elif message.get("channel") == "/meta/connect" and not flow.conn.get("handshaken"):
            flow.local = [
                {
                    "channel": "/meta/connect",
                    "id": message.get("id"),
                    "successful": False,
                    "error": "402::session_unknown",
                    "advice": {"reconnect": "handshake"},
                }
            ]


def ws_bad_json_kills_all(flow: Flow) -> None:
    if flow.kind == "ws" and flow.request is None:
        for close in flow.state.get("ws_closers", []):
            close()


def drop_publish_replies(flow: Flow) -> None:
    if flow.messages is not None:
        flow.messages[:] = [
            m for m in flow.messages if m not in flow.replies() or m["channel"].startswith("/meta/")
        ]


def answer_batched_with_handshake(flow: Flow) -> None:
    requests = flow.requests()
    if flow.messages is not None and any(m.get("channel") == "/meta/handshake" for m in requests):
        flow.messages.extend(
            {"channel": m.get("channel"), "id": m.get("id"), "successful": True}
            for m in requests
            if m.get("channel") != "/meta/handshake"
        )


def ack_constant(reply: Message) -> None:
    if isinstance(reply.get("ext"), dict) and "ack" in reply["ext"]:
        reply["ext"]["ack"] = 1


def dedupe_events(flow: Flow) -> None:
    seen = flow.state.setdefault("seen", set())
    if flow.messages is None:
        return
    kept = []
    for message in flow.messages:
        if message in flow.events():
            key = json.dumps(message, sort_keys=True)
            if key in seen:
                continue
            seen.add(key)
        kept.append(message)
    flow.messages[:] = kept


def pop(field: str, *path: str) -> Callable[[Message], None]:
    def edit(message: Message) -> None:
        target: Any = message
        for step in path:
            target = target.get(step) if isinstance(target, dict) else None
        if isinstance(target, dict):
            target.pop(field, None)

    return edit


def put(field: str, value: Any) -> Callable[[Message], None]:
    def edit(message: Message) -> None:
        message[field] = copy.deepcopy(value)

    return edit


def not_meta(channel: str) -> bool:
    return not channel.startswith("/meta/")


fault("handshake_no_version", response=each_reply("/meta/handshake", pop("version")))
fault("handshake_no_advice", response=each_reply("/meta/handshake", pop("advice")))
fault("repeat_client_id", response=repeat_client_id)
fault("answer_batched_with_handshake", response=answer_batched_with_handshake)
fault("accept_any_transport", request=only_long_polling)
fault("refuse_single_object", request=refuse_single_object)
fault("delay_connect", response=delay_if(lambda f: has_request(f, "/meta/connect")))
fault("unsubscribe_fails", response=each_reply("/meta/unsubscribe", put("successful", False)))
fault("answer_connect_at_once", request=connect_timeout_zero)
fault("drop_request_advice", request=drop_request_advice)
fault("unknown_client_retry", response=each_reply("/meta/connect", unknown_client_retry))
fault("delay_events", response=delay_if(lambda f: bool(f.events())))
fault("drop_connect_advice", response=each_reply("/meta/connect", pop("advice")))
fault("disconnect_unsuccessful", response=each_reply("/meta/disconnect", put("successful", False)))
fault("ignore_disconnect", request=swallow("/meta/disconnect"), response=add_pending)
fault("strip_subscription_echo", response=each_reply("/meta/subscribe", pop("subscription")))
fault("subscribe_never_fails", response=make_successful(lambda c: c == "/meta/subscribe"))
fault("strip_unsubscribe_echo", response=each_reply("/meta/unsubscribe", pop("subscription")))
fault(
    "ignore_unsubscribe",
    request=swallow("/meta/unsubscribe", subscription="subscription"),
    response=add_pending,
)
fault("leak_service", request=remember_service, response=leak_service)
FAULTS["star_is_deep"] = edit_subscriptions(
    lambda s: s[:-2] + "/**" if s.endswith("/*") else s,
    lambda s: s[:-3] + "/*" if s.endswith("/**") else s,
)
FAULTS["deep_is_star"] = edit_subscriptions(
    lambda s: s[:-3] + "/*" if s.endswith("/**") else s,
    lambda s: s[:-2] + "/**" if s.endswith("/*") else s,
)
fault("duplicate_events", response=duplicate_events)
fault(
    "publish_reply_data",
    response=each_reply(
        None, lambda r: r.setdefault("data", {}) if not_meta(r["channel"]) else None
    ),
)
fault("mangle_data", response=each_event(lambda e: e.update(data={"mangled": True})))
fault("leak_publisher_id", response=each_event(put("clientId", "publisher")))
fault("drop_own_events", request=remember_publishes, response=drop_own_events)
fault(
    "allow_meta_publish",
    response=make_successful(lambda c: c.startswith("/meta/") and c not in META_OPS),
)
fault("publish_always_succeeds", response=make_successful(not_meta))
fault("strip_event_ext", response=each_event(pop("ext")))
fault("reverse_events", response=reverse_events)
fault("reverse_batch", request=reverse_batch)
fault("402_to_401", response=recode("402", "401"))
fault("403_to_400", response=recode("403", "400"))
fault("405_to_400", response=recode("405", "400"))
fault("400_to_500", response=recode("400", "500"))
fault("text_plain", response=content_type("text/plain", jsonp=False))
fault("no_http_400", response=no_http_400)
fault("drop_set_cookie", response=drop_set_cookie)
fault("drop_request_cookie", request=drop_request_cookie)
fault(
    "drop_multiple_clients_advice",
    response=each_reply("/meta/connect", pop("multiple-clients", "advice")),
)
fault("refuse_subpaths", request=refuse_subpaths)
fault("jsonp_as_json", response=content_type("application/json", jsonp=True))
fault("ws_refuse_upgrade")  # handled in the upgrade itself
fault("ws_delay_events", response=only_ws(delay_if(lambda f: bool(f.events()))))
fault("ws_drop_publish_replies", response=only_ws(drop_publish_replies))
fault("ws_require_handshake", request=ws_require_handshake)
fault("ws_bad_json_kills_all", request=ws_bad_json_kills_all)
fault("drop_ack_ext", response=each_reply("/meta/handshake", pop("ack", "ext")))
fault("ack_constant", response=each_reply("/meta/connect", ack_constant))
fault("dedupe_events", response=dedupe_events)
fault("drop_timesync", response=each_reply(None, pop("timesync", "ext")))


class FaultProxy:
    """`with FaultProxy(upstream_port) as proxy:` serves on proxy.url
    (http://127.0.0.1:PORT/cometd); `proxy.use(name)` switches the fault."""

    def __init__(self, upstream_port: int, path: str = "/cometd") -> None:
        self.upstream = Endpoint("http", "127.0.0.1", upstream_port, "")
        self.path = path
        self.fault_name: str | None = None
        self.state: dict[str, Any] = {}
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    def use(self, name: str | None) -> None:
        assert name is None or name in FAULTS, name
        self.fault_name = name
        self.state = {}

    @property
    def fault(self) -> Fault:
        return FAULTS[self.fault_name] if self.fault_name else Fault()

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0), self._loop
        ).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        server = self._server
        assert server is not None

        async def cancel_all() -> None:
            # In the proxy's own loop: asyncio.Server is not thread-safe (closed
            # from this thread, it raced with a connection ending in the loop's).
            server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(cancel_all(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _flow(self, kind: str, **fields: Any) -> Flow:
        return Flow(kind, state=self.state, **fields)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream = HttpConnection(self.upstream, Exchange(limit=0))
        conn: dict[str, Any] = {}
        try:
            for _ in range(10_000):
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        key, value = line.split(":", 1)
                        headers[key.strip().title()] = value.strip()
                if headers.get("Upgrade", "").lower() == "websocket":
                    await self._websocket(head, reader, writer)
                    return
                body = await reader.readexactly(int(headers.get("Content-Length", "0")))
                await self._http(method, target, headers, body, upstream, conn, writer)
        except (ConnectionError, WireError, asyncio.IncompleteReadError):
            pass
        finally:
            upstream.close()
            writer.close()

    async def _http(
        self,
        method: str,
        target: str,
        headers: dict[str, str],
        body: bytes,
        upstream: HttpConnection,
        conn: dict[str, Any],
        writer: asyncio.StreamWriter,
    ) -> None:
        path, _, query = target.partition("?")
        flow = self._flow("http", path=path, query=query, conn=conn)
        forward = {
            k: v
            for k, v in headers.items()
            if k.lower() not in ("host", "content-length", "connection")
        }
        flow.request_headers = forward
        try:
            flow.request = json.loads(body) if body else None
        except ValueError:
            flow.request = None
        if self.fault.on_request:
            self.fault.on_request(flow)
            if flow.request is not None and body:
                body = json.dumps(flow.request).encode()
        if flow.local is not None:
            flow.status = int(self.state.pop("status", 200))
            flow.messages = flow.local
            flow.headers = [("Content-Type", "application/json")]
        else:
            response = await upstream.request(
                method, target, body if body else None, headers=flow.request_headers, timeout=120
            )
            flow.status, flow.headers, flow.body = response.status, response.headers, response.body
            if (response.header("content-type") or "").startswith("application/json"):
                try:
                    flow.messages = json.loads(response.body)
                except ValueError:
                    flow.messages = None
        if self.fault.on_response:
            self.fault.on_response(flow)
        if flow.delay:
            await asyncio.sleep(flow.delay)
        out = json.dumps(flow.messages).encode() if flow.messages is not None else flow.body
        head = [f"HTTP/1.1 {flow.status} X"]
        head += [
            f"{k}: {v}"
            for k, v in flow.headers
            if k.lower() not in ("content-length", "transfer-encoding", "connection")
        ]
        head.append(f"Content-Length: {len(out)}")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + out)
        await writer.drain()

    async def _websocket(
        self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if self.fault_name == "ws_refuse_upgrade":
            writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            return
        up_reader, up_writer = await self.upstream.open(10)
        up_writer.write(head)
        writer.write(await up_reader.readuntil(b"\r\n\r\n"))
        conn: dict[str, Any] = {}

        def close_both() -> None:
            writer.close()
            up_writer.close()

        self.state.setdefault("ws_closers", []).append(close_both)

        async def to_server() -> None:
            while True:
                fin, opcode, payload = await read_frame(reader)
                if opcode == OP_TEXT:
                    flow = self._flow("ws", conn=conn)
                    try:
                        flow.request = json.loads(payload)
                    except ValueError:
                        flow.request = None
                    if self.fault.on_request:
                        self.fault.on_request(flow)
                        if flow.request is not None:
                            payload = json.dumps(flow.request).encode()
                    if flow.local is not None:
                        writer.write(encode_frame(OP_TEXT, json.dumps(flow.local).encode()))
                        continue
                up_writer.write(encode_client_frame(opcode, payload, b"\x01\x02\x03\x04", fin))
                if opcode == OP_CLOSE:
                    return

        async def to_client() -> None:
            while True:
                fin, opcode, payload = await read_frame(up_reader)
                if opcode == OP_TEXT:
                    flow = self._flow("ws", conn=conn)
                    try:
                        flow.messages = json.loads(payload)
                    except ValueError:
                        flow.messages = None
                    if self.fault.on_response:
                        self.fault.on_response(flow)
                    if flow.delay:
                        await asyncio.sleep(flow.delay)
                    if flow.messages is not None:
                        if not flow.messages:
                            continue
                        payload = json.dumps(flow.messages).encode()
                writer.write(encode_frame(opcode, payload, fin))
                if opcode == OP_CLOSE:
                    return

        tasks = [asyncio.ensure_future(to_server()), asyncio.ensure_future(to_client())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        except (ConnectionError, WireError, asyncio.IncompleteReadError):
            pass
        finally:
            for task in tasks:
                task.cancel()
            close_both()
