"""Test support: a small Bayeux HTTP client for a server in this process.

The server runs in-process (`harness.running_server`); clients are blocking
`http.client` connections.  `request()` and `getresponse()` are separate
calls, so a test can leave a /meta/connect held on one connection while it
publishes on another, without threads.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from engine import BayeuxServer

__all__ = ["Browser", "Response", "families", "raw_exchange", "scrape", "value"]


class Response:
    def __init__(self, status: int, headers: http.client.HTTPMessage, body: bytes, took: float):
        self.status = status
        self.headers = headers
        self.body = body
        self.took = took

    @property
    def messages(self) -> list[dict[str, Any]]:
        value = json.loads(self.body)
        assert isinstance(value, list), value
        return value

    def reply(self, channel: str) -> dict[str, Any]:
        found = [
            m
            for m in self.messages
            if m.get("channel") == channel and "successful" in m and "data" not in m
        ]
        assert len(found) == 1, self.messages
        return found[0]

    def events(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if "successful" not in m]


class Browser:
    """One browser (one cookie jar) with its two HTTP connections, as the JS client has."""

    def __init__(self, server: BayeuxServer, cookie: str | None = None):
        host, port = server.address
        self.path = server.options.path
        self.connect_conn = http.client.HTTPConnection(host, port, timeout=40)
        self.other_conn = http.client.HTTPConnection(host, port, timeout=40)
        self.cookie = cookie
        self.client_id: str | None = None
        # Sent with every request besides: headers, and the application's own
        # cookies next to BAYEUX_BROWSER (a login's session cookie).
        self.headers: dict[str, str] = {}
        self.cookies = ""
        self._ids = 0
        self._sent_at = 0.0

    def next_id(self) -> str:
        self._ids += 1
        return str(self._ids)

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", **self.headers}
        cookies = [f"BAYEUX_BROWSER={self.cookie}" if self.cookie else "", self.cookies]
        if any(cookies):
            headers["Cookie"] = "; ".join(c for c in cookies if c)
        return headers

    def start(
        self, body: Any, conn: http.client.HTTPConnection | None = None, suffix: str = ""
    ) -> http.client.HTTPConnection:
        conn = conn or self.other_conn
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        conn.request("POST", self.path + suffix, body=data, headers=self._headers())
        self._sent_at = time.monotonic()
        return conn

    def finish(self, conn: http.client.HTTPConnection | None = None) -> Response:
        conn = conn or self.other_conn
        resp = conn.getresponse()
        body = resp.read()
        took = time.monotonic() - self._sent_at
        cookie = resp.headers.get("Set-Cookie")
        if cookie and cookie.startswith("BAYEUX_BROWSER="):
            self.cookie = cookie.split(";", 1)[0].split("=", 1)[1]
        return Response(resp.status, resp.headers, body, took)

    def send(self, body: Any, suffix: str = "") -> Response:
        self.start(body, suffix=suffix)
        return self.finish()

    def handshake(self, **fields: Any) -> Response:
        message = {
            "channel": "/meta/handshake",
            "version": "1.0",
            "supportedConnectionTypes": ["long-polling"],
            "id": self.next_id(),
            **fields,
        }
        resp = self.send([message], "/handshake")
        reply = resp.reply("/meta/handshake")
        if reply["successful"]:
            self.client_id = reply["clientId"]
        return resp

    def connect_message(self, **fields: Any) -> dict[str, Any]:
        return {
            "channel": "/meta/connect",
            "clientId": self.client_id,
            "connectionType": "long-polling",
            "id": self.next_id(),
            **fields,
        }

    def connect(self, **fields: Any) -> Response:
        self.start([self.connect_message(**fields)], self.connect_conn, "/connect")
        return self.finish(self.connect_conn)

    def start_connect(self, **fields: Any) -> None:
        self.start([self.connect_message(**fields)], self.connect_conn, "/connect")

    def finish_connect(self) -> Response:
        return self.finish(self.connect_conn)

    def message(self, channel: str, **fields: Any) -> dict[str, Any]:
        return {"channel": channel, "clientId": self.client_id, "id": self.next_id(), **fields}

    def subscribe(self, subscription: Any) -> Response:
        return self.send([self.message("/meta/subscribe", subscription=subscription)])

    def unsubscribe(self, subscription: Any) -> Response:
        return self.send([self.message("/meta/unsubscribe", subscription=subscription)])

    def publish(self, channel: str, data: Any, **fields: Any) -> Response:
        return self.send([self.message(channel, data=data, **fields)])

    def ready(self) -> Browser:
        """Handshake and do the first (immediate) connect."""
        assert self.handshake().reply("/meta/handshake")["successful"]
        assert self.connect(advice={"timeout": 0}).reply("/meta/connect")["successful"]
        return self

    def close(self) -> None:
        self.connect_conn.close()
        self.other_conn.close()


def raw_exchange(server: BayeuxServer, data: bytes, timeout: float = 5) -> bytes:
    """Send raw bytes on a new connection; return everything until it closes."""
    import socket

    host, port = server.address
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


# ------------------------------------------------------------------ metrics


def scrape(url: str) -> dict[str, Any]:
    """Family name -> {sample name + sorted labels: value}."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = resp.read().decode()
    return families(text)


def families(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for family in text_string_to_metric_families(text):
        samples = out.setdefault(family.name, {"type": family.type})
        for s in family.samples:
            key = s.name + "".join(f",{k}={v}" for k, v in sorted(s.labels.items()))
            samples[key] = s.value
    return out


def value(found: dict[str, Any], family: str, sample: str | None = None, **labels: str) -> float:
    key = (sample or family) + "".join(f",{k}={v}" for k, v in sorted(labels.items()))
    return float(found[family][key])
