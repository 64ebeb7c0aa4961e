"""A set of task ids in a few bits each.

Task ids are a random base plus a sequence number, so the ids of one server
are dense: a bitmap per base holds a million of them in 125 kB, where a
Python set would take some 60 MB.  Outputs use it to remember what they wrote.
"""

from __future__ import annotations

from collections.abc import Iterable

_LOW_BITS = 32


class IdSet:
    def __init__(self, ids: Iterable[int] = ()) -> None:
        self._maps: dict[int, bytearray] = {}
        self._count = 0
        for task_id in ids:
            self.add(task_id)

    def add(self, task_id: int) -> bool:
        """Add ``task_id``; returns False when it was already there."""
        bitmap = self._maps.setdefault(task_id >> _LOW_BITS, bytearray())
        low = task_id & ((1 << _LOW_BITS) - 1)
        index, bit = low >> 3, 1 << (low & 7)
        if index >= len(bitmap):
            bitmap.extend(bytes(max(index + 1 - len(bitmap), len(bitmap))))
        if bitmap[index] & bit:
            return False
        bitmap[index] |= bit
        self._count += 1
        return True

    def __contains__(self, task_id: object) -> bool:
        if not isinstance(task_id, int):
            return False
        bitmap = self._maps.get(task_id >> _LOW_BITS)
        low = task_id & ((1 << _LOW_BITS) - 1)
        return (
            bitmap is not None
            and low >> 3 < len(bitmap)
            and bool(bitmap[low >> 3] & (1 << (low & 7)))
        )

    def __len__(self) -> int:
        return self._count
