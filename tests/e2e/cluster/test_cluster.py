"""Scale-out: engine processes that share publishes through a real redis-server.

Every test here starts `redis-server` (tests/redis_server.py: loopback, a free
port, a temp dir) and engine processes (`python -m engine serve --broker
redis://...`), and talks to them with raw HTTP long-polling clients.  Without
redis-server installed the module is skipped, unless CI is set (then it fails).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis_server import RedisServer, require_redis_server

require_redis_server()

from cluster_support import (  # noqa: E402
    Listener,
    broker_stats,
    handshake_node,
    node_of,
    node_stub,
    post,
    redis_client,
    subscribed,
    wait_until,
    worker_pids,
)
from harness import ROOT, ServerProcess, start_server  # noqa: E402
from support import Browser  # noqa: E402

from engine.cluster.redis_broker import glob_escape, redis_subscription  # noqa: E402
from engine.options import ServerOptions  # noqa: E402

pytestmark = pytest.mark.timeout(90)

NODE_ARGS = ("--timeout", "1500", "--log-level", "info")


# ---------------------------------------------------------------- helpers


# --------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def redis_srv() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def nodes(redis_srv: RedisServer) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    a = start_server("--broker", redis_srv.url, "--node-id", "nodeA", *NODE_ARGS)
    try:
        b = start_server("--broker", redis_srv.url, "--node-id", "nodeB", *NODE_ARGS)
    except BaseException:
        a.stop()
        raise
    try:
        yield a, b
    finally:
        a.assert_stopped_cleanly()
        b.assert_stopped_cleanly()


# ------------------------------------------------------------------ units


def test_redis_names_for_bayeux_subscriptions() -> None:
    assert redis_subscription("bayeux:0:", "/a/b") == (False, b"bayeux:0:/a/b")
    assert redis_subscription("bayeux:0:", "/a/*") == (True, b"bayeux:0:/a/*")
    assert redis_subscription("bayeux:0:", "/a/**") == (True, b"bayeux:0:/a/*")
    assert redis_subscription("bayeux:0:", "/**") == (True, b"bayeux:0:/*")
    assert redis_subscription("bayeux:0:", "/*") == (True, b"bayeux:0:/*")
    # Characters special in Redis globs are escaped (Bayeux names cannot hold them).
    assert glob_escape("/a?[b]\\*") == "/a\\?\\[b\\]\\\\\\*"
    assert redis_subscription("p[1]:", "/x/*") == (True, b"p\\[1\\]:/x/*")


def test_broker_option_is_validated() -> None:
    assert ServerOptions(broker="redis://127.0.0.1:6379/0").broker
    with pytest.raises(ValueError, match="broker"):
        ServerOptions(broker="http://127.0.0.1:6379")
    with pytest.raises(ValueError, match="workers"):
        ServerOptions(workers=0)


# ----------------------------------------------------------- two nodes


def test_publish_reaches_other_node_exact_and_wildcard_once(
    nodes: tuple[ServerProcess, ServerProcess], redis_srv: RedisServer
) -> None:
    a, b = nodes
    r = redis_client(redis_srv)
    exact = Listener(b.port, "/a/b")
    star = Listener(b.port, "/a/*")
    deep = Listener(b.port, "/a/**")
    every = Listener(b.port, "/a/b", "/a/*", "/**")  # three ways to match /a/b
    local = Listener(a.port, "/a/b")
    listeners = [exact, star, deep, every, local]
    pub_a = Browser(node_stub(a.port)).ready()
    pub_b = Browser(node_stub(b.port)).ready()
    try:
        # One Redis SUBSCRIBE for /a/b (two local subscribers), one PSUBSCRIBE
        # for /a/* and /a/** together, one for /**.
        wait_until(subscribed(r, "nodeB", 1, 2), what="nodeB's redis subscriptions")
        wait_until(subscribed(r, "nodeA", 1, 0), what="nodeA's redis subscriptions")

        for channel, data in (("/a/b", 1), ("/a/b/c", 2), ("/x", 3), ("/a/b", "end")):
            assert pub_a.publish(channel, data).reply(channel)["successful"]
        for listener in listeners:
            listener.wait_for(lambda d: "end" in d)
        time.sleep(0.3)  # a duplicate would arrive right behind
        assert exact.data() == [1, "end"]
        assert star.data() == [1, "end"]
        assert deep.data() == [1, 2, "end"]
        assert every.data() == [1, 2, 3, "end"]
        assert local.data() == [1, "end"]  # delivered locally, its echo ignored

        # And the other way round.
        assert pub_b.publish("/a/b", "from B").reply("/a/b")["successful"]
        for listener in (exact, every, local):
            listener.wait_for(lambda d: "from B" in d)
        time.sleep(0.3)
        assert local.data() == [1, "end", "from B"]
        assert exact.data() == [1, "end", "from B"]
        assert every.data() == [1, 2, 3, "end", "from B"]
    finally:
        for listener in listeners:
            listener.close()
        pub_a.close()
        pub_b.close()
    # The last local subscriber gone: nodeB unsubscribed in Redis too.
    wait_until(subscribed(r, "nodeB", 0, 0), what="nodeB's redis unsubscriptions")


def test_unsubscribe_on_other_node_stops_delivery(
    nodes: tuple[ServerProcess, ServerProcess], redis_srv: RedisServer
) -> None:
    a, b = nodes
    r = redis_client(redis_srv)
    listener = Listener(b.port, "/u/x", "/u/ctl")
    pub = Browser(node_stub(a.port)).ready()
    try:

        def numsub(channel: str) -> int:
            return int(dict(r.pubsub_numsub(f"bayeux:0:{channel}"))[f"bayeux:0:{channel}".encode()])

        wait_until(lambda: numsub("/u/x") == 1 and numsub("/u/ctl") == 1)
        assert pub.publish("/u/x", 1).reply("/u/x")["successful"]
        listener.wait_for(lambda d: d == [1])

        reply = listener.browser.unsubscribe("/u/x").reply("/meta/unsubscribe")
        assert reply["successful"], reply
        wait_until(lambda: numsub("/u/x") == 0, what="UNSUBSCRIBE in redis")
        assert pub.publish("/u/x", 2).reply("/u/x")["successful"]
        assert pub.publish("/u/ctl", "end").reply("/u/ctl")["successful"]
        listener.wait_for(lambda d: "end" in d)
        time.sleep(0.2)
        assert listener.data() == [1, "end"]
    finally:
        listener.close()
        pub.close()


# ------------------------------------------------------ redis restarted


def test_redis_restart_during_publish_stream() -> None:
    server = RedisServer().start()
    r = redis_client(server)
    c = d = None
    listeners: list[Listener] = []
    try:
        c = start_server("--broker", server.url, "--node-id", "nodeC", *NODE_ARGS)
        d = start_server("--broker", server.url, "--node-id", "nodeD", *NODE_ARGS)
        remote = Listener(d.port, "/s/x")
        local = Listener(c.port, "/s/x")
        listeners = [remote, local]
        wait_until(subscribed(r, "nodeD", 1, 0), what="nodeD subscribed")
        wait_until(subscribed(r, "nodeC", 1, 0), what="nodeC subscribed")

        sent: list[tuple[int, float]] = []
        stop = threading.Event()
        failures: list[BaseException] = []
        pub = Browser(node_stub(c.port)).ready()

        def publish_stream() -> None:
            n = 0
            try:
                while not stop.is_set():
                    sent.append((n, time.monotonic()))
                    assert pub.publish("/s/x", n).reply("/s/x")["successful"]
                    n += 1
                    time.sleep(0.01)
            except BaseException as exc:
                failures.append(exc)

        publisher = threading.Thread(target=publish_stream, daemon=True)
        publisher.start()
        time.sleep(0.8)
        t_kill = time.monotonic()
        server.kill()
        time.sleep(1.0)  # the outage: nodes go on serving local traffic
        server.start()
        back: dict[str, float] = {}

        def resubscribed() -> bool:
            for node in ("nodeC", "nodeD"):
                if node not in back and subscribed(r, node, 1, 0)():
                    back[node] = time.monotonic()
            return len(back) == 2

        t_back = wait_until(resubscribed, timeout=10, what="both nodes resubscribed")
        time.sleep(1.0)  # publishing goes on after the restart
        stop.set()
        publisher.join(10)
        assert not failures, failures
        last = sent[-1][0]
        assert pub.publish("/s/x", "end").reply("/s/x")["successful"]
        pub.close()
        remote.wait_for(lambda data: "end" in data)
        local.wait_for(lambda data: "end" in data)
        time.sleep(0.2)

        published = {n for n, _ in sent}
        got_remote = [n for n in remote.data() if n != "end"]
        got_local = [n for n in local.data() if n != "end"]
        # Local traffic never stopped: everything, once, in order.
        assert got_local == list(range(last + 1))
        # Remote: each message at most once, in order.
        assert got_remote == sorted(set(got_remote))
        missing = published - set(got_remote)
        when = dict(sent)
        during = {n for n, t in sent if t_kill - 0.25 <= t <= t_back + 0.25}
        # What nodeD could miss is what was published during the outage: kept
        # by nodeC and sent on its new connection, it is lost only if nodeD
        # resubscribed after nodeC's short wait for the others.
        assert missing <= during, sorted((n, when[n] - t_kill) for n in missing - during)
        after = [n for n, t in sent if t > t_back + 0.25]
        assert after and set(after) <= set(got_remote)

        # nodeC kept what it could not send and said so; nodeD counted
        # exactly what it missed (a gap in nodeC's sequence on the channel).
        c.stop()
        d.stop()
        match = re.search(
            r"node nodeC: reconnected to redis .* resubscribed 1 channel\(s\) and 0 pattern\(s\); "
            r"(\d+) message\(s\) kept meanwhile are sent now",
            c.stderr,
        )
        assert match, c.stderr
        assert int(match.group(1)) > 0
        c_stats, d_stats = broker_stats(c), broker_stats(d)
        assert c_stats["published_lost"] == 0, c_stats
        assert d_stats["gaps"] == len(missing), (d_stats, sorted(missing))
        assert d_stats["received_again"] == 0 or c_stats["resent"] > 0, (c_stats, d_stats)
        assert "node nodeC: redis connection lost" in c.stderr
        assert re.search(r"node nodeD: reconnected to redis .* resubscribed 1 channel", d.stderr)
        assert c.returncode == 0 and d.returncode == 0, (c.describe(), d.describe())
    finally:
        for listener in listeners:
            listener.close()
        for node in (c, d):
            if node is not None:
                node.stop()
        server.stop()


def test_node_starts_while_redis_is_down_and_connects_later() -> None:
    server = RedisServer()  # a port, nothing listening on it yet
    node = None
    try:
        node = start_server("--broker", server.url, "--node-id", "nodeE", *NODE_ARGS)
        assert "node nodeE: redis at" in node.stderr and "not reachable yet" in node.stderr
        listener = Listener(node.port, "/e/x")  # local traffic is served meanwhile
        pub = Browser(node_stub(node.port)).ready()
        try:
            assert pub.publish("/e/x", 1).reply("/e/x")["successful"]
            listener.wait_for(lambda d: d == [1])
            server.start()
            r = redis_client(server)
            wait_until(subscribed(r, "nodeE", 1, 0), timeout=10, what="nodeE subscribed")
        finally:
            listener.close()
            pub.close()
        node.assert_stopped_cleanly()
        # The publish made before Redis was there waited for it, and left.
        assert re.search(
            r"node nodeE: connected to redis at \S+ after [\d.]+ s; subscribed 1 channel\(s\) "
            r"and 0 pattern\(s\); 1 message\(s\) kept meanwhile are sent now",
            node.stderr,
        ), node.stderr
        stats = broker_stats(node)
        assert stats["forwarded"] == 1 and stats["published_lost"] == 0, stats
    finally:
        if node is not None:
            node.stop()
        server.stop()


# ------------------------------------------------------------- workers


def nodes_seen(port: int, names: list[str], tries: int = 40) -> set[str]:
    seen = set()
    for _ in range(tries):
        conn, client_id, _cookie = handshake_node(port)
        conn.close()
        seen.add(node_of(client_id, names))
        if seen == set(names):
            break
    return seen


def test_workers_share_the_port_restart_and_drain(redis_srv: RedisServer) -> None:
    r = redis_client(redis_srv)
    sup = start_server("--workers", "2", "--broker", redis_srv.url, "--node-id", "wk", *NODE_ARGS)
    try:
        assert sup.ready_line == f"engine serving {sup.url} (2 workers)", sup.ready_line
        names = ["wkw1", "wkw2"]
        # SO_REUSEPORT spreads new connections over both workers.
        assert nodes_seen(sup.port, names) == set(names)

        # A publish on one worker reaches a subscriber on the other (via Redis).
        by_node: dict[str, tuple[http.client.HTTPConnection, str, str]] = {}
        for _ in range(60):
            conn, client_id, cookie = handshake_node(sup.port)
            name = node_of(client_id, names)
            if name in by_node:
                conn.close()
            else:
                by_node[name] = (conn, client_id, cookie)
            if len(by_node) == 2:
                break
        assert len(by_node) == 2
        (sconn, sid, scookie), (pconn, pid_, pcookie) = by_node["wkw1"], by_node["wkw2"]
        connect = {"channel": "/meta/connect", "clientId": sid, "connectionType": "long-polling"}
        post(sconn, scookie, [{**connect, "advice": {"timeout": 0}}])
        sub = {"channel": "/meta/subscribe", "clientId": sid, "subscription": "/w/x"}
        assert post(sconn, scookie, [sub])[0]["successful"]
        wait_until(subscribed(r, "wkw1", 1, 0), what="worker 1 subscribed in redis")
        reply = post(pconn, pcookie, [{"channel": "/w/x", "clientId": pid_, "data": "hi"}])
        assert reply[0]["successful"], reply
        events = [m for m in post(sconn, scookie, [connect]) if m["channel"] == "/w/x"]
        assert [e["data"] for e in events] == ["hi"]
        for conn, _, _ in by_node.values():
            conn.close()

        # SIGKILL a worker: the supervisor starts it again.
        pids = worker_pids(sup)
        assert set(pids) == {1, 2}, sup.stderr
        killed = pids[1]
        os.kill(killed, signal.SIGKILL)
        wait_until(
            lambda: (
                re.search(r"worker 1 \(node wkw1, pid \d+\) restarted and ready", sup.stderr)
                is not None
            ),
            timeout=15,
            what="worker 1 restarted",
        )
        assert re.search(rf"worker 1 \(node wkw1, pid {killed}\) exited with code -9", sup.stderr)
        assert worker_pids(sup)[1] != killed
        assert nodes_seen(sup.port, names) == set(names)
        live = list(worker_pids(sup).values())
    finally:
        sup.assert_stopped_cleanly()
    # SIGTERM drained and stopped every worker.
    for pid in live:
        wait_until(lambda pid=pid: not _alive(pid), timeout=5, what=f"worker {pid} gone")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def test_workers_without_broker_is_refused() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "engine", "serve", "--port", "0", "--workers", "2"],
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2, result
    assert "--broker" in result.stderr, result.stderr
    assert "engine serving" not in result.stdout


def test_workers_refuse_a_port_in_use() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "engine", "serve", "--port", str(port), "--workers", "2"]
            + ["--broker", "redis://127.0.0.1:1/0"],
            cwd=str(ROOT),
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 1, result
    assert "address already in use" in result.stderr.lower(), result.stderr
    assert "engine serving" not in result.stdout


def test_cluster_status_sums_every_node() -> None:
    """/stats and /metrics report the cluster's sessions with per-node detail."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    token = "cluster-status"
    with RedisServer() as redis_srv:
        a = start_server("--broker", redis_srv.url, "--node-id", "csA", "--admin-token", token)
        b = start_server("--broker", redis_srv.url, "--node-id", "csB", "--admin-token", token)
        try:
            for port, subscription in ((a.port, "/cs/*"), (b.port, "/cs/*"), (b.port, "/x")):
                conn, client_id, cookie = handshake_node(port)
                post(
                    conn,
                    cookie,
                    [
                        {
                            "channel": "/meta/subscribe",
                            "clientId": client_id,
                            "subscription": subscription,
                        }
                    ],
                )

            def stats(port: int, path: str = "/stats") -> bytes:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {token}"}
                )
                with urllib.request.urlopen(request, timeout=5) as response:
                    return response.read()

            def both_counted() -> bool:
                cluster = json.loads(stats(a.port))["cluster"]
                return cluster["totals"]["sessions"] == 3 and cluster["totals"]["nodes"] == 2

            wait_until(both_counted, timeout=8, what="both nodes in node A's cluster status")
            cluster = json.loads(stats(a.port))["cluster"]
            assert cluster["nodes"]["csA"]["sessions"] == 1
            assert cluster["nodes"]["csB"]["sessions"] == 2
            assert cluster["nodes"]["csB"]["patterns"] == {"/cs/*": 1, "/x": 1}
            families = {
                f.name: f
                for f in text_string_to_metric_families(stats(b.port, "/metrics").decode())
            }
            per_node = {
                s.labels["node"]: s.value for s in families["bayeux_cluster_sessions"].samples
            }
            assert per_node == {"csA": 1, "csB": 2}
        finally:
            a.stop()
            b.stop()


