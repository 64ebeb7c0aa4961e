"""Which job's waiting task goes to a worker next, and when its request may start.

Jobs with something to lease take turns, each an equal share of a lease
call; a job's own tasks and hosts are its ``JobQueue``'s.  The scheduler
keeps what is not one job's: the order of the jobs, each job's rate schedule
and the server-wide per-host limits.

A job with a rate gives each task a start ``1 / rate`` after the previous
one: the schedule is fixed when the task is leased and never moves, so a
fleet that falls behind shows it as late starts (no coordinated omission)
and catches up.  Tasks are leased up to ``LOOKAHEAD`` seconds before their
start, so that workers start them on time.  A host held back by a limit is
not leased at all: no lease runs out while it waits.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator

from fetchq.ids import IdSet
from fetchq.server.jobqueue import (
    LOOKAHEAD,
    ROBOTS_ATTEMPTS,
    ROBOTS_TIMEOUT,
    HostSlot,
    JobQueue,
    Pace,
    Pick,
    Policy,
    Robots,
    Rounds,
    ServerHosts,
)
from fetchq.server.tasks import Batch, Task
from fetchq.wire.aggregates import span_size
from fetchq.wire.stages import Stages

__all__ = ["LOOKAHEAD", "ROBOTS_ATTEMPTS", "ROBOTS_TIMEOUT", "Scheduler"]


class Scheduler:
    def __init__(self, server_policy: Policy | None = None) -> None:
        self.server = ServerHosts(server_policy or Policy())
        self.jobs: dict[str, JobQueue] = {}
        self.paces: dict[str, Pace] = {}
        """Each job's rate schedule."""
        self.rounds: dict[str, Rounds] = {}
        """Each paced aggregate job's rate schedule, made at its first span."""
        self.ring: deque[JobQueue] = deque()
        """Jobs with tasks to lease, taking turns."""
        self.denied: list[tuple[Task, Robots]] = []
        """Tasks robots.txt forbids, taken out by ``take``: the broker ends them."""
        self.freed = 0
        """Leases on limited hosts that ended since the broker last looked: room to wake for."""
        self.span_jobs: list[str] = []
        """The aggregate jobs the last ``take_tasks`` took a span from."""
        self.spacings: dict[int, float] = {}
        """The spacing of each span the last ``take_tasks`` took from a paced job, by id
        (its first start is its ``Pick``'s)."""
        self._count = 0

    @property
    def server_policy(self) -> Policy:
        return self.server.policy

    @property
    def host_slots(self) -> dict[str, HostSlot]:
        """Per-host state across every job, for the server's own limits."""
        return self.server.slots

    @property
    def epoch(self) -> float:
        return self.server.epoch

    @epoch.setter
    def epoch(self, moment: float) -> None:
        self.server.epoch = moment

    # -- what waits -------------------------------------------------------

    def find(self, name: str) -> JobQueue | None:
        return self.jobs.get(name)

    def get_or_create(self, name: str) -> JobQueue:
        """The job's queue, made on first need: by a submit, a policy, or a replay."""
        queue = self.jobs.get(name)
        if queue is None:
            queue = self.jobs[name] = JobQueue(name, self.server)
            self.paces[name] = Pace()
        return queue

    def is_cancelled(self, name: str) -> bool:
        queue = self.jobs.get(name)
        return queue is not None and queue.cancelled

    def policy(self, name: str) -> Policy:
        queue = self.jobs.get(name)
        return queue.policy if queue is not None else Policy()

    def by_host(self, name: str) -> bool:
        """Do the job's tasks wait per host (it has host limits, or the server has)?"""
        queue = self.jobs.get(name)
        return queue is not None and queue.by_host

    def set_policy(self, name: str, policy: Policy) -> None:
        queue = self.get_or_create(name)
        if policy.stages != queue.policy.stages:
            self.paces[name].follow(Stages(policy.stages) if policy.stages else None)
        queue.set_policy(policy)
        self._changed(queue, queue.count)

    def add_batch(self, batch: Batch, now: float) -> None:
        queue = self.get_or_create(batch.job)
        if not batch.urls:
            return
        if queue.count == 0:
            self.paces[batch.job].fresh = True  # a rate starts when work does, not when queued
        before = queue.count
        queue.add_batch(batch)
        self._changed(queue, before)

    def add_retry(self, task: Task) -> None:
        """Back in front of its job (or its host): a job's stragglers go first."""
        queue = self.get_or_create(task.job)
        before = queue.count
        queue.add_retry(task)
        self._changed(queue, before)

    def add_task(self, task: Task) -> None:
        """At the back: a restart queues what was not done, in id order."""
        queue = self.get_or_create(task.job)
        before = queue.count
        queue.add_task(task)
        self._changed(queue, before)

    def forget(self, job: str) -> None:
        """One waiting copy of ``job`` turned stale: its task finished elsewhere."""
        self.jobs[job].count -= 1
        self._count -= 1

    def __len__(self) -> int:
        return self._count

    def count(self, job: str) -> int:
        queue = self.jobs.get(job)
        return queue.count if queue else 0

    def __iter__(self) -> Iterator[Task]:
        for queue in self.jobs.values():
            yield from queue.tasks()

    def capture(self) -> list[Callable[[], Iterator[Task]]]:
        """What waits now, read later (see ``JobQueue.capture``)."""
        return [queue.capture() for queue in self.jobs.values()]

    # -- steering ---------------------------------------------------------

    def pause(self, name: str, paused: bool, now: float) -> None:
        queue = self.get_or_create(name)
        queue.paused = paused
        if not paused:
            self.paces[name].fresh = True  # a pause is not lateness
            self._list_job(queue)

    def cancel(self, name: str) -> None:
        self.get_or_create(name).cancelled = True

    def drain(self, name: str, count: int, is_done: Callable[[int], bool]) -> list[Task]:
        """Take up to ``count`` waiting tasks of a job, limits aside (a cancelled job's
        tasks end as results without a request)."""
        queue = self.get_or_create(name)
        before = queue.count
        taken = queue.drain(count, is_done)
        self._count += queue.count - before
        return taken

    def put_back(self, tasks: list[Task]) -> None:
        """Undo a ``take`` or ``drain`` whose journal write failed."""
        for task in reversed(tasks):
            self.add_retry(task)

    def hold(self, job: str, url: str, until: float) -> None:
        """A site asked this job to wait (Retry-After): no start on the host before then."""
        queue = self.get_or_create(job)
        before = queue.count
        queue.hold(url, until)
        self._changed(queue, before)

    def learn_robots(
        self, job: str, host: str, robots: Robots | None, now: float = float("-inf")
    ) -> None:
        """robots.txt is known for the host (None: ask again).  ``now``: when its fetch
        was over, from which the host's delay counts (the fetch was a request too, and it
        began later than it was leased)."""
        queue = self.get_or_create(job)
        queue.learn_robots(host, robots, now)
        self._list_job(queue)

    # -- handing out ------------------------------------------------------

    def take(self, count: int, now: float, is_done: Callable[[int], bool]) -> list[Pick]:
        """Up to ``count`` tasks whose start is due within ``LOOKAHEAD``; tasks robots.txt
        forbids are moved to ``denied`` on the way."""
        return [
            taken if isinstance(taken, Pick) else Pick(taken, None, None)
            for taken in self.take_tasks(count, now, is_done)
        ]

    def take_tasks(
        self,
        count: int,
        now: float,
        is_done: Callable[[int], bool],
        done: IdSet | None = None,
        *,
        spans: bool = False,
    ) -> list[Task | Pick]:
        """As ``take``, but a task to start at once with no host limit is the task itself,
        not a ``Pick``: most tasks of most jobs, leased with no more to decide.
        ``done``: the set ``is_done`` reads, if there is one (see ``JobQueue.take_fifo``).

        An aggregate job's tasks are spans: they go only to a worker that runs them
        (``spans``), from one such job a call, and as many as ``count`` requests fill
        (one at least), since each stands for many.  ``span_jobs`` then names the job
        they were taken from."""
        picks: list[Task | Pick] = []
        self.span_jobs = []
        if self.spacings:
            self.spacings = {}
        while len(picks) < count and self.ring:
            jobs = len(self.ring)
            share = -(-(count - len(picks)) // jobs)  # each job an equal part, rounded up
            progressed = False
            for _ in range(jobs):
                if len(picks) >= count or not self.ring:
                    break
                queue = self.ring[0]
                if not queue.eligible:
                    self.ring.popleft()
                    queue.in_ring = False
                    continue
                self.ring.rotate(-1)
                if queue.policy.aggregate:
                    if not spans or self.span_jobs:
                        continue
                    spans_taken = self._take_spans(queue, count - len(picks), now, is_done, done)
                    if spans_taken:
                        self.span_jobs.append(queue.name)
                    picks.extend(spans_taken)
                    progressed = progressed or bool(spans_taken)
                    continue
                got = self._take_job(queue, min(share, count - len(picks)), now, is_done, done)
                picks.extend(got)
                progressed = progressed or bool(got)
            if not progressed:
                break
        return picks

    def next_change(self, now: float) -> float | None:
        """When a job waiting on its rate or a host waiting on its delay comes within
        reach (None: nothing waits on time; ends of leases wake the rest)."""
        times = []
        for queue in self.ring:
            if not queue.eligible:
                continue
            if queue.policy.rate:
                rounds = self.rounds.get(queue.name)
                paced = rounds if rounds and queue.policy.aggregate else None
                next_slot = paced.next_start if paced else self.paces[queue.name].next_slot
                times.append(next_slot - LOOKAHEAD)
            waiting = queue.next_start()
            if waiting is not None:
                times.append(waiting - LOOKAHEAD)
        return min(times) if times else None

    def held_over(self, task: Task) -> str | None:
        """A task the old process leased, still running after a restart: it counts on
        its host as a lease does.  Returns the host whose limits count it (None when no
        host limit applies to its job now), for ``lease_ended``."""
        queue = self.get_or_create(task.job)
        return queue.held_over(task.url) if queue.by_host else None

    def lease_ended(self, job: str, host: str | None, count: int = 1) -> None:
        """``count`` leased tasks of ``job`` on ``host`` finished, went back or lapsed."""
        if host is None:
            return
        self.freed += count
        queue = self.jobs.get(job)
        if queue is not None:
            queue.lease_ended(host, count)
            self._list_job(queue)
        server_slot = self.server.slots.get(host)
        if server_slot is not None:
            server_slot.in_flight -= count
            for other in self.jobs.values():
                parked = other.hosts.get(host)
                if parked is not None and parked.parked:
                    other.unpark(parked)
                    self._list_job(other)

    def busiest_hosts(self, job: str, count: int) -> list[tuple[str, int, int]]:
        """The job's hosts with the longest queues: (host, waiting, in flight)."""
        queue = self.jobs.get(job)
        return [] if queue is None else queue.busiest_hosts(count)

    # -- inside -----------------------------------------------------------

    def _changed(self, queue: JobQueue, before: int) -> None:
        """The job's queue changed (it had ``before`` tasks): count it, and list the job
        if it now has something to lease."""
        self._count += queue.count - before
        self._list_job(queue)

    def _list_job(self, queue: JobQueue) -> None:
        if not queue.in_ring and queue.eligible:
            queue.in_ring = True
            self.ring.append(queue)

    def _take_spans(
        self,
        queue: JobQueue,
        room: int,
        now: float,
        is_done: Callable[[int], bool],
        done: IdSet | None,
    ) -> list[Task] | list[Pick]:
        """Spans of an aggregate job (which has no host limits, so its tasks come as
        themselves): the first, then as many more as ``room`` requests hold, counting
        each as big as the first.  A paced job's span comes alone, with its schedule
        from the job's rounds (see ``Rounds``), once its first start is near."""
        rate = queue.policy.rate
        if rate:
            return self._take_paced_span(queue, rate, now, is_done, done)
        first = queue.take_fifo(1, is_done, done)
        if first:
            more = room // span_size(first[0].url) - 1
            if more > 0:
                first += queue.take_fifo(more, is_done, done)
        self._count -= len(first)
        return first

    def _take_paced_span(
        self,
        queue: JobQueue,
        rate: float,
        now: float,
        is_done: Callable[[int], bool],
        done: IdSet | None,
    ) -> list[Pick]:
        rounds = self.rounds.get(queue.name)
        if rounds is None:
            rounds = self.rounds[queue.name] = Rounds(now)
        pace = self.paces[queue.name]
        if pace.fresh:
            rounds.restart(now)
            pace.fresh = False
        if rounds.next_start > now + LOOKAHEAD:
            return []
        taken = queue.take_fifo(1, is_done, done)
        if not taken:
            return []
        self._count -= 1
        span = taken[0]
        start, self.spacings[span.id] = rounds.take(span_size(span.url), queue.count, rate)
        return [Pick(span, start, None)]

    def _take_job(
        self,
        queue: JobQueue,
        count: int,
        now: float,
        is_done: Callable[[int], bool],
        done: IdSet | None = None,
    ) -> list[Task] | list[Pick]:
        rate = queue.policy.rate
        pace = self.paces[queue.name]
        pace.begin(now)
        staged = pace.stages is not None
        if rate:
            horizon = now + LOOKAHEAD
            if pace.next_slot > horizon:
                return []
            if staged:
                count = len(pace.starts(count, horizon, pace.next_slot, take=False))
            else:
                count = min(count, int((horizon - pace.next_slot) * rate) + 1)
        before = queue.count
        if queue.by_host:
            picks = queue.take_hosted(count, now, pace, is_done, self.denied, done)
            self._count += queue.count - before
            return picks
        tasks = queue.take_fifo(count, is_done, done)
        self._count -= len(tasks)
        if not rate:
            return tasks
        if staged:
            starts = pace.starts(len(tasks), horizon, pace.next_slot, take=True)
            return [Pick(task, start, None) for task, start in zip(tasks, starts, strict=True)]
        first, step = pace.next_slot, 1.0 / rate
        pace.next_slot += step * len(tasks)
        return [Pick(task, first + n * step, None) for n, task in enumerate(tasks)]
