"""Channel names and the subscription trie, in plain Python.

This is the readable reference ("twin") of the compiled module
``engine.routing._channels`` (a test oracle, not shipped): both expose the same
functions, constants and trie API, and the tests check that they agree.

Names follow CometD's rules for channel names
(https://docs.cometd.org/current/reference/#_concepts_channels), as applied here:

* a ``str`` starting with ``/``, at least two characters long, every other
  character in CometD's set (``A-Z a-z 0-9``, space, ``! # $ ( ) * + - . / @ _
  { ~ }``);
* one trailing ``/`` is dropped before anything else (``/foo/`` is ``/foo``);
* no empty segment, no segment made only of spaces;
* ``*`` and ``**`` only as the entire last segment (that makes a pattern);
* a pattern may not also contain a ``{...}`` template segment (a segment that
  starts with ``{`` and ends with ``}``).

Every trie method takes names the way :func:`validate_channel` does, so
``/foo/`` and ``/foo`` are the same subscription.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "MAX_CHANNEL_LENGTH",
    "MAX_CHANNEL_SEGMENTS",
    "CHANNEL_INVALID",
    "CHANNEL_OK_CONCRETE",
    "CHANNEL_OK_PATTERN",
    "KIND_BROADCAST",
    "KIND_META",
    "KIND_SERVICE",
    "PyChannelTrie",
    "channel_kind",
    "normalize_channel",
    "validate_channel",
]

# validate_channel() results; CHANNEL_INVALID is the only falsy one.
CHANNEL_INVALID: Final = 0
CHANNEL_OK_CONCRETE: Final = 1
CHANNEL_OK_PATTERN: Final = 2

# channel_kind() results: broadcast, service (/service/**) or meta (/meta/**) channels.
KIND_BROADCAST: Final = 0
KIND_SERVICE: Final = 1
KIND_META: Final = 2

# Bounds on a name: each segment of a subscription is a node of the trie, so
# an unbounded depth would let one subscription cost megabytes.
MAX_CHANNEL_LENGTH: Final = 1024
MAX_CHANNEL_SEGMENTS: Final = 64

_ALLOWED_CHARS: Final = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 !#$()*+-./@_{~}"
)


def _require_str(name: object) -> None:
    if not isinstance(name, str):
        raise TypeError(f"channel name must be str, not {type(name).__name__}")


def normalize_channel(name: str) -> str:
    """Drop one trailing ``/`` (``/foo/`` -> ``/foo``); ``/`` itself is kept."""
    _require_str(name)
    if len(name) > 1 and name.endswith("/"):
        return name[:-1]
    return name


def validate_channel(name: object) -> int:
    """Classify ``name``: CHANNEL_OK_CONCRETE, CHANNEL_OK_PATTERN or CHANNEL_INVALID.

    The checks apply to the normalized name (see :func:`normalize_channel`).
    """
    if not isinstance(name, str):
        return CHANNEL_INVALID
    name = normalize_channel(name)
    if not 2 <= len(name) <= MAX_CHANNEL_LENGTH or name[0] != "/":
        return CHANNEL_INVALID
    if any(char not in _ALLOWED_CHARS for char in name):
        return CHANNEL_INVALID

    segments = name[1:].split("/")
    if len(segments) > MAX_CHANNEL_SEGMENTS:
        return CHANNEL_INVALID
    last = len(segments) - 1
    wildcard = False
    template = False
    for index, segment in enumerate(segments):
        if segment.strip(" ") == "":  # empty, or only spaces
            return CHANNEL_INVALID
        if "*" in segment:
            if segment not in ("*", "**") or index != last:
                return CHANNEL_INVALID
            wildcard = True
        elif segment.startswith("{") and segment.endswith("}"):
            template = True
    if wildcard and template:
        return CHANNEL_INVALID
    return CHANNEL_OK_PATTERN if wildcard else CHANNEL_OK_CONCRETE


def channel_kind(name: str) -> int:
    """KIND_META, KIND_SERVICE or KIND_BROADCAST, by a plain prefix test."""
    _require_str(name)
    if name.startswith("/meta/"):
        return KIND_META
    if name.startswith("/service/"):
        return KIND_SERVICE
    return KIND_BROADCAST


class _Node:
    """One prefix path (``/a/b``) of the trie.

    ``exact`` holds the subscribers of ``/a/b`` itself, ``star`` those of
    ``/a/b/*`` and ``double_star`` those of ``/a/b/**``. Sets are created on
    first use and dropped when they empty, so a node with nothing in it is
    recognisable and can be pruned.
    """

    __slots__ = ("children", "double_star", "exact", "star")

    def __init__(self) -> None:
        self.exact: set[object] | None = None
        self.star: set[object] | None = None
        self.double_star: set[object] | None = None
        self.children: dict[str, _Node] = {}

    def is_empty(self) -> bool:
        return (
            self.exact is None
            and self.star is None
            and self.double_star is None
            and not self.children
        )


# Which set of a node a pattern's last segment selects.
_EXACT: Final = 0
_STAR: Final = 1
_DOUBLE_STAR: Final = 2


def _split_pattern(pattern: str) -> tuple[list[str], int]:
    """Segments leading to the node that stores ``pattern``, and which set of it.

    ``pattern`` must be valid and normalized. ``/a/b`` -> (["a", "b"], _EXACT),
    ``/a/*`` -> (["a"], _STAR), ``/**`` -> ([], _DOUBLE_STAR).
    """
    segments = pattern[1:].split("/")
    if segments[-1] == "*":
        return segments[:-1], _STAR
    if segments[-1] == "**":
        return segments[:-1], _DOUBLE_STAR
    return segments, _EXACT


class PyChannelTrie:
    """Subscriptions (channel or pattern -> subscribers), matched in one walk.

    Subscribers are arbitrary hashable objects (sessions, in the server).
    Matching ``/a/b/c`` visits the nodes root, ``/a``, ``/a/b`` and ``/a/b/c``
    and collects, in that order, the ``**`` subscribers of every ancestor, the
    ``*`` subscribers of the parent and the exact subscribers of the node, i.e.
    the subscribers of ``/**``, ``/a/**``, ``/a/b/**``, ``/a/b/*`` and
    ``/a/b/c`` (CometD's wildcards: ``*`` one segment, ``**`` any depth). The
    cost depends on the depth of the channel, not on the number of subscriptions.
    """

    def __init__(self) -> None:
        self._root = _Node()
        self._patterns = 0  # patterns with at least one subscriber

    def add(self, pattern: str, subscriber: object) -> bool:
        """Subscribe; True if ``subscriber`` was not yet on ``pattern``.

        Raises TypeError for a non-str and ValueError for an invalid name.
        """
        _require_str(pattern)
        if validate_channel(pattern) == CHANNEL_INVALID:
            raise ValueError(f"invalid channel: {pattern!r}")
        segments, which = _split_pattern(normalize_channel(pattern))
        node = self._root
        for segment in segments:
            child = node.children.get(segment)
            if child is None:
                child = node.children[segment] = _Node()
            node = child

        subscribers = _get_set(node, which)
        if subscribers is None:
            _set_set(node, which, {subscriber})
            self._patterns += 1
            return True
        if subscriber in subscribers:
            return False
        subscribers.add(subscriber)
        return True

    def remove(self, pattern: str, subscriber: object) -> bool:
        """Unsubscribe; True if ``subscriber`` was on ``pattern``.

        Nodes left empty are pruned, so add/remove cycles do not leak.
        """
        _require_str(pattern)
        if validate_channel(pattern) == CHANNEL_INVALID:
            return False
        segments, which = _split_pattern(normalize_channel(pattern))
        path = [self._root]
        for segment in segments:
            child = path[-1].children.get(segment)
            if child is None:
                return False
            path.append(child)

        node = path[-1]
        subscribers = _get_set(node, which)
        if subscribers is None or subscriber not in subscribers:
            return False
        subscribers.discard(subscriber)
        if not subscribers:
            _set_set(node, which, None)
            self._patterns -= 1
            # Prune from the bottom up; path[i + 1] is the child of path[i]
            # under segments[i]. The root is never removed.
            for index in range(len(segments) - 1, -1, -1):
                if not path[index + 1].is_empty():
                    break
                del path[index].children[segments[index]]
        return True

    def match(self, channel: str) -> list[object]:
        """Every distinct subscriber whose pattern matches ``channel``, once each.

        Order is unspecified. A name that is not a valid concrete channel
        (including a pattern, which nobody may publish to) matches nothing.
        """
        return list(self._matching(channel))

    def count(self, pattern: str) -> int:
        """Number of subscribers of exactly ``pattern`` (0 for invalid names)."""
        _require_str(pattern)
        if validate_channel(pattern) == CHANNEL_INVALID:
            return 0
        segments, which = _split_pattern(normalize_channel(pattern))
        node = self._root
        for segment in segments:
            child = node.children.get(segment)
            if child is None:
                return 0
            node = child
        subscribers = _get_set(node, which)
        return 0 if subscribers is None else len(subscribers)

    def subscribers(self, pattern: str) -> list[object]:
        """The subscribers of exactly ``pattern`` ([] for invalid names)."""
        _require_str(pattern)
        if validate_channel(pattern) == CHANNEL_INVALID:
            return []
        segments, which = _split_pattern(normalize_channel(pattern))
        node = self._root
        for segment in segments:
            child = node.children.get(segment)
            if child is None:
                return []
            node = child
        subscribers = _get_set(node, which)
        return [] if subscribers is None else list(subscribers)

    def count_matching(self, channel: str) -> int:
        """``len(self.match(channel))``."""
        return len(self._matching(channel))

    def patterns(self) -> list[str]:
        """Every channel or pattern that has at least one subscriber."""
        found: list[str] = []
        stack: list[tuple[str, _Node]] = [("", self._root)]
        while stack:
            prefix, node = stack.pop()
            if node.exact is not None:
                found.append(prefix)
            if node.star is not None:
                found.append(prefix + "/*")
            if node.double_star is not None:
                found.append(prefix + "/**")
            for segment, child in node.children.items():
                stack.append((prefix + "/" + segment, child))
        return found

    def clear(self) -> None:
        """Drop every subscription."""
        self._root = _Node()
        self._patterns = 0

    def __len__(self) -> int:
        return self._patterns

    def _matching(self, channel: str) -> set[object]:
        _require_str(channel)
        if validate_channel(channel) != CHANNEL_OK_CONCRETE:
            return set()
        segments = normalize_channel(channel)[1:].split("/")
        last = len(segments) - 1
        found: set[object] = set()
        node = self._root
        for index, segment in enumerate(segments):
            if node.double_star is not None:  # /prefix/** of every ancestor
                found |= node.double_star
            if index == last and node.star is not None:  # /parent/*
                found |= node.star
            child = node.children.get(segment)
            if child is None:
                return found
            node = child
        if node.exact is not None:
            found |= node.exact
        return found


def _get_set(node: _Node, which: int) -> set[object] | None:
    if which == _EXACT:
        return node.exact
    if which == _STAR:
        return node.star
    return node.double_star


def _set_set(node: _Node, which: int, value: set[object] | None) -> None:
    if which == _EXACT:
        node.exact = value
    elif which == _STAR:
        node.star = value
    else:
        node.double_star = value
