"""Channel history over Redis Streams: the same offsets on every node, and a
client that recovers on another node after its node was killed."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from redis_server import RedisServer, require_redis_server

require_redis_server()

from cluster_support import node_stub, redis_client, wait_until  # noqa: E402
from harness import ServerProcess, start_server  # noqa: E402
from support import Browser  # noqa: E402

pytestmark = pytest.mark.timeout(120)

ARGS = ("--timeout", "1500", "--history-channels", "/h/**", "--history-size", "2000")


@pytest.fixture(scope="module")
def redis_srv() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


def node(redis_srv: RedisServer, name: str, *extra: str) -> ServerProcess:
    return start_server("--broker", redis_srv.url, "--node-id", name, *ARGS, *extra)


def events(resp: Any, channel: str) -> list[dict[str, Any]]:
    return [m for m in resp.messages if m.get("channel") == channel and "data" in m]


def subscribe(b: Browser, channel: str, recover: dict[str, Any] | None = None) -> Any:
    fields: dict[str, Any] = {"subscription": channel}
    if recover is not None:
        fields["ext"] = {"recover": recover}
    resp = b.send([b.message("/meta/subscribe", **fields)])
    reply = resp.reply("/meta/subscribe")
    assert reply["successful"], reply
    return resp


def collect(b: Browser, channel: str, want: int, timeout: float = 20.0) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        got += events(b.connect(), channel)
    return got


def test_offsets_are_shared_and_a_client_recovers_on_another_node(redis_srv: RedisServer) -> None:
    a, b = node(redis_srv, "hisA"), node(redis_srv, "hisB")
    try:
        sub = Browser(node_stub(a.port)).ready()
        first = subscribe(sub, "/h/room").reply("/meta/subscribe")["ext"]["recover"]["/h/room"]
        epoch = first["epoch"]
        pub_a = Browser(node_stub(a.port)).ready()
        pub_b = Browser(node_stub(b.port)).ready()
        # Publishes from both nodes: one sequence of offsets, no hole.
        for n in range(1, 21):
            pub = pub_a if n % 2 else pub_b
            assert pub.publish("/h/room", n).reply("/h/room")["successful"]
        got = collect(sub, "/h/room", 20)
        assert sorted(m["data"] for m in got) == list(range(1, 21))
        offsets = [m["ext"]["position"]["offset"] for m in got]
        assert offsets == list(range(first["offset"] + 1, first["offset"] + 21))
        assert {m["ext"]["position"]["epoch"] for m in got} == {epoch}

        # Publishing goes on through B while A is killed; the client comes
        # back on B (a new session) with the last position it saw.
        seen = got[-1]["ext"]["position"]
        stop = threading.Event()
        published: list[int] = []

        def publish() -> None:
            n = 21
            while not stop.is_set() and n <= 220:
                if pub_b.publish("/h/room", n).reply("/h/room")["successful"]:
                    published.append(n)
                n += 1
                time.sleep(0.005)

        thread = threading.Thread(target=publish)
        thread.start()
        time.sleep(0.2)
        os.kill(a.proc.pid, signal.SIGKILL)
        a.proc.wait(10)
        again = Browser(node_stub(b.port)).ready()
        resp = subscribe(again, "/h/room", {"/h/room": seen})
        answer = resp.reply("/meta/subscribe")["ext"]["recover"]["/h/room"]
        assert answer["recovered"] is True and answer["epoch"] == epoch, answer
        recovered = events(resp, "/h/room")
        thread.join(30)
        stop.set()
        total = len(published)
        recovered += collect(again, "/h/room", total - len(recovered))
        data = [m["data"] for m in recovered]
        assert data == published, (data[:5], published[:5], len(data), total)  # in order, once
        offsets = [m["ext"]["position"]["offset"] for m in recovered]
        assert offsets == list(range(seen["offset"] + 1, seen["offset"] + 1 + total))
    finally:
        a.stop()
        b.stop()


def test_flushed_redis_changes_the_epoch_and_nothing_is_invented(redis_srv: RedisServer) -> None:
    b = node(redis_srv, "hisC")
    try:
        pub = Browser(node_stub(b.port)).ready()
        subscribe(pub, "/h/f")
        for n in range(3):
            pub.publish("/h/f", n)
        sub = Browser(node_stub(b.port)).ready()
        first = subscribe(sub, "/h/f").reply("/meta/subscribe")["ext"]["recover"]["/h/f"]
        assert first["offset"] == 3
        redis_client(redis_srv).flushall()
        pub.publish("/h/f", "after the flush")
        late = Browser(node_stub(b.port)).ready()
        resp = subscribe(late, "/h/f", {"/h/f": first})
        answer = resp.reply("/meta/subscribe")["ext"]["recover"]["/h/f"]
        assert answer["recovered"] is False and answer["reason"] == "epoch_changed", answer
        assert answer["epoch"] != first["epoch"] and answer["offset"] == 1
        assert events(resp, "/h/f") == []
        # Expired: a position before what the stream keeps.
        for n in range(3):
            pub.publish("/h/f", n)
        wait_until(lambda: redis_client(redis_srv).xlen(b"bayeux:0:s:/h/f") == 4)
        redis_client(redis_srv).xtrim(b"bayeux:0:s:/h/f", maxlen=1, approximate=False)
        gone = Browser(node_stub(b.port)).ready()
        resp = subscribe(gone, "/h/f", {"/h/f": {"epoch": answer["epoch"], "offset": 1}})
        answer = resp.reply("/meta/subscribe")["ext"]["recover"]["/h/f"]
        assert answer.get("reason") == "expired", (answer, events(resp, "/h/f"))
    finally:
        b.stop()
