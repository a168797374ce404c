#!/usr/bin/env python3
"""The engine's long-polling ``/meta/connect`` cycles per second against the bound.

Two servers are started side by side, each pinned to the same single CPU (the
first one this process may use; ``--no-pin`` to let the kernel choose):

* the engine, ``python -m engine serve``;
* the bound, ``engine/load/bare_server.py``: uvloop + httptools answering every
  request with a fixed ``/meta/connect`` reply, keep-alive: the fastest a
  Python HTTP loop can go.

The same load generator (``engine/load/cycler.py``'s lean HTTP/1.1 client, in
``--procs`` processes pinned to the other CPUs) runs C keep-alive clients, each
its own browser (own connection, own ``BAYEUX_BROWSER`` cookie), each looping
one request at a time:

* against the engine: handshake, a first connect, then
  ``/meta/connect`` with ``advice: {"timeout": 0}`` in a loop (answered at once),
  every reply checked for ``"successful":true``;
* against the bound: the same request bytes (a fake clientId of the same length),
  the same check.

Phases alternate bound, engine, bound, engine, ... (``--repeats`` of each), each
``--warmup`` + ``--duration`` seconds with fresh clients; the medians are
compared. Besides the throughput fraction (engine cycles/s / bound requests/s,
the target is >= 60 %), the server CPU time per request is reported
for both: when the load generators rather than the server limit a phase (the
server's CPU below ~90 % of its core), the CPU-cost fraction (bound us/request /
engine us/request) is the figure that still compares the servers.

``--profile FILE`` runs ``py-spy record`` on the engine during its first
measured window (py-spy must be installed: ``pip install py-spy``).

Exit status: 0 when the run completed (with --check: fraction >= --target),
1 when it could not run, 2 when --check failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from engine.load.churn import cores_mean, cpu_plan, limiter, start_pinned
from engine.load.cycler import run_workers, worker_specs
from engine.load.procs import (
    DEFAULT_SERVER_CMD,
    ChildGuard,
    ServerProcess,
    free_port,
    tree_rss_bytes,
)
from engine.load.records import (
    add_results_dir_arg,
    format_table,
    human_bytes,
    log,
    na,
    run_scenario,
    save_and_print,
    shell_join,
)

SCENARIO = "bound"
BOUND_CMD = "{python} -m engine.load.bare_server --host {host} --port {port}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bound.py",
        description="Long-polling /meta/connect cycles per second of the engine (advice "
        "timeout 0, C clients each looping) against requests per second of a minimal "
        "uvloop+httptools server with a fixed body, with the same client code in one run; "
        "prints the fraction engine / bound and writes a JSON record.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--clients", type=int, default=200, help="concurrent clients (C)")
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per phase")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds per phase")
    p.add_argument("--repeats", type=int, default=3, help="phases per server (alternating)")
    p.add_argument(
        "--procs",
        type=int,
        default=None,
        help="load generator processes (default: one per CPU left after the server's)",
    )
    p.add_argument("--source-addrs", type=int, default=1, help="source addresses 127.0.0.1..x")
    p.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="pin both servers to the first CPU and the generators to the others",
    )
    p.add_argument(
        "--server-cmd",
        default=DEFAULT_SERVER_CMD,
        help="engine command template ({python} {host} {port} {path} {timeout})",
    )
    p.add_argument("--bound-cmd", default=BOUND_CMD, help="bound server command template")
    p.add_argument("--host", default="127.0.0.1", help="address the servers listen on")
    p.add_argument("--path", default="/cometd", help="engine path")
    p.add_argument("--timeout", type=int, default=30000, help="engine connect timeout, ms")
    p.add_argument("--request-timeout", type=float, default=10.0, help="client request bound, s")
    p.add_argument("--startup-timeout", type=float, default=30.0, help="server start bound, s")
    p.add_argument("--target", type=float, default=0.6, help="fraction --check requires")
    p.add_argument("--check", action="store_true", help="exit 2 when fraction < --target")
    p.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="py-spy record the engine during its first window into this file "
        "(.svg flame graph, .json speedscope, .txt raw)",
    )
    add_results_dir_arg(p, "where the record goes")
    p.add_argument("--no-progress", action="store_true", help="no progress lines")
    p.add_argument("--note", default="", help="free text stored in the record")
    return p


def _profile_cmd(path: Path, pid: int, seconds: float) -> list[str] | None:
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not os.path.exists(exe):
        return None
    fmt = {".json": "speedscope", ".txt": "raw"}.get(path.suffix, "flamegraph")
    return [
        exe,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(max(1, int(seconds))),
        "--rate",
        "200",
        "--nonblocking",
        "--format",
        fmt,
        "--output",
        str(path),
    ]


async def _delayed_exec(cmd: list[str], delay: float) -> asyncio.subprocess.Process:
    await asyncio.sleep(delay)
    return await asyncio.create_subprocess_exec(
        *cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


async def run(args: argparse.Namespace, guard: ChildGuard) -> dict[str, Any]:
    progress = not args.no_progress
    server_cpus, gen_cpus = cpu_plan(args.pin)
    if args.procs is None:
        args.procs = max(1, len(gen_cpus) if gen_cpus else (os.cpu_count() or 2) - 1)
    servers: dict[str, ServerProcess] = {}
    urls: dict[str, str] = {}
    phases: list[dict[str, Any]] = []
    profile: dict[str, Any] | None = None
    try:
        for name, template in (("engine", args.server_cmd), ("bound", args.bound_cmd)):
            port = free_port(args.host)
            srv = ServerProcess.for_args(template, args, port, guard)
            url = await start_pinned(srv, args.startup_timeout, server_cpus, name, progress)
            servers[name] = srv
            urls[name] = url if name == "engine" else url.rstrip("/") + args.path
        rss_start = {n: tree_rss_bytes(s.pid or 0) for n, s in servers.items()}
        order = ["bound", "engine"] * args.repeats
        for i, name in enumerate(order):
            srv = servers[name]
            mode = "connect" if name == "engine" else "bound"
            specs = worker_specs(args, mode, urls[name], gen_cpus)
            prof_task = None
            if args.profile and name == "engine" and profile is None:
                cmd = _profile_cmd(args.profile, srv.pid or 0, max(1.0, args.duration - 1))
                profile = {
                    "command": None if cmd is None else shell_join(cmd),
                    "output": str(args.profile),
                }
                if cmd is None:
                    log(progress, "py-spy not found: no profile")
                else:
                    # the clients' set-up takes a moment: start inside the window, roughly
                    prof_task = asyncio.create_task(_delayed_exec(cmd, args.warmup + 0.5))
            t0 = time.monotonic()
            agg = await run_workers(
                specs=specs,
                guard=guard,
                warmup=args.warmup,
                measure=args.duration,
                server_pid=srv.pid,
                server_alive=srv.alive,
                ready_timeout=60.0,
                result_timeout=args.request_timeout + 15.0,
            )
            if prof_task is not None and profile is not None:
                prof_proc = await prof_task
                try:
                    _, err = await asyncio.wait_for(prof_proc.communicate(), args.duration + 30)
                    profile["exit_code"] = prof_proc.returncode
                    if prof_proc.returncode:
                        profile["stderr"] = err.decode(errors="replace")[-2000:]
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        prof_proc.kill()
            w = agg
            s = w["window_s"] or 1.0
            cores = w.get("cores") or {}
            phase = {
                "server": name,
                "index": i,
                "requests": w.get("responses", 0),
                "per_s": round(w.get("responses", 0) / s, 1),
                "window_s": s,
                "clients_ready": w["clients_ready"],
                "errors": w["errors"],
                "setup_errors": w["setup_errors"],
                "server_cpu_s": w["server_cpu_s"],
                "server_cpu_percent": None
                if w["server_cpu_s"] is None
                else round(100 * w["server_cpu_s"] / w["parent_wall_s"], 1),
                "server_cpu_per_request_us": None
                if not w.get("responses") or w["server_cpu_s"] is None
                else round(1e6 * w["server_cpu_s"] / w["responses"], 2),
                "loadgen_cpu_percent": round(100 * w["loadgen_cpu_tree_s"] / w["parent_wall_s"], 1),
                "loadgen_cpu_per_request_us": None
                if not w.get("responses")
                else round(1e6 * w["loadgen_cpu_tree_s"] / w["responses"], 2),
                "wall_s": round(time.monotonic() - t0, 2),
                "cores": cores,
                "server_core_busy_percent": cores_mean(cores, server_cpus, "busy_percent"),
                "server_core_softirq_percent": cores_mean(cores, server_cpus, "softirq_percent"),
                "loadgen_cores_busy_percent": cores_mean(cores, gen_cpus, "busy_percent"),
            }
            phases.append(phase)
            log(
                progress,
                f"  {name:6} {phase['per_s']:>10,.0f} /s   server CPU "
                f"{phase['server_cpu_percent']} % ({phase['server_cpu_per_request_us']} us/req), "
                f"loadgen CPU {phase['loadgen_cpu_percent']} %, cores busy "
                f"{phase['server_core_busy_percent']} / {phase['loadgen_cores_busy_percent']} %, "
                f"errors "
                f"{sum(phase['errors'].values())}",
            )
        rss_end = {n: tree_rss_bytes(s.pid or 0) for n, s in servers.items()}
        return {
            "urls": urls,
            "server_cmds": {n: shell_join(s.argv) for n, s in servers.items()},
            "pids": {n: s.pid for n, s in servers.items()},
            "cpus": {"servers": server_cpus, "loadgen": gen_cpus},
            "phases": phases,
            "rss_start": rss_start,
            "rss_end": rss_end,
            "profile": profile,
        }
    finally:
        for srv in servers.values():
            with contextlib.suppress(Exception):
                await srv.stop()


def _median(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return round(statistics.median(vals), 2) if vals else None


def compute(args: argparse.Namespace, out: dict[str, Any]) -> dict[str, Any]:
    phases = out["phases"]
    by = {n: [p for p in phases if p["server"] == n] for n in ("engine", "bound")}
    summary: dict[str, dict[str, Any]] = {}
    for n, ps in by.items():
        summary[n] = {
            "per_s": _median([p["per_s"] for p in ps]),
            "per_s_all": [p["per_s"] for p in ps],
            "server_cpu_percent": _median([p["server_cpu_percent"] for p in ps]),
            "server_cpu_per_request_us": _median([p["server_cpu_per_request_us"] for p in ps]),
            "loadgen_cpu_percent": _median([p["loadgen_cpu_percent"] for p in ps]),
            "loadgen_cpu_per_request_us": _median([p["loadgen_cpu_per_request_us"] for p in ps]),
            "errors": sum(sum(p["errors"].values()) for p in ps),
            "server_core_busy_percent": _median([p["server_core_busy_percent"] for p in ps]),
            "server_core_softirq_percent": _median([p["server_core_softirq_percent"] for p in ps]),
            "loadgen_cores_busy_percent": _median([p["loadgen_cores_busy_percent"] for p in ps]),
        }
        summary[n]["limited_by"] = limiter(
            summary[n]["server_core_busy_percent"], summary[n]["loadgen_cores_busy_percent"]
        )
    e, b = summary["engine"], summary["bound"]
    fraction = None if not e["per_s"] or not b["per_s"] else round(e["per_s"] / b["per_s"], 4)
    cpu_fraction = None
    if e["server_cpu_per_request_us"] and b["server_cpu_per_request_us"]:
        cpu_fraction = round(b["server_cpu_per_request_us"] / e["server_cpu_per_request_us"], 4)
    results = {
        "engine_cycles_per_s": e["per_s"],
        "bound_requests_per_s": b["per_s"],
        "fraction": fraction,
        "cpu_fraction": cpu_fraction,
        "target": args.target,
        "met": None if fraction is None else fraction >= args.target,
        "engine": e,
        "bound": b,
        "phases": phases,
        "rss_start_bytes": out["rss_start"],
        "rss_end_bytes": out["rss_end"],
        "cpus": out["cpus"],
        "profile": out["profile"],
    }
    parameters = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    parameters["urls"] = out["urls"]
    parameters["server_cmd"] = out["server_cmds"]["engine"]
    parameters["bound_server_cmd"] = out["server_cmds"]["bound"]
    return {"parameters": parameters, "results": results}


def table(record: dict[str, Any]) -> str:
    r = record["results"]
    p = record["parameters"]
    e, b = r["engine"], r["bound"]

    def f(v: Any, spec: str = "{:,.0f}") -> str:
        return na(v, spec)

    rows = [
        ("clients / load generators", f"{p['clients']} / {p['procs']}"),
        ("phases x seconds", f"{p['repeats']} x {p['duration']:.0f} per server, alternating"),
        ("engine /meta/connect cycles / s", f(e["per_s"])),
        ("bound requests / s", f(b["per_s"])),
        ("fraction engine / bound", f(r["fraction"], "{:.1%}") + f"  (target {r['target']:.0%})"),
        ("engine server CPU, us / cycle", f(e["server_cpu_per_request_us"], "{:.1f}")),
        ("bound server CPU, us / request", f(b["server_cpu_per_request_us"], "{:.1f}")),
        ("CPU-cost fraction bound / engine", f(r["cpu_fraction"], "{:.1%}")),
        (
            "engine: server / loadgen process CPU %",
            f"{f(e['server_cpu_percent'], '{:.0f}')} / {f(e['loadgen_cpu_percent'], '{:.0f}')}",
        ),
        (
            "bound: server / loadgen process CPU %",
            f"{f(b['server_cpu_percent'], '{:.0f}')} / {f(b['loadgen_cpu_percent'], '{:.0f}')}",
        ),
        (
            "engine: server / loadgen cores busy %",
            f"{f(e['server_core_busy_percent'], '{:.0f}')} / "
            f"{f(e['loadgen_cores_busy_percent'], '{:.0f}')}",
        ),
        (
            "bound: server / loadgen cores busy %",
            f"{f(b['server_core_busy_percent'], '{:.0f}')} / "
            f"{f(b['loadgen_cores_busy_percent'], '{:.0f}')}",
        ),
        ("engine limited by", e["limited_by"]),
        ("bound limited by", b["limited_by"]),
        ("errors engine / bound", f"{e['errors']} / {b['errors']}"),
        (
            "engine RSS start / end",
            f"{human_bytes(r['rss_start_bytes'].get('engine'))} / "
            f"{human_bytes(r['rss_end_bytes'].get('engine'))}",
        ),
    ]
    return format_table(
        rows, title=f"bound: /meta/connect cycles vs the bound, {p['clients']} clients"
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.clients < 1 or args.duration <= 0 or args.repeats < 1:
        raise SystemExit("bound.py: --clients, --duration and --repeats must be positive")
    if args.procs is not None and args.procs < 1:
        raise SystemExit("bound.py: --procs must be positive")
    if not args.host.startswith("127."):
        raise SystemExit("bound.py: --host must be a loopback address")
    record = run_scenario(
        SCENARIO,
        __file__,
        args,
        argv,
        lambda a, guard: compute(a, asyncio.run(run(a, guard))),
        say=print,
    )
    if isinstance(record, int):
        return record
    save_and_print(record, args.results_dir, f"{SCENARIO}-{args.clients}", table, "")
    if args.check and not record["results"]["met"]:
        sys.stderr.write("bound.py: --check failed: fraction below the target\n")
        return 2
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
