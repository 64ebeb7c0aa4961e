"""Results on their way to outputs: waiting, handed out under a token, confirmed.

An output is handed a batch of results under a delivery token and confirms
the token once it has written them.  Until then the results stay here; a
delivery not confirmed by its deadline goes back, in its order, to the front
of its job's results, so an output that dies loses nothing.
"""

from __future__ import annotations

import heapq
import itertools
import operator
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from fetchq.wire.records import StoredResult

Result = StoredResult

HEAP_SLACK = 256
"""Confirmed deliveries the expiry heap may hold beyond twice the open ones."""


class Delivery:
    __slots__ = ("deadline", "jobs", "results", "sequence", "token")

    def __init__(
        self,
        token: str,
        results: list[Result],
        deadline: float,
        sequence: int,
        jobs: Mapping[str, int] | None = None,
    ) -> None:
        self.token = token
        self.results = results
        self.deadline = deadline
        self.sequence = sequence
        """Breaks deadline ties in hand-out order, so lapsed deliveries return in order."""
        self.jobs: Mapping[str, int] = count_by_job(results) if jobs is None else jobs
        """Results per job: counted once, for the hand-out, the confirmation and the
        outputs woken by it."""

    def __lt__(self, other: Delivery) -> bool:
        return (self.deadline, self.sequence) < (other.deadline, other.sequence)

    def ids(self) -> list[int]:
        return [result.id for result in self.results]


def count_by_job(results: Iterable[Result]) -> Counter[str]:
    return Counter(map(_job_of, results))


_job_of = operator.attrgetter("job")


class Outbox:
    def __init__(self) -> None:
        self._waiting: dict[str, deque[Result]] = {}
        self._deliveries: dict[str, Delivery] = {}
        self._expiry: list[Delivery] = []
        self._sequence = itertools.count()
        self._handed_out: Counter[str] = Counter()
        self._confirmed: Counter[str] = Counter()
        self.unconfirmed = 0
        """Results waiting or handed out, over all jobs: what ``max_results`` bounds."""

    def add(self, result: Mapping[str, Any]) -> None:
        stored = StoredResult.of(result)
        self._waiting.setdefault(stored.job, deque()).append(stored)
        self.unconfirmed += 1

    def add_all(self, job: str, results: list[StoredResult]) -> None:
        """``add`` for results of one job, all of them as the server keeps them."""
        self._waiting.setdefault(job, deque()).extend(results)
        self.unconfirmed += len(results)

    def select(self, job: str | None, count: int) -> list[Result]:
        """The results ``hand_out`` would take: up to ``count``, oldest first, per job."""
        queues = [self._waiting[job]] if job in self._waiting else []
        if job is None:
            queues = [waiting for waiting in self._waiting.values() if waiting]
        selected: list[Result] = []
        for waiting in queues:
            selected.extend(itertools.islice(waiting, count - len(selected)))
            if len(selected) >= count:
                break
        return selected

    def hand_out(
        self, token: str, selected: list[Result], deadline: float, job: str | None = None
    ) -> None:
        """Take what ``select`` chose off the front of the waiting results (``job``: the
        one job they all belong to, when ``select`` was asked for one)."""
        jobs = count_by_job(selected) if job is None else {job: len(selected)}
        for name, count in jobs.items():
            waiting = self._waiting[name]
            if count == len(waiting):  # an output that keeps up takes all there is
                waiting.clear()
            else:
                for _ in range(count):
                    waiting.popleft()
            self._handed_out[name] += count
        self._track(token, selected, deadline, jobs)

    def restore_delivery(self, token: str, results: list[Result], deadline: float) -> None:
        """A delivery the journal says was handed out and not confirmed before a restart:
        its output may still confirm it."""
        for job, count in count_by_job(results).items():
            self._handed_out[job] += count
        self.unconfirmed += len(results)
        self._track(token, results, deadline)

    def _track(
        self,
        token: str,
        results: list[Result],
        deadline: float,
        jobs: Mapping[str, int] | None = None,
    ) -> None:
        delivery = Delivery(token, results, deadline, next(self._sequence), jobs)
        self._deliveries[token] = delivery
        heapq.heappush(self._expiry, delivery)

    def delivery(self, token: str) -> Delivery | None:
        return self._deliveries.get(token)

    def confirm(self, token: str) -> Delivery | None:
        """The output wrote these: forget them.  None for a token already confirmed or
        lapsed (its results were handed out again)."""
        delivery = self._deliveries.pop(token, None)
        if delivery is None:
            return None
        for job, count in delivery.jobs.items():
            self._handed_out[job] -= count
            self._confirmed[job] += count
        self.unconfirmed -= len(delivery.results)
        if len(self._expiry) > 2 * len(self._deliveries) + HEAP_SLACK:
            self._expiry = [d for d in self._expiry if self._deliveries.get(d.token) is d]
            heapq.heapify(self._expiry)
        # The expiry heap may hold the delivery until its deadline; its results go now,
        # or they would outlive their confirmation by a lease timeout, beyond max_results.
        confirmed = Delivery(
            token, delivery.results, delivery.deadline, delivery.sequence, delivery.jobs
        )
        delivery.results = []
        return confirmed

    def lapsed(self, now: float) -> list[Delivery]:
        """Open deliveries past their deadline, oldest first, taken off the heap; the
        caller returns each with ``give_back`` or, if it cannot now, ``refile``s it."""
        lapsed = []
        while self._expiry and self._expiry[0].deadline <= now:
            delivery = heapq.heappop(self._expiry)
            if self._deliveries.get(delivery.token) is delivery:
                lapsed.append(delivery)
        return lapsed

    def refile(self, delivery: Delivery) -> None:
        heapq.heappush(self._expiry, delivery)

    def give_back(self, lapsed: list[Delivery]) -> None:
        """Lapsed deliveries, oldest first, go back to the front in their order."""
        for delivery in reversed(lapsed):
            del self._deliveries[delivery.token]
            for result in reversed(delivery.results):
                self._waiting.setdefault(result.job, deque()).appendleft(result)
            for job, count in delivery.jobs.items():
                self._handed_out[job] -= count

    def next_deadline(self) -> float | None:
        return self._expiry[0].deadline if self._expiry else None

    def counts(self, job: str) -> tuple[int, int, int]:
        """``(waiting, handed_out, confirmed)`` for one job."""
        waiting = self._waiting.get(job)
        return (len(waiting) if waiting else 0, self._handed_out[job], self._confirmed[job])

    def restore_confirmed(self, job: str, count: int) -> None:
        self._confirmed[job] = count

    def capture(self) -> tuple[list[tuple[str, list[Result]]], list[Result]]:
        """``(deliveries as (token, results), waiting results)`` now, for a compaction:
        lists of references, cheap under the broker's lock (results are not changed
        once here)."""
        deliveries = [(d.token, list(d.results)) for d in self._deliveries.values()]
        waiting = [result for results in self._waiting.values() for result in results]
        return deliveries, waiting

    def waiting(self) -> Iterator[Result]:
        for waiting in self._waiting.values():
            yield from waiting

    def deliveries(self) -> Iterator[Delivery]:
        return iter(list(self._deliveries.values()))
