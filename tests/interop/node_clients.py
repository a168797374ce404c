"""What the tests of the Node clients share (test_interop_cometd_js.py with
cometd_client.mjs, test_interop_faye.py with faye_client.mjs): the fixtures
that run a driver against the test's server, and the checks that the results
of the scenarios both drivers have in common must pass (not a test module).

pytest rewrites the asserts here as in a test module (registered in
helpers.py, which conftest.py imports first).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from interop.helpers import (
    JS_CLIENT,
    REQUIRED_TRANSPORTS,
    describe_js_failure,
    interop_target,
    run_js,
    server_transports,
)

Result = dict[str, Any]
# What a check_SCENARIO() returns: (results, failure description).
Checked = tuple[dict[str, Any], str]


def transport_fixture(transports: tuple[str, ...], doc: str):
    """A ``transport`` fixture parametrized over ``transports`` that skips the
    ones the server does not offer yet (never the required ones)."""

    @pytest.fixture(params=transports)
    def transport(request, server) -> str:
        name = request.param
        if name not in REQUIRED_TRANSPORTS:
            offered = server_transports(server.url)
            if name not in offered:
                pytest.skip(f"server does not offer {name} yet (offers {offered})")
        return name

    transport.__doc__ = doc
    return transport


def runner_fixture(
    script: Path = JS_CLIENT,
    *,
    cli_transport: Callable[[str | None], str | None] = lambda transport: transport,
    check: Callable[[Result, str | None], None] | None = None,
    doc: str = "",
):
    """A fixture giving ``run(scenario, transport, **kw) -> result dict``:
    :func:`run_js` of ``script`` bound to this test's server. The driver gets
    ``--transport cli_transport(transport)``; ``check(result, transport)``, if
    given, runs on every result."""

    @pytest.fixture
    def runner(node_bin, server) -> Callable[..., Result]:
        def run(scenario: str, transport: str | None, **kw: Any) -> Result:
            forced = cli_transport(transport)
            r = run_js(node_bin, server.url, scenario, forced, script=script, **kw)
            if check is not None:
                check(r, transport)
            return r

        return run

    runner.__doc__ = "run(scenario, transport, **kw) -> result dict for this test's server." + doc
    return runner


def sent(result: Result, predicate: Callable[[dict[str, Any]], Any]) -> list[dict[str, Any]]:
    """The wire log entries the client sent that match ``predicate``."""
    return [e for e in result.get("wire", []) if e.get("dir") == "send" and predicate(e)]


# ---------------------------------------------------------------- checks
# check_SCENARIO(result) asserts what both clients' results of SCENARIO must
# show and returns (results, failure description) for the test's own asserts.


def check_handshake_reply(hs: dict[str, Any], transport: str, msg: str) -> None:
    """A successful handshake reply offering ``transport``."""
    assert hs["successful"] is True, msg
    assert hs["channel"] == "/meta/handshake", msg
    assert hs["version"] == "1.0", msg
    assert isinstance(hs["clientId"], str) and hs["clientId"].isalnum(), msg
    assert transport in hs["supportedConnectionTypes"], msg
    # All of the advice (Faye merges advice into what it has).
    advice = hs.get("advice") or {}
    assert advice.get("reconnect") == "retry", msg
    assert isinstance(advice.get("interval"), int), msg
    assert isinstance(advice.get("timeout"), int), msg


def check_subscribe_publish_exact(r: Result) -> Checked:
    """Scenario subscribe_publish: one delivery of the publish, data intact."""
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
    return res, msg


def check_wildcards(r: Result) -> Checked:
    """Scenario wildcard: /chat/* and /news/** get exactly their channels."""
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
    return res, msg


def check_two_clients(r: Result) -> Checked:
    """Scenario two_clients: two sessions, prompt deliveries both ways."""
    res = r["results"]
    msg = describe_js_failure(r)
    assert res["client_ids"][0] != res["client_ids"][1], msg
    # Delivery through a held long poll (or the socket) is prompt.
    assert res["a_to_b_ms"] < 1500, msg
    assert res["b_to_a_ms"] < 1500, msg
    return res, msg


def check_unsubscribe(r: Result) -> Checked:
    """Scenario unsubscribe: nothing delivered after the unsubscribe."""
    res = r["results"]
    msg = describe_js_failure(r)
    assert res["unsubscribe_reply"]["successful"] is True, msg
    assert res["unsubscribe_reply"]["subscription"] == "/interop/unsub", msg
    delivered = [m for m in res["raw_events"] if m["channel"] == "/interop/unsub"]
    assert [m["data"] for m in delivered] == [{"n": 1}], msg
    return res, msg


def check_disconnect(r: Result, transport: str, *, held_connect: bool) -> Checked:
    """Scenario disconnect: prompt, nothing sent afterwards; with
    ``held_connect`` the released long poll came back, saying stop."""
    res = r["results"]
    msg = describe_js_failure(r)
    assert res["transport_before"] == transport, msg
    assert res["disconnect_reply"]["successful"] is True, msg
    assert res["disconnect_ms"] < 1000, msg
    assert res["requests_after_disconnect"] == [], msg
    if held_connect:
        held = res["held_connect_reply"]
        assert held is not None, msg
        assert held["successful"] is True, msg
        if interop_target() == "engine":
            # Our rule: a disconnect ends the held connect with reconnect none
            # (the client must not poll again); the Node reference omits it.
            assert (held.get("advice") or {}).get("reconnect") == "none", msg
    return res, msg
