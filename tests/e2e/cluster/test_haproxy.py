"""Three engine nodes behind HAProxy in round-robin, non-sticky mode, with the
official CometD JavaScript client going through it.

HAProxy balances every HTTP request on its own (no cookie, no source hash),
so a long-polling client's requests land on any node and are forwarded to
the node that owns the session; a WebSocket stays on the node it reached.
The HAProxy configuration is deploy/proxies/haproxy/haproxy.cfg (see
tests/e2e/proxies/ for it and the other proxies).
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator

import pytest
from cluster_support import require_haproxy
from e2e.proxies.proxy_support import KINDS, RunningProxy
from harness import ServerProcess, start_server
from interop.helpers import describe_js_failure, run_js
from redis_server import RedisServer

NODES = ("hpA", "hpB", "hpC")
TOKEN = "haproxy-test"


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[str, list[ServerProcess]]]:
    require_haproxy()
    with RedisServer() as redis:
        nodes: list[ServerProcess] = []
        proxy: RunningProxy | None = None
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
            # deploy/proxies/haproxy/haproxy.cfg, its timeouts at 60 s.
            proxy = RunningProxy(KINDS["haproxy"], [node.port for node in nodes], 60)
            yield proxy.url, nodes
        finally:
            if proxy is not None:
                proxy.stop()
            for node in nodes:
                node.stop()


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
