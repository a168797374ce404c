"""Helpers shared by the interop tests (not a test module)."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest

# node_clients.py asserts like a test module; conftest.py imports this module
# before any test module imports that one.
pytest.register_assert_rewrite("interop.node_clients")

INTEROP_DIR = Path(__file__).resolve().parent

TARGET_ENV = "ENGINE_INTEROP_TARGET"


def interop_target() -> str:
    """Which server the fixtures start: ``engine`` (default, ``python -m engine
    serve``) or ``ref`` (tests/interop/ref_server.mjs, the npm
    cometd-nodejs-server reference; for debugging the harness)."""
    target = os.environ.get(TARGET_ENV, "engine").strip().lower() or "engine"
    if target not in ("engine", "ref"):
        raise ValueError(f"{TARGET_ENV} must be 'engine' or 'ref', not {target!r}")
    return target


JS_CLIENT = INTEROP_DIR / "cometd_client.mjs"
FAYE_CLIENT = INTEROP_DIR / "faye_client.mjs"

# Transports the server must offer today: tests for them never skip.
# websocket and callback-polling are exercised automatically as soon as the
# server lists them in its handshake reply; add them here once they are
# supposed to be always there, so that losing one becomes a failure.
REQUIRED_TRANSPORTS = ("long-polling", "websocket", "callback-polling")
ALL_TRANSPORTS = ("long-polling", "websocket", "callback-polling")

# Bayeux extensions (https://docs.cometd.org/current/reference/#_extensions) whose
# JS-client interop tests must pass. The others are skipped while the server
# shows no sign of supporting them (no ext.ack in the handshake reply, no
# ext.timesync in meta replies); add them here once implemented.
REQUIRED_EXTENSIONS: tuple[str, ...] = ("ack", "timesync")


def server_transports(url: str, timeout: float = 5.0) -> list[str]:
    """The ``supportedConnectionTypes`` of a plain long-polling handshake."""
    body = json.dumps(
        [
            {
                "id": "1",
                "channel": "/meta/handshake",
                "version": "1.0",
                "minimumVersion": "1.0",
                "supportedConnectionTypes": list(ALL_TRANSPORTS),
            }
        ]
    ).encode()
    req = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        replies = json.loads(resp.read().decode("utf-8"))
    if isinstance(replies, dict):
        replies = [replies]
    for reply in replies:
        if reply.get("channel") == "/meta/handshake":
            return list(reply.get("supportedConnectionTypes") or [])
    return []


def format_wire(wire: list[dict[str, Any]] | None, limit: int = 80) -> str:
    if not wire:
        return "(no wire log)"
    lines = []
    for e in wire[-limit:]:
        who = e.get("client") or e.get("conn") or "?"
        head = f"{e.get('t', '?'):>6}ms {who:>3} {e.get('kind', '?'):>5} {e.get('dir', '?'):<12}"
        extra = []
        if e.get("client") and e.get("conn"):
            extra.append(f"conn={e['conn']}")
        keys = ("method", "url", "path", "status", "contentType", "code", "reason", "error")
        for key in (*keys, "cookie"):
            if e.get(key) not in (None, ""):
                extra.append(f"{key}={e[key]}")
        body = e.get("body")
        text = body if isinstance(body, str) else json.dumps(body, separators=(",", ":"))
        if body is not None:
            extra.append(text if len(text) < 600 else text[:600] + "...")
        lines.append(head + " " + " ".join(str(x) for x in extra))
    if len(wire) > limit:
        lines.insert(0, f"... {len(wire) - limit} earlier entries omitted")
    return "\n".join(lines)


class JsRunError(AssertionError):
    pass


def run_js(
    node: str,
    url: str,
    scenario: str,
    transport: str | None = "long-polling",
    *,
    timeout_ms: int = 20000,
    extra: tuple[str, ...] = (),
    expect_ok: bool = True,
    script: Path = JS_CLIENT,
) -> dict[str, Any]:
    """Run one scenario of cometd_client.mjs (or ``script``, e.g.
    :data:`FAYE_CLIENT`) and return its JSON result.

    With ``expect_ok`` (default) a failed scenario raises an AssertionError
    carrying the error, the results, the wire log and node's stderr.
    """
    cmd = [node, str(script), url, scenario, "--timeout", str(timeout_ms), *extra]
    if transport:
        cmd += ["--transport", transport]
    try:
        proc = subprocess.run(
            cmd,
            cwd=str(INTEROP_DIR),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout_ms / 1000 + 15,
        )
    except subprocess.TimeoutExpired as exc:
        raise JsRunError(
            f"node did not exit: {' '.join(cmd)}\nstderr:\n{(exc.stderr or '')[-4000:]}"
        ) from exc
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    result: dict[str, Any] | None = None
    if lines:
        try:
            result = json.loads(lines[-1])
        except json.JSONDecodeError:
            result = None
    if result is None:
        raise JsRunError(
            f"no JSON result from {' '.join(cmd)} (exit {proc.returncode})\n"
            f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
        )
    result["exit_code"] = proc.returncode
    result["stderr"] = proc.stderr
    if expect_ok and (not result.get("ok") or proc.returncode != 0):
        raise JsRunError(describe_js_failure(result, cmd))
    return result


def describe_js_failure(result: dict[str, Any], cmd: list[str] | None = None) -> str:
    results = json.dumps(result.get("results"), indent=1)[:6000]
    return (
        f"{result.get('client', 'cometd')} JS scenario {result.get('scenario')!r} failed "
        f"(exit {result.get('exit_code')}, transport {result.get('transport')!r}): "
        f"{result.get('error')}\n"
        + (f"command: {' '.join(cmd)}\n" if cmd else "")
        + f"results: {results}\n"
        + f"--- wire ---\n{format_wire(result.get('wire'))}\n"
        + f"--- node stderr ---\n{(result.get('stderr') or '')[-3000:]}"
    )


def api_publish(port: int, key: str, channel: str, *values: Any) -> None:
    """Publish each value on `channel` through a server's HTTP API
    (engine.client.Publisher, as a backend would)."""
    from engine.client import Publisher

    with Publisher(f"http://127.0.0.1:{port}/api", api_key=key, retries=0) as publisher:
        for value in values:
            publisher.publish(channel, value)
