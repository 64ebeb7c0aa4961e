"""Which waiting task goes to a worker next, and when its request may start.

Tasks wait per job, and jobs with something to lease take turns.  Within
a job, tasks go first in, first out (retries in front).  A job with a rate
gives each task a start ``1 / rate`` after the previous one: the schedule is
fixed when the task is leased and never moves, so a fleet that falls behind
shows it as late starts (no coordinated omission) and catches up.

A job with host limits (a per-host cap, a host delay, robots.txt, Retry-After
holds, or the server's own per-host limits) sorts its tasks into one queue
per host as they arrive, and hosts that are ready take turns, so a host with
a long queue never starves the others.  A host held back by a limit is
not leased at all: no lease runs out while it waits.  Tasks are leased
up to ``LOOKAHEAD`` seconds before their start, so that workers start
them on time.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable, Iterator

from fetchq.server.jobqueue import HostQueue, HostSlot, JobQueue, Pick, Policy, Robots
from fetchq.server.tasks import Span, Task
from fetchq.urls import host_key, origin

LOOKAHEAD = 1.0
"""Seconds before its start a task may be handed to a worker."""

ROBOTS_TIMEOUT = 30.0
"""Seconds a worker may take to fetch a robots.txt."""

ROBOTS_ATTEMPTS = 3
"""Fetches of a robots.txt that cannot be had (5xx, no answer) before the host is given up."""


class Scheduler:
    def __init__(self, server_policy: Policy | None = None) -> None:
        self.server_policy = server_policy or Policy()
        self.jobs: dict[str, JobQueue] = {}
        self.ring: deque[JobQueue] = deque()
        self.host_slots: dict[str, HostSlot] = {}
        """Per-host state across every job, for the server's own limits."""
        self.denied: list[tuple[Task, Robots]] = []
        """Tasks robots.txt forbids, taken out by ``take``: the broker ends them."""
        self.freed = 0
        """Leases on limited hosts that ended since the broker last looked: room to wake for."""
        self._count = 0
        self._order = itertools.count()
        self.epoch = float("-inf")
        """Before this no start counts; a restart sets it to the moment it came back, as
        the old process may have started requests on any host until it died."""

    # -- what waits -------------------------------------------------------

    def find(self, name: str) -> JobQueue | None:
        return self.jobs.get(name)

    def get_or_create(self, name: str) -> JobQueue:
        """The job's queue, made on first need: by a submit, a policy, or a replay."""
        queue = self.jobs.get(name)
        if queue is None:
            queue = self.jobs[name] = JobQueue(name)
            queue.by_host = self.server_policy.limits_hosts
        return queue

    def is_cancelled(self, name: str) -> bool:
        queue = self.jobs.get(name)
        return queue is not None and queue.cancelled

    def policy(self, name: str) -> Policy:
        queue = self.jobs.get(name)
        return queue.policy if queue is not None else Policy()

    def set_policy(self, name: str, policy: Policy) -> None:
        queue = self.get_or_create(name)
        queue.policy = policy
        if policy.limits_hosts:
            self._sort_by_host(queue)

    def add_batch(self, span: Span, now: float) -> None:
        queue = self.get_or_create(span.job)
        if not span.urls:
            return
        if queue.count == 0:
            queue.fresh = True  # a rate starts when work does, not when it was queued
        queue.fifo.append(span)
        self._added(queue, len(span.urls))
        if queue.by_host:
            self._sort_fifo(queue)

    def add_retry(self, task: Task) -> None:
        """Back in front of its job (or its host): a job's stragglers go first."""
        queue = self.get_or_create(task.job)
        if queue.by_host:
            host = queue.host(host_key(task.url), self.epoch)
            host.push_front(task)
            self._list_host(queue, host)
        else:
            queue.fifo.appendleft(task)
        self._added(queue, 1)

    def add_task(self, task: Task) -> None:
        """At the back: a restart queues what was not done, in id order."""
        queue = self.get_or_create(task.job)
        queue.fifo.append(task)
        self._added(queue, 1)
        if queue.by_host:
            self._sort_fifo(queue)

    def _added(self, queue: JobQueue, count: int) -> None:
        queue.count += count
        self._count += count
        self._list_job(queue)

    def forget(self, job: str) -> None:
        """One waiting copy of ``job`` turned stale: its task finished elsewhere."""
        queue = self.jobs[job]
        queue.count -= 1
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
            queue.fresh = True  # a pause is not lateness
            self._list_job(queue)

    def cancel(self, name: str) -> None:
        self.get_or_create(name).cancelled = True

    def drain(self, name: str, count: int, is_done: Callable[[int], bool]) -> list[Task]:
        """Take up to ``count`` waiting tasks of a job, limits aside (a cancelled job's
        tasks end as results without a request)."""
        queue = self.get_or_create(name)
        taken: list[Task] = []
        for host in list(queue.hosts.values()):
            while len(host) and len(taken) < count:
                task = host.front.popleft() if host.front else queue.task_of(host.pop_id())
                if not is_done(task.id):
                    taken.append(task)
        taken.extend(self._take_fifo(queue, count - len(taken), is_done))
        self._took(queue, len(taken))
        return taken

    def put_back(self, tasks: list[Task]) -> None:
        """Undo a ``take`` or ``drain`` whose journal write failed."""
        for task in reversed(tasks):
            self.add_retry(task)

    def hold(self, job: str, url: str, until: float) -> None:
        """A site asked this job to wait (Retry-After): no start on the host before then."""
        queue = self.get_or_create(job)
        self._sort_by_host(queue)
        slot = queue.host(host_key(url), self.epoch)
        slot.held_until = max(slot.held_until, until)

    def learn_robots(
        self, job: str, host: str, robots: Robots | None, now: float = float("-inf")
    ) -> None:
        """robots.txt is known for the host (None: ask again).  ``now``: when its fetch
        was over, from which the host's delay counts (the fetch was a request too, and it
        began later than it was leased)."""
        queue = self.get_or_create(job)
        bucket = queue.host(host, self.epoch)
        bucket.probing = False
        bucket.robots = robots
        bucket.last_start = max(bucket.last_start, now)
        if len(bucket):
            self._unpark(queue, bucket)

    # -- handing out ------------------------------------------------------

    def take(self, count: int, now: float, is_done: Callable[[int], bool]) -> list[Pick]:
        """Up to ``count`` tasks whose start is due within ``LOOKAHEAD``; tasks robots.txt
        forbids are moved to ``denied`` on the way."""
        horizon = now + LOOKAHEAD
        picks: list[Pick] = []
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
                got = self._take_job(queue, min(share, count - len(picks)), now, horizon, is_done)
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
                times.append(queue.next_slot - LOOKAHEAD)
            if queue.waiting:
                times.append(queue.waiting[0][0] - LOOKAHEAD)
        return min(times) if times else None

    def lease_ended(self, job: str, host: str | None) -> None:
        """A leased task of ``job`` on ``host`` finished, went back or lapsed."""
        if host is None:
            return
        self.freed += 1
        queue = self.jobs.get(job)
        if queue is not None and host in queue.hosts:
            bucket = queue.hosts[host]
            bucket.in_flight -= 1
            self._unpark(queue, bucket)
        server_slot = self.host_slots.get(host)
        if server_slot is not None:
            server_slot.in_flight -= 1
            for other in self.jobs.values():
                parked = other.hosts.get(host)
                if parked is not None and parked.parked:
                    self._unpark(other, parked)

    def busiest_hosts(self, job: str, count: int) -> list[tuple[str, int, int]]:
        """The job's hosts with the longest queues: (host, waiting, in flight)."""
        queue = self.jobs.get(job)
        if queue is None:
            return []
        rows = [(host.key, len(host), host.in_flight) for host in queue.hosts.values()]
        rows = [row for row in rows if row[1] or row[2]]
        return sorted(rows, key=lambda row: (-row[1], row[0]))[:count]

    # -- inside -----------------------------------------------------------

    def _list_job(self, queue: JobQueue) -> None:
        if not queue.in_ring and queue.eligible:
            queue.in_ring = True
            self.ring.append(queue)

    def _took(self, queue: JobQueue, count: int) -> None:
        queue.count -= count
        self._count -= count

    def _take_job(
        self,
        queue: JobQueue,
        count: int,
        now: float,
        horizon: float,
        is_done: Callable[[int], bool],
    ) -> list[Pick]:
        rate = queue.policy.rate
        if queue.fresh:
            queue.next_slot = max(queue.next_slot, now)
            queue.fresh = False
        if rate:
            if queue.next_slot > horizon:
                return []
            count = min(count, int((horizon - queue.next_slot) * rate) + 1)
        if not queue.by_host:
            tasks = self._take_fifo(queue, count, is_done)
            self._took(queue, len(tasks))
            if not rate:
                return [Pick(task, None, None) for task in tasks]
            first, step = queue.next_slot, 1.0 / rate
            queue.next_slot += step * len(tasks)
            return [Pick(task, first + n * step, None) for n, task in enumerate(tasks)]
        picks: list[Pick] = []
        while len(picks) < count:
            pick = self._take_hosted(queue, now, horizon, is_done)
            if pick is None:
                break
            picks.append(pick)
        return picks

    def _take_fifo(self, queue: JobQueue, count: int, is_done: Callable[[int], bool]) -> list[Task]:
        taken: list[Task] = []
        fifo = queue.fifo
        while fifo and len(taken) < count:
            head = fifo[0]
            if isinstance(head, Span):
                task = head.take()
                if head.exhausted:
                    fifo.popleft()
            else:
                fifo.popleft()
                task = head
            if not is_done(task.id):  # a stale copy: finished late by an earlier attempt
                taken.append(task)
        return taken

    def _take_hosted(
        self, queue: JobQueue, now: float, horizon: float, is_done: Callable[[int], bool]
    ) -> Pick | None:
        """The next task of a job sorted by host: hosts that are ready take turns."""
        while queue.waiting and queue.waiting[0][0] <= horizon:
            _, _, bucket = heapq.heappop(queue.waiting)
            bucket.waiting = False
            self._list_host(queue, bucket)
        for _ in range(len(queue.ring)):
            bucket = queue.ring.popleft()
            bucket.listed = False
            pick = self._try_host(queue, bucket, now, horizon, is_done)
            if pick is not None:
                if len(bucket) and not (bucket.parked or bucket.waiting):
                    self._list_host(queue, bucket)  # to the back: hosts take turns
                return pick
        return None

    def _try_host(
        self,
        queue: JobQueue,
        bucket: HostQueue,
        now: float,
        horizon: float,
        is_done: Callable[[int], bool],
    ) -> Pick | None:
        if not len(bucket):
            return None
        policy = queue.policy
        if policy.obey_robots and bucket.robots is None:
            if bucket.probing:
                bucket.parked = True
                return None
            bucket.probing = True
            bucket.parked = True
            return self._robots_probe(queue, bucket, now)
        delay = self._delay(queue, bucket)
        server_slot = self._server_slot(bucket.key)
        ready = self._ready_at(queue, bucket, delay, server_slot)
        if ready is None:
            bucket.parked = True
            return None
        start = queue.next_slot if policy.rate else now
        if ready > start:
            start = ready
        if start > horizon:
            bucket.waiting = True
            heapq.heappush(queue.waiting, (start, next(self._order), bucket))
            return None
        while len(bucket):
            task = bucket.front.popleft() if bucket.front else queue.task_of(bucket.pop_id())
            if is_done(task.id):
                continue  # a stale copy, already forgotten
            self._took(queue, 1)
            if bucket.robots is not None and not bucket.robots.allowed(task.url):
                self.denied.append((task, bucket.robots))
                continue
            timed = bool(policy.rate) or start > now or delay > 0
            if policy.rate:
                # A host limit that held the start back moves the schedule on with it:
                # the rate is kept from there, not made up for in a burst.
                queue.next_slot = max(queue.next_slot, start) + 1.0 / policy.rate
            self._started(bucket, start, server_slot)
            return Pick(task, start if timed else None, bucket.key)
        return None

    def _robots_probe(self, queue: JobQueue, bucket: HostQueue, now: float) -> Pick:
        url = origin(queue.first_url(bucket)) + "/robots.txt"
        bucket.probes += 1
        probe = Task(0, queue.name, url, bucket.probes, ROBOTS_ATTEMPTS, ROBOTS_TIMEOUT, now)
        self._started(bucket, now, self._server_slot(bucket.key))
        return Pick(probe, None, bucket.key, robots=True)

    def _started(self, bucket: HostQueue, start: float, server_slot: HostSlot | None) -> None:
        bucket.in_flight += 1
        if start > bucket.last_start:
            bucket.last_start = start
        if server_slot is not None:
            server_slot.in_flight += 1
            server_slot.last_start = max(server_slot.last_start, start)

    def _server_slot(self, key: str) -> HostSlot | None:
        if not self.server_policy.limits_hosts:
            return None
        slot = self.host_slots.get(key)
        if slot is None:
            slot = self.host_slots[key] = HostSlot()
            slot.last_start = self.epoch
        return slot

    def _delay(self, queue: JobQueue, bucket: HostQueue) -> float:
        delay = queue.policy.host_delay
        robots = bucket.robots
        if robots is not None and robots.crawl_delay and robots.crawl_delay > delay:
            return robots.crawl_delay
        return delay

    def _ready_at(
        self, queue: JobQueue, bucket: HostQueue, delay: float, server_slot: HostSlot | None
    ) -> float | None:
        ready = bucket.ready_at(queue.policy.per_host, delay)
        if ready is None or server_slot is None:
            return ready
        server = self.server_policy
        server_ready = server_slot.ready_at(server.per_host, server.host_delay)
        return None if server_ready is None else max(ready, server_ready)

    def _list_host(self, queue: JobQueue, bucket: HostQueue) -> None:
        if not (bucket.listed or bucket.parked or bucket.waiting):
            bucket.listed = True
            queue.ring.append(bucket)
        self._list_job(queue)

    def _unpark(self, queue: JobQueue, bucket: HostQueue) -> None:
        if bucket.parked:
            bucket.parked = False
            if len(bucket):
                self._list_host(queue, bucket)

    def _sort_by_host(self, queue: JobQueue) -> None:
        """From now on the job's tasks wait per host (once so, a job stays so)."""
        if not queue.by_host:
            queue.by_host = True
            self._sort_fifo(queue)

    def _sort_fifo(self, queue: JobQueue) -> None:
        """Sort what waits first in, first out into the queues of its hosts."""
        fifo = queue.fifo
        while fifo:
            head = fifo.popleft()
            if isinstance(head, Span):
                if head.left < 0:
                    self._index_span(queue, head)
                first, hosts, epoch = head.first, queue.hosts, self.epoch
                for index in range(head.next, len(head.urls)):
                    key = host_key(head.urls[index])
                    bucket = hosts.get(key) or queue.host(key, epoch)
                    bucket.ids.append(first + index)
                    if not (bucket.listed or bucket.parked or bucket.waiting):
                        bucket.listed = True
                        queue.ring.append(bucket)
                head.next = len(head.urls)
                self._list_job(queue)
            else:
                bucket = queue.host(host_key(head.url), self.epoch)
                bucket.push_back(head)
                self._list_host(queue, bucket)

    def _index_span(self, queue: JobQueue, span: Span) -> None:
        """A batch whose tasks go out by host: found again by id, not by position."""
        queue.spans_first.append(span.first)
        queue.spans.append(span)
        span.left = len(span.urls) - span.next
