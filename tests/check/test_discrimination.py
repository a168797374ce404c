"""Every server check discriminates: it passes against the engine through a
transparent proxy, and FAILS when the proxy breaks its rule (one named fault
of tests/check/fault_proxy.py).  A check without a fault in FAULT_FOR fails
test_every_check_has_a_fault, so a new check must come with its breakage."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
from conftest import ALL_FEATURES
from fault_proxy import FAULTS, FaultProxy
from harness import ServerProcess

from engine.check.cli import main
from engine.check.server_checks import CHECKS

FAULT_FOR: dict[str, str] = {
    "handshake.reply": "handshake_no_version",
    "handshake.advice": "handshake_no_advice",
    "handshake.unique_client_ids": "repeat_client_id",
    "handshake.no_common_transport": "accept_any_transport",
    "handshake.single_object": "refuse_single_object",
    "connect.first_not_held": "delay_connect",
    "connect.held": "answer_connect_at_once",
    "connect.second_releases_first": "delay_connect",
    "handshake.batched_publish_ignored": "answer_batched_with_handshake",
    "unsubscribe.never_subscribed": "unsubscribe_fails",
    "connect.timeout_zero": "drop_request_advice",
    "connect.unknown_client": "unknown_client_retry",
    "connect.wakes_on_publish": "delay_events",
    "connect.queued_at_once": "delay_events",
    "connect.advice": "drop_connect_advice",
    "disconnect.reply": "disconnect_unsuccessful",
    "disconnect.session_gone": "ignore_disconnect",
    "disconnect.releases_held_connect": "ignore_disconnect",
    "subscribe.reply": "strip_subscription_echo",
    "subscribe.array": "strip_subscription_echo",
    "subscribe.meta_refused": "subscribe_never_fails",
    "subscribe.missing_subscription": "subscribe_never_fails",
    "subscribe.invalid_channel": "subscribe_never_fails",
    "unsubscribe.reply": "strip_unsubscribe_echo",
    "unsubscribe.stops_delivery": "ignore_unsubscribe",
    "subscribe.service_not_delivered": "leak_service",
    "wildcards.one_segment": "star_is_deep",
    "wildcards.deep": "deep_is_star",
    "wildcards.overlap_once": "duplicate_events",
    "publish.reply": "publish_reply_data",
    "publish.delivered_fields": "mangle_data",
    "publish.delivered_stripped": "leak_publisher_id",
    "publish.own_message": "drop_own_events",
    "publish.meta_refused": "allow_meta_publish",
    "publish.unknown_client": "publish_always_succeeds",
    "publish.ext_passthrough": "strip_event_ext",
    "publish.order": "reverse_events",
    "batching.in_order": "reverse_batch",
    "errors.unknown_session_402": "402_to_401",
    "errors.meta_subscribe_403": "403_to_400",
    "errors.failure_http_200": "text_plain",
    "errors.invalid_json_400": "no_http_400",
    "errors.empty_batch_400": "no_http_400",
    "errors.publish_pattern_405": "405_to_400",
    "errors.data_missing_400": "400_to_500",
    "browser.cookie_set": "drop_set_cookie",
    "browser.cookie_kept": "drop_request_cookie",
    "browser.multiple_clients": "drop_multiple_clients_advice",
    "browser.cookie_binding": "402_to_401",
    "long_polling.paths": "refuse_subpaths",
    "long_polling.content_type": "text_plain",
    "jsonp.handshake": "jsonp_as_json",
    "jsonp.bad_callback_400": "no_http_400",
    "websocket.handshake": "ws_refuse_upgrade",
    "websocket.delivery": "ws_delay_events",
    "websocket.publish_reply": "ws_drop_publish_replies",
    "websocket.resume_session": "ws_require_handshake",
    "websocket.bad_json_isolated": "ws_bad_json_kills_all",
    "ack.negotiated": "drop_ack_ext",
    "ack.batch_numbers": "ack_constant",
    "ack.redelivery": "dedupe_events",
    "timesync.reply": "drop_timesync",
}


def test_every_check_has_a_fault() -> None:
    assert sorted(set(CHECKS) - set(FAULT_FOR)) == []
    assert sorted(set(FAULT_FOR) - set(CHECKS)) == []
    assert sorted(set(FAULT_FOR.values()) - set(FAULTS)) == []


@pytest.fixture(scope="module")
def proxy(engine: ServerProcess) -> Iterator[FaultProxy]:
    with FaultProxy(engine.port) as running:
        yield running


def verdict(proxy: FaultProxy, name: str, tmp_path: Path) -> tuple[str, str]:
    """(status, reason) of one check run through the proxy."""
    junit = tmp_path / f"{name}.xml"
    main(
        [
            proxy.url,
            "--only",
            name,
            *ALL_FEATURES,
            "--check-timeout",
            "20",
            "--request-timeout",
            "5",
            "--junit",
            str(junit),
        ]
    )
    case = ET.parse(junit).getroot().find("testcase")
    assert case is not None
    for tag, status in (("failure", "FAIL"), ("skipped", "SKIP")):
        element = case.find(tag)
        if element is not None:
            return status, element.get("message", "")
    return "PASS", ""


@pytest.mark.parametrize("name", sorted(FAULT_FOR))
def test_check_fails_under_its_fault(
    proxy: FaultProxy, name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    proxy.use(None)
    assert verdict(proxy, name, tmp_path) == ("PASS", ""), capsys.readouterr().out
    proxy.use(FAULT_FOR[name])
    status, reason = verdict(proxy, name, tmp_path)
    assert status == "FAIL", capsys.readouterr().out
    assert reason
