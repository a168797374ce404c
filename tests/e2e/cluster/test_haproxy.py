"""Three engine nodes behind HAProxy in round-robin, non-sticky mode, with the
official CometD JavaScript client going through it.

HAProxy balances every HTTP request on its own (no cookie, no source hash),
so a long-polling client's requests land on any node and are forwarded to
the node that owns the session; a WebSocket stays on the node it reached.
The HAProxy settings are those the README recommends for Bayeux.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_support import require_haproxy
from harness import ServerProcess, start_server
from interop.helpers import describe_js_failure, run_js
from redis_server import RedisServer, free_port

NODES = ("hpA", "hpB", "hpC")
TOKEN = "haproxy-test"

HAPROXY_CFG = """\
global
    maxconn 4096

defaults
    mode http
    timeout connect 5s
    # Longer than the Bayeux timeout, so held connects are never cut.
    timeout client 60s
    timeout server 60s
    # An upgraded WebSocket lives as long as the client keeps it.
    timeout tunnel 1h
    option http-server-close

frontend bayeux
    bind 127.0.0.1:{port}
    default_backend engines

backend engines
    balance roundrobin
{servers}
"""


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[str, list[ServerProcess]]]:
    haproxy = require_haproxy()
    with RedisServer() as redis:
        nodes: list[ServerProcess] = []
        proxy: subprocess.Popen[bytes] | None = None
        workdir = Path(tempfile.mkdtemp(prefix="engine-haproxy-"))
        try:
            for name in NODES:
                nodes.append(
                    start_server(
                        "--broker",
                        redis.url,
                        "--node-id",
                        name,
                        "--timeout",
                        "3000",
                        "--admin-token",
                        TOKEN,
                    )
                )
            port = free_port()
            servers = "\n".join(
                f"    server {name} 127.0.0.1:{node.port}"
                for name, node in zip(NODES, nodes, strict=True)
            )
            config = workdir / "haproxy.cfg"
            config.write_text(HAPROXY_CFG.format(port=port, servers=servers))
            check = subprocess.run([haproxy, "-c", "-f", str(config)], capture_output=True)
            assert check.returncode == 0, check.stderr.decode()
            proxy = subprocess.Popen([haproxy, "-db", "-f", str(config)], stderr=subprocess.PIPE)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    time.sleep(0.05)
            yield f"http://127.0.0.1:{port}/cometd", nodes
        finally:
            if proxy is not None:
                proxy.terminate()
                proxy.wait(10)
            for node in nodes:
                node.stop()
            shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.parametrize("transport", ["long-polling", "websocket"])
@pytest.mark.parametrize("scenario", ["two_clients", "wildcard", "batch", "unsubscribe"])
def test_cometd_client_through_round_robin_haproxy(
    cluster: tuple[str, list[ServerProcess]], node_bin: str, transport: str, scenario: str
) -> None:
    url, _ = cluster
    result = run_js(node_bin, url, scenario, transport, expect_ok=False)
    assert result["ok"], describe_js_failure(result)
    assert result["transport"] == transport


def test_long_polling_requests_really_spread_over_the_nodes(
    cluster: tuple[str, list[ServerProcess]], node_bin: str
) -> None:
    url, nodes = cluster

    def forwarded() -> list[int]:
        counts = []
        for node in nodes:
            request = urllib.request.Request(
                f"http://127.0.0.1:{node.port}/stats", headers={"Authorization": f"Bearer {TOKEN}"}
            )
            with urllib.request.urlopen(request, timeout=5) as response:
                counts.append(json.loads(response.read())["forwarding"]["forwarded"])
        return counts

    before = forwarded()
    result = run_js(node_bin, url, "idle", "long-polling", extra=("--duration", "2500"))
    assert result["ok"], describe_js_failure(result)
    after = forwarded()
    # Round-robin sent the session's requests to the nodes that do not own
    # it, which forwarded them to the owner: at least two nodes forwarded.
    assert sum(1 for b, a in zip(before, after, strict=True) if a > b) >= 2, (before, after)
