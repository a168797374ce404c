#!/usr/bin/env python3
"""Churn scenario: reconnect storms, then reconnection after a server restart.

Storms (``--rounds`` of ``--duration`` seconds): C clients of the load tool's
one client (``engine/load/client.py --churn``, over ``--transport``
long-polling or websocket, in ``--procs`` generator processes) each loop
through what a browser does on a page load:

    handshake -> clientId (the BAYEUX_BROWSER cookie is kept per client)
    /meta/subscribe to /bench/churn/<k>
    a first /meta/connect, advice {"timeout": 0} (answered at once)
    /meta/disconnect (or, for --abandon of the cycles, nothing: the session
                      must expire on its own), the connection closed
    a pause of --churn-pause-ms, and again

It reports handshakes and cycles per second (over the measured window, after
``--warmup``), errors by kind, the latency of the handshake and of handshake ->
first connect (of the cycles after the warm-up), server CPU
per handshake, and, for leaks, the server's RSS and its ``/stats`` session
count: at the start, at the end of each storm and after the storm settles
(every session disconnected or expired). With ``--rounds 2`` or more, the RSS
after each settled round shows whether memory keeps growing with the number
of sessions ever created (a leak) or plateaus (allocator reuse).

Restart (``--restart-clients N``, 0 to skip): N clients connect and hold
long-polls (or WebSocket connects) as usual; the server is restarted (the one
the scenario started: stopped and started again on the same port; a server
given by ``--url``: ``--restart-command CMD`` is run, and without it the phase
is skipped with a note). The record says how long each client took from its
drop to its next successful connect (p50 / p99 / max), how many re-handshaked
(a restarted server answers ``402::session_unknown`` with ``reconnect:
handshake``, which the client follows) and how many were lost (not connected
again within ``--restart-timeout``), and how long after the restart began
the last one was back.

The server it starts is ``python -m engine serve ... --admin-token T
--max-interval MS`` (``/stats`` needs the token; a short max-interval lets
abandoned sessions expire within the run). With ``--url`` the server is
someone else's: sessions come from its ``/stats`` when ``--admin-token`` is
given (the engine's), CPU and RSS when ``--server-pid`` is. A URL that does not
answer a Bayeux handshake is an error before anything starts.

Exit status: 0 when the run completed (with --check: no errors, 0 sessions
after the last settle and no client lost by the restart), 1 when it could not
run, 2 when --check failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from engine.load.histogram import Latency
from engine.load.idle import Generator, generator_command
from engine.load.procs import (
    DEFAULT_SERVER_CMD,
    ChildGuard,
    RunError,
    ServerProcess,
    free_port,
    process_tree,
    split_clients,
    tree_cpu_seconds,
    tree_rss_bytes,
)
from engine.load.records import (
    PEERS,
    add_results_dir_arg,
    check_loopback,
    format_table,
    human_bytes,
    log,
    na,
    progress_event,
    ratio,
    run_scenario,
    save_and_print,
    shell_join,
)

SCENARIO = "churn"
#: Counters of the generators' reports that are summed and windowed.
COUNTED = ("handshakes", "responses", "requests", "tcp_opens", "gave_up", "timeouts")
CHURN_COUNTED = ("cycles", "disconnects", "disconnect_failures", "abandoned")


def merged_summary(encoded: list[str | None]) -> dict[str, Any]:
    """The summary of several generators' encoded histograms of one kind."""
    return Latency().merge(*(Latency.decode(e) for e in encoded if e)).summary()


# =========================================================================== helpers


def cpu_plan(pin: bool) -> tuple[list[int] | None, list[int] | None]:
    """(server CPUs, load-generator CPUs): the server gets the first CPU we may
    use and the generators the rest, so both sides are measured on their own cores."""
    if not pin:
        return None, None
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None, None
    if len(cpus) < 2:
        return None, None
    return cpus[:1], cpus[1:]


def pin_tree(pid: int, cpus: list[int] | None) -> None:
    """Set the CPU affinity of every thread of ``pid`` and its descendants."""
    if not cpus:
        return
    for p in process_tree(pid):
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{p}/task")]
        except OSError:
            tids = [p]
        for tid in tids:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(tid, set(cpus))


async def start_pinned(
    server: ServerProcess,
    startup_timeout: float,
    cpus: list[int] | None,
    label: str,
    progress: bool,
) -> str:
    """Start a server, pin every thread of its process tree to ``cpus`` (its
    own core, away from the generators') and say where it listens."""
    url = await server.start(startup_timeout)
    assert server.pid is not None
    pin_tree(server.pid, cpus)
    log(progress, f"{label} ready at {url} (pid {server.pid}, cpus {cpus or 'any'})")
    return url


def read_cpu_times() -> dict[int, tuple[int, int, int]]:
    """Per CPU (total, idle + iowait, softirq + irq) jiffies from /proc/stat.

    Loopback TCP work done in softirq context is charged to no process: the
    per-CPU view shows whether a core was really saturated.
    """
    out: dict[int, tuple[int, int, int]] = {}
    try:
        with open("/proc/stat") as f:
            for line in f:
                if not line.startswith("cpu") or line.startswith("cpu "):
                    continue
                name, *vals = line.split()
                v = [int(x) for x in vals[:8]]
                out[int(name[3:])] = (sum(v), v[3] + v[4], v[5] + v[6])
    except (OSError, ValueError):
        pass
    return out


