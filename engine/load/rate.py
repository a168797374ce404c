"""Rate scenario: the saturation curve of a running Bayeux server.

N clients are started and held as in the fan-out scenario (K of them on the
hot channel); then publishing steps of increasing rate, each a fresh
publisher sending ``rate * --step-seconds`` timestamped messages at ``rate``
per second (the first step at ``--rate``, each next one ``--rate-factor``
times faster). Each step measures what the K subscribers got: delivered per
second against demanded (K * rate) and the publish-to-delivery latency.

The steps stop when delivery falls behind (less than KEPT_UP_FRACTION of
the step's deliveries arrived within ``--drain-timeout`` after its last
publish), when the step's p99 crosses ``--p99-bound-ms``, at ``--max-rate``
or after ``--max-steps``. A step's latency is the difference of the
generators' whole-run ``fanout`` histograms at its start and its end (tagged
reports, engine/load/histogram.py).

The record's results hold the curve: one entry per step, and the rate at
which the server saturated (None: it kept up to the last step).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from engine.load import fanout
from engine.load.histogram import minus
from engine.load.idle import (
    Generator,
    PublisherChild,
    aggregate,
    check_running,
    loadgen_argv,
    wait_ramp,
)
from engine.load.procs import (
    ChildGuard,
    RunError,
    split_clients,
    stop_quietly,
    tree_cpu_seconds,
    tree_rss_bytes,
)
from engine.load.records import format_table, log, na, progress_event, ratio

SCENARIO = "rate"
#: A step kept up when at least this fraction of its deliveries arrived.
KEPT_UP_FRACTION = fanout.KEPT_UP_FRACTION


def build_parser() -> argparse.ArgumentParser:
    """The fan-out scenario's options (clients, generators, publisher) and the steps'."""
    p = fanout.build_parser()
    p.prog = "rate"
    p.description = "Rate scenario: publishing steps of increasing rate to held clients."
    p.add_argument("--step-seconds", type=float, default=5.0, help="length of each step, s")
    p.add_argument("--rate-factor", type=float, default=1.5, help="each step's rate / the last's")
    p.add_argument("--max-steps", type=int, default=12, help="at most this many steps")
    p.add_argument("--max-rate", type=float, default=100000.0, help="no step above this rate")
    p.add_argument(
        "--p99-bound-ms", type=float, default=200.0, help="stop once a step's p99 crosses it, ms"
    )
    return p


def resolve(args: argparse.Namespace) -> None:
    fanout.resolve(args)
    if args.step_seconds <= 0 or args.rate_factor <= 1 or args.max_steps < 1:
        raise SystemExit("rate: need --step-seconds > 0, --rate-factor > 1, --max-steps >= 1")
    if args.p99_bound_ms <= 0 or args.max_rate < args.rate:
        raise SystemExit("rate: need --p99-bound-ms > 0 and --max-rate >= --rate")


def step_latency(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """p50/p90/p99/max (ms) of the deliveries between two tagged reports."""
    h = minus(after["hists"].get("fanout"), before["hists"].get("fanout"))
    if h is None or not h.count:
        return {"count": 0, "p50": None, "p90": None, "p99": None, "max": None}
    s = h.summary()
    return {k: s[k] for k in ("count", "p50", "p90", "p99", "max")}


async def run_step(
    args: argparse.Namespace,
    url: str,
    gens: list[Generator],
    guard: ChildGuard,
    index: int,
    rate: float,
) -> dict[str, Any]:
    """One step: a publisher sends rate * step-seconds messages at ``rate``/s;
    wait for the deliveries (bounded by the step, then --drain-timeout)."""
    messages = max(1, round(rate * args.step_seconds))
    bound = messages / rate + args.drain_timeout + 30.0
    pub = PublisherChild(
        url=url,
        transport=args.publisher_transport,
        channel=args.hot_channel,
        messages=messages,
        rate=rate,
        ack_timeout=args.drain_timeout,
        max_seconds=bound + 30.0,
        extra=["--payload-bytes", str(args.payload_bytes), "--conns", str(args.publish_conns)],
    )
    try:
        await pub.start(guard)
        await pub.wait_for("ready", 30.0)
        before_each = list(await asyncio.gather(*(g.report(f"s{index}-start", 10.0) for g in gens)))
        before = aggregate(before_each)
        hot = before["hot_clients"]
        t_go = time.monotonic()
        pub.send("go")
        done_at: float | None = None
        delivered = 0
        # bounded by `bound`, and by --drain-timeout after the publisher's 'done'
        while time.monotonic() < t_go + bound:
            await asyncio.sleep(0.1)
            check_running(None, gens)
            agg = aggregate([g.latest for g in gens])
            progress_event(f"rate {rate:,.0f}/s", agg, [g.latest for g in gens])
            delivered = agg["hot_messages"] - before["hot_messages"]
            if done_at is None and "done" in pub.lines:
                done_at = time.monotonic()
            acked = (pub.lines.get("done") or {}).get("acked", messages)
            if done_at is not None and (
                delivered >= hot * acked or time.monotonic() - done_at > args.drain_timeout
            ):
                break
        after_each = list(await asyncio.gather(*(g.report(f"s{index}-end", 10.0) for g in gens)))
        wall = time.monotonic() - t_go
        done = pub.lines.get("done") or {}
    finally:
        await pub.stop(10.0)
    after = aggregate(after_each)
    delivered = after["hot_messages"] - before["hot_messages"]
    expected = hot * done.get("acked", 0)
    # as the fan-out counts it: deliveries / (last delivery - first publish + 1/R)
    # (CLOCK_MONOTONIC is one clock for every process of the machine)
    last_ns = max((a.get("hot_last_ns") or 0 for a in after_each), default=0)
    span = (last_ns / 1e9 - t_go + 1 / rate) if last_ns / 1e9 > t_go else wall
    return {
        "rate": rate,
        "messages": messages,
        "published": done.get("published", 0),
        "acked": done.get("acked", 0),
        "publish_failed": done.get("failed", 0),
        "hot_clients": hot,
        "expected": expected,
        "delivered": delivered,
        "demanded_per_s": round(hot * rate, 1),
        "delivered_per_s": round(delivered / span, 1) if span > 0 else None,
        "kept_up": expected > 0 and delivered >= KEPT_UP_FRACTION * hot * messages,
        "finished": done_at is not None,
        "wall_s": round(wall, 3),
        "latency_ms": step_latency(before, after),
    }


async def run(args: argparse.Namespace, guard: ChildGuard) -> dict[str, Any]:
    """Hold the clients, run the steps, return the record's parameters and results."""
    if args.url is None:
        raise RunError("the rate scenario runs against a running server (--url)")
    url = args.url
    n, k = args.clients, args.subscribers
    progress = not args.no_progress
    gens: list[Generator] = []
    steps: list[dict[str, Any]] = []
    pid = args.server_pid
    t_start = time.monotonic()

    def check() -> None:
        check_running(None, gens)

    try:
        step_bound = args.max_steps * (args.step_seconds + args.drain_timeout + 75.0)
        max_seconds = args.ramp_timeout + step_bound + 120.0
        for i, (start, count) in enumerate(split_clients(n, args.procs)):
            hot = ["--hot-channel", args.hot_channel, "--hot-clients", str(k)]
            hot += ["--total-clients", str(n)]
            g = Generator(i, loadgen_argv(args, url, start, count, max_seconds, hot))
            await g.start(guard)
            gens.append(g)
        ramp_complete, ramp_wall = await wait_ramp(
            gens, n, time.monotonic(), args.ramp_timeout, check, progress
        )
        held = aggregate([g.latest for g in gens])
        rss = tree_rss_bytes(pid) if pid else None
        cpu0 = tree_cpu_seconds(pid) if pid else None
        stopped_by = "max-steps"
        rate = args.rate
        for index in range(args.max_steps):
            log(progress, f"step {index + 1}: {rate:,.1f} publishes/s")
            step = await run_step(args, url, gens, guard, index, rate)
            steps.append(step)
            if not step["kept_up"]:
                stopped_by = "delivery fell behind"
                break
            p99 = step["latency_ms"]["p99"]
            if p99 is not None and p99 > args.p99_bound_ms:
                stopped_by = "p99 bound"
                break
            if rate * args.rate_factor > args.max_rate:
                stopped_by = "max-rate"
                break
            rate *= args.rate_factor
        cpu1 = tree_cpu_seconds(pid) if pid else None
        await asyncio.gather(*(g.stop(15.0) for g in gens))
        final = aggregate([g.final or g.latest for g in gens])
    finally:
        await stop_quietly(gens, None)
    saturated_at = None
    for step in steps:
        p99 = step["latency_ms"]["p99"]
        step["p99_over_bound"] = p99 is not None and p99 > args.p99_bound_ms
        if saturated_at is None and (step["p99_over_bound"] or not step["kept_up"]):
            saturated_at = step["rate"]
    last_ok = [s["rate"] for s in steps if s["kept_up"] and not s["p99_over_bound"]]
    return {
        "parameters": {
            "url": url,
            "server_pid": pid,
            "clients": n,
            "subscribers": k,
            "transport": args.transport,
            "publisher_transport": args.publisher_transport,
            "start_rate": args.rate,
            "rate_factor": args.rate_factor,
            "step_seconds": args.step_seconds,
            "max_steps": args.max_steps,
            "p99_bound_ms": args.p99_bound_ms,
            "procs": args.procs,
            "source_addrs": args.source_addrs,
        },
        "results": {
            "ramp_complete": ramp_complete,
            "ramp_s": round(ramp_wall, 3),
            "connected": held["connected"],
            "failed": final["failed"],
            "dropped": final["dropped"],
            "errors": final["errors"],
            "server_rss_bytes": rss,
            "server_cpu_s": None if cpu0 is None or cpu1 is None else round(cpu1 - cpu0, 3),
            "steps": steps,
            "stopped_by": stopped_by,
            "saturated_at_rate": saturated_at,
            "max_rate_kept_up": max(last_ok) if last_ok else None,
            "total_s": round(time.monotonic() - t_start, 3),
        },
    }


