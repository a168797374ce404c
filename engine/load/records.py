"""What a load run leaves: its JSON record (machine, versions, command line),
its tables, the command-line options scenarios share, the peers a bench
recipe compares with, and the runner that runs a scenario against each
server in turn (``run_scenario``)."""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as _dt
import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from engine.load.procs import (
    BENCH_DIR,
    DEFAULT_SERVER_CMD,
    REPO_DIR,
    ChildGuard,
    RunError,
    ServerStartError,
)

PEERS_DIR = BENCH_DIR / "peers"
#: Peer servers ``--peer NAME`` runs first, with the same scenario and timeout.
PEERS: dict[str, dict[str, Any]] = {
    "faye": {
        "script": PEERS_DIR / "faye_server.mjs",
        "module": "faye",  # node_modules/<module> must exist
        "template": "node {script} --host {{host}} --port {{port}} --path {{path}} "
        "--timeout {{timeout}}",
    },
}


# --------------------------------------------------------------------------- records


def utc_stamp(now: float | None = None) -> str:
    t = _dt.datetime.fromtimestamp(time.time() if now is None else now, _dt.UTC)
    return t.strftime("%Y%m%dT%H%M%SZ")


def _version(dist: str) -> str | None:
    """A package's version; "engine" is this project (distribution bayeux-engine)."""
    try:
        return importlib.metadata.version("bayeux-engine" if dist == "engine" else dist)
    except importlib.metadata.PackageNotFoundError:
        pass
    if dist == "engine":  # run from the source tree, not installed
        import tomllib

        try:
            with open(REPO_DIR / "pyproject.toml", "rb") as f:
                return str(tomllib.load(f)["project"]["version"]) + " (source tree)"
        except (OSError, KeyError, ValueError):
            return None
    return None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_DIR), *args],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def _git_revision() -> str | None:
    rev = (_git("rev-parse", "HEAD") or "").strip()
    return rev or None


def _git_dirty() -> bool | None:
    """True when engine/ or src_pyx/ differ from HEAD (the figures are then of
    uncommitted code)."""
    out = _git("status", "--porcelain", "--", "engine", "src_pyx")
    return None if out is None else bool(out.strip())


