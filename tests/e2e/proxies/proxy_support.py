"""The proxies of deploy/proxies/ as the tests run them: each one's Debian
package, its command line, its configuration templates filled in, and a
running proxy (a non-root process on loopback ports, in its own temp dir).

Imported as `e2e.proxies.proxy_support` (also by
tests/e2e/cluster/test_haproxy.py).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
TEMPLATES = ROOT / "deploy" / "proxies"

# Proxy name -> the version it printed (filled by the cluster fixture).
VERSIONS = pytest.StashKey[dict[str, str]]()

# What a proxy cannot do: (proxy, test id without the proxy) -> why. These
# tests are expected failures (strict: one that passes is an error, so that
# this list stays true) and the results file carries the reason.
LIMITS: dict[tuple[str, str], str] = {
    ("h2o", "test_requests_round_robin_without_stickiness"): (
        "H2O 2.2 proxies a path to one URL only: no load balancing over nodes "
        "(H2O 2.3 takes a list of URLs)"
    ),
}

PLACEHOLDER = re.compile(r"@[A-Z0-9_]+@")
NODE_PLACEHOLDER = re.compile(r"@NODE_[A-Z]+@")


def render(template: str, values: dict[str, str], nodes: Sequence[dict[str, str]]) -> str:
    """Fill a template (the scheme of deploy/proxies/README.md): `@NAME@` is
    replaced by `values["NAME"]`; a line with `@NODE_HOST@`, `@NODE_PORT@` or
    `@NODE_NAME@` is repeated once per node; `@FIRST_NODE_...@` is the first
    node's.  A placeholder left unknown is an error."""
    first = {f"FIRST_NODE_{k}": v for k, v in nodes[0].items()} if nodes else {}
    out: list[str] = []
    for line in template.splitlines(keepends=True):
        copies = (
            [{f"NODE_{k}": v for k, v in node.items()} for node in nodes]
            if NODE_PLACEHOLDER.search(line)
            else [{}]
        )
        for node in copies:
            known = {**values, **first, **node}

            def fill(match: re.Match[str], known: dict[str, str] = known, line: str = line) -> str:
                name = match.group(0).strip("@")
                if name not in known:
                    raise KeyError(f"unknown placeholder {match.group(0)} in {line!r}")
                return known[name]

            out.append(PLACEHOLDER.sub(fill, line))
    return "".join(out)


@dataclass(frozen=True)
class ProxyKind:
    """One proxy of deploy/proxies/<name>/ and how to run it."""

    name: str  # the directory in deploy/proxies/
    title: str  # for people
    package: str  # the Debian package
    binary: str
    config: str  # the main file of the directory
    # Arguments: (binary, main config file, workdir, listen port).
    run: Callable[[str, Path, Path, int], list[str]]
    check: Callable[[str, Path, Path, int], list[str]] | None
    version: Sequence[str]  # arguments printing the version
    settings: str = ""  # what its template must set for Bayeux (docs/proxies.md)
    caveats: str = ""  # what was found setting it up (docs/proxies.md)
    env: dict[str, str] = field(default_factory=dict)

    def require(self) -> str:
        """The binary's path; a clear failure naming the package when it is
        missing (CI), a skip naming it elsewhere (as require_haproxy)."""
        path = shutil.which(self.binary) or next(
            (p for d in ("/usr/sbin", "/usr/bin") if os.access(p := f"{d}/{self.binary}", os.X_OK)),
            None,
        )
        if path is None:
            message = (
                f"{self.title}: `{self.binary}` is not installed "
                f"(apt-get install -y {self.package}; scripts/test installs it as root)"
            )
            if os.environ.get("CI"):
                pytest.fail(message + " (CI is set: an error, not a skip)", pytrace=False)
            pytest.skip(message)
        return path

    def version_of(self, binary: str) -> str:
        proc = subprocess.run([binary, *self.version], capture_output=True, text=True, timeout=10)
        text = (proc.stdout + proc.stderr).strip()
        return text.splitlines()[0].strip() if text else "?"


def _varnish(binary: str, config: Path, workdir: Path, port: int) -> list[str]:
    # The listen address is varnishd's -a; -j none: no privilege-separation
    # jail (varnishd is not root here); pipe_timeout bounds an idle piped
    # WebSocket like the backend timeouts of the VCL bound a held connect.
    return [
        binary,
        "-F",
        "-j",
        "none",
        "-n",
        str(workdir / "varnish"),
        "-a",
        f"127.0.0.1:{port}",
        "-T",
        "127.0.0.1:0",
        "-f",
        str(config),
        "-s",
        "malloc,16m",
        "-p",
        "pipe_timeout=3600",
    ]


