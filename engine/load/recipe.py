"""Run a load scenario with a published figure's parameters as its defaults.

A recipe (bench/idle.py, bench/fanout.py, ...) names the parameters behind
one figure of the README or bench/results/REPORT.md; :func:`run` puts them in
front of the arguments given, so ``python bench/idle.py`` reproduces the
figure and ``python bench/idle.py --clients 200`` changes one parameter of it.

A figure's option is left out when the arguments name it themselves, and
``--peer none`` leaves the peer out. The peer is also left out when the
arguments hold an option that rules a peer run out (``without_peer``: a server
given by URL, several workers, TLS, ...), so every command written for the
scenario itself still means what it meant.

The record's command line is the recipe's with the figure's options written
out: it reruns the same run whatever the recipe's defaults become.
:func:`run_once` runs a scenario inside a recipe that compares several runs
(bench/cluster.py, bench/history.py).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import Any

from engine.load.procs import ChildGuard


def _named(option: str, argv: Sequence[str]) -> bool:
    return any(a == option or a.startswith(option + "=") for a in argv)


def expand(
    figure: Mapping[str, str | None],
    argv: Sequence[str],
    without_peer: Sequence[str] = (),
) -> list[str]:
    """The figure's options the arguments do not name (a value of None: a
    flag), then the arguments, without a ``--peer none``."""
    peerless = any(_named(option, argv) for option in without_peer)
    out: list[str] = []
    for option, value in figure.items():
        if _named(option, argv) or (option == "--peer" and peerless):
            continue
        out += [option] if value is None else [option, value]
    args = list(argv)
    for i, a in enumerate(args):
        if a == "--peer=none" or (a == "--peer" and args[i + 1 : i + 2] == ["none"]):
            del args[i : i + (1 if "=" in a else 2)]
            break
    return out + args


def run(
    main: Callable[[], int],
    figure: Mapping[str, str | None],
    without_peer: Sequence[str] = (),
) -> int:
    """Run the scenario's ``main`` as this recipe's command with the figure's
    defaults written out (``sys.argv`` is what the scenario parses and records)."""
    sys.argv[1:] = expand(figure, sys.argv[1:], without_peer)
    return main()


def run_once(scenario: ModuleType, argv: list[str]) -> dict[str, Any]:
    """One run of a scenario module (`engine.load.fanout`, ...) in this
    process, against the server its arguments name, without writing a record:
    its parameters and results. Every child it started is killed after."""
    args = scenario.build_parser().parse_args(argv)
    scenario.resolve(args)
    guard = ChildGuard()
    try:
        outcome: dict[str, Any] = asyncio.run(scenario.run(args, guard))
    finally:
        guard.kill_all()
    return outcome
