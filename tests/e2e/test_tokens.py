"""Connection tokens (engine.api.tokens.JwtPolicy) over long-polling: where the
token is read from, every way a token is bad, claims for authorizers, a JWKS
served by a real HTTP server (and that server going down), and expiry."""

from __future__ import annotations

import base64
import http.server
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from harness import running_server
from support import Browser

from engine import BayeuxServer
from engine.api.tokens import JwtPolicy

SECRET = "s3cret-for-tests-" + "x" * 60  # (64+ bytes: long enough for HS512)


def token(claims: dict[str, Any] | None = None, key: Any = SECRET, **kw: Any) -> str:
    now = int(time.time())
    body = {"sub": "alice", "exp": now + 600, **(claims or {})}
    return jwt.encode(body, key, algorithm=kw.pop("algorithm", "HS256"), **kw)


def serve(policy: JwtPolicy, **options: Any) -> Any:
    def setup(server: BayeuxServer) -> None:
        server.policy = policy

    options.setdefault("timeout", 1500)
    return running_server(setup=setup, **options)


def handshake(server: BayeuxServer, ext: Any = None, headers: dict[str, str] | None = None) -> Any:
    browser = Browser(server)
    browser.headers = headers or {}
    fields = {"ext": ext} if ext is not None else {}
    return browser, browser.handshake(**fields).reply("/meta/handshake")


@pytest.fixture
def hmac_server() -> Iterator[BayeuxServer]:
    with serve(JwtPolicy(secret=SECRET, audience="chat", issuer="https://login")) as server:
        yield server


def good(**claims: Any) -> str:
    return token({"aud": "chat", "iss": "https://login", **claims})


def test_a_valid_token_in_ext_admits_and_its_claims_reach_the_session(
    hmac_server: BayeuxServer,
) -> None:
    browser, reply = handshake(hmac_server, {"token": good(role="admin")})
    assert reply["successful"], reply
    session = hmac_server.session(reply["clientId"])
    assert session is not None and session.attributes is not None
    assert session.attributes["user"] == "alice"
    assert session.attributes["claims"]["role"] == "admin"


def test_the_token_may_come_in_the_authorization_header(hmac_server: BayeuxServer) -> None:
    _, reply = handshake(hmac_server, headers={"Authorization": f"Bearer {good()}"})
    assert reply["successful"], reply


@pytest.mark.parametrize(
    ("make", "cause"),
    [
        (lambda: None, "missing"),
        (lambda: "", "missing"),
        (lambda: 42, "missing"),
        (lambda: "not.a.jwt", "invalid"),
        (lambda: "x" * 9000, "missing"),
        (lambda: good(exp=int(time.time()) - 10), "expired"),
        (lambda: good(nbf=int(time.time()) + 600), "not_yet_valid"),
        (lambda: token({"aud": "other", "iss": "https://login"}), "audience"),
        (lambda: token({"iss": "https://login"}), "invalid"),  # no aud at all
        (lambda: token({"aud": "chat", "iss": "https://evil"}), "issuer"),
        (lambda: good() + "x", "invalid"),  # a tampered signature
        (
            lambda: token({"aud": "chat", "iss": "https://login"}, key="another-secret" + "y" * 60),
            "invalid",
        ),
        (lambda: token({"aud": "chat", "iss": "https://login"}, algorithm="HS512"), None),
        (lambda: _unsigned({"sub": "alice", "aud": "chat", "iss": "https://login"}), "algorithm"),
    ],
)
def test_bad_tokens_are_refused(hmac_server: BayeuxServer, make: Any, cause: str | None) -> None:
    _, reply = handshake(hmac_server, {"token": make()})
    if cause is None:  # (HS512 is an HMAC algorithm: allowed with a secret)
        assert reply["successful"], reply
        return
    assert reply["successful"] is False, reply
    assert reply["error"] == f"403:token_{cause}:handshake_denied"
    assert reply["advice"]["reconnect"] == "none"


def _unsigned(claims: dict[str, Any]) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


def rsa_pair() -> tuple[Any, bytes]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


