"""Status and admin: /health, /stats, /metrics (scraped with prometheus_client's
parser), /service/status over Bayeux, and static files."""

from __future__ import annotations

import json
from pathlib import Path

from harness import running_server
from prometheus_client.parser import text_string_to_metric_families
from support import Browser, raw_exchange

import engine

TOKEN = "s3cret-token"


def get(server, path: str, token: str | None = None) -> tuple[int, bytes, bytes]:  # type: ignore[no-untyped-def]
    auth = f"Authorization: Bearer {token}\r\n".encode() if token else b""
    raw = raw_exchange(
        server, b"GET %s HTTP/1.1\r\nHost: x\r\n%sConnection: close\r\n\r\n" % (path.encode(), auth)
    )
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), head, body


def test_health_always_on() -> None:
    with running_server() as server:
        status, _, body = get(server, "/health")
        assert status == 200 and json.loads(body) == {"status": "ok"}


def test_stats_and_metrics_off_without_token() -> None:
    with running_server() as server:
        assert get(server, "/stats")[0] == 404
        assert get(server, "/metrics")[0] == 404


def test_stats_and_metrics_need_the_token() -> None:
    with running_server(admin_token=TOKEN, timeout=1500) as server:
        for path in ("/stats", "/metrics"):
            for token in (None, "wrong"):
                status, head, body = get(server, path, token)
                assert status == 401
                assert b"WWW-Authenticate: Bearer" in head
                assert b"sessions" not in body  # nothing leaked
        lp = Browser(server).ready()
        lp.subscribe(["/chat/*", "/news"])
        Browser(server).ready().subscribe("/news")
        status, _, body = get(server, "/stats", TOKEN)
        assert status == 200
        stats = json.loads(body)
        assert stats["sessions"] == 2
        assert stats["sessions_by_transport"] == {"long-polling": 2}
        assert stats["channels"] == 2
        assert stats["counters"]["handshakes"] == 2
        assert stats["rss_bytes_per_session"] > 0
        assert stats["open_files_limit"] > 0

        status, head, body = get(server, "/metrics", TOKEN)
        assert status == 200 and b"text/plain" in head
        families = {f.name: f for f in text_string_to_metric_families(body.decode())}
        (sample,) = families["bayeux_sessions"].samples
        assert sample.value == 2 and sample.labels == {"node": server.node_id}
        assert families["bayeux_handshakes"].type == "counter"


def test_status_service_over_bayeux() -> None:
    with running_server(admin_token=TOKEN) as server:
        watcher = Browser(server).ready()
        watcher.subscribe("/chat/*")
        b = Browser(server).ready()
        refused = b.publish("/service/status", {}).reply("/service/status")
        assert refused["successful"] is False and refused["error"] == "403::service_denied"
        resp = b.publish("/service/status", {"channel": "/chat/*"}, ext={"admin_token": TOKEN})
        (answer,) = [m for m in resp.messages if "data" in m]
        assert answer["successful"] is True
        assert answer["data"]["sessions"] == 2
        assert answer["data"]["channel"] == {
            "name": "/chat/*",
            "subscribers": 1,
            "matching_sessions": None,
        }


def test_static_files(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<h1>hi</h1>")
    (tmp_path / "app.js").write_text("console.log(1)")
    secret = tmp_path.parent / "secret.txt"
    secret.write_text("no")
    with running_server(static_dir=str(tmp_path)) as server:
        status, head, body = get(server, "/")
        assert status == 200 and body == b"<h1>hi</h1>" and b"text/html" in head
        status, head, _ = get(server, "/app.js")
        assert status == 200 and b"javascript" in head
        assert get(server, "/../secret.txt")[0] == 404
        assert get(server, "/%2e%2e/secret.txt")[0] == 404
        assert get(server, "/missing.html")[0] == 404
        # The Bayeux endpoint is unaffected.
        assert Browser(server).ready().client_id


def test_static_directory_without_slash_redirects(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<h1>app</h1>")

    def setup(server) -> None:  # type: ignore[no-untyped-def]
        server.static("/app", str(tmp_path))

    with running_server(setup=setup) as server:
        status, head, _ = get(server, "/app")
        assert status == 301 and b"Location: /app/\r\n" in head
        status, _, body = get(server, "/app/")
        assert status == 200 and body == b"<h1>app</h1>"


def test_recovery_extension_is_served(tmp_path: Path) -> None:
    """GET and HEAD /bayeux-engine/cometd-recovery.js: the file shipped in
    engine/static, as JavaScript any origin may import; ahead of a static
    directory mounted at /."""
    (tmp_path / "bayeux-engine").mkdir()
    (tmp_path / "bayeux-engine" / "cometd-recovery.js").write_text("not ours")
    shipped = (Path(engine.__file__).parent / "static" / "cometd-recovery.js").read_bytes()
    with running_server(static_dir=str(tmp_path)) as server:
        status, head, body = get(server, "/bayeux-engine/cometd-recovery.js?v=1")
        assert status == 200 and body == shipped
        assert b"export class RecoveryExtension" in body
        assert b"Content-Type: application/javascript; charset=utf-8\r\n" in head
        assert b"Access-Control-Allow-Origin: *\r\n" in head
        raw = raw_exchange(
            server,
            b"HEAD /bayeux-engine/cometd-recovery.js HTTP/1.1\r\n"
            b"Host: x\r\nConnection: close\r\n\r\n",
        )
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and body == b""
        assert b"Content-Length: %d" % len(shipped) in head.split(b"\r\n")
        assert get(server, "/bayeux-engine/other.js")[0] == 404
        raw = raw_exchange(
            server,
            b"POST /bayeux-engine/cometd-recovery.js HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: 0\r\nConnection: close\r\n\r\n",
        )
        assert raw.startswith(b"HTTP/1.1 404"), raw[:100]
