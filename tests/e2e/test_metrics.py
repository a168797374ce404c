"""/metrics on --metrics-port: no token, histograms, process collectors, and
gauges kept as running totals that always equal a walk over the sessions."""

from __future__ import annotations

import asyncio
import socket
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from harness import running_server, start_server
from support import Browser, families, scrape, value

from engine.metrics import Histogram, WorkerAggregate
from engine.server import BayeuxServer


def test_metrics_port_needs_no_token_and_has_histograms_and_process_metrics() -> None:
    with running_server(metrics_port=0, admin_token="t0k") as server:
        assert server.metrics is not None
        url = server.metrics.url
        node = server.node_id
        listener = Browser(server).ready()
        listener.subscribe("/m/x")
        publisher = Browser(server).ready()
        listener.start_connect()  # held: the publish releases it
        time.sleep(0.1)
        assert publisher.publish("/m/x", 1).reply("/m/x")["successful"]
        events = [m for m in listener.finish_connect().messages if m["channel"] == "/m/x"]
        assert [e["data"] for e in events] == [1]
        for n in range(2, 5):  # queued: nobody connects
            assert publisher.publish("/m/x", n).reply("/m/x")["successful"]

        found = scrape(url)
        assert value(found, "bayeux_published", "bayeux_published_total", node=node) == 4
        assert value(found, "bayeux_handshakes", "bayeux_handshakes_total", node=node) == 2
        assert value(found, "bayeux_sessions", node=node) == 2
        assert value(found, "bayeux_queued_messages", node=node) == 3
        assert value(found, "bayeux_held_connects", node=node) == 0
        hs = "bayeux_handshake_duration_seconds"
        assert found[hs]["type"] == "histogram"
        assert value(found, hs, hs + "_count", node=node) == 2
        assert value(found, hs, hs + "_bucket", node=node, le="+Inf") == 2
        assert 0 < value(found, hs, hs + "_sum", node=node) < 5
        rq = "bayeux_request_duration_seconds"
        assert value(found, rq, rq + "_count", node=node, transport="long-polling") >= 6
        pw = "bayeux_publish_to_write_seconds"
        assert value(found, pw, pw + "_count", node=node) >= 1
        assert value(found, pw, pw + "_bucket", node=node, le="0.1") >= 1  # not a wait
        assert value(found, "process_cpu_seconds", "process_cpu_seconds_total") > 0
        assert value(found, "process_resident_memory_bytes") > 1e6
        assert "python_info" in found and "python_gc_objects_collected" in found

        # The same names behind the admin token on the main port.
        req = urllib.request.Request(
            server.url.replace("/cometd", "/metrics"), headers={"Authorization": "Bearer t0k"}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert set(families(resp.read().decode())) == set(found)

        # Only GET /metrics; a silent or oversized client is cut, not served.
        for path, method, status in (("/", "GET", 404), ("/metrics", "POST", 405)):
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(
                    urllib.request.Request(url.replace("/metrics", path), method=method), timeout=5
                )
            assert err.value.code == status
        host, port = url.split("//")[1].split("/")[0].rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20000)
            assert sock.recv(100) == b""  # closed, no answer
        assert scrape(url)  # still serving


def walk(server: BayeuxServer) -> dict[str, Any]:
    """What the running totals must equal, by walking every session (on the loop)."""

    async def count() -> dict[str, Any]:
        core = server.core
        by_transport: dict[str, int] = {}
        for s in core.sessions.values():
            by_transport[s.transport] = by_transport.get(s.transport, 0) + 1
        return {
            "queued": sum(len(s.queue or ()) for s in core.sessions.values()),
            "held": sum(s.hold is not None for s in core.sessions.values()),
            "by_transport": by_transport,
            "totals": (
                core.queued_total,
                core.held_total,
                {t: n for t, n in core.by_transport.items() if n},
            ),
        }

    loop = server.core.loop
    return asyncio.run_coroutine_threadsafe(count(), loop).result(10)


def assert_totals(server: BayeuxServer) -> None:
    seen = walk(server)
    assert seen["totals"] == (seen["queued"], seen["held"], seen["by_transport"]), seen


def test_running_totals_equal_a_walk_over_the_sessions() -> None:
    with running_server(max_queue=3, max_interval=400, timeout=1500) as server:
        subs = [Browser(server).ready() for _ in range(4)]
        for b in subs:
            b.subscribe("/t/*")
        pub = Browser(server).ready()
        for n in range(5):  # past max_queue=3: the oldest are dropped
            pub.publish("/t/a", n)
        assert_totals(server)
        assert walk(server)["queued"] == 4 * 3
        subs[0].connect()  # takes its queue
        subs[1].connect()
        subs[1].start_connect()  # held: nothing queued
        time.sleep(0.2)
        assert_totals(server)
        assert walk(server)["held"] == 1
        pub.publish("/t/b", "x")  # releases the held one, queues for the others
        subs[1].finish_connect()
        assert_totals(server)
        subs[2].send([subs[2].message("/meta/disconnect")])  # its queue is discarded
        assert_totals(server)
        time.sleep(1.5)  # subs[3] and pub expire (max_interval 400 ms)
        subs[0].connect(advice={"timeout": 0})
        assert_totals(server)
        assert server.core.stats.sessions_expired >= 1


