"""The server HTTP API on a two-node cluster over a real Redis: a call on any
node acts cluster-wide (publish, idempotency, deliver, disconnect, counts),
with the official CometD JavaScript client as the subscriber."""

from __future__ import annotations

import http.client
import json
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis_server import RedisServer, require_redis_server

require_redis_server()

from cluster_support import node_stub, wait_until  # noqa: E402
from harness import ServerProcess, start_server  # noqa: E402
from interop.helpers import describe_js_failure, run_js  # noqa: E402
from support import Browser  # noqa: E402

KEY = "cluster-api-key"


def api(port: int, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    data = None if body is None else json.dumps(body).encode()
    conn.request(method, "/api/" + path, body=data, headers={"X-API-Key": KEY})
    resp = conn.getresponse()
    answer = json.loads(resp.read())
    conn.close()
    return resp.status, answer


@pytest.fixture(scope="module")
def nodes() -> Iterator[tuple[ServerProcess, ServerProcess]]:
    with RedisServer() as redis:
        started = [
            start_server(
                "--broker", redis.url, "--node-id", name, "--api-key", KEY, "--timeout", "3000"
            )
            for name in ("apiA", "apiB")
        ]
        try:
            # Both nodes hear each other (a status summary from the other node).
            yield started[0], started[1]
        finally:
            for node in started:
                node.stop()


@pytest.mark.parametrize("transport", ["long-polling", "websocket"])
def test_publish_on_node_b_reaches_the_cometd_client_on_node_a_exactly_once(
    nodes: tuple[ServerProcess, ServerProcess], node_bin: str, transport: str
) -> None:
    a, b = nodes
    channel = f"/interop/api/{transport}"
    ready = Path(tempfile.mkdtemp()) / "ready"
    outcome: dict[str, Any] = {}

    def client() -> None:
        outcome["result"] = run_js(
            node_bin,
            f"http://127.0.0.1:{a.port}/cometd",
            "receive",
            transport,
            expect_ok=False,
            extra=("--channel", channel, "--ready-file", str(ready), "--duration", "2500"),
        )

    thread = threading.Thread(target=client)
    thread.start()
    wait_until(ready.exists, 15, "the CometD client subscribed on node A")
    client_id = ready.read_text()
    assert client_id.endswith("apiA")
    # Node B knows the subscription through the cluster.
    wait_until(
        lambda: api(b.port, "GET", "channels" + channel)[1]["result"]["subscribers"] == 1,
        5,
        "node B counting node A's subscriber",
    )
    first = {"channel": channel, "data": {"n": 1}, "idempotency_key": f"{transport}-1"}
    assert api(b.port, "POST", "publish", first) == (200, {"result": {"channel": channel}})
    # The retry (say, after a timeout at the caller), on either node: not delivered again.
    for port in (b.port, a.port):
        status, answer = api(port, "POST", "publish", first)
        assert status == 200 and answer["result"]["duplicate"] is True
    second = {"channel": channel, "data": {"n": 2}, "idempotency_key": f"{transport}-2"}
    assert api(b.port, "POST", "publish", second)[0] == 200
    thread.join(30)
    result = outcome["result"]
    assert result["ok"], describe_js_failure(result)
    assert result["transport"] == transport
    assert result["results"]["received"] == [
        {"channel": channel, "data": {"n": 1}},
        {"channel": channel, "data": {"n": 2}},
    ]


def test_deliver_session_and_disconnect_from_the_other_node(
    nodes: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = nodes
    browser = Browser(node_stub(a.port)).ready()
    assert browser.subscribe("/x").reply("/meta/subscribe")["successful"]
    client_id = browser.client_id
    status, info = api(b.port, "GET", f"sessions/{client_id}")
    assert status == 200, info
    assert (info["result"]["node"], info["result"]["subscriptions"]) == ("apiA", ["/x"])
    assert (
        api(b.port, "POST", "deliver", {"session": client_id, "channel": "/x", "data": 5})[0] == 200
    )
    assert [e["data"] for e in browser.connect().events()] == [5]
    browser.start_connect()
    time.sleep(0.2)
    assert api(b.port, "POST", "disconnect", {"session": client_id})[0] == 200
    reply = browser.finish_connect().reply("/meta/connect")
    assert (reply["successful"], reply["error"]) == (False, "403::disconnected_by_server")
    assert api(b.port, "GET", f"sessions/{client_id}")[0] == 404
    # A clientId naming a node that does not exist: 404, not a wait.
    fake = "0" * 32 + "nosuchnode"
    assert api(b.port, "GET", f"sessions/{fake}")[0] == 404
    assert api(b.port, "POST", "deliver", {"session": fake, "channel": "/x", "data": 1})[0] == 404


def test_channel_counts_are_summed_over_the_nodes(
    nodes: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = nodes
    on_a = Browser(node_stub(a.port)).ready()
    on_b = Browser(node_stub(b.port)).ready()
    for browser in (on_a, on_b):
        assert browser.subscribe("/count/me").reply("/meta/subscribe")["successful"]
    for port in (a.port, b.port):
        status, body = api(port, "GET", "channels/count/me")
        assert status == 200
        assert (body["result"]["subscribers"], body["result"]["nodes"]) == (2, 2)
        assert api(port, "GET", "channels")[1]["result"]["channels"]["/count/me"] == 2


def test_without_redis_the_calls_that_need_it_are_503() -> None:
    with RedisServer() as redis:
        node = start_server("--broker", redis.url, "--node-id", "apiC", "--api-key", KEY)
        try:
            assert api(node.port, "GET", "channels")[0] == 200
            redis.kill()
            keyed = {"channel": "/x", "data": 1, "idempotency_key": "during-outage"}
            status, answer = api(node.port, "POST", "publish", keyed)
            # The key cannot be checked: refused, so that a retry is not a duplicate.
            assert status == 503 and "idempotency store" in answer["error"]["message"]
            # Without a key the publish is buffered by the broker, as a client's is.
            assert api(node.port, "POST", "publish", {"channel": "/x", "data": 2})[0] == 200
            assert api(node.port, "GET", "channels")[0] in (503, 504)
        finally:
            node.stop()
