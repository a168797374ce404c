#!/usr/bin/env python3
"""What channel history costs: fan-out with history off and on, and memory
per retained message, in one process and over Redis.

1. Cost: the fan-out scenario (bench/fanout.py: K subscribers of N clients,
   M messages at R/s) against the engine without and with
   ``--history-channels /bench/**`` (every published message kept), the two
   alternating ``--repeats`` times; medians of deliveries per second, p99
   latency (timed when the bytes arrive) and server CPU per delivery, and
   the ratios on/off.  With ``--redis`` both servers use a Redis broker (a
   redis-server started here), so history goes through Redis Streams.
2. Memory per retained message: ``--channels`` channels x ``--size`` kept
   messages of ``--payload-bytes``: in one process (tracemalloc of
   ``engine.delivery.history``) and in Redis (``used_memory`` of a fresh
   redis-server before and after the same messages, published through a
   server).

    python bench/history.py --clients 2000 --subscribers 2000 --messages 1000 --rate 200
    python bench/history.py --redis

writes ``bench/results/history-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

from engine.delivery.history import History
from engine.load import fanout, recipe
from engine.load.procs import DEFAULT_SERVER_CMD, ChildGuard, start_redis
from engine.load.records import (
    add_results_dir_arg,
    format_comparison,
    format_table,
    machine_info,
    na,
    utc_stamp,
    write_record,
)
from engine.options import ServerOptions
from engine.stats import Counters

HISTORY_ARGS = " --history-channels /bench/** --history-size {size}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--clients", type=int, default=2000, help="clients of the fan-out (N)")
    p.add_argument("--subscribers", type=int, default=2000, help="subscribers of it (K)")
    p.add_argument("--messages", type=int, default=1000, help="messages published (M)")
    p.add_argument("--rate", type=float, default=200.0, help="publishes per second (R)")
    p.add_argument("--transport", default="websocket", choices=("websocket", "long-polling"))
    p.add_argument("--repeats", type=int, default=3, help="runs of each, alternating")
    p.add_argument("--redis", action="store_true", help="both servers over a Redis broker")
    p.add_argument("--channels", type=int, default=1000, help="memory: channels with history")
    p.add_argument("--size", type=int, default=100, help="memory: messages kept per channel")
    p.add_argument("--payload-bytes", type=int, default=100, help="memory: padding per message")
    p.add_argument("--skip-cost", action="store_true", help="only the memory measurement")
    p.add_argument("--note", default="", help="free text stored in the record")
    add_results_dir_arg(p)
    return p


# ---------------------------------------------------------------- the cost


def fanout_once(args: argparse.Namespace, history: bool, broker: str | None) -> dict[str, Any]:
    template = DEFAULT_SERVER_CMD + (HISTORY_ARGS.format(size=args.size) if history else "")
    if broker:
        template += f" --broker {broker}"
    argv = [
        "--clients", str(args.clients), "--subscribers", str(args.subscribers),
        "--messages", str(args.messages), "--rate", str(args.rate),
        "--transport", args.transport, "--no-progress", "--server-cmd", template,
    ]  # fmt: skip
    r = recipe.run_once(fanout, argv)["results"]
    return {
        "delivered_per_s": r["delivered_per_s"],
        "all_delivered": r["all_delivered"],
        "p50_ms": r["latency_ms"]["p50"],
        "p99_ms": r["latency_ms"]["p99"],
        "server_cpu_per_delivery_us": r["server_cpu_per_delivery_us"],
    }


def median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return round(statistics.median(values), 3) if values else None


def cost(args: argparse.Namespace, broker: str | None) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    for i in range(args.repeats):
        for mode in ("off", "on"):
            print(f"history.py: fan-out {i + 1}/{args.repeats}, history {mode}", flush=True)
            runs[mode].append(fanout_once(args, mode == "on", broker))
    keys = ("delivered_per_s", "p50_ms", "p99_ms", "server_cpu_per_delivery_us")
    medians = {mode: {k: median(rs, k) for k in keys} for mode, rs in runs.items()}
    ratios = {
        k: (
            round(medians["on"][k] / medians["off"][k], 3)
            if medians["on"][k] and medians["off"][k]
            else None
        )
        for k in keys
    }
    return {"runs": runs, "medians": medians, "ratio_on_off": ratios}


# -------------------------------------------------------------- the memory


def message(i: int, channel: str, payload: int) -> bytes:
    return (
        b'{"channel":"%s","data":{"n":%d,"text":"%s"},"ext":{"position":'
        b'{"epoch":"0123abcd","offset":%d}}}' % (channel.encode(), i, b"x" * payload, i)
    )


def memory_in_process(args: argparse.Namespace) -> dict[str, Any]:
    options = ServerOptions(
        history_channels="/bench/**",
        history_size=args.size,
        history_max_bytes=1 << 30,
        history_total_bytes=1 << 40,
        history_max_channels=args.channels + 1,
    )
    import logging

    history = History(options, Counters(), logging.getLogger("bench.history"))
    channels = [f"/bench/c{c}" for c in range(args.channels)]
    messages = [[message(i, ch, args.payload_bytes) for i in range(args.size)] for ch in channels]
    payload_bytes = sum(len(m) for ms in messages for m in ms)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for ch, ms in zip(channels, messages, strict=True):
        for m in ms:
            stream = history.stamp(ch, {"channel": ch, "data": 0})
            assert stream is not None
            history.keep(ch, stream, m)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    n = args.channels * args.size
    # The message bytes were made before: what history adds is its structure.
    return {
        "messages": n,
        "message_bytes_each": round(payload_bytes / n, 1),
        "history_bytes_each_beyond_the_message": round((after - before) / n, 1),
        "total_bytes_each": round((after - before) / n + 33 + payload_bytes / n, 1),
    }


def memory_in_redis(args: argparse.Namespace, workdir: Path, guard: ChildGuard) -> dict[str, Any]:
    import redis

    from engine.cluster.history_streams import PUBLISH_SCRIPT

    server = start_redis(workdir, guard)
    client = redis.Redis.from_url(server.url)
    script = client.register_script(PUBLISH_SCRIPT)
    before = int(client.info("memory")["used_memory"])
    size = 0
    for c in range(args.channels):
        channel = f"/bench/c{c}"
        meta, stream = f"bayeux:0:h:{channel}", f"bayeux:0:s:{channel}"
        pipe = client.pipeline(transaction=False)
        for i in range(args.size):
            body = message(i, channel, args.payload_bytes)
            prefix = body[: body.index(b'{"epoch"')]
            size += len(body)
            script(
                keys=[meta, stream],
                args=["bench", "o.1", c * args.size + i + 1, "0123abcd", args.size,
                      3600000, 36000000, f"bayeux:0:{channel}", prefix],
                client=pipe,
            )  # fmt: skip
        pipe.execute()
    after = int(client.info("memory")["used_memory"])
    n = args.channels * args.size
    client.close()
    server.stop()
    return {
        "messages": n,
        "message_bytes_each": round(size / n, 1),
        "redis_used_memory_each": round((after - before) / n, 1),
    }


# --------------------------------------------------------------------- main


def table(record: dict[str, Any]) -> str:
    out: list[str] = []
    c = record["results"].get("cost")
    if c:
        off, on, ratio = c["medians"]["off"], c["medians"]["on"], c["ratio_on_off"]
        rows = [
            (label, na(off[key], spec), na(on[key], spec), na(ratio[key], "{:.3f}"))
            for key, label, spec in (
                ("delivered_per_s", "deliveries per second", "{:,.0f}"),
                ("p50_ms", "latency p50, ms", "{:.1f}"),
                ("p99_ms", "latency p99, ms", "{:.1f}"),
                ("server_cpu_per_delivery_us", "server CPU per delivery, us", "{:.2f}"),
            )
        ]
        every = {m: all(r["all_delivered"] for r in c["runs"][m]) for m in ("off", "on")}
        rows.append(
            ("every delivery arrived", *("yes" if every[m] else "NO" for m in ("off", "on")), "")
        )
        out.append(
            format_comparison(
                rows,
                names=("history off", "history on", "on / off"),
                title=f"fan-out with and without history (medians of {len(c['runs']['on'])})",
            )
        )
    m = record["results"]["memory"]
    local, remote = m["in_process"], m["redis"]
    out.append(
        format_table(
            [
                ("messages kept", f"{local['messages']:,}"),
                ("message size", f"{local['message_bytes_each']:,.0f} B"),
                ("in process, per message", f"{local['total_bytes_each']:,.0f} B"),
                (
                    "  of which history's own",
                    f"{local['history_bytes_each_beyond_the_message']:,.0f} B",
                ),
                ("in redis, per message", f"{remote['redis_used_memory_each']:,.0f} B"),
            ],
            title="memory per retained message",
        )
    )
    return "\n\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    guard = ChildGuard()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-history-") as tmp:
        try:
            if not args.skip_cost:
                broker = None
                if args.redis:
                    redis_server = start_redis(Path(tmp), guard)
                    broker = redis_server.url
                results["cost"] = cost(args, broker)
            results["memory"] = {"in_process": memory_in_process(args)}
            results["memory"]["redis"] = memory_in_redis(args, Path(tmp), guard)
        finally:
            guard.kill_all()
    record = {
        "scenario": "history",
        "machine": machine_info(),
        "command": [sys.executable, *sys.argv],
        "parameters": {k: v for k, v in vars(args).items() if k != "results_dir"}
        | {"at": time.time()},
        "results": results,
    }
    path = write_record(
        args.results_dir, f"history{'-redis' if args.redis else ''}-{utc_stamp()}", record
    )
    print(table(record))
    print(f"record: {path}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
