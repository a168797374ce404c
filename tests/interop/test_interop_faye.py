"""Interop with the Faye Node client (npm faye 1.4.3), driven by
tests/interop/faye_client.mjs.

Each test starts a fresh server (``server`` fixture), runs one scenario in a
node process and asserts on the JSON line it prints. On failure the message
contains the wire exchange seen by the client.

Faye always handshakes over long-polling and then picks websocket when the
server lists it and a test socket opened; ``--transport long-polling`` calls
``client.disable('websocket')``. ``transport`` in the result is the connection
type of Faye's dispatcher, ``connect_transports`` the types every
/meta/connect actually went over. Faye resends any message left unanswered for
1.2 x advice.timeout with the same id; the scenarios fail on any resend and on
any duplicate delivery.
"""

from __future__ import annotations

import pytest
from interop import node_clients
from interop.helpers import FAYE_CLIENT, describe_js_failure

pytestmark = pytest.mark.timeout(90)

FAYE_TRANSPORTS = ("websocket", "long-polling")


def _check_run(r, transport):
    """Every run: Faye resent nothing; with a ``transport``, it is the one
    actually used, by Faye's dispatcher and on the wire."""
    msg = describe_js_failure(r)
    for label, resends in (r["results"].get("resends") or {}).items():
        assert resends == [], f"{label} resent messages\n{msg}"
    if transport is None:
        return
    assert r["transport"] == transport, msg
    for label, types in r["connect_transports"].items():
        assert types == [transport], f"{label}: connects went over {types}\n{msg}"
    if transport == "long-polling":
        opened = [e for e in r.get("wire", []) if e.get("kind") == "ws"]
        assert opened == [], msg


transport = node_clients.transport_fixture(FAYE_TRANSPORTS, "The transport Faye must end up on.")
faye = node_clients.runner_fixture(
    FAYE_CLIENT,
    cli_transport=lambda transport: "long-polling" if transport == "long-polling" else None,
    check=_check_run,
    doc="""
    ``transport`` "websocket" means Faye's default behaviour (it negotiates
    websocket itself); "long-polling" disables websocket. Every result is
    checked for resends and, with a transport, for the one actually used.""",
)


def test_handshake(faye, transport):
    r = faye("handshake", transport)
    res = r["results"]
    msg = describe_js_failure(r)
    node_clients.check_handshake_reply(res["handshake_reply"], transport, msg)
    # Faye lists in-process too; the server must ignore what it does not know.
    assert "in-process" in res["handshake_request"]["supportedConnectionTypes"], msg
    assert res["handshake_attempts"] == 1, msg
    assert res["first_connect_reply"]["successful"] is True, msg
    # Faye sends no advice in its connects; each carries its connectionType.
    for connect in res["connect_requests"]:
        assert connect["connectionType"] == transport, msg
    # The handshake is HTTP: the browser cookie is kept by Faye's jar.
    assert "BAYEUX_BROWSER" in res["cookies"], msg
    if transport == "websocket":
        assert res["ws_opened"] >= 1, msg


def test_default_transport_is_websocket(faye, server):
    """No transport disabled: Faye upgrades to websocket after the HTTP
    handshake (the server lists websocket)."""
    r = faye("handshake", None)
    offered = r["results"]["handshake_reply"]["supportedConnectionTypes"]
    expected = "websocket" if "websocket" in offered else "long-polling"
    assert r["transport"] == expected, describe_js_failure(r)


def test_subscribe_publish_exact(faye, transport):
    node_clients.check_subscribe_publish_exact(faye("subscribe_publish", transport))


def test_wildcards(faye, transport):
    node_clients.check_wildcards(faye("wildcard", transport))


def test_two_clients(faye, transport):
    res, msg = node_clients.check_two_clients(faye("two_clients", transport))
    # Each Faye client has its own cookie jar.
    assert res["cookies"]["A"]["BAYEUX_BROWSER"] != res["cookies"]["B"]["BAYEUX_BROWSER"], msg
    assert [m["channel"] for m in res["events"]["B"]] == [
        "/interop/two/to-b",
        "/interop/two/b/x",
    ], msg
    assert [m["channel"] for m in res["events"]["A"]] == ["/interop/two/to-a"], msg


def test_unsubscribe(faye, transport):
    node_clients.check_unsubscribe(faye("unsubscribe", transport))


def test_disconnect(faye, transport):
    res, msg = node_clients.check_disconnect(
        faye("disconnect", transport), transport, held_connect=True
    )
    assert res["messages_after_disconnect"] == [], msg


@pytest.mark.server_args("--timeout", "1500")
def test_idle_connect_cycles(faye, transport):
    """Server timeout 1.5 s, 4 s idle: Faye learns the timeout from the advice
    (it merges advice) and resends a connect left unanswered for 1.2 x 1.5 s;
    every held connect must come back before that, no re-handshake, and a
    publish afterwards is delivered once."""
    r = faye("idle", transport, extra=("--duration", "4000"))
    res = r["results"]
    msg = describe_js_failure(r)
    assert res["handshakes"] == 1, msg
    # First connect answered at once, then one reply per ~1.5 s hold.
    assert 3 <= res["connects_sent"] <= 6, msg
    holds = [h["ms"] for h in res["connect_hold_ms"]]
    assert holds and max(holds) < 1800, msg


@pytest.mark.server_args("--allowed-transports", "long-polling,callback-polling")
def test_no_websocket_offered(faye, server):
    """Server without websocket: Faye's test socket is refused (or not used)
    and it stays on long-polling."""
    r = faye("subscribe_publish", None)
    msg = describe_js_failure(r)
    assert r["transport"] == "long-polling", msg
    assert r["connect_transports"]["A"] == ["long-polling"], msg
    opened = [e for e in r.get("wire", []) if e.get("kind") == "ws" and e.get("dir") == "open"]
    assert opened == [], msg
