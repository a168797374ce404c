"""Under --workers 4 the supervisor's one metrics endpoint reports the sum of
what the workers did, and stays monotonic through a worker's restart."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
from redis_server import RedisServer, require_redis_server

require_redis_server()

from cluster_support import handshake_node, node_of, post, wait_until, worker_pids  # noqa: E402
from harness import ROOT, free_port, start_server  # noqa: E402
from support import scrape, value  # noqa: E402

pytestmark = pytest.mark.timeout(120)

WORKERS = 4
CLIENTS = 24
PUBLISHES_EACH = 3


DASHBOARD = ROOT / "deploy" / "grafana" / "bayeux-engine.json"
METRIC = re.compile(r"\b((?:bayeux|process|python)_[a-z0-9_]+)\b")


def check_dashboard(found: dict[str, Any]) -> None:
    """Every query of the Grafana dashboard names series this server exports."""
    exported = {
        key.split(",", 1)[0] for family in found.values() for key in family if key != "type"
    }
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    queries += [
        v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"
    ]
    assert len(queries) > 20
    for query in queries:
        names = METRIC.findall(query)
        assert names, query
        missing = [n for n in names if n not in exported]
        assert not missing, f"{query}: not exported: {missing}"


@pytest.fixture(scope="module")
def redis_srv() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


def test_one_endpoint_sums_the_workers_and_survives_a_restart(redis_srv: RedisServer) -> None:
    mport = free_port()
    sup = start_server(
        "--workers", str(WORKERS), "--broker", redis_srv.url, "--node-id", "mw",
        "--metrics-port", str(mport), "--max-interval", "60000", "--timeout", "1500",
    )  # fmt: skip
    url = f"http://127.0.0.1:{mport}/metrics"
    names = [f"mww{i}" for i in range(1, WORKERS + 1)]
    try:
        seen: dict[str, int] = {}
        conns = []
        for _ in range(CLIENTS):  # each on a new connection: spread by the kernel
            conn, client_id, cookie = handshake_node(sup.port)
            node = node_of(client_id, names)
            seen[node] = seen.get(node, 0) + 1
            for n in range(PUBLISHES_EACH):
                msg = {"channel": "/mw/x", "clientId": client_id, "data": n}
                assert post(conn, cookie, [msg])[0]["successful"]
            conns.append(conn)
        assert len(seen) >= 2, seen  # (24 connections on one of 4 workers: ~1e-14)

        found = scrape(url)
        published = CLIENTS * PUBLISHES_EACH
        assert value(found, "bayeux_published", "bayeux_published_total", node="mw") == published
        assert value(found, "bayeux_handshakes", "bayeux_handshakes_total", node="mw") == CLIENTS
        assert value(found, "bayeux_sessions", node="mw") == CLIENTS
        assert value(found, "bayeux_workers", node="mw") == WORKERS
        hs = "bayeux_handshake_duration_seconds"
        assert value(found, hs, hs + "_count", node="mw") == CLIENTS
        assert value(found, "process_cpu_seconds", "process_cpu_seconds_total") > 0
        assert not [k for k in found["bayeux_published"] if "mww" in k]  # one series, summed
        check_dashboard(found)

        # SIGKILL the worker that has the most sessions; scrape all along its
        # restart: no failure, no counter going down.
        busiest = max(seen, key=lambda n: seen[n])
        index = int(busiest.removeprefix("mww"))
        pids = worker_pids(sup)
        os.kill(pids[index], signal.SIGKILL)
        restarted = re.compile(rf"worker {index} \(node {busiest}, pid \d+\) restarted and ready")
        last = published
        sessions_seen = set()
        deadline = time.monotonic() + 30
        while restarted.search(sup.stderr) is None and time.monotonic() < deadline:
            now = scrape(url)
            total = value(now, "bayeux_published", "bayeux_published_total", node="mw")
            assert total >= last
            last = total
            sessions_seen.add(value(now, "bayeux_sessions", node="mw"))
            time.sleep(0.05)
        assert restarted.search(sup.stderr), sup.stderr[-3000:]
        wait_until(
            lambda: value(scrape(url), "bayeux_workers", node="mw") == WORKERS,
            what="the restarted worker in the metrics",
        )
        after = scrape(url)
        assert value(after, "bayeux_published", "bayeux_published_total", node="mw") == published
        assert value(after, "bayeux_handshakes", "bayeux_handshakes_total", node="mw") == CLIENTS
        # Its sessions died with it: the gauge is the others' sum.
        assert value(after, "bayeux_sessions", node="mw") == CLIENTS - seen[busiest]
        restarts = "bayeux_worker_restarts"
        assert value(after, restarts, restarts + "_total", node="mw") == 1
        for conn in conns:
            conn.close()
    finally:
        sup.stop()
    assert sup.returncode == 0, sup.describe()
