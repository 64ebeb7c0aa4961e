"""What was submitted: task ids, the job of every id, which ids are done, batch ids seen."""

from __future__ import annotations

import bisect
import random
from collections import OrderedDict
from collections.abc import Iterator

from fetchq.ids import IdSet
from fetchq.wire.api import SubmitReply

REMEMBERED_BATCHES = 10_000
"""Submitted batch ids kept for deduplication: far more than any client retries at once."""


def random_id_base() -> int:
    """Ids start at a random base, so a result held across a server restart (without a
    journal) can never be mistaken for a new task's."""
    return random.randrange(1, 1 << 20) << 32


class Ledger:
    """Ids are given in consecutive runs, one per submitted batch, so the job of
    any id is a bisect away and the done set is one bit per id."""

    def __init__(self, id_base: int) -> None:
        self.id_base = id_base
        self.next_id = id_base + 1
        self._starts: list[int] = []
        self._jobs: list[str] = []
        self.done = IdSet()
        self._batches: OrderedDict[str, SubmitReply] = OrderedDict()

    def allocate(self, job: str, count: int) -> int:
        """The first of ``count`` new consecutive ids for ``job``."""
        first = self.next_id
        if count:
            self.record_range(first, job)
            self.next_id += count
        return first

    def record_range(self, first: int, job: str) -> None:
        self._starts.append(first)
        self._jobs.append(job)

    def known(self, task_id: int) -> bool:
        """Given by this server (or by the run whose journal it replayed)."""
        return self.id_base < task_id < self.next_id

    def job_of(self, task_id: int) -> str:
        return self._jobs[bisect.bisect_right(self._starts, task_id) - 1]

    def ranges(self) -> Iterator[tuple[int, str]]:
        return zip(self._starts, self._jobs, strict=True)

    # -- idempotent submits ------------------------------------------------

    def batch_reply(self, batch_id: str | None) -> SubmitReply | None:
        """The reply a batch got the first time, or None for a batch not seen."""
        return None if batch_id is None else self._batches.get(batch_id)

    def remember_batch(self, batch_id: str, reply: SubmitReply) -> None:
        self._batches[batch_id] = reply
        while len(self._batches) > REMEMBERED_BATCHES:
            self._batches.popitem(last=False)

    def batches(self) -> Iterator[tuple[str, SubmitReply]]:
        return iter(self._batches.items())
