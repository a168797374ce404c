#!/usr/bin/env python3
"""Scale-out: the fan-out scenario against 1, 2 and 4 workers over Redis,
with the single-process server (no broker) measured in the same run.

    python bench/cluster.py                       # 4,000 clients, 400 hot, 50 msg/s, 10 s
    python bench/cluster.py --workers 1,2 --clients 200 --subscribers 20 --messages 20

It starts its own `redis-server` on a free loopback port (Debian package
`redis-server`; `common.start_redis`, killed on any exit path), then runs
`bench/fanout.py` once per configuration: `single` (one process, in-process
broker) and `W workers`
(`python -m engine serve --workers W --broker redis://...`). With several
workers the kernel spreads the clients over them (SO_REUSEPORT), so most
deliveries cross from the publisher's worker to another one through Redis:
the latency reported is cross-node publish-to-delivery latency. Prints one
table and writes one record (`cluster-<transport>-<N>-<timestamp>.json`)
holding each configuration's fan-out results.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from engine.load.procs import BENCH_DIR, ChildGuard, RunError, start_redis
from engine.load.records import machine_info, utc_stamp, write_record

SERVER = "{python} -m engine serve --host {host} --port {port} --path {path} --timeout {timeout}"


def run_fanout(args: argparse.Namespace, server_cmd: str, results: Path) -> dict[str, Any]:
    command = [
        sys.executable,
        str(BENCH_DIR / "fanout.py"),
        "--clients",
        str(args.clients),
        "--subscribers",
        str(args.subscribers),
        "--messages",
        str(args.messages),
        "--rate",
        str(args.rate),
        "--transport",
        args.transport,
        "--server-cmd",
        server_cmd,
        "--results-dir",
        str(results),
        "--no-progress",
    ]
    before = set(results.glob("*.json"))
    done = subprocess.run(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=args.run_timeout
    )
    records = sorted(set(results.glob("*.json")) - before)
    if done.returncode != 0 or not records:
        sys.stdout.write(done.stdout.decode(errors="replace"))
        raise SystemExit(f"fanout.py failed for {server_cmd!r}")
    return json.loads(records[-1].read_text())["results"]


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
    parser.add_argument("--run-timeout", type=float, default=600.0, help="s per configuration")
    parser.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results")
    args = parser.parse_args(argv)
    workers = [int(w) for w in args.workers.split(",") if w.strip()]

    workdir = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    guard = ChildGuard()
    guard.install_signals()
    runs: dict[str, dict[str, Any]] = {}
    try:
        try:
            redis = start_redis(workdir, guard)
        except RunError as exc:
            raise SystemExit(f"bench/cluster.py: {exc}") from None
        broker = redis.url
        configurations = [("single process", SERVER)] + [
            (
                f"{w} worker{'s' if w > 1 else ''} + redis",
                f"{SERVER} --workers {w} --broker {broker}",
            )
            for w in workers
        ]
        for name, server_cmd in configurations:
            print(f"-- {name}", flush=True)
            runs[name] = run_fanout(args, server_cmd, workdir)
    finally:
        guard.kill_all()  # redis-server, whatever happened
        shutil.rmtree(workdir, ignore_errors=True)

    header = ("configuration", "p50 ms", "p99 ms", "delivered/s", "kept up", "RSS/client B")
    rows = [header]
    for name, result in runs.items():
        latency = result.get("latency_ms") or {}
        rows.append(
            (
                name,
                f"{latency.get('p50', float('nan')):.1f}",
                f"{latency.get('p99', float('nan')):.1f}",
                f"{result.get('delivered_per_s', 0):,.0f}",
                "yes" if result.get("kept_up") else "no",
                f"{result.get('bytes_per_client', 0):,.0f}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)))
    record = {
        "scenario": "cluster",
        "timestamp": utc_stamp(),
        "machine": machine_info(),
        "command": [
            sys.executable,
            "bench/cluster.py",
            *(argv if argv is not None else sys.argv[1:]),
        ],
        "parameters": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "results": {"configurations": runs},
    }
    path = write_record(
        args.results_dir, f"cluster-{args.transport}-{args.clients}-{utc_stamp()}", record
    )
    print(f"record: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
