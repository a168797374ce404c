"""Shared pieces of the bench scenarios.

- ``ServerProcess``: start the server under test (``python -m engine serve`` by
  default, or any command template), wait for the line that carries its URL,
  keep draining its output, and kill its whole process group on exit.
- ``/proc`` readers: resident memory (``VmRSS`` in ``/proc/PID/status``) and CPU
  time (utime + stime + cutime + cstime in ``/proc/PID/stat``) of a process and
  all its live descendants, so a server that forks workers is measured whole.
- ``machine_info`` and ``write_record``: the JSON record every scenario leaves
  in ``bench/results/``.
- ``ChildGuard``: every child process a scenario starts is registered here and
  killed (process group, SIGTERM then SIGKILL) on any exit path.
- ``LineChild``: a helper process (load generator, publisher, churn worker)
  talking JSON lines on stdout and words on stdin; ``stop_quietly`` and
  ``stop_server`` end a run; ``split_clients`` and ``source_addresses`` share
  the clients out.
- ``run_scenario``: the peer-then-engine runner of the scenarios that start a
  server, returning the record (``scenario_record``); ``print_tables`` prints
  the peer's table, the engine's and both side by side.
- ``add_*_args`` and ``check_loopback``: command-line options the scenarios
  share word for word.
- ``start_redis``: a throw-away ``redis-server`` on a free loopback port (the
  broker of a multi-worker server), registered with a ``ChildGuard``.
- ``hist_*``: a signed, logarithmic histogram (sparse dict of bucket -> count)
  that the load generators fill and the scenarios merge and read percentiles
  from: about 6 % resolution, negative values included (heartbeat lateness).
  ``percentile_ms`` reads the fixed-edge histograms (setup, churn latency).

Only the standard library is used here, so the scenario commands start fast and
the numbers do not depend on a third-party process inspector.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import datetime as _dt
import importlib.metadata
import json
import math
import os
import platform
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "RunError",
    "record_header",
    "scenario_record",
    "run_scenario",
    "print_tables",
    "BENCH_DIR",
    "REPO_DIR",
    "DEFAULT_SERVER_CMD",
    "ChildGuard",
    "child_setup",
    "LineChild",
    "stop_quietly",
    "stop_server",
    "split_clients",
    "source_addresses",
    "ServerProcess",
    "ServerStartError",
    "RedisServer",
    "start_redis",
    "free_port",
    "process_tree",
    "read_rss_bytes",
    "read_cpu_seconds",
    "tree_rss_bytes",
    "tree_pss_bytes",
    "read_pss_bytes",
    "tree_cpu_seconds",
    "tree_cpu_split",
    "machine_cpu_seconds",
    "machine_info",
    "write_record",
    "utc_stamp",
    "format_table",
    "human_bytes",
    "na",
    "log",
    "ProgressBar",
    "shell_join",
    "add_server_args",
    "add_listen_args",
    "add_results_dir_arg",
    "check_loopback",
    "PEERS",
    "PeerSetupError",
    "peer_server_cmd",
    "peer_versions",
    "format_comparison",
    "ratio",
    "hist_add",
    "hist_merge",
    "hist_sub",
    "hist_count",
    "hist_percentile",
    "hist_edges",
    "percentile_ms",
]

#: The checkout this package runs from (editable install), with its bench/.
REPO_DIR = Path(__file__).resolve().parents[2]
BENCH_DIR = REPO_DIR / "bench"

#: Placeholders: {python} {host} {port} {path} {timeout}.
DEFAULT_SERVER_CMD = (
    "{python} -m engine serve --host {host} --port {port} --path {path} --timeout {timeout}"
)

PEERS_DIR = BENCH_DIR / "peers"
#: Peer servers ``--peer NAME`` runs first, with the same scenario and timeout.
PEERS: dict[str, dict[str, Any]] = {
    "faye": {
        "script": PEERS_DIR / "faye_server.mjs",
        "module": "faye",  # node_modules/<module> must exist
        "template": "node {script} --host {{host}} --port {{port}} --path {{path}} "
        "--timeout {{timeout}}",
    },
}

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_URL_RE = re.compile(r"\bhttps?://[^\s'\"<>]+")
_PROBLEM_RE = re.compile(r"\b(WARNING|ERROR|CRITICAL|Traceback)\b")


# --------------------------------------------------------------------------- /proc


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (which may hold spaces)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode("ascii", "replace")
    except OSError:
        return None
    end = raw.rfind(")")
    if end < 0:
        return None
    # After ")": state(3) ppid(4) ... utime(14) stime(15) cutime(16) cstime(17)
    return raw[end + 2 :].split()


def read_cpu_seconds(pid: int) -> float | None:
    """utime + stime + cutime + cstime of one process, in seconds.

    cutime/cstime cover children already reaped by ``pid``; live children are
    not included there (they are counted by ``tree_cpu_seconds``), so there is
    no double counting.
    """
    f = _stat_fields(pid)
    if f is None or len(f) < 15:
        return None
    ticks = int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
    return ticks / _CLK_TCK


def read_cpu_split(pid: int) -> tuple[float, float] | None:
    """(user, system) CPU seconds of one process, reaped children included."""
    f = _stat_fields(pid)
    if f is None or len(f) < 15:
        return None
    return (int(f[11]) + int(f[13])) / _CLK_TCK, (int(f[12]) + int(f[14])) / _CLK_TCK


def tree_cpu_split(root: int) -> tuple[float, float] | None:
    """(user, system) CPU seconds summed over ``root`` and its descendants:
    system time on a loopback benchmark is mostly the TCP stack (send/recv)."""
    user = system = 0.0
    seen = False
    for pid in process_tree(root):
        split = read_cpu_split(pid)
        if split is not None:
            user += split[0]
            system += split[1]
            seen = True
    return (user, system) if seen else None


def machine_cpu_seconds() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of the whole machine since boot, all CPUs
    (/proc/stat). Two readings give how busy the machine was in between, which
    shows load from outside the benchmark (other processes on the box)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [int(x) for x in fields[1:]]
    total = sum(ticks[:8])  # user nice system idle iowait irq softirq steal
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    return (total - idle) / _CLK_TCK, total / _CLK_TCK


def read_rss_bytes(pid: int) -> int | None:
    """VmRSS of one process in bytes (None if the process is gone)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    parts = line.split()
                    return int(parts[1]) * 1024  # always kB
    except OSError:
        return None
    # Kernel threads and zombies have no VmRSS line.
    return 0


