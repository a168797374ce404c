"""``python -m engine load URL`` (``bayeux-load``): a load generator for any
running Bayeux server (this engine, Faye, the CometD servers), over WebSocket
or long-polling.

The scenarios are engine.load's own (idle, fanout, churn, rate): this module
maps its options onto theirs, checks the server answers a Bayeux handshake
before loading it, finds the server's pid from its listening port when it is
local, runs the scenario against ``--compare URL2`` first and then URL
(``records.run_targets``), shows the live display (engine.load.live), and
writes one JSON record (even a partial one, ``"complete": false``), a summary
table, side by side with ``--compare``, and with ``--chart`` a PNG.

The record (``<results-dir>/load-<scenario>-<transport>-<N>-<labels>-<time>.json``):
``machine`` (CPU, memory, kernel, open-files limit, package versions, git
revision), ``command`` and ``command_line``, ``options``, ``complete``
(false when cut short; ``interrupted`` on Ctrl-C, with ``last_progress``),
``targets`` (one per server in the order run: ``label``, ``url``,
``server_pid``, the scenario's ``parameters`` and ``results`` or its
``error``, and the live display's ``timeline``), and with ``--compare``
``comparison`` (the side-by-side rows: what, URL, URL2, URL2/URL).

Exit status: 0 done, 1 could not run (bad URL, not a Bayeux server, limits),
2 usage, 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import math
import os
import re
import resource
import ssl
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from engine.load.idle import CLIENTS_PER_SOURCE, FD_MARGIN, PORTS_PER_SOURCE
from engine.load.records import (
    Target,
    format_comparison,
    is_loopback_url,
    run_targets,
    shell_join,
    utc_stamp,
    write_record,
)

PROG = "python -m engine load"
SCENARIOS = ("idle", "fanout", "churn", "rate")

LIMITS_HELP = """\
limits:
  open files   every client holds one socket, so each generator process needs
               about clients/procs + {margin} open files. The hard limit
               RLIMIT_NOFILE (`ulimit -Hn`) bounds that; generators raise their
               soft limit to it. Too few: more --procs, or raise the limit
               (ulimit -n, LimitNOFILE=, /etc/security/limits.conf).
  ports        a source address gives ~{ports:,} ephemeral ports to one server
               address; clients are spread over 127.0.0.1, 127.0.0.2, ...
               (--source-addrs, one per {per_source:,} clients by default), bound with
               IP_BIND_ADDRESS_NO_PORT so the kernel picks the port at connect.
  sizes        25,000 clients run from one command on a 2-core machine; 250,000
               need --procs of at least N / (open-files limit - {margin}) (this
               shell's hard limit: {limit}), --source-addrs 50 or more, and a
               server that holds them (the engine: --workers).
examples:
  python -m engine load http://127.0.0.1:8080/cometd --scenario idle --clients 5000
  python -m engine load http://127.0.0.1:8080/cometd --scenario fanout --clients 19000 \\
      --compare http://127.0.0.1:8000/bayeux
  python -m engine load http://127.0.0.1:8080/cometd --scenario rate --p99-bound-ms 100 \\
      --chart rate.png
"""


class LoadError(Exception):
    """Why the run cannot start, said to the user (exit 1)."""


# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Load any running Bayeux server over WebSocket or long-polling: hold "
        "idle sessions (idle), fan messages out to subscribers (fanout), storm handshakes "
        "(churn), or publish faster and faster until p99 crosses a bound (rate). Prints a "
        "summary table (side by side with --compare) and writes a JSON record.",
        epilog=LIMITS_HELP.format(
            limit=resource.getrlimit(resource.RLIMIT_NOFILE)[1],
            margin=FD_MARGIN,
            ports=PORTS_PER_SOURCE,
            per_source=CLIENTS_PER_SOURCE,
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("url", metavar="URL", help="the server's Bayeux URL, http(s)://host:port/path")
    p.add_argument("--scenario", choices=SCENARIOS, default="idle", help="what to run (idle)")
    p.add_argument("--transport", choices=["websocket", "long-polling"], default=None,
                   help="the clients' transport (websocket; churn: long-polling)")  # fmt: skip
    p.add_argument("--clients", type=int, default=1000, help="clients (sessions) in all, N")
    p.add_argument("--subscribers", type=int, default=None, help="fanout/rate: K hot ones")
    p.add_argument("--messages", type=int, default=None, help="fanout: messages to publish, M")
    p.add_argument("--rate", type=float, default=None, help="fanout: publishes/s; rate: first step")
    p.add_argument("--hold", type=float, default=None, help="idle: seconds the clients are held")
    p.add_argument(
        "--timeout",
        type=int,
        default=None,
        help="the server's connect timeout, ms (default: its handshake's advice; idle's hold)",
    )
    p.add_argument("--procs", type=int, default=None, help="generator processes (see limits)")
    p.add_argument("--source-addrs", type=int, default=None, help="source addresses 127.0.0.x")
    p.add_argument("--ramp-rate", type=float, default=None, help="clients started per second")
    p.add_argument("--ramp-timeout", type=float, default=None, help="bound on the ramp, s")
    p.add_argument("--drain-timeout", type=float, default=None, help="wait for late deliveries, s")
    p.add_argument("--p99-bound-ms", type=float, default=None, help="rate: stop above this p99")
    p.add_argument("--step-seconds", type=float, default=None, help="rate: length of a step, s")
    p.add_argument("--rate-factor", type=float, default=None, help="rate: next step's rate factor")
    p.add_argument("--max-steps", type=int, default=None, help="rate: at most this many steps")
    p.add_argument("--duration", type=float, default=None, help="churn: seconds of storm a round")
    p.add_argument(
        "--restart-command", default=None, help="churn: restarts the server mid-run (shell)"
    )
    p.add_argument("--server-pid", type=int, default=None, help="the server's pid (RSS, CPU)")
    p.add_argument("--name", default=None, help="URL's label in the tables (default host:port)")
    p.add_argument("--compare", metavar="URL2", default=None, help="also run against URL2, first")
    p.add_argument("--compare-pid", type=int, default=None, help="URL2's server pid")
    p.add_argument("--compare-name", default=None, help="URL2's label (default host:port)")
    p.add_argument(
        "--handshake-timeout", type=float, default=5.0, help="bound on the first handshake, s"
    )
    p.add_argument("--results-dir", type=Path, default=Path("load-results"))
    p.add_argument("--chart", type=Path, default=None, metavar="PATH", help="write a PNG chart")
    p.add_argument("--quiet", action="store_true", help="no live display (CI); tables still print")
    p.add_argument(
        "--yes",
        action="store_true",
        help="confirm loading a server off this machine (this build still refuses: its "
        "generators send from loopback only)",
    )
    p.add_argument("--note", default="", help="free text stored in the record")
    return p


def label_of(url: str, name: str | None) -> str:
    if name:
        return name
    u = urlsplit(url)
    return f"{u.hostname}:{u.port or (443 if u.scheme == 'https' else 80)}"


def check_url(url: str) -> None:
    u = urlsplit(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise LoadError(f"{url!r} is not an http:// or https:// URL (http://host:port/cometd)")
    with contextlib.suppress(ValueError):
        u.port  # noqa: B018 (raises on a bad port)
        return
    raise LoadError(f"{url!r} has a bad port")


def plan_text(args: argparse.Namespace, url: str) -> str:
    """What the run will send to ``url``, for the --yes question."""
    u = urlsplit(url)
    words = {
        "idle": "hold them idle (a connect per timeout each)",
        "fanout": f"subscribe {args.subscribers or 'K'} to a hot channel and publish to it",
        "churn": "handshake, subscribe and disconnect them in a storm",
        "rate": "publish to them faster and faster until the server falls behind",
    }[args.scenario]
    return (
        f"{PROG} would open {args.clients:,} {args.transport} sessions to {u.hostname} "
        f"(port {u.port}, path {u.path or '/'}) and {words}."
    )


#: The tool's options each handed to the scenario module as its own flag.
PASSED = (
    "clients",
    "transport",
    "subscribers",
    "messages",
    "rate",
    "hold",
    "timeout",
    "procs",
    "source_addrs",
    "ramp_rate",
    "ramp_timeout",
    "drain_timeout",
    "p99_bound_ms",
    "step_seconds",
    "rate_factor",
    "max_steps",
    "duration",
    "restart_command",
)


def scenario_argv(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[str]:
    """The scenario module's own options for this command line; LoadError
    for an option the scenario does not take (it would be ignored)."""
    known = {s for action in parser._actions for s in action.option_strings}
    out: list[str] = []
    for key in PASSED:
        value = getattr(args, key)
        flag = "--" + key.replace("_", "-")
        if value is None:
            continue
        if flag not in known:
            if key == "transport" and value == "long-polling":
                continue  # a scenario without the option runs long-polling
            raise LoadError(f"{flag} does not apply to the {args.scenario} scenario")
        out += [flag, str(value)]
    if args.scenario in ("fanout", "rate") and args.subscribers is None:
        out += ["--subscribers", str(max(1, args.clients // 10))]
    return [*out, "--url", args.url, "--no-progress", "--note", args.note]


class Scenario:
    """A scenario module as the tool drives it: its options, its run, its tables."""

    def __init__(
        self,
        args: Any,
        once: Callable[[Any, Any], dict[str, Any]],
        table: Callable[[dict[str, Any]], str],
        comparison: Callable[[str, dict[str, Any], dict[str, Any]], dict[str, Any]],
    ) -> None:
        self.args = args
        self.once = once
        self.table = table
        self.comparison = comparison


def load_scenario(args: argparse.Namespace) -> Scenario:
    """Parse the scenario's options with its own parser and check them with
    its own ``resolve`` (its SystemExit text becomes a LoadError)."""
    try:
        if args.scenario == "idle":
            from engine.load import idle

            a = idle.build_parser().parse_args(scenario_argv(args, idle.build_parser()))
            idle.resolve(a)
            return Scenario(a, lambda x, g: asyncio.run(idle.run(x, g)), idle.report_table,
                            idle.comparison)  # fmt: skip
        if args.scenario == "fanout":
            from engine.load import fanout

            a = fanout.build_parser().parse_args(scenario_argv(args, fanout.build_parser()))
            fanout.resolve(a)
            return Scenario(a, lambda x, g: asyncio.run(fanout.run(x, g)), fanout.report_table,
                            fanout.comparison)  # fmt: skip
        if args.scenario == "rate":
            from engine.load import rate

            a = rate.build_parser().parse_args(scenario_argv(args, rate.build_parser()))
            rate.resolve(a)
            return Scenario(a, lambda x, g: asyncio.run(rate.run(x, g)), rate.report_table,
                            rate.comparison)  # fmt: skip
        from engine.load import churn

        parser = churn.build_parser()
        if not any("--url" in action.option_strings for action in parser._actions):
            raise LoadError("churn against a running server needs engine.load.churn --url "
                            "(not in this version); run python -m engine.load.churn")  # fmt: skip
        a = parser.parse_args(scenario_argv(args, parser))
        resolve = getattr(churn, "resolve", None)  # main()'s checks, when split out
        if resolve is not None:
            resolve(a)
        return Scenario(
            a,
            lambda x, g: churn.compute_churn(x, asyncio.run(churn.run_churn(x, g))),
            churn.churn_table,
            churn.comparison,
        )
    except SystemExit as exc:
        if isinstance(exc.code, str):  # a scenario's own refusal: "fanout.py: why"
            raise LoadError(re.sub(r"^\w+(\.py)?: ", "", exc.code)) from None
        raise


def check_open_files(args: argparse.Namespace) -> None:
    """Refuse more clients per generator than the open-files limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = soft if hard == resource.RLIM_INFINITY else hard
    procs = args.procs or 1
    if args.procs is None:
        procs = max(1, math.ceil(args.clients / max(1, limit - FD_MARGIN)))
    per_proc = math.ceil(args.clients / max(1, procs))
    if per_proc + FD_MARGIN > limit:
        need = math.ceil(args.clients / max(1, limit - FD_MARGIN))
        raise LoadError(
            f"{args.clients:,} clients over {procs} generator process(es) need about "
            f"{per_proc + FD_MARGIN:,} open files each, but the open-files limit (RLIMIT_NOFILE, "
            f"`ulimit -n`, hard {limit:,}) allows {limit:,}: use --procs {need} or more, "
            "or raise the limit (ulimit -n)"
        )


# --------------------------------------------------------------------------- the server


def handshake(url: str, timeout: float) -> dict[str, Any]:
    """One Bayeux handshake over long-polling: the reply, or LoadError saying
    why this is not a Bayeux server that answers."""
    u = urlsplit(url)
    conn_class = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
    kwargs: dict[str, Any] = {"timeout": timeout}
    if u.scheme == "https":
        kwargs["context"] = ssl.create_default_context()
    conn = conn_class(u.hostname or "", u.port, **kwargs)
    body = json.dumps(
        [
            {
                "channel": "/meta/handshake",
                "version": "1.0",
                "minimumVersion": "1.0",
                "supportedConnectionTypes": ["long-polling", "websocket"],
                "id": "1",
            }
        ]
    )
    where = f"{u.hostname}:{u.port}"
    try:
        conn.request(
            "POST",
            u.path or "/",
            body=body,
            headers={"Content-Type": "application/json;charset=UTF-8"},
        )
        resp = conn.getresponse()
        data = resp.read(65536)
    except ConnectionRefusedError:
        raise LoadError(f"nothing listens at {where} (connection refused)") from None
    except TimeoutError:
        raise LoadError(
            f"{where} did not answer a Bayeux handshake within {timeout:g} s "
            "(the server is too slow or does not speak HTTP; --handshake-timeout)"
        ) from None
    except (ConnectionResetError, http.client.RemoteDisconnected, BrokenPipeError):
        raise LoadError(f"{where} closed the connection without answering a handshake") from None
    except (OSError, http.client.HTTPException) as exc:
        raise LoadError(f"{where}: the handshake failed: {exc}") from None
    finally:
        conn.close()
    try:
        reply = json.loads(data)
        first = reply[0]
        ok = isinstance(first, dict) and first.get("channel") == "/meta/handshake"
    except (ValueError, TypeError, IndexError, KeyError):
        ok = False
    if not ok:
        kind = resp.getheader("Content-Type") or "no content type"
        raise LoadError(
            f"{url} is not a Bayeux server: a handshake got HTTP {resp.status} ({kind}), "
            f"body {data[:80]!r}"
        )
    if first.get("successful") is not True:
        raise LoadError(f"{url} refused the handshake: {first.get('error') or first}")
    return dict(first)


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            next(f, None)
            for line in f:
                cols = line.split()
                if len(cols) > 9 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(cols[9])
    return inodes


def listening_pid(port: int) -> int | None:
    """The pid of the process listening on TCP ``port`` of this machine
    (/proc/net/tcp, then every /proc/PID/fd); when several share it, their
    common parent (a supervisor's workers) or else the eldest. None when none
    is found or readable."""
    inodes = _listening_inodes(port)
    if not inodes:
        return None
    links = {f"socket:[{i}]" for i in inodes}
    found: list[int] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in os.scandir(f"/proc/{entry.name}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(fd.path) in links:
                        found.append(int(entry.name))
                        break
    if not found:
        return None

    def parent(pid: int) -> int | None:
        try:
            with open(f"/proc/{pid}/stat") as f:
                return int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return None

    roots = [p for p in found if parent(p) not in found]
    parents = {parent(p) for p in roots}
    if len(roots) > 1 and len(parents) == 1:
        # Workers listening each on its own socket (SO_REUSEPORT) under one
        # supervisor: the server is the supervisor's tree.
        (supervisor,) = parents
        if supervisor is not None and supervisor > 1 and supervisor != os.getpid():
            return supervisor
    return min(roots or found)


# --------------------------------------------------------------------------- output


def print_summary(record: dict[str, Any], scenario: Scenario) -> None:
    for entry in record["targets"]:
        if "results" in entry:
            print(scenario.table({**entry, "label": entry["label"]}))
        else:
            print(f"{entry['label']}: no results: {entry.get('error', 'interrupted')}")
        print()
    comp = record.get("comparison")
    if comp is not None:
        second, first = record["targets"][0]["label"], record["targets"][1]["label"]
        print(
            format_comparison(
                [tuple(r) for r in comp["rows"]],
                names=(first, second, "ratio"),
                title=f"{record['scenario']} side by side (ratio: {second} / {first})",
            )
        )
        print()


def record_name(args: argparse.Namespace, labels: Sequence[str], stamp: str) -> str:
    tail = "-vs-".join(re.sub(r"[^A-Za-z0-9.]+", "_", x) for x in labels)
    return f"load-{args.scenario}-{args.transport}-{args.clients}-{tail}-{stamp}"


def main(argv: list[str] | None = None) -> int:
    raw = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(raw)
    try:
        return run(args, raw)
    except LoadError as exc:
        sys.stderr.write(f"{PROG}: {exc}\n")
        return 1
    except KeyboardInterrupt:  # before the run started (its own Ctrl-C writes a record)
        sys.stderr.write(f"{PROG}: interrupted\n")
        return 130


def run(args: argparse.Namespace, raw: list[str]) -> int:
    from engine.load.live import LiveProgress

    if args.transport is None:  # churn's handshake storms are long-polling by default
        args.transport = "long-polling" if args.scenario == "churn" else "websocket"
    urls = [args.url] + ([args.compare] if args.compare else [])
    for url in urls:
        check_url(url)
    remote = [u for u in urls if not is_loopback_url(u)]
    for url in remote:
        sys.stderr.write(plan_text(args, url) + "\n")
    if remote and not args.yes:
        raise LoadError("the server is not on this machine; add --yes to send it that load")
    if remote:
        # The generators and the publisher refuse source addresses off 127.0.0.0/8
        # (engine.load.client, engine.load.publisher): say so before starting them.
        raise LoadError(
            "this build's load generators connect only from 127.0.0.0/8 source addresses, "
            "so they cannot reach a server off this machine; run the tool on the server's host"
        )
    if args.clients < 1:
        raise LoadError("--clients must be at least 1")
    check_open_files(args)
    scenario = load_scenario(args)  # the options checked before anything is sent
    labels = [label_of(args.url, args.name)]
    pids = [args.server_pid]
    if args.compare:
        labels.append(label_of(args.compare, args.compare_name))
        pids.append(args.compare_pid)
        if labels[0] == labels[1]:
            labels = [f"{labels[0]} (URL)", f"{labels[1]} (URL2)"]
    replies: dict[str, dict[str, Any]] = {}
    for i, url in enumerate(urls):
        reply = replies[url] = handshake(url, args.handshake_timeout)
        if pids[i] is None and is_loopback_url(url):
            pids[i] = listening_pid(urlsplit(url).port or 80)
        if not args.quiet:
            sys.stderr.write(
                f"{labels[i]}: Bayeux {reply.get('version', '?')}, "
                f"transports {', '.join(reply.get('supportedConnectionTypes') or [])}, "
                f"server pid {pids[i] if pids[i] is not None else 'unknown'}\n"
            )
    advice = [(r.get("advice") or {}).get("timeout") for r in replies.values()]
    advised = [t for t in advice if isinstance(t, int) and t > 0]
    if args.timeout is None and advised:
        # the servers' own connect timeout (idle holds two of them by default)
        args.timeout = max(advised)
        scenario = load_scenario(args)
    # --compare URL2 runs first, then URL
    targets = [Target(label, url, pid) for label, url, pid in zip(labels, urls, pids, strict=True)]
    targets.reverse()
    with LiveProgress(args.quiet, args.clients) as live:
        record, code = run_targets(
            args.scenario,
            scenario.args,
            targets,
            scenario.once,
            comparison=scenario.comparison,
            say=(lambda text: None) if args.quiet else (lambda text: sys.stderr.write(text + "\n")),
            on_target=live.start_target,
        )
        if not record["complete"]:
            record["last_progress"] = live.last
    for entry in record["targets"]:
        # what the server says of itself (its Bayeux version, transports, advice, ext)
        reply = replies[entry["url"]]
        entry["handshake"] = {k: reply.get(k) for k in ("version", "supportedConnectionTypes",
                                                         "advice", "ext")}  # fmt: skip
    record["command"] = [sys.executable, "-m", "engine", "load", *raw]
    record["command_line"] = shell_join(["python", "-m", "engine", "load", *raw])
    record["tool"] = "engine load"
    record["note"] = args.note
    record["options"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    path = write_record(args.results_dir, record_name(args, labels, utc_stamp()), record)
    print_summary(record, scenario)
    if record.get("interrupted"):
        print("interrupted: the record is partial (complete: false)")
    for entry in record["targets"]:
        if "error" in entry:
            sys.stderr.write(f"{PROG}: {entry['label']}: {entry['error']}\n")
    if args.chart is not None:
        from engine.load.charts import ChartError, draw

        try:
            print(f"chart: {draw(record, args.chart)}")
        except ChartError as exc:
            sys.stderr.write(f"{PROG}: {exc}\n")
    print(f"record: {path}")
    return code


if __name__ == "__main__":
    sys.exit(main())
