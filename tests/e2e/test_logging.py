"""The server's logs, from real processes: --log-format text|json (node and
worker on every line), --access-log, --log-config, and no secret in any line."""

from __future__ import annotations

import http.client
import importlib.util
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jwt
import pytest
from harness import ROOT, ServerProcess, free_port, start_server
from redis_server import RedisServer

HANDSHAKE = {
    "channel": "/meta/handshake",
    "version": "1.0",
    "supportedConnectionTypes": ["long-polling", "callback-polling"],
}


def records(server: ServerProcess) -> list[dict[str, Any]]:
    """Every stderr line, each of which must be one JSON object with node and worker."""
    found = []
    for line in server.stderr.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            pytest.fail(f"a stderr line is not JSON: {line!r}\n{server.describe()}")
        assert isinstance(record, dict), line
        for key in ("time", "level", "logger", "message", "node", "worker"):
            assert key in record, (key, line)
        found.append(record)
    return found


def access_records(server: ServerProcess) -> list[dict[str, Any]]:
    return [r for r in records(server) if r["logger"] == "engine.access"]


def post(
    port: int, path: str, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(
            "POST",
            path,
            body=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", **(headers or {})},
        )
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def websocket_upgrade(port: int, path: str, headers: str = "") -> bytes:
    """The head of the answer to a WebSocket upgrade (the socket closes after)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                f"Sec-WebSocket-Version: 13\r\n{headers}\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
    return head


def serve_briefly(*args: str) -> subprocess.CompletedProcess[str]:
    """`python -m engine serve --port 0 ARGS` that should exit at once (refused)."""
    command = [sys.executable, "-m", "engine", "serve", "--port", "0", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=20)


def wait_for(predicate: Any, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"not seen within {timeout} s: {what}")
        time.sleep(0.05)


# ------------------------------------------------------------------ secrets


ADMIN_TOKEN = "admintok-7Q2xZ9"
API_KEY = "apikey-K3vL8w"
JWT_SECRET = "jwtsecret-P5nR1t" + "s" * 32
BROKER_PASSWORD = "brokerpw-H6dM4c"
HOOK_PASSWORD = "hookpw-Z8bF2q"
QUERY_TOKEN = "querytok-W1eY7u"
COOKIE_SECRET = "cookie-N9sA3k"


def test_no_secret_in_any_line_and_every_line_is_json() -> None:
    """Debug level, JSON, access log; every secret set and sent in requests."""
    dead = free_port()  # nothing listens there: the broker and webhook fail, and say so
    connection_token = jwt.encode(
        {"sub": "alice", "exp": int(time.time()) + 600}, JWT_SECRET, algorithm="HS256"
    )
    server = start_server(
        "--log-level", "debug",
        "--log-format", "json",
        "--access-log",
        "--node-id", "sec1",
        "--admin-token", ADMIN_TOKEN,
        "--api-key", API_KEY,
        "--jwt-secret", JWT_SECRET,
        "--broker", f"redis://user:{BROKER_PASSWORD}@127.0.0.1:{dead}/0",
        "--webhook-url", f"http://hook:{HOOK_PASSWORD}@127.0.0.1:{dead}/events",
        "--allowed-transports", "long-polling,callback-polling,websocket",
    )  # fmt: skip
    with server:
        port = server.port
        cookie = {"Cookie": f"BAYEUX_BROWSER=x; app_session={COOKIE_SECRET}"}
        assert get(port, "/stats", {"Authorization": f"Bearer {ADMIN_TOKEN}"})[0] == 200
        status, _ = post(port, "/api/publish", {"channel": "/a", "data": 1}, {"X-API-Key": API_KEY})
        assert status in (200, 503), status  # (503: no broker to publish through)
        post(port, "/api/publish", {"channel": "/a"}, {"Authorization": f"Bearer {API_KEY}"})
        handshake = [{**HANDSHAKE, "ext": {"token": connection_token}}]
        status, body = post(port, f"/cometd?token={QUERY_TOKEN}", handshake, cookie)
        assert status == 200 and json.loads(body)[0]["successful"], body
        bad = connection_token[:-4] + "AAAA"  # a refused token is logged: not its text
        post(port, "/cometd", [{**HANDSHAKE, "ext": {"token": bad}}])
        message = quote(json.dumps([{**HANDSHAKE, "ext": {"token": connection_token}}]))
        status, _ = get(port, f"/cometd?jsonp=cb&token={QUERY_TOKEN}&message={message}", cookie)
        assert status == 200, status
        assert b" 101 " in websocket_upgrade(
            port, f"/cometd?token={QUERY_TOKEN}", "Cookie: a=b\r\n"
        )
        wait_for(lambda: "webhook" in server.stderr, "the webhook failure")
        server.assert_stopped_cleanly()
    text = server.stdout + server.stderr
    for secret in (
        ADMIN_TOKEN, API_KEY, JWT_SECRET, BROKER_PASSWORD, HOOK_PASSWORD, QUERY_TOKEN,
        COOKIE_SECRET, connection_token, bad,
    ):  # fmt: skip
        assert secret not in text, (secret, server.describe())
    found = records(server)
    assert {r["node"] for r in found} == {"sec1"} and {r["worker"] for r in found} == {"0"}
    assert any("redis at 127.0.0.1" in r["message"] for r in found), server.stderr  # logged
    assert len([r for r in found if r["logger"] == "engine.access"]) >= 7


def test_a_jwks_url_is_logged_without_its_password() -> None:
    dead = free_port()
    server = start_server(
        "--log-format", "json", "--jwt-jwks-url", f"http://jw:{HOOK_PASSWORD}@127.0.0.1:{dead}/jwks"
    )  # fmt: skip
    with server:
        token = jwt.encode({"sub": "a"}, "k" * 32, algorithm="HS256", headers={"kid": "k1"})
        post(server.port, "/cometd", [{**HANDSHAKE, "ext": {"token": token}}])
        wait_for(lambda: "JWKS" in server.stderr, "the JWKS failure")
        server.assert_stopped_cleanly()
    assert f"http://jw:***@127.0.0.1:{dead}/jwks" in server.stderr  # logged, masked
    assert HOOK_PASSWORD not in server.stderr


# --------------------------------------------------------------- formats


def test_text_lines_name_node_and_worker() -> None:
    with start_server("--node-id", "txt1") as server:
        server.assert_stopped_cleanly()
    lines = server.stderr.splitlines()
    assert any(
        " INFO node=txt1 worker=0 engine.server: listening on http://" in line for line in lines
    ), server.stderr
    assert all(" node=txt1 worker=0 " in line for line in lines), server.stderr


def test_a_random_node_id_is_named_once_decided() -> None:
    with start_server("--log-format", "json") as server:
        server.assert_stopped_cleanly()
    listening = [r for r in records(server) if r["message"].startswith("listening on")]
    assert len(listening) == 1
    node = listening[0]["node"]
    assert f"(node {node})" in listening[0]["message"] and node != "-"


def test_access_log_fields() -> None:
    server = start_server(
        "--log-format", "json", "--access-log", "--timeout", "400",
        "--trusted-proxies", "127.0.0.1",
    )  # fmt: skip
    with server:
        port = server.port
        # (The browser cookie binds the session: the same one on every request.)
        headers = {"X-Forwarded-For": "203.0.113.7", "Cookie": "BAYEUX_BROWSER=" + "b1" * 8}
        status, body = post(port, "/cometd", [HANDSHAKE], headers)
        client_id = json.loads(body)[0]["clientId"]
        connect = {"channel": "/meta/connect", "clientId": client_id}
        connect["connectionType"] = "long-polling"
        post(port, "/cometd", [connect], headers)  # answered at once
        started = time.monotonic()
        post(port, "/cometd", [connect], headers)  # held for the timeout
        held_s = time.monotonic() - started
        assert get(port, "/nothing?secret=1")[0] == 404
        assert b" 101 " in websocket_upgrade(port, "/cometd")
        wait_for(lambda: len(access_records(server)) >= 5, "5 access lines")
        server.assert_stopped_cleanly()
    lines = access_records(server)
    handshake, first, held, missing, upgrade = lines
    assert handshake["remote"] == "203.0.113.7"  # the client behind the trusted proxy
    assert (handshake["method"], handshake["path"], handshake["status"]) == ("POST", "/cometd", 200)
    assert handshake["bytes"] > len(body) and handshake["level"] == "INFO"
    assert handshake["message"].startswith('203.0.113.7 "POST /cometd" 200 ')
    assert held["duration_ms"] >= 300 and held["duration_ms"] <= held_s * 1000 + 50, held
    assert first["duration_ms"] < held["duration_ms"]
    assert (missing["method"], missing["path"], missing["status"]) == ("GET", "/nothing", 404)
    assert "secret" not in json.dumps(missing)  # the query string is never logged
    assert (upgrade["path"], upgrade["status"], upgrade["remote"]) == ("/cometd", 101, "127.0.0.1")


def test_access_log_is_off_by_default() -> None:
    with start_server("--log-format", "json") as server:
        post(server.port, "/cometd", [HANDSHAKE])
        get(server.port, "/nothing")
        server.assert_stopped_cleanly()
    found = records(server)
    assert found and not [r for r in found if r["logger"] == "engine.access"]


def test_bad_log_format_is_refused() -> None:
    done = serve_briefly("--log-format", "xml")
    assert done.returncode == 2 and "log_format must be text or json" in done.stderr


# ------------------------------------------------------------ --log-config


def write_config(tmp_path: Path, log_file: Path, **loggers: Any) -> Path:
    config = {
        "version": 1,
        "formatters": {"plain": {"format": "%(node)s|%(worker)s|%(name)s|%(message)s"}},
        "handlers": {
            "file": {
                "class": "logging.FileHandler",
                "filename": str(log_file),
                "formatter": "plain",
            }
        },
        "root": {"handlers": ["file"], "level": "DEBUG"},
        "loggers": loggers,
    }
    path = tmp_path / "logging.json"
    path.write_text(json.dumps(config))
    return path


def test_log_config_routes_lines_to_a_file(tmp_path: Path) -> None:
    log_file = tmp_path / "engine.log"
    config = write_config(tmp_path, log_file)
    with start_server("--log-config", str(config), "--node-id", "cfg1", "--access-log") as server:
        get(server.port, "/nothing")
        server.assert_stopped_cleanly()
    assert server.stderr == ""  # all in the file, none on stderr
    lines = log_file.read_text().splitlines()
    assert any(line.startswith("cfg1|0|engine.server|listening on http://") for line in lines)
    assert any(
        line.startswith('cfg1|0|engine.access|127.0.0.1 "GET /nothing" 404') for line in lines
    )


def test_the_files_level_for_engine_wins_over_log_level(tmp_path: Path) -> None:
    log_file = tmp_path / "engine.log"
    config = write_config(tmp_path, log_file, engine={"level": "WARNING"})
    with start_server("--log-config", str(config), "--log-level", "debug") as server:
        server.assert_stopped_cleanly()
    assert "listening on" not in log_file.read_text()  # (INFO: below the file's WARNING)


def test_an_ini_log_config(tmp_path: Path) -> None:
    log_file = tmp_path / "engine.log"
    config = tmp_path / "logging.ini"
    config.write_text(
        "[loggers]\nkeys=root\n[handlers]\nkeys=file\n[formatters]\nkeys=plain\n"
        "[logger_root]\nlevel=INFO\nhandlers=file\n"
        f"[handler_file]\nclass=FileHandler\nformatter=plain\nargs=({str(log_file)!r},)\n"
        "[formatter_plain]\nformat=%(worker)s %(name)s %(message)s\n"
    )
    with start_server("--log-config", str(config)) as server:
        server.assert_stopped_cleanly()
    assert "0 engine.server listening on http://" in log_file.read_text()


def test_a_yaml_log_config_needs_pyyaml(tmp_path: Path) -> None:
    log_file = tmp_path / "engine.log"
    config = tmp_path / "logging.yaml"
    config.write_text(
        "version: 1\nhandlers:\n  file:\n    class: logging.FileHandler\n"
        f"    filename: {json.dumps(str(log_file))}\nroot:\n  handlers: [file]\n  level: INFO\n"
    )
    if importlib.util.find_spec("yaml") is not None:
        with start_server("--log-config", str(config)) as server:
            server.assert_stopped_cleanly()
        assert "listening on http://" in log_file.read_text()
        return
    done = serve_briefly("--log-config", str(config))
    assert done.returncode == 2 and "needs PyYAML (pip install pyyaml)" in done.stderr


@pytest.mark.parametrize(
    ("name", "text", "reason"),
    [
        ("missing.json", None, "no such file"),
        ("bad.json", '{"version": 1,', "not valid JSON"),
        ("list.json", "[1, 2]", "not a logging.config.dictConfig dictionary"),
        ("noversion.json", "{}", "dictionary doesn't specify a version"),
        (
            "badclass.json",
            '{"version": 1, "handlers": {"h": {"class": "no.such.Handler"}}}',
            "Unable to configure handler 'h'",
        ),
        ("missing.ini", None, "no such file"),
        ("bad.ini", "[loggers]\nkeys=root\n", "not a valid logging.config.fileConfig file"),
    ],
)
def test_a_bad_log_config_exits_2_before_listening(
    tmp_path: Path, name: str, text: str | None, reason: str
) -> None:
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    done = serve_briefly("--log-config", str(path))
    assert done.returncode == 2, done
    assert done.stderr.startswith(f"engine: --log-config {path}: "), done.stderr
    assert reason in done.stderr and len(done.stderr.splitlines()) == 1, done.stderr
    assert "engine serving" not in done.stdout


# --------------------------------------------------------------- workers


# A --log-config file with the engine's JSON formatter, on stderr: as --log-format json.
JSON_CONFIG = {
    "version": 1,
    "formatters": {"json": {"()": "engine.logs.JsonFormatter"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json"}},
    "root": {"handlers": ["stderr"], "level": "INFO"},
}


@pytest.mark.parametrize("how", ["--log-format", "--log-config"])
def test_workers_and_supervisor_lines_say_which_process(tmp_path: Path, how: str) -> None:
    """With a --log-config file, the supervisor and every worker apply it."""
    config = tmp_path / "logging.json"
    config.write_text(json.dumps(JSON_CONFIG))
    logging_args = ["--log-format", "json"] if how == "--log-format" else [how, str(config)]
    with RedisServer() as redis:
        server = start_server(
            "--workers", "2", "--broker", redis.url, "--node-id", "lg", "--access-log",
            *logging_args,
        )  # fmt: skip
        with server:
            for _ in range(6):  # (SO_REUSEPORT spreads them over the workers)
                post(server.port, "/cometd", [HANDSHAKE])
            server.assert_stopped_cleanly()
    found = records(server)
    by_worker: dict[str, set[str]] = {}
    for record in found:
        by_worker.setdefault(record["worker"], set()).add(record["node"])
    assert by_worker == {"supervisor": {"lg"}, "1": {"lgw1"}, "2": {"lgw2"}}, by_worker
    supervisor = [r["message"] for r in found if r["worker"] == "supervisor"]
    assert any(m.startswith("worker 1 (node lgw1, pid ") for m in supervisor), supervisor
    for index in ("1", "2"):
        assert any(
            r["worker"] == index and r["message"].startswith("listening on") for r in found
        ), found
