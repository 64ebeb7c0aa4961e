"""Jobs by name, with the counters that belong to the job itself.

Where a job's tasks and results are now (queued, leased, waiting for an
output...) is counted by the part that holds them; a job keeps what no part
holds: how many were submitted and how their tasks ended.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass


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

    def count_result(self, ok: bool) -> None:
        if ok:
            self.succeeded += 1
        else:
            self.failed += 1


class JobTable:
    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}

    def get(self, name: str, now: float) -> Job:
        """The job called ``name``, created on first mention."""
        job = self._jobs.get(name)
        if job is None:
            job = self._jobs[name] = Job(name, now)
        return job

    def find(self, name: str) -> Job | None:
        return self._jobs.get(name)

    def __iter__(self) -> Iterator[Job]:
        return iter(list(self._jobs.values()))

    def __bool__(self) -> bool:
        return bool(self._jobs)
