"""Publish from a backend: a client of the server HTTP API (engine.http_api).

    from engine.client import Publisher

    publisher = Publisher("http://127.0.0.1:8080/api", api_key=os.environ["ENGINE_API_KEY"])
    publisher.publish("/chat/room1", {"text": "hello"})

`Publisher` is blocking and thread-safe (one per process, shared by Django
views, Flask handlers or Celery tasks); `AsyncPublisher` is the same for
asyncio code (FastAPI, aiohttp).  Both keep a pool of keep-alive
connections (httpx) and retry what failed on the way (the server could not
be reached, timed out, or answered 502, 503 or 504) with a growing pause:
a publish carries an idempotency key (a random one unless given), so a
retry of a publish that did get through is not delivered twice.  A deliver
is retried only when the request did not reach the server.

Errors: `ApiError` with the server's status and message (a bad channel,
a refused publish, a wrong key), after the retries for the transient ones.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Sequence
from typing import Any

import httpx

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
    def publish_body(
        channel: str, data: Any, ext: dict[str, Any] | None, key: str | None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"channel": channel, "data": data}
        if ext is not None:
            body["ext"] = ext
        body["idempotency_key"] = key or secrets.token_hex(16)
        return body

    @staticmethod
    def broadcast_body(
        channels: Sequence[str], data: Any, ext: dict[str, Any] | None, key: str | None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"channels": list(channels), "data": data}
        if ext is not None:
            body["ext"] = ext
        body["idempotency_key"] = key or secrets.token_hex(16)
        return body

    def pause(self, attempt: int) -> float:
        return float(self.backoff * (2**attempt))

    @staticmethod
    def retry_on(error: httpx.HTTPError, idempotent: bool) -> bool:
        """May a call that failed so be sent again?"""
        if isinstance(error, httpx.ConnectError | httpx.PoolTimeout | httpx.ConnectTimeout):
            return True  # it never reached the server
        return idempotent and isinstance(error, httpx.TransportError)

    @staticmethod
    def result(response: httpx.Response) -> Any:
        try:
            answer = response.json()
        except ValueError:
            raise ApiError(response.status_code, response.text[:200] or "not JSON") from None
        if response.status_code != 200 or not isinstance(answer, dict) or "result" not in answer:
            error = answer.get("error") if isinstance(answer, dict) else None
            message = error.get("message") if isinstance(error, dict) else str(answer)[:200]
            raise ApiError(response.status_code, str(message))
        return answer["result"]


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
        self._client = httpx.Client(
            timeout=timeout,
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            verify=verify,  # a CA file for a server with its own certificate
            headers=self._calls.headers,
        )

    def publish(
        self,
        channel: str,
        data: Any,
        *,
        ext: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Deliver `data` to every subscriber of `channel` in the cluster."""
        body = self._calls.publish_body(channel, data, ext, idempotency_key)
        return self._send("POST", "publish", body, idempotent=True)  # type: ignore[no-any-return]

    def broadcast(
        self,
        channels: Sequence[str],
        data: Any,
        *,
        ext: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        body = self._calls.broadcast_body(channels, data, ext, idempotency_key)
        return self._send("POST", "broadcast", body, idempotent=True)  # type: ignore[no-any-return]

    def deliver(
        self, session: str, channel: str, data: Any, *, ext: dict[str, Any] | None = None
    ) -> None:
        body: dict[str, Any] = {"session": session, "channel": channel, "data": data}
        if ext is not None:
            body["ext"] = ext
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
        attempt = 0
        while True:
            try:
                response = self._client.request(method, f"{calls.url}/{path}", json=body)
            except httpx.HTTPError as error:
                if attempt >= calls.retries or not calls.retry_on(error, idempotent):
                    raise ApiError(503, f"the server could not be reached: {error!r}") from error
            else:
                if (
                    response.status_code not in RETRIED_STATUSES
                    or attempt >= calls.retries
                    or not idempotent
                ):
                    return calls.result(response)
            time.sleep(calls.pause(attempt))
            attempt += 1

    def close(self) -> None:
        self._client.close()

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
        self._client = httpx.AsyncClient(
            timeout=timeout,
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            verify=verify,
            headers=self._calls.headers,
        )

    async def publish(
        self,
        channel: str,
        data: Any,
        *,
        ext: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        body = self._calls.publish_body(channel, data, ext, idempotency_key)
        return await self._send("POST", "publish", body, idempotent=True)  # type: ignore[no-any-return]

    async def broadcast(
        self,
        channels: Sequence[str],
        data: Any,
        *,
        ext: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        body = self._calls.broadcast_body(channels, data, ext, idempotency_key)
        return await self._send("POST", "broadcast", body, idempotent=True)  # type: ignore[no-any-return]

    async def deliver(
        self, session: str, channel: str, data: Any, *, ext: dict[str, Any] | None = None
    ) -> None:
        body: dict[str, Any] = {"session": session, "channel": channel, "data": data}
        if ext is not None:
            body["ext"] = ext
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
        attempt = 0
        while True:
            try:
                response = await self._client.request(method, f"{calls.url}/{path}", json=body)
            except httpx.HTTPError as error:
                if attempt >= calls.retries or not calls.retry_on(error, idempotent):
                    raise ApiError(503, f"the server could not be reached: {error!r}") from error
            else:
                if (
                    response.status_code not in RETRIED_STATUSES
                    or attempt >= calls.retries
                    or not idempotent
                ):
                    return calls.result(response)
            await asyncio.sleep(calls.pause(attempt))
            attempt += 1

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> AsyncPublisher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
