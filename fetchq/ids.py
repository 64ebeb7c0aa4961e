"""A set of task ids in one bit each.

A server gives task ids in one consecutive run from where it started (see
``fetchq.server.ledger``), so the ids of one server are dense: a bitmap per
block of 2**20 ids holds a million of them in 125 kB, where a Python set would
take some 60 MB.  The server keeps the ids of finished tasks in one; outputs
keep the ids they wrote in another, across server runs.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Iterable

_LOW_BITS = 20
"""Ids per bitmap: 2**20, 128 kB at most each, so a run of ids that starts anywhere
(a server's first id is the moment it started) costs only the blocks it covers."""
_LOW_MASK = (1 << _LOW_BITS) - 1
_LONG_RUN = 16
"""Consecutive ids worth adding as a range: fewer cost less one at a time."""


class IdSet:
    def __init__(self, ids: Iterable[int] = ()) -> None:
        self._maps: dict[int, bytearray] = {}
        self._count = 0
        for task_id in ids:
            self.add(task_id)

    def copy(self) -> IdSet:
        """An independent copy: a bytes copy per bitmap, cheap enough to take under a lock."""
        copied = IdSet()
        copied._maps = {base: bytearray(bitmap) for base, bitmap in self._maps.items()}
        copied._count = self._count
        return copied

    def _bitmap(self, task_id: int, size: int) -> bytearray:
        """The bitmap holding ``task_id``, grown (at least doubling) to ``size`` bytes."""
        bitmap = self._maps.setdefault(task_id >> _LOW_BITS, bytearray())
        if size > len(bitmap):
            bitmap.extend(bytes(max(size - len(bitmap), len(bitmap))))
        return bitmap

    def add(self, task_id: int) -> bool:
        """Add ``task_id``; returns False when it was already there."""
        low = task_id & _LOW_MASK
        index, bit = low >> 3, 1 << (low & 7)
        bitmap = self._bitmap(task_id, index + 1)
        if bitmap[index] & bit:
            return False
        bitmap[index] |= bit
        self._count += 1
        return True

    def add_all(self, task_ids: list[int]) -> None:
        """``add`` each of ``task_ids``: a bitmap looked up once for a run in one block,
        and ids that make up a whole run (a batch leased together) added as a range."""
        if task_ids:
            low, high = min(task_ids), max(task_ids)
            if high - low + 1 == len(task_ids) == len(set(task_ids)):
                self.add_range(low, high + 1)
                return
        maps = self._maps
        base, bitmap = -1, bytearray()
        added = 0
        for task_id in task_ids:
            if task_id >> _LOW_BITS != base:
                base = task_id >> _LOW_BITS
                bitmap = maps.setdefault(base, bytearray())
            low = task_id & _LOW_MASK
            index, bit = low >> 3, 1 << (low & 7)
            if index >= len(bitmap):
                bitmap.extend(bytes(max(index + 1 - len(bitmap), len(bitmap))))
            if not bitmap[index] & bit:
                bitmap[index] |= bit
                added += 1
        self._count += added

    def add_each(self, task_ids: list[int]) -> list[bool]:
        """``add`` each of ``task_ids`` in turn: whether each was new.

        An output's batch of results is a few runs of consecutive ids (each worker
        reports the tasks of a lease together): a long run none of whose ids is
        here yet is added as a range, the rest one at a time."""
        fresh: list[bool] = []
        if not task_ids:
            return fresh
        steps = map(operator.sub, task_ids[1:], task_ids[:-1])
        starts = [0, *(index for index, step in enumerate(steps, 1) if step != 1)]
        for start, stop in zip(starts, [*starts[1:], len(task_ids)], strict=True):
            first, last = task_ids[start], task_ids[stop - 1]
            if stop - start >= _LONG_RUN and self.none_in(first, last + 1):
                self.add_range(first, last + 1)
                fresh.extend(itertools.repeat(True, stop - start))
            else:
                fresh.extend(map(self.add, task_ids[start:stop]))
        return fresh

    def add_range(self, start: int, stop: int) -> None:
        """Add ``start`` .. ``stop - 1``: a restart marks millions at once."""
        if stop <= start:
            return
        end_of_block = ((start >> _LOW_BITS) + 1) << _LOW_BITS
        if stop > end_of_block:
            self.add_range(start, end_of_block)
            self.add_range(end_of_block, stop)
            return
        low, high = start & _LOW_MASK, (stop - 1) & _LOW_MASK
        bitmap = self._bitmap(start, (high >> 3) + 1)
        before = _ones(bitmap, low >> 3, (high >> 3) + 1)
        first_full, last_full = (low + 7) >> 3, (high + 1) >> 3
        if first_full < last_full:
            bitmap[first_full:last_full] = b"\xff" * (last_full - first_full)
            edges = [*range(low, first_full << 3), *range(last_full << 3, high + 1)]
        else:
            edges = list(range(low, high + 1))
        for bit in edges:
            bitmap[bit >> 3] |= 1 << (bit & 7)
        after = _ones(bitmap, low >> 3, (high >> 3) + 1)
        self._count += after - before

    def discard(self, task_id: int) -> None:
        bitmap = self._maps.get(task_id >> _LOW_BITS)
        low = task_id & _LOW_MASK
        if bitmap is not None and low >> 3 < len(bitmap) and bitmap[low >> 3] & (1 << (low & 7)):
            bitmap[low >> 3] &= ~(1 << (low & 7)) & 0xFF
            self._count -= 1

    def __contains__(self, task_id: object) -> bool:
        if not isinstance(task_id, int):
            return False
        bitmap = self._maps.get(task_id >> _LOW_BITS)
        low = task_id & _LOW_MASK
        return (
            bitmap is not None
            and low >> 3 < len(bitmap)
            and bool(bitmap[low >> 3] & (1 << (low & 7)))
        )

    def none_in(self, start: int, stop: int) -> bool:
        """Whether no id of ``start`` .. ``stop - 1`` is here: the bytes inside the run
        counted in C, the two at its edges masked."""
        while start < stop:
            block_end = min(stop, ((start >> _LOW_BITS) + 1) << _LOW_BITS)
            bitmap = self._maps.get(start >> _LOW_BITS)
            if bitmap is not None:
                first, last = start & _LOW_MASK, (block_end - 1) & _LOW_MASK
                low, high = first >> 3, last >> 3
                low_mask = (0xFF << (first & 7)) & 0xFF
                high_mask = 0xFF >> (7 - (last & 7))
                if low == high:
                    if low < len(bitmap) and bitmap[low] & low_mask & high_mask:
                        return False
                else:
                    if low < len(bitmap) and bitmap[low] & low_mask:
                        return False
                    inside = min(len(bitmap), high) - (low + 1)
                    if inside > 0 and bitmap.count(0, low + 1, low + 1 + inside) != inside:
                        return False
                    if high < len(bitmap) and bitmap[high] & high_mask:
                        return False
            start = block_end
        return True

    def __len__(self) -> int:
        return self._count


def _ones(bitmap: bytearray, start: int, stop: int) -> int:
    return int.from_bytes(bitmap[start:stop], "little").bit_count()
