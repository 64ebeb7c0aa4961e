"""Jobs by name, with the counters that belong to the job itself.

Where a job's tasks and results are now (queued, leased, waiting for an
output...) is counted by the part that holds them; a job keeps what no part
holds: how many were submitted and how their tasks ended.
"""

from __future__ import annotations

import difflib
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from fetchq.errors import NoSuchJob
from fetchq.wire.api import LATE_AFTER

RECENT = 10.0
"""Seconds of results a job's achieved rate and mean response time are measured over."""


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

    def count_result(self, ok: bool) -> None:
        if ok:
            self.succeeded += 1
        else:
            self.failed += 1


class PaceSeen:
    """How a job really runs, from the results workers report: the rate achieved, the
    mean service time, and how many requests started late and by how much."""

    def __init__(self) -> None:
        self._recent: deque[list[float]] = deque()
        """[second, results, elapsed summed], one entry per second with results."""
        self.late = 0
        self.worst_lateness = 0.0

    def record(self, now: float, results: Iterable[dict[str, Any]]) -> None:
        second = float(int(now))
        if not self._recent or self._recent[-1][0] != second:
            self._recent.append([second, 0, 0.0])
        entry = self._recent[-1]
        for result in results:
            entry[1] += 1
            entry[2] += float(result.get("elapsed") or 0.0)
            scheduled, started = result.get("scheduled"), result.get("started")
            if isinstance(scheduled, int | float) and isinstance(started, int | float):
                lateness = started - scheduled
                if lateness > LATE_AFTER:
                    self.late += 1
                    self.worst_lateness = max(self.worst_lateness, lateness)
        while self._recent and self._recent[0][0] < now - RECENT:
            self._recent.popleft()

    def rate(self, now: float) -> float:
        """Results per second over the last ``RECENT`` seconds."""
        recent = [entry for entry in self._recent if entry[0] >= now - RECENT]
        if not recent:
            return 0.0
        span = max(1.0, min(RECENT, now - recent[0][0]))
        return sum(entry[1] for entry in recent) / span

    def mean_elapsed(self, now: float) -> float | None:
        recent = [entry for entry in self._recent if entry[0] >= now - RECENT]
        count = sum(entry[1] for entry in recent)
        return sum(entry[2] for entry in recent) / count if count else None


class JobTable:
    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}

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
