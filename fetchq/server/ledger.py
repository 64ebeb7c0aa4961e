"""What was submitted: task ids, the job of every id, which ids are done, batch ids seen."""

from __future__ import annotations

import bisect
import time
from collections import OrderedDict
from collections.abc import Iterator

from fetchq.ids import IdSet
from fetchq.wire.api import SubmitReply

REMEMBERED_BATCHES = 10_000
"""Submitted batch ids kept for deduplication: far more than any client retries at once."""


IDS_PER_MICROSECOND = 2
"""How fast the id clock runs: a server may give two million new ids a second, and ids
stay below 2**53 (exact in every JSON) until the year 2112."""


def id_clock() -> int:
    """Unix time in half microseconds, on the real clock (the broker's injected clocks
    steer leases and pacing, not ids)."""
    return time.time_ns() * IDS_PER_MICROSECOND // 1000


class Ledger:
    """Ids are given in consecutive runs, one per submitted batch, so the job of
    any id is a bisect away and the done set is one bit per id.

    Unique across restarts by construction: a server without a journal starts its ids
    at the ``id_clock`` reading when it started, and never gives an id above the
    current reading (``ahead``: a submit waits for the clock, which limits a server to
    two million new ids a second), so every id of an earlier run is below the first id
    of a later one (as long as the wall clock is not set back across the restart by
    more than the restart took); a server with a journal goes on with the journal's
    counter."""

    def __init__(self, id_base: int, *, follows_clock: bool = True) -> None:
        self.id_base = id_base
        self.next_id = id_base + 1
        self.follows_clock = follows_clock
        """Ids stay below the clock (false for a journal of an older server, whose ids
        started at a random base: it goes on with its own counter)."""
        self._starts: list[int] = []
        self._jobs: list[str] = []
        self._specs: list[str | None] = []
        self.spec_jobs: set[str] = set()
        """Jobs some of whose tasks send a spec: leases look their keys up."""
        self.done = IdSet()
        self._batches: OrderedDict[str, SubmitReply] = OrderedDict()

    def ahead(self, count: int, now: int) -> float:
        """Seconds until ``count`` more ids are all below ``now``, an ``id_clock`` reading."""
        if not self.follows_clock:
            return 0.0
        return max(0, self.next_id + count - now) / (IDS_PER_MICROSECOND * 1_000_000)

    def allocate(self, job: str, count: int, spec: str | None = None) -> int:
        """The first of ``count`` new consecutive ids for ``job``, whose tasks send the
        spec keyed ``spec``."""
        first = self.next_id
        if count:
            self.record_range(first, job, spec)
            self.next_id += count
        return first

    def record_range(self, first: int, job: str, spec: str | None = None) -> None:
        self._starts.append(first)
        self._jobs.append(job)
        self._specs.append(spec)
        if spec is not None:
            self.spec_jobs.add(job)

    def known(self, task_id: int) -> bool:
        """Given by this server (or by the run whose journal it replayed)."""
        return self.id_base < task_id < self.next_id

    def job_of(self, task_id: int) -> str:
        return self._jobs[bisect.bisect_right(self._starts, task_id) - 1]

    def spec_of(self, task_id: int) -> str | None:
        return self._specs[bisect.bisect_right(self._starts, task_id) - 1]

    def ranges(self) -> Iterator[tuple[int, str, str | None]]:
        return zip(self._starts, self._jobs, self._specs, strict=True)

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
