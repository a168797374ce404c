"""`python -m engine check URL`: run the server checks against a Bayeux
server and report PASS/FAIL/SKIP per check (text, and JUnit XML with
`--junit`).  `--client` hands over to the client judge.

Exit status: 0 every check passed or was skipped, 1 a check failed, 2 a usage
error, an unreachable server, or a non-loopback URL without `--yes`.
"""

from __future__ import annotations

import argparse
import asyncio
import fnmatch
import sys
import time
from collections.abc import Sequence

from engine.check.bayeux import CheckFailed, CheckSkipped, Context, Facts
from engine.check.report import Exchange, Status, Verdict, exit_status, junit_xml, text_report
from engine.check.server_checks import CHECKS, FEATURES, Check
from engine.check.wire import Endpoint, WireError

__all__ = ["main", "build_parser", "Settings", "run_checks", "select"]

MAX_ADVISED_TIMEOUT = 600_000  # ms; beyond it the hold-waiting checks skip anyway
# Rough traffic per check, for the notice before a non-loopback run.
REQUESTS_PER_CHECK = 12
SESSIONS_PER_CHECK = 3


class Settings:
    def __init__(self, args: argparse.Namespace) -> None:
        self.check_timeout: float = args.check_timeout
        self.request_timeout: float = min(args.request_timeout, args.check_timeout)
        self.total_timeout: float = args.total_timeout
        features = {name for name, (default, _) in FEATURES.items() if default}
        for name in FEATURES:
            value = getattr(args, name)
            if value is True:
                features.add(name)
            elif value is False:
                features.discard(name)
        self.features = frozenset(features)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m engine check",
        description="Black-box conformance checks for a Bayeux (CometD) server, over raw "
        "HTTP long-polling, callback-polling and WebSocket.  Use --client to judge a "
        "client instead.",
    )
    parser.add_argument(
        "url", nargs="?", help="the server's Bayeux URL, e.g. http://127.0.0.1:8080/cometd"
    )
    parser.add_argument("--list", action="store_true", help="list the checks and exit")
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="NAME",
        help="run only these checks (names, groups, or shell patterns like 'connect.*')",
    )
    flags = {
        "websocket": ("--no-websocket", "the server has no WebSocket transport: skip its checks"),
        "jsonp": ("--no-jsonp", "the server has no callback-polling (JSONP): skip its checks"),
        "browser_cookie": (
            "--no-browser-cookie",
            "the server sets no BAYEUX_BROWSER cookie: skip the browser checks",
        ),
        "ack": ("--ack", "also check the acknowledge extension (ext.ack)"),
        "timesync": ("--timesync", "also check the timesync extension (ext.timesync)"),
        "strict": ("--strict", "also check this engine's rules stronger than the protocol's"),
    }
    for dest, (flag, text) in flags.items():
        value = not flag.startswith("--no-")
        parser.add_argument(flag, dest=dest, action="store_const", const=value, help=text)
    parser.add_argument(
        "--check-timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="most seconds one check may take (default 60); a check needing to wait out "
        "longer connect holds is skipped",
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds to wait for an answer not held by the server (default 10)",
    )
    parser.add_argument(
        "--total-timeout",
        type=float,
        default=900.0,
        metavar="S",
        help="most seconds for the whole run (default 900); checks left then FAIL",
    )
    parser.add_argument("--junit", metavar="FILE", help="also write JUnit XML to FILE")
    parser.add_argument("-v", "--verbose", action="store_true", help="wire exchange of every check")
    parser.add_argument(
        "--yes", action="store_true", help="run against a host that is not loopback"
    )
    return parser


def select(patterns: Sequence[str] | None) -> list[Check]:
    """The checks named by `patterns` (all when None), in registration order."""
    if not patterns:
        return list(CHECKS.values())
    chosen = [
        c
        for c in CHECKS.values()
        if any(fnmatch.fnmatchcase(c.name, p) or p == c.group for p in patterns)
    ]
    unknown = [
        p
        for p in patterns
        if not any(fnmatch.fnmatchcase(c.name, p) or p == c.group for c in CHECKS.values())
    ]
    if unknown:
        raise ValueError(f"no check matches {', '.join(unknown)} (see --list)")
    return chosen


