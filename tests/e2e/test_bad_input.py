"""Bad input gets a clear answer and harms no one else.

Every case runs while a bystander client holds a /meta/connect; after the
bad input, the bystander still gets a publish delivered and can go on.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator

import pytest
from harness import running_server
from support import Browser, raw_exchange

from engine import BayeuxServer


@pytest.fixture(scope="module")
def server() -> Iterator[BayeuxServer]:
    with running_server(
        timeout=3000, max_interval=2000, max_message_size=4096, max_batch=10
    ) as srv:
        yield srv


def bystander_unharmed(server: BayeuxServer, bad: Callable[[], None]) -> None:
    watcher = Browser(server).ready()
    watcher.subscribe("/bystander")
    watcher.start_connect()
    time.sleep(0.05)
    bad()
    publisher = Browser(server).ready()
    assert publisher.publish("/bystander", "still here").reply("/bystander")["successful"]
    resp = watcher.finish_connect()
    assert [e["data"] for e in resp.events()] == ["still here"]
    watcher.close()
    publisher.close()


def http(server: BayeuxServer, head: bytes, body: bytes = b"") -> bytes:
    return raw_exchange(server, head + body)


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def test_malformed_http(server: BayeuxServer) -> None:
    def bad() -> None:
        resp = http(server, b"THIS IS NOT HTTP\r\n\r\n")
        assert status_of(resp) == 400
        assert b"Connection: close" in resp

    bystander_unharmed(server, bad)


def test_body_over_limit(server: BayeuxServer) -> None:
    def bad() -> None:
        body = b"[" + b" " * 5000 + b"]"
        resp = http(
            server,
            b"POST /cometd HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body),
            body,
        )
        assert status_of(resp) == 413
        # Chunked bodies are counted as they arrive.
        chunk = b"x" * 3000
        chunked = (
            b"POST /cometd HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + (b"%x\r\n" % len(chunk) + chunk + b"\r\n") * 2
            + b"0\r\n\r\n"
        )
        assert status_of(http(server, chunked)) == 413

    bystander_unharmed(server, bad)


def test_content_length_values(server: BayeuxServer) -> None:
    def bad() -> None:
        # Whatever the header name's case, and however many digits.
        for name, value in (
            (b"CONTENT-LENGTH", b"5000"),
            (b"Content-Length", b"9" * 18),
            (b"content-length", b"1" + b"0" * 19),
        ):
            head = b"POST /cometd HTTP/1.1\r\nHost: x\r\n%s: %s\r\n\r\n" % (name, value)
            assert status_of(http(server, head)) == 413
        # Not a number, or past 64 bits: the parser refuses it.
        for value in (b"1x", b"9" * 30):
            head = b"POST /cometd HTTP/1.1\r\nHost: x\r\nContent-Length: %s\r\n\r\n" % value
            assert status_of(http(server, head)) == 400

    bystander_unharmed(server, bad)


def test_paths_next_to_the_base_path(server: BayeuxServer) -> None:
    body = b'[{"channel":"/meta/handshake","supportedConnectionTypes":["long-polling"]}]'

    def post(path: bytes) -> int:
        head = b"POST %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" % path
        return status_of(http(server, head + b"Content-Length: %d\r\n\r\n" % len(body), body))

    def bad() -> None:
        for path in (b"/cometd", b"/cometd/", b"/cometd/handshake", b"/cometd?x=1"):
            assert post(path) == 200, path
        for path in (b"/cometdx", b"/comet", b"/", b"/other/cometd", b"/x?/cometd"):
            assert post(path) == 404, path

    bystander_unharmed(server, bad)


def test_invalid_json(server: BayeuxServer) -> None:
    def bad() -> None:
        resp = Browser(server).send(b'[{"channel": "/meta/handshake",')
        assert resp.status == 400
        assert resp.headers["Content-Type"].startswith("application/json")
        assert "invalid JSON" in json.loads(resp.body)["detail"]

    bystander_unharmed(server, bad)


def test_message_not_object_or_without_channel(server: BayeuxServer) -> None:
    def bad() -> None:
        b = Browser(server).ready()
        assert b.send(b"[1]").status == 400
        assert b.send(b'[{"channel": "/x"}, "text"]').status == 400
        reply = b.send([{"clientId": b.client_id, "data": 1}]).messages[0]
        assert reply["error"] == "400::channel_missing"

    bystander_unharmed(server, bad)


@pytest.mark.parametrize(
    "fields,error",
    [
        ({"channel": 5, "data": 1}, "405::channel_invalid"),
        ({"channel": "/meta/subscribe", "subscription": {}}, "403::subscription_invalid"),
        ({"channel": "/meta/subscribe", "subscription": [1]}, "403::subscription_invalid"),
        ({"channel": "/x", "data": 1, "clientId": 5}, "402::session_unknown"),
        ({"channel": "/x", "data": 1, "id": {"a": 1}}, "405::message_id_invalid"),
    ],
)
def test_wrong_field_types(server: BayeuxServer, fields: dict, error: str) -> None:
    def bad() -> None:
        b = Browser(server).ready()
        message = {"clientId": b.client_id, **fields}
        reply = b.send([message]).messages[0]
        assert reply["successful"] is False
        assert reply["error"] == error

    bystander_unharmed(server, bad)


def test_unknown_client(server: BayeuxServer) -> None:
    def bad() -> None:
        b = Browser(server)
        b.client_id = "forged0123456789"
        reply = b.connect().reply("/meta/connect")
        assert reply["error"] == "402::session_unknown"
        assert reply["advice"]["reconnect"] == "handshake"

    bystander_unharmed(server, bad)


def test_publish_to_meta(server: BayeuxServer) -> None:
    def bad() -> None:
        b = Browser(server).ready()
        reply = b.publish("/meta/foo", 1).messages[0]
        assert reply["error"] == "403:denied_by_security_policy:channel_create_denied"

    bystander_unharmed(server, bad)


@pytest.mark.parametrize("subscription", ["/a/**/b", "/a//b", "a/b", "/"])
def test_invalid_subscriptions(server: BayeuxServer, subscription: str) -> None:
    def bad() -> None:
        b = Browser(server).ready()
        reply = b.subscribe(subscription).reply("/meta/subscribe")
        assert reply["error"] == "403::subscription_invalid"

    bystander_unharmed(server, bad)


def test_batch_over_limit(server: BayeuxServer) -> None:
    def bad() -> None:
        b = Browser(server).ready()
        resp = b.send([b.message("/x", data=i) for i in range(11)])
        assert resp.status == 400
        assert "max_batch" in json.loads(resp.body)["detail"]

    bystander_unharmed(server, bad)


def test_connect_before_handshake(server: BayeuxServer) -> None:
    def bad() -> None:
        b = Browser(server)
        reply = b.send([{"channel": "/meta/connect", "connectionType": "long-polling"}])
        assert reply.messages[0]["error"] == "402::session_unknown"

    bystander_unharmed(server, bad)


def test_two_held_connects(server: BayeuxServer) -> None:
    def bad() -> None:
        b = Browser(server).ready()
        b.start_connect()
        time.sleep(0.1)
        second = b.start([b.connect_message(advice={"timeout": 300})])
        first = b.finish_connect()
        assert first.status == 500
        assert b.finish(second).reply("/meta/connect")["successful"] is True

    bystander_unharmed(server, bad)


def test_duplicate_connect_status_is_configurable() -> None:
    with running_server(timeout=3000, max_interval=2000, duplicate_connect_status=409) as srv:
        b = Browser(srv).ready()
        b.start_connect()
        time.sleep(0.1)
        second = b.start([b.connect_message(advice={"timeout": 300})])
        assert b.finish_connect().status == 409
        assert b.finish(second).reply("/meta/connect")["successful"] is True
        b.close()


def test_client_gone_during_held_connect(server: BayeuxServer) -> None:
    def bad() -> None:
        b = Browser(server).ready()
        session = server.core.sessions[b.client_id]  # type: ignore[index]
        b.start_connect()
        time.sleep(0.1)
        assert session.hold is not None
        b.connect_conn.close()
        time.sleep(0.2)
        # The hold is dropped at once, so the browser's quota is free again.
        assert session.hold is None
        assert b.cookie not in server.core.browsers
        b.connect_conn = type(b.connect_conn)(*server.address, timeout=10)
        assert b.connect(advice={"timeout": 0}).reply("/meta/connect")["successful"]

    bystander_unharmed(server, bad)


def test_peer_vanishes_mid_body(server: BayeuxServer) -> None:
    def bad() -> None:
        with socket.create_connection(server.address) as sock:
            sock.sendall(b"POST /cometd HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n[{")

    bystander_unharmed(server, bad)


def test_header_flood(server: BayeuxServer) -> None:
    def bad() -> None:
        head = b"POST /cometd HTTP/1.1\r\n" + b"X-Filler: " + b"a" * 20000 + b"\r\n\r\n"
        assert status_of(http(server, head)) == 431

    bystander_unharmed(server, bad)


def test_wrong_path_and_method(server: BayeuxServer) -> None:
    def bad() -> None:
        assert (
            status_of(
                http(
                    server,
                    b"POST /other HTTP/1.1\r\nHost: x\r\n"
                    b"Connection: close\r\nContent-Length: 2\r\n\r\n[]",
                )
            )
            == 404
        )
        assert (
            status_of(
                http(
                    server,
                    b"PUT /cometd HTTP/1.1\r\nHost: x\r\n"
                    b"Connection: close\r\nContent-Length: 0\r\n\r\n",
                )
            )
            == 405
        )
        assert (
            status_of(http(server, b"GET /cometd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
            == 400
        )

    bystander_unharmed(server, bad)


def test_queue_overflow_is_counted() -> None:
    with running_server(max_queue=5) as srv:
        slow = Browser(srv).ready()
        slow.subscribe("/flood")
        p = Browser(srv).ready()
        for i in range(8):
            p.publish("/flood", i)
        events = slow.connect(advice={"timeout": 0}).events()
        assert [e["data"] for e in events] == [3, 4, 5, 6, 7]
        assert srv.core.stats.dropped_queue_full == 3


def test_connection_limit_refuses_cleanly() -> None:
    with running_server() as srv:
        assert srv.files_limit > 0 and srv.max_connections < srv.files_limit
        srv.max_connections = len(srv.connections) + 2
        held = [socket.create_connection(srv.address) for _ in range(2)]
        time.sleep(0.2)
        refused = raw_exchange(srv, b"")
        assert refused.startswith(b"HTTP/1.1 503")
        assert b"Retry-After: 2" in refused
        assert srv.core.stats.connections_refused == 1
        for sock in held:
            sock.close()
        time.sleep(0.2)
        assert Browser(srv).ready().client_id  # room again