def cpu_busy(
    a: dict[int, tuple[int, int, int]], b: dict[int, tuple[int, int, int]]
) -> dict[str, dict[str, float]]:
    """Per CPU busy % and softirq % between two read_cpu_times() readings."""
    out: dict[str, dict[str, float]] = {}
    for cpu, (t1, i1, s1) in b.items():
        t0, i0, s0 = a.get(cpu, (t1, i1, s1))
        dt = t1 - t0
        if dt > 0:
            out[str(cpu)] = {
                "busy_percent": round(100 * (1 - (i1 - i0) / dt), 1),
                "softirq_percent": round(100 * (s1 - s0) / dt, 1),
            }
    return out


def cores_mean(cores: dict[str, Any], which: list[int] | None, key: str) -> float | None:
    vals = [cores[str(c)][key] for c in (which or []) if str(c) in cores]
    return round(sum(vals) / len(vals), 1) if vals else None


def limiter(server_core: float | None, loadgen_cores: float | None) -> str:
    """What held a phase back, from how busy the pinned cores were (process time
    plus the loopback TCP work done in softirq, which no process is charged for)."""
    if server_core is None:
        return "unknown (not pinned)"
    server_full = server_core >= 90
    loadgen_full = loadgen_cores is not None and loadgen_cores >= 90
    if server_full and loadgen_full:
        return "both cores saturated (server and load generator)"
    if server_full:
        return "server core saturated"
    if loadgen_full:
        return "load generator cores saturated"
    return "neither core saturated (latency bound: add clients)"


def http_get_json(url: str, token: str | None, timeout: float = 5.0) -> dict[str, Any] | None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        req = urllib.request.Request(url, headers=headers)
        with urllib.request.urlopen(req, timeout=timeout) as r:
            reply: dict[str, Any] = json.loads(r.read())
            return reply
    except (OSError, ValueError):
        return None


def stats_url(url: str) -> str:
    u = urlsplit(url)
    return f"{u.scheme}://{u.netloc}/stats"


def _post_json(
    url: str, body: Any, timeout: float, cookie: str | None = None
) -> tuple[bytes, str | None]:
    """POST a JSON body; (the reply's body, its cookie as a ``Cookie`` value)."""
    headers = {"Content-Type": "application/json"}
    if cookie:
        headers["Cookie"] = cookie
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        data: bytes = r.read(65536)
        set_cookie = r.headers.get("Set-Cookie")
    return data, set_cookie.split(";", 1)[0] if set_cookie else cookie


def probe_bayeux(url: str, timeout: float = 5.0) -> None:
    """RunError unless ``url`` answers a Bayeux handshake (the session made is
    disconnected at once): a wrong URL fails here, clearly, not as a storm of
    errors."""
    base = url.rstrip("/")
    hs = [
        {
            "channel": "/meta/handshake",
            "version": "1.0",
            "supportedConnectionTypes": ["long-polling"],
            "id": "1",
        }
    ]
    try:
        raw, cookie = _post_json(base + "/handshake", hs, timeout)
    except urllib.error.HTTPError as exc:
        raise RunError(
            f"{url} is not a Bayeux server: its handshake got HTTP {exc.code} {exc.reason}"
        ) from None
    except (OSError, ValueError) as exc:
        raise RunError(f"cannot reach {url}: {exc}") from None
    try:
        reply = json.loads(raw)
    except ValueError:
        raise RunError(
            f"{url} is not a Bayeux server: its handshake reply is not JSON ({raw[:80]!r})"
        ) from None
    first = reply[0] if isinstance(reply, list) and reply else reply
    if not isinstance(first, dict) or first.get("channel") != "/meta/handshake":
        raise RunError(f"{url} is not a Bayeux server: handshake reply {raw[:120]!r}")
    client_id = first.get("clientId")
    if first.get("successful") is not True or not isinstance(client_id, str):
        raise RunError(f"{url} refused the handshake: {raw[:200]!r}")
    with contextlib.suppress(OSError, ValueError):
        _post_json(
            base + "/disconnect",
            [{"channel": "/meta/disconnect", "clientId": client_id, "id": "2"}],
            timeout,
            cookie,  # a session is the browser's: the engine wants its cookie
        )


def loadgen_argv(
    args: argparse.Namespace, url: str, start: int, count: int, extra: list[str]
) -> list[str]:
    """The generator command of clients ``start`` .. ``start + count - 1``."""
    return [
        *generator_command(args, url, start, count, "/bench/churn/{k}"),
        "--channel-count",
        str(args.channels),
        "--network-delay",
        str(args.request_timeout),
        *extra,
    ]


async def start_generators(
    args: argparse.Namespace,
    url: str,
    clients: int,
    extra: list[str],
    guard: ChildGuard,
    cpus: list[int] | None,
) -> list[Generator]:
    gens: list[Generator] = []
    for start, count in split_clients(clients, args.procs):
        if count:
            g = Generator(len(gens), loadgen_argv(args, url, start, count, extra))
            await g.start(guard)
            gens.append(g)
            if g.pid is not None:
                pin_tree(g.pid, cpus)
    return gens


