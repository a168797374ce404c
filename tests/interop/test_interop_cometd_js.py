"""Interop with the official CometD JavaScript client (npm cometd 9.0.0 on
Node via cometd-nodejs-client 2.0.0), driven by tests/interop/cometd_client.mjs.

Each test starts a fresh server (``server`` fixture), runs one scenario in a
node process and asserts on the JSON line it prints. On failure the message
contains the wire exchange seen by the client.

Transports: long-polling is required; websocket and callback-polling run as
soon as the server lists them in its handshake reply (see
interop/helpers.py: REQUIRED_TRANSPORTS).
"""

from __future__ import annotations

import pytest
from interop import node_clients
from interop.helpers import ALL_TRANSPORTS, REQUIRED_EXTENSIONS, describe_js_failure, interop_target

pytestmark = pytest.mark.timeout(90)

transport = node_clients.transport_fixture(ALL_TRANSPORTS, "The forced client transport.")
js = node_clients.runner_fixture()


def test_handshake(js, transport):
    r = js("handshake", transport)
    res = r["results"]
    hs = res["handshake_reply"]
    msg = describe_js_failure(r)
    assert r["transport"] == transport, msg
    node_clients.check_handshake_reply(hs, transport, msg)
    assert "error" not in hs, msg
    first = res["first_connect_reply"]
    assert first["successful"] is True, msg
    # The JS client retried nothing: one handshake was enough.
    assert res["handshake_attempts"] == 1, msg
    # The second connect (no advice.timeout: 0) is being held: the client sent it.
    assert res["second_connect_request"] is not None, msg
    assert "advice" not in res["second_connect_request"], msg
    if transport != "websocket":
        # HTTP: the server sets the browser cookie on the handshake.
        assert "BAYEUX_BROWSER" in res["cookies"], msg
        # The JS client appends the message type to the URL.
        paths = {
            e["body"][0]["channel"]: e["path"]
            for e in node_clients.sent(r, lambda e: e.get("body"))
        }
        assert paths["/meta/handshake"].endswith("/cometd/handshake"), msg
        assert paths["/meta/connect"].endswith("/cometd/connect"), msg


def test_handshake_default_transports(js, server):
    """No forced transport: the JS client tries websocket first and must end up
    on the first of its own types (websocket, long-polling, callback-polling)
    that the server lists."""
    r = js("handshake", None)
    offered = r["results"]["handshake_reply"]["supportedConnectionTypes"]
    expected = next(t for t in ("websocket", "long-polling", "callback-polling") if t in offered)
    assert r["transport"] == expected, describe_js_failure(r)


def test_subscribe_publish_exact(js, transport):
    r = js("subscribe_publish", transport)
    res, msg = node_clients.check_subscribe_publish_exact(r)
    # The publish reply answers the publish the client sent.
    sent_ids = [
        m["id"]
        for e in node_clients.sent(r, lambda e: isinstance(e.get("body"), list))
        for m in e["body"]
        if m.get("channel") == "/interop/exact"
    ]
    assert res["publish_reply"]["id"] in sent_ids, msg


def test_wildcards(js, transport):
    node_clients.check_wildcards(js("wildcard", transport))


def test_two_clients(js, transport):
    res, msg = node_clients.check_two_clients(js("two_clients", transport))
    # Each client has its own jar: no multiple-clients throttling.
    assert res["multiple_clients_advice"] == {"A": False, "B": False}, msg
    if transport != "websocket":
        cookies = res["cookies"]
        assert cookies["A"]["BAYEUX_BROWSER"] != cookies["B"]["BAYEUX_BROWSER"], msg


def test_two_clients_sharing_browser_cookie(js, server):
    """Two clients with one cookie jar (two tabs of one browser) over HTTP:
    both keep working; the second one is told `multiple-clients` (CometD's
    advice for several clients of one browser)."""
    r = js("shared_cookie_jar", "long-polling")
    res = r["results"]
    msg = describe_js_failure(r)
    cookies = res["cookies"]
    assert cookies["A"]["BAYEUX_BROWSER"] == cookies["B"]["BAYEUX_BROWSER"], msg
    assert res["multiple_clients_advice"]["A"] or res["multiple_clients_advice"]["B"], msg
    advices = [
        m["advice"]
        for replies in res["connect_replies"].values()
        for m in replies
        if (m.get("advice") or {}).get("multiple-clients")
    ]
    assert all(a.get("reconnect") == "retry" for a in advices), msg
    assert all(a.get("interval") == 2000 for a in advices), msg


