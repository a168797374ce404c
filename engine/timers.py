"""One coarse timer structure per process (design principle 2).

Held connects and session expiry are not `call_later` handles per session:
entries go into slots of `resolution` seconds, and one periodic tick takes
every slot whose time has passed.  Entries are never removed early; an entry
that no longer applies (its connect was answered, its session was touched
again) is recognised as stale by the caller when its slot comes due.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Generic, TypeVar

__all__ = ["TimerWheel"]

T = TypeVar("T")


class TimerWheel(Generic[T]):
    __slots__ = ("resolution", "slots", "next_slot")

    def __init__(self, resolution: float, now: float) -> None:
        self.resolution = resolution
        self.slots: dict[int, list[T]] = {}
        self.next_slot = int(now / resolution)

    def slot_of(self, when: float) -> int:
        """The first slot that comes due at or after `when` (never early)."""
        slot = math.ceil(when / self.resolution)
        return slot if slot >= self.next_slot else self.next_slot

    def add(self, when: float, item: T) -> int:
        slot = self.slot_of(when)
        bucket = self.slots.get(slot)
        if bucket is None:
            self.slots[slot] = [item]
        else:
            bucket.append(item)
        return slot

    def add_to_slot(self, slot: int, item: T) -> None:
        bucket = self.slots.get(slot)
        if bucket is None:
            self.slots[slot] = [item]
        else:
            bucket.append(item)

    def due(self, now: float) -> Iterator[T]:
        """Pop and yield every entry whose slot time is <= now, oldest first."""
        last = int(now / self.resolution)
        slots = self.slots
        while self.next_slot <= last:
            bucket = slots.pop(self.next_slot, None)
            self.next_slot += 1
            if bucket:
                yield from bucket

    def next_due(self) -> float:
        """When the next slot comes due: the time to schedule the tick for."""
        return self.next_slot * self.resolution

    def __len__(self) -> int:
        return sum(len(b) for b in self.slots.values())
