"""`python -m engine serve --workers N`: N worker processes on one port.

Each worker is `python -m engine serve ... --workers 1 --reuse-port
--node-id <base>w<i>`: a whole server with its own node id (the prefix of its
clientIds), bound to the same port with SO_REUSEPORT so that the kernel
spreads new connections over the workers.  The workers share publishes
through the broker (`--broker redis://...`, required for N > 1).

The supervisor
* prints one ready line, `engine serving URL (N workers)`, once every worker
  printed its own;
* restarts a worker that exits on its own (with a short, growing delay), and
  gives up, stopping everything with exit code 1, when more than
  `MAX_RESTARTS` restarts happen within `RESTART_WINDOW` seconds;
* forwards SIGTERM and SIGINT to the workers, which drain (held connects are
  answered with `reconnect: retry`), and exits 0 when all have exited cleanly;
* makes the kernel send SIGTERM to the workers if it dies itself (Linux
  PR_SET_PDEATHSIG), so that no worker outlives it;
* with `--metrics-port`, serves one metrics endpoint adding up its workers'
  (each worker serves its own on a loopback port it prints; see
  engine.metrics for how counters stay monotonic across restarts).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import json
import logging
import os
import re
import secrets
import signal
import socket
import sys
import time
from collections import deque
from typing import Any

from engine.logs import set_node
from engine.metrics import MetricsListener, WorkerAggregate, fetch_metrics, supervisor_gauges
from engine.options import ServerOptions
from engine.ratelog import CauseLog

__all__ = ["WORKER_INDEX_ENV", "WORKER_OPTIONS_ENV", "Supervisor", "run_supervisor"]

log = logging.getLogger("engine.supervisor")
metrics_log = CauseLog(log)

READY_TIMEOUT = 30.0  # s for a worker to print its ready line
DRAIN_MARGIN = 5.0  # s past the workers' drain_timeout before they are killed
MAX_RESTARTS = 10  # restarts allowed within RESTART_WINDOW ...
RESTART_WINDOW = 60.0  # ... seconds, beyond which the supervisor gives up
STABLE_AFTER = 10.0  # s of life after which a worker's restart delay is reset
WORKER_SCRAPE_S = 5.0  # s to read one worker's metrics
_URL_RE = re.compile(r"(https?://\S+)")
WORKER_OPTIONS_ENV = "ENGINE_WORKER_OPTIONS"  # JSON of a worker's ServerOptions
WORKER_INDEX_ENV = "ENGINE_WORKER_INDEX"  # the worker's number, 1..N, for its log lines


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """In the child before exec: SIGTERM when the supervisor dies (Linux)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Worker:
    def __init__(self, index: int, node_id: str) -> None:
        self.index = index
        self.node_id = node_id
        self.proc: asyncio.subprocess.Process | None = None
        self.ready: asyncio.Future[str] | None = None
        self.started_at = 0.0
        self.crashes = 0  # consecutive short-lived runs
        self.metrics_url: str | None = None  # its own metrics (loopback), when serving

    def __str__(self) -> str:
        pid = self.proc.pid if self.proc is not None else "-"
        return f"worker {self.index} (node {self.node_id}, pid {pid})"


