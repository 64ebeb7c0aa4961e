"""Jobs by name, with the counters that belong to the job itself.

Where a job's tasks and results are now (queued, leased, waiting for an
output...) is counted by the part that holds them; a job keeps what no part
holds: how many were submitted and how their tasks ended.
"""

from __future__ import annotations

import difflib
import math
import operator
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import compress, repeat
from typing import Any

from fetchq.errors import NoSuchJob
from fetchq.wire.aggregates import StoredAggregate
from fetchq.wire.api import ReadRecord
from fetchq.wire.records import LATE_AFTER, StoredResult, late_by
from fetchq.wire.specs import Spec

RECENT = 10
"""Whole seconds of results a job's achieved rate and mean service time are measured over."""

_elapsed_of = operator.attrgetter("head.elapsed")
_scheduled_of = operator.attrgetter("head.scheduled")
_started_of = operator.attrgetter("head.started")

YOUNGEST = 0.5
"""Seconds since a job's first result before its rate is measured at all: over less, one
batch of results from a worker would read as a burst."""


@dataclass
class Requests:
    """An aggregate job's requests, which its tasks (spans) stand for: what status and
    job list count for it, as they count tasks for any other job."""

    submitted: int = 0
    succeeded: int = 0
    failed: int = 0

    def count(self, result: StoredResult) -> None:
        """A span's result: always an aggregate (a worker's, or the one the server makes
        for a span it ends: ``completion.ended_span``)."""
        ok, failed = aggregate_counts(result)
        self.succeeded += ok
        self.failed += failed

    def count_record(self, record: ReadRecord) -> None:
        """``count``, for an aggregate read back from the journal."""
        self.succeeded += int(record["ok"])
        self.failed += int(record["failed"])


def aggregate_counts(result: StoredResult) -> tuple[int, int]:
    """The ok and failed requests of a span's result, which is an aggregate: ``judge``
    drops any other answer to a span."""
    assert isinstance(result, StoredAggregate), f"no aggregate for span {result.id}"
    return result.counts


def requests_in(result: StoredResult) -> int:
    """The requests a result of an aggregate job's span stands for (see ``Requests``)."""
    return sum(aggregate_counts(result))


@dataclass(eq=False)
class Job:
    name: str
    created: float
    submitted: int = 0
    succeeded: int = 0
    failed: int = 0
    expired: int = 0
    sealed: bool = False
    """The dispatcher said the submission is finished; a later submit unseals it."""
    pace: PaceSeen = field(default_factory=lambda: PaceSeen())
    requests: Requests | None = None
    """Set for an aggregate job (its tasks are spans); None for any other."""
    specs: dict[str, Spec] = field(default_factory=dict)
    """What its tasks send besides a bare GET, by key (``fetchq.wire.specs``)."""

    def count_result(self, ok: bool) -> None:
        if ok:
            self.succeeded += 1
        else:
            self.failed += 1


