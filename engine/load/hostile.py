#!/usr/bin/env python3
"""Hostile scenario: every attack at once against one server, beside
ordinary clients and canaries. Does anyone who behaves notice?

    python bench/hostile.py                    # 60 s, the full set (below)
    python bench/hostile.py --duration 10 --scale 0.1
    python bench/hostile.py --attacks none     # the same ordinary load, no attack

One server (``python -m engine serve``, default options, plus an
``--admin-token`` for ``/stats``), then, each in its own process(es):

- **ordinary clients**: ``--ordinary`` (1,000) clients, half long-polling and
  half WebSocket (bench/loadgen.py, one generator per transport), all
  subscribed to ``--feed-channel``, which bench/publisher.py feeds at
  ``--feed-rate`` (10) messages/s, each stamped with its send time: their
  delivery latency (arrival in the client's socket), drops and missing
  deliveries;
- **canaries**: one long-polling and one WebSocket client that subscribe to
  a channel of their own and publish to it (``--canary-rate``/s): every
  acknowledged message must come back (``lost`` otherwise);
- **the attacks** (bench/hostile_workers.py, one process each; ``--attacks``
  picks some, ``--scale`` shrinks their counts):

  - ``headers``: 150 connections sending one endless header value, 4 KB a
    write every 0.1 s, reopened 1 s after the server cuts them;
  - ``nonreader``: 40 WebSocket subscribers with a 4 KB receive buffer that
    handshake, subscribe to ``/hostile/stream`` and never read, while a second
    publisher streams 8 KB messages at 128/s (1 MiB/s) there;
  - ``handshakes``: 40,000 handshakes requested on one WebSocket (1,000 unanswered
    at most);
  - ``slowloris``: 2,000 connections sending a partial request head, then one
    byte every 3 s, from 10 source addresses, reopened when cut;
  - ``flood``: 100 handshakes on one WebSocket, then publishes to
    ``/hostile/flood`` from every session it got, as fast as 1,000
    unanswered allow.

Phases: the server starts; the ordinary clients ramp and the publishers and
canaries connect; then the attackers start and the feed, the stream and the
canaries publish for ``--duration`` s; the attackers are stopped, the last
deliveries awaited (``--drain-timeout``), everything stopped. Server RSS and
CPU are sampled every second, ``/stats`` every two; the run never trusts the
server: a server that dies or stops answering ends the attack phase and the
record says so.

Record: ``bench/results/hostile-<timestamp>.json``: the server's RSS over
time and its peak, the ordinary clients' latency (p50/p99/max, per transport
too), drops and missing deliveries, the canaries' losses, and per attack
what it achieved (connections opened and cut by the server, how they were
cut, HTTP statuses and WebSocket close codes and Bayeux errors received, how
long a connection lived before its cut, its own counters) beside the server's
counters (``/stats``) of the run. Targets: RSS peak < 512 MiB, ordinary p99
< 100 ms, no ordinary client dropped, no canary message lost.

Exit status: 0 when the run completed (with ``--check``: and every target
was met), 1 when it could not run, 2 when ``--check`` failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

from engine.load.churn import http_get_json, stats_url
from engine.load.histogram import (
    Histogram,
    Latency,
    current,
    fold,
    merge_field,
    summary_with_hist,
)
from engine.load.idle import (
    Generator,
    PublisherChild,
    _HelpFormatter,
    aggregate,
    loadgen_argv,
    start_server,
    take_recent,
    wait_ramp,
)
from engine.load.procs import (
    DEFAULT_SERVER_CMD,
    ChildGuard,
    LineChild,
    RunError,
    ServerProcess,
    free_port,
    machine_cpu_seconds,
    stop_quietly,
    tree_cpu_seconds,
    tree_rss_bytes,
)
from engine.load.records import (
    add_listen_args,
    add_results_dir_arg,
    add_server_args,
    check_loopback,
    human_bytes,
    log,
    na,
    run_scenario,
    save_and_print,
    shell_join,
)

SCENARIO = "hostile"
WORKERS = ["-m", "engine.load.attacks"]
TRANSPORTS = ("long-polling", "websocket")
MIB = 1024 * 1024
#: The targets the hostile run is held to.
TARGET_RSS_BYTES = 512 * MIB
TARGET_P99_MS = 100.0


@dataclass(frozen=True)
class Attack:
    """One attack: its worker role, what it does, its command-line options
    and the server counters that show it biting (shared between attacks)."""

    name: str
    what: str
    count: Callable[[argparse.Namespace], int]
    options: Callable[[argparse.Namespace], list[str]]
    #: Source addresses 127.0.<block>.1 .. .<n>: n for the count.
    block: int
    per_address: int
    counters: tuple[str, ...]


ATTACKS: dict[str, Attack] = {
    a.name: a
    for a in (
        Attack(
            "headers",
            "connections sending one endless header value",
            lambda a: a.headers,
            lambda a: [
                "--chunk",
                str(a.header_chunk),
                "--interval",
                str(a.header_interval),
                "--reconnect-delay",
                "1",
            ],
            block=10,
            per_address=5000,
            counters=("http_head_too_large",),
        ),
        Attack(
            "nonreader",
            "WebSocket subscribers to the stream that never read",
            lambda a: a.nonreaders,
            lambda a: ["--channel", a.stream_channel, "--rcvbuf", "4096", "--reconnect-delay", "1"],
            block=11,
            per_address=5000,
            counters=("write_timeouts", "dropped_queue_full"),
        ),
        Attack(
            "handshakes",
            "handshakes requested on one WebSocket",
            lambda a: a.handshakes,
            lambda a: ["--window", "1000", "--reconnect-delay", "1"],
            block=12,
            per_address=10**9,
            counters=("session_limit_reached", "handshake_rate_exceeded", "handshakes_refused"),
        ),
        Attack(
            "slowloris",
            "connections sending a partial request head, a byte every few seconds",
            lambda a: a.slowloris,
            lambda a: ["--interval", str(a.slowloris_interval), "--reconnect-delay", "0.5"],
            block=13,
            per_address=200,
            counters=("http_header_timeouts",),
        ),
        Attack(
            "flood",
            "publishes from fresh sessions on one WebSocket, as fast as allowed",
            lambda a: a.flood_sessions,
            lambda a: [
                "--sessions",
                str(a.flood_sessions),
                "--count",
                str(a.flood_messages),
                "--channel",
                "/hostile/flood",
                "--window",
                "1000",
                "--reconnect-delay",
                "1",
            ],
            block=14,
            per_address=10**9,
            counters=("publish_rate_exceeded", "session_limit_reached"),
        ),
    )
}


#: Not an attack: new clients arriving during the attacks (a page loading now).
NEWCOMERS = Attack(
    "newcomers",
    "new clients, each opening a connection and handshaking over HTTP",
    lambda a: 0,
    lambda a: ["--interval", str(a.newcomer_interval), "--window", "100"],
    block=2,
    per_address=10**9,
    counters=(),
)


# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hostile.py",
        description=(
            "Hostile scenario: endless headers, non-reading subscribers under a 1 MiB/s stream, "
            "a handshake flood, slowloris and a publish flood, all at once against one server, "
            "beside ordinary clients and canaries; report server RSS, the ordinary clients' "
            "latency and drops, canary losses and what each attack achieved; write a JSON record."
        ),
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--duration", type=float, default=60.0, help="attack phase, s")
    p.add_argument(
        "--attacks",
        default=",".join(ATTACKS),
        help="comma-separated attacks to run ('none': ordinary load only)",
    )
    p.add_argument(
        "--scale", type=float, default=1.0, help="multiply every attack count and --ordinary"
    )
    g = p.add_argument_group("ordinary clients and canaries")
    g.add_argument("--ordinary", type=int, default=1000, help="ordinary clients in all")
    g.add_argument(
        "--websocket-share", type=float, default=0.5, help="share of them over WebSocket"
    )
    g.add_argument("--feed-channel", default="/hostile/feed", help="their channel")
    g.add_argument("--feed-rate", type=float, default=10.0, help="messages/s published there")
    g.add_argument("--canary-rate", type=float, default=5.0, help="each canary's publishes/s")
    g.add_argument(
        "--newcomer-interval", type=float, default=0.5, help="s between two new clients' arrival"
    )
    g = p.add_argument_group("attacks")
    g.add_argument("--headers", type=int, default=150, help="endless-header connections")
    g.add_argument("--header-chunk", type=int, default=4096, help="bytes per write")
    g.add_argument("--header-interval", type=float, default=0.1, help="s between writes")
    g.add_argument("--nonreaders", type=int, default=40, help="non-reading subscribers")
    g.add_argument("--stream-channel", default="/hostile/stream", help="their channel")
    g.add_argument("--stream-rate", type=float, default=128.0, help="stream messages/s")
    g.add_argument("--stream-bytes", type=int, default=8192, help="stream message padding")
    g.add_argument("--handshakes", type=int, default=40000, help="handshakes on one WebSocket")
    g.add_argument("--slowloris", type=int, default=2000, help="slowloris connections")
    g.add_argument("--slowloris-interval", type=float, default=3.0, help="s between bytes")
    g.add_argument("--flood-sessions", type=int, default=100, help="handshakes of the flood")
    g.add_argument(
        "--flood-messages", type=int, default=5_000_000, help="publishes of the flood at most"
    )
    add_server_args(p)
    p.set_defaults(timeout=30000, peer=None)  # the engine's default connect timeout
    p.add_argument(
        "--server-args",
        default="",
        help="options appended to the default server command (e.g. '--max-publish-rate 50')",
    )
    p.add_argument("--admin-token", default=None, help="token for /stats (default random)")
    add_listen_args(p)
    p.add_argument("--ramp-rate", type=float, default=500.0, help="ordinary clients started /s")
    p.add_argument("--drain-timeout", type=float, default=10.0, help="last deliveries, s")
    p.add_argument("--settle", type=float, default=1.0, help="pause before measuring, s")
    p.add_argument("--startup-timeout", type=float, default=30.0, help="server start bound, s")
    add_results_dir_arg(p)
    p.add_argument("--check", action="store_true", help="exit 2 unless every target was met")
    p.add_argument("--no-progress", action="store_true", help="no progress lines")
    p.add_argument("--note", default="", help="free text stored in the record")
    return p


def resolve(args: argparse.Namespace) -> None:
    names = [] if args.attacks.strip() == "none" else [n.strip() for n in args.attacks.split(",")]
    unknown = [n for n in names if n not in ATTACKS]
    if unknown:
        raise SystemExit(f"hostile.py: unknown attack(s) {unknown}; known: {', '.join(ATTACKS)}")
    args.attack_list = [n for n in ATTACKS if n in names]
    if args.duration <= 0 or args.scale <= 0 or not 0 <= args.websocket_share <= 1:
        raise SystemExit("hostile.py: --duration, --scale > 0 and --websocket-share in 0..1")
    if args.scale != 1.0:
        for name in ("ordinary", "headers", "nonreaders", "handshakes", "slowloris"):
            setattr(args, name, max(1, round(getattr(args, name) * args.scale)))
        args.flood_sessions = max(1, round(args.flood_sessions * args.scale))
    if args.ordinary < 2:
        raise SystemExit("hostile.py: --ordinary must be at least 2")
    if args.admin_token is None:
        args.admin_token = secrets.token_hex(12)
    if args.url is None:
        if args.server_cmd == DEFAULT_SERVER_CMD:
            args.server_cmd += f" --admin-token {args.admin_token}"
        if args.server_args:
            args.server_cmd += " " + args.server_args
    check_loopback("hostile.py", args)


# --------------------------------------------------------------------------- the kernel's view


def accept_queue(port: int) -> int | None:
    """Connections the kernel completed and the server has not accepted yet:
    ``rx_queue`` of the listening socket in /proc/net/tcp (listening sockets
    come first there, so the read stops at the first other one)."""
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[3] != "0A":  # TCP_LISTEN
                    return None
                if int(fields[1].rsplit(":", 1)[1], 16) == port:
                    return int(fields[4].split(":")[1], 16)
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return None


def listen_overflows() -> int | None:
    """TcpExt ListenOverflows of the machine (/proc/net/netstat): connections
    dropped because an accept queue was full."""
    try:
        with open("/proc/net/netstat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            value = table.get("ListenOverflows")
            return None if value is None else int(value)
    return None


# --------------------------------------------------------------------------- children


class WorkerChild(LineChild):
    """One bench/hostile_workers.py attacker: its latest and final stats, and
    when it said its attack was done (the handshake flood ends by itself)."""

    def __init__(self, attack: Attack, argv: list[str]) -> None:
        super().__init__(argv, f"attack {attack.name}")
        self.attack = attack
        self.latest: dict[str, Any] = {}
        self.final: dict[str, Any] | None = None
        self.done_after_s: float | None = None
        #: Its stats when the attack phase ended (before it closed everything).
        self.at_stop: dict[str, Any] = {}

    def on_line(self, d: dict[str, Any]) -> None:
        if d.get("type") != "stats":
            return
        self.latest = d
        if d.get("attack_done") and self.done_after_s is None:
            self.done_after_s = d.get("elapsed_s")
        if d.get("final"):
            self.final = d


def attack_argv(args: argparse.Namespace, attack: Attack, url: str) -> list[str]:
    count = attack.count(args)
    n_sources = max(1, min(254, math.ceil(count / attack.per_address)))
    sources = ",".join(f"127.0.{attack.block}.{i}" for i in range(1, n_sources + 1))
    return [
        sys.executable,
        *WORKERS,
        attack.name,
        "--url",
        url,
        "--count",
        str(count),
        "--source-addrs",
        sources,
        "--duration",
        f"{args.duration:.3f}",
        "--max-seconds",
        f"{args.duration + 60:.0f}",
        *attack.options(args),
    ]


def publisher_child(
    args: argparse.Namespace,
    url: str,
    *,
    channel: str,
    rate: float,
    transport: str = "websocket",
    source: str,
    payload: int = 64,
    canary: bool = False,
) -> PublisherChild:
    """The feed, the stream (bench/publisher.py) or a canary (the same client
    run by bench/hostile_workers.py, subscribed to its channel)."""
    child = PublisherChild(
        url=url,
        transport=transport,
        channel=channel,
        messages=max(1, round(rate * args.duration)),
        rate=rate,
        ack_timeout=args.drain_timeout,
        max_seconds=args.duration + args.drain_timeout + 120,
        extra=["--payload-bytes", str(payload), "--source-addr", source],
    )
    if canary:
        child.argv[1:3] = [*WORKERS, "canary"]
        child.label = f"canary {transport}"
    return child


def ordinary_split(args: argparse.Namespace) -> dict[str, int]:
    ws = round(args.ordinary * args.websocket_share)
    return {"long-polling": args.ordinary - ws, "websocket": ws}


# --------------------------------------------------------------------------- run


async def run(args: argparse.Namespace, guard: ChildGuard) -> dict[str, Any]:
    progress = not args.no_progress
    server: ServerProcess | None = None
    server_pid: int | None = args.server_pid
    gens: list[Generator] = []
    transports: list[str] = []
    pubs: dict[str, PublisherChild] = {}
    workers: list[WorkerChild] = []
    phases: dict[str, float] = {}
    samples: list[dict[str, Any]] = []
    server_died_at: float | None = None
    t_start = time.monotonic()
    stats_state: dict[str, Any] = {"last": None, "task": None, "failures": 0}

    def rss() -> int | None:
        return tree_rss_bytes(server_pid) if server_pid else None

    def cpu() -> float | None:
        return tree_cpu_seconds(server_pid) if server_pid else None

    def check_children() -> None:
        for g in gens:
            if not g.alive():
                raise RunError(
                    f"loadgen {g.index} exited early:\n" + "\n".join(g.stderr_tail[-10:])
                )

    async def read_stats() -> dict[str, Any] | None:
        return await asyncio.to_thread(http_get_json, stats_url(url), args.admin_token, 3.0)

    def poll_stats() -> None:
        """Start a /stats read unless one is running (a busy server answers late)."""
        task = stats_state["task"]
        if task is not None and not task.done():
            return
        if task is not None:
            result = task.result()
            if result is None:
                stats_state["failures"] += 1
            else:
                stats_state["last"] = result
        stats_state["task"] = asyncio.create_task(read_stats())

    try:
        # 1. server ---------------------------------------------------------------------
        if args.url is None:
            server = ServerProcess.for_args(
                args.server_cmd, args, args.port or free_port(args.host), guard
            )
            url = await start_server(server, args.startup_timeout, phases, progress)
            server_pid = server.pid
        else:
            url = args.url
        await asyncio.sleep(args.settle)
        rss_baseline = rss()
        stats_start = await read_stats()

        # 2. ordinary clients -----------------------------------------------------------
        split = ordinary_split(args)
        max_seconds = args.duration + args.drain_timeout + 300
        for i, (transport, count) in enumerate(split.items()):
            if count <= 0:
                continue
            ns = SimpleNamespace(
                source_addrs=1,
                transport=transport,
                channel=args.feed_channel,
                ramp_rate=args.ramp_rate * count / args.ordinary,
                procs=1,
                max_pending=200,
                max_attempts=5,
            )
            hot = [
                "--hot-channel",
                args.feed_channel,
                "--hot-clients",
                str(count),
                "--total-clients",
                str(count),
            ]
            g = Generator(i, loadgen_argv(ns, url, 0, count, max_seconds, hot))
            await g.start(guard)
            gens.append(g)
            transports.append(transport)

        def check() -> None:
            if server is not None and not server.alive():
                raise RunError("server exited during the ramp:\n" + server.tail())
            check_children()

        ramp_timeout = 2.0 * args.ordinary / args.ramp_rate + 30.0
        ramp_complete, ramp_wall = await wait_ramp(
            gens, args.ordinary, time.monotonic(), ramp_timeout, check, progress
        )
        phases["ramp_s"] = round(ramp_wall, 3)

        # 3. publishers and canaries --------------------------------------------------------
        pubs["feed"] = publisher_child(
            args, url, channel=args.feed_channel, rate=args.feed_rate, source="127.0.1.1"
        )
        if "nonreader" in args.attack_list:
            pubs["stream"] = publisher_child(
                args,
                url,
                channel=args.stream_channel,
                rate=args.stream_rate,
                payload=args.stream_bytes,
                source="127.0.1.2",
            )
        for k, transport in enumerate(TRANSPORTS):
            pubs[f"canary-{transport}"] = publisher_child(
                args,
                url,
                channel=f"/hostile/canary/{transport}",
                rate=args.canary_rate,
                transport=transport,
                source=f"127.0.1.{3 + k}",
                canary=True,
            )
        for pub in pubs.values():
            await pub.start(guard)
        for pub in pubs.values():
            await pub.wait_for("ready", 30.0)
        await asyncio.sleep(args.settle)
        check()
        before = aggregate(list(await asyncio.gather(*(g.report("go", 10.0) for g in gens))))
        stats_go = await read_stats()

        # 4. attack -------------------------------------------------------------------------
        for attack in [*(ATTACKS[name] for name in args.attack_list), NEWCOMERS]:
            w = WorkerChild(attack, attack_argv(args, attack, url))
            await w.start(guard)
            workers.append(w)
        attackers, newcomers = workers[:-1], workers[-1]
        port = urlsplit(url).port or 80
        overflows0 = listen_overflows()
        cpu0 = cpu()
        machine0 = machine_cpu_seconds()
        t_go = time.monotonic()
        for pub in pubs.values():
            pub.send("go")
        log(progress, f"attacking for {args.duration:g} s: {', '.join(args.attack_list) or 'none'}")
        rss_peak = rss_baseline or 0
        next_sample = t_go
        take_recent(gens)  # the samples start with the attack
        next_log = t_go + 5.0
        t_end = t_go + args.duration
        # bounded by t_end (and the server's death)
        while (now := time.monotonic()) < t_end:
            check_children()
            if server is not None and not server.alive():
                server_died_at = round(now - t_go, 3)
                log(progress, f"server died {server_died_at} s into the attack")
                break
            if now >= next_sample:
                next_sample += 1.0
                r = rss()
                rss_peak = max(rss_peak, r or 0)
                if len(samples) % 2 == 0:
                    poll_stats()
                agg = aggregate([g.latest for g in gens])
                st = stats_state["last"] or {}
                samples.append(
                    {
                        "t": round(now - t_go, 2),
                        "rss": r,
                        "cpu": cpu(),
                        "connections": st.get("connections"),
                        "sessions": st.get("sessions"),
                        "ordinary_connected": agg["connected"],
                        "ordinary_dropped": agg["dropped"] - before["dropped"],
                        "delivered": agg["hot_messages"] - before["hot_messages"],
                        # ordinary clients' deliveries since the previous sample
                        "latency_ms": current(take_recent(gens), "fanout"),
                        "attack_open": {w.attack.name: w.latest.get("open_now") for w in attackers},
                        "attack_cut": {w.attack.name: w.latest.get("cut") for w in attackers},
                        "newcomers_ok": newcomers.latest.get("newcomers_ok"),
                        "accept_queue": accept_queue(port),
                    }
                )
                if now >= next_log:
                    next_log += 5.0
                    log(
                        progress,
                        f"  t={now - t_go:4.0f} s  RSS {human_bytes(r)}  ordinary "
                        f"{agg['connected']}/{args.ordinary} connected, "
                        f"{agg['dropped'] - before['dropped']} dropped  "
                        + "  ".join(
                            f"{w.attack.name} {w.latest.get('open_now', 0)} open "
                            f"{w.latest.get('cut', 0)} cut"
                            for w in attackers
                        ),
                    )
            await asyncio.sleep(0.2)
        phases["attack_s"] = round(time.monotonic() - t_go, 3)
        cpu1 = cpu()
        machine1 = machine_cpu_seconds()
        overflows1 = listen_overflows()

        # 5. stop the attackers, drain ------------------------------------------------------
        for w in workers:
            w.at_stop = w.latest
        await asyncio.gather(*(w.stop(10.0) for w in workers))
        t_drain = time.monotonic()
        # bounded: every publisher reports done within its schedule + drain-timeout
        while time.monotonic() - t_drain < args.duration * 0.1 + args.drain_timeout + 5:
            alive = server is None or server.alive()
            if all("done" in p.lines or not p.alive() for p in pubs.values()) or not alive:
                break
            await asyncio.sleep(0.1)
        feed_done = pubs["feed"].lines.get("done") or {}
        expected = before["hot_clients"] * int(feed_done.get("acked") or 0)
        t_drain = time.monotonic()
        # bounded by the drain timeout
        while time.monotonic() - t_drain < args.drain_timeout:
            agg = aggregate([g.latest for g in gens])
            if agg["hot_messages"] - before["hot_messages"] >= expected:
                break
            if server is not None and not server.alive():
                break
            await asyncio.sleep(0.2)
        after = aggregate(list(await asyncio.gather(*(g.report("end", 10.0) for g in gens))))
        rss_end = rss()
        stats_end = await read_stats()
        phases["drain_s"] = round(time.monotonic() - t_go - phases["attack_s"], 3)

        # 6. stop -----------------------------------------------------------------------------
        for pub in pubs.values():
            await pub.stop(10.0)
        await asyncio.gather(*(g.stop(15.0) for g in gens))
        finals = {t: (g.final or g.latest) for t, g in zip(transports, gens, strict=True)}
        final = aggregate(list(finals.values()))
        problems = (server.problems, list(server.problem_lines)) if server else (None, [])
        server_exit = None
        if server is not None:
            if server_died_at is None and not server.alive():
                server_died_at = round(time.monotonic() - t_go, 3)
            server_exit = await server.stop()
        phases["total_s"] = round(time.monotonic() - t_start, 3)
        # Each transport's whole-run histograms (one generator per transport).
        hists = {t: merge_field([d], "hist_total") for t, d in finals.items()}
        return compute(
            args=args,
            url=url,
            server=server,
            server_pid=server_pid,
            server_exit=server_exit,
            server_died_at=server_died_at,
            server_problems=problems,
            ramp_complete=ramp_complete,
            before=before,
            after=after,
            final=final,
            finals=finals,
            expected=expected,
            hists=hists,
            pubs={k: p.lines.get("final") or p.lines.get("done") or {} for k, p in pubs.items()},
            workers=workers,
            rss_baseline=rss_baseline,
            rss_peak=max(rss_peak, rss_end or 0),
            rss_end=rss_end,
            cpu_attack=None if cpu0 is None or cpu1 is None else cpu1 - cpu0,
            machine=(
                None
                if machine0 is None or machine1 is None
                else (machine1[0] - machine0[0], machine1[1] - machine0[1])
            ),
            stats=(stats_start, stats_go, stats_end),
            stats_failures=stats_state["failures"],
            listen_overflows=(
                None if overflows0 is None or overflows1 is None else overflows1 - overflows0
            ),
            phases=phases,
            samples=samples,
        )
    finally:
        task = stats_state["task"]
        if task is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(task, 5.0)
        await stop_quietly([*workers, *pubs.values(), *gens], server)


# --------------------------------------------------------------------------- figures


def counter_delta(
    end: dict[str, Any] | None, start: dict[str, Any] | None
) -> dict[str, int] | None:
    """The server's counters (/stats) that moved between two readings."""
    if not end or not start:
        return None
    a, b = start.get("counters") or {}, end.get("counters") or {}
    return {k: int(v) - int(a.get(k, 0)) for k, v in b.items() if int(v) != int(a.get(k, 0))}


