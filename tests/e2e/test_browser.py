"""The chat example (examples/chat) end to end in a real browser.

Debian's Chromium (`/usr/bin/chromium`, or `$ENGINE_CHROMIUM`) is driven by
`playwright-core` from npm (tests/browser/chat_driver.mjs, one scenario per
run); the page uses the npm `cometd` 9 client that the engine serves beside it.
Both npm trees are installed here with `npm ci` when missing.  Without
chromium or node the browser tests are skipped, unless `CI` is set: there,
that is a failure.

The first two tests need no browser: the example's server rules over plain
HTTP long-polling, and `python -m engine serve --app examples.chat.server:server`
with command-line options on top of the module's.
"""

from __future__ import annotations

import fcntl
import http.client
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import ROOT, ServerProcess, ServerStartError, running_server, start_server
from support import Browser

CHAT_DIR = ROOT / "examples" / "chat"
DRIVER_DIR = ROOT / "tests" / "browser"
DRIVER = DRIVER_DIR / "chat_driver.mjs"
APP = "examples.chat.server:server"

# Short server timeouts keep the scenarios fast: a held connect lasts 5 s and
# a closed tab's session expires 3 s after its last connect.
SERVER_ARGS = ("--timeout", "5000", "--max-interval", "3000")
DRIVER_TIMEOUT_S = 45  # one scenario, launch to close (the driver's own is 40 s)

pytestmark = pytest.mark.timeout(90)


def _unavailable(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI is set: this is an error, not a skip)", pytrace=False)
    pytest.skip(message)


