"""Starting the server under test: the one harness every test uses.

* ``start_server(*args)`` starts ``python -m engine serve --host 127.0.0.1
  --port <free port> --path /cometd *args`` as a process, waits for its ready
  line (the first stdout line holding the URL) and returns a
  :class:`ServerProcess`; ``stop()`` sends SIGTERM (SIGKILL after 10 s) and
  ``assert_stopped_cleanly()`` also wants exit code 0.
* ``running_server(setup, app, **options)`` runs a server in this process, on
  its own uvloop loop in a thread, so a test can look at its state.
* ``ensure_node_modules()`` installs the Node.js interop clients.

``ENGINE_INTEROP_TARGET=ref`` makes ``start_server`` start the reference server
``tests/interop/ref_server.mjs`` (npm cometd-nodejs-server, long-polling only)
instead of the engine, for debugging the interop harness itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import uvloop
from interop.helpers import interop_target

from engine import BayeuxServer, ServerOptions

ROOT = Path(__file__).resolve().parent.parent
INTEROP_DIR = Path(__file__).resolve().parent / "interop"
NODE_MODULES = INTEROP_DIR / "node_modules"

READY_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
URL_RE = re.compile(r"(https?://\S+)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _StreamReader(threading.Thread):
    """Drains a pipe into a list of lines so the child never blocks on it."""

    def __init__(self, stream, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.stream = stream
        self.lines: list[str] = []
        self.cond = threading.Condition()
        self.closed = False

    def run(self) -> None:
        try:
            for raw in iter(self.stream.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                with self.cond:
                    self.lines.append(line)
                    self.cond.notify_all()
        finally:
            with self.cond:
                self.closed = True
                self.cond.notify_all()

    def text(self) -> str:
        with self.cond:
            return "\n".join(self.lines)


class ServerProcess:
    """A running server: ``url``, ``port``, ``proc``; ``stop()`` on teardown."""

    def __init__(self, cmd: list[str], port: int, cwd: Path, env: dict[str, str]) -> None:
        self.cmd = cmd
        self.port = port
        self.url: str = ""
        self.ready_line: str = ""
        self.returncode: int | None = None
        self.proc = subprocess.Popen(
            cmd,
            cwd=str(cwd),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._stdout = _StreamReader(self.proc.stdout, f"server-stdout-{port}")
        self._stderr = _StreamReader(self.proc.stderr, f"server-stderr-{port}")
        self._stdout.start()
        self._stderr.start()

    # -- output -------------------------------------------------------------

    @property
    def stdout(self) -> str:
        return self._stdout.text()

    @property
    def stderr(self) -> str:
        return self._stderr.text()

    def describe(self) -> str:
        return (
            f"command: {' '.join(self.cmd)}\n"
            f"returncode: {self.proc.poll()}\n"
            f"--- stdout ---\n{self.stdout}\n"
            f"--- stderr ---\n{self.stderr[-20000:]}"
        )

    # -- lifecycle ----------------------------------------------------------

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        reader = self._stdout
        problem = None
        with reader.cond:
            while True:
                for line in reader.lines:
                    m = URL_RE.search(line)
                    if m:
                        self.ready_line = line
                        self.url = m.group(1).rstrip("/")
                        return
                if reader.closed or self.proc.poll() is not None:
                    problem = "server exited before printing its ready line"
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    problem = f"no ready line (containing the URL) on stdout within {timeout:.0f} s"
                    break
                reader.cond.wait(min(remaining, 0.2))
        if self.proc.poll() is not None:
            # Let the readers drain what is left, for the report.
            self._stdout.join(timeout=1.0)
            self._stderr.join(timeout=1.0)
        raise ServerStartError(f"{problem}\n{self.describe()}")

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, wait up to ``timeout`` s, then SIGKILL. Returns the exit code,
        or None if the process had to be killed."""
        if self.returncode is not None:
            return self.returncode
        killed = False
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                killed = True
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._stdout.join(timeout=2)
        self._stderr.join(timeout=2)
        self.returncode = None if killed else self.proc.returncode
        return self.returncode

    def assert_stopped_cleanly(self) -> None:
        rc = self.stop()
        if rc is None:
            pytest.fail(
                f"server did not exit within {STOP_TIMEOUT:.0f} s of SIGTERM (killed)\n"
                f"{self.describe()}"
            )
        if rc != 0:
            pytest.fail(f"server exited with {rc} after SIGTERM (expected 0)\n{self.describe()}")

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def pid_alive(pid: int) -> bool:
    """Whether process `pid` still runs (a zombie does not count)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


class ServerStartError(RuntimeError):
    pass


def _server_command(port: int, args: tuple[str, ...], target: str) -> tuple[list[str], Path]:
    common = ["--host", "127.0.0.1", "--port", str(port), "--path", "/cometd", *args]
    if target == "ref":
        node = shutil.which("node")
        if node is None:
            pytest.skip("ENGINE_INTEROP_TARGET=ref needs node")
        ensure_node_modules()
        return [node, str(INTEROP_DIR / "ref_server.mjs"), *common], INTEROP_DIR
    return [sys.executable, "-m", "engine", "serve", *common], ROOT


def start_server(
    *args: str, ready_timeout: float = READY_TIMEOUT, target: str | None = None
) -> ServerProcess:
    """Start the server under test on a free port and wait until it is ready.

    ``args`` are appended to ``serve --host 127.0.0.1 --port P --path /cometd``.
    Raises :class:`ServerStartError` (with the captured output) if the ready
    line does not appear within ``ready_timeout`` seconds.  ``target``
    "engine" always starts the engine (a test of an engine application);
    by default ``ENGINE_INTEROP_TARGET`` decides.
    """
    target = target or interop_target()
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    last_error: Exception | None = None
    for _attempt in range(3):
        port = free_port()
        cmd, cwd = _server_command(port, tuple(args), target)
        server = ServerProcess(cmd, port, cwd, env)
        try:
            server.wait_ready(ready_timeout)
            return server
        except ServerStartError as exc:
            server.stop(timeout=2)
            last_error = exc
            # Retry only when the port was taken between probing and binding.
            text = server.stderr.lower()
            if "address already in use" not in text and "eaddrinuse" not in text:
                break
    assert last_error is not None
    raise last_error


@contextmanager
def running_server(
    setup: Any = None, app: BayeuxServer | None = None, **options: Any
) -> Iterator[BayeuxServer]:
    """A started server; `setup(server)` may register services etc. first.

    `app` runs an application's own server object, with `options` applied
    on top of its options (a free port by default).
    """
    options.setdefault("port", 0)
    if app is not None:
        server = app
        server.configure(**options)
    else:
        server = BayeuxServer(ServerOptions(**options))
    if setup is not None:
        setup(server)
    loop = uvloop.new_event_loop()
    started = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(server.start())
        except BaseException as exc:  # reported to the test below
            failure.append(exc)
            started.set()
            return
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    started.wait(10)
    if failure:
        raise failure[0]
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


# ---------------------------------------------------------------------------
# Node.js interop clients


def _node_missing(what: str) -> None:
    message = f"{what} not found on PATH: the interop tests need Node.js and npm"
    if os.environ.get("CI"):
        pytest.fail(message + " (CI is set: this is an error, not a skip)", pytrace=False)
    pytest.skip(message)


def _modules_up_to_date() -> bool:
    marker = NODE_MODULES / ".package-lock.json"
    lock = INTEROP_DIR / "package-lock.json"
    if not marker.is_file():
        return False
    if lock.is_file() and lock.stat().st_mtime > marker.stat().st_mtime:
        return False
    required = ("cometd", "cometd-nodejs-client", "faye", "cometd-nodejs-server", "ws")
    return all((NODE_MODULES / name / "package.json").is_file() for name in required)


def ensure_node_modules() -> Path:
    """Install tests/interop/node_modules (npm ci, or npm install without a
    lock file) unless it is already there; safe to call from several processes."""
    if shutil.which("node") is None:
        _node_missing("node")
    if _modules_up_to_date():
        return NODE_MODULES
    npm = shutil.which("npm")
    if npm is None:
        _node_missing("npm")
    lock_path = Path(tempfile.gettempdir()) / f"engine-interop-npm-{os.getuid()}.lock"
    with open(lock_path, "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            if _modules_up_to_date():
                return NODE_MODULES
            has_lock = (INTEROP_DIR / "package-lock.json").is_file()
            cmd = [npm, "ci" if has_lock else "install", "--no-audit", "--no-fund"]
            try:
                result = subprocess.run(
                    cmd,
                    cwd=str(INTEROP_DIR),
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    text=True,
                    timeout=600,
                )
            except subprocess.TimeoutExpired as exc:
                pytest.fail(f"{' '.join(cmd)} timed out after 600 s", pytrace=False)
                raise AssertionError from exc  # unreachable
            if result.returncode != 0:
                pytest.fail(
                    f"{' '.join(cmd)} failed ({result.returncode}) in {INTEROP_DIR}\n"
                    f"{result.stdout[-5000:]}\n{result.stderr[-5000:]}",
                    pytrace=False,
                )
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)
    return NODE_MODULES
