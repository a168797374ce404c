"""A chat room: the engine serving a page that uses the CometD JavaScript client.

    cd examples/chat && npm ci && cd ../..
    python -m engine serve --app examples.chat.server:server --port 8080
    # then open http://127.0.0.1:8080/chat/ in two browsers (or two tabs)

What runs where:

- `/chat/` is the page (`static/index.html`, `static/chat.js`) and
  `/chat/vendor/cometd/` the npm `cometd` 9 package (ES modules) it imports;
  the Bayeux endpoint is `/cometd` on the same host and port.
- A member joins with a remote call to `/service/chat/join` (`{"name": ...}`);
  the answer is the member list, and the room hears `{"kind": "join"}`.
- A member speaks by publishing `{"text": ...}` to `/service/chat/say`; the
  server stamps the member's name and the time and re-publishes it on
  `/chat/room`, so nobody can speak under someone else's name.  Clients may
  subscribe to `/chat/room` but not publish there themselves.
- When a member's session goes away (disconnect, or expiry after a closed tab)
  the room hears `{"kind": "leave"}` with the remaining members.
- The room keeps its recent messages (`server.history`): a page whose session
  was lost (network down longer than max_interval) gets what it missed when
  it is back, through the engine's RecoveryExtension
  (`/bayeux-engine/cometd-recovery.js`).
"""

from __future__ import annotations

import time
import unicodedata
from pathlib import Path
from typing import Any

from engine import BayeuxServer, ServerOptions, Session

__all__ = ["ROOM", "create_server", "server"]

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
CLIENT_DIR = HERE / "node_modules" / "cometd"

ROOM = "/chat/room"
MAX_NAME = 32
MAX_TEXT = 500


def clean(value: object, limit: int) -> str | None:
    """A one-line string of 1..limit characters without control characters, or None."""
    if not isinstance(value, str):
        return None
    text = " ".join(value.split())
    if not text or len(text) > limit:
        return None
    if any(unicodedata.category(c) in ("Cc", "Cf") for c in text):
        return None
    return text


def create_server(**option_overrides: Any) -> BayeuxServer:
    """The chat server; `option_overrides` are `ServerOptions` fields (port=..., ...)."""
    if not (CLIENT_DIR / "cometd.js").is_file():
        raise RuntimeError(
            f"the CometD JavaScript client is missing from {CLIENT_DIR}: "
            f"run `npm ci` in {HERE} first"
        )
    server = BayeuxServer(ServerOptions(**option_overrides))
    server.static("/chat", str(STATIC_DIR))
    server.static("/chat/vendor/cometd", str(CLIENT_DIR))
    server.history(ROOM)

    members: dict[str, str] = {}  # clientId -> name

    def roster() -> list[str]:
        return sorted(members.values(), key=str.casefold)

    @server.service("/service/chat/join")
    def join(session: Session, message: dict[str, Any]) -> dict[str, Any]:
        data = message.get("data")
        name = clean(data.get("name") if isinstance(data, dict) else None, MAX_NAME)
        if name is None:
            raise PermissionError(f"a name is 1 to {MAX_NAME} printable characters")
        previous = members.get(session.id)
        members[session.id] = name
        if previous != name:
            server.publish(ROOM, {"kind": "join", "user": name, "members": roster()})
        return {"name": name, "members": roster()}

    @server.service("/service/chat/say")
    def say(session: Session, message: dict[str, Any]) -> None:
        name = members.get(session.id)
        if name is None:
            raise PermissionError("join the room before speaking")
        data = message.get("data")
        text = clean(data.get("text") if isinstance(data, dict) else None, MAX_TEXT)
        if text is None:
            raise PermissionError(f"a message is 1 to {MAX_TEXT} printable characters")
        server.publish(
            ROOM, {"kind": "message", "user": name, "text": text, "ts": int(time.time() * 1000)}
        )

    @server.on_publish("/chat/**")
    def only_the_server_speaks(
        session: Session | None, channel: str, message: dict[str, Any]
    ) -> bool:
        # Client publishes come through /service/chat/say (404::message_deleted here).
        return False

    @server.on_session_removed
    def left(session: Session, timeout: bool) -> None:
        name = members.pop(session.id, None)
        if name is not None:
            reason = "timeout" if timeout else "left"
            server.publish(
                ROOM, {"kind": "leave", "user": name, "reason": reason, "members": roster()}
            )

    return server


server = create_server()
