#!/usr/bin/env python3
"""Idle scenario: how much does the server pay, in memory and CPU, to hold N
idle clients, over long-polling or (``--transport websocket``) WebSocket?

Phases, each bounded in time:

1. start the server (``python -m engine serve`` on a free port, or
   ``--server-cmd``), or use ``--url`` (+ ``--server-pid`` for RSS/CPU); with
   ``--workers W`` first a ``redis-server`` on a free loopback port
   (``common.start_redis``), and the engine runs as ``--workers W --broker
   redis://...`` (W processes sharing the port, SO_REUSEPORT);
2. measure its baseline RSS (server process + descendants; redis apart) once
   it is ready;
3. ramp: ``--procs`` load generators (bench/loadgen.py) start N clients at
   ``--ramp-rate`` in total, at most ``--max-pending`` per generator still
   setting up, each client its own browser (cookie) and its own connection
   from one of ``--source-addrs`` 127.0.0.x addresses, subscribed to one of
   ``--channels`` channels; a client is connected once its first
   /meta/connect has succeeded;
4. hold for ``--hold`` seconds (at least one connect timeout; by default two
   and 5 s) while every client long-polls; measure the server's CPU time over
   the hold, its RSS at the end, and the heartbeat lateness (held connects
   answered without events: reply - send - advised timeout);
5. with ``--fanout-fraction F``: F x N of the clients (spread evenly over the
   generators) subscribed to ``--hot-channel`` instead; a publisher
   (bench/publisher.py) sends ``--fanout-messages`` timestamped messages at
   ``--fanout-rate``/s; every delivery's latency, and whether all arrived;
6. stop the generators, the server and redis, print a table and write a JSON
   record to ``<results-dir>/idle-<transport>-<N>[-w<W>]-<timestamp>.json``.

``--peer faye`` first runs the identical scenario against a Faye Node server
(bench/peers/faye_server.mjs, npm ``faye`` installed into bench/peers/ when
missing) with the same timeout, then against the engine; it prints both tables
and a side-by-side one with the ratios engine/faye, and writes one record
(``idle-<transport>-<N>-vs-faye-<timestamp>.json``) holding both.

``--tls`` serves the engine over TLS: a CA and a certificate for 127.0.0.1
and localhost made by ``trustme`` in the run's temporary directory, the
server started with ``--ssl-certfile/--ssl-keyfile``, the generators given
the ``https://`` (``wss://``) URL and ``--ca-file``. ``--compare-tls`` runs the
plain scenario, then the same over TLS, in one command, and writes one record
(``idle-<transport>-<N>-tls-<timestamp>.json``) holding both and the ratios
TLS/plain.

Exit status: 0 when the run completed (with --check: and every client stayed
connected, and the fan-out was complete), 1 when it could not run, 2 when
--check failed.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import importlib.metadata
import math
import os
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from engine.load.histogram import (
    Histogram,
    current,
    decode_histogram,
    fold,
    merge_field,
    minus,
    summary_with_hist,
)
from engine.load.procs import (
    ChildGuard,
    LineChild,
    RedisServer,
    RunError,
    ServerProcess,
    free_port,
    machine_cpu_seconds,
    process_tree,
    source_addresses,
    split_clients,
    start_redis,
    stop_quietly,
    stop_server,
    tree_cpu_seconds,
    tree_pss_bytes,
    tree_rss_bytes,
)
from engine.load.records import (
    PEERS,
    ProgressBar,
    add_listen_args,
    add_results_dir_arg,
    add_server_args,
    check_loopback,
    format_comparison,
    format_table,
    human_bytes,
    log,
    na,
    progress_event,
    ratio,
    run_scenario,
    save_and_print,
    shell_join,
    write_record,
)

#: The generator and publisher processes, run as modules of this package.
LOADGEN = ["-m", "engine.load.client"]
PUBLISHER = ["-m", "engine.load.publisher"]
SCENARIO = "idle"
#: Clients setting up at once over all generators, by default: enough for any
#: ramp rate this box sustains (setups take milliseconds), few enough that a
#: saturated box answers them long before the 10 s reply time-out.
DEFAULT_TOTAL_PENDING = 1000
#: At most this fraction of the clients may drop for a run to pass.
MAX_DROPPED_FRACTION = 0.001
#: Per-process open-files budget kept free besides the client sockets.
FD_MARGIN = 100
#: Ports the kernel has for one (source address, destination) pair, roughly.
PORTS_PER_SOURCE = 28000
#: Clients per source address by default. connect() looks for a free port of
#: the (source, destination) pair among the even ports first (Linux keeps
#: the odd ones for bind()), about 14,000 of them; past that, every
#: connect scans them all in the kernel before trying an odd one: about 1 ms
#: of system time per connection, event-loop stalls of seconds in the load
#: generators, replies read too late (the ramp drops of the first 250,000
#: runs). Kept well below, a connect finds its port at once.
CLIENTS_PER_SOURCE = 5000
#: Above this many clients per source address, warn (the even ports run out).
EVEN_PORTS_PER_SOURCE = 14000

SUMMED = (
    "started",
    "connected",
    "ever_connected",
    "failed",
    "dropped",
    "gave_up",
    "recovered",
    "handshakes",
    "handshake_failures",
    "rehandshakes",
    "subscribes",
    "subscribe_failures",
    "connects_immediate",
    "cycles",
    "connect_failures",
    "early_returns",
    "multiple_clients",
    "server_disconnects",
    "messages",
    "requests",
    "responses",
    "tcp_opens",
    "tcp_errors",
    "timeouts",
    "closed_in_flight",
    "closed_idle",
    "server_close",
    "http_errors",
    "bad_responses",
    "bytes_sent",
    "bytes_received",
    "hot_clients",
    "hot_messages",
    "hot_out_of_order",
    "rss_bytes",
    "rss_start_bytes",
    "cpu_s",
    "hold_sum_s",
    "opening",
    "heartbeats",
    "timeouts_spared",
    "loop_lags",
    "tls_handshakes",
    "tls_errors",
)


# --------------------------------------------------------------------------- generators


class Generator(LineChild):
    """One bench/loadgen.py child: latest stats, tagged reports, stop."""

    def __init__(self, index: int, argv: list[str]) -> None:
        super().__init__(argv, f"loadgen {index}")
        self.index = index
        self.latest: dict[str, Any] = {}
        self.final: dict[str, Any] | None = None
        self.tagged: dict[str, asyncio.Future[dict[str, Any]]] = {}
        # The histograms of the values since the last take_recent() (the
        # lines' "hist"): what the scenario's next sample reports.
        self.recent: dict[str, Histogram] = {}

    def on_line(self, d: dict[str, Any]) -> None:
        if d.get("type") != "stats":
            return
        self.latest = d
        for name, value in (d.get("hist") or {}).items():
            self.recent[name] = fold(self.recent.get(name), decode_histogram(value))
        if d.get("final"):
            self.final = d
        tag = d.get("tag")
        if tag is not None:
            fut = self.tagged.get(tag)
            if fut is not None and not fut.done():
                fut.set_result(d)

    def take_recent(self) -> dict[str, Histogram]:
        out, self.recent = self.recent, {}
        return out

    async def report(self, tag: str, timeout: float) -> dict[str, Any]:
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.tagged[tag] = fut
        self.send(f"report {tag}")
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise RunError(f"loadgen {self.index} did not report within {timeout} s") from None


def take_recent(gens: Sequence[Generator]) -> dict[str, Histogram]:
    """The generators' histograms since the last call, merged by name."""
    out: dict[str, Histogram] = {}
    for g in gens:
        for name, h in g.take_recent().items():
            out[name] = fold(out.get(name), h)
    return out


def generator_command(args: Any, url: str, start: int, count: int, channel: str) -> list[str]:
    """What every scenario's generator command holds: clients ``start`` ..
    ``start + count - 1`` of N on ``channel``, their source addresses and
    transport, this generator's share of --ramp-rate, a stats line each 0.5 s."""
    return [
        sys.executable,
        *LOADGEN,
        "--url",
        url,
        "--clients",
        str(count),
        "--index-start",
        str(start),
        "--source-addrs",
        ",".join(source_addresses(args.source_addrs)),
        "--transport",
        args.transport,
        "--channel",
        channel,
        "--ramp-rate",
        f"{args.ramp_rate / args.procs:.3f}",
        "--report-interval",
        "0.5",
    ]


