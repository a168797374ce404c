"""The suite against two other Bayeux servers, Faye (bench/peers/faye_server.mjs)
and CometD's Node server (tests/interop/ref_server.mjs): their verdicts must
match the ones recorded in tests/check/peer_verdicts.json (and listed, with
the reasons, in docs/conformance.md), so a change in the checks or the peers
is noticed.  ENGINE_RECORD_PEER_VERDICTS=1 rewrites the file instead."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
from harness import INTEROP_DIR, ROOT, ensure_node_modules, free_port

from engine.check.cli import main

VERDICTS = Path(__file__).with_name("peer_verdicts.json")
PEERS_DIR = ROOT / "bench" / "peers"
# Each peer: its script, the flags it needs (what it lacks), its directory.
PEERS: dict[str, tuple[Path, list[str]]] = {
    # Faye sets no BAYEUX_BROWSER cookie (it has no multiple-clients logic).
    "faye": (PEERS_DIR / "faye_server.mjs", ["--no-browser-cookie"]),
    # Long-polling only: its websocket and JSONP checks skip by themselves.
    "cometd-nodejs-server": (INTEROP_DIR / "ref_server.mjs", []),
}
URL = re.compile(r"https?://127\.0\.0\.1:\d+/cometd")


@pytest.fixture
def peer(request: pytest.FixtureRequest) -> Iterator[str]:
    """Start the peer named by the test's parameter; its URL."""
    name: str = request.param
    node = shutil.which("node")
    if node is None:
        pytest.fail("the peer servers need node (./scripts/test installs it)")
    if name == "faye" and not (PEERS_DIR / "node_modules" / "faye").is_dir():
        # ./scripts/test installs it; a run of this file alone does it here
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=PEERS_DIR,
            check=True,
            timeout=600,
        )
    if name != "faye":
        ensure_node_modules()
    script, _ = PEERS[name]
    port = free_port()
    proc = subprocess.Popen(
        [
            node,
            str(script),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--path",
            "/cometd",
            "--timeout",
            "3000",
        ],
        cwd=script.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        line = ""
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line or URL.search(line):
                break
        match = URL.search(line)
        assert match, f"{name} did not start: {line!r}"
        yield match.group(0)
    finally:
        proc.terminate()
        proc.wait(10)


def run_suite(url: str, flags: list[str], junit: Path) -> dict[str, str]:
    main([url, "--strict", *flags, "--check-timeout", "20", "--junit", str(junit)])
    verdicts = {}
    for case in ET.parse(junit).getroot().findall("testcase"):
        status = "PASS"
        if case.find("failure") is not None:
            status = "FAIL"
        elif case.find("skipped") is not None:
            status = "SKIP"
        verdicts[str(case.get("name"))] = status
    return verdicts


@pytest.mark.parametrize("peer", sorted(PEERS), indirect=True)
def test_peer_verdicts_as_recorded(
    peer: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    name = request.node.callspec.params["peer"]
    got = run_suite(peer, PEERS[name][1], tmp_path / "peer.xml")
    recorded = json.loads(VERDICTS.read_text()) if VERDICTS.exists() else {}
    if os.environ.get("ENGINE_RECORD_PEER_VERDICTS"):
        recorded[name] = got
        VERDICTS.write_text(json.dumps(recorded, indent=2, sort_keys=True) + "\n")
        return
    changed = {
        check: (recorded.get(name, {}).get(check), status)
        for check, status in got.items()
        if recorded.get(name, {}).get(check) != status
    }
    assert not changed, (
        f"{name}: verdicts (recorded, now) changed: {changed}; if intended, re-record with "
        "ENGINE_RECORD_PEER_VERDICTS=1 and update docs/conformance.md"
    )
