"""The README's "Publishing from your backend" and "Authentication" sections run
as written (on a free port instead of 8080), from a scratch directory."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jwt
from harness import ROOT, ServerProcess, running_server
from redis_server import free_port
from support import Browser

from examples import hmac_auth

README = (ROOT / "README.md").read_text()


def section(title: str) -> str:
    return README.split(title, 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]


def blocks(text: str, kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", re.sub(r"\n  ", "\n", text), re.S)


def env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }


def serve_line(line: str, port: int, cwd: Path) -> ServerProcess:
    args = line.removeprefix("python -m engine serve").removesuffix("&").split()
    command = [sys.executable, "-m", "engine", "serve", "--port", str(port), *args]
    server = ServerProcess(command, port, cwd, env())
    server.wait_ready(30)
    return server


def stub(port: int) -> Any:
    return SimpleNamespace(address=("127.0.0.1", port), options=SimpleNamespace(path="/cometd"))


def test_publishing_from_your_backend(tmp_path: Path) -> None:
    text = section("## Publishing from your backend")
    (commands,) = blocks(text, "sh")
    lines = commands.replace("\\\n", "").splitlines()
    port = free_port()
    lines = [line.replace("8080", str(port)) for line in lines]
    assert lines[0].startswith("printf ") and lines[1].startswith("python -m engine serve")
    subprocess.run(lines[0], shell=True, cwd=tmp_path, check=True)
    server = serve_line(lines[1], port, tmp_path)
    try:
        browser = Browser(stub(port)).ready()
        assert browser.subscribe("/chat/lobby").reply("/meta/subscribe")["successful"]
        for line in lines[2:]:
            if "engine publish" in line:  # (its URL default is 8080: the README's port)
                line = line.replace(
                    "python -m engine publish",
                    f"python -m engine publish --url http://127.0.0.1:{port}/api",
                )
            done = subprocess.run(
                line,
                shell=True,
                cwd=tmp_path,
                env=env(),
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert done.returncode == 0 and '"/chat/lobby"' in done.stdout, (line, done.stderr)
        (python_code,) = blocks(text, "python")
        exec(compile(python_code.replace("8080", str(port)), "README", "exec"), {})
        got: list[Any] = []
        deadline = time.monotonic() + 10
        while len(got) < 3 and time.monotonic() < deadline:
            got += [e["data"] for e in browser.connect().events()]
        assert got == [{"text": "hello"}] * 3
    finally:
        server.stop()


def test_authentication_with_a_jwt(tmp_path: Path) -> None:
    text = section("## Authentication")
    commands = blocks(text, "sh")[0].splitlines()
    port = free_port()
    subprocess.run(commands[0], shell=True, cwd=tmp_path, check=True)
    secret = (tmp_path / "jwt.secret").read_text()
    server = serve_line(commands[1], port, tmp_path)
    try:
        token = jwt.encode(
            {"sub": "eve", "aud": "chat", "exp": int(time.time()) + 60}, secret, algorithm="HS256"
        )
        admitted = Browser(stub(port)).handshake(ext={"token": token}).reply("/meta/handshake")
        assert admitted["successful"], admitted
        refused = Browser(stub(port)).handshake().reply("/meta/handshake")
        assert refused["successful"] is False
    finally:
        server.stop()
    # The cookie policy shown runs as written (examples/cookie_login.py is the
    # full example, with the CometD JS client in tests/interop/test_interop_auth.py).
    (snippet,) = blocks(text, "python")
    namespace: dict[str, Any] = {}
    exec(compile(snippet, "README", "exec"), namespace)
    policy = namespace["SessionCookiePolicy"]()

    def setup(server: Any) -> None:
        server.policy = policy

    with running_server(setup=setup) as app:
        login = hmac_auth.sign("frank", int(time.time()) + 60)
        browser = Browser(app)
        browser.cookies = f"session={login}"
        reply = browser.handshake().reply("/meta/handshake")
        assert reply["successful"], reply
        assert app.session(reply["clientId"]).attributes == {"user": "frank"}  # type: ignore[union-attr]
        assert not Browser(app).handshake().reply("/meta/handshake")["successful"]
