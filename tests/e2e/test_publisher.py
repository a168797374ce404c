"""The Python publisher (engine.client), `python -m engine publish`, and the
FastAPI and Django publishing examples, against a real server."""

from __future__ import annotations

import asyncio
import http.client
import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from harness import ROOT, running_server
from support import Browser

from engine import BayeuxServer
from engine.client import ApiError, AsyncPublisher, Publisher

KEY = "publisher-key"


@pytest.fixture
def server() -> Iterator[BayeuxServer]:
    with running_server(api_key=KEY, timeout=1500) as server:
        yield server


def api_url(server: BayeuxServer) -> str:
    host, port = server.address
    return f"http://{host}:{port}/api"


def subscribed(server: BayeuxServer, channel: str) -> Browser:
    browser = Browser(server).ready()
    assert browser.subscribe(channel).reply("/meta/subscribe")["successful"]
    return browser


def data(browser: Browser) -> list[Any]:
    return [e["data"] for e in browser.connect().events()]


def test_publisher_calls(server: BayeuxServer) -> None:
    browser = subscribed(server, "/p/*")
    with Publisher(api_url(server), KEY) as publisher:
        assert publisher.publish("/p/a", {"n": 1}) == {"channel": "/p/a"}
        assert publisher.broadcast(["/p/b", "/p/c"], 2)["channels"] == ["/p/b", "/p/c"]
        assert publisher.channels() == {"/p/*": 1}
        assert publisher.channel("/p/*")["subscribers"] == 1
        assert sorted(map(str, data(browser))) == ["2", "2", "{'n': 1}"]
        assert publisher.session(browser.client_id or "")["subscriptions"] == ["/p/*"]  # type: ignore[index]
        assert publisher.session("nobody") is None
        publisher.deliver(browser.client_id or "", "/direct", "just you")
        assert data(browser) == ["just you"]
        with pytest.raises(ApiError) as refused:
            publisher.publish("/meta/handshake", 1)
        assert refused.value.status == 400 and "meta" in refused.value.message
        # Thread-safe: many threads, one publisher.
        threads = [
            threading.Thread(target=lambda i=i: publisher.publish("/p/t", i)) for i in range(20)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        got: list[Any] = []
        while len(got) < 20:
            got += data(browser)
        assert sorted(got) == list(range(20))
    with pytest.raises(ApiError) as wrong:
        Publisher(api_url(server), "wrong").publish("/p/a", 1)
    assert wrong.value.status == 401


def test_async_publisher(server: BayeuxServer) -> None:
    browser = subscribed(server, "/q")

    async def run() -> None:
        async with AsyncPublisher(api_url(server), KEY) as publisher:
            await asyncio.gather(*(publisher.publish("/q", i) for i in range(10)))
            assert (await publisher.channel("/q"))["subscribers"] == 1
            with pytest.raises(ApiError):
                await publisher.publish("/q/*", 1)

    asyncio.run(run())
    got: list[Any] = []
    while len(got) < 10:
        got += data(browser)
    assert sorted(got) == list(range(10))


class LosingProxy(http.server.BaseHTTPRequestHandler):
    """Forwards to the server; the first answer is lost on the way back."""

    target: tuple[str, int] = ("127.0.0.1", 0)
    forwarded = 0
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        conn = http.client.HTTPConnection(*self.target, timeout=5)
        conn.request("POST", self.path, body=body, headers=dict(self.headers))
        answer = conn.getresponse()
        payload = answer.read()
        type(self).forwarded += 1
        if type(self).forwarded == 1:
            self.close_connection = True  # published, but the caller never hears it
            return
        self.send_response(answer.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


def test_a_retry_after_a_lost_answer_is_delivered_once(server: BayeuxServer) -> None:
    browser = subscribed(server, "/once")
    LosingProxy.target = server.address
    LosingProxy.forwarded = 0
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), LosingProxy)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{proxy.server_address[1]}/api"
        with Publisher(url, KEY, backoff=0.01) as publisher:
            assert publisher.publish("/once", "exactly once") == {
                "channel": "/once",
                "duplicate": True,  # the retry: the first attempt had got through
            }
    finally:
        proxy.shutdown()
    assert LosingProxy.forwarded == 2
    assert data(browser) == ["exactly once"]


def test_an_unreachable_server_fails_after_the_retries() -> None:
    with pytest.raises(ApiError) as failed:
        Publisher("http://127.0.0.1:9/api", KEY, retries=2, backoff=0.01).publish("/x", 1)
    assert failed.value.status == 503 and "could not be reached" in failed.value.message
    with pytest.raises(ValueError):
        Publisher("ftp://x/api", KEY)
    with pytest.raises(ValueError):
        Publisher("http://x/api", "")


def run_cli(*args: str, key: str = KEY) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ENGINE_API_KEY": key, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "engine", "publish", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )


def test_the_publish_command(server: BayeuxServer) -> None:
    browser = subscribed(server, "/cli")
    url = api_url(server)
    done = run_cli("/cli", '{"from": "shell"}', "--url", url)
    assert done.returncode == 0, done.stderr
    assert '"channel": "/cli"' in done.stdout
    assert data(browser) == [{"from": "shell"}]
    bad = run_cli("/cli", "{not json", "--url", url)
    assert bad.returncode == 2 and "not JSON" in bad.stderr
    refused = run_cli("/cli", "1", "--url", url, key="wrong")
    assert refused.returncode == 1 and "401" in refused.stderr


def test_fastapi_example(server: BayeuxServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi.testclient import TestClient

    browser = subscribed(server, "/chat/lobby")
    monkeypatch.setenv("ENGINE_API_KEY", KEY)
    monkeypatch.setenv("ENGINE_API_URL", api_url(server))
    from examples import publish_fastapi

    with TestClient(publish_fastapi.app) as client:
        answer = client.post("/rooms/lobby/messages", json={"user": "ann", "text": "hello"})
        assert answer.status_code == 200, answer.text
        assert client.post("/rooms/lobby/messages", json={"user": "ann"}).status_code == 422
        bad_room = client.post("/rooms/a*/messages", json={"user": "x", "text": "y"})
        assert bad_room.status_code == 502
    assert data(browser) == [{"user": "ann", "text": "hello"}]


def test_django_example(server: BayeuxServer, monkeypatch: pytest.MonkeyPatch) -> None:
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(ROOT_URLCONF="examples.publish_django", ALLOWED_HOSTS=["testserver"])
        django.setup()
    from django.test import Client

    from examples import publish_django

    browser = subscribed(server, "/chat/ops")
    monkeypatch.setenv("ENGINE_API_KEY", KEY)
    monkeypatch.setenv("ENGINE_API_URL", api_url(server))
    monkeypatch.setattr(publish_django, "_publisher", None)
    client = Client()
    answer = client.post(
        "/rooms/ops/messages", {"user": "bo", "text": "deploy"}, content_type="application/json"
    )
    assert answer.status_code == 200, answer.content
    assert (
        client.post("/rooms/ops/messages", "{}", content_type="application/json").status_code == 400
    )
    assert client.get("/rooms/ops/messages").status_code == 405
    assert data(browser) == [{"user": "bo", "text": "deploy"}]
