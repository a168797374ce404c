"""`python -m engine check --client`: a judging Bayeux server. A client under
test connects to it; the judge plays scripted situations on it (advice
`reconnect: handshake` and `none`, a changed `interval`, `multiple-clients`,
402, a cut or slow or stalled connect, a server-side disconnect) and reports,
for each, whether the client did what the protocol asks (PASS / FAIL, or SKIP
when the client never got there), as text and JUnit XML.

Design: one client session per situation. The situations are played in
script order (`--situations`, default all); each one starts with the next
*new* handshake, does its one thing on a held /meta/connect, and judges the
client's next moves within bounded windows (`Timing`). Several situations end
the client by design (`reconnect: none`), and one's leftover advice must not
colour the next, so the client is restarted between situations: when a
situation is judged, the judge answers that session's further messages with
402 and `reconnect: none`, and moves to the next situation, counted by
`generation` in `GET /judge/state` (JSON: generation, situation, done). A
driver runs the client under test in a loop: start a client, and whenever
`generation` changes, stop it and start a fresh one; stop when `done` (or when
the judge is gone). The drivers in tests/check/ do that for the CometD JS,
Faye and aiocometd-ng clients. A client that cannot be driven so can be run
once per judge run: `--situations NAME --once`.

Every wait is bounded: a handshake within `--handshake-wait`, each situation
within its own bound, the whole run within `--timeout-total`. SIGINT / SIGTERM
stop the judge; the situations not played are reported SKIP. `--once` stops
it when the script is over; without it, the judge starts the script again
for the next client, reporting each round.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import signal
import sys
from collections.abc import Sequence

from aiohttp import web

from engine.check.judge_server import JudgeServer, Timing
from engine.check.report import Status, Verdict, exit_status, junit_xml, text_report
from engine.check.situations import SITUATIONS, NotReached, Observed, Outcome, Situation, verdict

__all__ = ["main", "build_parser", "Judge"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m engine check --client",
        description="Serve Bayeux as a judge: play scripted situations on the client that "
        "connects (one fresh client session per situation) and report which it honoured.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="default: a free port (printed)")
    parser.add_argument("--path", default="/cometd", help="the Bayeux path (default /cometd)")
    parser.add_argument(
        "--situations",
        default=",".join(SITUATIONS),
        help="comma-separated, played in this order (default: all; see --list)",
    )
    parser.add_argument("--list", action="store_true", help="list the situations and exit")
    parser.add_argument("--once", action="store_true", help="exit when the script is over")
    parser.add_argument("--junit", metavar="FILE", help="also write JUnit XML there")
    parser.add_argument("--json", metavar="FILE", help="also write the verdicts as JSON there")
    parser.add_argument("--verbose", action="store_true", help="the exchange under every verdict")
    d = Timing()
    # Every wait of the judge is an option, its default the Timing field's.
    for field, text in TIMING_HELP.items():
        parser.add_argument(
            "--" + field.replace("_", "-"),
            type=float,
            default=getattr(d, field),
            help=f"{text}, s (default {getattr(d, field)})",
        )
    parser.add_argument(
        "--timeout-total", type=float, default=600.0, help="bound on a whole round, s (default 600)"
    )
    return parser


TIMING_HELP = {
    "hold": "advised timeout: how long a connect is held",
    "window": "how long the client's next move is waited for",
    "interval": "the interval advised in interval, multiple_clients",
    "handshake_wait": "how long a new client is waited for",
    "backoff": "how long a client may back off before retrying after a failure",
    "slow_extra": "slow_connect answers this long after the hold",
    "stall_cap": "stalled_connect waits this long for a retry",
}


class Judge:
    """Plays the script on a `JudgeServer`, one stage (situation) at a time."""

    def __init__(self, server: JudgeServer, script: Sequence[type[Situation]], total: float):
        self.server = server
        self.script = list(script)
        self.total = total

    async def run_script(self) -> list[Verdict]:
        """One round: every situation, each with a fresh client session. When
        cancelled (a signal), the rest are SKIP."""
        verdicts: list[Verdict] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.total
        gone: str | None = None  # why the rest is skipped
        try:
            for cls in self.script:
                if gone is None and loop.time() >= deadline:
                    gone = f"--timeout-total ({self.total:.0f} s) reached"
                if gone is not None:
                    verdicts += _skipped(cls, gone)
                    continue
                found, why = await self._play(cls, deadline)
                verdicts += found
                gone = why
        except asyncio.CancelledError:
            played = {v.name for v in verdicts}
            for cls in self.script:
                if cls.name not in played:
                    verdicts += _skipped(cls, "the judge was stopped")
            raise _Stopped(verdicts) from None
        return verdicts

    async def _play(
        self, cls: type[Situation], deadline: float
    ) -> tuple[list[Verdict], str | None]:
        """The situation's verdicts, and why the rest must be skipped (no client)."""
        server = self.server
        situation = cls(server, server.timing)
        stage = server.open_stage(cls.name)
        own = server.timing.handshake_wait + situation.bound()
        bound = min(own, deadline - stage.now())
        why: str | None = None
        try:
            outcomes = await asyncio.wait_for(situation.play(stage), bound)
        except NotReached as skip:
            outcomes = {cls.name: Outcome(Status.SKIP, str(skip))}
            if not stage.client_ids:
                why = f"no client ({skip} in {cls.name})"
        except TimeoutError:
            if bound < own:  # the round's bound, not the situation's
                why = f"--timeout-total ({self.total:.0f} s) reached"
                outcomes = {cls.name: Outcome(Status.SKIP, why)}
            else:
                outcomes = {cls.name: Outcome(Status.FAIL, f"not judged within {bound:.0f} s")}
        finally:
            server.close_stage(stage)
        seconds = stage.now() - stage.start
        names = [cls.name, *cls.extra]
        missing = Outcome(Status.SKIP, f"{cls.name} was not reached")
        return [verdict(cls, n, outcomes.get(n, missing), seconds, stage) for n in names], why