def list_checks() -> str:
    lines = []
    for c in CHECKS.values():
        needs = f"  [needs {c.feature}]" if c.feature and not FEATURES[c.feature][0] else ""
        lines.append(f"{c.name:34} {c.group:16}{needs}\n    {c.rule}")
    return "\n".join(lines) + "\n"


def traffic_notice(endpoint: Endpoint, checks: Sequence[Check]) -> str:
    return (
        f"{endpoint.host} is not a loopback address.  engine check would send about "
        f"{len(checks) * REQUESTS_PER_CHECK} HTTP requests and WebSocket frames and open "
        f"about {len(checks) * SESSIONS_PER_CHECK + 20} Bayeux sessions (handshakes) on "
        f"{endpoint.url}, running {len(checks)} checks; it subscribes and publishes only on "
        "channels under /check/ (and /service/check/), small JSON messages, and disconnects "
        "its sessions or lets them expire.\nRe-run with --yes to do so."
    )


async def probe(endpoint: Endpoint, settings: Settings) -> Facts:
    """Learn the server's advice and connection types from one handshake and
    connect.  Raises WireError when nothing accepts a TCP connection."""
    reader, writer = await endpoint.open(settings.request_timeout)
    writer.close()
    facts = Facts()
    ctx = Context(
        endpoint, features=settings.features, facts=facts, request_timeout=settings.request_timeout
    )
    try:
        session = await ctx.handshake()
        types = session.handshake_reply.get("supportedConnectionTypes")
        if isinstance(types, list):
            facts.connection_types = tuple(str(t) for t in types)
        advice = session.handshake_reply.get("advice")
        reply = await session.connect(hold=False)
        for source in (reply.get("advice"), advice):
            if isinstance(source, dict) and isinstance(source.get("timeout"), int | float):
                # Bounded: a server advising hours must not make the run take hours.
                facts.timeout_ms = max(0, min(int(source["timeout"]), MAX_ADVISED_TIMEOUT))
                facts.interval_ms = int(source.get("interval") or 0)
                break
        await session.disconnect()
    except (CheckFailed, WireError, KeyError, ValueError) as exc:
        facts.probe_error = str(exc)
    finally:
        ctx.close()
    return facts


def skip_reason(check: Check, settings: Settings, facts: Facts) -> str:
    if check.feature and check.feature not in settings.features:
        return f"needs {FEATURES[check.feature][1]}"
    if check.transport and facts.connection_types and check.transport not in facts.connection_types:
        return (
            f"the server does not offer {check.transport} "
            f"(supportedConnectionTypes {list(facts.connection_types)})"
        )
    wait = facts.hold * check.holds + settings.request_timeout
    if check.holds and wait > settings.check_timeout:
        return (
            f"needs to wait out a {facts.hold:.0f} s connect hold, more than "
            f"--check-timeout {settings.check_timeout:g}"
        )
    return ""