def compute(
    *,
    args: argparse.Namespace,
    url: str,
    server: ServerProcess | None,
    server_pid: int | None,
    server_exit: int | None,
    server_died_at: float | None,
    server_problems: tuple[int | None, list[str]],
    ramp_complete: bool,
    before: dict[str, Any],
    after: dict[str, Any],
    final: dict[str, Any],
    finals: dict[str, dict[str, Any]],
    expected: int,
    hists: dict[str, dict[str, Histogram]],
    pubs: dict[str, dict[str, Any]],
    workers: list[WorkerChild],
    rss_baseline: int | None,
    rss_peak: int | None,
    rss_end: int | None,
    cpu_attack: float | None,
    machine: tuple[float, float] | None,
    stats: tuple[dict[str, Any] | None, ...],
    stats_failures: int,
    listen_overflows: int | None,
    phases: dict[str, float],
    samples: list[dict[str, Any]],
) -> dict[str, Any]:
    # Over both transports (fresh ones: merging changes the first argument).
    every, every_read = Latency(), Latency()
    for by_name in hists.values():
        for total, name in ((every, "fanout"), (every_read, "fanout_read")):
            if name in by_name:
                fold(total, by_name[name])
    lat = summary_with_hist(every)
    latency_at = next((d["latency_at"] for d in finals.values() if d.get("latency_at")), "arrival")
    delivered = after["hot_messages"] - before["hot_messages"]
    dropped = after["dropped"] - before["dropped"]
    ordinary = {
        "clients": args.ordinary,
        "by_transport": ordinary_split(args),
        "ramp_complete": ramp_complete,
        "connected_at_start": before["connected"],
        "connected_at_end": after["connected"],
        "failed": final["failed"],
        "dropped": dropped,
        "dropped_whole_run": final["dropped"],
        "gave_up": final["gave_up"],
        "expected_deliveries": expected,
        "delivered": delivered,
        "missing": max(0, expected - delivered),
        "out_of_order": final["hot_out_of_order"],
        "latency_at": latency_at,
        "latency_ms": lat,
        "read_latency_ms": summary_with_hist(every_read),
        "latency_ms_by_transport": {
            t: summary_with_hist(by_name.get("fanout")) for t, by_name in hists.items()
        },
        "dropped_by_transport": {t: d.get("dropped") for t, d in finals.items()},
        "errors": final["errors"],
        "loadgen_cpu_s": round(final["cpu_s"], 3),
    }
    canaries = {}
    for transport in TRANSPORTS:
        c = pubs.get(f"canary-{transport}") or {}
        canaries[transport] = {
            k: c.get(k)
            for k in (
                "published",
                "acked",
                "failed",
                "received",
                "lost",
                "duplicates",
                "latency_ms",
                "ack_ms",
                "publish_requests",
                "max_batch",
                "handshakes",
                "connect_failures",
                "errors",
            )
        }
    canary_lost = sum(int(c.get("lost") or 0) for c in canaries.values())
    canary_failed = sum(int(c.get("failed") or 0) for c in canaries.values())
    canary_missing = any(c.get("published") is None for c in canaries.values())
    stats_start, stats_go, stats_end = stats
    moved = counter_delta(stats_end, stats_go) or {}
    attacks = {}
    newcomers: dict[str, Any] = {}
    for w in workers:
        out = w.final or w.latest or {}
        if w.attack is NEWCOMERS:
            newcomers = {"interval_s": args.newcomer_interval, **out}
            continue
        attacks[w.attack.name] = {
            "what": w.attack.what,
            "requested": w.attack.count(args),
            "worker_final": w.final is not None,
            "done_after_s": w.done_after_s,
            "open_at_end": w.at_stop.get("open_now"),
            "oldest_open_at_end_s": w.at_stop.get("oldest_open_s"),
            "outcome": out,
            "server_counters": {k: moved.get(k, 0) for k in w.attack.counters},
            "worker_exit_code": None if w.proc is None else w.proc.returncode,
        }
    p99 = lat.get("p99")
    targets = {
        "rss_peak_under_512_mib": rss_peak is not None and rss_peak < TARGET_RSS_BYTES,
        "ordinary_p99_under_100_ms": p99 is not None and p99 < TARGET_P99_MS,
        "ordinary_dropped_zero": dropped == 0 and final["gave_up"] == 0,
        "ordinary_nothing_missing": expected > 0 and delivered >= expected,
        "canary_lost_zero": canary_lost == 0 and not canary_missing and canary_failed == 0,
        "server_survived": server_died_at is None,
    }
    attack_s = phases.get("attack_s") or args.duration
    results = {
        # the headline figures first (bench/report's generic table shows the first six)
        "rss_peak_mib": None if rss_peak is None else round(rss_peak / MIB, 1),
        "ordinary_latency_p50_ms": lat.get("p50"),
        "ordinary_latency_p99_ms": p99,
        "ordinary_latency_max_ms": lat.get("max"),
        "ordinary_dropped": dropped,
        "canary_lost": canary_lost,
        "rss_baseline_bytes": rss_baseline,
        "rss_peak_bytes": rss_peak,
        "rss_end_bytes": rss_end,
        "server_cpu_attack_s": None if cpu_attack is None else round(cpu_attack, 3),
        "server_cpu_percent_attack": (
            None if cpu_attack is None else round(100 * cpu_attack / attack_s, 1)
        ),
        "machine_busy_percent_attack": (
            None if machine is None or not machine[1] else round(100 * machine[0] / machine[1], 1)
        ),
        "accept_queue_max": max(
            (q for q in (s.get("accept_queue") for s in samples) if q is not None), default=None
        ),
        "listen_overflows": listen_overflows,
        "server_died_at_s": server_died_at,
        "server_exit_code": server_exit,
        "server_pid": server_pid,
        "server_log_problems": server_problems[0],
        "server_log_problem_lines": server_problems[1],
        "ordinary": ordinary,
        "canaries": canaries,
        "canary_failed": canary_failed,
        "newcomers": newcomers,
        "feed": pubs.get("feed"),
        "stream": pubs.get("stream"),
        "attacks": attacks,
        "server_counters_attack": moved,
        "server_counters_whole_run": counter_delta(stats_end, stats_start),
        "server_status_end": (
            None
            if stats_end is None
            else {k: v for k, v in stats_end.items() if k not in ("counters",)}
        ),
        "stats_read_failures": stats_failures,
        "targets": targets,
        "all_targets_met": all(targets.values()),
        "phases": phases,
        "samples": samples,
    }
    parameters = {
        k: v
        for k, v in vars(args).items()
        if k not in ("admin_token", "results_dir", "no_progress", "check")
    }
    parameters["url"] = url
    parameters["server_cmd"] = (
        None if server is None else shell_join(server.argv).replace(args.admin_token, "TOKEN")
    )
    return {"parameters": parameters, "results": results}


