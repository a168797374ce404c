"""Security policy and authorizers: CometD's error strings, async decisions,
the wildcard hole, and the HMAC token example of examples/hmac_auth.py."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from harness import running_server
from support import Browser

from engine import BayeuxServer, SecurityPolicy, Session
from engine.api.policy import GRANT, IGNORE, deny, patterns_overlap
from examples import hmac_auth


def serve_with(policy: SecurityPolicy, **options: Any) -> Any:
    def setup(server: BayeuxServer) -> None:
        server.policy = policy

    options.setdefault("timeout", 1500)
    return running_server(setup=setup, **options)


class Refusing(SecurityPolicy):
    def can_handshake(self, session: Session, message: dict[str, Any]) -> bool:
        return message.get("ext", {}).get("letmein") is True

    def can_subscribe(self, session: Session, channel: str, message: dict[str, Any]) -> bool:
        return not channel.startswith("/secret")

    def can_publish(self, session: Session, channel: str, message: dict[str, Any]) -> bool:
        return channel != "/readonly"

    def can_create(self, session: Session, channel: str, message: dict[str, Any]) -> bool:
        return not channel.startswith("/nocreate")


def test_policy_refusals_use_cometd_strings() -> None:
    with serve_with(Refusing()) as server:
        b = Browser(server)
        reply = b.handshake().reply("/meta/handshake")
        assert reply["successful"] is False
        assert reply["error"] == "403::handshake_denied"
        assert reply["advice"]["reconnect"] == "none"
        assert "clientId" not in reply
        assert b.handshake(ext={"letmein": True}).reply("/meta/handshake")["successful"]
        b.connect(advice={"timeout": 0})
        sub = b.subscribe("/secret/x").reply("/meta/subscribe")
        assert sub["error"] == "403:denied_by_security_policy:subscribe_denied"
        pub = b.publish("/readonly", 1).reply("/readonly")
        assert pub["error"] == "403:denied_by_security_policy:publish_denied"
        create = b.subscribe("/nocreate/x").reply("/meta/subscribe")
        assert create["error"] == "403:denied_by_security_policy:create_denied"
        create_pub = b.publish("/nocreate/y", 1).reply("/nocreate/y")
        assert create_pub["error"] == "403:denied_by_security_policy:channel_create_denied"
        assert b.publish("/fine", 1).reply("/fine")["successful"] is True


class Raising(SecurityPolicy):
    def can_publish(self, session: Session, channel: str, message: dict[str, Any]) -> bool:
        raise RuntimeError("policy bug")

    def can_subscribe(self, session: Session, channel: str, message: dict[str, Any]) -> Any:
        return "yes"  # garbage: not a bool


def test_policy_that_raises_or_returns_garbage_denies(caplog: pytest.LogCaptureFixture) -> None:
    with serve_with(Raising()) as server:
        b = Browser(server).ready()
        assert b.publish("/x", 1).reply("/x")["error"].endswith(":publish_denied")
        assert b.subscribe("/x").reply("/meta/subscribe")["error"].endswith(":subscribe_denied")
        assert any("policy bug" in (r.exc_text or "") for r in caplog.records)
        # Others unharmed.
        assert Browser(server).ready().client_id


class AsyncPolicy(SecurityPolicy):
    async def can_handshake(self, session: Session, message: dict[str, Any]) -> bool:
        await asyncio.sleep(0.01)  # e.g. a database look-up
        token = message.get("ext", {}).get("token")
        session.attributes = {"user": token}
        return token is not None

    async def can_publish(self, session: Session, channel: str, message: dict[str, Any]) -> bool:
        await asyncio.sleep(0.01)
        return (session.attributes or {}).get("user") == "admin" or channel != "/admin"


def test_async_policy() -> None:
    with serve_with(AsyncPolicy()) as server:
        denied = Browser(server).handshake().reply("/meta/handshake")
        assert denied["error"] == "403::handshake_denied"
        user = Browser(server)
        assert user.handshake(ext={"token": "bob"}).reply("/meta/handshake")["successful"]
        session = server.core.sessions[user.client_id]  # type: ignore[index]
        assert session.attributes == {"user": "bob"}
        user.connect(advice={"timeout": 0})
        assert user.publish("/admin", 1).reply("/admin")["error"].endswith("publish_denied")
        assert user.publish("/chat", 1).reply("/chat")["successful"]
        admin = Browser(server)
        admin.handshake(ext={"token": "admin"})
        admin.connect(advice={"timeout": 0})
        assert admin.publish("/admin", 1).reply("/admin")["successful"]
        # Held connects still work with an async policy.
        admin.subscribe("/news")
        admin.start_connect()
        time.sleep(0.1)
        user.publish("/news", "n")
        assert [e["data"] for e in admin.finish_connect().events()] == ["n"]


def test_authorizers_grant_ignore_deny() -> None:
    policy = SecurityPolicy()
    policy.add_authorizer("/open/**", lambda op, ch, s, m: GRANT)
    policy.add_authorizer("/quiet/**", lambda op, ch, s, m: IGNORE)
    policy.add_authorizer(
        "/ro/**", lambda op, ch, s, m: GRANT if op == "subscribe" else deny("read_only")
    )
    with serve_with(policy) as server:
        b = Browser(server).ready()
        assert b.publish("/open/a", 1).reply("/open/a")["successful"]
        quiet = b.publish("/quiet/a", 1).reply("/quiet/a")
        assert quiet["error"] == "403:denied_by_not_granting:publish_denied"
        assert b.subscribe("/ro/feed").reply("/meta/subscribe")["successful"]
        ro = b.publish("/ro/feed", 1).reply("/ro/feed")
        assert ro["error"] == "403:read_only:publish_denied"
        # Channels no authorizer covers are left to the policy (allowed).
        assert b.publish("/other", 1).reply("/other")["successful"]


@pytest.mark.parametrize(
    "a,b,overlap",
    [
        ("/**", "/private/**", True),
        ("/*", "/private/**", False),
        ("/*", "/private", True),
        ("/private/*", "/private/**", True),
        ("/a/*", "/a/b", True),
        ("/a/*", "/a/b/c", False),
        ("/a/**", "/a", False),
        ("/a/b", "/a/c", False),
        ("/x/**", "/private/**", False),
    ],
)
def test_patterns_overlap(a: str, b: str, overlap: bool) -> None:
    assert patterns_overlap(a, b) is overlap
    assert patterns_overlap(b, a) is overlap


def test_hmac_example_and_the_wildcard_hole() -> None:
    def setup(server: BayeuxServer) -> None:
        server.policy = hmac_auth.policy

    with running_server(setup=setup, timeout=1500) as server:
        alice_token = hmac_auth.sign("alice", int(time.time()) + 60)
        alice = Browser(server)
        ok = alice.handshake(ext={"com.example.auth": {"token": alice_token}})
        assert ok.reply("/meta/handshake")["successful"]
        alice.connect(advice={"timeout": 0})

        tampered = alice_token[:-1] + ("1" if alice_token.endswith("0") else "0")
        for forged in (tampered, hmac_auth.sign("alice", 1), "x", None):
            reply = Browser(server).handshake(ext={"com.example.auth": {"token": forged}})
            assert reply.reply("/meta/handshake")["error"] == "403::handshake_denied"

        assert alice.subscribe("/private/alice/*").reply("/meta/subscribe")["successful"]
        theirs = alice.subscribe("/private/bob/inbox").reply("/meta/subscribe")
        assert theirs["error"] == "403:not_your_channel:subscribe_denied"
        # A wildcard that would read other users' channels is refused too.
        for pattern in ("/**", "/private/*", "/private/**"):
            reply = alice.subscribe(pattern).reply("/meta/subscribe")
            assert reply["successful"] is False, pattern
        assert alice.subscribe("/chat/*").reply("/meta/subscribe")["successful"]


class Reasons(SecurityPolicy):
    async def can_handshake(self, session: Session, message: dict[str, Any]) -> Any:
        return deny("maintenance") if message.get("ext", {}).get("late") else True

    def can_subscribe(self, session: Session, channel: str, message: dict[str, Any]) -> Any:
        return deny("banned") if channel == "/banned" else True

    def can_publish(self, session: Session, channel: str, message: dict[str, Any]) -> Any:
        return deny("read only!") if channel == "/ro" else True


def test_a_policy_may_deny_with_a_reason() -> None:
    with serve_with(Reasons()) as server:
        refused = Browser(server).handshake(ext={"late": True}).reply("/meta/handshake")
        assert refused["error"] == "403:maintenance:handshake_denied"
        browser = Browser(server).ready()
        assert browser.subscribe("/banned").reply("/meta/subscribe")["error"] == (
            "403:banned:subscribe_denied"
        )
        # (A reason keeps to the error grammar: letters, digits, _ and -.)
        assert browser.publish("/ro", 1).reply("/ro")["error"] == "403:readonly:publish_denied"
        assert browser.subscribe("/fine").reply("/meta/subscribe")["successful"]