def process_tree(root: int, max_procs: int = 4096) -> list[int]:
    """``root`` and all its live descendants (one scan of /proc, bounded)."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return [root]
    for name in entries:
        if not name.isdigit():
            continue
        f = _stat_fields(int(name))
        if f is None or len(f) < 2:
            continue
        children.setdefault(int(f[1]), []).append(int(name))
    out: list[int] = []
    todo = [root]
    while todo and len(out) < max_procs:
        pid = todo.pop()
        if pid in out:
            continue
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def _tree_sum(root: int, read: Callable[[int], Any]) -> Any:
    """``read(pid)`` summed over ``root`` and its live descendants; None when
    no process of the tree could be read (one walk for RSS, PSS and CPU)."""
    total = 0
    seen = False
    for pid in process_tree(root):
        value = read(pid)
        if value is not None:
            total += value
            seen = True
    return total if seen else None


def tree_rss_bytes(root: int) -> int | None:
    """Sum of VmRSS over ``root`` and its descendants.

    Pages shared between forked workers are counted once per process, as every
    process-level tool does; a multi-process server's figure is an upper bound.
    """
    return _tree_sum(root, read_rss_bytes)


def read_pss_bytes(pid: int) -> int | None:
    """Proportional set size of one process (``Pss`` in /proc/PID/smaps_rollup):
    pages shared with other processes (forked workers) count for their share."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return 0


def tree_pss_bytes(root: int) -> int | None:
    """Sum of PSS over ``root`` and its descendants: the memory the whole
    process tree really holds (shared pages counted once in all)."""
    return _tree_sum(root, read_pss_bytes)


def tree_cpu_seconds(root: int) -> float | None:
    """Sum of CPU seconds (user + system, own + reaped children) over the tree."""
    return _tree_sum(root, read_cpu_seconds)


# --------------------------------------------------------------------------- processes


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _kill_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    f = _stat_fields(pid)
    return f is not None and f[0] != "Z"


class ChildGuard:
    """Remembers every child started in its own session and kills them all.

    Children are started with ``start_new_session=True``, so each one leads a
    process group and ``killpg`` also reaches whatever it forked (server workers).
    ``kill_all`` is idempotent and bounded in time; it runs from ``finally``
    blocks and from the SIGTERM/SIGHUP handler installed by ``install_signals``.
    """

    def __init__(self) -> None:
        self._pids: list[int] = []

    def add(self, pid: int) -> None:
        self._pids.append(pid)

    def kill_all(self, grace: float = 3.0) -> None:
        pids = [p for p in self._pids if _alive(p)]
        for pid in pids:
            _kill_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while pids and time.monotonic() < deadline:
            for pid in pids:
                with contextlib.suppress(ChildProcessError, OSError):
                    os.waitpid(pid, os.WNOHANG)
            pids = [p for p in pids if _alive(p)]
            if pids:
                time.sleep(0.05)
        for pid in pids:
            _kill_group(pid, signal.SIGKILL)
        for pid in self._pids:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
        self._pids.clear()

    def install_signals(self) -> None:
        """SIGTERM/SIGHUP: kill children, then exit (SIGINT raises KeyboardInterrupt)."""

        def handler(signum: int, _frame: Any) -> None:
            self.kill_all(grace=1.0)
            raise SystemExit(128 + signum)

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGHUP, handler)


