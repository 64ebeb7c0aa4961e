"""The summary report over a stream of results, in the spirit of vegeta report and hey.

A run may produce millions of results and ``output`` must not hold them all, so
:class:`Summary` keeps counters plus one float per result (its latency, needed for
exact percentiles) and nothing else.
"""

from __future__ import annotations

import math
from array import array
from typing import Any

HISTOGRAM_BUCKETS = 10
"""Linear latency buckets between min and max: enough to see a shape, short enough to read."""

HISTOGRAM_WIDTH = 40
"""Characters of the longest histogram bar."""

PERCENTILES = (50, 90, 95, 99)

NO_ERROR_TYPE = "unknown"
"""Error type for a result with neither a status nor an error (a malformed record)."""


def format_duration(seconds: float) -> str:
    """Seconds as a person reads them: ``850µs``, ``12.3ms``, ``1.204s``, ``2m03.5s``."""
    if seconds < 0.001:
        return f"{seconds * 1e6:.0f}µs"
    if seconds < 1.0:
        return f"{seconds * 1e3:.1f}ms"
    if seconds < 60.0:
        return f"{seconds:.3f}s"
    minutes, rest = divmod(seconds, 60.0)
    return f"{int(minutes)}m{rest:04.1f}s"


def format_bytes(n: float) -> str:
    """A byte count in SI units (``512B``, ``1.2kB``, ``3.4MB``), as curl and hey print them."""
    if n < 1000:
        return f"{n:.0f}B"
    for unit in ("kB", "MB", "GB", "TB"):
        n /= 1000.0
        if n < 1000 or unit == "TB":
            return f"{n:.1f}{unit}"
    raise AssertionError("unreachable")


def format_rate(rate: float | None) -> str:
    """Requests per second, or ``n/a`` when the run took no measurable time."""
    return "n/a" if rate is None else f"{rate:.1f}/s"


def percentile(sorted_values: Any, p: float) -> float:
    """The nearest-rank ``p``-th percentile of an ascending, non-empty sequence.

    Nearest-rank returns a latency that some request really had, never an
    interpolated one: the value at 1-based rank ``ceil(p / 100 * n)``.
    """
    n = len(sorted_values)
    rank = max(1, math.ceil(p / 100.0 * n))
    return float(sorted_values[min(rank, n) - 1])


