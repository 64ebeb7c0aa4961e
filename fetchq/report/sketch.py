"""Latency sketches: mergeable, fixed-accuracy summaries of many latencies in little memory.

The only module that imports ``ddsketch``.  A DDSketch answers any quantile
within a relative error it is built with, keeps exact count and sum, takes
any float (zero, negative, hours), costs about half a microsecond per value
in pure Python, and grows with the range of values seen rather than with
their number.  ``bench/sketches.py`` measures it against an HDR histogram;
docs/reports.md gives the figures behind the choice.
"""

from __future__ import annotations

from collections.abc import Iterable

from ddsketch import DDSketch

Sketch = DDSketch
"""The type every other module names: they need not import ``ddsketch`` themselves."""

RELATIVE_ACCURACY = 0.005
"""Half the 1% the report promises: DDSketch ranks a quantile at ``q * (n - 1)``
while the report's exact reference is nearest-rank, and half leaves room for
that one-value difference."""


def new_sketch() -> DDSketch:
    return DDSketch(RELATIVE_ACCURACY)


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
