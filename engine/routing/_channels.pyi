"""Typed face of the compiled `engine.routing._channels` (source: src_pyx/routing/_channels.pyx).

Same API as its plain-Python twin, the test oracle `tests/oracles/channels.py`
(whose trie is `PyChannelTrie`).
"""

from typing import Final, final

__all__ = [
    "MAX_CHANNEL_LENGTH",
    "MAX_CHANNEL_SEGMENTS",
    "CHANNEL_INVALID",
    "CHANNEL_OK_CONCRETE",
    "CHANNEL_OK_PATTERN",
    "KIND_BROADCAST",
    "KIND_META",
    "KIND_SERVICE",
    "ChannelTrie",
    "channel_kind",
    "normalize_channel",
    "validate_channel",
]

MAX_CHANNEL_LENGTH: Final = 1024
MAX_CHANNEL_SEGMENTS: Final = 64
CHANNEL_INVALID: Final = 0
CHANNEL_OK_CONCRETE: Final = 1
CHANNEL_OK_PATTERN: Final = 2
KIND_BROADCAST: Final = 0
KIND_SERVICE: Final = 1
KIND_META: Final = 2

def validate_channel(name: object) -> int: ...
def normalize_channel(name: str) -> str: ...
def channel_kind(name: str) -> int: ...

@final
class ChannelTrie:
    def __init__(self) -> None: ...
    def add(self, pattern: str, subscriber: object) -> bool: ...
    def remove(self, pattern: str, subscriber: object) -> bool: ...
    def match(self, channel: str) -> list[object]: ...
    def count(self, pattern: str) -> int: ...
    def subscribers(self, pattern: str) -> list[object]: ...
    def count_matching(self, channel: str) -> int: ...
    def patterns(self) -> list[str]: ...
    def clear(self) -> None: ...
    def __len__(self) -> int: ...