class Supervisor:
    def __init__(self, options: ServerOptions, app: str | None = None, app_dir: str = ".") -> None:
        self.options = options
        self.app = app
        self.app_dir = app_dir
        self.count = options.workers
        base = options.node_id or secrets.token_hex(3)
        set_node(base)  # the supervisor's own lines; its workers' say <base>w<i>
        self.workers = [Worker(i, f"{base}w{i}") for i in range(1, self.count + 1)]
        self.serving = False
        self.stopping = False
        self.failed = False
        self.restarts: deque[float] = deque()
        self._reserved: socket.socket | None = None
        self._stop = asyncio.Event()
        self._watchers: list[asyncio.Task[None]] = []
        self.restarted = 0
        self.aggregate = WorkerAggregate(base)
        self.metrics: MetricsListener | None = None

    # ----------------------------------------------------------------- port

    def _resolve_port(self) -> int:
        """Hold the port (bound with SO_REUSEPORT, never listening) for the workers.

        A fixed port is first probed without SO_REUSEPORT, so that a port some
        other process (or another supervisor) listens on is refused instead
        of shared.  Port 0 picks a free port here, the same for every worker.
        """
        host, port = self.options.host, self.options.port
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        if port:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((host, port))
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        # Bound, never listening: it takes no connection, and keeps the port
        # ours while a worker restarts.
        self._reserved = sock
        return int(sock.getsockname()[1])

    # -------------------------------------------------------------- workers

    def _command(self, worker: Worker, port: int) -> list[str]:
        app = ["--app", self.app, "--app-dir", self.app_dir] if self.app else []
        return [sys.executable, "-m", "engine", "serve", *app]

    def _environment(self, worker: Worker, port: int) -> dict[str, str]:
        """The worker's options travel in its environment, not on its command
        line: `ps` shows every user the command line, with any Redis password
        or admin token in it; /proc/PID/environ is readable by the owner only."""
        options = self.options.replace(
            workers=1,
            reuse_port=True,
            port=port,
            node_id=worker.node_id,
            # Each worker's own metrics, for this supervisor's endpoint only.
            metrics_port=0 if self.options.metrics_port >= 0 else -1,
            metrics_host="127.0.0.1",
        )
        return {
            **os.environ,
            WORKER_OPTIONS_ENV: json.dumps(dataclasses.asdict(options)),
            WORKER_INDEX_ENV: str(worker.index),
        }

    async def _spawn(self, worker: Worker, port: int) -> None:
        loop = asyncio.get_running_loop()
        worker.ready = loop.create_future()
        worker.proc = await asyncio.create_subprocess_exec(
            *self._command(worker, port),
            env=self._environment(worker, port),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=None,  # the workers' logs go straight to ours
            preexec_fn=_die_with_parent,
        )
        worker.started_at = time.monotonic()
        log.info("%s started", worker)
        self._watchers.append(loop.create_task(self._watch(worker, worker.proc, port)))

    async def _watch(self, worker: Worker, proc: asyncio.subprocess.Process, port: int) -> None:
        """Read the worker's stdout (the ready line first), then see it exit."""
        ready = worker.ready
        assert proc.stdout is not None and ready is not None
        async for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if not ready.done() and line.startswith("engine serving "):
                match = _URL_RE.search(line)
                ready.set_result(match.group(1) if match else "")
            elif line.startswith("engine metrics "):
                match = _URL_RE.search(line)
                worker.metrics_url = match.group(1) if match else None
            elif line:
                print(line, flush=True)
        code = await proc.wait()
        # Its counters stay in the totals (as last read); its gauges leave them.
        worker.metrics_url = None
        self.aggregate.retire(worker.index)
        if not ready.done():
            ready.set_exception(RuntimeError(f"{worker} exited with code {code} before ready"))
            ready.exception()  # seen here; whoever waits for it gets it too
        if self.stopping or not self.serving:
            return  # at start-up, a worker that fails fails the whole start
        await self._restart(worker, code, port)

    async def _restart(self, worker: Worker, code: int, port: int) -> None:
        now = time.monotonic()
        lived = now - worker.started_at
        worker.crashes = 1 if lived >= STABLE_AFTER else worker.crashes + 1
        while self.restarts and self.restarts[0] < now - RESTART_WINDOW:
            self.restarts.popleft()
        if len(self.restarts) >= MAX_RESTARTS:
            log.error(
                "%s exited with code %d; %d restarts within %.0f s: giving up, stopping all",
                worker,
                code,
                len(self.restarts),
                RESTART_WINDOW,
            )
            self.failed = True
            self._stop.set()
            return
        self.restarts.append(now)
        self.restarted += 1
        delay = min(0.1 * 2 ** (worker.crashes - 1), 5.0)
        log.warning(
            "%s exited with code %d after %.1f s; restarting in %.1f s (%d restart(s) in %.0f s)",
            worker,
            code,
            lived,
            delay,
            len(self.restarts),
            RESTART_WINDOW,
        )
        await asyncio.sleep(delay)
        if self.stopping:
            return
        await self._spawn(worker, port)
        assert worker.ready is not None
        try:
            await asyncio.wait_for(asyncio.shield(worker.ready), READY_TIMEOUT)
        except Exception as exc:
            log.warning("%s not ready after restart: %s", worker, exc)
            return
        log.info("%s restarted and ready", worker)

    # ------------------------------------------------------------ life cycle

    async def _all_ready(self) -> list[str]:
        waiting = [w.ready for w in self.workers if w.ready is not None]
        return list(await asyncio.gather(*waiting))

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stop.set)
        try:
            port = self._resolve_port()
            if self.options.metrics_port >= 0:
                o = self.options
                self.metrics = MetricsListener(
                    self.render_metrics, o.metrics_host or o.host, o.metrics_port
                )
                await self.metrics.start()
        except OSError as exc:
            print(
                f"engine: cannot listen on {self.options.host}:{self.options.port}"
                f" (metrics port {self.options.metrics_port}): {exc}"
                if self.options.metrics_port >= 0
                else f"engine: cannot listen on {self.options.host}:{self.options.port}: {exc}",
                file=sys.stderr,
            )
            return 1
        try:
            for worker in self.workers:
                await self._spawn(worker, port)
            ready_task = loop.create_task(self._all_ready())
            stop_task = loop.create_task(self._stop.wait())
            tasks: set[asyncio.Future[Any]] = {ready_task, stop_task}
            done, _ = await asyncio.wait(
                tasks, timeout=READY_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
            )
            stop_task.cancel()
            if ready_task not in done:
                ready_task.cancel()
                with contextlib.suppress(BaseException):
                    await ready_task
                if stop_task not in done:
                    print(
                        f"engine: the workers were not ready within {READY_TIMEOUT:.0f} s",
                        file=sys.stderr,
                    )
                    self.failed = True
                return await self._shutdown()
            failure = ready_task.exception()
            if failure is not None:
                print(f"engine: {failure}", file=sys.stderr)
                self.failed = True
                return await self._shutdown()
            urls = ready_task.result()
            self.serving = True
            metrics = f"\nengine metrics {self.metrics.url}" if self.metrics is not None else ""
            print(f"engine serving {urls[0]} ({self.count} workers){metrics}", flush=True)
            await self._stop.wait()
            if not self.failed:
                log.info("signal received: draining %d workers", self.count)
            return await self._shutdown()
        finally:
            if self._reserved is not None:
                self._reserved.close()
            if self.metrics is not None:
                await self.metrics.close()

    # -------------------------------------------------------------- metrics

    async def render_metrics(self) -> bytes:
        """Every serving worker's metrics, read now and added up."""
        serving = [w for w in self.workers if w.metrics_url and w.proc is not None]

        async def read(worker: Worker) -> None:
            assert worker.metrics_url is not None and worker.proc is not None
            pid = worker.proc.pid
            try:
                text = await asyncio.wait_for(fetch_metrics(worker.metrics_url), WORKER_SCRAPE_S)
            except (OSError, TimeoutError, ValueError) as exc:
                # Its last values stand in (counters never fall); logged once per period.
                metrics_log.warning(
                    "worker_metrics",
                    "%s: metrics not read (%s): its last values are used",
                    worker,
                    exc,
                )
                return
            if worker.proc is not None and worker.proc.pid == pid:
                self.aggregate.seen(worker.index, pid, text)

        await asyncio.gather(*(read(w) for w in serving))
        live = [w.index for w in serving if w.proc is not None and w.proc.returncode is None]
        extra = supervisor_gauges(self.aggregate.node, len(live), self.restarted)
        return self.aggregate.render(live, extra)

    @staticmethod
    def _signal(worker: Worker, sig: int) -> None:
        """os.kill, not Popen.send_signal: that polls first, and its waitpid
        can reap a worker that just exited before asyncio's child watcher
        does, which then reports exit code 255 ("Unknown child process")."""
        proc = worker.proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)

    @classmethod
    def _terminate(cls, worker: Worker) -> None:
        cls._signal(worker, signal.SIGTERM)

    async def _shutdown(self) -> int:
        self.stopping = True
        for worker in self.workers:
            self._terminate(worker)
        clean = True
        drain_s = self.options.drain_timeout / 1000.0 + DRAIN_MARGIN
        deadline = time.monotonic() + drain_s
        for worker in self.workers:
            self._terminate(worker)  # again: one may have been (re)spawned meanwhile
            proc = worker.proc
            if proc is None:
                continue
            try:
                code = await asyncio.wait_for(proc.wait(), max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                log.error("%s did not exit within %.0f s of SIGTERM: killed", worker, drain_s)
                self._signal(worker, signal.SIGKILL)
                await proc.wait()
                clean = False
                continue
            if code not in (0, -signal.SIGTERM, -signal.SIGINT):
                log.error("%s exited with code %d while draining", worker, code)
                clean = False
        for task in self._watchers:
            task.cancel()
        for task in self._watchers:
            with contextlib.suppress(BaseException):
                await task
        return 0 if clean and not self.failed else 1


def run_supervisor(options: ServerOptions, app: str | None = None, app_dir: str = ".") -> int:
    """Run the supervisor until SIGTERM/SIGINT; the process's exit code."""
    return asyncio.run(Supervisor(options, app, app_dir).run())