class PaceSeen:
    """How a job really runs, from the results workers report: the rate achieved, the
    mean service time, and how many requests started late and by how much.

    Results are counted by the second the server took them in.  The rate is
    measured over whole seconds: the last ``RECENT`` before the current one,
    which is still filling, and none before the second after the job's first
    result (that one holds only part of the ramp-up).  Until there is such a
    second, it is measured from the first result on, once that is
    ``YOUNGEST`` seconds ago."""

    def __init__(self) -> None:
        self._seconds: deque[list[Any]] = deque()
        """[second, results, elapsed summed], one entry per second with results."""
        self._first: float | None = None
        """When the job's first result came in."""
        self.late = 0
        self.worst_lateness = 0.0

    def record(
        self, now: float, results: Sequence[StoredResult], requests: int | None = None
    ) -> None:
        """``requests``: what ``results`` stand for, when not one each (aggregates)."""
        second = math.floor(now)
        if self._first is None:
            self._first = now
        if not self._seconds or self._seconds[-1][0] != second:
            self._seconds.append([second, 0, 0.0])
        entry = self._seconds[-1]
        # Read field by field in C: this runs for every result.
        entry[1] += len(results) if requests is None else requests
        entry[2] += sum(filter(None, map(_elapsed_of, results)))
        if requests is not None:  # aggregates: each tells its own late starts
            self._count_late(results)
        # Only a paced job's results carry a schedule (and a result its start, but one
        # made up by the server, cancelled or refused, may have none).
        timed = list(
            compress(results, map(operator.is_not, map(_scheduled_of, results), repeat(None)))
        )
        if timed:
            starts = list(map(_started_of, timed))
            if None in starts:
                late = [late_by(r.head.scheduled, r.head.started) for r in timed]
                seconds = [lateness.seconds for lateness in late if lateness is not None]
            else:
                seconds = list(map(operator.sub, starts, map(_scheduled_of, timed)))
            behind = [value for value in seconds if value > LATE_AFTER]
            if behind:
                self.late += len(behind)
                self.worst_lateness = max(self.worst_lateness, *behind)
        while self._seconds[0][0] < second - RECENT:
            self._seconds.popleft()

    def _count_late(self, aggregates: Sequence[StoredResult]) -> None:
        for aggregate in aggregates:
            if isinstance(aggregate, StoredAggregate) and aggregate.late:
                self.late += aggregate.late
                self.worst_lateness = max(self.worst_lateness, aggregate.worst_lateness)

    @classmethod
    def of_seconds(cls, first: float | None, seconds: list[list[Any]]) -> PaceSeen:
        """The pace a store kept: when the first result came in, and ``[second, results,
        elapsed summed]`` for each second with results (in order)."""
        seen = cls()
        seen._first = first
        seen._seconds = deque(seconds)
        return seen

    def _measured(self, now: float) -> tuple[list[list[Any]], float]:
        """The entries measured and the seconds they span (0: nothing to measure yet)."""
        if self._first is None:
            return [], 0.0
        end = math.floor(now)
        start = max(end - RECENT, math.floor(self._first) + 1)
        if end > start:
            return [entry for entry in self._seconds if start <= entry[0] < end], end - start
        since = now - self._first
        return list(self._seconds), since if since >= YOUNGEST else 0.0

    def measured_over(self, now: float) -> float:
        """Seconds ``rate`` is measured over: ``RECENT`` once the job is older than that,
        0 before there is anything to measure."""
        return self._measured(now)[1]

    def rate(self, now: float) -> float:
        """Results per second lately (0.0 before there is anything to measure)."""
        entries, seconds = self._measured(now)
        return sum(entry[1] for entry in entries) / seconds if seconds else 0.0

    def mean_elapsed(self, now: float) -> float | None:
        """Mean service time of the results ``rate`` counts."""
        entries, _ = self._measured(now)
        count = sum(entry[1] for entry in entries)
        return sum(entry[2] for entry in entries) / count if count else None


class JobTable:
    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self.aggregate: set[str] = set()
        """The names of the aggregate jobs (whose tasks are spans)."""

    def requests_of(self, job: Job) -> Requests:
        """The request counts of ``job``, which is an aggregate job from now on."""
        if job.requests is None:
            job.requests = Requests()
            self.aggregate.add(job.name)
        return job.requests

    def get_or_create(self, name: str, now: float) -> Job:
        """The job called ``name``, created if new: only submitting creates a job."""
        job = self._jobs.get(name)
        if job is None:
            job = self._jobs[name] = Job(name, now)
        return job

    def find(self, name: str) -> Job | None:
        return self._jobs.get(name)

    def existing(self, name: str) -> Job:
        """The job called ``name``: reads and steering never create one, so a name the
        server has never heard of (a typo, say) is an error that says what there is."""
        job = self._jobs.get(name)
        if job is None:
            raise NoSuchJob(unknown_job(name, list(self._jobs)))
        return job

    def __iter__(self) -> Iterator[Job]:
        return iter(list(self._jobs.values()))


JOBS_NAMED = 5
"""Jobs an unknown job's error lists, when none is close to the name given."""


def unknown_job(name: str, names: list[str]) -> str:
    """No job ``name``, and the closest name there is, or a few that there are."""
    message = f"no job {name!r} on this server"
    close = difflib.get_close_matches(name, names, n=1)
    if close:
        return f"{message}: did you mean {close[0]!r}?"
    if not names:
        return f"{message}: it has no jobs"
    listed = ", ".join(names[-JOBS_NAMED:])
    more = f" and {len(names) - JOBS_NAMED} more" if len(names) > JOBS_NAMED else ""
    return f"{message}: its jobs are {listed}{more}"
