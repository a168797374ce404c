"""TLS: https:// and wss:// with certificates made at test time (trustme),
client certificates, the Secure and SameSite cookie attributes, and what a
plain-HTTP or untrusting client on the TLS port gets."""

from __future__ import annotations

import asyncio
import datetime
import http.client
import json
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
import websockets
from harness import ROOT, running_server

from engine import BayeuxServer, ServerOptions

HANDSHAKE = [
    {
        "channel": "/meta/handshake",
        "version": "1.0",
        "supportedConnectionTypes": ["long-polling", "websocket"],
        "id": "1",
    }
]


class Certs:
    def __init__(self, tmp: Path) -> None:
        self.ca = trustme.CA()
        self.ca_path = tmp / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_path))
        leaf = self.ca.issue_cert("127.0.0.1", "localhost")
        self.server = tmp / "server.pem"  # key and chain in one file
        leaf.private_key_and_cert_chain_pem.write_to_path(str(self.server))
        self.tmp = tmp

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return Certs(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def server(certs: Certs) -> Iterator[BayeuxServer]:
    with running_server(ssl_certfile=str(certs.server), cookie_same_site="None") as srv:
        yield srv


def https_post(server: BayeuxServer, context: ssl.SSLContext, body: Any, cookie: str = "") -> Any:
    host, port = server.address
    conn = http.client.HTTPSConnection(host, port, context=context, timeout=5)
    headers = {"Content-Type": "application/json"}
    if cookie:
        headers["Cookie"] = cookie
    conn.request("POST", "/cometd", json.dumps(body), headers)
    resp = conn.getresponse()
    value = resp.status, resp.getheader("Set-Cookie") or "", json.loads(resp.read())
    conn.close()
    return value


def test_long_polling_over_https(server: BayeuxServer, certs: Certs) -> None:
    assert server.url.startswith("https://")
    status, set_cookie, replies = https_post(server, certs.client_context(), HANDSHAKE)
    assert status == 200 and replies[0]["successful"] is True
    # Under TLS the browser cookie is Secure; SameSite=None as configured.
    assert "; Secure" in set_cookie and "SameSite=None" in set_cookie and "HttpOnly" in set_cookie
    cookie = set_cookie.split(";")[0]
    client_id = replies[0]["clientId"]
    connect = {"channel": "/meta/connect", "clientId": client_id, "connectionType": "long-polling"}
    status, _, replies = https_post(server, certs.client_context(), [connect], cookie)
    assert status == 200 and replies[0]["successful"] is True


def test_websocket_over_wss(server: BayeuxServer, certs: Certs) -> None:
    host, port = server.address

    async def body() -> None:
        url = f"wss://{host}:{port}/cometd"
        async with websockets.connect(url, ssl=certs.client_context()) as ws:
            hs = dict(HANDSHAKE[0], supportedConnectionTypes=["websocket"])
            await ws.send(json.dumps([hs]))
            reply = json.loads(await asyncio.wait_for(ws.recv(), 5))[0]
            assert reply["successful"] is True, reply
            cid = reply["clientId"]
            sub = {"channel": "/meta/subscribe", "clientId": cid, "subscription": "/t", "id": "2"}
            await ws.send(json.dumps([sub]))
            assert json.loads(await asyncio.wait_for(ws.recv(), 5))[0]["successful"] is True
            pub = {"channel": "/t", "clientId": cid, "data": {"x": 1}, "id": "3"}
            await ws.send(json.dumps([pub]))
            got: list[dict[str, Any]] = []
            while not any(m.get("channel") == "/t" and "data" in m for m in got):
                got += json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert [m["data"] for m in got if m.get("channel") == "/t" and "data" in m] == [
                {"x": 1}
            ]

    asyncio.run(body())


def test_plain_http_on_the_tls_port_harms_no_one(server: BayeuxServer, certs: Certs) -> None:
    stats = server.core.stats
    failed_before = stats.tls_accepted - stats.tls_established
    for _ in range(20):
        with socket.create_connection(server.address, timeout=5) as sock:
            sock.sendall(b"POST /cometd HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n[]")
            try:
                answer = sock.recv(1024)
            except (ConnectionResetError, TimeoutError):
                answer = b""
            assert not answer.startswith(b"HTTP/1.1 200"), answer
    status, _, replies = https_post(server, certs.client_context(), HANDSHAKE)
    assert status == 200 and replies[0]["successful"] is True
    # Counted (and logged once, by the core's housekeeping), not silent.
    assert stats.tls_accepted - stats.tls_established - failed_before == 20


def test_client_refuses_an_expired_certificate(tmp_path: Path) -> None:
    ca = trustme.CA()
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
    leaf = ca.issue_cert("127.0.0.1", not_before=past - datetime.timedelta(days=30), not_after=past)
    pem = tmp_path / "expired.pem"
    leaf.private_key_and_cert_chain_pem.write_to_path(str(pem))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with running_server(ssl_certfile=str(pem)) as srv:
        with pytest.raises(ssl.SSLCertVerificationError, match="expired"):
            https_post(srv, context, HANDSHAKE)
        # The server keeps serving the ones that accept its certificate.
        lax = ssl.create_default_context()
        lax.check_hostname = False
        lax.verify_mode = ssl.CERT_NONE
        assert https_post(srv, lax, HANDSHAKE)[0] == 200


def test_client_certificates_required_with_ssl_ca_certs(certs: Certs, tmp_path: Path) -> None:
    clients = trustme.CA()
    ca_file = tmp_path / "clients.pem"
    clients.cert_pem.write_to_path(str(ca_file))
    with running_server(ssl_certfile=str(certs.server), ssl_ca_certs=str(ca_file)) as srv:
        anonymous = certs.client_context()
        with pytest.raises((ssl.SSLError, ConnectionResetError, OSError)):
            https_post(srv, anonymous, HANDSHAKE)
        known = certs.client_context()
        clients.issue_cert("client@example.com").configure_cert(known)
        assert https_post(srv, known, HANDSHAKE)[0] == 200


def test_cookie_attributes_and_their_rules() -> None:
    assert ServerOptions().cookie_attributes == "; Path=/; HttpOnly"
    assert ServerOptions(cookie_secure=True, cookie_same_site="Lax").cookie_attributes == (
        "; Path=/; HttpOnly; Secure; SameSite=Lax"
    )
    with pytest.raises(ValueError, match="cookie_same_site None needs a Secure cookie"):
        ServerOptions(cookie_same_site="None")
    with pytest.raises(ValueError, match="cookie_same_site must be Lax, Strict or None"):
        ServerOptions(cookie_same_site="lax")
    with pytest.raises(ValueError, match="ssl_keyfile and ssl_ca_certs need ssl_certfile"):
        ServerOptions(ssl_keyfile="key.pem")


def test_a_certificate_that_does_not_load_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate\n")
    for path in (bad, tmp_path / "missing.pem"):
        out = subprocess.run(
            [sys.executable, "-m", "engine", "serve", "--port", "0", "--ssl-certfile", str(path)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 2, out.stderr
        assert "cannot load the certificate" in out.stderr and str(path) in out.stderr


def test_a_clean_tls_close_is_quiet(
    server: BayeuxServer, certs: Certs, caplog: pytest.LogCaptureFixture
) -> None:
    # A client that ends its TLS session (close_notify) after a request: the
    # server sees the end of the stream and closes; nothing is logged.
    host, port = server.address
    before = len(server.connections)
    for _ in range(5):
        raw = socket.create_connection((host, port), timeout=5)
        tls = certs.client_context().wrap_socket(raw, server_hostname=host)
        body = json.dumps(HANDSHAKE).encode()
        tls.sendall(
            b"POST /cometd HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        assert b"200 OK" in tls.recv(65536)
        try:
            tls.unwrap().close()  # close_notify, then the TCP close
        except (ssl.SSLError, OSError):
            raw.close()  # (the server may close before its own close_notify is read)
    deadline = time.monotonic() + 5
    while len(server.connections) > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(server.connections) <= before
    errors = [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    assert not errors, [r.getMessage() for r in errors]
