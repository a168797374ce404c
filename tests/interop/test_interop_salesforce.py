"""Salesforce streaming clients no one here wrote, against the engine as an
org (tests/interop/salesforce_app.py: replay on /topic/** and /event/**, a
bearer-token policy): npm `jsforce` (its Faye client with
`StreamingExtension.Replay`, driven by jsforce_client.mjs) and PyPI
`aiosfstream-ng` (its Client with a ReplayMarkerStorage and replay_fallback).
Each resumes from a stored replayId and receives exactly the events it
missed; -1 and -2 behave as Salesforce documents them; an expired or
unknown replayId fails the subscribe with Salesforce's error.  Events are
published with the server HTTP API."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from harness import INTEROP_DIR, ServerProcess, start_server
from interop.helpers import api_publish
from interop.salesforce_app import TOKEN

KEY = "interop-sf-api-key"
VERSION = "45.0"
JSFORCE_CLIENT = INTEROP_DIR / "jsforce_client.mjs"
INVALID = "400::The replayId {%d} you provided was invalid.  Please provide a valid ID, "


def start(*args: str) -> ServerProcess:
    return start_server(
        "--app",
        "tests.interop.salesforce_app:app",
        "--api-key",
        KEY,
        "--history-size",
        "50",
        *args,
        target="engine",
    )


@pytest.fixture
def org() -> Iterator[ServerProcess]:
    """The server, offering WebSocket and long-polling (aiosfstream moves to
    WebSocket after its HTTP handshake)."""
    server = start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def polling_org() -> Iterator[ServerProcess]:
    """The server offering long-polling only, as Salesforce does (jsforce's
    Faye opens a test WebSocket while it handshakes over HTTP, before it has
    the BAYEUX_BROWSER cookie; a connect on that socket is now and then told
    402::session_unknown: not a replay matter, see the report)."""
    server = start("--allowed-transports", "long-polling")
    try:
        yield server
    finally:
        server.stop()


def instance_url(server: ServerProcess, host: str = "127.0.0.1") -> str:
    return f"http://{host}:{server.port}"


def aiosfstream_org(server: ServerProcess) -> Any:
    """The authenticator for `server`, named `localhost`: aiohttp's cookie
    jar drops cookies from IP-address hosts (tests/interop/README.md), and
    the session's BAYEUX_BROWSER cookie must come back."""
    from interop.aiosfstream_driver import LocalOrg

    return LocalOrg(instance_url(server, "localhost"), TOKEN)


def publish(server: ServerProcess, channel: str, *values: Any) -> None:
    api_publish(server.port, KEY, channel, *values)


# ------------------------------------------------------------------ jsforce