def chromium_path() -> str | None:
    wanted = os.environ.get("ENGINE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    return wanted if os.path.isfile(wanted) and os.access(wanted, os.X_OK) else None


# ------------------------------------------------------------- npm installs


def _installed(directory: Path, packages: tuple[str, ...]) -> bool:
    modules = directory / "node_modules"
    marker = modules / ".package-lock.json"
    if not marker.is_file():
        return False
    if (directory / "package-lock.json").stat().st_mtime > marker.stat().st_mtime:
        return False
    return all((modules / name / "package.json").is_file() for name in packages)


def npm_ci(directory: Path, packages: tuple[str, ...]) -> None:
    """`npm ci` in `directory` unless its node_modules is current (safe across processes)."""
    if _installed(directory, packages):
        return
    npm = shutil.which("npm")
    if npm is None:
        _unavailable("npm not found on PATH: the browser tests install their npm packages")
    lock_path = Path(tempfile.gettempdir()) / f"engine-browser-npm-{os.getuid()}.lock"
    with open(lock_path, "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        if _installed(directory, packages):
            return
        cmd = [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"]
        result = subprocess.run(
            cmd,
            cwd=directory,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if result.returncode != 0:
            pytest.fail(
                f"{' '.join(cmd)} failed ({result.returncode}) in {directory}\n"
                f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}",
                pytrace=False,
            )


@pytest.fixture(scope="module")
def chat_client_installed() -> None:
    """examples/chat/node_modules/cometd: the server module serves it."""
    if shutil.which("node") is None:
        _unavailable("node not found on PATH: the chat example's client comes from npm")
    npm_ci(CHAT_DIR, ("cometd",))


@pytest.fixture(scope="module")
def browser_tools(chat_client_installed: None) -> dict[str, str]:
    chromium = chromium_path()
    if chromium is None:
        _unavailable(
            "chromium not found (apt-get install chromium, or set ENGINE_CHROMIUM): "
            "the browser tests drive it"
        )
    npm_ci(DRIVER_DIR, ("playwright-core",))
    node = shutil.which("node")
    assert node is not None and chromium is not None
    return {"node": node, "chromium": chromium}


# ------------------------------------------------------- the server process


def start_chat_server() -> ServerProcess:
    """`serve --app examples.chat.server:server` with the test options."""
    try:
        return start_server("--app", APP, *SERVER_ARGS, target="engine")
    except ServerStartError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def chat_server(chat_client_installed: None) -> Iterator[ServerProcess]:
    server = start_chat_server()
    try:
        yield server
    finally:
        server.assert_stopped_cleanly()


def base_url(server: ServerProcess) -> str:
    assert server.url.endswith("/cometd"), server.ready_line
    return server.url[: -len("/cometd")]


def drive(
    tools: dict[str, str],
    server: ServerProcess,
    scenario: str,
    *extra: str,
) -> dict[str, Any]:
    """Run one driver scenario; return its `result` (fail with everything seen)."""
    cmd = [
        tools["node"],
        str(DRIVER),
        scenario,
        base_url(server),
        "--chromium",
        tools["chromium"],
        *extra,
    ]
    started = time.monotonic()
    try:
        proc = subprocess.run(
            cmd,
            cwd=DRIVER_DIR,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=DRIVER_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(
            f"{scenario}: the driver did not finish within {DRIVER_TIMEOUT_S} s\n"
            f"stdout: {exc.stdout!r}\nstderr: {exc.stderr!r}\n--- server ---\n"
            f"{server.describe()}",
            pytrace=False,
        )
    took = time.monotonic() - started
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    report = json.loads(lines[-1]) if lines else None
    if proc.returncode != 0 or report is None or not report.get("ok"):
        shown = json.dumps(report, indent=1) if report is not None else proc.stdout[-5000:]
        pytest.fail(
            f"{scenario} failed (exit {proc.returncode}, {took:.1f} s)\n{shown}\n"
            f"--- driver stderr ---\n{proc.stderr[-5000:]}\n--- server ---\n"
            f"{server.describe()}",
            pytrace=False,
        )
    assert not [line for line in report["console"] if "pageerror" in line or " error: " in line], (
        report["console"]
    )
    return report["result"]


def chat_lines(page: dict[str, Any]) -> list[tuple[str, str]]:
    return [(m["user"], m["text"]) for m in page["messages"]]


# ------------------------------------------------------------------- tests


def _events(resp: Any) -> list[dict[str, Any]]:
    return [e for e in resp.events() if e.get("channel") == "/chat/room"]


def test_chat_server_rules_over_plain_http(chat_client_installed: None) -> None:
    """The example's services without a browser: join, say, refusals, leave."""
    from examples.chat.server import create_server

    with running_server(app=create_server()) as server:
        # The page and the client library are served beside the endpoint.
        host, port = server.address
        conn = http.client.HTTPConnection(host, port, timeout=5)
        for path, kind in (
            ("/chat/", "text/html"),
            ("/chat/chat.js", "javascript"),
            ("/chat/vendor/cometd/cometd.js", "javascript"),
            ("/bayeux-engine/cometd-recovery.js", "javascript"),
        ):
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 200 and kind in resp.headers["Content-Type"], path
        conn.request("GET", "/chat/vendor/cometd/../../../server.py")
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 404
        conn.close()

        ann, bob = Browser(server).ready(), Browser(server).ready()
        try:
            seen: list[dict[str, Any]] = []
            assert ann.subscribe("/chat/room").reply("/meta/subscribe")["successful"]
            direct = ann.publish("/chat/room", {"kind": "message", "user": "x", "text": "hi"})
            assert direct.reply("/chat/room")["error"] == "404::message_deleted"
            early = ann.publish("/service/chat/say", {"text": "hello?"})
            assert early.reply("/service/chat/say")["error"] == "403::service_denied"
            for bad in ("", "   ", "x" * 33, "tab\u0000name", 42):
                refused = bob.publish("/service/chat/join", {"name": bad})
                assert refused.reply("/service/chat/join")["error"] == "403::service_denied"

            joined = ann.publish("/service/chat/join", {"name": "  Ann   Lee "})
            answers = [
                m
                for m in joined.messages
                if m.get("channel") == "/service/chat/join" and "data" in m
            ]
            assert answers[0]["data"] == {"name": "Ann Lee", "members": ["Ann Lee"]}
            seen += _events(joined)
            bob.publish("/service/chat/join", {"name": "bob"})
            # Bob cannot speak under another name: the server stamps his.
            bob.publish("/service/chat/say", {"text": "  hi   Ann ", "user": "Ann Lee"})
            seen += _events(ann.connect())
            assert bob.send([bob.message("/meta/disconnect")]).reply("/meta/disconnect")[
                "successful"
            ]
            seen += _events(ann.connect())
        finally:
            ann.close()
            bob.close()

    data = [e["data"] for e in seen]
    assert [(d["kind"], d["user"]) for d in data] == [
        ("join", "Ann Lee"),
        ("join", "bob"),
        ("message", "bob"),
        ("leave", "bob"),
    ]
    assert data[1]["members"] == ["Ann Lee", "bob"]
    assert data[2]["text"] == "hi Ann" and isinstance(data[2]["ts"], int)
    assert data[3] == {"kind": "leave", "user": "bob", "reason": "left", "members": ["Ann Lee"]}


def test_served_with_serve_app(chat_server: ServerProcess) -> None:
    """`serve --app examples.chat.server:server`: the page, and the options given."""
    body = json.dumps(
        [
            {
                "channel": "/meta/handshake",
                "version": "1.0",
                "supportedConnectionTypes": ["websocket"],
            }
        ]
    ).encode()
    request = urllib.request.Request(
        chat_server.url, data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=5) as resp:
        reply = json.loads(resp.read())[0]
    assert reply["successful"], reply
    assert reply["advice"]["timeout"] == 5000  # --timeout 5000 over the module's default
    with urllib.request.urlopen(base_url(chat_server) + "/chat/", timeout=5) as resp:
        assert b"<title>engine chat</title>" in resp.read()


def test_two_users_chat_over_websocket(
    browser_tools: dict[str, str], chat_server: ServerProcess
) -> None:
    screenshot = Path(tempfile.gettempdir()) / "engine-chat-two-users.png"
    result = drive(browser_tools, chat_server, "two_users", "--screenshot", str(screenshot))
    hello = ("alice", "hello from alice")
    hostile = ("bob", "<img src=x onerror=\"document.title='pwned'\"> <b>hi</b> alice")
    for name in ("alice", "bob"):
        page = result["during"][name]
        assert page["transport"] == "websocket", page
        assert page["state"] == "connected"
        assert page["members"] == ["alice", "bob"]
        assert chat_lines(page) == [hello, hostile]
        # The markup a user typed is shown as text, never parsed.
        assert page["foreign_elements"] == []
        assert page["advice"] is None  # different browsers: no multiple-clients
    assert result["alice_title"] == "engine chat"
    after = result["after_leave"]
    assert after["members"] == ["alice"]
    assert any(n.startswith("bob left") for n in after["notices"]), after["notices"]
    assert screenshot.is_file() and screenshot.stat().st_size > 0


def test_two_tabs_share_the_browser_over_long_polling(
    browser_tools: dict[str, str], chat_server: ServerProcess
) -> None:
    result = drive(browser_tools, chat_server, "two_tabs")
    adviced = result["adviced"]
    other = {"tab1": "tab2", "tab2": "tab1"}[adviced]
    advice = result["at_advice"][adviced]["advice"]
    assert advice == "another tab is connected: polling every 2 s"
    # Which tab holds the browser's one long-poll can change whenever an
    # event ends a hold (then the other tab may get it and this one the
    # advice), so only the advised tab's state is asserted; both must work.
    assert result["at_advice"][other]["state"] == "connected"
    for name in ("tab1", "tab2"):
        page = result["after"][name]
        assert page["transport"] == "long-polling", page
        assert page["state"] == "connected"
        assert sorted(page["members"]) == ["carol", "dave"]
        assert sorted(chat_lines(page)) == [("carol", "from tab 1"), ("dave", "from tab 2")]


def test_page_over_websocket_and_long_polling(
    browser_tools: dict[str, str], chat_server: ServerProcess
) -> None:
    result = drive(browser_tools, chat_server, "mixed")["after"]
    ws, lp = result["ws"], result["lp"]
    assert ws["transport"] == "websocket"
    assert lp["transport"] == "long-polling"
    # /chat?transport=long-polling was redirected to the page's own URL.
    assert lp["url"].endswith("/chat/?transport=long-polling")
    expected = [("erin", "sent over websocket"), ("frank", "sent over long-polling")]
    for page in (ws, lp):
        assert page["state"] == "connected" and page["advice"] is None
        assert sorted(chat_lines(page)) == expected
        assert page["members"] == ["erin", "frank"]


@pytest.mark.parametrize("transport", ["websocket", "long-polling"])
def test_missed_messages_recovered_after_an_outage(
    browser_tools: dict[str, str], chat_server: ServerProcess, transport: str
) -> None:
    """gina's browser is offline until the server has dropped her session
    (hank sees her time out) while hank says three things; back online, her
    page handshakes again and the RecoveryExtension brings those three,
    once, in order, before what comes next."""
    result = drive(browser_tools, chat_server, "recover", "--transport", transport)
    gina = result["after"]["gina"]
    assert gina["transport"] == transport and gina["state"] == "connected", gina
    assert result["saw_before_back"] == ["before"]
    assert result["texts"] == ["before", "away 1", "away 2", "away 3", "after"], result
    # Her new session joined the room again (the old one timed out).
    assert gina["notices"][-2:] == ["gina left (timed out)", "gina joined"], gina
    if transport == "websocket":
        assert result["routed"]["closed"] >= 1 and result["routed"]["refused"] >= 1, result


def test_page_over_https_and_wss(browser_tools: dict[str, str], tmp_path: Path) -> None:
    # The page, its script and the Bayeux endpoint over TLS, with a
    # certificate made now; Chromium trusts that key alone (an SPKI pin).
    import base64
    import hashlib

    import trustme
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    pem = tmp_path / "server.pem"
    leaf.private_key_and_cert_chain_pem.write_to_path(str(pem))
    cert = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    pin = base64.b64encode(hashlib.sha256(spki).digest()).decode()
    try:
        server = start_server(
            "--app", APP, *SERVER_ARGS, "--ssl-certfile", str(pem), target="engine"
        )
    except ServerStartError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        assert server.url.startswith("https://")
        result = drive(browser_tools, server, "mixed", "--trust-spki", pin)["after"]
        assert result["ws"]["transport"] == "websocket"
        assert result["lp"]["transport"] == "long-polling"
        for page in (result["ws"], result["lp"]):
            assert page["url"].startswith("https://"), page
            assert page["state"] == "connected"
            assert sorted(chat_lines(page)) == [
                ("erin", "sent over websocket"),
                ("frank", "sent over long-polling"),
            ]
    finally:
        server.assert_stopped_cleanly()
