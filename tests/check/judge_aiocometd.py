"""Runs aiocometd-ng (unmodified) against the client judge
(`python -m engine check --client`), one fresh client per situation:

    python tests/check/judge_aiocometd.py URL [--transport long-polling|websocket]

Each client subscribes to /judge/probe and publishes what it receives back on
/judge/echo. The loop polls the judge's /judge/state: a new `generation` means
a new situation (stop the client, start another); `done`, or the judge gone,
ends the driver.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Awaitable, Callable
from urllib.parse import urljoin

import aiohttp
from aiocometd_ng import Client, ConnectionType

POLL = 0.1  # seconds between looks at /judge/state
STOP = 5.0  # seconds a stopping client may take


async def one_client(url: str, transport: ConnectionType) -> None:
    try:
        async with Client(url, connection_types=[transport]) as client:
            await client.subscribe("/judge/probe")
            async for message in client:
                await client.publish("/judge/echo", message["data"])
    except Exception as error:  # the client gave up: wait to be replaced
        print(f"aiocometd: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
        await asyncio.Event().wait()


async def stop(task: asyncio.Task[None] | None) -> None:
    """Cancel the client, waiting (bounded) for it to close."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(BaseException):
        await asyncio.wait_for(task, STOP)


async def drive(url: str, run_client: Callable[[], Awaitable[None]]) -> None:
    """Run `run_client()` afresh for each situation the judge at `url` plays."""
    state_url = urljoin(url, "/judge/state")
    generation = None
    task: asyncio.Task[None] | None = None
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        try:
            while True:
                try:
                    async with http.get(state_url) as response:
                        state = await response.json()
                except (aiohttp.ClientError, TimeoutError):
                    break  # the judge is gone
                if state["done"]:
                    break
                if state["generation"] != generation:
                    await stop(task)
                    generation = state["generation"]
                    task = asyncio.create_task(run_client())
                await asyncio.sleep(POLL)
        finally:
            await stop(task)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument(
        "--transport", choices=["long-polling", "websocket"], default="long-polling"
    )
    args = parser.parse_args()
    types = {"long-polling": ConnectionType.LONG_POLLING, "websocket": ConnectionType.WEBSOCKET}
    transport = types[args.transport]
    asyncio.run(drive(args.url, lambda: one_client(args.url, transport)))


if __name__ == "__main__":
    main()
