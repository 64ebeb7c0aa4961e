"""Which latency sketch: DDSketch (``ddsketch``) or an HDR histogram (``hdrhistogram``).

Measures, on this machine and in pure Python, what output pays for each:
microseconds to add one value, microseconds to merge one sketch into
another, the worst relative error of p50/p90/p99/p99.9 against exact
nearest-rank percentiles on uniform, lognormal and bimodal latencies, and
the memory of an empty sketch, of one holding ten values (a host seen
ten times) and of one holding a whole run.  Both are set for the 1%
accuracy the report promises: DDSketch with relative accuracy 0.005 (half
of it, because its rank convention differs from nearest-rank by up to one
value), HDR with 2 significant figures (0.8%) over 1 µs .. 1 h in microseconds.

    python bench/sketches.py [--values 200000]

Needs ``pip install -e '.[bench]'`` (hdrhistogram is not a dependency of fetchq).
"""

from __future__ import annotations

import argparse
import math
import random
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from ddsketch import DDSketch
from hdrh.histogram import HdrHistogram

PERCENTILES = (50, 90, 99, 99.9)
HDR_UNITS = 1e6
"""HDR records integers: microseconds."""
HDR_HIGHEST = 3600 * 10**6
"""One hour in microseconds: HDR drops anything above its highest trackable value."""


class Dd:
    name = "ddsketch (relative accuracy 0.5%)"

    def new(self) -> Any:
        return DDSketch(0.005)

    def add(self, sketch: Any, value: float) -> None:
        sketch.add(value)

    def merge(self, into: Any, other: Any) -> None:
        into.merge(other)

    def quantile(self, sketch: Any, p: float) -> float:
        return float(sketch.get_quantile_value(p / 100))


class Hdr:
    name = "hdrhistogram (2 significant figures, µs)"

    def new(self) -> Any:
        return HdrHistogram(1, HDR_HIGHEST, 2)

    def add(self, sketch: Any, value: float) -> None:
        sketch.record_value(int(value * HDR_UNITS))

    def merge(self, into: Any, other: Any) -> None:
        into.add(other)

    def quantile(self, sketch: Any, p: float) -> float:
        return float(sketch.get_value_at_percentile(p)) / HDR_UNITS


def samples(kind: str, n: int, rng: random.Random) -> list[float]:
    if kind == "uniform 1..100 ms":
        return [rng.uniform(0.001, 0.1) for _ in range(n)]
    if kind == "lognormal, median 20 ms":
        return [rng.lognormvariate(math.log(0.02), 1.0) for _ in range(n)]
    # Two modes: most answers from a cache, some from a slow backend.
    return [
        rng.gauss(0.005, 0.0005) if rng.random() < 0.8 else rng.gauss(0.4, 0.05) for _ in range(n)
    ]


def exact(sorted_values: list[float], p: float) -> float:
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def kib_per_sketch(make: Callable[[], Any], fill: Callable[[Any], None]) -> float:
    tracemalloc.start()
    kept = []
    for _ in range(50):
        sketch = make()
        fill(sketch)
        kept.append(sketch)
    size, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return size / len(kept) / 1024


def measure(impl: Dd | Hdr, values: list[float], dists: dict[str, list[float]]) -> None:
    sketch = impl.new()
    started = time.perf_counter()
    for value in values:
        impl.add(sketch, value)
    add_us = (time.perf_counter() - started) / len(values) * 1e6
    small = impl.new()
    for value in values[:100]:
        impl.add(small, value)
    rounds = 200
    started = time.perf_counter()
    for _ in range(rounds):
        impl.merge(small, sketch)
    merge_us = (time.perf_counter() - started) / rounds * 1e6
    errors = {}
    for kind, data in dists.items():
        filled = impl.new()
        for value in data:
            impl.add(filled, value)
        ordered = sorted(data)
        errors[kind] = max(
            abs(impl.quantile(filled, p) - exact(ordered, p)) / exact(ordered, p)
            for p in PERCENTILES
        )
    ten = values[:10]
    print(f"{impl.name}")
    print(f"  add one value      {add_us:8.2f} µs")
    print(f"  merge one sketch   {merge_us:8.1f} µs")
    for kind, error in errors.items():
        print(f"  worst error, {kind:<25} {100 * error:.2f}%")
    print(f"  memory, empty      {kib_per_sketch(impl.new, lambda s: None):8.1f} KiB")
    fill_ten = lambda s: [impl.add(s, v) for v in ten]  # noqa: E731
    print(f"  memory, 10 values  {kib_per_sketch(impl.new, fill_ten):8.1f} KiB")
    fill_all = lambda s: [impl.add(s, v) for v in values[:20_000]]  # noqa: E731
    print(f"  memory, 20k values {kib_per_sketch(impl.new, fill_all):8.1f} KiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--values", type=int, default=200_000)
    args = parser.parse_args()
    rng = random.Random(10)
    dists = {
        kind: samples(kind, args.values, rng)
        for kind in ("uniform 1..100 ms", "lognormal, median 20 ms", "bimodal 5 ms / 400 ms")
    }
    values = dists["lognormal, median 20 ms"]
    for impl in (Dd(), Hdr()):
        measure(impl, values, dists)
    over = Hdr().new()
    kept = over.record_value(int(2 * 3600 * HDR_UNITS))
    print(f"hdrhistogram keeps a 2-hour value: {kept} (ddsketch keeps any float)")


if __name__ == "__main__":
    main()
