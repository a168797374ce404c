"""`python -m engine serve`: the command line, generated from ServerOptions."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence

from engine.options import ServerOptions
from engine.server import BayeuxServer

__all__ = ["main", "build_parser", "options_from_args"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m engine", description="A CometD-compatible Bayeux server."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="run the server",
        description="Run the Bayeux server until SIGINT or SIGTERM.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for f in dataclasses.fields(ServerOptions):
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        if str(f.type) == "bool":
            serve.add_argument(
                flag,
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=f.default,
                help=help_text,
            )
            continue
        serve.add_argument(
            flag,
            dest=f.name,
            type={"int": int, "str": str}[str(f.type)],
            default=f.default,
            help=help_text,
            metavar=f.name.upper(),
        )
    return parser


def options_from_args(args: argparse.Namespace) -> ServerOptions:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(ServerOptions)}
    return ServerOptions(**values)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        options = options_from_args(args)
    except ValueError as exc:
        print(f"engine: invalid options: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=options.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )

    if options.workers > 1:
        if not options.broker:
            print(
                f"engine: --workers {options.workers} needs --broker redis://HOST:PORT/DB: "
                "without a shared broker, a message published on one worker would not "
                "reach the subscribers of the others",
                file=sys.stderr,
            )
            return 2
        from engine.supervisor import run_supervisor

        return run_supervisor(options)

    def ready(server: BayeuxServer) -> None:
        print(f"engine serving {server.url}", flush=True)

    try:
        BayeuxServer(options).run(ready)
    except OSError as exc:
        print(f"engine: cannot listen on {options.host}:{options.port}: {exc}", file=sys.stderr)
        return 1
    return 0