def test_rsa_public_key_and_the_hmac_confusion_attack() -> None:
    private, public = rsa_pair()
    with serve(JwtPolicy(public_key=public)) as server:
        _, reply = handshake(server, {"token": token(key=private, algorithm="RS256")})
        assert reply["successful"], reply
        # An HMAC token whose "secret" is the public key itself (the classic
        # algorithm confusion): refused, HS256 is not an algorithm of this key.
        forged = jwt.api_jws.PyJWS().encode(
            json.dumps({"sub": "mallory", "exp": int(time.time()) + 60}).encode(),
            key=b"unused" * 8,
            algorithm="HS256",
        )
        header, payload, _ = forged.split(".")
        import hashlib
        import hmac

        signature = hmac.new(public, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        forged = f"{header}.{payload}." + base64.urlsafe_b64encode(signature).rstrip(b"=").decode()
        _, reply = handshake(server, {"token": forged})
        assert reply["successful"] is False
    with pytest.raises(ValueError, match="do not fit the key"):
        JwtPolicy(public_key=public, algorithms=["HS256"])
    with pytest.raises(ValueError, match="exactly one"):
        JwtPolicy(secret="a", public_key=public)


def test_channels_claim_limits_subscriptions(hmac_server: BayeuxServer) -> None:
    browser, reply = handshake(hmac_server, {"token": good(channels=["/room/1"])})
    assert reply["successful"]
    browser.connect(advice={"timeout": 0})
    assert browser.subscribe("/room/1").reply("/meta/subscribe")["successful"]
    refused = browser.subscribe("/room/2").reply("/meta/subscribe")
    assert refused["successful"] is False and "subscribe_denied" in refused["error"]


def test_an_expired_token_ends_the_session_with_handshake_advice() -> None:
    with serve(JwtPolicy(secret=SECRET), max_interval=10000) as server:
        short = token({"exp": int(time.time()) + 2})
        browser, reply = handshake(server, {"token": short})
        assert reply["successful"], reply
        assert browser.connect(advice={"timeout": 0}).reply("/meta/connect")["successful"]
        # The held connect is answered at expiry with the reason, and so is
        # the next one; a handshake with a fresh token is a new session.
        deadline = time.monotonic() + 6
        reply = browser.connect().reply("/meta/connect")
        while reply["successful"] and time.monotonic() < deadline:
            reply = browser.connect().reply("/meta/connect")
        assert reply["successful"] is False
        assert reply["error"] == "401::token_expired"
        assert reply["advice"] == {"reconnect": "handshake", "interval": 0}
        again = browser.connect().reply("/meta/connect")
        assert again["error"] == "401::token_expired"
        assert browser.handshake(ext={"token": token()}).reply("/meta/handshake")["successful"]


class Jwks(http.server.BaseHTTPRequestHandler):
    keys: dict[str, Any] = {}
    hits = 0

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        type(self).hits += 1
        body = json.dumps(type(self).keys).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_jwks_keys_are_fetched_cached_and_survive_the_endpoint_going_down() -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private.public_key()))
    Jwks.keys = {"keys": [{**jwk, "kid": "k1", "alg": "ES256", "use": "sig"}]}
    Jwks.hits = 0
    backend = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Jwks)
    thread = threading.Thread(target=backend.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{backend.server_address[1]}/jwks.json"
    policy = JwtPolicy(jwks_url=url)
    with serve(policy) as server:
        signed = token(key=private, algorithm="ES256", headers={"kid": "k1"})
        assert handshake(server, {"token": signed})[1]["successful"]
        assert handshake(server, {"token": signed})[1]["successful"]
        assert Jwks.hits == 1  # cached
        backend.shutdown()
        backend.server_close()
        # Down: the cached key still verifies; an unknown kid is refused
        # (and the endpoint is not hammered: one try per JWKS_RETRY).
        assert handshake(server, {"token": signed})[1]["successful"]
        other = token(key=private, algorithm="ES256", headers={"kid": "k2"})
        started = time.monotonic()
        assert handshake(server, {"token": other})[1]["successful"] is False
        assert time.monotonic() - started < 5
    with serve(JwtPolicy(jwks_url=url)) as server:  # down from the start
        assert handshake(server, {"token": signed})[1]["successful"] is False
