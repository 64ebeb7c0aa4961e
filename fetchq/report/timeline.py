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
from fetchq.wire.aggregates import FIRST_WIDTH as WIRE_FIRST_WIDTH
from fetchq.wire.aggregates import TimelineState, check_width

FIRST_WIDTH = WIRE_FIRST_WIDTH
"""Seconds per bucket at the start: the resolution rates are read at (an aggregate
record's buckets are as wide, or that doubled)."""

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
        self._regroup(factor)

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

    def merge(self, other: Timeline) -> None:
        """Add ``other``'s buckets to this timeline's, at the wider of the two widths
        (``other`` is left as it was)."""
        if other.width > self.width:
            self._regroup(round(other.width / self.width))
        for index, bucket in other._buckets.items():
            self._slot(index, other.width).merge(bucket)
        self.undated.merge(other.undated)

    def _slot(self, index: int, width: float) -> Tally:
        """The bucket that holds slot ``index`` of a timeline ``width`` wide (no wider
        than this one): the bucket of its middle, made if need be (``at`` may then
        widen every bucket, and this one with them)."""
        return self.at(index * width + width / 2)

    def _regroup(self, factor: int) -> None:
        """Widen the buckets ``factor`` times (a power of two), merging neighbours."""
        merged: dict[int, Tally] = {}
        for index, bucket in self._buckets.items():
            into = merged.get(index // factor)
            if into is None:
                merged[index // factor] = bucket
            else:
                into.merge(bucket)
        self._buckets = merged
        self.width *= factor
        if merged:
            self._low, self._high = min(merged), max(merged)

    def to_state(self) -> TimelineState:
        """The timeline as a record's part (see ``fetchq.wire.aggregates``)."""
        return TimelineState(
            width=self.width,
            undated=self.undated.to_state(),
            buckets=[(index, bucket.to_state()) for index, bucket in sorted(self._buckets.items())],
        )

    @classmethod
    def from_state(cls, state: TimelineState) -> Timeline:
        """The timeline ``state`` describes; raises ValueError for one no timeline has."""
        check_width(state.width)
        timeline = cls()
        timeline.width = state.width
        for index, bucket in state.buckets:
            timeline._slot(index, state.width).merge(Tally.from_state(bucket))
        timeline.undated.take_state(state.undated)
        return timeline
