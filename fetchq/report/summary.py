"""The summary of a stream of results, in the spirit of vegeta report, hey and wrk2.

A run may produce millions of results and ``output`` must not hold them all, so
:class:`Summary` keeps counters and mergeable latency sketches (per time bucket
and per place, each bounded) and nothing per result: its memory stays flat
however long the run.  :meth:`Summary.as_dict` gives the figures as JSON types;
the text and HTML reports are drawn from them.
"""

from __future__ import annotations

import math
from typing import Any

from fetchq.report import sketch
from fetchq.report import text as textreport
from fetchq.report.places import PlaceTable, target_host, worker_host
from fetchq.report.sketch import Sketch
from fetchq.report.tally import Tally
from fetchq.report.timeline import Timeline
from fetchq.wire.aggregates import AGGREGATE, ScheduleState, SummaryState, decode_summary
from fetchq.wire.api import LATE_AFTER
from fetchq.wire.records import lateness, not_requested

HISTOGRAM_BUCKETS = 10
"""Linear latency buckets between min and max: enough to see a shape, short enough to read."""

PERCENTILES = (50, 90, 95, 99)

TIMELINE_PERCENTILES = (50, 90, 99)


PLACE_ROWS = 10
"""Places listed by name in a breakdown; the rest are summed as ``other``."""

NO_ERROR_TYPE = "unknown"
"""Error type for a result with neither a status nor an error (a malformed record)."""