def test_batch(js, transport):
    r = js("batch", transport)
    res = r["results"]
    msg = describe_js_failure(r)
    assert res["subscribe_reply"]["successful"] is True, msg
    assert res["publish_reply"]["successful"] is True, msg
    assert any(
        "/meta/subscribe" in channels and "/interop/batch" in channels
        for channels in res["requests_after_batch"]
    ), msg


def test_unsubscribe(js, transport):
    node_clients.check_unsubscribe(js("unsubscribe", transport))


def test_disconnect(js, transport):
    # Over HTTP the held long poll is released by the disconnect.
    held_connect = transport != "websocket"
    res, msg = node_clients.check_disconnect(
        js("disconnect", transport), transport, held_connect=held_connect
    )
    assert res["status"] == "disconnected", msg


@pytest.mark.server_args("--timeout", "1000")
def test_idle_connect_cycles(js, transport):
    """With a 1 s server timeout, 3.5 s idle: every held /meta/connect comes
    back successful after about the timeout, the client just re-polls, and a
    publish afterwards is delivered."""
    r = js("idle", transport, extra=("--duration", "3500"))
    res = r["results"]
    msg = describe_js_failure(r)
    assert res["failures"] == [] and res["handshakes"] == 1, msg
    # First connect answered at once, then one reply per ~1 s hold.
    assert 3 <= res["connects_sent"] <= 6, msg


@pytest.mark.server_args("--ack-extension")
def test_ack_extension(js, transport):
    """The JS AckExtension (https://docs.cometd.org/current/reference/#_extensions_acknowledge):
    acks negotiated in the handshake, every connect reply carries
    ext.ack = previous + 1, events only travel with connect replies, each
    exactly once and in order."""
    r = js("ack", transport, expect_ok=False)
    res = r["results"]
    ext = res.get("handshake_ext") or {}
    if "ack" not in REQUIRED_EXTENSIONS and not ext.get("ack"):
        pytest.skip("server does not negotiate the ack extension yet")
    assert r["ok"], describe_js_failure(r)
    assert res["received"] == [1, 2, 3], describe_js_failure(r)
    assert res["events_outside_connect"] == [], describe_js_failure(r)


@pytest.mark.server_args("--timesync-extension")
def test_timesync_extension(js, transport):
    """The JS TimeSyncExtension (https://docs.cometd.org/current/reference/#_extensions_timesync):
    meta replies carry ext.timesync {tc (echoed), ts, p}; the computed offset is near zero."""
    r = js("timesync", transport, expect_ok=False)
    res = r["results"]
    replies = res.get("reply_timesync") or []
    if "timesync" not in REQUIRED_EXTENSIONS and not any(replies):
        pytest.skip("server does not answer ext.timesync yet")
    assert r["ok"], describe_js_failure(r)


@pytest.mark.server_args("--allowed-transports", "long-polling,callback-polling")
def test_fallback_to_long_polling(js, server):
    """Server without websocket, JS client with its default transports: its
    WebSocket handshake is refused, it falls back to long-polling, and two such
    clients subscribe, publish and receive normally."""
    r = js("fallback", None)
    res = r["results"]
    msg = describe_js_failure(r)
    assert r["transport"] == "long-polling", msg
    assert res["client_transports"] == {"A": "long-polling", "B": "long-polling"}, msg
    assert "websocket" not in res["handshake_reply"]["supportedConnectionTypes"], msg
    # It did try websocket first, and no socket was ever opened.
    assert res["ws_attempts"] >= 1, msg
    assert res["ws_opened"] == 0, msg
    assert res["received"] == [{"from": "B"}, {"from": "A"}], msg
    # Every Bayeux message went over HTTP.
    bayeux = node_clients.sent(r, lambda e: isinstance(e.get("body"), list))
    assert bayeux and all(e["kind"] == "http" for e in bayeux), msg


def _run_ack_outage(js, transport, cut, messages=20):
    r = js(
        "ack_outage", transport, expect_ok=False, extra=("--cut", cut, "--messages", str(messages))
    )
    res = r["results"]
    ext = res.get("handshake_ext") or {}
    if "ack" not in REQUIRED_EXTENSIONS and not ext.get("ack"):
        pytest.skip("server does not negotiate the ack extension yet")
    msg = describe_js_failure(r)
    assert r["ok"], msg
    assert res["received"] == list(range(messages + 2)), msg
    assert res["missing"] == [] and res["duplicated"] == [], msg
    assert res["transport_before"] == transport == res["transport_after"], msg
    assert [h["successful"] for h in res["handshakes"]] == [True], msg
    # The outage really happened: A saw its connects fail and came back with
    # ever increasing batch numbers.
    assert res["connect_failures"], msg
    acks = [c["ack"] for c in res["connects_after_cut"] if c["successful"]]
    assert acks and all(isinstance(a, int) for a in acks), msg
    assert acks == sorted(set(acks)), msg
    return r


