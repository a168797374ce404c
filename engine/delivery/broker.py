"""Fan-out of published messages: the interface and the in-process broker.

The core hands a broker a channel and the message already encoded once; the
broker finds the subscribed sessions through the compiled channel trie and
calls `deliver(session, encoded)` for each, once per session however many of
its subscriptions match.  The clustered broker (engine.cluster.redis_broker)
is this one plus Redis: the same local fan-out, and the encoded bytes sent
once to the other nodes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, cast

from engine.routing._channels import ChannelTrie

if TYPE_CHECKING:
    from engine.protocol.session import Session

__all__ = ["Broker", "Deliver", "LocalBroker"]

Deliver = Callable[["Session", bytes, bool], None]


class Broker(Protocol):
    def subscribe(self, session: Session, pattern: str) -> bool: ...

    def unsubscribe(self, session: Session, pattern: str) -> bool: ...

    def publish(self, channel: str, encoded: bytes, lazy: bool = False) -> int: ...

    def subscriber_count(self, pattern: str) -> int: ...

    def matching_count(self, channel: str) -> int: ...

    def channels(self) -> list[str]: ...

    def channel_count(self) -> int: ...


class LocalBroker:
    """Single-process broker: a trie of subscriptions, delivery in this loop."""

    __slots__ = ("trie", "deliver")

    def __init__(self, deliver: Deliver) -> None:
        self.trie = ChannelTrie()
        self.deliver = deliver

    def subscribe(self, session: Session, pattern: str) -> bool:
        return self.trie.add(pattern, session)

    def unsubscribe(self, session: Session, pattern: str) -> bool:
        return self.trie.remove(pattern, session)

    def fan_out(self, channel: str, encoded: bytes, lazy: bool = False) -> int:
        """Deliver `encoded` to this process's sessions subscribed to `channel`."""
        deliver = self.deliver
        sessions = cast("list[Session]", self.trie.match(channel))
        for session in sessions:
            deliver(session, encoded, lazy)
        return len(sessions)

    # In one process, publishing is the local fan-out (a clustered broker
    # subclasses this one and also sends the bytes to the other nodes).
    publish = fan_out

    def subscriber_count(self, pattern: str) -> int:
        return self.trie.count(pattern)

    def matching_count(self, channel: str) -> int:
        return self.trie.count_matching(channel)

    def channels(self) -> list[str]:
        return self.trie.patterns()

    def channel_count(self) -> int:
        return len(self.trie)