class Jsforce:
    """One run of jsforce_client.mjs; `live` are published once it is subscribed."""

    def __init__(self, node: str, server: ServerProcess, channel: str) -> None:
        self.node, self.server, self.channel = node, server, channel

    def run(
        self,
        replay: int | None,
        count: int,
        live: tuple[Any, ...] = (),
        token: str = TOKEN,
        on_event: Callable[[subprocess.Popen[str], int], None] | None = None,
    ) -> dict[str, Any]:
        """`on_event(process, n)` after the n-th event (from 1)."""
        cmd = [self.node, str(JSFORCE_CLIENT), instance_url(self.server), token, self.channel]
        cmd += ["--count", str(count), "--version", VERSION, "--timeout", "15000"]
        if replay is not None:
            cmd.append(f"--replay={replay}")
        proc = subprocess.Popen(
            cmd, cwd=INTEROP_DIR, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None
        result: dict[str, Any] | None = None
        seen = 0
        for line in proc.stdout:
            message = json.loads(line)
            if message.get("subscribed"):
                publish(self.server, self.channel, *live)
            elif "event" in message:
                seen += 1
                if on_event is not None:
                    on_event(proc, seen)
            else:
                result = message
        stderr = proc.stderr.read() if proc.stderr else ""
        proc.wait(10)
        assert result is not None, f"no result from jsforce_client.mjs:\n{stderr}"
        return result


@pytest.fixture
def jsforce(node_bin: str, polling_org: ServerProcess) -> Jsforce:
    return Jsforce(node_bin, polling_org, "/topic/Orders")


def payloads(received: list[dict[str, Any]]) -> list[Any]:
    return [m["payload"] for m in received]


def replay_ids(received: list[dict[str, Any]]) -> list[int]:
    return [m["event"]["replayId"] for m in received]


def test_jsforce_resumes_from_a_stored_replay_id(jsforce: Jsforce) -> None:
    # First run: new events only (-1); it stores the last replayId it saw.
    first = jsforce.run(-1, 3, live=({"n": 1}, {"n": 2}, {"n": 3}))
    assert first["ok"], first
    assert payloads(first["received"]) == [{"n": 1}, {"n": 2}, {"n": 3}]
    stored = replay_ids(first["received"])[-1]
    subscribe = next(
        e["message"]
        for e in first["wire"]
        if e["dir"] == "send" and e["message"]["channel"] == "/meta/subscribe"
    )
    assert subscribe["ext"]["replay"] == {"/topic/Orders": -1}  # what the Replay extension sends

    # Published while it is away.
    publish(jsforce.server, "/topic/Orders", {"n": 4}, {"n": 5})

    # Second run from the stored replayId: exactly 4 and 5, then live 6.
    again = jsforce.run(stored, 3, live=({"n": 6},))
    assert again["ok"], again
    assert payloads(again["received"]) == [{"n": 4}, {"n": 5}, {"n": 6}]
    assert replay_ids(again["received"]) == [stored + 1, stored + 2, stored + 3]
    assert all(m["event"]["createdDate"].endswith("Z") for m in again["received"])

    # -2: everything retained, then live.
    everything = jsforce.run(-2, 7, live=({"n": 7},))
    assert everything["ok"], everything
    assert payloads(everything["received"]) == [{"n": n} for n in range(1, 8)]

    # -1 again: only what comes after the subscribe.
    new = jsforce.run(-1, 1, live=({"n": 8},))
    assert payloads(new["received"]) == [{"n": 8}]
    connect = next(
        e["message"]
        for e in new["wire"]
        if e["dir"] == "send" and e["message"]["channel"] == "/meta/connect"
    )
    assert connect["connectionType"] == "long-polling"


def test_jsforce_rehandshakes_and_resubscribes_from_its_last_replay_id(
    node_bin: str,
) -> None:
    """The client is frozen (SIGSTOP) past max_interval: its session expires
    and events are published meanwhile.  Thawed, Faye is told to handshake
    again and resubscribes; jsforce's Replay extension sends the last replayId
    it saw, and the missed events come, each once."""
    server = start(
        "--allowed-transports", "long-polling", "--timeout", "800", "--max-interval", "800"
    )
    try:
        jsforce = Jsforce(node_bin, server, "/topic/Frozen")

        def freeze(proc: subprocess.Popen[str], n: int) -> None:
            if n != 2:
                return
            os.kill(proc.pid, signal.SIGSTOP)
            try:
                deadline = time.monotonic() + 10
                while subscribers(server, "/topic/Frozen"):  # until its session expired
                    assert time.monotonic() < deadline, "the frozen session did not expire"
                    time.sleep(0.1)
                publish(server, "/topic/Frozen", 3, 4, 5)
            finally:
                os.kill(proc.pid, signal.SIGCONT)

        result = jsforce.run(-1, 5, live=(1, 2), on_event=freeze)
        assert result["ok"], result
        assert payloads(result["received"]) == [1, 2, 3, 4, 5]
        ids = replay_ids(result["received"])
        assert ids == [ids[0] + n for n in range(5)]
        sent = [e["message"] for e in result["wire"] if e["dir"] == "send"]
        handshakes = [m for m in sent if m["channel"] == "/meta/handshake"]
        subscribes = [m for m in sent if m["channel"] == "/meta/subscribe"]
        assert len(handshakes) == 2, sent
        assert [m["ext"]["replay"] for m in subscribes] == [
            {"/topic/Frozen": -1},
            {"/topic/Frozen": ids[1]},  # the last one it saw before the freeze
        ]
    finally:
        server.stop()


def subscribers(server: ServerProcess, channel: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/api/channels" + channel, headers={"X-API-Key": KEY})
    resp = conn.getresponse()
    answer = json.loads(resp.read())
    conn.close()
    return int(answer["result"]["subscribers"])


def test_jsforce_with_an_expired_or_unknown_replay_id(jsforce: Jsforce) -> None:
    seen = jsforce.run(-1, 1, live=("a",))
    stored = replay_ids(seen["received"])[0]
    publish(jsforce.server, "/topic/Orders", *range(60))  # past --history-size 50
    for bad in (stored, stored + 10**6):  # dropped; never reached
        result = jsforce.run(bad, 1)
        assert result["ok"] is False and result["received"] == []
        # Faye's subscription errback gets an Error with the server's error.
        assert result["error"]["message"].startswith(INVALID % bad), result["error"]
        failure = next(
            e["message"]
            for e in result["wire"]
            if e["dir"] == "recv" and e["message"]["channel"] == "/meta/subscribe"
        )
        assert failure["successful"] is False
        assert failure["error"].startswith(INVALID % bad)
    # A wrong token: no handshake, and jsforce's AuthFailure extension says so.
    denied = jsforce.run(-1, 1, token="wrong")
    assert denied["ok"] is False and denied["error"]["text"] == "auth failure", denied
    assert denied["error"]["message"].startswith("403:"), denied


# ------------------------------------------------------------ aiosfstream-ng


def test_aiosfstream_resumes_from_a_stored_replay_id(org: ServerProcess) -> None:
    asyncio.run(_aiosfstream_scenario(org))


async def _aiosfstream_scenario(org: ServerProcess) -> None:
    from interop.aiosfstream_driver import receive

    auth = aiosfstream_org(org)
    channel = "/event/Shipment__e"
    markers: dict[str, Any] = {}  # aiosfstream's MappingStorage: channel -> ReplayMarker

    # First: new events only; the markers are stored as messages are consumed.
    got = await receive(auth, channel, markers, 2, live=lambda: publish(org, channel, 1, 2))
    assert [m["data"]["payload"] for m in got] == [1, 2]
    stored = markers[channel].replay_id
    assert stored == got[-1]["data"]["event"]["replayId"]

    publish(org, channel, 3, 4, 5)  # while it is away

    # Resumed from the stored marker: exactly 3, 4, 5, then live 6.
    got = await receive(auth, channel, markers, 4, live=lambda: publish(org, channel, 6))
    assert [m["data"]["payload"] for m in got] == [3, 4, 5, 6]
    assert [m["data"]["event"]["replayId"] for m in got] == [stored + n for n in range(1, 5)]
    assert markers[channel].replay_id == stored + 4

    # -2 (ReplayOption.ALL_EVENTS): every retained event.
    from aiosfstream_ng import ReplayOption

    got = await receive(auth, channel, ReplayOption.ALL_EVENTS, 6)
    assert [m["data"]["payload"] for m in got] == [1, 2, 3, 4, 5, 6]

    # -1 (ReplayOption.NEW_EVENTS, the Client's default): only what follows.
    got = await receive(
        auth, channel, ReplayOption.NEW_EVENTS, 1, live=lambda: publish(org, channel, 7)
    )
    assert [m["data"]["payload"] for m in got] == [7]


def test_aiosfstream_after_a_restart_falls_back(org: ServerProcess) -> None:
    """A marker stored before the server restarted is from an older stream:
    the subscribe fails with Salesforce's 400, and aiosfstream's
    replay_fallback resubscribes with -2 (never a replay from the wrong place)."""
    asyncio.run(_restart_scenario(org))


async def _restart_scenario(org: ServerProcess) -> None:
    from aiosfstream_ng import ReplayOption
    from aiosfstream_ng.exceptions import ServerError
    from interop.aiosfstream_driver import receive

    channel = "/event/Restart__e"
    markers: dict[str, Any] = {}
    auth = aiosfstream_org(org)
    await receive(auth, channel, markers, 1, live=lambda: publish(org, channel, "old"))
    stored = markers[channel].replay_id
    org.stop()
    restarted = start()
    try:
        auth = aiosfstream_org(restarted)
        publish(restarted, channel, "new 1", "new 2")
        with pytest.raises(ServerError) as failed:
            await receive(auth, channel, dict(markers), 1)
        assert failed.value.error_code == 400
        assert failed.value.error.startswith(INVALID % stored)
        got = await receive(auth, channel, markers, 2, fallback=ReplayOption.ALL_EVENTS)
        assert [m["data"]["payload"] for m in got] == ["new 1", "new 2"]
        assert got[0]["data"]["event"]["replayId"] > stored
    finally:
        restarted.stop()