# --------------------------------------------------------------------------- output


def _ms(d: dict[str, Any] | None, keys: tuple[str, ...] = ("p50", "p99", "max")) -> str:
    d = d or {}
    return " / ".join(na(d.get(k), "{:.1f}") for k in keys) + " ms"


def _counts(d: dict[str, Any] | None) -> str:
    return ", ".join(f"{k} x{v:,}" for k, v in (d or {}).items()) or "-"


def attack_rows(name: str, a: dict[str, Any]) -> list[tuple[str, str]]:
    o = a.get("outcome") or {}
    cut = o.get("cut_after_s") or {}
    rows = [
        (
            f"{name}: {a['requested']:,} {a['what']}",
            f"{o.get('opened', 0):,} opened, {o.get('cut', 0):,} cut by the server, "
            f"{na(a.get('open_at_end'))} open at the end, the oldest for "
            f"{na(a.get('oldest_open_at_end_s'), '{:.1f}')} s",
        ),
        (
            "  how cut / HTTP statuses / close codes",
            f"{_counts(o.get('cut_how'))} / {_counts(o.get('statuses'))} / "
            f"{_counts(o.get('close_codes'))}",
        ),
        (
            "  cut after p50 / p99 / max",
            " / ".join(na(cut.get(k), "{:.2f}") for k in ("p50", "p99", "max")) + " s",
        ),
    ]
    own = {
        k: v
        for k, v in o.items()
        if k.startswith(("handshakes_", "publishes_", "connects_", "subscribed", "setup_"))
    }
    if own:
        rows.append(("  its counters", _counts(own)))
    if o.get("publishes_ok") and o.get("elapsed_s"):
        rate = o["publishes_ok"] / o["elapsed_s"]
        rows.append(("  publishes acknowledged per s", f"{rate:,.0f}"))
    if a.get("done_after_s") is not None:
        rows.append(("  attack finished after", f"{a['done_after_s']:.1f} s"))
    if o.get("errors"):
        rows.append(("  Bayeux errors received", _counts(o.get("errors"))))
    rows.append(("  server counters", _counts(a.get("server_counters"))))
    return rows


