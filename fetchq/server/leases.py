"""Tasks held by workers, and when each lease lapses.

A lease is one object: the task, its worker and its deadline.  The expiry
heap holds one entry per lease however often it is renewed: a renewal only
moves the deadline, and a lease met at the top of the heap with a later
deadline than the one it was filed under is filed again.  Heap entries are
``(filed under, sequence, lease)`` tuples, so the heap compares them in C.
"""

from __future__ import annotations

import heapq
import itertools
import operator
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

import msgspec

from fetchq.server.tasks import Task
from fetchq.wire.records import RECORD_VERSION, ROBOTS

_job_of_lease = operator.attrgetter("task.job")

HEAP_SLACK = 1024
"""Ended leases the expiry heap may hold beyond twice the live ones before a sweep."""


class Lease(msgspec.Struct, gc=False):
    """A struct rather than a class: one is made for every task leased, and a struct
    is made in C (``gc=False``: a lease refers to no container that could lead back
    to it)."""

    id: int
    task: Task
    worker: str
    deadline: float
    start: float | None = None
    """When the request may start, in the server's Unix time (None: at once)."""
    host: str | None = None
    """The host whose limits count this lease (None: no host limit applies)."""
    robots: bool = False
    """A robots.txt fetch for the job, not a task."""

    @property
    def attempt(self) -> int:
        return self.task.attempt

    def held_as(self, attempt: int, worker: str | None = None) -> bool:
        """Is this the lease a worker refers to by ``[id, attempt]``?"""
        return self.task.attempt == attempt and (worker is None or self.worker == worker)


_task_of = operator.attrgetter("task")
_start_of = operator.attrgetter("start")
_robots_of = operator.attrgetter("robots")


def task_records(tasks: Iterable[Task], starts: Iterable[float | None]) -> list[dict[str, Any]]:
    """The tasks as a worker receives them (``records.make_task``, written out in one
    pass: this runs for every task leased), each to start at its ``starts``."""
    return [
        {
            "v": RECORD_VERSION,
            "id": task_id,
            "job": job,
            "url": url,
            "attempt": attempt,
            "timeout": timeout,
            "submitted": submitted,
            "scheduled": start,
        }
        for (task_id, job, url, attempt, _, timeout, submitted), start in zip(
            tasks, starts, strict=False
        )
    ]


def records(leases: list[Lease]) -> list[dict[str, Any]]:
    """What the worker receives of each lease: its task, when to start it, and for a
    robots.txt fetch, the host it is for."""
    built = task_records(map(_task_of, leases), map(_start_of, leases))
    if any(map(_robots_of, leases)):
        for record, lease in zip(built, leases, strict=True):
            if lease.robots:
                record.update(kind=ROBOTS, host=lease.host)
    return built


class LeaseTable:
    def __init__(self) -> None:
        self._leases: dict[int, Lease] = {}
        self._expiry: list[tuple[float, int, Lease]] = []
        self._sequence = itertools.count()
        self._per_job: Counter[str] = Counter()

    def grant(
        self,
        task: Task,
        worker: str,
        deadline: float,
        start: float | None = None,
        host: str | None = None,
        robots: bool = False,
    ) -> Lease:
        """``start``, ``host`` and ``robots``: as ``Lease`` takes them."""
        lease = Lease(task.id, task, worker, deadline, start, host, robots)
        self.grant_all([lease])
        return lease

    def grant_plain(self, tasks: list[Task], worker: str, deadline: float) -> list[Lease]:
        """Leases of tasks to start at once with no host limit: ``grant``, for a batch."""
        leases = [Lease(task[0], task, worker, deadline) for task in tasks]
        self.grant_all(leases)
        return leases

    def grant_all(self, leases: list[Lease]) -> None:
        """``grant``, for leases made by the caller."""
        held, expiry, push, sequence = self._leases, self._expiry, heapq.heappush, self._sequence
        for lease in leases:
            held[lease.id] = lease
            push(expiry, (lease.deadline, next(sequence), lease))
        self._per_job.update(map(_job_of_lease, leases))  # counted in C

    def get(self, task_id: int) -> Lease | None:
        return self._leases.get(task_id)

    def drop(self, task_id: int) -> Lease | None:
        """End a lease (its task finished, went back, or lapsed)."""
        lease = self._leases.pop(task_id, None)
        if lease is not None:
            self._per_job[lease.task.job] -= 1
            if len(self._expiry) > 2 * len(self._leases) + HEAP_SLACK:
                self._sweep()
        return lease

    def end_all(self, leases: list[Lease]) -> None:
        """End leases known to be held (as ``drop`` ends them)."""
        held, per_job = self._leases, self._per_job
        for lease in leases:
            del held[lease.id]
        for job, count in Counter(map(_job_of_lease, leases)).items():
            per_job[job] -= count
        if len(self._expiry) > 2 * len(held) + HEAP_SLACK:
            self._sweep()

    def _sweep(self) -> None:
        """Ended leases wait in the heap until their deadline; past the slack they are
        swept out at once, so the heap stays within twice the live leases."""
        held = self._leases
        self._expiry = [entry for entry in self._expiry if held.get(entry[2].id) is entry[2]]
        heapq.heapify(self._expiry)

    def renew(self, task_id: int, attempt: int, worker: str, deadline: float) -> bool:
        lease = self._leases.get(task_id)
        if lease is None or not lease.held_as(attempt, worker):
            return False
        lease.deadline = max(lease.deadline, deadline)
        return True

    def overdue(self, now: float) -> list[Lease]:
        """Leases past their deadline, taken off the heap; the caller drops each one
        or, if it cannot act on them now, hands them back with ``refile``."""
        lapsed = []
        heap = self._expiry
        while heap and heap[0][0] <= now:
            lease = heapq.heappop(heap)[2]
            if self._leases.get(lease.id) is not lease:
                continue  # ended since it was filed
            if lease.deadline > now:
                self.refile(lease)  # renewed since it was filed
            else:
                lapsed.append(lease)
        return lapsed

    def refile(self, lease: Lease) -> None:
        heapq.heappush(self._expiry, (lease.deadline, next(self._sequence), lease))

    def next_deadline(self) -> float | None:
        """When the next lease may lapse (possibly earlier than it will, if renewed)."""
        return self._expiry[0][0] if self._expiry else None

    def held_by(self) -> Counter[str]:
        return Counter(lease.worker for lease in self._leases.values())

    def count(self, job: str) -> int:
        return self._per_job[job]

    def __len__(self) -> int:
        return len(self._leases)

    def __iter__(self) -> Iterator[Lease]:
        return iter(list(self._leases.values()))