def machine_info(
    packages: Iterable[str] = ("engine", "uvloop", "httptools", "orjson"),
) -> dict[str, Any]:
    import resource

    try:
        with open("/proc/meminfo") as f:
            mem_kb = int(f.readline().split()[1])
    except (OSError, ValueError, IndexError):
        mem_kb = None
    model = None
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    return {
        "hostname": platform.node(),
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "mem_total_bytes": mem_kb * 1024 if mem_kb else None,
        "kernel": platform.release(),
        "system": platform.system(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "nofile_limit": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
        "packages": {name: _version(name) for name in packages},
        "git_revision": _git_revision(),
        "git_dirty": _git_dirty(),
    }


def write_record(results_dir: Path, name: str, record: dict[str, Any]) -> Path:
    """Write ``record`` as ``<results_dir>/<name>.json`` (never overwrites)."""
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{name}.json"
    n = 1
    while path.exists() and n < 1000:
        path = results_dir / f"{name}-{n}.json"
        n += 1
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
    return path


# --------------------------------------------------------------------------- output


def human_bytes(n: float | None) -> str:
    if n is None:
        return "n/a"
    sign = "-" if n < 0 else ""
    n = abs(float(n))
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{sign}{n:.0f} {unit}" if unit == "B" else f"{sign}{n:.1f} {unit}"
        n /= 1024
    return f"{sign}{n:.1f} GiB"


def na(v: Any, spec: str = "{:,}") -> str:
    """A figure for a table: ``spec.format(v)``, or "n/a" when it is missing."""
    return "n/a" if v is None else spec.format(v)


def log(enabled: bool, text: str) -> None:
    """A progress line on stderr (stdout carries the tables), unless --no-progress."""
    if enabled:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()


def format_table(rows: Sequence[tuple[str, str]], title: str | None = None) -> str:
    width = max((len(k) for k, _ in rows), default=0)
    vwidth = max((len(v) for _, v in rows), default=0)
    line = "-" * (width + vwidth + 5)
    out = []
    if title:
        out.append(title)
    out.append(line)
    for k, v in rows:
        out.append(f"  {k.ljust(width)}   {v.rjust(vwidth)}")
    out.append(line)
    return "\n".join(out)


class ProgressBar:
    """A one-line progress bar on stderr (a plain log line every few seconds
    when stderr is not a terminal, so CI logs stay readable)."""

    def __init__(self, label: str, total: float, enabled: bool = True) -> None:
        self.label = label
        self.total = max(total, 1e-9)
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self._last_log = 0.0

    def update(self, done: float, extra: str = "") -> None:
        if not self.enabled:
            return
        frac = min(max(done / self.total, 0.0), 1.0)
        if self.tty:
            width = 30
            fill = int(frac * width)
            bar = "#" * fill + "." * (width - fill)
            sys.stderr.write(f"\r{self.label:<6} [{bar}] {frac * 100:5.1f}% {extra}\033[K")
            sys.stderr.flush()
        else:
            now = time.monotonic()
            if now - self._last_log >= 2.0:
                self._last_log = now
                sys.stderr.write(f"{self.label}: {frac * 100:5.1f}% {extra}\n")
                sys.stderr.flush()

    def close(self, extra: str = "") -> None:
        if not self.enabled:
            return
        if self.tty:
            self._last_log = 0.0
            self.update(self.total, extra)
            sys.stderr.write("\n")
        else:
            sys.stderr.write(f"{self.label}: done {extra}\n")
        sys.stderr.flush()


def shell_join(argv: Sequence[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)


def ratio(engine: float | None, peer: float | None) -> float | None:
    """engine / peer, None when either is missing or the peer's is 0."""
    if engine is None or peer is None or peer == 0:
        return None
    return engine / peer


def format_comparison(
    rows: Sequence[tuple[str, str, str, str]],
    names: tuple[str, str, str] = ("peer", "engine", "engine/peer"),
    title: str | None = None,
) -> str:
    """A four-column table: what, the peer's value, the engine's, the ratio."""
    header = ("", *names)
    table = [header, *rows]
    widths = [max(len(r[i]) for r in table) for i in range(4)]
    line = "-" * (sum(widths) + 3 * 3 + 2)
    out = [title] if title else []
    out.append(line)
    for i, r in enumerate(table):
        cells = [r[0].ljust(widths[0])] + [r[j].rjust(widths[j]) for j in (1, 2, 3)]
        out.append("  " + "   ".join(cells))
        if i == 0:
            out.append(line)
    out.append(line)
    return "\n".join(out)


# --------------------------------------------------------------------------- progress

#: Called with every poll the scenarios make of their generators' stats lines:
#: (phase, the lines summed by ``idle.aggregate``, the lines themselves: each
#: generator's latest). engine.load.live's display and the timeline of an
#: ``engine load`` record hang here; a scenario run without the tool has none.
PROGRESS_HOOKS: list[Callable[[str, dict[str, Any], Sequence[dict[str, Any]]], None]] = []


def progress_event(phase: str, stats: dict[str, Any], lines: Sequence[dict[str, Any]] = ()) -> None:
    """Hand one poll of the generators' stats to every PROGRESS_HOOKS entry."""
    for hook in PROGRESS_HOOKS:
        hook(phase, stats, lines)


# --------------------------------------------------------------------------- command line


def add_server_args(p: argparse.ArgumentParser) -> None:
    """--timeout, --server-cmd or --url, --server-pid: the server under test,
    as the scenarios holding idle clients (idle.py, fanout.py) take it."""
    p.add_argument(
        "--timeout", type=int, default=10000, help="server connect timeout in ms (--timeout MS)"
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--server-cmd",
        default=DEFAULT_SERVER_CMD,
        help="server command template; placeholders {python} {host} {port} {path} {timeout}; "
        "it must print a line holding its URL when ready",
    )
    src.add_argument("--url", default=None, help="use an already running server at this URL")
    p.add_argument(
        "--server-pid",
        type=int,
        default=None,
        help="with --url: pid of the server (RSS and CPU of it and its descendants)",
    )


def add_listen_args(p: argparse.ArgumentParser) -> None:
    """--host, --port, --path of the server the scenario starts."""
    p.add_argument("--host", default="127.0.0.1", help="address the started server listens on")
    p.add_argument("--port", type=int, default=0, help="port for the started server (0: free)")
    p.add_argument("--path", default="/cometd", help="server path for the started server")


def add_results_dir_arg(
    p: argparse.ArgumentParser, help_text: str = "where the JSON record is written"
) -> None:
    """--results-dir, bench/results/ by default: where every scenario's record goes."""
    p.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results", help=help_text)


def is_loopback_url(url: str) -> bool:
    """Whether ``url``'s host is on this machine (127.0.0.0/8, localhost, ::1)."""
    host = urlsplit(url).hostname or ""
    return host.startswith("127.") or host in ("localhost", "::1")


def check_loopback(script: str, args: argparse.Namespace) -> None:
    """Refuse a server off 127.0.0.0/8 (--url, --host), and --url with --peer
    (a peer run starts both servers itself)."""
    if args.url is not None and not is_loopback_url(args.url):
        raise SystemExit(f"{script}: only loopback servers (127.0.0.0/8)")
    if not args.host.startswith("127."):
        raise SystemExit(f"{script}: --host must be a loopback address (127.0.0.0/8)")
    if args.peer is not None and args.url is not None:
        raise SystemExit(f"{script}: --peer starts both servers itself; it does not take --url")


# --------------------------------------------------------------------------- peers


class PeerSetupError(RuntimeError):
    """A peer server could not be installed (no node/npm, npm failed)."""


def peer_server_cmd(name: str, *, install: bool = True, timeout: float = 600.0) -> str:
    """The ``--server-cmd`` template of peer ``name``, installing it first.

    Faye: ``npm ci`` (``npm install`` without a lock file) in ``bench/peers``
    when ``node_modules/faye`` is missing; bounded by ``timeout`` seconds.
    """
    peer = PEERS.get(name)
    if peer is None:
        raise PeerSetupError(f"unknown peer {name!r} (known: {', '.join(sorted(PEERS))})")
    import shutil

    if shutil.which("node") is None:
        raise PeerSetupError(f"peer {name} needs node on PATH")
    installed = PEERS_DIR / "node_modules" / peer["module"]
    if not installed.is_dir():
        if not install:
            raise PeerSetupError(f"peer {name} is not installed in {PEERS_DIR}")
        npm = shutil.which("npm")
        if npm is None:
            raise PeerSetupError(f"peer {name} needs npm on PATH to install it")
        import fcntl
        import tempfile

        # One install at a time (several bench runs or test workers may start together).
        lock_path = Path(tempfile.gettempdir()) / f"engine-bench-peers-{os.getuid()}.lock"
        with open(lock_path, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not installed.is_dir():
                _npm_install(npm, name, timeout)
    return str(peer["template"]).format(script=shlex.quote(str(peer["script"])))


def _npm_install(npm: str, name: str, timeout: float) -> None:
    has_lock = (PEERS_DIR / "package-lock.json").exists()
    cmd = [npm, "ci" if has_lock else "install", "--no-audit", "--no-fund", "--loglevel=error"]
    sys.stderr.write(f"installing peer {name}: {shell_join(cmd)} (in {PEERS_DIR})\n")
    try:
        out = subprocess.run(
            cmd, cwd=PEERS_DIR, capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PeerSetupError(f"{shell_join(cmd)} failed: {exc}") from None
    if out.returncode != 0:
        raise PeerSetupError(f"{shell_join(cmd)} failed:\n{out.stdout}\n{out.stderr}")


def peer_versions(name: str) -> dict[str, str | None]:
    """node's version and the peer package's, for the record."""
    peer = PEERS.get(name) or {}
    versions: dict[str, str | None] = {"node": None, name: None}
    try:
        out = subprocess.run(
            ["node", "--version"], capture_output=True, text=True, timeout=10, check=False
        )
        versions["node"] = out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    module = peer.get("module")
    if module:
        with contextlib.suppress(OSError, ValueError, KeyError):
            pkg = PEERS_DIR / "node_modules" / module / "package.json"
            versions[name] = json.loads(pkg.read_text())["version"]
    return versions


def run_scenario(
    scenario: str,
    script: str,
    args: Any,
    argv: list[str] | None,
    once: Callable[[Any, ChildGuard], dict[str, Any]],
    *,
    comparison: Callable[[str, dict[str, Any], dict[str, Any]], dict[str, Any]] | None = None,
    say: Callable[[str], Any] | None = None,
) -> dict[str, Any] | int:
    """Run `once(args, guard)` against `--peer` first (when the scenario has
    one), then against the engine, killing every child in between and at the
    end (and on SIGTERM/SIGHUP); `once` returns the run's parameters and
    results. `say` shows the progress (default: stderr unless --no-progress).

    Returns the record of the run (see `scenario_record`; not written yet), or
    an exit code: 1 when the scenario could not run, 130 when interrupted.
    """
    prog = Path(script).name

    def progress(text: str) -> None:
        log(not args.no_progress, text)

    say = say or progress
    guard = ChildGuard()
    guard.install_signals()
    started = time.time()
    peer = getattr(args, "peer", None)
    peer_record: dict[str, Any] | None = None
    try:
        if peer is not None:
            try:
                peer_cmd = peer_server_cmd(peer)
            except PeerSetupError as exc:
                sys.stderr.write(f"{prog}: {exc}\n")
                return 1
            peer_args = copy.copy(args)
            peer_args.server_cmd = peer_cmd
            say(f"--- peer {peer}: {peer_cmd}")
            peer_record = {"name": peer, "versions": peer_versions(peer)}
            try:
                peer_record.update(once(peer_args, guard))
            except (RunError, ServerStartError) as exc:
                sys.stderr.write(f"{prog}: peer {peer} run failed: {exc}\n")
                peer_record["error"] = str(exc)
            guard.kill_all()
            say("--- engine")
        outcome = once(args, guard)
    except (RunError, ServerStartError) as exc:
        sys.stderr.write(f"{prog}: {exc}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted\n")
        return 130
    finally:
        guard.kill_all()
    return scenario_record(scenario, started, argv, script, outcome, peer_record, comparison)


def record_header(
    scenario: str, started: float, argv: list[str] | None, script: str
) -> dict[str, Any]:
    """The fields every record starts with; `command` reruns the scenario."""
    machine = machine_info()
    machine["platform"] = platform.platform()
    return {
        "scenario": scenario,
        "timestamp": utc_stamp(started),
        "started_at": started,
        "machine": machine,
        "command": [sys.executable, *sys.argv] if argv is None else [sys.executable, script, *argv],
    }


def scenario_record(
    scenario: str,
    started: float,
    argv: list[str] | None,
    script: str,
    outcome: dict[str, Any],
    peer_record: dict[str, Any] | None = None,
    comparison: Callable[[str, dict[str, Any], dict[str, Any]], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The record of a run: header, the engine's parameters and results, then
    the peer's run and ``comparison(peer name, peer results, engine results)``
    when ``--peer`` ran (and got results)."""
    record = {**record_header(scenario, started, argv, script), **outcome}
    if peer_record is not None:
        record["peer"] = peer_record
        if "results" in peer_record and comparison is not None:
            record["comparison"] = comparison(
                peer_record["name"], peer_record["results"], outcome["results"]
            )
    return record


def print_tables(
    record: dict[str, Any], table: Callable[[dict[str, Any]], str], comparison_title: str
) -> None:
    """Print the peer's table (when ``--peer`` ran), the engine's, then the
    side-by-side one: every scenario with a peer shows them this way."""
    peer = record.get("peer")
    if peer is not None and "results" in peer:
        print(table({**peer, "label": peer["name"]}))
        print()
    print(table({**record, "label": "engine" if peer is not None else None}))
    if "comparison" in record:
        name = record["peer"]["name"]
        print()
        print(
            format_comparison(
                [tuple(r) for r in record["comparison"]["rows"]],
                names=(name, "engine", f"engine/{name}"),
                title=comparison_title,
            )
        )


def save_and_print(
    record: dict[str, Any],
    results_dir: Path,
    stem: str,
    table: Callable[[dict[str, Any]], str],
    comparison_title: str,
    suffix: str = "",
) -> Path:
    """Write the record as ``<stem><suffix>-<timestamp>`` (``<stem>-vs-<peer>-...``
    when a peer ran), print its tables and where it went."""
    peer = record.get("peer")
    if peer is not None:
        name = f"{stem}-vs-{peer['name']}-{record['timestamp']}"
    else:
        name = f"{stem}{suffix}-{record['timestamp']}"
    path = write_record(results_dir, name, record)
    print_tables(record, table, comparison_title)
    print(f"record: {path}")
    return path


# --------------------------------------------------------------------------- targets


class Target:
    """One server a run measures: its label in the tables, its URL, its pid
    (RSS and CPU of it and its descendants; None: not measured)."""

    def __init__(self, label: str, url: str, pid: int | None) -> None:
        self.label = label
        self.url = url
        self.pid = pid

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "url": self.url, "server_pid": self.pid}


def run_targets(
    scenario: str,
    args: Any,
    targets: Sequence[Target],
    once: Callable[[Any, ChildGuard], dict[str, Any]],
    *,
    comparison: Callable[[str, dict[str, Any], dict[str, Any]], dict[str, Any]] | None = None,
    say: Callable[[str], Any] = lambda _text: None,
    on_target: Callable[[Target, dict[str, Any]], Any] | None = None,
) -> tuple[dict[str, Any], int]:
    """Run ``once(args, guard)`` against each already running server of
    ``targets`` in turn (``args.url``/``args.server_pid`` set to the target's),
    killing every child in between and at the end (and on SIGTERM/SIGHUP).

    Returns (record, exit code) and always a record, partial when the run was
    cut short: ``complete`` false, ``interrupted`` on Ctrl-C (exit 130), the
    ``error`` of a target that could not run (exit 1). ``targets`` in the
    record: one entry per server, in the order run, each with the parameters
    and results ``once`` returned; with two, ``comparison`` is the side by
    side of the second run and the first: ``comparison(label of the second,
    its results, the first's)``, so the second run's column comes first.
    ``on_target(target, entry)`` is called before each run with the entry it
    fills (the tool's live display keeps its timeline there).
    """
    guard = ChildGuard()
    guard.install_signals()
    started = time.time()
    record = record_header(scenario, started, None, "")
    record["complete"] = False
    entries: list[dict[str, Any]] = []
    record["targets"] = entries
    code = 0
    try:
        for i, target in enumerate(targets):
            if i:
                guard.kill_all()
            entry = target.as_dict()
            entries.append(entry)
            if on_target is not None:
                on_target(target, entry)
            say(f"--- {target.label}: {target.url}")
            t_args = copy.copy(args)
            t_args.url = target.url
            t_args.server_pid = target.pid
            try:
                entry.update(once(t_args, guard))
            except (RunError, ServerStartError) as exc:
                entry["error"] = str(exc)
                code = 1
    except KeyboardInterrupt:
        record["interrupted"] = True
        code = 130
    except SystemExit as exc:  # SIGTERM/SIGHUP (ChildGuard's handler)
        record["interrupted"] = True
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        guard.kill_all()
    record["finished_at"] = time.time()
    done = [e for e in entries if "results" in e]
    record["complete"] = code == 0 and len(done) == len(targets)
    if len(targets) == 2 and len(done) == 2 and comparison is not None:
        # `--compare URL2` runs URL2 first; the table reads URL, URL2, URL2/URL
        first, second = done[1], done[0]
        record["comparison"] = comparison(first["label"], first["results"], second["results"])
    return record, code