class RedisServer:
    """A ``redis-server`` this scenario started (see ``start_redis``)."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, workdir: Path) -> None:
        self.proc = proc
        self.port = port
        self.workdir = workdir

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss(self) -> int | None:
        return read_rss_bytes(self.proc.pid) if self.alive() else None

    def cpu(self) -> float | None:
        return read_cpu_seconds(self.proc.pid) if self.alive() else None

    def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after ``grace`` s; idempotent."""
        if self.proc.poll() is None:
            _kill_group(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                _kill_group(self.proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(grace)
        return self.proc.returncode


def start_redis(
    workdir: Path, guard: ChildGuard, *, binary: str | None = None, timeout: float = 10.0
) -> RedisServer:
    """Start ``redis-server`` on a free 127.0.0.1 port, persistence off, its
    files in ``workdir``, and wait until it answers PING.

    It runs in its own session, registered with ``guard`` (killed with every
    other child on any exit path) and dies with this process (PDEATHSIG).
    Raises ``RunError`` when there is no ``redis-server`` or it does not answer
    within ``timeout`` seconds.
    """
    import shutil

    binary = binary or shutil.which("redis-server")
    if binary is None:
        raise RunError("redis-server not found on PATH (Debian: apt-get install redis-server)")
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=child_setup,
    )
    guard.add(proc.pid)
    redis = RedisServer(proc, port, workdir)
    deadline = time.monotonic() + timeout
    # bounded by the deadline
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RunError(f"redis-server exited with code {proc.returncode} at start")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return redis
        except OSError:
            time.sleep(0.05)
    redis.stop(1.0)
    raise RunError(f"redis-server did not answer PING within {timeout:.0f} s")


class ServerStartError(RuntimeError):
    """The server did not print its URL in time, or exited first."""


class ServerProcess:
    """The server under test, started from a command template.

    The template is split with ``shlex`` and each word formatted with
    ``python host port path timeout``. The server must print a line holding its
    URL (``http://...``) on stdout or stderr once it accepts connections; the
    first such URL is used as given. With ``ready_marker`` only a line holding
    that text counts (a multi-worker engine logs each worker's URL before its
    supervisor prints ``engine serving URL (N workers)`` once all are ready).
    Output keeps being drained (last lines are kept for error reports, and
    lines that look like warnings or errors are counted) so the server never
    blocks on a full pipe.
    """

    def __init__(
        self,
        template: str,
        *,
        host: str,
        port: int,
        path: str,
        timeout_ms: int,
        guard: ChildGuard,
        cwd: Path = REPO_DIR,
        log_lines: int = 200,
        ready_marker: str | None = None,
    ) -> None:
        fields = {
            "python": shlex.quote(sys.executable),
            "host": host,
            "port": str(port),
            "path": path,
            "timeout": str(timeout_ms),
        }
        try:
            self.argv = [w.format(**fields) for w in shlex.split(template)]
        except (KeyError, IndexError, ValueError) as exc:
            raise ServerStartError(
                f"bad server command template {template!r}: {exc!r} (placeholders: "
                "{python} {host} {port} {path} {timeout}; write other braces doubled)"
            ) from None
        self.cwd = cwd
        # `{python} ...` is this repository's engine; any other command is
        # someone else's (another checkout's venv, a peer) and must not pick
        # up this repository's `engine` package from the working directory.
        self.own_python = template.lstrip().startswith("{python}")
        self.guard = guard
        self.proc: asyncio.subprocess.Process | None = None
        self.url: str | None = None
        self.lines: deque[str] = deque(maxlen=log_lines)
        self.ready_marker = ready_marker
        #: Lines saying WARNING, ERROR or Traceback: count and the first few.
        self.problems = 0
        self.problem_lines: list[str] = []
        self._drain: asyncio.Task[None] | None = None

    @classmethod
    def for_args(
        cls, template: str, args: Any, port: int, guard: ChildGuard, **options: Any
    ) -> ServerProcess:
        """The server of a scenario: host, path and timeout from its options."""
        return cls(
            template,
            host=args.host,
            port=port,
            path=args.path,
            timeout_ms=args.timeout,
            guard=guard,
            **options,
        )

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    async def start(self, startup_timeout: float) -> str:
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        if self.own_python:
            pythonpath = env.get("PYTHONPATH")
            env["PYTHONPATH"] = str(self.cwd) + (os.pathsep + pythonpath if pythonpath else "")
        else:
            env["PYTHONSAFEPATH"] = "1"  # python -m ... does not put the cwd on sys.path
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            cwd=str(self.cwd),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=child_setup,
        )
        self.guard.add(self.proc.pid)
        found: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._drain = asyncio.create_task(self._read_output(found))
        try:
            self.url = await asyncio.wait_for(asyncio.shield(found), startup_timeout)
        except TimeoutError:
            raise ServerStartError(
                f"server printed no URL within {startup_timeout:.0f} s: {self.argv}\n" + self.tail()
            ) from None
        return self.url

    async def _read_output(self, found: asyncio.Future[str]) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        stream = self.proc.stdout
        while True:
            try:
                raw = await stream.readline()
            except (ValueError, asyncio.LimitOverrunError):
                raw = await stream.read(65536)
            if not raw:
                break
            line = raw.decode("utf-8", "replace").rstrip()
            self.lines.append(line)
            if _PROBLEM_RE.search(line):
                self.problems += 1
                if len(self.problem_lines) < 20:
                    self.problem_lines.append(line[:300])
            if not found.done() and (self.ready_marker is None or self.ready_marker in line):
                m = _URL_RE.search(line)
                if m:
                    found.set_result(m.group(0).rstrip(".,;)"))
        if not found.done():
            code = await self.proc.wait()
            found.set_exception(
                ServerStartError(f"server exited with code {code}: {self.argv}\n" + self.tail())
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def tail(self, n: int = 30) -> str:
        return "\n".join(list(self.lines)[-n:])

    async def stop(self, grace: float = 5.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            _kill_group(self.proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), grace)
            except TimeoutError:
                _kill_group(self.proc.pid, signal.SIGKILL)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.proc.wait(), grace)
        if self._drain is not None:
            self._drain.cancel()
            with contextlib.suppress(BaseException):
                await self._drain
        return self.proc.returncode