def test_histogram_buckets_are_cumulative_with_inf_last() -> None:
    h = Histogram((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 3.0):
        h.observe(v)
    assert h.buckets() == [("0.1", 2), ("1.0", 3), ("+Inf", 4)]
    assert h.count == 4 and h.total == pytest.approx(3.65)


WORKER = """\
# HELP bayeux_published_total published since start
# TYPE bayeux_published_total counter
bayeux_published_total{{node="n{i}"}} {published}
# HELP bayeux_sessions Bayeux sessions on this node
# TYPE bayeux_sessions gauge
bayeux_sessions{{node="n{i}"}} {sessions}
# HELP bayeux_cluster_sessions sessions of each live node
# TYPE bayeux_cluster_sessions gauge
bayeux_cluster_sessions{{node="other"}} 7.0
# HELP process_start_time_seconds Start time
# TYPE process_start_time_seconds gauge
process_start_time_seconds {start}
# HELP bayeux_handshake_duration_seconds handshake
# TYPE bayeux_handshake_duration_seconds histogram
bayeux_handshake_duration_seconds_bucket{{le="0.1",node="n{i}"}} {published}
bayeux_handshake_duration_seconds_bucket{{le="+Inf",node="n{i}"}} {published}
bayeux_handshake_duration_seconds_count{{node="n{i}"}} {published}
bayeux_handshake_duration_seconds_sum{{node="n{i}"}} 0.5
"""


def test_aggregate_sums_keeps_retired_counters_and_takes_cluster_views_once() -> None:
    agg = WorkerAggregate("sup")
    agg.seen(1, 100, WORKER.format(i=1, published=10, sessions=3, start=50))
    agg.seen(2, 200, WORKER.format(i=2, published=5, sessions=2, start=40))
    out = families(agg.render([1, 2]).decode())
    assert value(out, "bayeux_published", "bayeux_published_total", node="sup") == 15
    assert value(out, "bayeux_sessions", node="sup") == 5
    assert value(out, "bayeux_cluster_sessions", node="other") == 7  # not 14
    assert value(out, "process_start_time_seconds") == 40
    hs = "bayeux_handshake_duration_seconds"
    assert value(out, hs, hs + "_bucket", node="sup", le="+Inf") == 15
    # Worker 2 restarts (a new pid, its counters from zero): totals do not fall.
    agg.retire(2)
    out = families(agg.render([1]).decode())
    assert value(out, "bayeux_published", "bayeux_published_total", node="sup") == 15
    assert value(out, "bayeux_sessions", node="sup") == 3  # its gauges left with it
    agg.seen(2, 201, WORKER.format(i=2, published=1, sessions=1, start=60))
    out = families(agg.render([1, 2]).decode())
    assert value(out, "bayeux_published", "bayeux_published_total", node="sup") == 16
    assert value(out, "bayeux_sessions", node="sup") == 4
    # A new pid seen without an exit noticed first is retired the same way.
    agg.seen(2, 202, WORKER.format(i=2, published=2, sessions=1, start=70))
    out = families(agg.render([1, 2]).decode())
    assert value(out, "bayeux_published", "bayeux_published_total", node="sup") == 18


def test_metrics_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(Exception) as err:
            start_server("--metrics-port", str(port), ready_timeout=10)
        assert "address already in use" in str(err.value).lower()


class Tripwire:
    """Put among the sessions: whatever walks them and looks at one fails."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"a scrape walked the sessions (read .{name})")


def test_a_scrape_reads_totals_and_never_walks_the_sessions() -> None:
    with running_server(metrics_port=0, admin_token="t") as server:
        browsers = [Browser(server).ready() for _ in range(3)]
        for b in browsers:
            b.subscribe("/w/x")
        browsers[0].publish("/w/x", 1)
        loop = server.core.loop

        def tripwire(on: bool) -> None:
            async def change() -> None:
                if on:
                    server.core.sessions["tripwire"] = Tripwire()  # type: ignore[assignment]
                else:
                    del server.core.sessions["tripwire"]

            asyncio.run_coroutine_threadsafe(change(), loop).result(5)

        tripwire(True)
        try:
            assert server.metrics is not None
            found = scrape(server.metrics.url)
            node = server.node_id
            assert value(found, "bayeux_sessions", node=node) == 4  # (the tripwire counted)
            assert value(found, "bayeux_queued_messages", node=node) == 2
            status = asyncio.run_coroutine_threadsafe(_status(server), loop).result(5)
            assert status["sessions_by_transport"] == {"long-polling": 3}  # /stats too
        finally:
            tripwire(False)


async def _status(server: BayeuxServer) -> dict[str, Any]:
    return server.status()


def test_scrapers_past_their_bound_are_closed_counted_and_logged_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import engine.metrics

    monkeypatch.setattr(engine.metrics, "MAX_SCRAPERS", 1)
    with running_server(metrics_port=0) as server:
        assert server.metrics is not None
        host, port = server.metrics.url.split("//")[1].split("/")[0].rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5) as holder:
            holder.sendall(b"GET /metrics HTTP/1.1\r\n")  # and nothing more: held
            time.sleep(0.2)
            for _ in range(3):
                with socket.create_connection((host, int(port)), timeout=5) as extra:
                    assert extra.recv(100) == b""  # closed, no answer
        assert server.metrics.refused == 3
        lines = [r for r in caplog.records if "more than 1 connections" in r.getMessage()]
        assert len(lines) == 1
        for _ in range(50):  # the holder gone (its close seen by the server), it serves again
            if server.metrics.active == 0:
                break
            time.sleep(0.02)
        assert scrape(server.metrics.url)