async def run_one(check: Check, endpoint: Endpoint, settings: Settings, facts: Facts) -> Verdict:
    verdict = Verdict(check.name, Status.PASS, rule=check.rule, group=check.group)
    reason = skip_reason(check, settings, facts)
    if reason:
        verdict.status, verdict.reason = Status.SKIP, reason
        return verdict
    exchange = Exchange()
    verdict.exchange = exchange
    ctx = Context(
        endpoint,
        features=settings.features,
        facts=facts,
        request_timeout=settings.request_timeout,
        exchange=exchange,
    )
    budget = min(
        settings.check_timeout, 3 * settings.request_timeout + (check.holds + 2) * facts.hold
    )
    start = time.monotonic()
    try:
        note = await asyncio.wait_for(check.run(ctx), budget)
        verdict.reason = note or ""
    except CheckFailed as exc:
        verdict.status, verdict.reason = Status.FAIL, str(exc)
    except CheckSkipped as exc:
        verdict.status, verdict.reason = Status.SKIP, str(exc)
    except TimeoutError:
        verdict.status = Status.FAIL
        verdict.reason = f"the check did not finish within its {budget:.1f} s"
        exchange.note(verdict.reason)
    except Exception as exc:  # a server answer the check did not foresee
        verdict.status = Status.FAIL
        verdict.reason = f"unexpected answer ({type(exc).__name__}: {exc})"
    finally:
        ctx.close()
        verdict.seconds = time.monotonic() - start
    if facts.probe_error and verdict.failed:
        verdict.reason += f" (the probe handshake failed too: {facts.probe_error})"
    return verdict


async def run_checks(
    endpoint: Endpoint, checks: Sequence[Check], settings: Settings, facts: Facts
) -> list[Verdict]:
    """Every check in turn (one at a time: timing checks need a quiet server)."""
    deadline = time.monotonic() + settings.total_timeout
    verdicts = []
    for check in checks:
        if time.monotonic() > deadline:
            verdicts.append(
                Verdict(
                    check.name,
                    Status.FAIL,
                    rule=check.rule,
                    group=check.group,
                    reason=f"not run: --total-timeout {settings.total_timeout:g} s exceeded",
                )
            )
            continue
        verdicts.append(await run_one(check, endpoint, settings, facts))
    return verdicts


def print_report(text: str) -> None:
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.text import Text

        console = Console(highlight=False)
        colours = {"PASS": "green", "FAIL": "bold red", "SKIP": "yellow"}
        for line in text.splitlines():
            console.print(Text(line, style=colours.get(line[:4], "")))
    else:
        sys.stdout.write(text)
        sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    """`python -m engine check ...`, and the `bayeux-check` console script
    (which passes no argv: the process's own)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--client" in argv:
        from engine.check import client_judge

        rest = [a for a in argv if a != "--client"]
        return int(client_judge.main(rest))
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return 0 if exc.code == 0 else 2
    if args.list:
        sys.stdout.write(list_checks())
        return 0
    if not args.url:
        parser.print_usage(sys.stderr)
        print("engine check: a server URL is needed (or --list)", file=sys.stderr)
        return 2
    if args.check_timeout <= 0 or args.request_timeout <= 0 or args.total_timeout <= 0:
        print("engine check: timeouts must be positive", file=sys.stderr)
        return 2
    try:
        endpoint = Endpoint.parse(args.url)
        checks = select(args.only)
    except ValueError as exc:
        print(f"engine check: {exc}", file=sys.stderr)
        return 2
    if not endpoint.is_loopback() and not args.yes:
        print(traffic_notice(endpoint, checks), file=sys.stderr)
        return 2
    settings = Settings(args)
    return asyncio.run(run(endpoint, checks, settings, args))


async def run(
    endpoint: Endpoint, checks: Sequence[Check], settings: Settings, args: argparse.Namespace
) -> int:
    try:
        facts = await probe(endpoint, settings)
    except WireError as exc:
        print(f"engine check: cannot reach {endpoint.url}: {exc}", file=sys.stderr)
        return 2
    verdicts = await run_checks(endpoint, checks, settings, facts)
    title = f"engine check {endpoint.url}"
    if facts.probe_error:
        title += f"\n(probe handshake failed: {facts.probe_error}; assumed advice timeout 30000)"
    else:
        title += (
            f"  (advice timeout {facts.timeout_ms} ms, connection types "
            f"{', '.join(facts.connection_types) or '?'})"
        )
    print_report(text_report(verdicts, title=title, verbose=args.verbose))
    if args.junit:
        with open(args.junit, "wb") as out:
            out.write(junit_xml(verdicts, suite="engine-check"))
    return exit_status(verdicts)