async def stop_server(server: ServerProcess | None) -> int | None:
    """Stop the server at the end of a run and return its exit code; RunError
    when it had died before (the figures would be of a crash)."""
    if server is None:
        return None
    alive = server.alive()
    code = await server.stop()
    if not alive:
        raise RunError("server exited before the end of the run:\n" + server.tail())
    return code


class LineChild:
    """A helper process of a scenario (load generator, publisher, churn worker).

    It prints JSON objects, one a line, on its stdout (each handed to
    ``on_line``) and reads words on its stdin (``send``); its stderr is kept
    (the last 20 lines, for error reports) and, with ``echo``, copied to ours
    as ``[label] line``. It runs in its own session, registered with a
    ``ChildGuard``.
    """

    def __init__(self, argv: list[str], label: str, *, echo: bool = True) -> None:
        self.argv = argv
        self.label = label
        self.echo = echo
        self.proc: asyncio.subprocess.Process | None = None
        self.stderr_tail: list[str] = []
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    async def start(self, guard: ChildGuard) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            preexec_fn=child_setup,
        )
        guard.add(self.proc.pid)
        self._tasks = [
            asyncio.create_task(self._read_stdout()),
            asyncio.create_task(self._read_stderr()),
        ]

    def on_line(self, d: dict[str, Any]) -> None:
        """One JSON object the child printed (subclasses keep what they need)."""

    def on_eof(self) -> None:
        """The child closed its stdout (it exited)."""

    async def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while True:
            try:
                line = await self.proc.stdout.readline()
            except (ValueError, asyncio.LimitOverrunError):
                continue  # a line over the stream limit: skipped
            if not line:
                self.on_eof()
                return
            try:
                d = json.loads(line)
            except ValueError:
                continue
            if isinstance(d, dict):
                self.on_line(d)

    async def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while True:
            line = await self.proc.stderr.readline()
            if not line:
                return
            text = line.decode("utf-8", "replace").rstrip()
            self.stderr_tail = (self.stderr_tail + [text])[-20:]
            if self.echo:
                sys.stderr.write(f"[{self.label}] {text}\n")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def send(self, line: str) -> None:
        """Write one line to its stdin (nothing once it is closed)."""
        if self.proc is None or self.proc.stdin is None or self.proc.stdin.is_closing():
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            self.proc.stdin.write(line.encode() + b"\n")

    async def stop(self, timeout: float, word: str | None = "stop") -> None:
        """Send ``word`` and close its stdin, kill it when it has not exited
        within ``timeout`` s, then let its readers take its last lines."""
        if self.proc is None:
            return
        if word is not None:
            self.send(word)
        if self.proc.stdin is not None:
            with contextlib.suppress(Exception):
                self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 2.0)
        for t in self._tasks:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(t, 2.0)


async def stop_quietly(children: Sequence[LineChild | None], server: ServerProcess | None) -> None:
    """On any exit path of a run: stop the children still alive, then the
    server, ignoring their errors (the run's own error is the one to report)."""
    for child in children:
        if child is not None and child.alive():
            with contextlib.suppress(Exception):
                await child.stop(3.0)
    if server is not None:
        with contextlib.suppress(Exception):
            await server.stop()