def report_table(record: dict[str, Any]) -> str:
    r = record["results"]
    p = record["parameters"]
    o = r["ordinary"]
    t = r["targets"]

    def met(key: str) -> str:
        return "" if t.get(key) else "  ** target missed **"

    rows = [
        ("attacks", ", ".join(p["attack_list"]) or "none"),
        (
            "server RSS baseline / peak / end",
            f"{human_bytes(r['rss_baseline_bytes'])} / {human_bytes(r['rss_peak_bytes'])} / "
            f"{human_bytes(r['rss_end_bytes'])}" + met("rss_peak_under_512_mib"),
        ),
        (
            "server CPU in the attack / machine busy",
            f"{na(r['server_cpu_percent_attack'], '{:.0f}')} % of one core / "
            f"{na(r['machine_busy_percent_attack'], '{:.0f}')} % of all CPUs",
        ),
        ("server survived", "yes" if t["server_survived"] else f"NO ({r['server_died_at_s']} s)"),
        (
            "accept queue max (sampled each s) / overflows",
            f"{na(r.get('accept_queue_max'))} / {na(r.get('listen_overflows'))}",
        ),
        (
            "ordinary clients (long-polling + WebSocket)",
            f"{o['clients']:,} ({o['by_transport']['long-polling']:,} + "
            f"{o['by_transport']['websocket']:,}), {o['connected_at_end']:,} connected at the end",
        ),
        (
            "ordinary dropped / gave up",
            f"{o['dropped']:,} / {o['gave_up']:,}" + met("ordinary_dropped_zero"),
        ),
        (
            "deliveries expected / received / missing",
            f"{o['expected_deliveries']:,} / {o['delivered']:,} / {o['missing']:,}"
            + met("ordinary_nothing_missing"),
        ),
        (
            "latency p50 / p99 / max",
            _ms(o["latency_ms"]) + met("ordinary_p99_under_100_ms"),
        ),
    ]
    for transport, lat in o["latency_ms_by_transport"].items():
        rows.append((f"  {transport}", _ms(lat)))
    rows.append(("read by the generator p50 / p99", _ms(o["read_latency_ms"], ("p50", "p99"))))
    for transport, c in r["canaries"].items():
        rows.append(
            (
                f"canary {transport}: published / acked / received / lost",
                f"{na(c.get('published'))} / {na(c.get('acked'))} / {na(c.get('received'))} / "
                f"{na(c.get('lost'))}",
            )
        )
    rows.append(("canary lost (target 0)", f"{r['canary_lost']:,}" + met("canary_lost_zero")))
    n = r.get("newcomers") or {}
    rows.append(
        (
            f"newcomers, one every {p['newcomer_interval']:g} s: ok / refused / failed / late",
            " / ".join(
                f"{n.get(k, 0):,}"
                for k in ("newcomers_ok", "newcomers_refused", "newcomers_failed")
            )
            + f" / {n.get('newcomers_timed_out', 0):,} of {n.get('newcomers', 0):,}",
        )
    )
    rows.append(
        (
            "  handshake p50 / p99 / max (connect included)",
            " / ".join(
                na((n.get("handshake_s") or {}).get(k), "{:.3f}") for k in ("p50", "p99", "max")
            )
            + " s",
        )
    )
    for name, a in r["attacks"].items():
        rows.extend(attack_rows(name, a))
    rows.append(("server log warnings/errors", na(r["server_log_problems"])))
    rows.append(("all targets met", "yes" if r["all_targets_met"] else "NO"))
    title = (
        f"hostile scenario, {p['duration']:g} s, {o['clients']:,} ordinary clients, "
        f"feed {p['feed_rate']:g}/s"
    )
    return left_table(rows, title)


def left_table(rows: list[tuple[str, str]], title: str) -> str:
    """Rows of (what, value), values left-aligned (they are long and varied)."""
    width = max(len(k) for k, _ in rows)
    line = "-" * min(120, width + 3 + max(len(v) for _, v in rows))
    return "\n".join([title, line, *(f"  {k.ljust(width)}  {v}" for k, v in rows), line])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    resolve(args)
    record = run_scenario(SCENARIO, __file__, args, argv, lambda a, g: asyncio.run(run(a, g)))
    if isinstance(record, int):
        return record
    save_and_print(record, args.results_dir, SCENARIO, report_table, "")
    if args.check and not record["results"]["all_targets_met"]:
        sys.stderr.write("hostile.py: --check failed: a target was missed\n")
        return 2
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
