"""The HTTP request behind a policy decision (engine.api.context) on every
transport: long-polling, callback-polling, the WebSocket upgrade; sync and
async policies; the client address behind trusted proxies; and the README's
cookie-login example."""

from __future__ import annotations

import asyncio
import http.client
import json
import time
import urllib.parse
from typing import Any

import pytest
from harness import running_server
from support import Browser
from ws_client import Client, handshake_message

from engine import BayeuxServer, HttpContext, SecurityPolicy, Session, current_context
from examples import cookie_login, hmac_auth


class Recording(SecurityPolicy):
    uses_http_context = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, HttpContext | None]] = []

    def can_handshake(self, session: Session, message: dict[str, Any]) -> bool:
        self.seen.append(("handshake", current_context()))
        return True

    def can_subscribe(self, session: Session, channel: str, message: dict[str, Any]) -> bool:
        self.seen.append(("subscribe", current_context()))
        return True


class AsyncRecording(Recording):
    async def can_handshake(self, session: Session, message: dict[str, Any]) -> bool:  # type: ignore[override]
        await asyncio.sleep(0.01)
        self.seen.append(("handshake", current_context()))
        return True


def serve(policy: SecurityPolicy, **options: Any) -> Any:
    def setup(server: BayeuxServer) -> None:
        server.policy = policy

    return running_server(setup=setup, timeout=1000, **options)


@pytest.mark.parametrize("policy_class", [Recording, AsyncRecording])
def test_long_polling_context(policy_class: type[Recording]) -> None:
    policy = policy_class()
    with serve(policy) as server:
        browser = Browser(server)
        browser.cookies = "session=abc; theme=dark"
        browser.headers = {"Authorization": "Bearer tok"}
        browser.ready()
        browser.subscribe("/a")
    kinds = [kind for kind, _ in policy.seen]
    assert kinds == ["handshake", "subscribe"]
    for _, context in policy.seen:
        assert context is not None
        assert context.transport == "long-polling"
        assert context.cookie("session") == "abc" and context.cookies["theme"] == "dark"
        assert context.bearer_token() == "tok"
        assert context.header("content-type") == "application/json"
        assert context.remote_address == "127.0.0.1"
        assert context.path.startswith("/cometd")
        assert context.secure is False
    # Outside a decision there is none.
    assert current_context() is None


def test_callback_polling_context() -> None:
    policy = Recording()
    with serve(policy) as server:
        host, port = server.address
        message = json.dumps(
            [
                {
                    "channel": "/meta/handshake",
                    "version": "1.0",
                    "supportedConnectionTypes": ["callback-polling"],
                    "id": "1",
                }
            ]
        )
        conn = http.client.HTTPConnection(host, port, timeout=5)
        query = urllib.parse.urlencode({"jsonp": "cb", "message": message})
        conn.request("GET", f"/cometd/handshake?{query}", headers={"Cookie": "session=jsonp"})
        body = conn.getresponse().read()
        assert b'"successful":true' in body
    ((kind, context),) = policy.seen
    assert context is not None and context.transport == "callback-polling"
    assert context.cookie("session") == "jsonp"


@pytest.mark.parametrize("keep", [True, False, frozenset({"cookie"})])
def test_websocket_context_is_the_upgrade_request(keep: bool | frozenset[str]) -> None:
    policy = Recording()
    policy.uses_http_context = keep  # type: ignore[misc]

    async def run(server: BayeuxServer) -> None:
        client = await Client.open(
            server, additional_headers={"Cookie": "session=ws", "X-Team": "blue"}
        )
        await client.ready()
        await client.subscribe("/a")
        await client.ws.close()

    with serve(policy) as server:
        asyncio.run(run(server))
    assert [kind for kind, _ in policy.seen] == ["handshake", "subscribe"]
    for _, context in policy.seen:
        assert context is not None and context.transport == "websocket"
        assert context.remote_address == "127.0.0.1"
        if keep is True:
            assert context.cookie("session") == "ws"
            assert context.header("X-Team") == "blue"
            assert context.header("upgrade") == "websocket"
        elif keep:  # only the headers named
            assert context.cookie("session") == "ws"
            assert dict(context.headers) == {"cookie": "session=ws"}
        else:  # not kept (a kilobyte per socket): the address alone
            assert context.headers == {}


def test_forwarded_for_from_a_trusted_proxy() -> None:
    policy = Recording()
    with serve(policy, trusted_proxies="127.0.0.1") as server:
        browser = Browser(server)
        browser.headers = {"X-Forwarded-For": "203.0.113.9, 198.51.100.7"}
        browser.handshake()
    ((_, context),) = policy.seen
    assert context is not None
    assert context.remote_address == "198.51.100.7"  # the last entry the proxy added
    assert context.peer_address == "127.0.0.1"


def test_cookie_login_example_over_long_polling_and_websocket() -> None:
    good = hmac_auth.sign("alice", int(time.time()) + 600)
    with running_server(app=cookie_login.server, timeout=1000) as server:
        # Long-polling, with and without the login cookie.
        browser = Browser(server)
        browser.cookies = f"session={good}"
        assert browser.handshake().reply("/meta/handshake")["successful"]
        session = server.session(browser.client_id or "")
        assert session is not None and session.attributes == {
            "user": "alice",
            "address": "127.0.0.1",
        }
        assert not Browser(server).handshake().reply("/meta/handshake")["successful"]

        async def over_websocket(cookie: str | None) -> bool:
            headers = {"Cookie": f"session={cookie}"} if cookie else {}
            client = await Client.open(server, additional_headers=headers)
            reply = await client.request(handshake_message(client.next_id()))
            await client.ws.close()
            return bool(reply["successful"])

        assert asyncio.run(over_websocket(good)) is True
        assert asyncio.run(over_websocket(None)) is False
        tampered = good[:-1] + ("1" if good.endswith("0") else "0")  # (always another digit)
        assert asyncio.run(over_websocket(tampered)) is False
