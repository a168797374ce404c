"""aiosfstream-ng pointed at a local engine as at a Salesforce org: an
authenticator that answers the local instance URL and a fixed token (no
OAuth round trip), and one run of its Client: subscribe (with the stored
replay markers, or a ReplayOption), `live()` once subscribed, then the
first `count` events (not a test module)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiosfstream_ng import Client
from aiosfstream_ng.auth import AuthenticatorBase
from aiosfstream_ng.replay import ReplayOption


class LocalOrg(AuthenticatorBase):
    """What a Salesforce token endpoint would answer, for the local server:
    the client then sends `Authorization: Bearer <token>` to
    <instance_url>/cometd/45.0."""

    def __init__(self, instance_url: str, token: str) -> None:
        super().__init__()
        self._instance_url, self._token = instance_url, token

    async def _authenticate(self) -> tuple[int, dict[str, Any]]:
        return 200, {
            "access_token": self._token,
            "token_type": "Bearer",
            "instance_url": self._instance_url,
        }


async def receive(
    auth: LocalOrg,
    channel: str,
    replay: Any,
    count: int,
    *,
    live: Callable[[], None] | None = None,
    fallback: ReplayOption | None = None,
    timeout: float = 15.0,
) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    client = Client(auth, replay=replay, replay_fallback=fallback)
    await client.open()
    try:
        await client.subscribe(channel)
        if live is not None:
            live()
        async with asyncio.timeout(timeout):
            while len(got) < count:
                got.append(await client.receive())
    finally:
        await client.close()
    return got