def check_generators(gens: list[Generator]) -> None:
    for g in gens:
        if not g.alive() and g.final is None:
            raise RunError(f"loadgen {g.index} exited early:\n" + "\n".join(g.stderr_tail[-10:]))


async def stop_generators(gens: list[Generator]) -> list[dict[str, Any]]:
    """Stop every generator; their final reports."""
    await asyncio.gather(*(g.stop(10.0) for g in gens))
    finals = []
    for g in gens:
        if g.final is None:
            raise RunError(f"loadgen {g.index} gave no final report:\n" + "\n".join(g.stderr_tail))
        finals.append(g.final)
    return finals


def summed(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """The counters of several generators' reports, added up."""
    out: dict[str, Any] = {k: 0 for k in (*COUNTED, *CHURN_COUNTED)}
    out["errors"] = {}
    out["recovered_clients"] = out["rehandshaked"] = out["ever_connected"] = 0
    out["connected"] = 0
    for r in reports:
        for k in COUNTED + ("ever_connected", "connected"):
            out[k] += int(r.get(k) or 0)
        churn = r.get("churn") or {}
        for k in CHURN_COUNTED + ("recovered_clients", "rehandshaked"):
            out[k] += int(churn.get(k) or 0)
        for k, v in (r.get("errors") or {}).items():
            out["errors"][k] = out["errors"].get(k, 0) + v
    return out


def window(start: dict[str, Any], end: dict[str, Any]) -> dict[str, Any]:
    out = {k: v - start.get(k, 0) for k, v in end.items() if isinstance(v, int)}
    errs = {k: v - start["errors"].get(k, 0) for k, v in end["errors"].items()}
    out["errors"] = {k: v for k, v in errs.items() if v}
    return out


# =========================================================================== the phases


async def settle_sessions(
    url: str, token: str | None, bound: float, server_alive: Any
) -> tuple[int | None, float, dict[str, Any] | None]:
    """Poll /stats until sessions == 0 (bounded); (sessions, seconds waited, stats)."""
    t0 = time.monotonic()
    last: dict[str, Any] | None = None
    while True:
        last = await asyncio.to_thread(http_get_json, stats_url(url), token)
        sessions = None if last is None else last.get("sessions")
        if sessions == 0 or time.monotonic() - t0 >= bound:
            return sessions, round(time.monotonic() - t0, 2), last
        if not server_alive():
            raise RunError("server exited while settling")
        await asyncio.sleep(0.25)


class Target:
    """The server under test: started here (and restartable), or given by --url."""

    def __init__(self, args: argparse.Namespace, guard: ChildGuard, token: str) -> None:
        self.args = args
        self.guard = guard
        self.token: str | None = token if args.url is None else args.admin_token
        template = args.server_cmd
        if args.url is None and template == DEFAULT_SERVER_CMD:
            template += f" --admin-token {token} --max-interval {args.max_interval}"
        self.template = template
        self.server: ServerProcess | None = None
        self.url: str = args.url or ""
        self.pid: int | None = args.server_pid
        self.port = free_port(args.host) if args.url is None else 0

    async def start(self, cpus: list[int] | None, progress: bool) -> str:
        if self.args.url is None:
            self.server = ServerProcess.for_args(self.template, self.args, self.port, self.guard)
            self.url = await start_pinned(
                self.server, self.args.startup_timeout, cpus, "server", progress
            )
            self.pid = self.server.pid
        return self.url

    def alive(self) -> bool:
        return self.server is None or self.server.alive()

    def check(self) -> None:
        if not self.alive():
            tail = self.server.tail() if self.server is not None else ""
            raise RunError("server exited during the run:\n" + tail)

    def stats(self) -> dict[str, Any] | None:
        return http_get_json(stats_url(self.url), self.token) if self.token else None

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()

    def can_restart(self) -> str | None:
        """Why the restart phase cannot run (None: it can)."""
        if self.server is None and not self.args.restart_command:
            return "skipped: the server was given by --url and no --restart-command"
        return None

    async def restart(self, cpus: list[int] | None, progress: bool) -> dict[str, Any]:
        """Restart the server; what it took."""
        t0 = time.monotonic()
        if self.server is not None:
            await self.server.stop()
            log(progress, "server stopped; starting it again on the same port")
            await self.start(cpus, progress)
            return {
                "how": "stopped and started again",
                "restart_s": round(time.monotonic() - t0, 3),
            }
        cmd = self.args.restart_command
        log(progress, f"restart: {cmd}")
        proc = await asyncio.create_subprocess_shell(
            cmd, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        try:
            _, err = await asyncio.wait_for(proc.communicate(), self.args.restart_timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            raise RunError(
                f"--restart-command did not end within {self.args.restart_timeout:.0f} s"
            ) from None
        if proc.returncode:
            text = err.decode("utf-8", "replace")[-500:]
            raise RunError(f"--restart-command exited {proc.returncode}: {text}")
        return {"how": f"--restart-command {cmd}", "restart_s": round(time.monotonic() - t0, 3)}


async def run_storm(
    args: argparse.Namespace,
    target: Target,
    guard: ChildGuard,
    cpus: tuple[list[int] | None, list[int] | None],
    rnd: int,
) -> dict[str, Any]:
    """One storm: generators in --churn mode for warm-up + duration seconds."""
    extra = [
        "--churn",
        "--churn-pause-ms",
        str(args.churn_pause_ms),
        "--churn-abandon",
        str(args.abandon),
        "--max-seconds",
        f"{args.warmup + args.duration + 60:.0f}",
        "--max-pending",
        str(args.clients),
    ]
    pid = target.pid
    peak = [tree_rss_bytes(pid) or 0 if pid else 0]
    gens = await start_generators(args, target.url, args.clients, extra, guard, cpus[1])
    try:
        await asyncio.sleep(args.warmup)
        check_generators(gens)
        target.check()
        for g in gens:
            g.send("churn-window")  # latencies of the measured window (and its last ms)
        start = summed(await asyncio.gather(*(g.report("start", 10.0) for g in gens)))
        cpu0 = tree_cpu_seconds(pid) if pid else None
        lg0 = sum(tree_cpu_seconds(g.pid) or 0.0 for g in gens if g.pid)
        cores0 = read_cpu_times()
        t0 = time.monotonic()
        samples = []
        # bounded by --duration
        while time.monotonic() < t0 + args.duration:
            await asyncio.sleep(min(1.0, max(0.0, t0 + args.duration - time.monotonic())))
            check_generators(gens)
            target.check()
            latest = [g.latest for g in gens]
            progress_event("churn", summed(latest), latest)
            rss = tree_rss_bytes(pid) if pid else None
            if rss:
                peak[0] = max(peak[0], rss)
            samples.append(
                {
                    "t": round(time.monotonic() - t0, 2),
                    "rss": rss,
                    "cpu": tree_cpu_seconds(pid) if pid else None,
                }
            )
        end = summed(await asyncio.gather(*(g.report("end", 10.0) for g in gens)))
        wall = time.monotonic() - t0
        cpu1 = tree_cpu_seconds(pid) if pid else None
        lg1 = sum(tree_cpu_seconds(g.pid) or 0.0 for g in gens if g.pid)
        cores = cpu_busy(cores0, read_cpu_times())
    finally:
        finals = await stop_generators(gens)
    total = summed(finals)
    return {
        "round": rnd,
        "window": window(start, end),
        "window_s": round(wall, 3),
        "total": total,
        "handshake_ms": merged_summary([f["churn"]["handshake_hist"] for f in finals]),
        "first_connect_ms": merged_summary([f["churn"]["first_connect_hist"] for f in finals]),
        "server_cpu_s": None if cpu0 is None or cpu1 is None else round(cpu1 - cpu0, 4),
        "loadgen_cpu_s": round(lg1 - lg0, 4),
        "cores": cores,
        "samples": samples,
        "rss_peak_bytes": peak[0] or None,
    }


async def run_restart(
    args: argparse.Namespace,
    target: Target,
    guard: ChildGuard,
    cpus: tuple[list[int] | None, list[int] | None],
    progress: bool,
) -> dict[str, Any]:
    """N connected clients, the server restarted, every client back (bounded)."""
    n = args.restart_clients
    why_not = target.can_restart()
    if why_not is not None:
        log(progress, f"restart phase {why_not}")
        return {"clients": n, "skipped": why_not}
    extra = [
        # The JS client never gives up; the phase is bounded by --restart-timeout.
        "--max-attempts",
        "1000000",
        "--backoff-ms",
        str(args.restart_backoff_ms),
        "--max-seconds",
        f"{args.restart_timeout * 3 + 60:.0f}",
    ]
    log(progress, f"restart phase: {n} clients connect")
    gens = await start_generators(args, target.url, n, extra, guard, cpus[1])
    try:
        deadline = time.monotonic() + args.restart_timeout
        # bounded by --restart-timeout
        while True:
            await asyncio.sleep(0.25)
            check_generators(gens)
            target.check()
            now = summed([g.latest for g in gens])
            if now["connected"] >= n or time.monotonic() > deadline:
                break
        connected_before = now["connected"]
        if connected_before < n:
            raise RunError(
                f"restart phase: only {connected_before} of {n} clients connected "
                f"within {args.restart_timeout:.0f} s, before any restart"
            )
        await asyncio.sleep(0.5)  # the clients' long-polls are held now
        t_restart = time.monotonic()
        restart = await target.restart(cpus[0], progress)
        deadline = time.monotonic() + args.restart_timeout
        all_back_s = None
        # bounded by --restart-timeout
        while True:
            await asyncio.sleep(0.25)
            check_generators(gens)
            target.check()
            now = summed([g.latest for g in gens])
            if now["recovered_clients"] >= connected_before:
                # as the reports show it: within their 0.5 s period
                all_back_s = round(time.monotonic() - t_restart, 2)
                break
            if time.monotonic() > deadline:
                break
        await asyncio.sleep(0.5)  # a last report after the last reconnection
        sessions = target.stats()
    finally:
        finals = await stop_generators(gens)
    total = summed(finals)
    recovered = min(total["recovered_clients"], connected_before)
    out = {
        "clients": n,
        "connected_before": connected_before,
        **restart,
        "reconnected": recovered,
        "rehandshaked": total["rehandshaked"],
        "lost": connected_before - recovered,
        "all_back_after_s": all_back_s,
        "gave_up": total["gave_up"],
        "reconnect_ms": merged_summary([f["churn"]["recovery_hist"] for f in finals]),
        "sessions_after": None if sessions is None else sessions.get("sessions"),
        "errors": dict(sorted(total["errors"].items(), key=lambda kv: -kv[1])),
    }
    ms = out["reconnect_ms"]
    log(
        progress,
        f"  {recovered}/{connected_before} back ({out['rehandshaked']} re-handshaked, "
        f"{out['lost']} lost), reconnect p50/p99/max {ms['p50']}/{ms['p99']}/{ms['max']} ms",
    )
    return out


async def run_churn(args: argparse.Namespace, guard: ChildGuard) -> dict[str, Any]:
    progress = not args.no_progress
    token = args.admin_token or secrets.token_hex(12)
    cpus = cpu_plan(args.pin and args.url is None)
    target = Target(args, guard, token)
    try:
        url = await target.start(cpus[0], progress)
        await asyncio.to_thread(probe_bayeux, url)
        await asyncio.sleep(args.settle)
        pid = target.pid
        base_stats = await asyncio.to_thread(target.stats)
        rss_base = tree_rss_bytes(pid) if pid else None
        settle_bound = (
            args.settle_timeout
            if args.settle_timeout is not None
            else 2 * args.max_interval / 1000 + 10
        )
        rounds = []
        for rnd in range(1, args.rounds + 1):
            log(
                progress,
                f"round {rnd}/{args.rounds}: {args.clients} {args.transport} clients for "
                f"{args.warmup + args.duration:.0f} s",
            )
            storm = await run_storm(args, target, guard, cpus, rnd)
            rss_end = tree_rss_bytes(pid) if pid else None
            end_stats = await asyncio.to_thread(target.stats)
            if base_stats is None:  # no /stats (another server): wait for expiry instead
                waited = args.max_interval / 1000 + 1.0
                await asyncio.sleep(waited)
                sessions_left, settled_stats = None, None
            else:
                sessions_left, waited, settled_stats = await settle_sessions(
                    url, target.token, settle_bound, target.alive
                )
            await asyncio.sleep(0.5)
            storm.update(
                {
                    "rss_end_bytes": rss_end,
                    "rss_settled_bytes": tree_rss_bytes(pid) if pid else None,
                    "sessions_at_end": None if end_stats is None else end_stats.get("sessions"),
                    "sessions_settled": sessions_left,
                    "settle_s": waited,
                    "counters_settled": None
                    if settled_stats is None
                    else settled_stats.get("counters"),
                    "connections_settled": None
                    if settled_stats is None
                    else settled_stats.get("connections"),
                }
            )
            rounds.append(storm)
            w = storm["window"]
            log(
                progress,
                f"  {w['handshakes'] / storm['window_s']:,.0f} handshakes/s, "
                f"errors {sum(w['errors'].values())}, sessions after settle {sessions_left} "
                f"({waited} s), RSS {human_bytes(storm['rss_settled_bytes'])}",
            )
        restart = None
        if args.restart_clients:
            restart = await run_restart(args, target, guard, cpus, progress)
        return {
            "url": url,
            "server_argv": target.server.argv if target.server is not None else None,
            "server_pid": pid,
            "token": token,
            "cpus": {"server": cpus[0], "loadgen": cpus[1]},
            "rss_baseline": rss_base,
            "base_stats": base_stats,
            "rounds": rounds,
            "restart": restart,
        }
    finally:
        await target.stop()


# =========================================================================== record


def compute_churn(args: argparse.Namespace, out: dict[str, Any]) -> dict[str, Any]:
    per_round = []
    for r in out["rounds"]:
        w = r["window"]
        s = wall = r["window_s"] or 1.0
        hs = w.get("handshakes", 0)
        per_round.append(
            {
                "round": r["round"],
                "window_s": s,
                "handshakes": hs,
                "handshakes_per_s": round(hs / s, 1),
                "cycles": w.get("cycles", 0),
                "cycles_per_s": round(w.get("cycles", 0) / s, 1),
                "requests_per_s": round(w.get("responses", 0) / s, 1),
                "tcp_opens_per_s": round(w.get("tcp_opens", 0) / s, 1),
                "disconnects": w.get("disconnects", 0),
                "abandoned": w.get("abandoned", 0),
                "errors": w["errors"],
                "errors_total": sum(w["errors"].values()),
                "errors_whole_run": r["total"]["errors"],
                "handshake_ms": r["handshake_ms"],
                "handshake_to_connect_ms": r["first_connect_ms"],
                "server_cpu_s": r["server_cpu_s"],
                "server_cpu_percent": None
                if r["server_cpu_s"] is None
                else round(100 * r["server_cpu_s"] / wall, 1),
                "server_cpu_per_handshake_us": None
                if not hs or r["server_cpu_s"] is None
                else round(1e6 * r["server_cpu_s"] / hs, 1),
                "loadgen_cpu_percent": round(100 * r["loadgen_cpu_s"] / wall, 1),
                "cores": r["cores"],
                "server_core_busy_percent": cores_mean(
                    r["cores"], out["cpus"]["server"], "busy_percent"
                ),
                "loadgen_cores_busy_percent": cores_mean(
                    r["cores"], out["cpus"]["loadgen"], "busy_percent"
                ),
                "rss_peak_bytes": r["rss_peak_bytes"],
                "rss_end_bytes": r["rss_end_bytes"],
                "rss_settled_bytes": r["rss_settled_bytes"],
                "sessions_at_end": r["sessions_at_end"],
                "sessions_settled": r["sessions_settled"],
                "settle_s": r["settle_s"],
                "connections_settled": r["connections_settled"],
                "sessions_expired_total": (r["counters_settled"] or {}).get("sessions_expired"),
                "handshakes_total_server": (r["counters_settled"] or {}).get("handshakes"),
                "samples": r["samples"],
            }
        )
    for pr in per_round:
        pr["limited_by"] = limiter(pr["server_core_busy_percent"], pr["loadgen_cores_busy_percent"])
    base = out["rss_baseline"]
    last = per_round[-1]
    first = per_round[0]
    growth_per_hs = None
    if len(per_round) >= 2 and first["rss_settled_bytes"] and last["rss_settled_bytes"]:
        later_hs = sum(r["handshakes"] for r in per_round[1:])
        if later_hs:
            growth_per_hs = round(
                (last["rss_settled_bytes"] - first["rss_settled_bytes"]) / later_hs, 2
            )
    total_hs = sum(r["handshakes"] for r in per_round)
    total_s = sum(r["window_s"] for r in per_round)
    results = {
        "clients": args.clients,
        "transport": args.transport,
        "handshakes_per_s": round(total_hs / total_s, 1) if total_s else None,
        "cycles_per_s": (
            round(sum(r["cycles"] for r in per_round) / total_s, 1) if total_s else None
        ),
        "errors_total": sum(r["errors_total"] for r in per_round),
        "errors": _merge([r["errors_whole_run"] for r in per_round]),
        "handshake_ms": last["handshake_ms"],
        "handshake_to_connect_ms": last["handshake_to_connect_ms"],
        "server_cpu_per_handshake_us": last["server_cpu_per_handshake_us"],
        "server_cpu_percent": last["server_cpu_percent"],
        "loadgen_cpu_percent": last["loadgen_cpu_percent"],
        "limited_by": last["limited_by"],
        "rss_baseline_bytes": base,
        "rss_peak_bytes": max((r["rss_peak_bytes"] or 0) for r in per_round) or None,
        "rss_settled_bytes": last["rss_settled_bytes"],
        "rss_settled_over_baseline": None
        if not base or not last["rss_settled_bytes"]
        else round(last["rss_settled_bytes"] / base, 3),
        "rss_growth_after_first_round_per_handshake_bytes": growth_per_hs,
        "sessions_at_start": (out["base_stats"] or {}).get("sessions"),
        "sessions_settled": last["sessions_settled"],
        "rounds": per_round,
        "restart": out["restart"],
        "server_pid": out["server_pid"],
        "cpus": out["cpus"],
    }
    parameters = {
        k: (str(v) if isinstance(v, Path) else v)
        for k, v in vars(args).items()
        if k not in ("admin_token",)
    }
    parameters["url"] = out["url"]
    if out["server_argv"] is not None:
        parameters["server_cmd"] = shell_join(out["server_argv"]).replace(out["token"], "TOKEN")
    return {"parameters": parameters, "results": results}


_QS = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))


def _merge(dicts: list[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def comparison(peer_name: str, peer: dict[str, Any], engine: dict[str, Any]) -> dict[str, Any]:
    """engine / peer ratios and the side-by-side rows."""
    keys = (
        ("handshakes / s", "handshakes_per_s", "{:,.0f}"),
        ("errors", "errors_total", "{:,}"),
        ("handshake p99, ms", None, "{:.2f}"),
        ("server CPU per handshake, us", "server_cpu_per_handshake_us", "{:.0f}"),
        ("server CPU, %", "server_cpu_percent", "{:.0f}"),
        ("server RSS baseline", "rss_baseline_bytes", "{:,}"),
        ("server RSS peak", "rss_peak_bytes", "{:,}"),
        ("server RSS settled", "rss_settled_bytes", "{:,}"),
    )
    rows = []
    for label, key, spec in keys:
        if key is None:
            a, b = (
                (peer.get("handshake_ms") or {}).get("p99"),
                (engine.get("handshake_ms") or {}).get("p99"),
            )
        else:
            a, b = peer.get(key), engine.get(key)
        rows.append([label, na(a, spec), na(b, spec), na(ratio(b, a), "{:.2f}")])
    return {
        "peer": peer_name,
        "handshakes_per_s_ratio": ratio(
            engine.get("handshakes_per_s"), peer.get("handshakes_per_s")
        ),
        "cpu_per_handshake_ratio": ratio(
            engine.get("server_cpu_per_handshake_us"), peer.get("server_cpu_per_handshake_us")
        ),
        "rows": rows,
    }


def _ms(d: dict[str, Any] | None, key: str) -> str:
    return na((d or {}).get(key), "{:.2f}")


def churn_table(record: dict[str, Any]) -> str:
    r = record["results"]
    p = record["parameters"]
    rows: list[tuple[str, str]] = [
        ("clients / rounds x seconds", f"{p['clients']} / {p['rounds']} x {p['duration']:.0f}"),
        ("transport", str(r.get("transport", "long-polling"))),
        ("handshakes / s", na(r["handshakes_per_s"], "{:,.0f}")),
        ("cycles / s", na(r["cycles_per_s"], "{:,.0f}")),
        ("errors (all rounds)", f"{r['errors_total']:,}"),
    ]
    for rd in r["rounds"]:
        n = rd["round"]
        hs, hc = rd["handshake_ms"], rd["handshake_to_connect_ms"]
        rows += [
            (
                f"round {n}: handshakes/s, req/s",
                f"{rd['handshakes_per_s']:,.0f}, {rd['requests_per_s']:,.0f}",
            ),
            (f"round {n}: handshake p50/p99 ms", f"{_ms(hs, 'p50')} / {_ms(hs, 'p99')}"),
            (
                f"round {n}: handshake -> connect p50/p99 ms",
                f"{_ms(hc, 'p50')} / {_ms(hc, 'p99')}",
            ),
            (
                f"round {n}: server CPU, per handshake",
                f"{rd['server_cpu_percent']} %, {rd['server_cpu_per_handshake_us']} us",
            ),
            (f"round {n}: loadgen CPU", f"{rd['loadgen_cpu_percent']} %"),
            (
                f"round {n}: cores busy server / loadgen",
                f"{rd['server_core_busy_percent']} / {rd['loadgen_cores_busy_percent']} %",
            ),
            (f"round {n}: limited by", rd["limited_by"]),
            (
                f"round {n}: sessions end / settled",
                f"{rd['sessions_at_end']} / {rd['sessions_settled']} ({rd['settle_s']} s)",
            ),
            (
                f"round {n}: RSS peak / settled",
                f"{human_bytes(rd['rss_peak_bytes'])} / {human_bytes(rd['rss_settled_bytes'])}",
            ),
        ]
    rows += [
        ("server RSS baseline", human_bytes(r["rss_baseline_bytes"])),
        ("server RSS settled / baseline", f"{r['rss_settled_over_baseline']}"),
        (
            "RSS growth after round 1, per handshake",
            "n/a"
            if r["rss_growth_after_first_round_per_handshake_bytes"] is None
            else f"{r['rss_growth_after_first_round_per_handshake_bytes']:.2f} B",
        ),
        ("sessions at start / settled", f"{r['sessions_at_start']} / {r['sessions_settled']}"),
    ]
    rs = r.get("restart")
    if rs and rs.get("skipped"):
        rows.append(("restart", rs["skipped"]))
    elif rs:
        ms = rs["reconnect_ms"]
        rows += [
            (
                "restart: back / re-handshaked / lost",
                f"{rs['reconnected']} / {rs['rehandshaked']} / {rs['lost']} "
                f"of {rs['connected_before']}",
            ),
            (
                "restart: drop -> connect p50/p99/max ms",
                f"{_ms(ms, 'p50')} / {_ms(ms, 'p99')} / {_ms(ms, 'max')}",
            ),
            ("restart: server restart took", f"{rs['restart_s']} s ({rs['how']})"),
            ("restart: all back after", f"{na(rs.get('all_back_after_s'), '{:.1f}')} s"),
        ]
    label = record.get("label")
    title = f"churn scenario, {p['clients']} clients" + (f" -- {label}" if label else "")
    table = format_table(rows, title=title)
    if r["errors"]:
        table += "\n  errors: " + ", ".join(f"{k}={v}" for k, v in list(r["errors"].items())[:10])
    return table


# =========================================================================== command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="churn.py",
        description="Churn scenario: C clients (long-polling or WebSocket) handshake, subscribe, "
        "connect and disconnect in a loop (reconnect storms) for T seconds, in R rounds; then "
        "N clients connected through a server restart. Reports handshakes/s, errors by kind, "
        "latencies, server CPU, RSS and /stats sessions (leaks), the time every client took to "
        "reconnect after the restart; writes a JSON record.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--clients", type=int, default=200, help="concurrent clients (C)")
    p.add_argument("--transport", default="long-polling", choices=("long-polling", "websocket"))
    p.add_argument("--duration", type=float, default=10.0, help="seconds of storm per round (T)")
    p.add_argument("--rounds", type=int, default=2, help="storm + settle rounds (leak check)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds before the measured window")
    p.add_argument(
        "--procs", type=int, default=1, help="load generator processes (2 cores: 1 is right)"
    )
    p.add_argument("--source-addrs", type=int, default=4, help="source addresses 127.0.0.1..x")
    p.add_argument("--ramp-rate", type=float, default=2000.0, help="clients started per second")
    p.add_argument(
        "--abandon",
        type=float,
        default=0.1,
        help="fraction of cycles that end without /meta/disconnect (sessions must expire)",
    )
    p.add_argument(
        "--churn-pause-ms", type=float, default=0.0, help="pause of a client between cycles, ms"
    )
    p.add_argument("--channels", type=int, default=16, help="distinct channels subscribed to")
    p.add_argument(
        "--restart-clients",
        type=int,
        default=50,
        help="clients connected through the server restart (0: no restart phase)",
    )
    p.add_argument(
        "--restart-command",
        default=None,
        help="with --url: shell command that restarts that server (without it the restart "
        "phase is skipped); the server the scenario starts is restarted by the scenario",
    )
    p.add_argument(
        "--restart-timeout",
        type=float,
        default=30.0,
        help="bound on the clients connecting, on --restart-command and on every client "
        "being back after the restart, s",
    )
    p.add_argument(
        "--restart-backoff-ms",
        type=int,
        default=1000,
        help="the clients' back-off added per failed reconnect (the CometD JS client's "
        "default), ms",
    )
    p.add_argument(
        "--max-interval", type=int, default=2000, help="server --max-interval, ms (expiry)"
    )
    p.add_argument("--timeout", type=int, default=30000, help="server connect timeout, ms")
    p.add_argument("--request-timeout", type=float, default=10.0, help="client reply bound, s")
    p.add_argument(
        "--settle-timeout",
        type=float,
        default=None,
        help="bound on waiting for 0 sessions after a storm, s (default 2 * max-interval + 10)",
    )
    p.add_argument("--settle", type=float, default=1.0, help="pause before baseline readings, s")
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--server-cmd",
        default=DEFAULT_SERVER_CMD,
        help="server command template ({python} {host} {port} {path} {timeout}); "
        "--admin-token and --max-interval are appended for the default engine command",
    )
    src.add_argument("--url", default=None, help="use an already running server at this URL")
    p.add_argument(
        "--server-pid",
        type=int,
        default=None,
        help="with --url: pid of the server (RSS and CPU of it and its descendants)",
    )
    p.add_argument(
        "--admin-token",
        default=None,
        help="token for the engine's /stats (default: random for the server started here; "
        "with --url: sessions are read only when it is given)",
    )
    p.add_argument(
        "--peer",
        choices=sorted(PEERS),
        default=None,
        help="first run the identical storm against this peer server (no /stats there: "
        "sessions n/a, a max-interval wait instead of the settle), then against the engine; "
        "print both and the ratios, write one record with both",
    )
    p.add_argument("--host", default="127.0.0.1", help="address the server listens on")
    p.add_argument("--path", default="/cometd", help="server path")
    p.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="pin the server to the first CPU and the generators to the others",
    )
    p.add_argument("--startup-timeout", type=float, default=30.0, help="server start bound, s")
    add_results_dir_arg(p, "where the record goes")
    p.add_argument(
        "--check",
        action="store_true",
        help="exit 2 on errors, leftover sessions or clients lost by the restart",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress lines")
    p.add_argument("--note", default="", help="free text stored in the record")
    return p


def check_failed(results: dict[str, Any]) -> str | None:
    """Why --check fails (None: it passes)."""
    if results["errors_total"]:
        return f"{results['errors_total']} errors"
    if results["sessions_settled"] not in (0, None):
        return f"{results['sessions_settled']} sessions left after settling"
    restart = results.get("restart") or {}
    if restart.get("lost"):
        return f"{restart['lost']} clients not back after the restart"
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.clients < 1 or args.duration <= 0 or args.rounds < 1 or args.procs < 1:
        raise SystemExit("churn.py: --clients, --duration, --rounds and --procs must be positive")
    if not 0 <= args.abandon <= 1:
        raise SystemExit("churn.py: --abandon is a fraction in 0..1")
    if not 1 <= args.source_addrs <= 254:
        raise SystemExit("churn.py: --source-addrs must be in 1..254")
    if args.restart_clients < 0 or args.restart_timeout <= 0 or args.churn_pause_ms < 0:
        raise SystemExit(
            "churn.py: --restart-clients and --churn-pause-ms must be >= 0, "
            "--restart-timeout positive"
        )
    if args.restart_command and args.url is None:
        raise SystemExit("churn.py: --restart-command is for a server given by --url")
    if args.server_pid is not None and args.url is None:
        raise SystemExit("churn.py: --server-pid is for a server given by --url")
    if args.url is not None and not args.url.startswith(("http://", "https://")):
        raise SystemExit(f"churn.py: --url must be an http:// URL, got {args.url!r}")
    check_loopback("churn.py", args)
    args.procs = min(args.procs, args.clients)
    record = run_scenario(
        SCENARIO,
        __file__,
        args,
        argv,
        lambda a, guard: compute_churn(a, asyncio.run(run_churn(a, guard))),
        comparison=comparison,
    )
    if isinstance(record, int):
        return record
    save_and_print(
        record,
        args.results_dir,
        f"{SCENARIO}-{args.clients}",
        churn_table,
        f"churn side by side, {args.clients} clients",
    )
    why = check_failed(record["results"]) if args.check else None
    if why is not None:
        sys.stderr.write(f"churn.py: --check failed: {why}\n")
        return 2
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