def loadgen_argv(
    args: Any,
    url: str,
    start: int,
    count: int,
    max_seconds: float,
    extra: list[str],
) -> list[str]:
    """The generator command of the scenarios that hold clients: the shared
    part, the scenario's own ``extra`` options, its bounds."""
    return [
        *generator_command(args, url, start, count, args.channel),
        *extra,
        "--max-pending",
        str(args.max_pending),
        "--max-attempts",
        str(args.max_attempts),
        "--max-seconds",
        f"{max_seconds:.0f}",
    ]


def check_running(
    server: ServerProcess | None, gens: list[Generator], redis: RedisServer | None = None
) -> None:
    """RunError as soon as the server, its redis or a load generator has died
    (what follows would measure a crash)."""
    if server is not None and not server.alive():
        raise RunError("server exited during the run:\n" + server.tail())
    if redis is not None and not redis.alive():
        raise RunError("redis-server exited during the run")
    for g in gens:
        if not g.alive():
            raise RunError(f"loadgen {g.index} exited early:\n" + "\n".join(g.stderr_tail[-10:]))


async def start_server(
    server: ServerProcess, startup_timeout: float, phases: dict[str, float], progress: bool
) -> str:
    """Start the server under test and wait for its URL; its start-up time
    goes into ``phases["startup_s"]``."""
    t = time.monotonic()
    url = await server.start(startup_timeout)
    phases["startup_s"] = round(time.monotonic() - t, 3)
    log(progress, f"server ready at {url} (pid {server.pid})")
    return url


async def wait_ramp(
    gens: list[Generator],
    n: int,
    t_ramp: float,
    timeout: float,
    check: Callable[[], None],
    progress: bool,
    show_dropped: bool = False,
) -> tuple[bool, float]:
    """Wait until each of the N clients has connected once or given up, at
    most ``timeout`` s after ``t_ramp`` (when the generators started), with a
    progress bar; (whether the ramp completed, its wall time in s)."""
    bar = ProgressBar("ramp", n, progress)
    ramp_deadline = t_ramp + timeout
    complete = False
    # bounded by ramp_deadline
    while time.monotonic() < ramp_deadline:
        await asyncio.sleep(0.25)
        check()
        agg = aggregate([g.latest for g in gens])
        text = f"{agg['connected']}/{n} connected, {agg['failed']} failed"
        if show_dropped:
            text += f", {agg['dropped']} dropped"
        bar.update(agg["connected"], text)
        progress_event("ramp", agg, [g.latest for g in gens])
        if agg["started"] >= n and agg["ever_connected"] + agg["gave_up"] >= n:
            complete = True
            break
    wall = time.monotonic() - t_ramp
    bar.close(f"{wall:.1f} s")
    return complete, wall


