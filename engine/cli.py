"""`python -m engine serve` and `config`: the command line, generated from ServerOptions
(the layers under it are engine.config's)."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from engine import __version__
from engine.config import (
    CONFIG_ENV,
    SECRETS,
    from_env,
    from_file,
    masked,
    read_secret_files,
    to_toml,
)
from engine.options import ServerOptions
from engine.server import BayeuxServer, tls_context
from engine.supervisor import WORKER_OPTIONS_ENV

__all__ = ["main", "build_parser", "layered_options", "options_from_args"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m engine", description="A CometD-compatible Bayeux server."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="run the server",
        description="Run the Bayeux server until SIGINT or SIGTERM. Options come from "
        "the config file, then ENGINE_<OPTION> environment variables, then these flags.",
    )
    add_option_flags(serve)
    show = commands.add_parser(
        "config",
        help="print the effective configuration (secrets masked)",
        description="Print the options `serve` would run with, as TOML (a config file "
        "that loads back as is), after the config file, the environment and these flags.",
    )
    add_option_flags(show)
    return parser


def add_option_flags(parser: argparse.ArgumentParser) -> None:
    """A flag per ServerOptions field; only the flags given end up in the namespace
    (so a flag equal to its default still overrides the file, the environment
    and the --app's options)."""
    for f in dataclasses.fields(ServerOptions):
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata.get('help', '')} (default: {f.default!r})"
        if str(f.type) == "bool":
            parser.add_argument(
                flag,
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
            continue
        parser.add_argument(
            flag,
            dest=f.name,
            type={"int": int, "float": float, "str": str}[str(f.type)],
            default=argparse.SUPPRESS,
            help=help_text,
            metavar=f.name.upper(),
        )
    for name in SECRETS:
        parser.add_argument(
            "--" + name.replace("_", "-") + "-file",
            dest=name + "_file",
            default=argparse.SUPPRESS,
            metavar="PATH",
            help=f"read {name} from this file (keeps it off the command line)",
        )
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help=f"a TOML file of options (default: ${CONFIG_ENV}, if set)",
    )
    parser.add_argument(
        "--app",
        metavar="MODULE:ATTR",
        default=None,
        help="serve an application's BayeuxServer (or a callable returning one); "
        "the config file, environment and flags override the application's options",
    )


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


def layered_options(
    args: argparse.Namespace, environ: Mapping[str, str], unknown: list[str] | None = None
) -> dict[str, Any]:
    """The options set by the config file, then the environment, then the flags."""
    values: dict[str, Any] = {}
    path = args.config or environ.get(CONFIG_ENV)
    if path:
        values.update(from_file(path))
    values.update(from_env(environ, unknown))
    given = {k: v for k, v in vars(args).items() if k not in ("command", "config", "app")}
    values.update(read_secret_files(given))
    return values


def options_from_args(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> ServerOptions:
    """ServerOptions from the layers (no --app)."""
    return ServerOptions(**layered_options(args, os.environ if environ is None else environ))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    app: BayeuxServer | None = None
    unknown: list[str] = []
    try:
        # A worker of `--workers` gets its options from the supervisor in the
        # environment, already layered (secrets stay off the command line).
        given = os.environ.pop(WORKER_OPTIONS_ENV, None)
        overrides = json.loads(given) if given else layered_options(args, os.environ, unknown)
        if args.app:
            app = load_app(args.app)
            app.configure(**overrides)
            options = app.options
        else:
            options = ServerOptions(**overrides)
    except (ValueError, ImportError) as exc:
        print(f"engine: {exc}", file=sys.stderr)
        return 2
    for problem in unknown:
        print(f"engine: ignored {problem}", file=sys.stderr)
    if args.command == "config":
        sys.stdout.write(to_toml(masked(options)))
        return 0
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
        tls_context(options)  # a certificate that does not load is a configuration error
    except ValueError as exc:
        print(f"engine: {exc}", file=sys.stderr)
        return 2
    try:
        (app or BayeuxServer(options)).run(ready)
    except OSError as exc:
        print(f"engine: cannot listen on {options.host}:{options.port}: {exc}", file=sys.stderr)
        return 1
    return 0
