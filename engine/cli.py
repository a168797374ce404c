"""`python -m engine serve` and `config`: the command line, generated from ServerOptions
(the layers under it are engine.config's)."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Mapping, Sequence
from types import ModuleType
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
from engine.logs import LogConfigError, configure_logging
from engine.options import ServerOptions
from engine.server import BayeuxServer, tls_context
from engine.supervisor import WORKER_INDEX_ENV, WORKER_OPTIONS_ENV

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
    publish = commands.add_parser(
        "publish",
        help="publish a message through a server's HTTP API",
        description="Publish DATA (JSON) on CHANNEL through the server HTTP API "
        "(the server needs --api-key). The key comes from --api-key-file or "
        "$ENGINE_API_KEY (or $ENGINE_API_KEY_FILE), the URL from --url or $ENGINE_API_URL.",
    )
    publish.add_argument("channel", metavar="CHANNEL")
    publish.add_argument("data", metavar="JSON", help="the message's data, as JSON")
    publish.add_argument(
        "--url",
        default=None,
        help="the API URL (default: $ENGINE_API_URL, else http://127.0.0.1:8080/api)",
    )
    publish.add_argument("--api-key-file", metavar="PATH", default=None)
    publish.add_argument("--ext", metavar="JSON", default=None, help="the message's ext object")
    publish.add_argument("--idempotency-key", default=None)
    publish.add_argument("--ca-file", default=None, help="CA certificates for an https:// URL")
    # The tools own their command lines (main() hands them the rest of argv);
    # they are listed here so that `python -m engine --help` names them.
    for name, text in TOOLS_HELP.items():
        commands.add_parser(name, help=text, add_help=False)
    return parser


TOOLS_HELP = {
    "check": "judge any Bayeux server (or, with --client, a client) against the protocol",
    "load": "load any Bayeux server: idle, fanout, churn, rate scenarios (bayeux-load)",
}
#: The module whose main(argv) runs each tool.
TOOL_MODULES = {"check": "engine.check.cli", "load": "engine.load.cli"}


def run_tool(name: str, argv: list[str]) -> int:
    """`python -m engine check ...`: imported only when asked for, so that
    `serve` never loads the tool's code."""
    return int(importlib.import_module(TOOL_MODULES[name]).main(argv))


def publish_command(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """`python -m engine publish CHANNEL JSON`: exit 0 published, 1 refused or failed, 2 usage."""
    from engine.client import ApiError, Publisher

    try:
        data = json.loads(args.data)
        ext = json.loads(args.ext) if args.ext is not None else None
    except json.JSONDecodeError as exc:
        print(f"engine publish: not JSON: {exc}", file=sys.stderr)
        return 2
    key_file = args.api_key_file or environ.get("ENGINE_API_KEY_FILE")
    try:
        key = open(key_file).read().strip() if key_file else environ.get("ENGINE_API_KEY", "")
    except OSError as exc:
        print(f"engine publish: {key_file}: {exc.strerror}", file=sys.stderr)
        return 2
    url = args.url or environ.get("ENGINE_API_URL") or "http://127.0.0.1:8080/api"
    try:
        publisher = Publisher(url, key, verify=args.ca_file or True, retries=2)
    except ValueError as exc:
        print(f"engine publish: {exc}", file=sys.stderr)
        return 2
    with publisher:
        try:
            result = publisher.publish(
                args.channel, data, ext=ext, idempotency_key=args.idempotency_key
            )
        except ApiError as exc:
            print(f"engine publish: {exc}", file=sys.stderr)
            return 1
    print(json.dumps(result))
    return 0


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
    parser.add_argument(
        "--app-dir",
        metavar="DIR",
        default=".",
        help="where --app's module is looked for before the installed packages "
        "(default: the current directory)",
    )


def import_app_module(name: str, app_dir: str) -> ModuleType:
    """Module `name` (dotted) found first in `app_dir`, then in the installed
    packages, as `python -m` run in `app_dir` would find it. Only the top-level
    package or module is looked up in `app_dir` (importlib's path finder); its
    submodules then come from its own __path__. sys.path is left as it is."""
    top = name.partition(".")[0]
    if top not in sys.modules:
        spec = importlib.machinery.PathFinder.find_spec(top, [os.path.abspath(app_dir)])
        if spec is not None:
            module = importlib.util.module_from_spec(spec)
            sys.modules[top] = module  # as import would, before running it
            try:
                if spec.loader is not None:  # (None: a namespace package)
                    spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[top]
                raise
    return importlib.import_module(name)


def load_app(spec: str, app_dir: str = ".") -> BayeuxServer:
    """`package.module:attr` -> the application's server object."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"--app wants MODULE:ATTR, got {spec!r}")
    module = import_app_module(module_name, app_dir)
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
    given = {
        k: v for k, v in vars(args).items() if k not in ("command", "config", "app", "app_dir")
    }
    values.update(read_secret_files(given))
    return values


def options_from_args(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> ServerOptions:
    """ServerOptions from the layers (no --app)."""
    return ServerOptions(**layered_options(args, os.environ if environ is None else environ))


def main(argv: Sequence[str] | None = None) -> int:
    given_argv = list(sys.argv[1:] if argv is None else argv)
    if given_argv and given_argv[0] in TOOLS_HELP:
        return run_tool(given_argv[0], given_argv[1:])
    args = build_parser().parse_args(given_argv)
    if args.command == "publish":
        return publish_command(args, os.environ)
    app: BayeuxServer | None = None
    unknown: list[str] = []
    try:
        # A worker of `--workers` gets its options from the supervisor in the
        # environment, already layered (secrets stay off the command line).
        given = os.environ.pop(WORKER_OPTIONS_ENV, None)
        overrides = json.loads(given) if given else layered_options(args, os.environ, unknown)
        if args.app:
            app = load_app(args.app, args.app_dir)
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
    # Which process of a --workers group this is, for every log line.
    worker = "supervisor" if options.workers > 1 else os.environ.pop(WORKER_INDEX_ENV, "0")
    try:
        configure_logging(options, worker)
    except LogConfigError as exc:
        print(f"engine: {exc}", file=sys.stderr)
        return 2

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

        return run_supervisor(options, app=args.app, app_dir=os.path.abspath(args.app_dir))

    def ready(server: BayeuxServer) -> None:
        # The ready line first (tools take the first URL printed), then the
        # metrics URL in the same write: a --workers supervisor reads both
        # before it counts this worker as serving.
        metrics = f"\nengine metrics {server.metrics.url}" if server.metrics is not None else ""
        print(f"engine serving {server.url}{metrics}", flush=True)

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