def aggregate(stats: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum the generators' counters; merge errors, advice, times, and under
    ``hists`` the whole-run histograms of the lines that carry them (tagged
    and final ones: ``hist_total``, engine/load/histogram.py)."""
    out: dict[str, Any] = {k: 0 for k in SUMMED}
    errors: dict[str, int] = {}
    hold_min: float | None = None
    hold_max = 0.0
    timeouts: list[int] = []
    first_start: list[float] = []
    last_connected: list[float] = []
    lag_max = 0.0
    tls_version: str | None = None
    tls_cipher: str | None = None
    for d in stats:
        if not d:
            continue
        tls_version = tls_version or d.get("tls_version")
        tls_cipher = tls_cipher or d.get("tls_cipher")
        lag_max = max(lag_max, d.get("loop_lag_max_ms") or 0.0)
        for k in SUMMED:
            v = d.get(k)
            if isinstance(v, int | float):
                out[k] += v
        for k, v in (d.get("errors") or {}).items():
            errors[k] = errors.get(k, 0) + v
        if d.get("hold_min_s") is not None:
            hold_min = d["hold_min_s"] if hold_min is None else min(hold_min, d["hold_min_s"])
        hold_max = max(hold_max, d.get("hold_max_s") or 0.0)
        if d.get("advice_timeout") is not None:
            timeouts.append(d["advice_timeout"])
        if d.get("first_start_at"):
            first_start.append(d["first_start_at"])
        if d.get("last_connected_at"):
            last_connected.append(d["last_connected_at"])
    out["errors"] = dict(sorted(errors.items(), key=lambda kv: -kv[1]))
    out["hold_min_s"] = hold_min
    out["hold_max_s"] = hold_max
    out["advice_timeout"] = max(timeouts) if timeouts else None
    out["first_start_at"] = min(first_start) if first_start else None
    out["last_connected_at"] = max(last_connected) if last_connected else None
    out["hists"] = merge_field(stats, "hist_total")
    out["loop_lag_max_ms"] = lag_max
    out["tls_version"] = tls_version
    out["tls_cipher"] = tls_cipher
    return out


# --------------------------------------------------------------------------- command line


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show defaults, except computed ones (None) that the help text explains."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="idle.py",
        description=(
            "Idle-clients scenario: ramp N Bayeux clients (long-polling or WebSocket), hold them "
            "for at least one connect timeout, report server RSS per client and CPU per "
            "heartbeat cycle, and write a JSON record; --peer faye does the same against Faye "
            "first and prints the ratios."
        ),
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--clients", type=int, default=5000, help="clients to hold (N)")
    p.add_argument(
        "--procs",
        type=int,
        default=None,
        help="load generator processes (default: one per CPU the server leaves over, "
        "more when the open-files limit needs them)",
    )
    p.add_argument(
        "--ramp-rate", type=float, default=1000.0, help="clients started per second, in total"
    )
    p.add_argument(
        "--hold",
        type=float,
        default=None,
        help="seconds to hold all clients, >= one connect timeout (default two timeouts + 5 s)",
    )
    add_server_args(p)
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="run the engine as W worker processes sharing the port (--workers W --broker "
        "redis://...) over a redis-server started here on a free loopback port (default: one "
        "process, no broker)",
    )
    p.add_argument(
        "--redis-server", default=None, help="with --workers: the redis-server binary (PATH)"
    )
    add_listen_args(p)
    add_source_addrs_arg(p)
    p.add_argument("--channel", default="/bench/idle", help="channel every client subscribes to")
    p.add_argument(
        "--channels",
        type=int,
        default=1,
        help="K > 1: client i subscribes to <--channel>/<i mod K> (a set of channels)",
    )
    p.add_argument(
        "--fanout-fraction",
        type=float,
        default=0.0,
        help="after the hold, F x N clients (spread evenly over the generators, subscribed to "
        "--hot-channel instead) receive --fanout-messages publishes: delivery latency and "
        "completeness (0: no fan-out phase)",
    )
    p.add_argument(
        "--fanout-messages", type=int, default=5, help="messages published in the fan-out phase"
    )
    p.add_argument("--fanout-rate", type=float, default=1.0, help="fan-out publishes per second")
    p.add_argument("--hot-channel", default="/bench/hot", help="the fan-out channel")
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=10.0,
        help="after the last publish was answered, wait at most this long for deliveries, s",
    )
    p.add_argument(
        "--transport",
        default="long-polling",
        choices=["long-polling", "websocket"],
        help="how every client talks to the server",
    )
    add_results_dir_arg(p)
    p.add_argument("--startup-timeout", type=float, default=30.0, help="server start bound, s")
    add_ramp_timeout_arg(p)
    p.add_argument("--settle", type=float, default=1.0, help="pause before the baseline RSS, s")
    p.add_argument(
        "--max-pending",
        type=int,
        default=None,
        help=f"clients setting up at once, per generator (default {DEFAULT_TOTAL_PENDING} over "
        "all generators, at least 20 each)",
    )
    p.add_argument("--max-attempts", type=int, default=5, help="client failures before giving up")
    p.add_argument(
        "--peer",
        choices=sorted(PEERS),
        default=None,
        help="first run the identical scenario against this peer server (installed into "
        "bench/peers/ with npm when missing), then against the engine; print both and the "
        "ratios, write one record with both",
    )
    p.add_argument(
        "--tls",
        action="store_true",
        help="serve over TLS: a trustme CA and certificate made in a temporary directory, "
        "--ssl-certfile/--ssl-keyfile appended to the server command, https:// (wss://) URLs "
        "and --ca-file for the generators",
    )
    p.add_argument(
        "--compare-tls",
        action="store_true",
        help="run the scenario plain, then over TLS (as --tls), in one command; print both "
        "and the ratios TLS/plain, write one record (idle-<transport>-<N>-tls-<timestamp>.json)",
    )
    p.add_argument(
        "--scrapes",
        type=int,
        default=0,
        help="time this many GET /metrics of the engine (its --metrics-port) with no client and "
        "again with every client held: a scrape's cost must not grow with the sessions",
    )
    p.add_argument("--check", action="store_true", help="exit 2 unless all connected, no drops")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--note", default="", help="free text stored in the record")
    return p


def resolve(args: argparse.Namespace) -> None:
    """Fill derived defaults and refuse impossible parameters."""
    n = args.clients
    if n <= 0:
        raise SystemExit("idle.py: --clients must be positive")
    if args.ramp_rate <= 0:
        raise SystemExit("idle.py: --ramp-rate must be positive")
    if args.timeout <= 0:
        raise SystemExit("idle.py: --timeout must be positive")
    resolve_generators("idle.py", args)
    if args.max_pending is None:
        args.max_pending = max(20, math.ceil(DEFAULT_TOTAL_PENDING / args.procs))
    if args.max_pending < 1:
        raise SystemExit("idle.py: --max-pending must be positive")
    if args.workers is not None:
        if args.workers < 1:
            raise SystemExit("idle.py: --workers must be >= 1")
        if args.url is not None or args.peer is not None:
            raise SystemExit("idle.py: --workers starts the engine itself (no --url, no --peer)")
    if args.channels < 1:
        raise SystemExit("idle.py: --channels must be >= 1")
    if args.channels > 1 and "{k}" not in args.channel:
        args.channel = args.channel.rstrip("/") + "/{k}"
    if not 0.0 <= args.fanout_fraction <= 1.0:
        raise SystemExit("idle.py: --fanout-fraction must be within [0, 1]")
    args.hot_clients = 0
    if args.fanout_fraction > 0:
        args.hot_clients = max(1, round(args.fanout_fraction * n))
        if args.fanout_messages <= 0 or args.fanout_rate <= 0:
            raise SystemExit("idle.py: --fanout-messages and --fanout-rate must be positive")
    timeout_s = args.timeout / 1000.0
    if args.hold is None:
        args.hold = 2 * timeout_s + 5.0
    if args.hold < timeout_s:
        raise SystemExit(
            f"idle.py: --hold {args.hold} s is shorter than one connect timeout ({timeout_s} s)"
        )
    check_loopback("idle.py", args)
    if args.tls or args.compare_tls:
        flag = "--compare-tls" if args.compare_tls else "--tls"
        if args.peer is not None:
            raise SystemExit(f"idle.py: {flag} serves the engine over TLS; it does not take --peer")
        if args.hot_clients:
            raise SystemExit(
                f"idle.py: {flag} does not take --fanout-fraction (the publisher speaks plain "
                "HTTP and WebSocket only)"
            )
        if args.url is not None:
            raise SystemExit(f"idle.py: {flag} starts the engine itself; it does not take --url")
        try:
            import trustme  # noqa: F401
        except ImportError:
            raise SystemExit(
                f"idle.py: {flag} needs trustme (pip install trustme, or the test extras)"
            ) from None


def make_tls_files(directory: Path) -> tuple[Path, Path, str]:
    """A throw-away CA and a certificate for 127.0.0.1 and localhost (trustme):
    (the server's key + certificate chain PEM, the CA's PEM, the key type)."""
    import trustme

    key_type = trustme.KeyType.ECDSA  # trustme's default, named for the record
    ca = trustme.CA(key_type=key_type)
    cert = ca.issue_cert("127.0.0.1", "localhost", key_type=key_type)
    server_pem = directory / "server.pem"
    ca_pem = directory / "ca.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(server_pem))
    ca.cert_pem.write_to_path(str(ca_pem))
    return server_pem, ca_pem, f"{key_type.name} (trustme {importlib.metadata.version('trustme')})"


def tls_url(url: str, transport: str) -> str:
    """The server's https:// URL as the generators take it: wss:// for WebSocket."""
    if transport == "websocket" and url.startswith("https://"):
        return "wss://" + url[len("https://") :]
    return url


def add_source_addrs_arg(p: argparse.ArgumentParser) -> None:
    """--source-addrs, whose default follows CLIENTS_PER_SOURCE (see resolve_source_addrs)."""
    p.add_argument(
        "--source-addrs",
        type=int,
        default=None,
        help="how many source addresses 127.0.0.1, 127.0.0.2, ... (default "
        f"ceil(N/{CLIENTS_PER_SOURCE}))",
    )


def add_ramp_timeout_arg(p: argparse.ArgumentParser) -> None:
    """--ramp-timeout, whose default resolve_generators computes from N and --ramp-rate."""
    p.add_argument(
        "--ramp-timeout",
        type=float,
        default=None,
        help="ramp bound, s (default 2 * N / ramp-rate + 30)",
    )


def resolve_generators(script: str, args: argparse.Namespace) -> None:
    """The load generators' share of the N clients: --procs, --source-addrs,
    --ramp-timeout; refuse more clients per generator than the open-files limit
    allows.

    --procs defaults to the CPUs the server leaves over (one per CPU beyond
    the server's processes, at least one), or more when the open-files limit
    needs them. More generators than spare CPUs gain nothing and take CPU from
    the server in bursts: on 2 CPUs, two generators for 19,000 long-polling
    clients made the fan-out's p99 latency half as large again."""
    import resource

    n = args.clients
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if args.procs is None:
        servers = getattr(args, "workers", None) or 1
        spare = max(1, (os.cpu_count() or 2) - servers)
        args.procs = max(spare, math.ceil(n / max(1, hard - FD_MARGIN)))
    args.procs = max(1, min(args.procs, n))
    args.source_addrs = resolve_source_addrs(script, n, args.source_addrs)
    per_proc = math.ceil(n / args.procs)
    if per_proc + FD_MARGIN > hard:
        raise SystemExit(
            f"{script}: {per_proc} clients per generator exceed the open-files limit {hard}; "
            f"use --procs {math.ceil(n / (hard - FD_MARGIN))} or more"
        )
    if args.ramp_timeout is None:
        args.ramp_timeout = 2.0 * n / args.ramp_rate + 30.0


def resolve_source_addrs(script: str, n: int, requested: int | None) -> int:
    """How many source addresses N clients use (CLIENTS_PER_SOURCE each by default)."""
    count = requested
    if count is None:
        count = min(254, max(1, math.ceil(n / CLIENTS_PER_SOURCE)))
    if not 1 <= count <= 254:
        raise SystemExit(f"{script}: --source-addrs must be in 1..254")
    if n / count > PORTS_PER_SOURCE:
        raise SystemExit(
            f"{script}: {n} clients over {count} source address(es) exceed "
            f"~{PORTS_PER_SOURCE} ports per address; raise --source-addrs"
        )
    if n / count > EVEN_PORTS_PER_SOURCE:
        sys.stderr.write(
            f"{script}: warning: {math.ceil(n / count)} clients per source address: "
            f"past ~{EVEN_PORTS_PER_SOURCE} every connect() scans the even ports in the kernel "
            "(slow ramp, stalled generators); raise --source-addrs\n"
        )
    return count


# --------------------------------------------------------------------------- fan-out


class PublisherChild(LineChild):
    """The bench/publisher.py child of a fan-out: the first line of each type
    it prints (``ready``, ``done``, ``final``, ``error``), ``go`` and ``stop``
    on its stdin."""

    def __init__(
        self,
        *,
        url: str,
        transport: str,
        channel: str,
        messages: int,
        rate: float,
        ack_timeout: float,
        max_seconds: float,
        extra: Sequence[str] = (),
    ) -> None:
        super().__init__(
            [
                sys.executable,
                *PUBLISHER,
                "--url",
                url,
                "--transport",
                transport,
                "--channel",
                channel,
                "--messages",
                str(messages),
                "--rate",
                str(rate),
                *extra,
                "--ack-timeout",
                str(ack_timeout),
                "--max-seconds",
                f"{max_seconds:.0f}",
            ],
            "publisher",
        )
        self.lines: dict[str, dict[str, Any]] = {}

    def on_line(self, d: dict[str, Any]) -> None:
        if isinstance(d.get("type"), str):
            self.lines.setdefault(d["type"], d)

    async def wait_for(self, kind: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        # bounded by the deadline
        while kind not in self.lines:
            if "error" in self.lines:
                raise RunError(f"publisher failed: {self.lines['error'].get('error')}")
            if not self.alive() or time.monotonic() > deadline:
                raise RunError(
                    f"publisher sent no '{kind}' within {timeout:.0f} s\n"
                    + "\n".join(self.stderr_tail[-10:])
                )
            await asyncio.sleep(0.05)
        return self.lines[kind]


# --------------------------------------------------------------------------- run


async def run(args: argparse.Namespace, guard: ChildGuard) -> dict[str, Any]:
    n = args.clients
    progress = not args.no_progress
    server: ServerProcess | None = None
    server_pid: int | None = args.server_pid
    server_argv: list[str] | None = None
    redis: RedisServer | None = None
    gens: list[Generator] = []
    pub: PublisherChild | None = None
    phases: dict[str, float] = {}
    samples: list[dict[str, Any]] = []
    t_start = time.monotonic()
    workdir = tempfile.TemporaryDirectory(prefix="bench-idle-")
    tls: dict[str, Any] | None = None
    ca_file: Path | None = None
    metrics_url: str | None = None
    scrapes: dict[str, Any] = {}

    def server_check() -> None:
        check_running(server, gens, redis)

    def rss() -> int | None:
        return tree_rss_bytes(server_pid) if server_pid else None

    def cpu() -> float | None:
        return tree_cpu_seconds(server_pid) if server_pid else None

    def redis_rss() -> int | None:
        return redis.rss() if redis is not None else None

    def redis_cpu() -> float | None:
        return redis.cpu() if redis is not None else None

    try:
        # 1. server (and its broker) -----------------------------------------------
        if args.url is None:
            template = args.server_cmd
            if args.workers is not None:
                redis = start_redis(Path(workdir.name), guard, binary=args.redis_server)
                log(progress, f"redis-server ready at {redis.url} (pid {redis.pid})")
                template += f" --workers {args.workers} --broker {redis.url}"
            if args.scrapes:
                metrics_url = f"http://{args.host}:{free_port(args.host)}/metrics"
                template += f" --metrics-port {metrics_url.rsplit(':', 1)[1].split('/')[0]}"
            if args.tls:
                cert_file, ca_file, key_type = make_tls_files(Path(workdir.name))
                template += f" --ssl-certfile {cert_file} --ssl-keyfile {cert_file}"
                tls = {"certificate": "trustme", "key_type": key_type}
            port = args.port or free_port(args.host)
            server = ServerProcess.for_args(
                template,
                args,
                port,
                guard,
                # a multi-worker engine: the supervisor's line, once every worker listens
                ready_marker="engine serving " if args.workers is not None else None,
            )
            server_argv = server.argv
            url = await start_server(server, args.startup_timeout, phases, progress)
            server_pid = server.pid
            if args.tls and not url.startswith("https://"):
                raise RunError(f"--tls: the server printed {url}, not an https:// URL")
        else:
            url = args.url
        gen_url = tls_url(url, args.transport) if args.tls else url

        # 2. baseline ------------------------------------------------------------
        await asyncio.sleep(args.settle)
        if server is not None:
            server_check()
        rss_baseline = rss()
        pss_baseline = tree_pss_bytes(server_pid) if server_pid else None
        redis_rss_baseline = redis_rss()
        cpu_baseline = cpu()
        server_procs = len(process_tree(server_pid)) if server_pid else None
        if metrics_url is not None:
            scrapes["idle_server"] = await time_scrapes(metrics_url, args.scrapes, cpu)

        # 3. ramp ----------------------------------------------------------------
        fanout_bound = (
            args.fanout_messages / args.fanout_rate + args.drain_timeout + 90.0
            if args.hot_clients
            else 0.0
        )
        max_seconds = args.ramp_timeout + args.hold + fanout_bound + 120.0
        for i, (start, count) in enumerate(split_clients(n, args.procs)):
            extra = ["--channel-count", str(args.channels)]
            if ca_file is not None:
                extra += ["--ca-file", str(ca_file)]
            if args.hot_clients:
                extra += [
                    "--hot-channel",
                    args.hot_channel,
                    "--hot-clients",
                    str(args.hot_clients),
                    "--total-clients",
                    str(n),
                ]
            g = Generator(i, loadgen_argv(args, gen_url, start, count, max_seconds, extra))
            await g.start(guard)
            gens.append(g)
        t_ramp = time.monotonic()
        cpu_ramp_start = cpu()
        ramp_complete, ramp_wall = await wait_ramp(
            gens, n, t_ramp, args.ramp_timeout, server_check, progress, show_dropped=True
        )
        phases["ramp_s"] = round(ramp_wall, 3)
        if not ramp_complete:
            log(progress, f"ramp did not finish within {args.ramp_timeout:.0f} s; holding anyway")
        ramp_stats = aggregate([g.latest for g in gens])
        cpu_ramp_end = cpu()
        ramp_cpu = {
            "wall_s": round(ramp_wall, 3),
            "server_s": (
                None
                if cpu_ramp_start is None or cpu_ramp_end is None
                else round(cpu_ramp_end - cpu_ramp_start, 3)
            ),
            # generators' CPU since they started (their ~0.1 s start-up included)
            "loadgen_s": round(ramp_stats["cpu_s"], 3),
        }

        # 4. hold ----------------------------------------------------------------
        start_reports = await asyncio.gather(*(g.report("hold-start", 10.0) for g in gens))
        cpu_hold_start = cpu()
        redis_cpu_start = redis_cpu()
        machine_hold_start = machine_cpu_seconds()
        t_hold = time.monotonic()
        hold_start = aggregate(list(start_reports))
        rss_peak = rss()
        bar = ProgressBar("hold", args.hold, progress)
        hold_end_at = t_hold + args.hold
        next_sample = t_hold
        take_recent(gens)  # the samples start with the hold
        # bounded by hold_end_at
        while (now := time.monotonic()) < hold_end_at:
            await asyncio.sleep(min(0.5, max(0.0, hold_end_at - now)))
            server_check()
            agg = aggregate([g.latest for g in gens])
            if time.monotonic() >= next_sample:
                next_sample += 1.0
                r = rss()
                if r is not None and (rss_peak is None or r > rss_peak):
                    rss_peak = r
                samples.append(
                    {
                        "t": round(time.monotonic() - t_hold, 2),
                        "connected": agg["connected"],
                        "cycles": agg["cycles"] - hold_start["cycles"],
                        "rss": r,
                        "cpu": cpu(),
                        "loadgen_cpu": agg["cpu_s"],
                        # heartbeats answered since the previous sample
                        "lateness_ms": current(take_recent(gens), "lateness"),
                    }
                )
            progress_event("hold", agg, [g.latest for g in gens])
            bar.update(
                time.monotonic() - t_hold,
                f"{agg['connected']} connected, {agg['dropped'] - hold_start['dropped']} dropped, "
                f"{agg['cycles'] - hold_start['cycles']} cycles",
            )
        end_reports = await asyncio.gather(*(g.report("hold-end", 10.0) for g in gens))
        hold_s = time.monotonic() - t_hold
        cpu_hold_end = cpu()
        redis_cpu_end = redis_cpu()
        machine_hold_end = machine_cpu_seconds()
        rss_loaded = rss()
        pss_loaded = tree_pss_bytes(server_pid) if server_pid else None
        redis_rss_loaded = redis_rss()
        if rss_loaded is not None and (rss_peak is None or rss_loaded > rss_peak):
            rss_peak = rss_loaded
        hold_end = aggregate(list(end_reports))
        bar.close(f"{hold_s:.1f} s")
        phases["hold_s"] = round(hold_s, 3)

        if metrics_url is not None:
            scrapes["clients_held"] = await time_scrapes(metrics_url, args.scrapes, cpu)
            scrapes["sessions_seen"] = scrapes["clients_held"].pop("sessions")
            scrapes["idle_server"].pop("sessions", None)

        # 5. fan-out -------------------------------------------------------------
        fan: dict[str, Any] | None = None
        if args.hot_clients:
            fan = await fanout_phase(args, url, gens, guard, server_check, progress)
            pub = fan.pop("_publisher")
            phases["fanout_s"] = fan["wall_s"]

        # 6. stop ----------------------------------------------------------------
        if pub is not None:
            await pub.stop(10.0)
            final_pub = pub.lines.get("final")
            if fan is not None and final_pub is not None:
                fan["publisher_final"] = final_pub
        await asyncio.gather(*(g.stop(15.0) for g in gens))
        final_lines = [g.final or g.latest for g in gens]
        final = aggregate(final_lines)
        server_exit = await stop_server(server)
        server_problems: dict[str, Any] | None = None
        if server is not None:
            server_problems = {"count": server.problems, "first": server.problem_lines}
        if redis is not None:
            redis.stop()
        phases["total_s"] = round(time.monotonic() - t_start, 3)
        if tls is not None:
            tls["version"] = final.get("tls_version")
            tls["cipher"] = final.get("tls_cipher")
            tls["handshakes"] = final.get("tls_handshakes")
            tls["errors"] = final.get("tls_errors")
        if fan is not None:
            # In the client's socket (stamped.py), over TLS when read.
            fan["latency_at"] = next(
                (d["latency_at"] for d in final_lines if d.get("latency_at")), "arrival"
            )
            fan["latency_ms"] = summary_with_hist(final["hists"].get("fanout"))
            fan["read_latency_ms"] = summary_with_hist(final["hists"].get("fanout_read"))

        return compute(
            args=args,
            url=url,
            server_argv=server_argv,
            server_pid=server_pid,
            server_exit=server_exit,
            rss_baseline=rss_baseline,
            rss_loaded=rss_loaded,
            rss_peak=rss_peak,
            cpu_baseline=cpu_baseline,
            cpu_hold=(
                None
                if cpu_hold_start is None or cpu_hold_end is None
                else cpu_hold_end - cpu_hold_start
            ),
            hold_s=hold_s,
            machine_hold=(
                None
                if machine_hold_start is None or machine_hold_end is None
                else (
                    machine_hold_end[0] - machine_hold_start[0],
                    machine_hold_end[1] - machine_hold_start[1],
                )
            ),
            ramp_complete=ramp_complete,
            ramp_stats=ramp_stats,
            ramp_cpu=ramp_cpu,
            hold_start=hold_start,
            hold_end=hold_end,
            final=final,
            phases=phases,
            samples=samples,
            cluster={
                "workers": args.workers,
                "server_processes": server_procs,
                "redis_pid": redis.pid if redis is not None else None,
                "redis_rss_baseline_bytes": redis_rss_baseline,
                "redis_rss_loaded_bytes": redis_rss_loaded,
                "redis_cpu_hold_s": (
                    None
                    if redis_cpu_start is None or redis_cpu_end is None
                    else round(redis_cpu_end - redis_cpu_start, 3)
                ),
                "pss_baseline_bytes": pss_baseline,
                "pss_loaded_bytes": pss_loaded,
                "server_log_problems": server_problems,
            },
            fanout=fan,
            tls=tls,
            scrapes=scrapes or None,
        )
    finally:
        await stop_quietly([pub, *gens], server)
        if redis is not None:
            redis.stop()
        workdir.cleanup()


async def fanout_phase(
    args: argparse.Namespace,
    url: str,
    gens: list[Generator],
    guard: ChildGuard,
    check: Any,
    progress: bool,
) -> dict[str, Any]:
    """Publish M timestamped messages to the hot channel at R/s from a
    separate publisher (bench/publisher.py); wait until every hot client got
    every message, or --drain-timeout after the publisher is done."""
    m, rate = args.fanout_messages, args.fanout_rate
    pub = PublisherChild(
        url=url,
        transport=args.transport,
        channel=args.hot_channel,
        messages=m,
        rate=rate,
        ack_timeout=args.drain_timeout,
        max_seconds=m / rate + args.drain_timeout + 90,
    )
    out: dict[str, Any] = {"_publisher": pub}
    await pub.start(guard)
    await pub.wait_for("ready", 30.0)
    before = aggregate(list(await asyncio.gather(*(g.report("fan-start", 10.0) for g in gens))))
    hot = before["hot_clients"]
    expected = hot * m
    t_go = time.monotonic()
    pub.send("go")
    bar = ProgressBar("fanout", expected, progress)
    hard_end = t_go + m / rate + args.drain_timeout + 60.0
    done_at: float | None = None
    delivered = 0
    # bounded by hard_end, and by --drain-timeout after the publisher's 'done'
    while time.monotonic() < hard_end:
        await asyncio.sleep(0.1)
        check()
        agg = aggregate([g.latest for g in gens])
        delivered = agg["hot_messages"] - before["hot_messages"]
        bar.update(delivered, f"{delivered:,}/{expected:,} delivered")
        progress_event("fanout", agg, [g.latest for g in gens])
        if done_at is None and "done" in pub.lines:
            done_at = time.monotonic()
            # the publishes made: expected from what the server accepted
            expected = hot * pub.lines["done"].get("acked", m)
        if done_at is not None and (
            delivered >= expected or time.monotonic() - done_at > args.drain_timeout
        ):
            break
    after = aggregate(list(await asyncio.gather(*(g.report("fan-end", 10.0) for g in gens))))
    wall = time.monotonic() - t_go
    bar.close(f"{wall:.1f} s")
    delivered = after["hot_messages"] - before["hot_messages"]
    done = pub.lines.get("done") or {}
    published = done.get("published", 0)
    out.update(
        {
            "fraction": args.fanout_fraction,
            "hot_clients": hot,
            "messages": m,
            "rate": rate,
            "published": published,
            "acked": done.get("acked", 0),
            "publish_failed": done.get("failed", 0),
            "expected": hot * m,
            "delivered": delivered,
            "missing": max(0, hot * m - delivered),
            "out_of_order": after["hot_out_of_order"] - before["hot_out_of_order"],
            "complete": bool(hot) and done.get("acked") == m and delivered >= hot * m,
            "wall_s": round(wall, 3),
            "publisher": done,
        }
    )
    return out


async def time_scrapes(url: str, count: int, cpu: Callable[[], float | None]) -> dict[str, Any]:
    """Scrape `count` times in a row: the wall time of each, and the server's
    CPU per scrape less what it spends meanwhile anyway (its heartbeats), as
    measured over a quiet second just before."""

    def get() -> bytes:
        with urllib.request.urlopen(url, timeout=30) as resp:
            body: bytes = resp.read()
            return body

    quiet_start, t_quiet = cpu(), time.perf_counter()
    await asyncio.sleep(1.0)
    quiet_end, quiet_wall = cpu(), time.perf_counter() - t_quiet
    walls: list[float] = []
    body = b""
    t0 = time.perf_counter()
    for _ in range(count):
        t = time.perf_counter()
        body = await asyncio.to_thread(get)
        walls.append((time.perf_counter() - t) * 1000)
    wall = time.perf_counter() - t0
    after = cpu()
    sessions = None
    for line in body.decode().splitlines():
        if line.startswith("bayeux_sessions{"):
            sessions = float(line.rsplit(" ", 1)[1])
    walls.sort()
    each = None
    if None not in (quiet_start, quiet_end, after):
        assert quiet_start is not None and quiet_end is not None and after is not None
        background = (quiet_end - quiet_start) / quiet_wall * wall
        each = round(max(0.0, after - quiet_end - background) * 1000 / count, 3)
    return {
        "count": count,
        "bytes": len(body),
        "wall_ms_p50": round(walls[len(walls) // 2], 3),
        "wall_ms_max": round(walls[-1], 3),
        "server_cpu_ms_each": each,
        "sessions": sessions,
    }


def compute(
    *,
    args: argparse.Namespace,
    url: str,
    server_argv: list[str] | None,
    server_pid: int | None,
    server_exit: int | None,
    rss_baseline: int | None,
    rss_loaded: int | None,
    rss_peak: int | None,
    cpu_baseline: float | None,
    cpu_hold: float | None,
    hold_s: float,
    machine_hold: tuple[float, float] | None,
    ramp_complete: bool,
    ramp_stats: dict[str, Any],
    ramp_cpu: dict[str, Any],
    hold_start: dict[str, Any],
    hold_end: dict[str, Any],
    final: dict[str, Any],
    phases: dict[str, float],
    samples: list[dict[str, Any]],
    cluster: dict[str, Any] | None = None,
    fanout: dict[str, Any] | None = None,
    tls: dict[str, Any] | None = None,
    scrapes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    n = args.clients
    connected = hold_end["connected"]
    advised = hold_end["advice_timeout"]
    timeout_ms = advised if advised else args.timeout
    timeout_s = timeout_ms / 1000.0
    cycles = hold_end["cycles"] - hold_start["cycles"]
    timeout_cycles = hold_s / timeout_s
    ramp_rate = None
    if final["first_start_at"] and final["last_connected_at"] and final["ever_connected"]:
        span = final["last_connected_at"] - final["first_start_at"]
        if span > 0:
            ramp_rate = final["ever_connected"] / span
    bytes_per_client = None
    if rss_baseline is not None and rss_loaded is not None and connected > 0:
        bytes_per_client = (rss_loaded - rss_baseline) / connected
    cpu_per_cycle = cpu_hold / timeout_cycles if cpu_hold is not None else None
    lg_cpu_hold = hold_end["cpu_s"] - hold_start["cpu_s"]
    # CPU the machine spent outside the server and the generators during the
    # hold: other load on the box, which the figures above do not account for.
    other_cpu = None
    if machine_hold is not None and cpu_hold is not None:
        other_cpu = max(0.0, machine_hold[0] - cpu_hold - lg_cpu_hold)
    # Held connects last about one timeout; over a hold of a few timeouts the
    # count is quantised (each client completes 1 or 2 in a 1.5-timeout hold),
    # so the steady-state rate connected / mean hold is reported beside it.
    mean_held = hold_end["hold_sum_s"] / hold_end["cycles"] if hold_end["cycles"] else None
    results: dict[str, Any] = {
        "clients_requested": n,
        "connected": connected,
        "ever_connected": final["ever_connected"],
        "failed": final["failed"],
        "dropped": final["dropped"],
        "dropped_during_hold": hold_end["dropped"] - hold_start["dropped"],
        "gave_up": final["gave_up"],
        "ramp_complete": ramp_complete,
        "ramp_seconds": phases.get("ramp_s"),
        "ramp_rate_requested": args.ramp_rate,
        "ramp_rate_achieved": None if ramp_rate is None else round(ramp_rate, 1),
        "ramp_cpu_s": ramp_cpu,
        "connected_after_ramp": ramp_stats["connected"],
        "setup_latency_ms": {
            **summary_with_hist(final["hists"].get("setup")),
            "note": "time from a client's start to its first successful connect",
        },
        "server_timeout_ms": timeout_ms,
        "hold_seconds": round(hold_s, 3),
        "timeout_cycles": round(timeout_cycles, 3),
        "rss_baseline_bytes": rss_baseline,
        "rss_loaded_bytes": rss_loaded,
        "rss_peak_bytes": rss_peak,
        "bytes_per_client": None if bytes_per_client is None else round(bytes_per_client, 1),
        "server_cpu_baseline_s": cpu_baseline,
        "server_cpu_hold_s": None if cpu_hold is None else round(cpu_hold, 3),
        "server_cpu_percent_hold": None if cpu_hold is None else round(100 * cpu_hold / hold_s, 2),
        "server_cpu_per_cycle_s": None if cpu_per_cycle is None else round(cpu_per_cycle, 4),
        "server_cpu_per_connect_us": (
            None if cpu_hold is None or not cycles else round(1e6 * cpu_hold / cycles, 1)
        ),
        "connect_cycles": cycles,
        "connect_cycles_per_s": round(cycles / hold_s, 2),
        "steady_cycles_per_s": round(connected / (mean_held or timeout_s), 2),
        "held_connect_s": {
            "min": hold_end["hold_min_s"],
            "max": hold_end["hold_max_s"] if hold_end["cycles"] else None,
            "mean": None if mean_held is None else round(mean_held, 3),
        },
        "early_returns": final["early_returns"],
        "multiple_clients_replies": final["multiple_clients"],
        "rehandshakes": final["rehandshakes"],
        "messages_received": final["messages"],
        "errors": final["errors"],
        "counters": {k: final[k] for k in final if k not in ("errors", "hists")},
        "loadgen": {
            "procs": args.procs,
            "rss_bytes": hold_end["rss_bytes"],
            "rss_start_bytes": hold_end["rss_start_bytes"],
            "rss_per_client_bytes": (
                round((hold_end["rss_bytes"] - hold_end["rss_start_bytes"]) / connected, 1)
                if connected
                else None
            ),
            "cpu_hold_s": round(lg_cpu_hold, 3),
            "cpu_percent_hold": round(100 * lg_cpu_hold / hold_s, 2),
        },
        "machine_busy_percent_hold": (
            None
            if machine_hold is None or not machine_hold[1]
            else round(100 * machine_hold[0] / machine_hold[1], 1)
        ),
        "other_cpu_percent_hold": None if other_cpu is None else round(100 * other_cpu / hold_s, 1),
        "server_pid": server_pid,
        "server_exit_code": server_exit,
        "phases": phases,
        "samples": samples,
    }
    # Heartbeats: held connects answered successfully without events,
    # lateness = reply - send - advised timeout (negative: answered early, as
    # the server does on purpose by up to its --timeout-jitter).
    # The hold's histogram: the whole-run ones at its end minus those at its start.
    late_hold = minus(hold_end["hists"].get("lateness"), hold_start["hists"].get("lateness"))
    cpu_count = os.cpu_count() or 1
    results["heartbeat_lateness_ms"] = {
        "hold": summary_with_hist(late_hold, signed=True),
        "run": summary_with_hist(final["hists"].get("lateness"), signed=True),
        "note": "held connect answered successfully without events: reply - send - advised "
        "timeout, ms (HdrHistogram, 3 significant digits; 'hist' its encoded form, 'early' "
        "the negative ones); 'run' covers the ramp too",
    }
    results["dropped_during_ramp"] = hold_start["dropped"]
    results["dropped_fraction"] = round(final["dropped"] / n, 6)
    results["failed_fraction"] = round(final["failed"] / n, 6)
    results["cycles_per_client_hold"] = round(cycles / connected, 2) if connected else None
    results["server_cpu_machine_share_hold"] = (
        None if cpu_hold is None else round(cpu_hold / hold_s / cpu_count, 4)
    )
    results["loadgen"]["loop_lag_max_ms"] = final["loop_lag_max_ms"]
    results["loadgen"]["loop_lags_over_100ms"] = final["loop_lags"]
    results["loadgen"]["timeouts_spared"] = final["timeouts_spared"]
    results["loadgen"]["cpu_ramp_per_client_us"] = (
        round(1e6 * ramp_cpu["loadgen_s"] / final["ever_connected"], 1)
        if final["ever_connected"]
        else None
    )
    if cluster is not None:
        results["cluster"] = cluster
        for key in ("redis_rss_baseline_bytes", "redis_rss_loaded_bytes", "pss_loaded_bytes"):
            results[key] = cluster.get(key)
        pss0, pss1 = cluster.get("pss_baseline_bytes"), cluster.get("pss_loaded_bytes")
        results["pss_bytes_per_client"] = (
            round((pss1 - pss0) / connected, 1)
            if pss0 is not None and pss1 is not None and connected
            else None
        )
    if fanout is not None:
        results["fanout"] = fanout
    if tls is not None:
        results["tls"] = tls
    if scrapes is not None:
        results["scrapes"] = scrapes
    results["held_cleanly"] = bool(
        connected >= n * (1 - MAX_DROPPED_FRACTION)
        and final["dropped"] <= n * MAX_DROPPED_FRACTION
        and timeout_cycles >= 2.0
        and (fanout is None or fanout.get("complete"))
    )
    parameters = {
        "clients": n,
        "procs": args.procs,
        "ramp_rate": args.ramp_rate,
        "hold": args.hold,
        "timeout_ms": args.timeout,
        "source_addrs": args.source_addrs,
        "channel": args.channel,
        "transport": args.transport,
        "url": url,
        "server_cmd": None if server_argv is None else shell_join(server_argv),
        "server_pid": server_pid if args.url else None,
        "max_pending": args.max_pending,
        "max_attempts": args.max_attempts,
        "note": args.note,
    }
    # Only when used: a plain run keeps the configuration key of older records.
    if args.workers is not None:
        parameters["workers"] = args.workers
    if args.channels > 1:
        parameters["channels"] = args.channels
    if args.hot_clients:
        parameters["fanout_fraction"] = args.fanout_fraction
        parameters["fanout_messages"] = args.fanout_messages
        parameters["fanout_rate"] = args.fanout_rate
        parameters["hot_clients"] = args.hot_clients
        parameters["hot_channel"] = args.hot_channel
    if args.tls:
        parameters["tls"] = True
    if args.scrapes:
        parameters["scrapes"] = args.scrapes
    if getattr(args, "compare_tls", False):
        parameters["compare_tls"] = True
    return {"parameters": parameters, "results": results}


def report_table(record: dict[str, Any]) -> str:
    r = record["results"]
    p = record["parameters"]

    def ms(v: Any) -> str:
        return na(v, "{:,.0f}")

    lg = r["loadgen"]
    lat = r["setup_latency_ms"]
    held = r["held_connect_s"]
    rate = na(r["ramp_rate_achieved"], "{:,.0f}")
    cpu_hold = na(r["server_cpu_hold_s"], "{:.2f}")
    cpu_pct = na(r["server_cpu_percent_hold"], "{:.1f}")
    share = r.get("server_cpu_machine_share_hold")
    n = r["clients_requested"]
    workers = p.get("workers")
    tls = r.get("tls")
    rows = [
        ("transport", p["transport"] + (" over TLS" if p.get("tls") else "")),
        (
            "server",
            f"{workers} worker{'s' if workers != 1 else ''} + redis" if workers else "one process",
        ),
        ("clients requested", na(n)),
        ("connected (end of hold)", na(r["connected"])),
        ("failed", na(r["failed"])),
        (
            "dropped (whole run / ramp / hold)",
            f"{r['dropped']:,} ({100 * r['dropped'] / n:.3f} %) / "
            f"{r.get('dropped_during_ramp', 0):,} / {r['dropped_during_hold']:,}",
        ),
        ("gave up", na(r["gave_up"])),
    ]
    if tls:
        rows.append(
            (
                "TLS (key, version, cipher)",
                f"{tls.get('key_type')}, {tls.get('version')}, {tls.get('cipher')}",
            )
        )
    rows += [
        ("ramp rate requested / achieved", f"{p['ramp_rate']:,.0f} / {rate} clients/s"),
        (
            "ramp CPU server / loadgen",
            f"{na(r['ramp_cpu_s']['server_s'], '{:.1f}')} / "
            f"{r['ramp_cpu_s']['loadgen_s']:.1f} s in {r['ramp_cpu_s']['wall_s']:.1f} s",
        ),
        (
            "setup latency p50 / p99",
            f"{na(lat['p50'], '{:.1f}')} / {na(lat['p99'], '{:.1f}')} ms",
        ),
        ("server timeout", f"{r['server_timeout_ms']} ms"),
        ("hold", f"{r['hold_seconds']:.1f} s = {r['timeout_cycles']:.2f} timeout cycles"),
        ("server RSS baseline", human_bytes(r["rss_baseline_bytes"])),
        ("server RSS loaded", human_bytes(r["rss_loaded_bytes"])),
        ("bytes per idle client", na(r["bytes_per_client"], "{:,.0f}")),
    ]
    if r.get("pss_loaded_bytes") is not None:
        rows.append(
            (
                "server PSS loaded / per client",
                f"{human_bytes(r['pss_loaded_bytes'])} / "
                f"{na(r.get('pss_bytes_per_client'), '{:,.0f}')} B",
            )
        )
    if r.get("redis_rss_loaded_bytes") is not None:
        rows.append(
            (
                "redis RSS baseline / loaded",
                f"{human_bytes(r.get('redis_rss_baseline_bytes'))} / "
                f"{human_bytes(r['redis_rss_loaded_bytes'])}",
            )
        )
    rows += [
        (
            "server CPU during hold",
            f"{cpu_hold} s ({cpu_pct} % of a core"
            + (f", {100 * share:.1f} % of the machine)" if share is not None else ")"),
        ),
        ("server CPU per heartbeat cycle", f"{na(r['server_cpu_per_cycle_s'], '{:.3f}')} s"),
        ("server CPU per connect", f"{na(r['server_cpu_per_connect_us'], '{:.0f}')} us"),
        (
            "connect cycles / s (steady state)",
            f"{r['connect_cycles_per_s']:,.1f} ({r['steady_cycles_per_s']:,.1f})",
        ),
        (
            "held connect min / mean / max",
            " / ".join(na(held[k], "{:.2f}") for k in ("min", "mean", "max")) + " s",
        ),
    ]
    late = (r.get("heartbeat_lateness_ms") or {}).get("hold")
    if late:
        top = late.get("max", late.get("max_bucket"))  # (records before HdrHistogram)
        rows.append(
            (
                "heartbeat lateness p50 / p99 / max",
                f"{ms(late['p50'])} / {ms(late['p99'])} / {ms(top)} ms ({late['count']:,})",
            )
        )
    rows += [
        (
            "early returns / multiple-clients",
            f"{r['early_returns']:,} / {r['multiple_clients_replies']:,}",
        ),
        (
            "loadgen RSS per client / CPU",
            f"{human_bytes(lg['rss_per_client_bytes'])} / {lg['cpu_percent_hold']:.1f} % CPU",
        ),
    ]
    if lg.get("loop_lag_max_ms") is not None:
        rows.append(
            (
                "loadgen loop lag max / ramp CPU per client",
                f"{lg['loop_lag_max_ms']:,.0f} ms / "
                f"{na(lg.get('cpu_ramp_per_client_us'), '{:,.0f}')} us",
            )
        )
    rows.append(
        (
            "other processes' CPU during hold",
            f"{na(r.get('other_cpu_percent_hold'), '{:.0f}')} % of one core",
        )
    )
    fan = r.get("fanout")
    if fan:
        fl = fan.get("latency_ms") or {}
        rows += [
            (
                "fan-out: hot clients x messages",
                f"{fan['hot_clients']:,} ({100 * fan['fraction']:g} %) x {fan['messages']}",
            ),
            ("fan-out delivered / expected", f"{fan['delivered']:,} / {fan['expected']:,}"),
            ("fan-out complete", "yes" if fan["complete"] else "NO"),
            (
                "fan-out latency p50 / p99 / max",
                " / ".join(na(fl.get(k), "{:,.1f}") for k in ("p50", "p99", "max")) + " ms",
            ),
        ]
    sc = r.get("scrapes")
    if sc:
        for key, what in (("idle_server", "no client"), ("clients_held", "clients held")):
            t = sc[key]
            rows.append(
                (
                    f"GET /metrics, {what}: wall p50 / max, server CPU each (less idle)",
                    f"{t['wall_ms_p50']:.2f} / {t['wall_ms_max']:.2f} ms, "
                    + na(t["server_cpu_ms_each"], "{:.2f}")
                    + " ms",
                )
            )
    if "held_cleanly" in r:
        rows.append(("held cleanly (see README)", "yes" if r["held_cleanly"] else "NO"))
    label = record.get("label")
    title = f"idle scenario, {p['clients']:,} clients" + (f" -- {label}" if label else "")
    table = format_table(rows, title=title)
    if r["errors"]:
        top = ", ".join(f"{k}={v}" for k, v in list(r["errors"].items())[:8])
        table += f"\n  errors: {top}"
    problems = (r.get("cluster") or {}).get("server_log_problems") or {}
    if problems.get("count"):
        table += f"\n  server log: {problems['count']} warning/error line(s), first: "
        table += (problems.get("first") or [""])[0][:200]
    return table


def comparison_rows(peer: dict[str, Any], engine: dict[str, Any]) -> list[tuple[str, ...]]:
    """(what, peer, engine, engine/peer) rows of the side-by-side table."""

    def row(
        label: str, key: str, spec: str, with_ratio: bool = True, scale: float = 1.0
    ) -> tuple[str, ...]:
        a, b = peer.get(key), engine.get(key)
        a, b = (None if v is None else v * scale for v in (a, b))
        r = ratio(b, a) if with_ratio else None
        return (label, na(a, spec), na(b, spec), "" if not with_ratio else na(r, "{:.2f}"))

    return [
        row("connected (end of hold)", "connected", "{:,}", False),
        (
            "failed / dropped",
            f"{peer.get('failed', 'n/a')} / {peer.get('dropped', 'n/a')}",
            f"{engine.get('failed', 'n/a')} / {engine.get('dropped', 'n/a')}",
            "",
        ),
        row("server RSS baseline, MiB", "rss_baseline_bytes", "{:,.1f}", scale=2**-20),
        row("server RSS loaded, MiB", "rss_loaded_bytes", "{:,.1f}", scale=2**-20),
        row("bytes per idle client", "bytes_per_client", "{:,.0f}"),
        row("server CPU per heartbeat cycle, s", "server_cpu_per_cycle_s", "{:.3f}"),
        row("server CPU per connect, us", "server_cpu_per_connect_us", "{:.0f}"),
        row("server CPU during hold, %", "server_cpu_percent_hold", "{:.1f}"),
        row("held connect mean, s", "held_mean_s", "{:.2f}", False),
        row("ramp rate achieved, clients/s", "ramp_rate_achieved", "{:,.0f}"),
    ]


def comparison(peer_name: str, peer: dict[str, Any], engine: dict[str, Any]) -> dict[str, Any]:
    """The ratios stored in the record (engine / peer: below 1 means the engine
    uses less)."""

    def held(r: dict[str, Any]) -> dict[str, Any]:
        return {**r, "held_mean_s": (r.get("held_connect_s") or {}).get("mean")}

    p, e = held(peer), held(engine)
    return {
        "peer": peer_name,
        "bytes_per_client_ratio": ratio(e.get("bytes_per_client"), p.get("bytes_per_client")),
        "cpu_per_cycle_ratio": ratio(
            e.get("server_cpu_per_cycle_s"), p.get("server_cpu_per_cycle_s")
        ),
        "cpu_per_connect_ratio": ratio(
            e.get("server_cpu_per_connect_us"), p.get("server_cpu_per_connect_us")
        ),
        "rows": [list(r) for r in comparison_rows(p, e)],
    }


def _flat(r: dict[str, Any]) -> dict[str, Any]:
    """Results with the nested figures the TLS comparison shows lifted to the top."""
    late = ((r.get("heartbeat_lateness_ms") or {}).get("hold")) or {}
    return {
        **r,
        "held_mean_s": (r.get("held_connect_s") or {}).get("mean"),
        "ramp_server_cpu_s": (r.get("ramp_cpu_s") or {}).get("server_s"),
        "ramp_loadgen_cpu_s": (r.get("ramp_cpu_s") or {}).get("loadgen_s"),
        "setup_p99_ms": (r.get("setup_latency_ms") or {}).get("p99"),
        "lateness_p99_ms": late.get("p99"),
        "loadgen_cpu_percent_hold": (r.get("loadgen") or {}).get("cpu_percent_hold"),
        "loadgen_rss_per_client_bytes": (r.get("loadgen") or {}).get("rss_per_client_bytes"),
    }


def tls_comparison(plain: dict[str, Any], tls: dict[str, Any]) -> dict[str, Any]:
    """The ratios of a --compare-tls record (TLS / plain: above 1 means TLS costs more)."""
    p, t = _flat(plain), _flat(tls)

    def row(label: str, key: str, spec: str) -> tuple[str, ...]:
        a, b = p.get(key), t.get(key)
        return (label, na(a, spec), na(b, spec), na(ratio(b, a), "{:.2f}"))

    rows = comparison_rows(p, t) + [
        row("server CPU during ramp, s", "ramp_server_cpu_s", "{:.2f}"),
        row("loadgen CPU during ramp, s", "ramp_loadgen_cpu_s", "{:.2f}"),
        row("setup latency p99, ms", "setup_p99_ms", "{:,.1f}"),
        row("heartbeat lateness p99, ms", "lateness_p99_ms", "{:,.0f}"),
        row("loadgen CPU during hold, %", "loadgen_cpu_percent_hold", "{:.1f}"),
        row("loadgen RSS per client", "loadgen_rss_per_client_bytes", "{:,.0f}"),
    ]
    return {
        "baseline": "plain",
        "bytes_per_client_plain": p.get("bytes_per_client"),
        "bytes_per_client_tls": t.get("bytes_per_client"),
        "bytes_per_client_ratio": ratio(t.get("bytes_per_client"), p.get("bytes_per_client")),
        "bytes_per_client_extra": (
            None
            if p.get("bytes_per_client") is None or t.get("bytes_per_client") is None
            else round(t["bytes_per_client"] - p["bytes_per_client"], 1)
        ),
        "cpu_per_cycle_ratio": ratio(
            t.get("server_cpu_per_cycle_s"), p.get("server_cpu_per_cycle_s")
        ),
        "cpu_per_connect_ratio": ratio(
            t.get("server_cpu_per_connect_us"), p.get("server_cpu_per_connect_us")
        ),
        "cpu_hold_ratio": ratio(t.get("server_cpu_hold_s"), p.get("server_cpu_hold_s")),
        "ramp_server_cpu_ratio": ratio(t.get("ramp_server_cpu_s"), p.get("ramp_server_cpu_s")),
        "rows": [list(r) for r in rows],
    }


#: Pause between the plain and the TLS run of --compare-tls, s: the first run's
#: sockets finish closing, the machine calms down.
COMPARE_PAUSE_S = 3.0


def compare_tls_once(say: Callable[[str], Any]) -> Callable[[argparse.Namespace, ChildGuard], Any]:
    """``once`` of --compare-tls: the plain run, then the TLS run; the TLS
    run's parameters and results, with ``plain`` and ``tls_comparison``."""

    def once(args: argparse.Namespace, guard: ChildGuard) -> dict[str, Any]:
        plain_args = copy.copy(args)
        plain_args.tls = False
        say("--- plain (http://, ws://)")
        plain = asyncio.run(run(plain_args, guard))
        guard.kill_all()
        time.sleep(COMPARE_PAUSE_S)
        tls_args = copy.copy(args)
        tls_args.tls = True
        say("--- TLS (https://, wss://)")
        outcome = asyncio.run(run(tls_args, guard))
        outcome["plain"] = plain
        outcome["tls_comparison"] = tls_comparison(plain["results"], outcome["results"])
        return outcome

    return once


def print_tls_comparison(record: dict[str, Any]) -> None:
    n, transport = record["parameters"]["clients"], record["parameters"]["transport"]
    print(report_table({**record["plain"], "label": "plain"}))
    print()
    print(report_table({**record, "label": "TLS"}))
    print()
    print(
        format_comparison(
            [tuple(r) for r in record["tls_comparison"]["rows"]],
            names=("plain", "TLS", "TLS/plain"),
            title=f"idle scenario plain vs TLS, {n:,} {transport} clients",
        )
    )


def check_failed(args: argparse.Namespace, r: dict[str, Any]) -> str | None:
    """Why --check fails for results ``r`` (None: it passes)."""
    if r["connected"] != args.clients or r["dropped"] != 0:
        return "not every client stayed connected"
    if r.get("fanout") is not None and not r["fanout"]["complete"]:
        return "the fan-out was not delivered completely"
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    resolve(args)
    workers = f"-w{args.workers}" if args.workers is not None else ""
    stem = f"{SCENARIO}-{args.transport}-{args.clients}"
    if args.compare_tls:
        record = run_scenario(
            SCENARIO,
            __file__,
            args,
            argv,
            compare_tls_once(lambda text: log(not args.no_progress, text)),
        )
        if isinstance(record, int):
            return record
        path = write_record(args.results_dir, f"{stem}{workers}-tls-{record['timestamp']}", record)
        print_tls_comparison(record)
        print(f"record: {path}")
        results = [record["plain"]["results"], record["results"]]
    else:
        record = run_scenario(
            SCENARIO,
            __file__,
            args,
            argv,
            lambda a, guard: asyncio.run(run(a, guard)),
            comparison=comparison,
        )
        if isinstance(record, int):
            return record
        save_and_print(
            record,
            args.results_dir,
            stem,
            report_table,
            f"idle scenario side by side, {args.clients:,} {args.transport} clients",
            suffix=workers + ("-tls" if args.tls else ""),
        )
        results = [record["results"]]
    if args.check:
        for r in results:
            why = check_failed(args, r)
            if why is not None:
                sys.stderr.write(f"idle.py: --check failed: {why}\n")
                return 2
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