KINDS: dict[str, ProxyKind] = {
    kind.name: kind
    for kind in (
        ProxyKind(
            "haproxy",
            "HAProxy",
            "haproxy",
            "haproxy",
            "haproxy.cfg",
            run=lambda b, c, w, p: [b, "-db", "-f", str(c)],
            check=lambda b, c, w, p: [b, "-c", "-f", str(c)],
            version=("-v",),
            settings=(
                "`timeout client`/`server` > Bayeux timeout, `timeout tunnel` (WebSocket), "
                "`option http-server-close`, `option forwardfor`, `balance roundrobin`"
            ),
        ),
        ProxyKind(
            "nginx",
            "nginx",
            "nginx",
            "nginx",
            "nginx.conf",
            run=lambda b, c, w, p: (
                [b, "-p", str(w), "-e", str(w / "error.log"), "-c", str(c)] + ["-g", "daemon off;"]
            ),
            check=lambda b, c, w, p: (
                [b, "-t", "-p", str(w), "-e", str(w / "error.log")] + ["-c", str(c)]
            ),
            version=("-v",),
            settings=(
                "`proxy_http_version 1.1` + `Upgrade`/`Connection` headers, "
                "`proxy_read_timeout`/`proxy_send_timeout` > Bayeux timeout (default 60 s), "
                "`proxy_buffering off`, `X-Forwarded-For`"
            ),
        ),
        ProxyKind(
            "apache2",
            "Apache httpd",
            "apache2",
            "apache2",
            "apache2.conf",
            run=lambda b, c, w, p: [b, "-f", str(c), "-DFOREGROUND"],
            check=lambda b, c, w, p: [b, "-t", "-f", str(c)],
            version=("-v",),
            settings=(
                "event MPM, `BalancerMember ... upgrade=websocket flushpackets=on`, "
                "`lbmethod=byrequests` without `stickysession`, `Timeout`/`ProxyTimeout` > Bayeux"
                " timeout (default 60 s)"
            ),
        ),
        ProxyKind(
            "lighttpd",
            "lighttpd",
            "lighttpd",
            "lighttpd",
            "lighttpd.conf",
            run=lambda b, c, w, p: [b, "-D", "-f", str(c)],
            check=lambda b, c, w, p: [b, "-tt", "-f", str(c)],
            version=("-v",),
            settings=(
                '`proxy.header = ("upgrade" => "enable")`, `proxy.balance = "round-robin"`, '
                "`server.stream-response-body = 2`, backend `read-timeout` and "
                "`server.max-read-idle`/`max-write-idle` > Bayeux timeout"
            ),
            caveats=(
                "checks its timeouts only every few seconds (a 1 s backend read-timeout cut a "
                "held connect after about 3 s)"
            ),
        ),
        ProxyKind(
            "caddy",
            "Caddy",
            "caddy",
            "caddy",
            "Caddyfile",
            run=lambda b, c, w, p: [b, "run", "--config", str(c), "--adapter", "caddyfile"],
            check=lambda b, c, w, p: [b, "validate", "--config", str(c), "--adapter", "caddyfile"],
            version=("version",),
            settings=(
                "`lb_policy round_robin`, `flush_interval -1`, `response_header_timeout` > Bayeux"
                " timeout (default none); WebSocket and `X-Forwarded-For` by itself"
            ),
            caveats=(
                "`response_header_timeout` bounds the wait for a reply's headers: for a held "
                "connect, its whole wait"
            ),
        ),
        ProxyKind(
            "varnish",
            "Varnish",
            "varnish",
            "varnishd",
            "default.vcl",
            run=_varnish,
            check=lambda b, c, w, p: [b, "-C", "-n", str(w / "varnish-check"), "-f", str(c)],
            version=("-V",),
            settings=(
                "`return (pass)` for all, `return (pipe)` + `Upgrade`/`Connection` copied for "
                "WebSocket, `directors.round_robin()`, backend "
                "`first_byte_timeout`/`between_bytes_timeout` > Bayeux timeout (default 60 s), "
                "`-p pipe_timeout`"
            ),
            caveats=(
                "a WebSocket is a `pipe`: a raw TCP tunnel that VCL no longer sees, bounded by "
                "`pipe_timeout` only"
            ),
        ),
        ProxyKind(
            "h2o",
            "H2O",
            "h2o",
            "h2o",
            "h2o.conf",
            run=lambda b, c, w, p: [b, "-c", str(c)],
            check=lambda b, c, w, p: [b, "-t", "-c", str(c)],
            version=("-v",),
            settings=(
                "`proxy.websocket: ON`, `proxy.timeout.io` > Bayeux timeout (default 30 s, as the"
                " Bayeux default: it cuts them)"
            ),
            caveats=(
                "the default `proxy.timeout.io` (30 s) equals the Bayeux default timeout: without"
                " the setting, held connects are cut"
            ),
        ),
        ProxyKind(
            "trafficserver",
            "Apache Traffic Server",
            "trafficserver",
            "traffic_server",
            "runroot.yaml",
            run=lambda b, c, w, p: [b, f"--run-root={c}"],
            check=None,
            version=("-V",),
            settings=(
                "strategies.yaml `policy: rr_strict` + `ignore_self_detect`, remap `ws://` and "
                "`http://` to a non-loopback name with `@strategy`, "
                "`no_dns_just_forward_to_parent`, cache off, "
                "`transaction_no_activity_timeout_in`/`_out` > Bayeux timeout (default 30 s), "
                "`insert_squid_x_forwarded_for`"
            ),
            caveats=(
                "a remap target on loopback bypasses the strategy (ATS sends requests for "
                "localhost straight there); a node at one of the machine's own addresses is "
                "marked down unless `ignore_self_detect`; the default 30 s no-activity timeouts "
                "equal the Bayeux default"
            ),
        ),
    )
}


