"""`python -m engine serve`: the command line, generated from ServerOptions."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from engine.options import ServerOptions
from engine.server import BayeuxServer
from engine.supervisor import WORKER_OPTIONS_ENV

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
            type={"int": int, "float": float, "str": str}[str(f.type)],
            default=f.default,
            help=help_text,
            metavar=f.name.upper(),
        )
    serve.add_argument(
        "--app",
        metavar="MODULE:ATTR",
        help="serve an application's BayeuxServer (or a callable returning one); "
        "options given here override the application's",
    )
    return parser


def load_app(spec: str) -> BayeuxServer:
    """`package.module:attr` -> the application's server object."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"--app wants MODULE:ATTR, got {spec!r}")
    sys.path.insert(0, ".")  # as `python -m` would, for an app beside the cwd
    try:
        module = importlib.import_module(module_name)
    finally:
        sys.path.pop(0)
    value = getattr(module, attr, None)
    if value is None:
        raise ValueError(f"module {module_name!r} has no attribute {attr!r}")
    if not isinstance(value, BayeuxServer) and callable(value):
        value = value()
    if not isinstance(value, BayeuxServer):
        raise ValueError(f"{spec} is not a BayeuxServer (nor a callable returning one)")
    return value


def explicit_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options given on the command line (those that differ from the default)."""
    return {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(ServerOptions)
        if getattr(args, f.name) != f.default
    }


def options_from_args(args: argparse.Namespace) -> ServerOptions:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(ServerOptions)}
    return ServerOptions(**values)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    app: BayeuxServer | None = None
    try:
        # A worker of `--workers` gets its options from the supervisor in the
        # environment (secrets stay off the command line).
        given = os.environ.pop(WORKER_OPTIONS_ENV, None)
        overrides = json.loads(given) if given else explicit_options(args)
        if args.app:
            app = load_app(args.app)
            app.configure(**overrides)
            options = app.options
        elif given:
            options = ServerOptions(**overrides)
        else:
            options = options_from_args(args)
    except (ValueError, ImportError) as exc:
        print(f"engine: {exc}", file=sys.stderr)
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

        return run_supervisor(options, app=args.app)

    def ready(server: BayeuxServer) -> None:
        print(f"engine serving {server.url}", flush=True)

    try:
        (app or BayeuxServer(options)).run(ready)
    except OSError as exc:
        print(f"engine: cannot listen on {options.host}:{options.port}: {exc}", file=sys.stderr)
        return 1
    return 0
