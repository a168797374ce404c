"""Backend hooks and webhooks (engine.api.backend) against a real small HTTP
backend started by the test: allow, deny with a reason, amend, the backend's
failures (timeout, 500, garbage, down), 1,000 handshakes at once against a
slow backend, and session events with retries and a bounded queue."""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from harness import running_server
from redis_server import free_port
from support import Browser

from engine import BayeuxServer
from engine.api.backend import BackendHooks


class Backend:
    """A ThreadingHTTPServer whose answers a test sets; it records what it got."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.answer: Callable[[str, dict[str, Any]], tuple[int, bytes]] = lambda path, body: (
            200,
            b'{"allow": true}',
        )
        self.delay = 0.0
        self.in_flight = 0
        self.most_in_flight = 0
        self.lock = threading.Lock()
        backend = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                with backend.lock:
                    backend.in_flight += 1
                    backend.most_in_flight = max(backend.most_in_flight, backend.in_flight)
                try:
                    body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                    backend.requests.append((self.path, body))
                    if backend.delay:
                        time.sleep(backend.delay)
                    status, payload = backend.answer(self.path, body)
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                finally:
                    with backend.lock:
                        backend.in_flight -= 1

            def log_message(self, *args: Any) -> None:
                pass

        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/bayeux"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def paths(self) -> list[str]:
        return [path for path, _ in self.requests]

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture
def backend() -> Iterator[Backend]:
    b = Backend()
    yield b
    b.close()


def serve(backend: Backend, **options: Any) -> Any:
    options.setdefault("timeout", 1500)
    options.setdefault("hook_timeout", 1000)
    return running_server(hook_url=backend.url, **options)


def test_the_backend_allows_denies_and_amends(backend: Backend) -> None:
    def answer(path: str, body: dict[str, Any]) -> tuple[int, bytes]:
        if path.endswith("/handshake"):
            user = "amy" if "sid=amy" in body["headers"].get("cookie", "") else None
            if user is None:
                return 200, b'{"allow": false, "reason": "not_logged_in"}'
            return 200, json.dumps({"allow": True, "attributes": {"user": user}}).encode()
        if path.endswith("/subscribe"):
            ok = body["channel"] != "/vip" and body["attributes"] == {"user": "amy"}
            return 200, json.dumps({"allow": ok, "reason": "members_only"}).encode()
        data = body["message"]["data"]
        return 200, json.dumps(
            {"allow": True, "data": f"{data} (checked)", "ext": {"m": 1}}
        ).encode()

    backend.answer = answer
    with serve(backend) as server:
        refused = Browser(server).handshake().reply("/meta/handshake")
        assert refused["error"] == "403:not_logged_in:handshake_denied"
        browser = Browser(server)
        browser.cookies = "sid=amy"
        browser.ready()
        session = server.session(browser.client_id or "")
        assert session is not None and session.attributes == {"user": "amy"}
        assert browser.subscribe("/vip").reply("/meta/subscribe")["error"] == (
            "403:members_only:subscribe_denied"
        )
        assert browser.subscribe("/room").reply("/meta/subscribe")["successful"]
        published = browser.publish("/room", "hi")
        assert published.reply("/room")["successful"]
        (event,) = published.events() or browser.connect().events()
        assert (event["data"], event["ext"]) == ("hi (checked)", {"m": 1})
        # Connects never go to the backend.
        assert sorted(set(backend.paths())) == [
            "/bayeux/handshake",
            "/bayeux/publish",
            "/bayeux/subscribe",
        ]
        handshake = next(body for path, body in backend.requests if path.endswith("handshake"))
        assert handshake["transport"] == "long-polling"
        assert handshake["remote_address"] == "127.0.0.1"
        assert handshake["message"]["channel"] == "/meta/handshake"


@pytest.mark.parametrize(
    ("fail", "failure"),
    [
        ("timeout", "deny"),
        ("500", "deny"),
        ("garbage", "deny"),
        ("not an object", "deny"),
        ("down", "deny"),
        ("timeout", "allow"),
        ("garbage", "allow"),
    ],
)
def test_a_failing_backend_gets_the_failure_policy(
    backend: Backend, fail: str, failure: str
) -> None:
    answers = {
        "500": (500, b"oops"),
        "garbage": (200, b"<html>"),
        "not an object": (200, b'["allow"]'),
    }
    backend.answer = lambda path, body: answers.get(fail, (200, b'{"allow": true}'))
    if fail == "timeout":
        backend.delay = 1.5
    # Down: nothing listens at the URL.
    url = f"http://127.0.0.1:{free_port()}/bayeux" if fail == "down" else backend.url
    with running_server(
        hook_url=url, hook_failure=failure, hook_timeout=300, timeout=1500
    ) as server:
        started = time.monotonic()
        reply = Browser(server).handshake().reply("/meta/handshake")
        assert time.monotonic() - started < 1.2  # bounded by hook_timeout
        if failure == "deny":
            assert reply["error"] == "403:backend_unavailable:handshake_denied", reply
        else:
            assert reply["successful"], reply
        hooks = server.core.policy
        assert isinstance(hooks, BackendHooks) and hooks.failures == 1


def test_only_the_configured_operations_wait(backend: Backend) -> None:
    with serve(backend, hook_operations="subscribe") as server:
        browser = Browser(server).ready()
        assert browser.subscribe("/a").reply("/meta/subscribe")["successful"]
        assert browser.publish("/a", 1).reply("/a")["successful"]
        assert backend.paths() == ["/bayeux/subscribe"]
        assert server.core.async_decisions == frozenset({"subscribe"})


def test_a_thousand_handshakes_against_a_slow_backend(backend: Backend) -> None:
    backend.delay = 0.05
    with serve(backend, hook_concurrency=20, hook_timeout=20000) as server:
        host, port = server.address
        body = json.dumps(
            [
                {
                    "channel": "/meta/handshake",
                    "version": "1.0",
                    "supportedConnectionTypes": ["long-polling"],
                }
            ]
        ).encode()

        async def one(index: int) -> bool:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(
                b"POST /cometd HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            reply = json.loads(await reader.readexactly(length))
            writer.close()
            return bool(reply[0]["successful"])

        async def storm() -> list[bool | BaseException]:
            return await asyncio.gather(*(one(i) for i in range(1000)), return_exceptions=True)

        results = asyncio.run(storm())
        hooks = server.core.policy
        assert isinstance(hooks, BackendHooks)
        admitted = sum(r is True for r in results)
        # At most hook_concurrency requests reached the backend at once; past
        # ten times that waiting, the rest got the failure policy at once.
        assert backend.most_in_flight <= 20
        assert admitted >= 200, (admitted, hooks.failures)
        assert admitted + hooks.failures == 1000
        assert hooks.waiting == 0


def test_webhooks_deliver_session_events_and_retry(backend: Backend) -> None:
    failing = {"left": 2}

    def answer(path: str, body: dict[str, Any]) -> tuple[int, bytes]:
        if failing["left"] > 0:
            failing["left"] -= 1
            return 503, b"busy"
        return 204, b""

    backend.answer = answer
    with running_server(
        webhook_url=backend.url + "/events", timeout=1500, max_interval=500
    ) as server:
        browser = Browser(server).ready()
        client_id = browser.client_id
        browser.send([browser.message("/meta/disconnect")])
        deadline = time.monotonic() + 10
        webhooks = server.webhooks
        assert webhooks is not None
        while webhooks.sent < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert webhooks.failures == 2 and webhooks.sent == 2
    events = [e for _, body in backend.requests for e in body["events"]]
    # The failed batches were sent again: the last delivery holds both events.
    last = backend.requests[-1][1]["events"]
    assert [(e["event"], e["client_id"]) for e in last] == [
        ("session_added", client_id),
        ("session_removed", client_id),
    ]
    assert last[1]["timeout"] is False and last[0]["transport"] == "long-polling"
    assert len(events) >= 2


def test_the_webhook_queue_is_bounded(backend: Backend) -> None:
    backend.answer = lambda path, body: (503, b"down")
    with running_server(webhook_url=backend.url, webhook_queue=5, timeout=1500) as server:
        for _ in range(8):
            Browser(server).handshake()
        webhooks = server.webhooks
        assert webhooks is not None
        assert len(webhooks.queue) == 5 and webhooks.dropped == 3


def test_bad_hook_options() -> None:
    from engine import ServerOptions

    with pytest.raises(ValueError, match="hook_failure"):
        ServerOptions(hook_url="http://x", hook_failure="maybe")
    with pytest.raises(ValueError, match="http:// or https://"):
        ServerOptions(hook_url="ftp://x")
    with pytest.raises(ValueError, match="not both"):
        ServerOptions(hook_url="http://x", jwt_secret="s")
    with pytest.raises(ValueError, match="operations"):
        BackendHooks("http://x", ("connect",))


def test_an_application_policy_and_hook_url_conflict(backend: Backend) -> None:
    from engine import SecurityPolicy

    def setup(server: BayeuxServer) -> None:
        server.policy = SecurityPolicy()

    with pytest.raises(ValueError, match="hook_url"):
        with running_server(setup=setup, hook_url=backend.url):
            pass
