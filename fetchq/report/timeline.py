"""Figures per slice of time, in a bounded number of buckets however long the run.

Each bucket is a :class:`~fetchq.report.tally.Tally` of the requests started in
its slice (and counts, in ``scheduled``, those due to start in it).  Buckets
start one second wide, aligned on multiples of their width in Unix
time.  When the run spans more than :data:`MAX_BUCKETS` of them, the width
doubles and each pair of neighbours merges into one, so a run of a minute
keeps one-second buckets and a run of a week about 300 of 34 minutes
(figures are exact counts and mergeable sketches, so nothing is lost but
resolution).
"""

from __future__ import annotations

from collections.abc import Iterator

from fetchq.report.tally import Tally

FIRST_WIDTH = 1.0
"""Seconds per bucket at the start: the resolution rates are read at."""

MAX_BUCKETS = 500
"""Buckets kept at most: enough points for a chart, a few MiB of sketches at most."""


class Timeline:
    """Buckets by time; ``at(t)`` is the one bucket to update for time ``t``."""

    def __init__(self, max_buckets: int = MAX_BUCKETS, first_width: float = FIRST_WIDTH) -> None:
        if max_buckets < 2:
            raise ValueError("a timeline needs at least two buckets")
        self.max_buckets = max_buckets
        self.width = first_width
        self._buckets: dict[int, Tally] = {}
        self._low = 0
        self._high = -1
        self.undated = Tally()
        """Results with no usable time (``started`` missing or not positive): counted,
        not plotted."""

    def at(self, when: float) -> Tally:
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
        bucket = self._buckets[index] = Tally()
        return bucket

    def _coarsen_to_fit(self, low: int, high: int) -> None:
        """Double the width until indexes ``low..high`` fit, merging neighbours each time."""
        factor = 1
        while (high // factor) - (low // factor) + 1 > self.max_buckets:
            factor *= 2
        merged: dict[int, Tally] = {}
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

    def buckets(self) -> Iterator[tuple[float, Tally]]:
        """``(start time, bucket)`` in time order, including empty slices between busy ones."""
        if not self._buckets:
            return
        for index in range(self._low, self._high + 1):
            yield index * self.width, self._buckets.get(index) or Tally()

    def all_buckets(self) -> Iterator[Tally]:
        """Every bucket with figures, the undated one included: the run as a whole."""
        yield from self._buckets.values()
        yield self.undated
