"""Publish from a backend: a client of the server HTTP API (engine.http_api).

    from engine.client import Publisher

    publisher = Publisher("http://127.0.0.1:8080/api", api_key=os.environ["ENGINE_API_KEY"])
    publisher.publish("/chat/room1", {"text": "hello"})

`Publisher` is blocking and thread-safe (one per process, shared by Django
views, Flask handlers or Celery tasks), on urllib3's connection pool;
`AsyncPublisher` is the same for asyncio code (FastAPI), on aiohttp.  (httpx
was tried first: on this machine it made 1,500 calls/s where urllib3 makes
3,400, and its async client 800 where aiohttp makes 5,900; bench/api_publish.py.)
Both keep a pool of keep-alive connections and retry what failed on the way
(the server could not be reached, timed out, or answered 502, 503 or 504)
with a growing pause:
a publish carries an idempotency key (a random one unless given), so a
retry of a publish that did get through is not delivered twice.  A deliver
is retried only when the request did not reach the server.

Errors: `ApiError` with the server's status and message (a bad channel,
a refused publish, a wrong key), after the retries for the transient ones.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import ssl
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import urllib3

__all__ = ["ApiError", "AsyncPublisher", "Publisher"]

RETRIED_STATUSES = frozenset((502, 503, 504))


class ApiError(Exception):
    """The server refused a call (status 4xx), or failed it after the retries."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class _Calls:
    """What both publishers send: paths, bodies, and what may be retried."""

    def __init__(self, url: str, api_key: str, retries: int, backoff: float) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"the API URL must be http:// or https://, not {url!r}")
        if not api_key:
            raise ValueError("an api_key is needed (the server's --api-key)")
        self.url = url.rstrip("/")
        self.headers = {"X-API-Key": api_key, "Content-Type": "application/json"}
        self.retries = retries
        self.backoff = backoff

    @staticmethod
    def body(
        target: dict[str, Any], data: Any, ext: dict[str, Any] | None, key: str | bool | None
    ) -> dict[str, Any]:
        """A call's body: `target` (channel, channels, session), data, ext, and
        an idempotency key (a random one when `key` is None; none when False)."""
        body: dict[str, Any] = {**target, "data": data}
        if ext is not None:
            body["ext"] = ext
        if key is not False:
            body["idempotency_key"] = key or secrets.token_hex(16)
        return body

    def pause(self, attempt: int) -> float:
        return float(self.backoff * (2**attempt))

    @staticmethod
    def result(status: int, payload: bytes) -> Any:
        try:
            answer = json.loads(payload)
        except ValueError:
            raise ApiError(status, payload[:200].decode("utf-8", "replace") or "not JSON") from None
        if status != 200 or not isinstance(answer, dict) or "result" not in answer:
            error = answer.get("error") if isinstance(answer, dict) else None
            message = error.get("message") if isinstance(error, dict) else str(answer)[:200]
            raise ApiError(status, str(message))
        return answer["result"]

    def retried(self, status: int, attempt: int, idempotent: bool) -> bool:
        """Is an answer with `status` worth sending the call again?"""
        return status in RETRIED_STATUSES and attempt < self.retries and idempotent


def _ssl_context(verify: bool | str) -> ssl.SSLContext | bool:
    """`verify`: True (the system's CAs), False (no check), or a CA file."""
    if verify is True:
        return True
    if verify is False:
        return False
    return ssl.create_default_context(cafile=verify)


