"""Log lines rate-limited per cause: one line, with a count, not one per event.

A hostile client can make the same warning happen thousands of times a
second (a flood of refused publishes, a storm of bad requests).  Logging each
one would fill the disk and cost more CPU than the refusal itself, so every
warning about a limit goes through a `CauseLog`: the first event of a cause
is logged at once, later ones of the same cause are counted and reported in
the next line for that cause, at most one line per `every` seconds.

Causes are short strings chosen by the code ("queue_full",
"handshake_rate"), never text from a client, so the table stays small.
"""

from __future__ import annotations

import logging
import time
from typing import Any

__all__ = ["CauseLog", "name_of"]


def name_of(code: Any) -> str:
    """A short stable name for a function or object, to key its failures by
    (not its repr: per-session objects would make a cause each)."""
    name = getattr(code, "__qualname__", None)
    if not isinstance(name, str):
        name = type(code).__qualname__
    module = getattr(code, "__module__", None) or type(code).__module__
    return f"{module}.{name}"


class CauseLog:
    """Rate-limited logging keyed by cause (see the module docstring)."""

    __slots__ = ("logger", "every", "_causes", "_traced", "clock")

    def __init__(self, logger: logging.Logger, every: float = 10.0) -> None:
        self.logger = logger
        self.every = every
        # cause -> [time of the next line allowed, events held back since the last line]
        self._causes: dict[str, list[float]] = {}
        self._traced: set[str] = set()  # causes whose traceback was logged once
        self.clock = time.monotonic

    def due(self, cause: str) -> int:
        """Count one event of `cause`; the number of events to report now, or 0."""
        now = self.clock()
        entry = self._causes.get(cause)
        if entry is None:
            self._causes[cause] = [now + self.every, 0.0]
            return 1
        entry[1] += 1
        if now < entry[0]:
            return 0
        entry[0] = now + self.every
        held = int(entry[1])
        entry[1] = 0.0
        return held

    def warning(self, cause: str, fmt: str, *args: Any) -> bool:
        """Log `fmt % args` for this cause now, or count it for the next line."""
        return self._emit(logging.WARNING, cause, fmt, args, False)

    def error(self, cause: str, fmt: str, *args: Any) -> bool:
        return self._emit(logging.ERROR, cause, fmt, args, False)

    def exception(self, cause: str, fmt: str, *args: Any) -> bool:
        """As `error`, with the current exception's traceback on the first line only."""
        return self._emit(logging.ERROR, cause, fmt, args, True)

    def _emit(self, level: int, cause: str, fmt: str, args: tuple[Any, ...], trace: bool) -> bool:
        count = self.due(cause)
        if not count:
            return False
        with_trace = trace and cause not in self._traced
        if with_trace:
            self._traced.add(cause)
        if count > 1:
            fmt += " (%d times in the last %.0f s)"
            args = (*args, count, self.every)
        self.logger.log(level, fmt, *args, exc_info=with_trace)
        return True

    def counts(self) -> dict[str, int]:
        """Events held back per cause, not yet reported."""
        return {cause: int(entry[1]) for cause, entry in self._causes.items()}
