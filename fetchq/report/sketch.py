"""Latency sketches: mergeable, fixed-accuracy summaries of many latencies in little memory.

The only module that imports ``ddsketch``.  A DDSketch answers any quantile
within a relative error it is built with, keeps exact count and sum, takes
any float (zero, negative, hours), costs about half a microsecond per value
in pure Python, and grows with the range of values seen rather than with
their number.  ``bench/sketches.py`` measures it against an HDR histogram;
docs/reports.md gives the figures behind the choice.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from ddsketch import DDSketch

from fetchq.wire.aggregates import MAX_KEY, SketchState

Sketch = DDSketch
"""The type every other module names: they need not import ``ddsketch`` themselves."""

RELATIVE_ACCURACY = 0.005
"""Half the 1% the report promises: DDSketch ranks a quantile at ``q * (n - 1)``
while the report's exact reference is nearest-rank, and half leaves room for
that one-value difference."""


def new_sketch() -> DDSketch:
    return DDSketch(RELATIVE_ACCURACY)


SMALLEST = 1e-12
"""Seconds below which a value counts as zero; a picosecond is far below any clock a
request is timed with."""
LARGEST = 1e18
"""Seconds a value is capped at in a sketch (thirty billion years).  Between the two,
every value falls in a bin an aggregate record can name (``MAX_KEY``)."""


def add(sketch: DDSketch, value: float, count: int = 1) -> None:
    """Add a value (``count`` times), as zero when it is too small to tell from it and
    capped when larger than any time: a sketch's bins then stay within what a record
    can carry."""
    size = abs(value)
    if size < SMALLEST:
        value = 0.0
    elif size > LARGEST:
        value = math.copysign(LARGEST, value)
    sketch.add(value, count)


def merged(sketches: Iterable[DDSketch]) -> DDSketch:
    """One sketch holding every value of ``sketches`` (which are left as they were)."""
    total = new_sketch()
    for sketch in sketches:
        total.merge(sketch)
    return total


def quantile(sketch: DDSketch, p: float) -> float | None:
    """The ``p``-th percentile (0..100), or ``None`` for an empty sketch."""
    value = sketch.get_quantile_value(p / 100.0)
    return None if value is None else float(value)


def mean(sketch: DDSketch) -> float | None:
    return None if sketch.count == 0 else float(sketch.avg)


def count_below(sketch: DDSketch, edge: float) -> int:
    """How many values the sketch places below ``edge``.

    A binary search over ranks through the public quantile call: every value
    of one sketch bin stands for the same representative value, so each bin
    falls wholly on one side of the edge."""
    n = int(sketch.count)
    if n == 0:
        return 0
    low, high = 0, n  # values at ranks below ``low`` are < edge; from ``high`` on, >= edge
    while low < high:
        middle = (low + high) // 2
        if _value_at_rank(sketch, middle, n) < edge:
            low = middle + 1
        else:
            high = middle
    return low


def _value_at_rank(sketch: DDSketch, rank: int, n: int) -> float:
    # DDSketch reads the quantile q at rank q * (n - 1): aim half a rank past
    # ``rank`` so that rounding in the division cannot land on the rank below.
    q = min(1.0, (rank + 0.5) / (n - 1)) if n > 1 else 0.0
    value = sketch.get_quantile_value(q)
    assert value is not None, "a rank inside a non-empty sketch"
    return float(value)


def to_state(sketch: DDSketch) -> SketchState:
    """``sketch`` as a state: the stores' documented attributes and the summary
    fields ``DDSketch.merge`` itself copies (values were added with weight 1)."""
    count = int(sketch.count)
    return SketchState(
        accuracy=sketch._relative_accuracy,
        count=count,
        sum=sketch.sum,
        zero=int(sketch._zero_count),
        min=sketch._min if count else None,
        max=sketch._max if count else None,
        positive=_bins(sketch._store),
        negative=_bins(sketch._negative_store),
    )


def from_state(state: SketchState) -> DDSketch:
    """The sketch ``to_state`` described; raises ValueError for a state no sketch of
    this accuracy has (another accuracy, counts that do not add up, keys out of range)."""
    if state.accuracy != RELATIVE_ACCURACY:
        raise ValueError(f"a sketch of relative accuracy {state.accuracy}, not {RELATIVE_ACCURACY}")
    sketch = new_sketch()
    for store, bins in ((sketch._store, state.positive), (sketch._negative_store, state.negative)):
        if bins is None:
            continue
        first, counts = bins
        if first + len(counts) - 1 > MAX_KEY:
            raise ValueError(f"a sketch bin past key {MAX_KEY}")
        for key, count in enumerate(counts, first):
            if count:
                store.add(key, count)
    if state.count != sketch._store.count + sketch._negative_store.count + state.zero:
        raise ValueError("a sketch whose count is not the sum of its bins")
    if state.count:
        if state.min is None or state.max is None or state.min > state.max:
            raise ValueError("a sketch of values with no min and max")
        sketch._min, sketch._max = state.min, state.max
    sketch._zero_count = float(state.zero)
    sketch._count = float(state.count)
    sketch._sum = state.sum
    return sketch


def _bins(store: Any) -> tuple[int, list[int]] | None:
    if not store.count:
        return None
    low, high = store.min_key, store.max_key
    return low, [int(count) for count in store.bins[low - store.offset : high - store.offset + 1]]