class _Stopped(Exception):
    def __init__(self, verdicts: list[Verdict]) -> None:
        self.verdicts = verdicts


def _skipped(cls: type[Situation], reason: str) -> list[Verdict]:
    return [
        verdict(cls, n, Outcome(Status.SKIP, reason), 0.0, None) for n in [cls.name, *cls.extra]
    ]


def report(verdicts: list[Verdict], args: argparse.Namespace, round_no: int) -> None:
    title = "client judge" + (f", round {round_no}" if not args.once else "")
    sys.stdout.write(text_report(verdicts, title=title, verbose=args.verbose))
    sys.stdout.flush()
    if args.junit:
        with open(args.junit, "wb") as out:
            out.write(junit_xml(verdicts, suite="client_judge"))
    if args.json:
        with open(args.json, "w") as out:
            json.dump([_as_json(v) for v in verdicts], out, indent=1)


def _as_json(v: Verdict) -> dict[str, object]:
    return {
        "name": v.name,
        "status": v.status.value,
        "observed": v.observed if isinstance(v, Observed) else "",
        "reason": v.reason,
        "seconds": round(v.seconds, 3),
    }


def _script(names: str) -> list[type[Situation]]:
    out = []
    for name in filter(None, (n.strip() for n in names.split(","))):
        if name not in SITUATIONS:
            raise SystemExit(f"unknown situation {name!r}; known: {', '.join(SITUATIONS)}")
        out.append(SITUATIONS[name])
    return out


async def serve(args: argparse.Namespace) -> int:
    timing = Timing(**{field: getattr(args, field) for field in TIMING_HELP})
    server = JudgeServer(args.path, timing)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(server.app, handle_signals=False, access_log=None)
    try:
        await runner.setup()
        site = web.TCPSite(runner, args.host, args.port)
        await site.start()
        port = runner.addresses[0][1]
        print(f"judge listening on http://{args.host}:{port}{server.path}", flush=True)
        return await rounds(server, args, stop)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(runner.cleanup(), 5)


async def rounds(server: JudgeServer, args: argparse.Namespace, stop: asyncio.Event) -> int:
    """Play the script (once, or again and again until `stop`), reporting each round."""
    status = 0
    for round_no in itertools.count(1):
        judge = Judge(server, _script(args.situations), args.timeout_total)
        task = asyncio.create_task(judge.run_script())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        task.cancel()  # (a no-op when the round is over)
        try:
            verdicts = await task
        except _Stopped as stopped:
            verdicts = stopped.verdicts
        except asyncio.CancelledError:  # stopped before the round began
            verdicts = [v for cls in _script(args.situations) for v in _skipped(cls, "stopped")]
        report(verdicts, args, round_no)
        status = max(status, exit_status(verdicts))
        if args.once or stop.is_set():
            server.done = True
            break
    return status


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list:
        for cls in SITUATIONS.values():
            print(f"{cls.name:18} {cls.rule}")
            for name, rule in cls.extra.items():
                print(f"{name:18} (with {cls.name}) {rule}")
        return 0
    _script(args.situations)  # unknown names: an error before listening
    return asyncio.run(serve(args))


if __name__ == "__main__":
    sys.exit(main())