@pytest.mark.server_args("--ack-extension")
@pytest.mark.parametrize("cut", ["blackhole", "reset"])
def test_ack_delivery_across_cut_connection(js, transport, cut):
    """JS AckExtension through a TCP proxy that is cut for 2 s while another
    client publishes 20 messages; after the restore all 20 arrive in order,
    none twice, on the same session and transport.

    blackhole: the server's side of the old connection stays open and what it
    writes there (the held /meta/connect answered with the first event) is
    lost, so the server must re-send that batch when the client's next connect
    acknowledges only the previous one. reset: both halves get a TCP reset."""
    r = _run_ack_outage(js, transport, cut)
    res = r["results"]
    if cut == "blackhole":
        assert res["proxy"]["dropped_bytes_to_client"] > 0, describe_js_failure(r)


@pytest.mark.server_args("--ack-extension")
@pytest.mark.parametrize("transport", ["long-polling", "websocket"])
def test_ack_delivery_across_half_open_connection(js, transport):
    """Like the blackhole cut, but the server-side half of the dead connection
    (a WebSocket the session was bound to) stays open after the client is back
    on a new one, as after a silent network partition."""
    _run_ack_outage(js, transport, "halfopen")


# Recovery (engine/static/cometd-recovery.js): a session lost while the network
# is cut for 4 s (1 s timeout + 1 s max-interval: the server expires it).
HISTORY = ("--history-channels", "/h/**", "--timeout", "1000", "--max-interval", "1000")
OUTAGE = ("--outage", "4000")


def _run_recovery(js, transport, scenario, *extra):
    if interop_target() != "engine":
        pytest.skip("channel history is an engine feature")
    r = js(scenario, transport, extra=(*OUTAGE, *extra))
    res = r["results"]
    msg = describe_js_failure(r)
    assert r["transport"] == transport, msg
    # A really lost its session: two handshakes, two clientIds.
    assert [h["successful"] for h in res["handshakes"]] == [True, True], msg
    assert res["handshakes"][0]["clientId"] != res["handshakes"][1]["clientId"], msg
    # What the server wrote into the dead connection never reached A.
    assert res["proxy"]["dropped_bytes_to_client"] > 0, msg
    assert res["received_while_away"] == [], msg
    return res, msg


@pytest.mark.server_args(*HISTORY)
def test_recovery_extension_after_session_loss(js, transport):
    """RecoveryExtension with the CometD client's own re-handshake: the
    resubscribe (in the /meta/handshake listener) carries the last position
    seen, and the 20 messages published meanwhile arrive once, in order,
    before the live one."""
    res, msg = _run_recovery(js, transport, "recover")
    assert res["received"] == {"/h/room": list(range(1, 25))}, msg
    answer = res["answers"]["/h/room"]
    assert answer["recovered"] is True and answer["missed"] == 20, msg
    assert res["resubscribe_request"]["ext"]["recover"] == res["position_before"], msg
    assert list(res["position_before"]) == ["/h/room"], msg


@pytest.mark.server_args(*HISTORY)
def test_recovery_extension_with_a_wildcard_subscription(js, server):
    """Subscribed to /h/*: the resubscribe names both channels seen, and each
    gets its 20 missed messages back, in order."""
    res, msg = _run_recovery(js, "long-polling", "recover_wildcard")
    assert res["received"] == {c: list(range(1, 25)) for c in ("/h/room", "/h/other")}, msg
    assert sorted(res["resubscribe_request"]["ext"]["recover"]) == ["/h/other", "/h/room"], msg
    assert {c: a["missed"] for c, a in res["answers"].items()} == {"/h/room": 20, "/h/other": 20}


@pytest.mark.server_args(*HISTORY, "--history-size", "5")
def test_recovery_extension_reports_expired_history(js, transport):
    """Away for more than the history keeps (5 kept, 10 published):
    onRecoveryFailed(channel, {reason: expired}), nothing replayed, live
    messages flow again."""
    res, msg = _run_recovery(js, transport, "recover_expired", "--messages", "10")
    assert res["received"] == {"/h/room": [1, 2, 3, 14]}, msg
    assert [(f["channel"], f["answer"]["reason"]) for f in res["failed"]] == [
        ("/h/room", "expired")
    ], msg
