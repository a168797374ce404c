"""The API in one page: a service, a listener, an extension, server publishes.

Run it with:  python -m engine serve --app examples.quickstart:server
"""

from __future__ import annotations

import asyncio
from typing import Any

from engine import BayeuxServer, Extension, ServerOptions, Session

server = BayeuxServer(ServerOptions(port=8080))


@server.service("/service/echo")
def echo(session: Session, message: dict[str, Any]) -> Any:
    """Answers the caller only (what the JS client's remoteCall() waits for)."""
    return {"echo": message["data"]}


@server.service("/service/quote")
async def quote(session: Session, message: dict[str, Any]) -> Any:
    """Services may be async: look something up, then answer."""
    await asyncio.sleep(0)
    return {"symbol": message["data"], "price": 189.5}


@server.on_publish("/chat/**")
def no_shouting(session: Session | None, channel: str, message: dict[str, Any]) -> bool:
    """Returning False deletes a message (the publisher gets 404::message_deleted)."""
    text = message["data"].get("text", "") if isinstance(message["data"], dict) else ""
    return not (text.isupper() and len(text) > 3)


@server.on_session_removed
def goodbye(session: Session, timeout: bool) -> None:
    server.publish("/chat/system", {"left": session.id, "expired": timeout})


class ServerTime(Extension):
    """Adds the server's receive order to every chat message it delivers."""

    def __init__(self) -> None:
        self.count = 0

    def outgoing(
        self, session: Session | None, message: dict[str, Any], request: dict[str, Any] | None
    ) -> bool:
        if request is None and message["channel"].startswith("/chat/"):
            self.count += 1
            message.setdefault("ext", {})["seq"] = self.count
        return True


server.add_extension(ServerTime())