def split_clients(n: int, procs: int) -> list[tuple[int, int]]:
    """(start index, count) per generator, as even as possible."""
    base, extra = divmod(n, procs)
    out = []
    start = 0
    for i in range(procs):
        count = base + (1 if i < extra else 0)
        out.append((start, count))
        start += count
    return out


def source_addresses(count: int) -> list[str]:
    """The loopback source addresses clients connect from: 127.0.0.1 .. 127.0.0.<count>."""
    return [f"127.0.0.{i}" for i in range(1, count + 1)]


_PR_SET_PDEATHSIG = 1


def child_setup() -> None:
    """In a child between fork and exec: die with the parent, and lift the
    open-files soft limit to the hard limit.

    ``PR_SET_PDEATHSIG`` covers the one exit path ``ChildGuard`` cannot: the
    scenario process itself being SIGKILLed.
    """
    import ctypes
    import resource

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# --------------------------------------------------------------------------- records


def utc_stamp(now: float | None = None) -> str:
    t = _dt.datetime.fromtimestamp(time.time() if now is None else now, _dt.UTC)
    return t.strftime("%Y%m%dT%H%M%SZ")


def _version(dist: str) -> str | None:
    """A package's version; "engine" is this project (distribution bayeux-engine)."""
    try:
        return importlib.metadata.version("bayeux-engine" if dist == "engine" else dist)
    except importlib.metadata.PackageNotFoundError:
        pass
    if dist == "engine":  # run from the source tree, not installed
        import tomllib

        try:
            with open(REPO_DIR / "pyproject.toml", "rb") as f:
                return str(tomllib.load(f)["project"]["version"]) + " (source tree)"
        except (OSError, KeyError, ValueError):
            return None
    return None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_DIR), *args],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def _git_revision() -> str | None:
    rev = (_git("rev-parse", "HEAD") or "").strip()
    return rev or None


def _git_dirty() -> bool | None:
    """True when engine/ or src_pyx/ differ from HEAD (the figures are then of
    uncommitted code)."""
    out = _git("status", "--porcelain", "--", "engine", "src_pyx")
    return None if out is None else bool(out.strip())


