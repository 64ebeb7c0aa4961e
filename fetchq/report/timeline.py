"""Figures per slice of time, in a bounded number of buckets however long the run.

Buckets start one second wide, aligned on multiples of their width in Unix
time.  When the run spans more than :data:`MAX_BUCKETS` of them, the width
doubles and each pair of neighbours merges into one, so a run of a minute
keeps one-second buckets and a run of a week about 300 of 34 minutes
(figures are exact counts and mergeable sketches, so nothing is lost but
resolution).
"""

from __future__ import annotations

from collections.abc import Iterator

from fetchq.report.sketch import Sketch, new_sketch

FIRST_WIDTH = 1.0
"""Seconds per bucket at the start: the resolution rates are read at."""

MAX_BUCKETS = 500
"""Buckets kept at most: enough points for a chart, a few MiB of sketches at most."""


class Bucket:
    """What happened in one slice of time: counts, and the latencies of requests started in it."""

    __slots__ = ("failed", "late", "latency", "requests", "response", "scheduled")

    def __init__(self) -> None:
        self.requests = 0
        """Requests started in this slice."""
        self.failed = 0
        self.scheduled = 0
        """Requests due to start in this slice (their ``scheduled`` time falls in it)."""
        self.late = 0
        """Requests started in this slice that started late."""
        self.latency = new_sketch()
        """Service time (``elapsed``) of the requests started in this slice."""
        self.response: Sketch | None = None
        """Response time from the schedule, once a request with a schedule started here."""

    def response_sketch(self) -> Sketch:
        if self.response is None:
            self.response = new_sketch()
        return self.response

    def merge(self, other: Bucket) -> None:
        self.requests += other.requests
        self.failed += other.failed
        self.scheduled += other.scheduled
        self.late += other.late
        self.latency.merge(other.latency)
        if other.response is not None:
            self.response_sketch().merge(other.response)


class Timeline:
    """Buckets by time; ``at(t)`` is the one bucket to update for time ``t``."""

    def __init__(self, max_buckets: int = MAX_BUCKETS, first_width: float = FIRST_WIDTH) -> None:
        if max_buckets < 2:
            raise ValueError("a timeline needs at least two buckets")
        self.max_buckets = max_buckets
        self.width = first_width
        self._buckets: dict[int, Bucket] = {}
        self._low = 0
        self._high = -1
        self.undated = Bucket()
        """Results with no usable time (``started`` missing or not positive): counted,
        not plotted."""

    def at(self, when: float) -> Bucket:
        if when <= 0:
            return self.undated
        index = int(when // self.width)
        bucket = self._buckets.get(index)
        if bucket is not None:
            return bucket
        if not self._buckets:
            self._low = self._high = index
        else:
            low, high = min(self._low, index), max(self._high, index)
            if high - low + 1 > self.max_buckets:
                self._coarsen_to_fit(low, high)
                return self.at(when)
            self._low, self._high = low, high
        bucket = self._buckets[index] = Bucket()
        return bucket

    def _coarsen_to_fit(self, low: int, high: int) -> None:
        """Double the width until indexes ``low..high`` fit, merging neighbours each time."""
        factor = 1
        while (high // factor) - (low // factor) + 1 > self.max_buckets:
            factor *= 2
        merged: dict[int, Bucket] = {}
        for index, bucket in self._buckets.items():
            into = merged.get(index // factor)
            if into is None:
                merged[index // factor] = bucket
            else:
                into.merge(bucket)
        self._buckets = merged
        self.width *= factor
        self._low = min(merged)
        self._high = max(merged)

    def __len__(self) -> int:
        return len(self._buckets)

    def buckets(self) -> Iterator[tuple[float, Bucket]]:
        """``(start time, bucket)`` in time order, including empty slices between busy ones."""
        if not self._buckets:
            return
        for index in range(self._low, self._high + 1):
            yield index * self.width, self._buckets.get(index) or Bucket()

    def all_buckets(self) -> Iterator[Bucket]:
        """Every bucket with figures, the undated one included: the run as a whole."""
        yield from self._buckets.values()
        yield self.undated
