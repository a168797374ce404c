"""The official CometD JavaScript client authenticating, over long-polling and
WebSocket: with a JWT in the handshake `ext` (and refreshing it when it
expires), and with the application's session cookie read by the policy from
the HTTP context (examples/cookie_login.py).  Messages come from the server
HTTP API, published once each client is subscribed."""

from __future__ import annotations

import http.client
import json
import threading
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from harness import ServerProcess, start_server
from interop.helpers import api_publish, describe_js_failure, run_js

from examples import hmac_auth

KEY = "interop-api-key"
SECRET = "interop-jwt-secret-" + "z" * 50
AUTH_SECRET = "interop-cookie-secret"


def publish(server: ServerProcess, channel: str, data: Any) -> None:
    api_publish(server.port, KEY, channel, data)


def api_get(server: ServerProcess, path: str) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/api/" + path, headers={"X-API-Key": KEY})
    resp = conn.getresponse()
    answer = json.loads(resp.read())
    conn.close()
    return resp.status, answer


def receive(
    node_bin: str,
    server: ServerProcess,
    transport: str,
    tmp: Path,
    *extra: str,
    duration: int = 2500,
) -> tuple[threading.Thread, dict[str, Any], Path]:
    ready = tmp / f"ready-{transport}-{time.monotonic_ns()}"
    outcome: dict[str, Any] = {}

    def run() -> None:
        outcome["result"] = run_js(
            node_bin,
            f"http://127.0.0.1:{server.port}/cometd",
            "receive",
            transport,
            expect_ok=False,
            extra=(
                "--channel",
                "/auth/news",
                "--ready-file",
                str(ready),
                "--duration",
                str(duration),
                *extra,
            ),
        )

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome, ready


def wait_for(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def jwt_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    secret_file = tmp_path_factory.mktemp("jwt") / "secret"
    secret_file.write_text(SECRET + "\n")
    server = start_server(
        "--jwt-secret-file",
        str(secret_file),
        "--jwt-audience",
        "interop",
        "--api-key",
        KEY,
        "--timeout",
        "1500",
        target="engine",
    )
    try:
        yield server
    finally:
        server.stop()


def token(seconds: int) -> str:
    claims = {"sub": "carol", "aud": "interop", "exp": int(time.time()) + seconds}
    return jwt.encode(claims, SECRET, algorithm="HS256")


@pytest.mark.parametrize("transport", ["long-polling", "websocket"])
def test_jwt_in_the_handshake_ext(
    jwt_server: ServerProcess, node_bin: str, transport: str, tmp_path: Path
) -> None:
    thread, outcome, ready = receive(
        node_bin, jwt_server, transport, tmp_path, "--tokens", json.dumps([token(600)])
    )
    wait_for(ready.exists, 15, "the client subscribed")
    publish(jwt_server, "/auth/news", {"n": 1})
    thread.join(30)
    result = outcome["result"]
    assert result["ok"], describe_js_failure(result)
    assert result["transport"] == transport
    assert [m["data"] for m in result["results"]["received"]] == [{"n": 1}]
    # Without a token, or with a token for another audience: refused.
    for tokens in ([], [jwt.encode({"sub": "x", "aud": "other"}, SECRET, algorithm="HS256")]):
        extra = ("--tokens", json.dumps(tokens)) if tokens else ()
        refused = run_js(
            node_bin,
            f"http://127.0.0.1:{jwt_server.port}/cometd",
            "receive",
            transport,
            expect_ok=False,
            timeout_ms=6000,
            extra=("--channel", "/auth/news", "--step-timeout", "3000", *extra),
        )
        assert not refused["ok"]


@pytest.mark.parametrize("transport", ["long-polling", "websocket"])
def test_an_expired_token_is_refreshed_by_handshaking_again(
    jwt_server: ServerProcess, node_bin: str, transport: str, tmp_path: Path
) -> None:
    tokens = json.dumps([token(2), token(600)])
    thread, outcome, ready = receive(
        node_bin, jwt_server, transport, tmp_path, "--tokens", tokens, duration=6000
    )
    wait_for(ready.exists, 15, "the client subscribed")
    first = ready.read_text()
    # The first session ends at its token's expiry; the client handshakes
    # again with the next token and subscribes again.
    wait_for(lambda: api_get(jwt_server, f"sessions/{first}")[0] == 404, 8, "expiry")
    wait_for(
        lambda: api_get(jwt_server, "channels/auth/news")[1]["result"]["subscribers"] == 1,
        8,
        "the new session subscribed",
    )
    publish(jwt_server, "/auth/news", "after refresh")
    thread.join(30)
    result = outcome["result"]
    assert result["ok"], describe_js_failure(result)
    assert [h["successful"] for h in result["results"]["handshakes"]] == [True, True]
    assert any(f["error"] == "401::token_expired" for f in result["results"]["failures"]), result[
        "results"
    ]["failures"]
    assert result["results"]["client_id"] != first
    assert [m["data"] for m in result["results"]["received"]] == ["after refresh"]


@pytest.fixture(scope="module")
def cookie_server() -> Any:
    import os

    os.environ["AUTH_SECRET"] = AUTH_SECRET  # (read by the server process at import)
    try:
        server = start_server(
            "--app",
            "examples.cookie_login:server",
            "--api-key",
            KEY,
            "--timeout",
            "1500",
            target="engine",
        )
    finally:
        del os.environ["AUTH_SECRET"]
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("transport", ["long-polling", "websocket"])
def test_session_cookie_read_from_the_http_context(
    cookie_server: ServerProcess, node_bin: str, transport: str, tmp_path: Path
) -> None:
    login = hmac_auth.sign("dave", int(time.time()) + 600, AUTH_SECRET.encode())
    thread, outcome, ready = receive(
        node_bin, cookie_server, transport, tmp_path, "--cookie", f"session={login}"
    )
    wait_for(ready.exists, 15, "the client subscribed")
    status, info = api_get(cookie_server, f"sessions/{ready.read_text()}")
    assert status == 200 and info["result"]["transport"] == transport
    publish(cookie_server, "/auth/news", "hello dave")
    thread.join(30)
    result = outcome["result"]
    assert result["ok"], describe_js_failure(result)
    assert [m["data"] for m in result["results"]["received"]] == ["hello dave"]
    refused = run_js(
        node_bin,
        f"http://127.0.0.1:{cookie_server.port}/cometd",
        "receive",
        transport,
        expect_ok=False,
        timeout_ms=6000,
        extra=("--channel", "/auth/news", "--step-timeout", "3000", "--cookie", "session=forged"),
    )
    assert not refused["ok"]
