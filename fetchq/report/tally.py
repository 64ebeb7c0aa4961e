"""What a set of requests came to, kept as counts and sketches that merge.

One accumulator for every part of a report that sums requests: a slice of time
(:mod:`fetchq.report.timeline`) and a place (:mod:`fetchq.report.places`).
Merging two tallies gives the tally of both, so buckets can be coarsened and
places folded into ``other`` without losing a request.
"""

from __future__ import annotations

import math

from fetchq.report.sketch import Sketch, add, from_state, new_sketch, to_state
from fetchq.wire.aggregates import TallyState


class Tally:
    """Requests: how many, how many failed, their span, and their latency sketches.

    ``add`` counts a request; ``add_schedule`` adds what its schedule says (a
    tally of time also counts the requests *due* in it, in ``scheduled``)."""

    __slots__ = (
        "failed",
        "first_start",
        "last_end",
        "late",
        "latency",
        "requests",
        "response",
        "scheduled",
    )

    def __init__(self) -> None:
        self.requests = 0
        self.failed = 0
        self.scheduled = 0
        """Requests due (for a slice of time: due to start in it)."""
        self.late = 0
        """Requests that started late (see ``fetchq.wire.records.lateness``)."""
        self.first_start = math.inf
        self.last_end = -math.inf
        self.latency: Sketch = new_sketch()
        """Service time (``elapsed``) of every request."""
        self.response: Sketch | None = None
        """Response time from the schedule, once a request with a schedule is counted."""

    def add(self, started: float, elapsed: float, ok: bool, count: int = 1) -> None:
        """Count a request (``count`` alike)."""
        self.requests += count
        if not ok:
            self.failed += count
        if started < self.first_start:
            self.first_start = started
        end = started + elapsed
        if end > self.last_end:
            self.last_end = end
        add(self.latency, elapsed, count)

    def add_schedule(self, response: float, late: bool, count: int = 1) -> None:
        """The response time from its schedule of a request counted with ``add``."""
        add(self.response_sketch(), response, count)
        if late:
            self.late += count

    def response_sketch(self) -> Sketch:
        if self.response is None:
            self.response = new_sketch()
        return self.response

    @property
    def ok(self) -> int:
        return self.requests - self.failed

    @property
    def rate(self) -> float | None:
        """Requests per second over the tally's own span, first start to last finish."""
        span = self.last_end - self.first_start
        return self.requests / span if span > 0 else None

    def merge(self, other: Tally) -> None:
        self.requests += other.requests
        self.failed += other.failed
        self.scheduled += other.scheduled
        self.late += other.late
        self.first_start = min(self.first_start, other.first_start)
        self.last_end = max(self.last_end, other.last_end)
        self.latency.merge(other.latency)
        if other.response is not None:
            self.response_sketch().merge(other.response)

    def merge_service(self, other: Tally) -> None:
        """``merge`` of the requests and their service time, without their schedule:
        what a place's tally holds (see ``fetchq.report.places``)."""
        self.requests += other.requests
        self.failed += other.failed
        self.first_start = min(self.first_start, other.first_start)
        self.last_end = max(self.last_end, other.last_end)
        self.latency.merge(other.latency)

    def to_state(self) -> TallyState:
        """The tally as a record's part (see ``fetchq.wire.aggregates``)."""
        return TallyState(
            latency=to_state(self.latency),
            requests=self.requests,
            failed=self.failed,
            scheduled=self.scheduled,
            late=self.late,
            first_start=self.first_start if self.requests else None,
            last_end=self.last_end if self.requests else None,
            response=None if self.response is None else to_state(self.response),
        )

    def take_state(self, state: TallyState) -> None:
        """Set this (new) tally to ``state``; raises ValueError for one no tally has."""
        if state.failed > state.requests or state.late > state.requests:
            raise ValueError("a tally with more failed or late requests than requests")
        if state.latency.count != state.requests:
            raise ValueError("a tally whose latencies are not one per request")
        if state.requests and (state.first_start is None or state.last_end is None):
            raise ValueError("a tally of requests with no first start or last end")
        self.requests, self.failed = state.requests, state.failed
        self.scheduled, self.late = state.scheduled, state.late
        if state.requests:
            assert state.first_start is not None and state.last_end is not None
            self.first_start, self.last_end = state.first_start, state.last_end
        self.latency = from_state(state.latency)
        self.response = None if state.response is None else from_state(state.response)

    @classmethod
    def from_state(cls, state: TallyState) -> Tally:
        tally = cls()
        tally.take_state(state)
        return tally
