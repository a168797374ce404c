"""Extensions: hooks on every incoming and outgoing message (CometD extensions: https://docs.cometd.org/current/reference/#_extensions).

An extension sees each message as a dict and may change it in place, add
`ext` entries, or delete it by returning False.  Server extensions run on
every message; session extensions (`session.add_extension`) only on that
session's.  Order, as in CometD: incoming, server extensions in registration
order then the session's; outgoing, the session's in reverse order then the
server's in reverse order.

Encode once: a broadcast is encoded once for all its
subscribers, so server extensions see an outgoing broadcast once, at publish
time, with `session=None`.  A session extension that changes a delivery
causes a re-encode for that session only.

`TimesyncExtension` implements CometD's timesync (`ext.timesync`, 10.2).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from engine.protocol.message import Message

if TYPE_CHECKING:
    from engine.protocol.session import Session

__all__ = ["Extension", "TimesyncExtension"]


class Extension:
    """Subclass and override what you need. Return False to delete the message."""

    def incoming(self, session: Session | None, message: Message) -> bool:
        """A message from a client; `session` is None before its handshake."""
        return True

    def outgoing(self, session: Session | None, message: Message, request: Message | None) -> bool:
        """A reply (with the `request` it answers) or a delivery (`request` None)."""
        return True


class TimesyncExtension(Extension):
    """Lets clients estimate the server clock offset (CometD's TimeSyncExtension)."""

    KEY = "timesync"
    _RECEIVED = "__engine_timesync_ts"  # stored on the request dict only, never sent

    def incoming(self, session: Session | None, message: Message) -> bool:
        channel = message.get("channel")
        if type(channel) is not str or not channel.startswith("/meta/"):
            return True  # the JS extension syncs on meta messages only
        ext = message.get("ext")
        if type(ext) is dict and type(ext.get(self.KEY)) is dict:
            message[self._RECEIVED] = int(time.time() * 1000)
        return True

    def outgoing(self, session: Session | None, message: Message, request: Message | None) -> bool:
        if request is None or self._RECEIVED not in request:
            return True
        sync = request["ext"][self.KEY]
        tc = sync.get("tc")
        if type(tc) not in (int, float):
            return True
        ts = request[self._RECEIVED]
        now = int(time.time() * 1000)
        answer: dict[str, Any] = {"tc": tc, "ts": ts, "p": now - ts}
        lag, offset = sync.get("l"), sync.get("o")
        if type(lag) in (int, float) and type(offset) in (int, float):
            accuracy = int(tc + offset + lag - ts)
            if lag == 0 or abs(accuracy) >= 25:
                answer["a"] = accuracy
        ext = message.get("ext")
        if type(ext) is not dict:
            ext = message["ext"] = {}
        ext[self.KEY] = answer
        return True
