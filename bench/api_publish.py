#!/usr/bin/env python3
"""Publisher throughput: publishes per second through the server HTTP API.

Starts the engine with an API key (``--api-key-file``, a temp file) and one
long-polling subscriber on the channel, then publishes ``--messages`` times
from one client over keep-alive connections:

* ``sync``: ``engine.client.Publisher``, one call after the other (what a
  Django view or a Celery task does);
* ``async``: ``engine.client.AsyncPublisher`` with ``--concurrency`` calls in
  flight on its pool (what a FastAPI app under load does).

Every publish carries an idempotency key (the publisher's default), so the
server's key store is on the path. Each mode runs ``--repeats`` times; the
table gives the median publishes/s, the median and p99 call latency, and the
server's CPU time per publish. The subscriber's deliveries are counted, so a
publish that did not arrive is seen (``delivered`` must equal the publishes).

    python bench/api_publish.py        # README Performance, row 8: 5,000 publishes x 5

writes ``bench/results/api-publish-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from engine.client import AsyncPublisher, Publisher
from engine.load.idle import Generator
from engine.load.procs import ChildGuard, ServerProcess, free_port, read_cpu_seconds, stop_server
from engine.load.records import (
    add_results_dir_arg,
    format_table,
    machine_info,
    utc_stamp,
    write_record,
)

KEY = "bench-api-key"
CHANNEL = "/bench/api"
REPORT_TAGS = itertools.count()


def subscriber(base: str) -> Generator:
    """One long-polling client of the load generator (engine/load/client.py),
    subscribed to the channel, in a process of its own so that it takes no CPU
    from the publisher measured; its ``messages`` counter is what arrived."""
    argv = [sys.executable, "-m", "engine.load.client", "--url", base, "--clients", "1",
            "--transport", "long-polling", "--channel", CHANNEL, "--report-interval", "1",
            "--max-seconds", "3600"]  # fmt: skip
    return Generator(0, argv)


async def received(sub: Generator) -> int:
    """Messages the subscriber has received so far (a report tagged anew each time)."""
    return int((await sub.report(f"r{next(REPORT_TAGS)}", 10.0))["messages"])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_sync(url: str, messages: int) -> list[float]:
    took = []
    with Publisher(url, KEY) as publisher:
        publisher.publish(CHANNEL, {"warm": True})
        for i in range(messages):
            started = time.perf_counter()
            publisher.publish(CHANNEL, {"i": i})
            took.append(time.perf_counter() - started)
    return took


async def run_async(url: str, messages: int, concurrency: int) -> list[float]:
    took: list[float] = []
    async with AsyncPublisher(url, KEY, max_connections=concurrency) as publisher:
        await publisher.publish(CHANNEL, {"warm": True})
        next_index = 0

        async def worker() -> None:
            nonlocal next_index
            while next_index < messages:
                i = next_index
                next_index += 1
                started = time.perf_counter()
                await publisher.publish(CHANNEL, {"i": i})
                took.append(time.perf_counter() - started)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return took


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    guard = ChildGuard()
    guard.install_signals()
    key_file = Path(tempfile.mkdtemp()) / "api.key"
    key_file.write_text(KEY)
    port = free_port()
    template = (
        "{python} -m engine serve --host {host} --port {port} --path {path} "
        f"--timeout {{timeout}} --api-key-file {key_file}"
    )
    server = ServerProcess(
        template, host="127.0.0.1", port=port, path="/cometd", timeout_ms=20000, guard=guard
    )
    runs: dict[str, list[dict[str, Any]]] = {"sync": [], "async": []}
    try:
        await server.start(30)
        url = f"http://127.0.0.1:{port}/api"
        sub = subscriber(f"http://127.0.0.1:{port}/cometd")
        await sub.start(guard)
        for _ in range(100):  # bounded: 10 s for the client to connect
            if sub.latest.get("connected"):
                break
            await asyncio.sleep(0.1)
        else:
            raise SystemExit("api_publish: the subscriber could not subscribe")
        for _ in range(args.repeats):
            for mode in ("sync", "async"):
                before_cpu = read_cpu_seconds(server.pid or 0) or 0.0
                before_count = await received(sub)
                started = time.perf_counter()
                if mode == "sync":
                    took = await asyncio.to_thread(run_sync, url, args.messages)
                else:
                    took = await run_async(url, args.messages, args.concurrency)
                elapsed = time.perf_counter() - started
                cpu = (read_cpu_seconds(server.pid or 0) or 0.0) - before_cpu
                deadline = time.monotonic() + 10
                count = await received(sub)
                while count - before_count < args.messages + 1 and time.monotonic() < deadline:
                    await asyncio.sleep(0.2)
                    count = await received(sub)
                runs[mode].append(
                    {
                        "publishes_per_s": args.messages / elapsed,
                        "latency_p50_ms": statistics.median(took) * 1000,
                        "latency_p99_ms": percentile(took, 0.99) * 1000,
                        "server_cpu_us_per_publish": cpu / args.messages * 1e6,
                        "delivered": count - before_count - 1,  # (less the warm-up)
                    }
                )
        await sub.stop(5.0)
    finally:
        await stop_server(server)
        guard.kill_all()
    return runs


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--messages", type=int, default=5000, help="publishes per run and mode")
    p.add_argument("--concurrency", type=int, default=8, help="calls in flight (async mode)")
    p.add_argument("--repeats", type=int, default=5, help="runs of each mode (medians reported)")
    add_results_dir_arg(p)
    args = p.parse_args()
    if not 1 <= args.messages <= 1_000_000 or not 1 <= args.repeats <= 20:
        p.error("--messages within 1..1,000,000 and --repeats within 1..20")
    runs = asyncio.run(main_async(args))
    summary = {}
    rows = []
    for mode, results in runs.items():
        medians = {k: statistics.median(r[k] for r in results) for k in results[0]}
        summary[mode] = medians
        label = "sync Publisher" if mode == "sync" else f"AsyncPublisher x{args.concurrency}"
        rows += [
            (f"{label}: publishes/s", f"{medians['publishes_per_s']:,.0f}"),
            (
                f"{label}: call p50 / p99",
                f"{medians['latency_p50_ms']:.2f} / {medians['latency_p99_ms']:.2f} ms",
            ),
            (f"{label}: server CPU per publish", f"{medians['server_cpu_us_per_publish']:.0f} µs"),
            (
                f"{label}: delivered (min over runs)",
                f"{min(r['delivered'] for r in results):,} of {args.messages:,}",
            ),
        ]
    print(
        format_table(rows, f"HTTP API publish, one client, keep-alive (medians of {args.repeats})")
    )
    record = {
        "scenario": "api-publish",
        "command": [sys.executable, *sys.argv],
        "machine": machine_info(("engine", "urllib3", "aiohttp", "uvloop", "orjson")),
        "parameters": vars(args) | {"results_dir": str(args.results_dir)},
        "timestamp": utc_stamp(),
        "results": summary,  # medians per mode
        "runs": runs,
    }
    path = write_record(args.results_dir, f"api-publish-{utc_stamp()}", record)
    print(f"record: {path}")
    complete = all(r["delivered"] == args.messages for rs in runs.values() for r in rs)
    return 0 if complete else 2


if __name__ == "__main__":
    sys.exit(main())
