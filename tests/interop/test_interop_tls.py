"""The official CometD JavaScript client (Node, cometd-nodejs-client) over
https:// and wss://, the server's certificate made at test time (trustme) and
trusted by Node through NODE_EXTRA_CA_CERTS."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from harness import ServerProcess, ServerStartError, start_server
from interop import node_clients
from interop.helpers import run_js


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    tmp = tmp_path_factory.mktemp("tls-interop")
    ca = trustme.CA()
    ca_path = tmp / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    pem = tmp / "server.pem"
    ca.issue_cert("127.0.0.1", "localhost").private_key_and_cert_chain_pem.write_to_path(str(pem))
    try:
        server = start_server("--ssl-certfile", str(pem), target="engine")
    except ServerStartError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server, ca_path
    finally:
        server.assert_stopped_cleanly()


@pytest.mark.parametrize("transport", ["long-polling", "websocket"])
def test_subscribe_publish_over_tls(
    tls_server: tuple[ServerProcess, Path],
    node_bin: str,
    transport: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, ca_path = tls_server
    assert server.url.startswith("https://")
    monkeypatch.setenv("NODE_EXTRA_CA_CERTS", str(ca_path))
    r = run_js(node_bin, server.url, "subscribe_publish", transport)
    assert r["transport"] == transport, r
    node_clients.check_subscribe_publish_exact(r)


def test_untrusted_certificate_is_refused_by_the_client(
    tls_server: tuple[ServerProcess, Path], node_bin: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, _ = tls_server
    monkeypatch.delenv("NODE_EXTRA_CA_CERTS", raising=False)
    r = run_js(node_bin, server.url, "subscribe_publish", "long-polling", expect_ok=False)
    assert not r["ok"], r