class Summary:
    """Accumulates results as they stream by; memory grows only by one float per result.

    Figures (see :meth:`as_dict`): latencies come from ``elapsed`` of every result,
    failed ones included, and percentiles are exact nearest-rank over all of them.
    Status codes count every result that has a status; a result without a status is
    counted under its error type instead.  Error counts cover every result with an
    error (a response whose body failed to arrive shows under both).
    """

    def __init__(self) -> None:
        self.count = 0
        self.ok = 0
        self.retried = 0
        self.bytes = 0
        self._latencies = array("d")
        self._sorted = True
        self._elapsed_sum = 0.0
        self._first_start: float | None = None
        self._last_end: float | None = None
        self._statuses: dict[int, int] = {}
        self._errors: dict[str, list[Any]] = {}  # type -> [count, example message]

    def add(self, result: dict[str, Any]) -> None:
        """Count one result (a dict as made by ``records.make_result``)."""
        elapsed = float(result.get("elapsed") or 0.0)
        started = float(result.get("started") or 0.0)
        self.count += 1
        if result.get("ok"):
            self.ok += 1
        if int(result.get("attempt") or 1) > 1:
            self.retried += 1
        self.bytes += int(result.get("bytes") or 0)
        if self._latencies and elapsed < self._latencies[-1]:
            self._sorted = False
        self._latencies.append(elapsed)
        self._elapsed_sum += elapsed
        end = started + elapsed
        if self._first_start is None or started < self._first_start:
            self._first_start = started
        if self._last_end is None or end > self._last_end:
            self._last_end = end

        status = result.get("status")
        if status is not None:
            self._statuses[int(status)] = self._statuses.get(int(status), 0) + 1
        error = result.get("error")
        if error is not None:
            self._count_error(
                str(error.get("type") or NO_ERROR_TYPE), str(error.get("message", ""))
            )
        elif status is None:
            self._count_error(NO_ERROR_TYPE, "result has neither a status nor an error")

    def _count_error(self, kind: str, message: str) -> None:
        entry = self._errors.get(kind)
        if entry is None:
            self._errors[kind] = [1, message]
        else:
            entry[0] += 1

    def _sorted_latencies(self) -> array[float]:
        # Sorting replaces the array once per report; adds after it append as before.
        if not self._sorted:
            self._latencies = array("d", sorted(self._latencies))
            self._sorted = True
        return self._latencies

    @property
    def duration(self) -> float:
        """Seconds from the earliest start to the latest finish (0 with no results)."""
        if self._first_start is None or self._last_end is None:
            return 0.0
        return max(0.0, self._last_end - self._first_start)

    def _per_second(self, n: int) -> float | None:
        duration = self.duration
        return n / duration if duration > 0 else None

    def histogram(self) -> list[tuple[float, float, int]]:
        """Linear buckets ``(low, high, count)`` from min to max latency; one if they are equal.

        A latency on an inner edge falls in the upper bucket; the report labels each
        bucket with its ``high`` edge, so the last label is the max latency.
        """
        values = self._sorted_latencies()
        if not values:
            return []
        low, high = values[0], values[-1]
        if high <= low:
            return [(low, high, len(values))]
        width = (high - low) / HISTOGRAM_BUCKETS
        counts = [0] * HISTOGRAM_BUCKETS
        for value in values:
            counts[min(int((value - low) / width), HISTOGRAM_BUCKETS - 1)] += 1
        return [
            (low + i * width, high if i == HISTOGRAM_BUCKETS - 1 else low + (i + 1) * width, c)
            for i, c in enumerate(counts)
        ]

    def as_dict(self) -> dict[str, Any]:
        """The report's figures as JSON types: seconds, counts, and a 0..1 success ratio.

        Rates are ``None`` when the duration is zero; latency figures are ``None``
        with no results.  Status codes are keyed by their string form for JSON.
        """
        values = self._sorted_latencies()
        latency: dict[str, float | None] = {"min": None, "mean": None}
        latency.update({f"p{p}": None for p in PERCENTILES})
        latency["max"] = None
        if values:
            latency["min"] = values[0]
            latency["mean"] = self._elapsed_sum / self.count
            for p in PERCENTILES:
                latency[f"p{p}"] = percentile(values, p)
            latency["max"] = values[-1]
        return {
            "requests": self.count,
            "ok": self.ok,
            "failed": self.count - self.ok,
            "retried": self.retried,
            "duration": self.duration,
            "rate": self._per_second(self.count),
            "throughput": self._per_second(self.ok),
            "success_ratio": self.ok / self.count if self.count else None,
            "latency": latency,
            "bytes": {
                "total": self.bytes,
                "mean": self.bytes / self.count if self.count else None,
            },
            "status_codes": {str(code): n for code, n in sorted(self._statuses.items())},
            "errors": {
                kind: {"count": count, "example": example}
                for kind, (count, example) in sorted(self._errors.items())
            },
            "histogram": [
                {"low": low, "high": high, "count": c} for low, high, c in self.histogram()
            ],
        }

    def render(self) -> str:
        """The multi-line plain-text report (no colour, so it pipes and diffs cleanly)."""
        if not self.count:
            return "Summary:\n  no results\n"
        d = self.as_dict()
        lat = d["latency"]
        lines = [
            "Summary:",
            f"  Requests:     {self.count}",
            f"  Duration:     {format_duration(d['duration'])}",
            f"  Rate:         {format_rate(d['rate'])}",
            f"  Throughput:   {format_rate(d['throughput'])} (ok only)",
            (
                f"  Success:      {100.0 * d['success_ratio']:.2f}% "
                f"({self.ok} ok, {self.count - self.ok} failed)"
            ),
            f"  Retried:      {self.retried}",
            (
                f"  Bytes:        {format_bytes(self.bytes)} total, "
                f"{format_bytes(d['bytes']['mean'])} mean"
            ),
            "",
            "Latency:",
        ]
        for key in ("min", "mean", *(f"p{p}" for p in PERCENTILES), "max"):
            lines.append(f"  {key + ':':<6}{format_duration(lat[key]):>10}")
        lines += ["", "Histogram:"]
        buckets = [(b["low"], b["high"], b["count"]) for b in d["histogram"]]
        tallest = max(c for _, _, c in buckets)
        labels = [format_duration(high) for _, high, _ in buckets]
        label_width = max(len(label) for label in labels)
        count_width = max(len(str(tallest)), 5)
        for label, (_, _, c) in zip(labels, buckets, strict=True):
            bar = "■" * round(HISTOGRAM_WIDTH * c / tallest) if tallest else ""
            lines.append(f"  {label:>{label_width}} [{c:>{count_width}}] |{bar}")
        if self._statuses:
            lines += ["", "Status codes:"]
            for code, n in sorted(self._statuses.items()):
                lines.append(f"  [{code}]  {n}")
        if self._errors:
            lines += ["", "Errors:"]
            kind_width = max(len(kind) for kind in self._errors)
            for kind, (n, example) in sorted(self._errors.items()):
                example = " ".join(example.split())  # one line even for multi-line messages
                lines.append(f"  {kind:<{kind_width}}  {n:>6}  e.g. {example}")
        return "\n".join(lines) + "\n"
