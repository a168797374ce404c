"""The acknowledge extension over raw HTTP; the CometD
client's AckExtension is exercised in the interop tests."""

from __future__ import annotations

import time

from harness import running_server
from support import Browser


def test_ack_negotiation_batches_and_resend() -> None:
    with running_server(ack_extension=True, timeout=1000) as server:
        b = Browser(server)
        reply = b.handshake(ext={"ack": True}).reply("/meta/handshake")
        assert reply["ext"] == {"ack": True}
        first = b.connect(ext={"ack": 0}).reply("/meta/connect")
        assert first["ext"]["ack"] == 1
        b.subscribe("/acked")
        p = Browser(server).ready()
        p.publish("/acked", "a")
        # Events travel only with connect replies: not on the subscribe reply.
        assert b.subscribe("/other").events() == []
        second = b.connect(ext={"ack": 1})
        assert second.reply("/meta/connect")["ext"]["ack"] == 2
        assert [e["data"] for e in second.events()] == ["a"]
        # The client lost that response: it acknowledges only batch 1, so the
        # event comes again, at once, with the next batch number.
        p.publish("/acked", "b")
        resent = b.connect(ext={"ack": 1})
        assert resent.took < 0.5
        assert resent.reply("/meta/connect")["ext"]["ack"] == 3
        assert [e["data"] for e in resent.events()] == ["a", "b"]
        # Acknowledged: nothing more is re-sent; the next connect is held.
        quiet = b.connect(ext={"ack": 3})
        assert quiet.took > 0.8
        assert quiet.events() == []
        assert quiet.reply("/meta/connect")["ext"]["ack"] == 4


def test_ack_held_connect_released_by_event() -> None:
    with running_server(ack_extension=True, timeout=3000) as server:
        b = Browser(server)
        b.handshake(ext={"ack": True})
        b.connect(ext={"ack": 0})
        b.subscribe("/held")
        b.start_connect(ext={"ack": 1})
        time.sleep(0.1)
        Browser(server).ready().publish("/held", 7)
        resp = b.finish_connect()
        assert resp.took < 1
        assert [e["data"] for e in resp.events()] == [7]
        assert resp.reply("/meta/connect")["ext"]["ack"] == 2


def test_ack_not_offered_unless_enabled() -> None:
    with running_server() as server:
        reply = Browser(server).handshake(ext={"ack": True}).reply("/meta/handshake")
        assert "ext" not in reply
