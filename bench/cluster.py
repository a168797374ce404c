#!/usr/bin/env python3
"""Scale-out: the fan-out scenario (engine/load/fanout.py) against the engine
in one process (no broker) and as 1, 2 and 4 workers over Redis, in one run
(docs/benchmarks.md and REPORT.md, "Scale-out").

    python bench/cluster.py        # 4,000 WebSocket clients, 400 subscribed, 500 messages at 50/s
    python bench/cluster.py --workers 1,2 --clients 200 --subscribers 20 --messages 20

It starts a `redis-server` (Debian package `redis-server`) on a free loopback
port. With several workers the kernel spreads the clients over them
(SO_REUSEPORT), so most deliveries cross from the publisher's worker to
another through Redis: the latency is cross-node publish-to-delivery latency.
Options it does not know go to each fan-out run (`python -m engine.load.fanout
--help`). Prints one table and writes `cluster-<transport>-<N>-<timestamp>.json`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from engine.load import fanout, recipe
from engine.load.procs import DEFAULT_SERVER_CMD, ChildGuard, RunError, start_redis
from engine.load.records import (
    add_results_dir_arg,
    format_comparison,
    machine_info,
    na,
    utc_stamp,
    write_record,
)


def fanout_once(args: argparse.Namespace, extra: list[str], server_cmd: str) -> dict[str, Any]:
    """One fan-out run against `server_cmd`: its results."""
    argv = [
        "--clients", str(args.clients), "--subscribers", str(args.subscribers),
        "--messages", str(args.messages), "--rate", str(args.rate),
        "--transport", args.transport, "--no-progress", *extra, "--server-cmd", server_cmd,
    ]  # fmt: skip
    results: dict[str, Any] = recipe.run_once(fanout, argv)["results"]
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--workers", default="1,2,4", help="worker counts to run over Redis")
    parser.add_argument("--clients", type=int, default=4000, help="idle clients in all (N)")
    parser.add_argument("--subscribers", type=int, default=400, help="hot-channel clients (K)")
    parser.add_argument("--messages", type=int, default=500, help="messages to publish (M)")
    parser.add_argument("--rate", type=float, default=50.0, help="publishes per second (R)")
    parser.add_argument("--transport", choices=("websocket", "long-polling"), default="websocket")
    add_results_dir_arg(parser)
    args, extra = parser.parse_known_args(argv)
    workers = [int(w) for w in args.workers.split(",") if w.strip()]

    guard = ChildGuard()
    guard.install_signals()
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as workdir:
        try:
            broker = start_redis(Path(workdir), guard).url
            configurations = [("single process", DEFAULT_SERVER_CMD)] + [
                (f"{w} worker{'s' if w > 1 else ''} + redis",
                 f"{DEFAULT_SERVER_CMD} --workers {w} --broker {broker}")
                for w in workers
            ]  # fmt: skip
            for name, server_cmd in configurations:
                print(f"-- {name}", flush=True)
                runs[name] = fanout_once(args, extra, server_cmd)
        except RunError as exc:
            raise SystemExit(f"cluster.py: {exc}") from None
        finally:
            guard.kill_all()  # redis-server, whatever happened

    rows = [
        (
            name,
            na((r.get("latency_ms") or {}).get("p50"), "{:.1f}"),
            na((r.get("latency_ms") or {}).get("p99"), "{:.1f}"),
            f"{r.get('delivered_per_s', 0):,.0f} ({'kept up' if r.get('kept_up') else 'behind'})",
        )
        for name, r in runs.items()
    ]
    print(format_comparison(rows, names=("p50 ms", "p99 ms", "delivered/s")))
    record = {
        "scenario": "cluster",
        "timestamp": utc_stamp(),
        "machine": machine_info(),
        "command": [sys.executable, *sys.argv] if argv is None else [sys.executable, *argv],
        "parameters": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "results": {"configurations": runs},
    }
    path = write_record(
        args.results_dir, f"cluster-{args.transport}-{args.clients}-{record['timestamp']}", record
    )
    print(f"record: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