def _run_as() -> dict[str, object]:
    """Popen arguments that drop root: the proxies run as `nobody` when the
    tests run as root (as in a fresh CI container)."""
    if os.geteuid() != 0:
        return {}
    return {"user": "nobody", "group": "nogroup", "extra_groups": []}


def _chown_tree(path: Path) -> None:
    if os.geteuid() != 0:
        return
    import pwd

    entry = pwd.getpwnam("nobody")
    for dirpath, _dirs, files in os.walk(path):
        os.chown(dirpath, entry.pw_uid, entry.pw_gid)
        for name in files:
            os.chown(os.path.join(dirpath, name), entry.pw_uid, entry.pw_gid)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ProxyStartError(AssertionError):
    pass


class RunningProxy:
    """A proxy process over `node_ports`; `url` is its Bayeux endpoint."""

    def __init__(
        self, kind: ProxyKind, node_ports: Sequence[int], proxy_timeout: int, path: str = "/cometd"
    ) -> None:
        self.kind = kind
        self.binary = kind.require()
        self.version = kind.version_of(self.binary)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}{path}"
        self.workdir = Path(tempfile.mkdtemp(prefix=f"engine-{kind.name}-"))
        self.log = self.workdir / "proxy-output.log"
        values = {
            "LISTEN_HOST": "127.0.0.1",
            "LISTEN_PORT": str(self.port),
            "WORKDIR": str(self.workdir),
            "PROXY_TIMEOUT": str(proxy_timeout),
            "PROXY_TIMEOUT_MS": str(proxy_timeout * 1000),
        }
        nodes = [
            {"NAME": f"engine{i}", "HOST": "127.0.0.1", "PORT": str(port)}
            for i, port in enumerate(node_ports, 1)
        ]
        self.config = self.workdir / kind.config
        env = {**os.environ, "HOME": str(self.workdir), **kind.env}
        env.update(XDG_CONFIG_HOME=str(self.workdir), XDG_DATA_HOME=str(self.workdir))
        args = (self.binary, self.config, self.workdir, self.port)
        self.proc: subprocess.Popen[bytes] | None = None
        try:  # (stop() removes the workdir, whatever fails)
            for template in sorted((TEMPLATES / kind.name).iterdir()):
                target = self.workdir / template.name
                target.write_text(render(template.read_text(), values, nodes))
            _chown_tree(self.workdir)
            if kind.check is not None:
                check = subprocess.run(
                    kind.check(*args),
                    cwd=self.workdir,
                    env=env,
                    capture_output=True,
                    timeout=60,
                    **_run_as(),  # type: ignore[arg-type]
                )
                if check.returncode != 0:
                    raise ProxyStartError(
                        f"{kind.title} rejects {self.config}:\n"
                        + (check.stdout + check.stderr).decode(errors="replace")[-4000:]
                    )
            with self.log.open("wb") as out:
                self.proc = subprocess.Popen(
                    kind.run(*args),
                    cwd=self.workdir,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    **_run_as(),  # type: ignore[arg-type]
                )
            self._wait_ready(node_ports)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, node_ports: Sequence[int], timeout: float = 30.0) -> None:
        """Until a GET /health through the proxy reaches an engine node."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        health = f"http://127.0.0.1:{self.port}/health"
        last: object = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ProxyStartError(
                    f"{self.kind.title} exited {self.proc.returncode}:\n{self.output()}"
                )
            try:
                with urllib.request.urlopen(health, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError as exc:
                last = exc
            time.sleep(0.1)
        raise ProxyStartError(f"{self.kind.title} not serving /health ({last!r}):\n{self.output()}")

    def output(self) -> str:
        """What the proxy printed, and its error logs in the workdir."""
        parts = []
        for path in sorted(self.workdir.rglob("*")):
            if path.is_file() and (path.suffix == ".log" or path.name in {"error", "diags.log"}):
                try:
                    parts.append(f"--- {path.name} ---\n{path.read_text(errors='replace')[-3000:]}")
                except OSError:
                    pass
        return "\n".join(parts)

    def stop(self) -> None:
        # The proxy leads its own process group (its workers, Varnish's
        # child): the group goes, not only the leader.
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # workers left behind
        shutil.rmtree(self.workdir, ignore_errors=True)