class Publisher:
    """Blocking, thread-safe client of the server HTTP API (see the module docstring)."""

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        timeout: float = 5.0,
        retries: int = 3,
        backoff: float = 0.1,
        max_connections: int = 10,
        verify: bool | str = True,
    ) -> None:
        self._calls = _Calls(url, api_key, retries, backoff)
        split = urlsplit(self._calls.url)
        self._path = split.path
        host = split.hostname or "127.0.0.1"
        options: dict[str, Any] = {
            "maxsize": max_connections,
            "block": True,  # (threads beyond max_connections wait for a connection)
            "timeout": urllib3.Timeout(total=timeout),
            "retries": False,  # (retried here, knowing what is idempotent)
            "headers": self._calls.headers,
        }
        if split.scheme == "https":
            if verify is False:
                options["cert_reqs"] = "CERT_NONE"
            elif isinstance(verify, str):
                options["ca_certs"] = verify
            self._pool: urllib3.HTTPConnectionPool = urllib3.HTTPSConnectionPool(
                host, split.port or 443, **options
            )
        else:
            self._pool = urllib3.HTTPConnectionPool(host, split.port or 80, **options)

    def publish(
        self,
        channel: str,
        data: Any,
        *,
        ext: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Deliver `data` to every subscriber of `channel` in the cluster."""
        body = self._calls.body({"channel": channel}, data, ext, idempotency_key)
        return self._send("POST", "publish", body, idempotent=True)  # type: ignore[no-any-return]

    def broadcast(
        self,
        channels: Sequence[str],
        data: Any,
        *,
        ext: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        body = self._calls.body({"channels": list(channels)}, data, ext, idempotency_key)
        return self._send("POST", "broadcast", body, idempotent=True)  # type: ignore[no-any-return]

    def deliver(
        self, session: str, channel: str, data: Any, *, ext: dict[str, Any] | None = None
    ) -> None:
        body = self._calls.body({"session": session, "channel": channel}, data, ext, False)
        self._send("POST", "deliver", body, idempotent=False)

    def disconnect(self, session: str) -> None:
        self._send("POST", "disconnect", {"session": session}, idempotent=False)

    def channels(self) -> dict[str, int]:
        return self._send("GET", "channels", None, idempotent=True)["channels"]  # type: ignore[no-any-return]

    def channel(self, channel: str) -> dict[str, Any]:
        return self._send("GET", "channels" + channel, None, idempotent=True)  # type: ignore[no-any-return]

    def session(self, client_id: str) -> dict[str, Any] | None:
        try:
            return self._send("GET", "sessions/" + client_id, None, idempotent=True)  # type: ignore[no-any-return]
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    def _send(self, method: str, path: str, body: Any, *, idempotent: bool) -> Any:
        calls = self._calls
        data = None if body is None else json.dumps(body).encode()
        attempt = 0
        while True:
            try:
                response = self._pool.urlopen(method, f"{self._path}/{path}", body=data)
            except urllib3.exceptions.HTTPError as error:
                # Never sent (no connection): always again; else only if idempotent.
                never_sent = isinstance(error, urllib3.exceptions.ConnectTimeoutError)
                if attempt >= calls.retries or not (never_sent or idempotent):
                    raise ApiError(503, f"the server could not be reached: {error!r}") from error
            else:
                if not calls.retried(response.status, attempt, idempotent):
                    return calls.result(response.status, response.data)
            time.sleep(calls.pause(attempt))
            attempt += 1

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncPublisher:
    """The asyncio twin of `Publisher` (same methods, awaited)."""

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        timeout: float = 5.0,
        retries: int = 3,
        backoff: float = 0.1,
        max_connections: int = 10,
        verify: bool | str = True,
    ) -> None:
        self._calls = _Calls(url, api_key, retries, backoff)
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._max_connections = max_connections
        self._ssl = _ssl_context(verify)
        self._session: aiohttp.ClientSession | None = None  # made in the running loop

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers=self._calls.headers,
                timeout=self._timeout,
                connector=aiohttp.TCPConnector(limit=self._max_connections, ssl=self._ssl),
            )
        return self._session

    async def publish(
        self,
        channel: str,
        data: Any,
        *,
        ext: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        body = self._calls.body({"channel": channel}, data, ext, idempotency_key)
        return await self._send("POST", "publish", body, idempotent=True)  # type: ignore[no-any-return]

    async def broadcast(
        self,
        channels: Sequence[str],
        data: Any,
        *,
        ext: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        body = self._calls.body({"channels": list(channels)}, data, ext, idempotency_key)
        return await self._send("POST", "broadcast", body, idempotent=True)  # type: ignore[no-any-return]

    async def deliver(
        self, session: str, channel: str, data: Any, *, ext: dict[str, Any] | None = None
    ) -> None:
        body = self._calls.body({"session": session, "channel": channel}, data, ext, False)
        await self._send("POST", "deliver", body, idempotent=False)

    async def disconnect(self, session: str) -> None:
        await self._send("POST", "disconnect", {"session": session}, idempotent=False)

    async def channels(self) -> dict[str, int]:
        return (await self._send("GET", "channels", None, idempotent=True))["channels"]  # type: ignore[no-any-return]

    async def channel(self, channel: str) -> dict[str, Any]:
        return await self._send("GET", "channels" + channel, None, idempotent=True)  # type: ignore[no-any-return]

    async def session(self, client_id: str) -> dict[str, Any] | None:
        try:
            return await self._send("GET", "sessions/" + client_id, None, idempotent=True)  # type: ignore[no-any-return]
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    async def _send(self, method: str, path: str, body: Any, *, idempotent: bool) -> Any:
        calls = self._calls
        data = None if body is None else json.dumps(body).encode()
        attempt = 0
        while True:
            try:
                async with self._client().request(
                    method, f"{calls.url}/{path}", data=data
                ) as response:
                    status, payload = response.status, await response.read()
            except (aiohttp.ClientError, TimeoutError) as error:
                never_sent = isinstance(error, aiohttp.ClientConnectorError)
                if attempt >= calls.retries or not (never_sent or idempotent):
                    raise ApiError(503, f"the server could not be reached: {error!r}") from error
            else:
                if not calls.retried(status, attempt, idempotent):
                    return calls.result(status, payload)
            await asyncio.sleep(calls.pause(attempt))
            attempt += 1

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> AsyncPublisher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