def report_table(record: dict[str, Any]) -> str:
    r = record["results"]
    label = record.get("label")
    rows = [
        ("connected", f"{r['connected']:,}"),
        ("failed / dropped", f"{r['failed']:,} / {r['dropped']:,}"),
        ("stopped by", r["stopped_by"]),
        ("highest rate kept up, /s", na(r["max_rate_kept_up"], "{:,.1f}")),
    ]
    for s in r["steps"]:
        lat = s["latency_ms"]
        rows.append(
            (
                f"step {s['rate']:,.1f}/s",
                f"p99 {na(lat['p99'], '{:,.1f}')} ms, {s['delivered']:,}/{s['expected']:,} "
                f"delivered, {na(s['delivered_per_s'], '{:,.0f}')}/"
                f"{s['demanded_per_s']:,.0f} per s",
            )
        )
    return format_table(rows, title=f"rate scenario{f' ({label})' if label else ''}")


def comparison(first: str, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Side by side of two curves: the highest rate each kept up, step by step p99."""

    def row(what: str, x: Any, y: Any, spec: str, with_ratio: bool = True) -> list[str]:
        return [what, na(x, spec), na(y, spec), na(ratio(y, x), "{:.2f}") if with_ratio else ""]

    rows = [
        row("connected", a["connected"], b["connected"], "{:,}", False),
        row("highest rate kept up, /s", a["max_rate_kept_up"], b["max_rate_kept_up"], "{:,.1f}"),
        ["stopped by", a["stopped_by"], b["stopped_by"], ""],
    ]
    b_steps = {s["rate"]: s for s in b["steps"]}
    for s in a["steps"]:
        other = b_steps.get(s["rate"])
        p99b = None if other is None else other["latency_ms"]["p99"]
        rows.append(row(f"p99 at {s['rate']:,.1f}/s, ms", s["latency_ms"]["p99"], p99b, "{:.1f}"))
    return {"first": first, "rows": rows}
