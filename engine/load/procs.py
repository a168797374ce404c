"""The processes of a load run and what /proc says about them.

- ``ServerProcess``: start a server under test from a command template, wait
  for the line carrying its URL, drain its output, kill its process group.
- ``start_redis``: a throw-away ``redis-server`` on a free loopback port.
- ``ChildGuard``: every child is registered and killed on any exit path.
- ``LineChild``: a helper process (generator, publisher, attacker) talking
  JSON lines on stdout and words on stdin.
- ``/proc`` readers: RSS, PSS and CPU of a process and its descendants, so a
  server that forks workers is measured whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

#: The checkout this package runs from (editable install), with its bench/.
REPO_DIR = Path(__file__).resolve().parents[2]
BENCH_DIR = REPO_DIR / "bench"

#: Placeholders: {python} {host} {port} {path} {timeout}.
DEFAULT_SERVER_CMD = (
    "{python} -m engine serve --host {host} --port {port} --path {path} --timeout {timeout}"
)


class RunError(Exception):
    """The scenario cannot go on (server died, generator died, ...)."""


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


_Num = TypeVar("_Num", int, float)


def _tree_sum(root: int, read: Callable[[int], _Num | None]) -> _Num | None:
    """``read(pid)`` summed over ``root`` and its live descendants; None when
    no process of the tree could be read (one walk for RSS, PSS and CPU)."""
    values = [v for v in map(read, process_tree(root)) if v is not None]
    return sum(values[1:], values[0]) if values else None


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