def test_message_too_big_for_redis_pubsub_stays_local() -> None:
    """A message over Redis's pub/sub output buffer limit would make Redis cut
    every subscribing node's connection; it is delivered locally only, counted
    and logged, and the nodes' links stay up."""
    import urllib.request

    token = "too-big"
    with RedisServer() as redis_srv:
        r = redis_client(redis_srv)
        r.config_set("client-output-buffer-limit", "pubsub 1mb 1mb 0")
        args = ("--broker", redis_srv.url, "--max-message-size", "4000000", "--admin-token", token)
        a = start_server(*args, "--node-id", "bigA")
        b = start_server(*args, "--node-id", "bigB")
        try:
            local = Listener(a.port, "/big", "/small")
            remote = Listener(b.port, "/big", "/small")
            wait_until(subscribed(r, "bigB", 2, 0), what="node B subscribed in Redis")
            publisher = Browser(node_stub(a.port)).ready()
            big = "x" * 1_500_000
            assert publisher.publish("/big", big).reply("/big")["successful"]
            assert publisher.publish("/small", 1).reply("/small")["successful"]
            local.wait_for(lambda data: data == [big, 1])
            remote.wait_for(lambda data: data == [1])  # the big one stayed on node A

            request = urllib.request.Request(
                f"http://127.0.0.1:{a.port}/stats", headers={"Authorization": f"Bearer {token}"}
            )
            with urllib.request.urlopen(request, timeout=5) as response:
                broker = json.loads(response.read())["broker"]
            assert broker["too_big"] == 1
            assert broker["max_message_bytes"] == 512 * 1024
            assert "for pub/sub" in a.stderr
            local.close()
            remote.close()
        finally:
            a.stop()
            b.stop()


def test_worker_command_lines_hold_no_secrets(redis_srv: RedisServer) -> None:
    """`ps` shows command lines to every user: the workers' options (a Redis
    password, the admin token) travel in their environment instead."""
    process = start_server(
        "--workers", "2", "--broker", redis_srv.url, "--admin-token", "s3cr3t-admin"
    )
    try:
        pids = worker_pids(process)
        assert len(pids) == 2
        for pid in pids.values():
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            assert b"s3cr3t-admin" not in cmdline and b"redis://" not in cmdline, cmdline
        # The workers did get the options: the admin endpoints answer.
        import urllib.request

        request = urllib.request.Request(
            f"http://127.0.0.1:{process.port}/stats",
            headers={"Authorization": "Bearer s3cr3t-admin"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert json.loads(response.read())["node"].endswith(("w1", "w2"))
    finally:
        process.stop()
