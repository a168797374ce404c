"""Channel history recovery in a Python client: an aiocometd-ng extension.

The same protocol as the JavaScript RecoveryExtension
(engine/static/cometd-recovery.js): the server, started with
`--history-channels`, puts `ext.position = {epoch, offset}` on every message
of a history channel; this extension remembers the newest one per channel
and sends them back in `ext.recover` with each /meta/subscribe.  aiocometd-ng
subscribes again by itself after a re-handshake (its first /meta/connect
carries a /meta/subscribe per subscription), so a lost session comes back
with what it missed, in order, before anything live.  When the server cannot
replay (`recovered: false`: history expired, stream restarted, ...),
`on_recovery_failed(channel, answer)` is called and the application must
reload its state another way.

Run it (`pip install aiocometd-ng`; a host name, not 127.0.0.1: aiohttp's
cookie jar ignores cookies from IP addresses, and the server needs its
BAYEUX_BROWSER cookie back):

    python -m engine serve --history-channels '/chat/**' &
    python examples/recovery_aiocometd.py http://localhost:8080/cometd /chat/room
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import Any

from aiocometd_ng import Client, ConnectionType, Extension

Position = dict[str, Any]  # {"epoch": str, "offset": int}


class RecoveryExtension(Extension):
    """Remembers positions; asks for recovery on every subscribe."""

    def __init__(
        self,
        on_recovery_failed: Callable[[str, dict[str, Any]], None] | None = None,
        positions: dict[str, Position] | None = None,
    ) -> None:
        self.on_recovery_failed = on_recovery_failed
        # Positions saved earlier (positions()) let a new process recover too.
        self._positions = {c: dict(p) for c, p in (positions or {}).items() if is_position(p)}

    def positions(self) -> dict[str, Position]:
        """The newest position per channel (a copy)."""
        return {channel: dict(position) for channel, position in self._positions.items()}

    def forget(self, channel: str | None = None) -> None:
        """Recover `channel` (every channel when None) no more."""
        if channel is None:
            self._positions.clear()
        else:
            self._positions.pop(channel, None)

    async def outgoing(self, payload: list[dict[str, Any]], headers: Any) -> None:
        for message in payload:
            if message.get("channel") != "/meta/subscribe":
                continue
            wanted = message.get("subscription")
            patterns = wanted if isinstance(wanted, list) else [wanted]
            recover = {
                channel: dict(position)
                for channel, position in self._positions.items()
                if any(isinstance(p, str) and channel_matches(p, channel) for p in patterns)
            }
            if recover:
                # A new dict: aiocometd builds messages from shared templates.
                ext = dict(message.get("ext") or {})
                ext["recover"] = {**recover, **(ext.get("recover") or {})}
                message["ext"] = ext

    async def incoming(self, payload: list[dict[str, Any]], headers: Any = None) -> None:
        for message in payload:
            channel = message.get("channel")
            ext = message.get("ext") or {}
            if channel == "/meta/subscribe":
                if message.get("successful") is True and isinstance(ext.get("recover"), dict):
                    self._answered(ext["recover"])
            elif isinstance(channel, str) and not channel.startswith("/meta/"):
                if is_position(ext.get("position")):
                    self._note(channel, ext["position"])

    def _note(self, channel: str, position: Position) -> None:
        # A new epoch replaces the old position (the stream restarted); within
        # an epoch only a greater offset counts.
        known = self._positions.get(channel)
        epoch, offset = position["epoch"], position["offset"]
        if known is None or known["epoch"] != epoch or offset > known["offset"]:
            self._positions[channel] = {"epoch": epoch, "offset": offset}

    def _answered(self, recover: dict[str, Any]) -> None:
        for channel, answer in recover.items():
            if not isinstance(answer, dict):
                continue
            # Replayed messages (recovered: true) and live ones still in flight
            # (already_subscribed) move the position as they arrive; taking the
            # reply's newer one would skip them if the connection broke first.
            if answer.get("recovered") is True or answer.get("reason") == "already_subscribed":
                continue
            if is_position(answer):
                self._note(channel, answer)
            if answer.get("recovered") is False and self.on_recovery_failed is not None:
                self.on_recovery_failed(channel, answer)


def channel_matches(pattern: str, channel: str) -> bool:
    """Bayeux matching: `/a/*` one more segment, `/a/**` one or more."""
    prefix, _, last = pattern.rpartition("/")
    if last not in ("*", "**"):
        return pattern == channel
    rest = channel[len(prefix) + 1 :] if channel.startswith(prefix + "/") else ""
    return bool(rest) and (last == "**" or "/" not in rest)


def is_position(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and isinstance(value.get("epoch"), str)
        and type(value.get("offset")) is int
        and value["offset"] >= 0
    )


async def main(url: str, channel: str) -> None:
    def resync(channel: str, answer: dict[str, Any]) -> None:
        print(f"missed messages on {channel} are gone ({answer['reason']}): reload", flush=True)

    recovery = RecoveryExtension(on_recovery_failed=resync)
    client = Client(
        url,
        extensions=[recovery],
        connection_types=[ConnectionType.LONG_POLLING],
        # No connection timeout: aiocometd-ng 0.5.6's watcher for it fails on
        # Python >= 3.10 at the first network error, and receiving stops.
        connection_timeout=0,
    )
    async with client:
        await client.subscribe(channel)
        async for message in client:
            position = (message.get("ext") or {}).get("position")
            print(message["channel"], message.get("data"), position, flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: recovery_aiocometd.py URL CHANNEL")
    asyncio.run(main(sys.argv[1], sys.argv[2]))
