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
from interop.helpers import (
    FAYE_CLIENT,
    REQUIRED_TRANSPORTS,
    describe_js_failure,
    interop_target,
    run_js,
    server_transports,
)

pytestmark = pytest.mark.timeout(90)

FAYE_TRANSPORTS = ("websocket", "long-polling")


@pytest.fixture(params=FAYE_TRANSPORTS)
def transport(request, server):
    """The transport Faye must end up on; skips transports the server does not
    offer yet (never the required ones)."""
    name = request.param
    if name not in REQUIRED_TRANSPORTS:
        offered = server_transports(server.url)
        if name not in offered:
            pytest.skip(f"server does not offer {name} yet (offers {offered})")
    return name


@pytest.fixture
def faye(node_bin, server):
    """run(scenario, transport, **kw) -> result dict, bound to this test's server.
    ``transport`` "websocket" means Faye's default behaviour (it negotiates
    websocket itself); "long-polling" disables websocket."""

    def run(scenario: str, transport: str | None, **kw):
        forced = "long-polling" if transport == "long-polling" else None
        r = run_js(node_bin, server.url, scenario, forced, script=FAYE_CLIENT, **kw)
        if transport is not None:
            msg = describe_js_failure(r)
            # The transport actually used, by Faye's dispatcher and on the wire.
            assert r["transport"] == transport, msg
            for label, types in r["connect_transports"].items():
                assert types == [transport], f"{label}: connects went over {types}\n{msg}"
            if transport == "long-polling":
                opened = [e for e in r.get("wire", []) if e.get("kind") == "ws"]
                assert opened == [], msg
        return r

    return run


def _no_resends(r):
    msg = describe_js_failure(r)
    for label, resends in (r["results"].get("resends") or {}).items():
        assert resends == [], f"{label} resent messages\n{msg}"


def test_handshake(faye, transport):
    r = faye("handshake", transport)
    res = r["results"]
    msg = describe_js_failure(r)
    hs = res["handshake_reply"]
    assert hs["successful"] is True, msg
    assert hs["channel"] == "/meta/handshake", msg
    assert hs["version"] == "1.0", msg
    assert isinstance(hs["clientId"], str) and hs["clientId"].isalnum(), msg
    assert transport in hs["supportedConnectionTypes"], msg
    # Faye merges advice: the handshake must carry all of it.
    advice = hs.get("advice") or {}
    assert advice.get("reconnect") == "retry", msg
    assert isinstance(advice.get("interval"), int), msg
    assert isinstance(advice.get("timeout"), int), msg
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
    _no_resends(r)


def test_default_transport_is_websocket(faye, server):
    """No transport disabled: Faye upgrades to websocket after the HTTP
    handshake (the server lists websocket)."""
    r = faye("handshake", None)
    offered = r["results"]["handshake_reply"]["supportedConnectionTypes"]
    expected = "websocket" if "websocket" in offered else "long-polling"
    assert r["transport"] == expected, describe_js_failure(r)


def test_subscribe_publish_exact(faye, transport):
    r = faye("subscribe_publish", transport)
    res = r["results"]
    msg = describe_js_failure(r)
    assert res["subscribe_reply"]["subscription"] == "/interop/exact", msg
    publish_reply = res["publish_reply"]
    assert publish_reply["successful"] is True, msg
    assert publish_reply["channel"] == "/interop/exact", msg
    assert "data" not in publish_reply, msg
    assert len(res["received"]) == 1, msg
    assert res["received"][0]["data"]["unicode"] == "h\u00e9llo \u2603", msg
    assert len(res["raw_events"]) == 1, msg
    _no_resends(r)


def test_wildcards(faye, transport):
    r = faye("wildcard", transport)
    res = r["results"]
    msg = describe_js_failure(r)
    assert res["listener_channels"]["/chat/*"] == ["/chat/room"], msg
    assert res["listener_channels"]["/news/**"] == ["/news/a", "/news/a/b/c"], msg
    assert res["raw_event_channels"] == [
        "/chat/room",
        "/news/a",
        "/news/a/b/c",
        "/interop/sentinel",
    ], msg
    assert all(rep["successful"] for rep in res["publish_replies"].values()), msg
    _no_resends(r)


def test_two_clients(faye, transport):
    r = faye("two_clients", transport)
    res = r["results"]
    msg = describe_js_failure(r)
    assert res["client_ids"][0] != res["client_ids"][1], msg
    # Each Faye client has its own cookie jar.
    assert res["cookies"]["A"]["BAYEUX_BROWSER"] != res["cookies"]["B"]["BAYEUX_BROWSER"], msg
    assert [m["channel"] for m in res["events"]["B"]] == [
        "/interop/two/to-b",
        "/interop/two/b/x",
    ], msg
    assert [m["channel"] for m in res["events"]["A"]] == ["/interop/two/to-a"], msg
    # Delivery through the held connect / the socket is prompt.
    assert res["a_to_b_ms"] < 1500, msg
    assert res["b_to_a_ms"] < 1500, msg
    _no_resends(r)


def test_unsubscribe(faye, transport):
    r = faye("unsubscribe", transport)
    res = r["results"]
    msg = describe_js_failure(r)
    assert res["unsubscribe_reply"]["successful"] is True, msg
    assert res["unsubscribe_reply"]["subscription"] == "/interop/unsub", msg
    delivered = [m for m in res["raw_events"] if m["channel"] == "/interop/unsub"]
    assert [m["data"] for m in delivered] == [{"n": 1}], msg
    _no_resends(r)


def test_disconnect(faye, transport):
    r = faye("disconnect", transport)
    res = r["results"]
    msg = describe_js_failure(r)
    assert res["transport_before"] == transport, msg
    assert res["disconnect_reply"]["successful"] is True, msg
    assert res["disconnect_ms"] < 1000, msg
    assert res["requests_after_disconnect"] == [], msg
    assert res["messages_after_disconnect"] == [], msg
    held = res["held_connect_reply"]
    assert held is not None, msg
    assert held["successful"] is True, msg
    if interop_target() == "engine":
        # Project rule (bayeux.md 5.2/5.3): the released hold says stop.
        assert (held.get("advice") or {}).get("reconnect") == "none", msg
    _no_resends(r)


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
    _no_resends(r)


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
    _no_resends(r)