class Summary:
    """Accumulates results as they stream by, in memory that does not grow with their number.

    Figures (see :meth:`as_dict`): latencies come from ``elapsed`` of every
    request, failed ones included.  Count, min, mean and max are exact;
    percentiles come from sketches and are within 1% of the exact nearest-rank
    value.  Status codes count every result that has a status; a result without a
    status is counted under its error type instead.  Error counts cover every
    request with an error (a response whose body failed to arrive shows under both).

    A result whose task the server ended before any request (a cancelled job, a
    URL robots.txt forbids: ``records.NOT_REQUESTED``) is no request: it is
    counted apart, by its error type, in ``not_requested``, and is in no other
    figure.

    Results that carry ``scheduled`` (a job with a rate) are also measured from
    their schedule, as wrk2 does: response time = ``started + elapsed -
    scheduled``, and a start more than :data:`LATE_AFTER` behind it is late.

    ``fetch_threads`` is the fleet's fetch threads, when the caller knows it: the
    report then sets it against the concurrency the rate needs (Little's law).
    """

    def __init__(self, *, fetch_threads: int | None = None) -> None:
        self.fetch_threads = fetch_threads
        self.retried = 0
        self.spans_again = 0
        """Aggregates of spans run again after a lease lapsed (attempt 2 or later)."""
        self.requests_again = 0
        """The requests of those spans."""
        self.bytes = 0
        self._min = math.inf
        self._max = -math.inf
        self._statuses: dict[int, int] = {}
        self._errors: dict[str, list[Any]] = {}  # type -> [count, example message]
        self.not_requested: dict[str, int] = {}
        """Results of tasks never requested, by error type."""
        self.timeline = Timeline()
        """Every request is in one of its buckets: the run's totals are their sum."""
        self.worker_hosts = PlaceTable()
        self.target_hosts = PlaceTable()
        self.worst_lateness = -math.inf
        self._response_min = math.inf
        self._response_max = -math.inf
        self._first_due = math.inf
        self._last_due = -math.inf

    def add(self, result: dict[str, Any], count: int = 1) -> None:
        """Count one result (a dict as made by ``records.make_result``), or merge in an
        aggregate record's summary (raises ValueError when that is malformed).
        ``count``: the result stands for that many alike (a span the server ended)."""
        if result.get("kind") == AGGREGATE:
            self.merge(Summary.from_state(decode_summary(result.get("summary"))))
            if int(result.get("attempt") or 1) > 1:
                self.spans_again += 1
                self.requests_again += int(result.get("requests") or 0)
            return
        error = result.get("error")
        if error is not None:  # only a result with an error may be no request
            kind = not_requested(result)
            if kind is not None:
                self.not_requested[kind] = self.not_requested.get(kind, 0) + count
                return
        elapsed = float(result.get("elapsed") or 0.0)
        started = float(result.get("started") or 0.0)
        ok = bool(result.get("ok"))
        if int(result.get("attempt") or 1) > 1:
            self.retried += count
        self.bytes += int(result.get("bytes") or 0) * count
        if elapsed < self._min:
            self._min = elapsed
        if elapsed > self._max:
            self._max = elapsed

        scheduled = result.get("scheduled")
        late = None if scheduled is None else lateness(result)
        due = 0.0
        if late is not None:
            due = float(result["scheduled"])
            # Its own call to at(): a later one may merge buckets that an earlier one returned.
            self.timeline.at(due).scheduled += count
        bucket = self.timeline.at(started)
        bucket.add(started, elapsed, ok, count)
        if late is not None:
            response = elapsed + late.seconds
            bucket.add_schedule(response, late.late, count)
            self._count_schedule(due, late.seconds, response)
        worker, target = str(result.get("worker") or ""), str(result.get("url") or "")
        self.worker_hosts.add(worker_host(worker), started, elapsed, ok, count)
        self.target_hosts.add(target_host(target), started, elapsed, ok, count)

        status = result.get("status")
        if status is not None:
            self._statuses[int(status)] = self._statuses.get(int(status), 0) + count
        if error is not None:
            kind = str(error.get("type") or NO_ERROR_TYPE)
            self._count_error(kind, str(error.get("message", "")), count)
        elif status is None:
            self._count_error(NO_ERROR_TYPE, "result has neither a status nor an error", count)

    def _count_schedule(self, due: float, seconds_late: float, response: float) -> None:
        self.worst_lateness = max(self.worst_lateness, seconds_late)
        self._response_min = min(self._response_min, response)
        self._response_max = max(self._response_max, response)
        self._first_due = min(self._first_due, due)
        self._last_due = max(self._last_due, due)

    def _count_error(self, kind: str, message: str, count: int = 1) -> None:
        entry = self._errors.get(kind)
        if entry is None:
            self._errors[kind] = [count, message]
        else:
            entry[0] += count

    def merge(self, other: Summary) -> None:
        """Add ``other``'s requests to this summary: the summary of both runs' results,
        counts exact and percentiles as accurate (``other`` is left as it was)."""
        self.retried += other.retried
        self.spans_again += other.spans_again
        self.requests_again += other.requests_again
        self.bytes += other.bytes
        self._min = min(self._min, other._min)
        self._max = max(self._max, other._max)
        for code, count in other._statuses.items():
            self._statuses[code] = self._statuses.get(code, 0) + count
        for kind, (count, example) in other._errors.items():
            entry = self._errors.setdefault(kind, [0, example])
            entry[0] += count
        for kind, count in other.not_requested.items():
            self.not_requested[kind] = self.not_requested.get(kind, 0) + count
        self.timeline.merge(other.timeline)
        self.worker_hosts.merge(other.worker_hosts)
        self.target_hosts.merge(other.target_hosts)
        self.worst_lateness = max(self.worst_lateness, other.worst_lateness)
        self._response_min = min(self._response_min, other._response_min)
        self._response_max = max(self._response_max, other._response_max)
        self._first_due = min(self._first_due, other._first_due)
        self._last_due = max(self._last_due, other._last_due)

    def to_state(self) -> SummaryState:
        """The summary as an aggregate record carries it (``fetchq.wire.aggregates``)."""
        count = self.count
        return SummaryState(
            timeline=self.timeline.to_state(),
            worker_hosts=self.worker_hosts.to_state(count),
            target_hosts=self.target_hosts.to_state(count),
            bytes=self.bytes,
            retried=self.retried,
            min=self._min if count else None,
            max=self._max if count else None,
            statuses={str(code): n for code, n in self._statuses.items()},
            errors={kind: (n, example) for kind, (n, example) in self._errors.items()},
            not_requested=dict(self.not_requested),
            schedule=None
            if self._first_due > self._last_due
            else ScheduleState(
                worst_lateness=self.worst_lateness,
                response_min=self._response_min,
                response_max=self._response_max,
                first_due=self._first_due,
                last_due=self._last_due,
            ),
        )

    @classmethod
    def from_state(cls, state: SummaryState) -> Summary:
        """The summary ``state`` describes; raises ValueError for one no summary has."""
        summary = cls()
        summary.timeline = Timeline.from_state(state.timeline)
        everything = Tally()
        if state.worker_hosts.whole is not None or state.target_hosts.whole is not None:
            for bucket in summary.timeline.all_buckets():
                everything.merge_service(bucket)
        summary.worker_hosts = PlaceTable.from_state(state.worker_hosts, everything)
        summary.target_hosts = PlaceTable.from_state(state.target_hosts, everything)
        summary.bytes, summary.retried = state.bytes, state.retried
        if summary.count:
            if state.min is None or state.max is None:
                raise ValueError("a summary of requests with no min and max latency")
            summary._min, summary._max = state.min, state.max
        for code, count in state.statuses.items():
            if not code.isdigit() or len(code) > 3:
                raise ValueError(f"a status code {code[:20]!r}")
            summary._statuses[int(code)] = count
        summary._errors = {
            kind: [count, example] for kind, (count, example) in state.errors.items()
        }
        summary.not_requested = dict(state.not_requested)
        schedule = state.schedule
        if schedule is not None:
            summary.worst_lateness = schedule.worst_lateness
            summary._response_min, summary._response_max = (
                schedule.response_min,
                schedule.response_max,
            )
            summary._first_due, summary._last_due = schedule.first_due, schedule.last_due
        return summary

    def totals(self) -> Tally:
        """Every request of the run in one tally (summed from the time buckets)."""
        total = Tally()
        for bucket in self.timeline.all_buckets():
            total.merge(bucket)
        return total

    @property
    def count(self) -> int:
        """Requests counted (results never requested are not)."""
        return sum(bucket.requests for bucket in self.timeline.all_buckets())

    @property
    def scheduled(self) -> int:
        """Requests that carried a schedule (each counted where it was due)."""
        return sum(bucket.scheduled for bucket in self.timeline.all_buckets())

    @property
    def late(self) -> int:
        """Requests that started late."""
        return sum(bucket.late for bucket in self.timeline.all_buckets())

    @property
    def results(self) -> int:
        """Every result counted: the requests and those never requested."""
        return self.count + sum(self.not_requested.values())

    @property
    def duration(self) -> float:
        """Seconds from the earliest start to the latest finish (0 with no requests)."""
        return _span(self.totals())

    def latencies(self) -> Sketch:
        """Every request's service time in one sketch (merged from the time buckets)."""
        return sketch.merged(bucket.latency for bucket in self.timeline.all_buckets())

    def response_times(self) -> Sketch:
        """Response times from the schedule, of the results that had one."""
        return sketch.merged(
            bucket.response for bucket in self.timeline.all_buckets() if bucket.response is not None
        )

    def histogram(
        self, buckets: int = HISTOGRAM_BUCKETS, *, log: bool = False
    ) -> list[tuple[float, float, int]]:
        """Buckets ``(low, high, count)`` from min to max latency; one if they are equal.

        Edges are linear, or evenly spaced on a log scale with ``log`` (when the
        min is above zero).  A latency on an inner edge falls in the upper bucket;
        counts come from the sketch, so a latency within 0.5% of an edge may fall
        on either side of it."""
        latencies = self.latencies()
        count = int(latencies.count)
        if not count:
            return []
        low, high = self._min, self._max
        if high <= low:
            return [(low, high, count)]
        if log and low > 0:
            ratio = (high / low) ** (1 / buckets)
            edges = [low * ratio**i for i in range(buckets)] + [high]
        else:
            width = (high - low) / buckets
            edges = [low + i * width for i in range(buckets)] + [high]
        below = [0] + [sketch.count_below(latencies, edge) for edge in edges[1:-1]] + [count]
        return [(edges[i], edges[i + 1], below[i + 1] - below[i]) for i in range(buckets)]

    def as_dict(self, place_rows: int = PLACE_ROWS) -> dict[str, Any]:
        """The report's figures as JSON types: seconds, counts, and 0..1 ratios.

        Rates are ``None`` when the duration is zero; latency figures are ``None``
        with no requests.  ``not_requested`` counts, by error type, the results
        that were no request.  Status codes are keyed by their string form for JSON.
        ``schedule`` is ``None`` unless some result carried a schedule.  Breakdowns
        list the ``place_rows`` places with the most results and sum the rest.
        """
        total = self.totals()
        count, ok, duration = total.requests, total.ok, _span(total)
        return {
            "requests": count,
            "not_requested": dict(sorted(self.not_requested.items())),
            "ok": ok,
            "failed": total.failed,
            "retried": self.retried,
            "leased_again": {"spans": self.spans_again, "requests": self.requests_again}
            if self.spans_again
            else None,
            "started": total.first_start if count else None,
            "duration": duration,
            "rate": count / duration if duration > 0 else None,
            "throughput": ok / duration if duration > 0 else None,
            "success_ratio": ok / count if count else None,
            "latency": _latency_figures(
                total.latency, self._min, self._max, sketch.mean(total.latency)
            ),
            "bytes": {
                "total": self.bytes,
                "mean": self.bytes / count if count else None,
            },
            "status_codes": {str(code): n for code, n in sorted(self._statuses.items())},
            "errors": {
                kind: {"count": n, "example": example}
                for kind, (n, example) in sorted(self._errors.items())
            },
            "histogram": [
                {"low": low, "high": high, "count": c} for low, high, c in self.histogram()
            ],
            "schedule": self._schedule_figures(),
            "worker_hosts": _breakdown(self.worker_hosts, place_rows),
            "target_hosts": _breakdown(self.target_hosts, place_rows),
            "timeline": self._timeline_figures(),
        }

    def render(self) -> str:
        """The plain-text report (see :mod:`fetchq.report.text`)."""
        return textreport.render(self.as_dict())

    def _schedule_figures(self) -> dict[str, Any] | None:
        scheduled = self.scheduled
        if not scheduled:
            return None
        responses = self.response_times()
        due_span = self._last_due - self._first_due
        target_rate = (scheduled - 1) / due_span if due_span > 0 else None
        mean_response = sketch.mean(responses)
        # Little's law: to hold a rate, that many requests must be in flight for as long
        # as each one holds a fetch thread: its service time, not its wait before it.
        mean_service = sketch.mean(self.latencies())
        needed = (
            max(1, round(target_rate * mean_service))
            if target_rate is not None and mean_service is not None
            else None
        )
        return {
            "requests": scheduled,
            "target_rate": target_rate,
            "response_time": _latency_figures(
                responses, self._response_min, self._response_max, mean_response
            ),
            "late": {"after": LATE_AFTER, "count": self.late, "worst": self.worst_lateness},
            "fetch_threads": self.fetch_threads,
            "threads_needed": needed,
            "service_mean": mean_service,
        }

    def _timeline_figures(self) -> dict[str, Any]:
        width = self.timeline.width
        points = []
        for start, bucket in self.timeline.buckets():
            point: dict[str, Any] = {
                "start": start,
                "requests": bucket.requests,
                "failed": bucket.failed,
                "scheduled": bucket.scheduled,
                "late": bucket.late,
            }
            for p in TIMELINE_PERCENTILES:
                point[f"p{p}"] = sketch.quantile(bucket.latency, p)
            for p in TIMELINE_PERCENTILES:
                point[f"response_p{p}"] = (
                    None if bucket.response is None else sketch.quantile(bucket.response, p)
                )
            points.append(point)
        return {"width": width, "points": points}


def _latency_figures(
    latencies: Sketch, low: float, high: float, mean: float | None
) -> dict[str, float | None]:
    figures: dict[str, float | None] = {"min": None, "mean": mean}
    figures.update({f"p{p}": sketch.quantile(latencies, p) for p in PERCENTILES})
    figures["max"] = None
    if latencies.count:
        figures["min"], figures["max"] = low, high
    return figures


def _span(total: Tally) -> float:
    """Seconds from a tally's earliest start to its latest finish (0 when empty)."""
    return max(0.0, total.last_end - total.first_start) if total.requests else 0.0


def _place_figures(name: str, row: Tally) -> dict[str, Any]:
    return {
        "host": name,
        "requests": row.requests,
        "rate": row.rate,
        "success_ratio": row.ok / row.requests if row.requests else None,
        "p50": sketch.quantile(row.latency, 50),
        "p99": sketch.quantile(row.latency, 99),
    }


def _breakdown(table: PlaceTable, rows: int) -> dict[str, Any]:
    rest = table.rest(rows)
    return {
        "rows": [_place_figures(name, row) for name, row in table.top(rows)],
        "other": _place_figures("other", rest) if rest.requests else None,
    }
