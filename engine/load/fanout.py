#!/usr/bin/env python3
"""Fan-out scenario: N idle clients, K of them subscribed to one hot channel, a
separate publisher sends M messages at R per second; how fast do they arrive?

Phases, each bounded in time:

1. start the server (``python -m engine serve`` on a free port, or
   ``--server-cmd``), or use ``--url`` (+ ``--server-pid``); read its baseline
   RSS;
2. ramp: load generators (bench/loadgen.py) start N clients as in
   ``bench/idle.py``; K of them, spread evenly over the generators, subscribe
   to ``--hot-channel``, the others to ``--channel``; wait until every client
   is connected (or has given up);
3. start the publisher (bench/publisher.py, its own process and its own
   session over ``--publisher-transport``) and wait until it is connected;
4. publish: M messages at R/s on an open-loop schedule, each message's data
   ``{"seq": i, "t": <time.monotonic_ns() at send>}``; every hot client
   records ``arrival - t`` for every delivery (CLOCK_MONOTONIC is one clock
   for all processes of the machine), and ``read - t`` apart. The phase ends when all K * M
   deliveries arrived, or ``--drain-timeout`` after the publisher finished;
5. stop everything, merge the latencies of all generators (every delivery,
   exact percentiles), print a table and write a JSON record to
   ``<results-dir>/fanout-<transport>-<N>-<K>-<timestamp>.json``.

Figures: publish-to-delivery latency p50/p90/p99/p99.9/max over all
deliveries, a delivery's time being when its bytes arrived in the client's
socket (the kernel's receive time, ``SO_TIMESTAMPNS``; see stamped.py). One
generator plays hundreds of clients on one CPU: a reply that arrived waits in
its socket while the generator serves the replies ahead of it, a queue no
real client has; "read by the generator" is the same latency with that queue
(the figure these records gave before 2026-11-28). Delivered messages per
second (deliveries / (last delivery - first publish + 1/R): each message owns
a 1/R slot); demanded rate K * R; the server
kept up when the delivered rate is at least 95 % of the demanded one and
nothing is missing. Server CPU during the publish phase per delivery; the
generators' CPU to show they were not the bottleneck (on a 2-core machine they
share the CPUs with the server). A long-polling publisher sends what was
published while its connection was busy in one request (as the CometD client
coalesces), so each message's latency includes that wait; with
``--publish-conns`` above 1 the server may take publishes out of order, which
"out of order" counts (it is not a loss).

``--peer faye`` runs the identical scenario against a Faye Node server first
(installed into bench/peers/ by npm when missing), then against the engine,
prints both and the ratios, and writes one record with both.

Exit status: 0 when the run completed (with --check: and every delivery
arrived), 1 when it could not run, 2 when --check failed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from typing import Any

from engine.load.histogram import Histogram, current, summary_with_hist
from engine.load.idle import (
    Generator,
    PublisherChild,
    _HelpFormatter,
    add_ramp_timeout_arg,
    add_source_addrs_arg,
    aggregate,
    check_running,
    loadgen_argv,
    resolve_generators,
    start_server,
    take_recent,
    wait_ramp,
)
from engine.load.procs import (
    ChildGuard,
    RunError,
    ServerProcess,
    free_port,
    machine_cpu_seconds,
    split_clients,
    stop_quietly,
    stop_server,
    tree_cpu_seconds,
    tree_cpu_split,
    tree_rss_bytes,
)
from engine.load.records import (
    PEERS,
    ProgressBar,
    add_listen_args,
    add_results_dir_arg,
    add_server_args,
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

SCENARIO = "fanout"
#: Delivered rate / demanded rate at or above which the server kept up.
KEPT_UP_FRACTION = 0.95


# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fanout.py",
        description=(
            "Fan-out scenario: N idle clients, K of them subscribed to a hot channel; a separate "
            "publisher sends M timestamped messages at R/s; report publish-to-delivery latency "
            "p50/p90/p99/max, delivered messages per second and whether the server kept up "
            "(delivered vs demanded K*R), and write a JSON record."
        ),
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--clients", type=int, default=2000, help="idle clients in all (N)")
    p.add_argument(
        "--subscribers", type=int, default=200, help="clients on the hot channel (K), among N"
    )
    p.add_argument("--messages", type=int, default=500, help="messages to publish (M)")
    p.add_argument("--rate", type=float, default=50.0, help="publishes per second (R)")
    p.add_argument(
        "--transport",
        default="websocket",
        choices=["long-polling", "websocket"],
        help="transport of the N clients",
    )
    p.add_argument(
        "--publisher-transport",
        default=None,
        choices=["long-polling", "websocket"],
        help="transport of the publisher (default: --transport)",
    )
    p.add_argument("--payload-bytes", type=int, default=64, help="padding in each message's data")
    p.add_argument(
        "--publish-conns",
        type=int,
        default=1,
        help="long-polling publisher: connections besides its connect's (publishes made while "
        "they are busy leave together in the next request)",
    )
    p.add_argument("--hot-channel", default="/bench/hot", help="the channel published to")
    p.add_argument("--channel", default="/bench/idle", help="channel of the other N-K clients")
    add_server_args(p)
    p.add_argument(
        "--peer",
        choices=sorted(PEERS),
        default=None,
        help="first run the identical scenario against this peer server (installed into "
        "bench/peers/ with npm when missing), then against the engine; print both and the ratios",
    )
    add_listen_args(p)
    p.add_argument(
        "--procs",
        type=int,
        default=None,
        help="load generator processes (default: one per CPU the server leaves over, "
        "more when the open-files limit needs them)",
    )
    add_source_addrs_arg(p)
    p.add_argument(
        "--ramp-rate", type=float, default=1000.0, help="clients started per second, in total"
    )
    add_ramp_timeout_arg(p)
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=10.0,
        help="after the last publish, wait at most this long for missing deliveries, s",
    )
    p.add_argument("--settle", type=float, default=1.0, help="pause before measuring, s")
    p.add_argument(
        "--max-pending", type=int, default=1000, help="clients setting up at once, per generator"
    )
    p.add_argument("--max-attempts", type=int, default=5, help="client failures before giving up")
    p.add_argument("--startup-timeout", type=float, default=30.0, help="server start bound, s")
    add_results_dir_arg(p)
    p.add_argument("--check", action="store_true", help="exit 2 unless every delivery arrived")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--note", default="", help="free text stored in the record")
    return p


def resolve(args: argparse.Namespace) -> None:
    n, k = args.clients, args.subscribers
    if n <= 0 or not 1 <= k <= n:
        raise SystemExit("fanout.py: need --clients > 0 and 1 <= --subscribers <= --clients")
    if args.messages <= 0 or args.rate <= 0:
        raise SystemExit("fanout.py: --messages and --rate must be positive")
    if args.ramp_rate <= 0 or args.timeout <= 0:
        raise SystemExit("fanout.py: --ramp-rate and --timeout must be positive")
    if args.publisher_transport is None:
        args.publisher_transport = args.transport
    resolve_generators("fanout.py", args)
    check_loopback("fanout.py", args)


# --------------------------------------------------------------------------- run


async def run(args: argparse.Namespace, guard: ChildGuard) -> dict[str, Any]:
    n, k = args.clients, args.subscribers
    progress = not args.no_progress
    server: ServerProcess | None = None
    server_pid: int | None = args.server_pid
    server_argv: list[str] | None = None
    gens: list[Generator] = []
    pub: PublisherChild | None = None
    phases: dict[str, float] = {}
    samples: list[dict[str, Any]] = []
    t_start = time.monotonic()

    def check() -> None:
        check_running(server, gens)

    def rss() -> int | None:
        return tree_rss_bytes(server_pid) if server_pid else None

    def cpu() -> float | None:
        return tree_cpu_seconds(server_pid) if server_pid else None

    try:
        # 1. server ------------------------------------------------------------------
        if args.url is None:
            server = ServerProcess.for_args(
                args.server_cmd, args, args.port or free_port(args.host), guard
            )
            server_argv = server.argv
            url = await start_server(server, args.startup_timeout, phases, progress)
            server_pid = server.pid
        else:
            url = args.url
        await asyncio.sleep(args.settle)
        check()
        rss_baseline = rss()

        # 2. ramp --------------------------------------------------------------------
        publish_bound = args.messages / args.rate + args.drain_timeout + 60.0
        max_seconds = args.ramp_timeout + publish_bound + 120.0
        for i, (start, count) in enumerate(split_clients(n, args.procs)):
            hot = [
                "--hot-channel",
                args.hot_channel,
                "--hot-clients",
                str(k),
                "--total-clients",
                str(n),
            ]
            g = Generator(i, loadgen_argv(args, url, start, count, max_seconds, hot))
            await g.start(guard)
            gens.append(g)
        ramp_complete, ramp_wall = await wait_ramp(
            gens, n, time.monotonic(), args.ramp_timeout, check, progress
        )
        phases["ramp_s"] = round(ramp_wall, 3)
        if not ramp_complete:
            log(progress, f"ramp did not finish within {args.ramp_timeout:.0f} s; going on")

        # 3. publisher -------------------------------------------------------------------
        pub = PublisherChild(
            url=url,
            transport=args.publisher_transport,
            channel=args.hot_channel,
            messages=args.messages,
            rate=args.rate,
            ack_timeout=args.drain_timeout,
            max_seconds=publish_bound + 60,
            extra=["--payload-bytes", str(args.payload_bytes), "--conns", str(args.publish_conns)],
        )
        await pub.start(guard)
        await pub.wait_for("ready", 30.0)
        await asyncio.sleep(args.settle)
        check()

        # 4. publish -------------------------------------------------------------------
        start_reports = await asyncio.gather(*(g.report("pub-start", 10.0) for g in gens))
        before = aggregate(list(start_reports))
        hot_clients = before["hot_clients"]
        rss_start = rss()
        cpu0 = cpu()
        split0 = tree_cpu_split(server_pid) if server_pid else None
        machine0 = machine_cpu_seconds()
        t_go = time.monotonic()
        pub.send("go")
        expected = hot_clients * args.messages
        bar = ProgressBar("fanout", expected, progress)
        hard_end = t_go + publish_bound
        done_at: float | None = None
        next_sample = t_go + 1.0
        take_recent(gens)  # the samples start with the publishing
        last_delivered = 0
        all_delivered = False
        # bounded by hard_end, and by drain-timeout after the publisher's 'done'
        while (now := time.monotonic()) < hard_end:
            await asyncio.sleep(0.1)
            check()
            if not pub.alive():
                raise RunError("publisher exited early:\n" + "\n".join(pub.stderr_tail[-10:]))
            agg = aggregate([g.latest for g in gens])
            delivered = agg["hot_messages"] - before["hot_messages"]
            if now >= next_sample:
                next_sample += 1.0
                samples.append(
                    {
                        "t": round(now - t_go, 2),
                        "delivered": delivered,
                        "per_s": delivered - last_delivered,
                        "rss": rss(),
                        "cpu": cpu(),
                        "loadgen_cpu": agg["cpu_s"],
                        # deliveries the generators reported since the last sample
                        "latency_ms": current(take_recent(gens), "fanout"),
                    }
                )
                last_delivered = delivered
            bar.update(delivered, f"{delivered:,}/{expected:,} delivered")
            progress_event("publish", agg, [g.latest for g in gens])
            if done_at is None and "done" in pub.lines:
                done_at = time.monotonic()
            if done_at is not None:
                if delivered >= expected:
                    all_delivered = True
                    break
                if time.monotonic() - done_at > args.drain_timeout:
                    break
        end_reports = await asyncio.gather(*(g.report("pub-end", 10.0) for g in gens))
        cpu1 = cpu()
        split1 = tree_cpu_split(server_pid) if server_pid else None
        machine1 = machine_cpu_seconds()
        t_end = time.monotonic()
        rss_end = rss()
        after = aggregate(list(end_reports))
        bar.close(f"{t_end - t_go:.1f} s")
        phases["publish_s"] = round(t_end - t_go, 3)
        done = pub.lines.get("done")
        if done is None:
            log(progress, "publisher did not finish in time")

        # 5. stop ------------------------------------------------------------------------
        await pub.stop(10.0)
        pub_final = pub.lines.get("final")
        await asyncio.gather(*(g.stop(15.0) for g in gens))
        final_stats = [g.final or g.latest for g in gens]
        final = aggregate(final_stats)
        server_exit = await stop_server(server)
        phases["total_s"] = round(time.monotonic() - t_start, 3)

        hot_last = max((d.get("hot_last_ns") or 0 for d in final_stats), default=0) or None
        return compute(
            args=args,
            url=url,
            server_argv=server_argv,
            server_pid=server_pid,
            server_exit=server_exit,
            ramp_complete=ramp_complete,
            before=before,
            after=after,
            gc_before=list(start_reports),
            gc_after=list(end_reports),
            final=final,
            publisher=done or pub_final or {},
            publisher_final=pub_final or {},
            hot_last_ns=hot_last,
            latency=final["hists"].get("fanout"),
            read_latency=final["hists"].get("fanout_read"),
            latency_at=next(
                (d["latency_at"] for d in final_stats if d.get("latency_at")), "arrival"
            ),
            all_delivered=all_delivered,
            rss_baseline=rss_baseline,
            rss_start=rss_start,
            rss_end=rss_end,
            cpu_publish=None if cpu0 is None or cpu1 is None else cpu1 - cpu0,
            cpu_split=(
                None
                if split0 is None or split1 is None
                else (split1[0] - split0[0], split1[1] - split0[1])
            ),
            publish_wall=t_end - t_go,
            machine=(
                None
                if machine0 is None or machine1 is None
                else (machine1[0] - machine0[0], machine1[1] - machine0[1])
            ),
            phases=phases,
            samples=samples,
        )
    finally:
        await stop_quietly([pub, *gens], server)


def compute(
    *,
    args: argparse.Namespace,
    url: str,
    server_argv: list[str] | None,
    server_pid: int | None,
    server_exit: int | None,
    ramp_complete: bool,
    before: dict[str, Any],
    after: dict[str, Any],
    gc_before: list[dict[str, Any]],
    gc_after: list[dict[str, Any]],
    final: dict[str, Any],
    publisher: dict[str, Any],
    publisher_final: dict[str, Any],
    hot_last_ns: int | None,
    latency: Histogram | None,
    read_latency: Histogram | None,
    latency_at: str,
    all_delivered: bool,
    rss_baseline: int | None,
    rss_start: int | None,
    rss_end: int | None,
    cpu_publish: float | None,
    cpu_split: tuple[float, float] | None,
    publish_wall: float,
    machine: tuple[float, float] | None,
    phases: dict[str, float],
    samples: list[dict[str, Any]],
) -> dict[str, Any]:
    k = before["hot_clients"]
    published = int(publisher.get("published") or 0)
    expected = k * published
    delivered = final["hot_messages"]
    first_send = publisher.get("first_send_ns")
    last_send = publisher.get("last_send_ns")
    window_s = None
    delivered_rate = None
    if first_send and hot_last_ns and hot_last_ns > first_send:
        # Each message owns a 1/R slot: M messages demand M/R seconds, so a
        # server that delivers everything at once has delivered_rate = K * R.
        window_s = (hot_last_ns - first_send) / 1e9 + 1.0 / args.rate
        delivered_rate = delivered / window_s
    publish_rate = None
    if first_send and last_send and last_send > first_send and published > 1:
        publish_rate = (published - 1) / ((last_send - first_send) / 1e9)
    demanded = k * args.rate
    fraction = None if delivered_rate is None else delivered_rate / demanded
    lat = summary_with_hist(latency)
    lg_cpu = after["cpu_s"] - before["cpu_s"]
    # Machine CPU not spent by the server, the generators or the publisher
    # (the publisher's whole-run CPU is an upper bound of its share here).
    other_cpu = None
    if machine is not None and cpu_publish is not None:
        pub_cpu = float(publisher_final.get("cpu_s") or 0.0)
        other_cpu = max(0.0, machine[0] - cpu_publish - lg_cpu - pub_cpu)
    results: dict[str, Any] = {
        "clients_requested": args.clients,
        "subscribers_requested": args.subscribers,
        "connected_at_publish": before["connected"],
        "hot_clients": k,
        "ramp_complete": ramp_complete,
        "failed": final["failed"],
        "dropped": final["dropped"],
        "dropped_during_publish": after["dropped"] - before["dropped"],
        "messages_requested": args.messages,
        "published": published,
        "publish_acked": publisher.get("acked"),
        "publish_failed": publisher.get("failed"),
        "publish_rate_requested": args.rate,
        "publish_rate_achieved": None if publish_rate is None else round(publish_rate, 2),
        "publish_max_lag_ms": publisher.get("max_lag_ms"),
        "publish_ack_ms": publisher.get("ack_ms"),
        "publish_requests": publisher.get("publish_requests"),
        "publish_max_batch": publisher.get("max_batch"),
        "expected_deliveries": expected,
        "delivered": delivered,
        "missing": max(0, expected - delivered),
        "all_delivered": all_delivered or (expected > 0 and delivered >= expected),
        "out_of_order": final["hot_out_of_order"],
        # Arrival in the client's socket (the kernel's receive time; over
        # TLS "read"); the same deliveries timed when the generator read
        # them add its queue.
        "latency_at": latency_at,
        "latency_ms": lat,
        "read_latency_ms": summary_with_hist(read_latency),
        "delivery_window_s": None if window_s is None else round(window_s, 3),
        "delivered_per_s": None if delivered_rate is None else round(delivered_rate, 1),
        "demanded_per_s": demanded,
        "delivered_fraction": None if fraction is None else round(fraction, 4),
        "kept_up": bool(
            fraction is not None and fraction >= KEPT_UP_FRACTION and delivered >= expected
        ),
        "server_cpu_publish_s": None if cpu_publish is None else round(cpu_publish, 3),
        "server_cpu_percent_publish": (
            None if cpu_publish is None else round(100 * cpu_publish / publish_wall, 1)
        ),
        "server_cpu_user_s": None if cpu_split is None else round(cpu_split[0], 3),
        "server_cpu_system_s": None if cpu_split is None else round(cpu_split[1], 3),
        "server_cpu_per_delivery_us": (
            None
            if cpu_publish is None or not delivered
            else round(1e6 * cpu_publish / delivered, 2)
        ),
        "rss_baseline_bytes": rss_baseline,
        "rss_publish_start_bytes": rss_start,
        "rss_publish_end_bytes": rss_end,
        "bytes_per_client": (
            None
            if rss_baseline is None or rss_start is None or not before["connected"]
            else round((rss_start - rss_baseline) / before["connected"], 1)
        ),
        "loadgen": {
            "procs": args.procs,
            "cpu_publish_s": round(lg_cpu, 3),
            "cpu_percent_publish": round(100 * lg_cpu / publish_wall, 1),
            # full collections in the generators during the publish phase (each
            # one stalls that generator's deliveries: it would show as latency)
            "gc_full_publish": sum(int(a.get("gc_full") or 0) for a in gc_after)
            - sum(int(b.get("gc_full") or 0) for b in gc_before),
            "gc_full_max_ms": max(
                (float(a.get("gc_full_max_ms") or 0) for a in gc_after), default=0
            ),
        },
        "machine_busy_percent_publish": (
            None if machine is None or not machine[1] else round(100 * machine[0] / machine[1], 1)
        ),
        "other_cpu_percent_publish": (
            None if other_cpu is None else round(100 * other_cpu / publish_wall, 1)
        ),
        "publisher": {
            "transport": args.publisher_transport,
            "cpu_s": publisher_final.get("cpu_s"),
            "handshakes": publisher_final.get("handshakes"),
            "connects": publisher_final.get("connects"),
            "connect_failures": publisher_final.get("connect_failures"),
            "errors": publisher_final.get("errors") or publisher.get("errors"),
        },
        "errors": final["errors"],
        "server_pid": server_pid,
        "server_exit_code": server_exit,
        "phases": phases,
        "samples": samples,
    }
    parameters = {
        "clients": args.clients,
        "subscribers": args.subscribers,
        "messages": args.messages,
        "rate": args.rate,
        "transport": args.transport,
        "publisher_transport": args.publisher_transport,
        "payload_bytes": args.payload_bytes,
        "publish_conns": args.publish_conns,
        "hot_channel": args.hot_channel,
        "channel": args.channel,
        "timeout_ms": args.timeout,
        "procs": args.procs,
        "source_addrs": args.source_addrs,
        "ramp_rate": args.ramp_rate,
        "drain_timeout": args.drain_timeout,
        "url": url,
        "server_cmd": None if server_argv is None else shell_join(server_argv),
        "note": args.note,
    }
    return {"parameters": parameters, "results": results}


# --------------------------------------------------------------------------- output


def report_table(record: dict[str, Any]) -> str:
    r = record["results"]
    p = record["parameters"]
    lat = r["latency_ms"]
    read = r.get("read_latency_ms") or {}
    ack = r.get("publish_ack_ms") or {}
    lg = r["loadgen"]
    rows = [
        ("transport (clients / publisher)", f"{p['transport']} / {p['publisher_transport']}"),
        ("clients / connected at publish", f"{p['clients']:,} / {r['connected_at_publish']:,}"),
        ("hot subscribers (K)", na(r["hot_clients"])),
        (
            "published / acked / failed",
            f"{r['published']:,} / {na(r['publish_acked'])} / {na(r['publish_failed'])}",
        ),
        (
            "publish rate requested / achieved",
            f"{p['rate']:g} / {na(r['publish_rate_achieved'], '{:.1f}')} /s",
        ),
        (
            "publish requests / largest batch",
            f"{na(r.get('publish_requests'))} / {na(r.get('publish_max_batch'))}",
        ),
        (
            "publish max lag / ack p99",
            f"{na(r['publish_max_lag_ms'], '{:.1f}')} / {na(ack.get('p99'), '{:.1f}')} ms",
        ),  # fmt: skip
        ("deliveries expected / received", f"{r['expected_deliveries']:,} / {r['delivered']:,}"),
        ("missing / out of order", f"{r['missing']:,} / {r['out_of_order']:,}"),
        (
            "latency p50 / p90 / p99",
            " / ".join(na(lat.get(q), "{:.1f}") for q in ("p50", "p90", "p99")) + " ms",
        ),
        (
            "latency p99.9 / max",
            " / ".join(na(lat.get(q), "{:.1f}") for q in ("p999", "max")) + " ms",
        ),
        (
            "read by the generator p50 / p99",
            " / ".join(na(read.get(q), "{:.1f}") for q in ("p50", "p99")) + " ms",
        ),
        (
            "delivered / demanded per s",
            f"{na(r['delivered_per_s'], '{:,.0f}')} / {r['demanded_per_s']:,.0f}",
        ),
        (
            "kept up (>= 95 % of demanded, none missing)",
            ("yes" if r["kept_up"] else "NO") + f" ({na(r['delivered_fraction'], '{:.1%}')})",
        ),
        (
            "server CPU in publish phase",
            f"{na(r['server_cpu_publish_s'], '{:.2f}')} s "
            f"({na(r['server_cpu_percent_publish'], '{:.0f}')} %)",
        ),
        (
            "server CPU user / system",
            f"{na(r.get('server_cpu_user_s'), '{:.2f}')} / "
            f"{na(r.get('server_cpu_system_s'), '{:.2f}')} s",
        ),
        ("server CPU per delivery", f"{na(r['server_cpu_per_delivery_us'], '{:.1f}')} us"),
        (
            "server RSS baseline / with N",
            f"{human_bytes(r['rss_baseline_bytes'])} / {human_bytes(r['rss_publish_start_bytes'])}",
        ),  # fmt: skip
        ("server RSS after publishing", human_bytes(r["rss_publish_end_bytes"])),
        (
            "loadgen CPU in publish phase",
            f"{lg['cpu_percent_publish']:.0f} % of one core ({lg['procs']} procs)",
        ),
        (
            "loadgen full GCs in publish phase / longest",
            f"{lg.get('gc_full_publish', 0)} / {lg.get('gc_full_max_ms', 0):.0f} ms (whole run)",
        ),
        (
            "machine busy / other processes",
            f"{na(r.get('machine_busy_percent_publish'), '{:.0f}')} % of all CPUs / "
            f"{na(r.get('other_cpu_percent_publish'), '{:.0f}')} % of one core",
        ),
    ]
    label = record.get("label")
    title = (
        f"fanout scenario, {p['clients']:,} clients, {p['subscribers']:,} on the hot channel, "
        f"{p['messages']:,} messages at {p['rate']:g}/s" + (f" -- {label}" if label else "")
    )
    table = format_table(rows, title=title)
    if r["errors"]:
        top = ", ".join(f"{k}={v}" for k, v in list(r["errors"].items())[:8])
        table += f"\n  errors: {top}"
    return table


def comparison_rows(peer: dict[str, Any], engine: dict[str, Any]) -> list[tuple[str, ...]]:
    def lat(r: dict[str, Any], q: str, key: str = "latency_ms") -> Any:
        return (r.get(key) or {}).get(q)

    def row(label: str, a: Any, b: Any, spec: str, with_ratio: bool = True) -> tuple[str, ...]:
        rr = ratio(b, a) if with_ratio else None
        return (label, na(a, spec), na(b, spec), na(rr, "{:.2f}") if with_ratio else "")

    rows = [
        row("delivered", peer.get("delivered"), engine.get("delivered"), "{:,}", False),
        row("missing", peer.get("missing"), engine.get("missing"), "{:,}", False),
    ]
    for q, name in (("p50", "p50"), ("p90", "p90"), ("p99", "p99"), ("max", "max")):
        rows.append(row(f"latency {name}, ms", lat(peer, q), lat(engine, q), "{:.1f}"))
    key = "read_latency_ms"
    rows.append(
        row(
            "read by the generator p99, ms",
            lat(peer, "p99", key),
            lat(engine, "p99", key),
            "{:.1f}",
        )
    )
    rows += [
        row(
            "delivered per s",
            peer.get("delivered_per_s"),
            engine.get("delivered_per_s"),
            "{:,.0f}",
        ),
        (
            "kept up",
            "yes" if peer.get("kept_up") else "no",
            "yes" if engine.get("kept_up") else "no",
            "",
        ),
        row(
            "server CPU per delivery, us",
            peer.get("server_cpu_per_delivery_us"),
            engine.get("server_cpu_per_delivery_us"),
            "{:.1f}",
        ),
        row(
            "server RSS with N clients, MiB",
            mib(peer.get("rss_publish_start_bytes")),
            mib(engine.get("rss_publish_start_bytes")),
            "{:,.1f}",
        ),
    ]
    return rows


def mib(n: float | None) -> float | None:
    return None if n is None else n / 2**20


def comparison(peer_name: str, peer: dict[str, Any], engine: dict[str, Any]) -> dict[str, Any]:
    pl, el = peer.get("latency_ms") or {}, engine.get("latency_ms") or {}
    return {
        "peer": peer_name,
        "latency_p50_ratio": ratio(el.get("p50"), pl.get("p50")),
        "latency_p99_ratio": ratio(el.get("p99"), pl.get("p99")),
        "delivered_per_s_ratio": ratio(engine.get("delivered_per_s"), peer.get("delivered_per_s")),
        "cpu_per_delivery_ratio": ratio(
            engine.get("server_cpu_per_delivery_us"), peer.get("server_cpu_per_delivery_us")
        ),
        "rows": [list(r) for r in comparison_rows(peer, engine)],
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    resolve(args)
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
        f"{SCENARIO}-{args.transport}-{args.clients}-{args.subscribers}",
        report_table,
        f"fanout side by side ({args.transport})",
    )
    if args.check and not record["results"]["all_delivered"]:
        sys.stderr.write("fanout.py: --check failed: not every delivery arrived\n")
        return 2
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