def machine_info(packages: Iterable[str] = ("engine", "uvloop", "httptools", "orjson")) -> dict:
    import resource

    try:
        with open("/proc/meminfo") as f:
            mem_kb = int(f.readline().split()[1])
    except (OSError, ValueError, IndexError):
        mem_kb = None
    model = None
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    return {
        "hostname": platform.node(),
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "mem_total_bytes": mem_kb * 1024 if mem_kb else None,
        "kernel": platform.release(),
        "system": platform.system(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "nofile_limit": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
        "packages": {name: _version(name) for name in packages},
        "git_revision": _git_revision(),
        "git_dirty": _git_dirty(),
    }


def write_record(results_dir: Path, name: str, record: dict) -> Path:
    """Write ``record`` as ``<results_dir>/<name>.json`` (never overwrites)."""
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{name}.json"
    n = 1
    while path.exists() and n < 1000:
        path = results_dir / f"{name}-{n}.json"
        n += 1
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
    return path


# --------------------------------------------------------------------------- output


def human_bytes(n: float | None) -> str:
    if n is None:
        return "n/a"
    sign = "-" if n < 0 else ""
    n = abs(float(n))
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{sign}{n:.0f} {unit}" if unit == "B" else f"{sign}{n:.1f} {unit}"
        n /= 1024
    return f"{sign}{n:.1f} GiB"


def na(v: Any, spec: str = "{:,}") -> str:
    """A figure for a table: ``spec.format(v)``, or "n/a" when it is missing."""
    return "n/a" if v is None else spec.format(v)


def log(enabled: bool, text: str) -> None:
    """A progress line on stderr (stdout carries the tables), unless --no-progress."""
    if enabled:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()


def format_table(rows: Sequence[tuple[str, str]], title: str | None = None) -> str:
    width = max((len(k) for k, _ in rows), default=0)
    vwidth = max((len(v) for _, v in rows), default=0)
    line = "-" * (width + vwidth + 5)
    out = []
    if title:
        out.append(title)
    out.append(line)
    for k, v in rows:
        out.append(f"  {k.ljust(width)}   {v.rjust(vwidth)}")
    out.append(line)
    return "\n".join(out)


class ProgressBar:
    """A one-line progress bar on stderr (a plain log line every few seconds
    when stderr is not a terminal, so CI logs stay readable)."""

    def __init__(self, label: str, total: float, enabled: bool = True) -> None:
        self.label = label
        self.total = max(total, 1e-9)
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self._last_log = 0.0

    def update(self, done: float, extra: str = "") -> None:
        if not self.enabled:
            return
        frac = min(max(done / self.total, 0.0), 1.0)
        if self.tty:
            width = 30
            fill = int(frac * width)
            bar = "#" * fill + "." * (width - fill)
            sys.stderr.write(f"\r{self.label:<6} [{bar}] {frac * 100:5.1f}% {extra}\033[K")
            sys.stderr.flush()
        else:
            now = time.monotonic()
            if now - self._last_log >= 2.0:
                self._last_log = now
                sys.stderr.write(f"{self.label}: {frac * 100:5.1f}% {extra}\n")
                sys.stderr.flush()

    def close(self, extra: str = "") -> None:
        if not self.enabled:
            return
        if self.tty:
            self._last_log = 0.0
            self.update(self.total, extra)
            sys.stderr.write("\n")
        else:
            sys.stderr.write(f"{self.label}: done {extra}\n")
        sys.stderr.flush()


def shell_join(argv: Sequence[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)


def ratio(engine: float | None, peer: float | None) -> float | None:
    """engine / peer, None when either is missing or the peer's is 0."""
    if engine is None or peer is None or peer == 0:
        return None
    return engine / peer


def format_comparison(
    rows: Sequence[tuple[str, str, str, str]],
    names: tuple[str, str, str] = ("peer", "engine", "engine/peer"),
    title: str | None = None,
) -> str:
    """A four-column table: what, the peer's value, the engine's, the ratio."""
    header = ("", *names)
    table = [header, *rows]
    widths = [max(len(r[i]) for r in table) for i in range(4)]
    line = "-" * (sum(widths) + 3 * 3 + 2)
    out = [title] if title else []
    out.append(line)
    for i, r in enumerate(table):
        cells = [r[0].ljust(widths[0])] + [r[j].rjust(widths[j]) for j in (1, 2, 3)]
        out.append("  " + "   ".join(cells))
        if i == 0:
            out.append(line)
    out.append(line)
    return "\n".join(out)


# --------------------------------------------------------------------------- command line


def add_server_args(p: argparse.ArgumentParser) -> None:
    """--timeout, --server-cmd or --url, --server-pid: the server under test,
    as the scenarios holding idle clients (idle.py, fanout.py) take it."""
    p.add_argument(
        "--timeout", type=int, default=10000, help="server connect timeout in ms (--timeout MS)"
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--server-cmd",
        default=DEFAULT_SERVER_CMD,
        help="server command template; placeholders {python} {host} {port} {path} {timeout}; "
        "it must print a line holding its URL when ready",
    )
    src.add_argument("--url", default=None, help="use an already running server at this URL")
    p.add_argument(
        "--server-pid",
        type=int,
        default=None,
        help="with --url: pid of the server (RSS and CPU of it and its descendants)",
    )


def add_listen_args(p: argparse.ArgumentParser) -> None:
    """--host, --port, --path of the server the scenario starts."""
    p.add_argument("--host", default="127.0.0.1", help="address the started server listens on")
    p.add_argument("--port", type=int, default=0, help="port for the started server (0: free)")
    p.add_argument("--path", default="/cometd", help="server path for the started server")


def add_results_dir_arg(
    p: argparse.ArgumentParser, help_text: str = "where the JSON record is written"
) -> None:
    """--results-dir, bench/results/ by default: where every scenario's record goes."""
    p.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results", help=help_text)


def check_loopback(script: str, args: argparse.Namespace) -> None:
    """Refuse a server off 127.0.0.0/8 (--url, --host), and --url with --peer
    (a peer run starts both servers itself)."""
    if args.url is not None:
        u = urlsplit(args.url)
        if not (u.hostname or "").startswith("127.") and u.hostname != "localhost":
            raise SystemExit(f"{script}: only loopback servers (127.0.0.0/8)")
    if not args.host.startswith("127."):
        raise SystemExit(f"{script}: --host must be a loopback address (127.0.0.0/8)")
    if args.peer is not None and args.url is not None:
        raise SystemExit(f"{script}: --peer starts both servers itself; it does not take --url")


# --------------------------------------------------------------------------- peers


class PeerSetupError(RuntimeError):
    """A peer server could not be installed (no node/npm, npm failed)."""


def peer_server_cmd(name: str, *, install: bool = True, timeout: float = 600.0) -> str:
    """The ``--server-cmd`` template of peer ``name``, installing it first.

    Faye: ``npm ci`` (``npm install`` without a lock file) in ``bench/peers``
    when ``node_modules/faye`` is missing; bounded by ``timeout`` seconds.
    """
    peer = PEERS.get(name)
    if peer is None:
        raise PeerSetupError(f"unknown peer {name!r} (known: {', '.join(sorted(PEERS))})")
    import shutil

    if shutil.which("node") is None:
        raise PeerSetupError(f"peer {name} needs node on PATH")
    installed = PEERS_DIR / "node_modules" / peer["module"]
    if not installed.is_dir():
        if not install:
            raise PeerSetupError(f"peer {name} is not installed in {PEERS_DIR}")
        npm = shutil.which("npm")
        if npm is None:
            raise PeerSetupError(f"peer {name} needs npm on PATH to install it")
        import fcntl
        import tempfile

        # One install at a time (several bench runs or test workers may start together).
        lock_path = Path(tempfile.gettempdir()) / f"engine-bench-peers-{os.getuid()}.lock"
        with open(lock_path, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not installed.is_dir():
                _npm_install(npm, name, timeout)
    return str(peer["template"]).format(script=shlex.quote(str(peer["script"])))


def _npm_install(npm: str, name: str, timeout: float) -> None:
    has_lock = (PEERS_DIR / "package-lock.json").exists()
    cmd = [npm, "ci" if has_lock else "install", "--no-audit", "--no-fund", "--loglevel=error"]
    sys.stderr.write(f"installing peer {name}: {shell_join(cmd)} (in {PEERS_DIR})\n")
    try:
        out = subprocess.run(
            cmd, cwd=PEERS_DIR, capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PeerSetupError(f"{shell_join(cmd)} failed: {exc}") from None
    if out.returncode != 0:
        raise PeerSetupError(f"{shell_join(cmd)} failed:\n{out.stdout}\n{out.stderr}")


def peer_versions(name: str) -> dict[str, str | None]:
    """node's version and the peer package's, for the record."""
    peer = PEERS.get(name) or {}
    versions: dict[str, str | None] = {"node": None, name: None}
    try:
        out = subprocess.run(
            ["node", "--version"], capture_output=True, text=True, timeout=10, check=False
        )
        versions["node"] = out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    module = peer.get("module")
    if module:
        with contextlib.suppress(OSError, ValueError, KeyError):
            pkg = PEERS_DIR / "node_modules" / module / "package.json"
            versions[name] = json.loads(pkg.read_text())["version"]
    return versions


class RunError(Exception):
    """The scenario cannot go on (server died, generator died, ...)."""


def run_scenario(
    scenario: str,
    script: str,
    args: Any,
    argv: list[str] | None,
    once: Callable[[Any, ChildGuard], dict[str, Any]],
    *,
    comparison: Callable[[str, dict, dict], dict] | None = None,
    say: Callable[[str], Any] | None = None,
) -> dict[str, Any] | int:
    """Run `once(args, guard)` against `--peer` first (when the scenario has
    one), then against the engine, killing every child in between and at the
    end (and on SIGTERM/SIGHUP); `once` returns the run's parameters and
    results. `say` shows the progress (default: stderr unless --no-progress).

    Returns the record of the run (see `scenario_record`; not written yet), or
    an exit code: 1 when the scenario could not run, 130 when interrupted.
    """
    prog = Path(script).name

    def progress(text: str) -> None:
        log(not args.no_progress, text)

    say = say or progress
    guard = ChildGuard()
    guard.install_signals()
    started = time.time()
    peer = getattr(args, "peer", None)
    peer_record: dict | None = None
    try:
        if peer is not None:
            try:
                peer_cmd = peer_server_cmd(peer)
            except PeerSetupError as exc:
                sys.stderr.write(f"{prog}: {exc}\n")
                return 1
            peer_args = copy.copy(args)
            peer_args.server_cmd = peer_cmd
            say(f"--- peer {peer}: {peer_cmd}")
            peer_record = {"name": peer, "versions": peer_versions(peer)}
            try:
                peer_record.update(once(peer_args, guard))
            except (RunError, ServerStartError) as exc:
                sys.stderr.write(f"{prog}: peer {peer} run failed: {exc}\n")
                peer_record["error"] = str(exc)
            guard.kill_all()
            say("--- engine")
        outcome = once(args, guard)
    except (RunError, ServerStartError) as exc:
        sys.stderr.write(f"{prog}: {exc}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted\n")
        return 130
    finally:
        guard.kill_all()
    return scenario_record(scenario, started, argv, script, outcome, peer_record, comparison)


def record_header(scenario: str, started: float, argv: list[str] | None, script: str) -> dict:
    """The fields every record starts with; `command` reruns the scenario."""
    machine = machine_info()
    machine["platform"] = platform.platform()
    return {
        "scenario": scenario,
        "timestamp": utc_stamp(started),
        "started_at": started,
        "machine": machine,
        "command": [sys.executable, *sys.argv] if argv is None else [sys.executable, script, *argv],
    }


def scenario_record(
    scenario: str,
    started: float,
    argv: list[str] | None,
    script: str,
    outcome: dict[str, Any],
    peer_record: dict[str, Any] | None = None,
    comparison: Callable[[str, dict, dict], dict] | None = None,
) -> dict[str, Any]:
    """The record of a run: header, the engine's parameters and results, then
    the peer's run and ``comparison(peer name, peer results, engine results)``
    when ``--peer`` ran (and got results)."""
    record = {**record_header(scenario, started, argv, script), **outcome}
    if peer_record is not None:
        record["peer"] = peer_record
        if "results" in peer_record and comparison is not None:
            record["comparison"] = comparison(
                peer_record["name"], peer_record["results"], outcome["results"]
            )
    return record


def print_tables(
    record: dict[str, Any], table: Callable[[dict[str, Any]], str], comparison_title: str
) -> None:
    """Print the peer's table (when ``--peer`` ran), the engine's, then the
    side-by-side one: every scenario with a peer shows them this way."""
    peer = record.get("peer")
    if peer is not None and "results" in peer:
        print(table({**peer, "label": peer["name"]}))
        print()
    print(table({**record, "label": "engine" if peer is not None else None}))
    if "comparison" in record:
        name = record["peer"]["name"]
        print()
        print(
            format_comparison(
                [tuple(r) for r in record["comparison"]["rows"]],
                names=(name, "engine", f"engine/{name}"),
                title=comparison_title,
            )
        )


def save_and_print(
    record: dict[str, Any],
    results_dir: Path,
    stem: str,
    table: Callable[[dict[str, Any]], str],
    comparison_title: str,
    suffix: str = "",
) -> Path:
    """Write the record as ``<stem><suffix>-<timestamp>`` (``<stem>-vs-<peer>-...``
    when a peer ran), print its tables and where it went."""
    peer = record.get("peer")
    if peer is not None:
        name = f"{stem}-vs-{peer['name']}-{record['timestamp']}"
    else:
        name = f"{stem}{suffix}-{record['timestamp']}"
    path = write_record(results_dir, name, record)
    print_tables(record, table, comparison_title)
    print(f"record: {path}")
    return path


# --------------------------------------------------------------------------- histograms

#: Buckets per decade of the signed log histogram (edges 10^(k/HIST_PER_DECADE)
#: ms apart, about 6 %); |values| up to 1 ms share bucket 0.
HIST_PER_DECADE = 40
#: Largest bucket index (10^7 ms, beyond any run here); larger values clip.
HIST_MAX_BUCKET = 7 * HIST_PER_DECADE


def hist_bucket(ms: float) -> int:
    """Bucket of ``ms``: 0 for -1 < ms <= 1; b > 0 for 10^((b-1)/D) < ms <= 10^(b/D);
    -b for the mirror image below -1 (D = HIST_PER_DECADE)."""
    a = ms if ms >= 0 else -ms
    if a <= 1.0:
        return 0
    b = min(math.ceil(math.log10(a) * HIST_PER_DECADE - 1e-9), HIST_MAX_BUCKET)
    b = max(b, 1)
    return b if ms > 0 else -b


def hist_edges(bucket: int) -> tuple[float, float]:
    """(low, high) in ms of a bucket: low < value <= high (mirrored below 0)."""
    if bucket == 0:
        return (-1.0, 1.0)
    b = abs(bucket)
    lo, hi = 10.0 ** ((b - 1) / HIST_PER_DECADE), 10.0 ** (b / HIST_PER_DECADE)
    return (lo, hi) if bucket > 0 else (-hi, -lo)


def hist_add(hist: dict[int, int], ms: float) -> None:
    b = hist_bucket(ms)
    hist[b] = hist.get(b, 0) + 1


def _hist_items(hist: dict[Any, int] | None) -> Iterable[tuple[int, int]]:
    """Items of a histogram whose keys may be strings (it went through JSON)."""
    for k, v in (hist or {}).items():
        yield int(k), int(v)


def hist_merge(*hists: dict[Any, int] | None) -> dict[int, int]:
    out: dict[int, int] = {}
    for h in hists:
        for k, v in _hist_items(h):
            out[k] = out.get(k, 0) + v
    return out


def hist_sub(later: dict[Any, int] | None, earlier: dict[Any, int] | None) -> dict[int, int]:
    """What was added between two snapshots of one (merged) histogram."""
    out = hist_merge(later)
    for k, v in _hist_items(earlier):
        out[k] = out.get(k, 0) - v
    return {k: v for k, v in out.items() if v > 0}


def hist_count(hist: dict[Any, int] | None) -> int:
    return sum(v for _, v in _hist_items(hist))


def hist_percentile(hist: dict[Any, int] | None, q: float) -> float | None:
    """Upper edge (ms) of the bucket holding the q-quantile; None when empty."""
    items = sorted(_hist_items(hist))
    total = sum(v for _, v in items)
    if not total:
        return None
    rank = q * total
    seen = 0
    for k, v in items:
        seen += v
        if seen >= rank:
            return hist_edges(k)[1]
    return hist_edges(items[-1][0])[1]


def percentile_ms(hist: list[int], edges_ms: Sequence[float], q: float) -> float | None:
    """Upper edge (ms) of the bucket holding the q-quantile of a histogram
    counted over fixed bucket edges (the last bucket is +inf); None when empty."""
    total = sum(hist)
    if not total:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(hist):
        seen += n
        if seen >= rank:
            return float(edges_ms[i]) if i < len(edges_ms) else math.inf
    return math.inf
