"""A job's waiting tasks as the scheduler keeps them: its pace, and its hosts.

Without host limits a job's tasks wait first in, first out, kept as the
batches they came in.  With them, tasks are sorted into one queue per host
as they are needed: a host's queue holds task ids in a compact array (their
URLs stay in the batches, found again by id) and, in front, tasks queued
again.
"""

from __future__ import annotations

import bisect
from array import array
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

from fetchq.server.tasks import Span, Task


@dataclass
class Policy:
    """How a job (or, for the per-host settings, the whole server) paces its requests."""

    rate: float | None = None
    """Requests per second for the whole fleet (None: as fast as workers go)."""
    per_host: int | None = None
    """Requests in flight to one host at once."""
    host_delay: float = 0.0
    """Seconds between two request starts on one host."""
    obey_robots: bool = False
    retry_after: bool = False

    @property
    def limits_hosts(self) -> bool:
        return bool(self.per_host or self.host_delay or self.obey_robots or self.retry_after)


class HostSlot:
    """How busy one host is, for one job or for the whole server: requests in flight
    (leased), when the next may start, and a hold a site asked for (Retry-After)."""

    __slots__ = ("held_until", "in_flight", "last_start")

    def __init__(self) -> None:
        self.in_flight = 0
        self.last_start = float("-inf")
        self.held_until = float("-inf")

    def ready_at(self, cap: int | None, delay: float) -> float | None:
        """When the next request may start; None while the cap is reached."""
        if cap is not None and self.in_flight >= cap:
            return None
        return max(self.last_start + delay, self.held_until)


class Pick(NamedTuple):
    """A task chosen for a worker: when it may start (None: at once) and its host (None
    when no host limit applies)."""

    task: Task
    start: float | None
    host: str | None
    robots: bool = False
    """Not a task: fetch this host's robots.txt for the job."""


class Robots:
    """What robots.txt says for one job and host (see ``fetchq.server.robots``)."""

    crawl_delay: float | None

    def allowed(self, url: str) -> bool:
        raise NotImplementedError


class HostQueue(HostSlot):
    """One job's tasks for one host, and how busy the host is for the job: ids of
    submitted tasks (in a compact array, their URLs stay in the batches they came in)
    and, in front, tasks queued again.  Kept small: a crawl may see 100,000 hosts."""

    __slots__ = (
        "front",
        "head",
        "ids",
        "key",
        "listed",
        "parked",
        "probes",
        "probing",
        "robots",
        "waiting",
    )

    def __init__(self, key: str) -> None:
        super().__init__()
        self.key = key
        self.ids = array("q")
        self.head = 0
        self.front: deque[Task] | None = None
        """Tasks queued again, in front of the others (made when first needed)."""
        self.listed = False
        self.parked = False
        self.waiting = False
        self.robots: Robots | None = None
        self.probing = False
        self.probes = 0

    def __len__(self) -> int:
        return len(self.ids) - self.head + (len(self.front) if self.front else 0)

    def push_front(self, task: Task) -> None:
        if self.front is None:
            self.front = deque()
        self.front.appendleft(task)

    def push_back(self, task: Task) -> None:
        if self.front is None:
            self.front = deque()
        self.front.append(task)

    def pop_id(self) -> int:
        task_id = self.ids[self.head]
        self.head += 1
        if self.head > 1024 and self.head * 2 > len(self.ids):
            del self.ids[: self.head]  # keep the array to what is still queued
            self.head = 0
        return task_id


class JobQueue:
    """One job's waiting tasks, its pace, and (with host limits) its hosts."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.policy = Policy()
        self.paused = False
        self.cancelled = False
        self.fifo: deque[Task | Span] = deque()
        self.count = 0
        """Tasks waiting, stale copies (finished elsewhere) not counted."""
        self.next_slot = float("-inf")
        self.fresh = True
        """Nothing leased since the job was idle: its rate starts at the next lease."""
        self.by_host = False
        self.hosts: dict[str, HostQueue] = {}
        self.ring: deque[HostQueue] = deque()
        self.waiting: list[tuple[float, int, HostQueue]] = []
        self.spans_first: list[int] = []
        self.spans: list[Span] = []
        self.in_ring = False

    @property
    def eligible(self) -> bool:
        return self.count > 0 and not self.paused and not self.cancelled

    def host(self, key: str, epoch: float = float("-inf")) -> HostQueue:
        queue = self.hosts.get(key)
        if queue is None:
            queue = self.hosts[key] = HostQueue(key)
            queue.last_start = epoch
        return queue

    def span_of(self, task_id: int) -> Span:
        return self.spans[bisect.bisect_right(self.spans_first, task_id) - 1]

    def task_of(self, task_id: int) -> Task:
        span = self.span_of(task_id)
        task = span.task(task_id - span.first)
        span.left -= 1
        if span.left == 0:
            span.urls = []  # every task of the batch is out: its URLs can go
        return task

    def first_url(self, bucket: HostQueue) -> str:
        if bucket.front:
            return bucket.front[0].url
        span = self.span_of(bucket.ids[bucket.head])
        return span.urls[bucket.ids[bucket.head] - span.first]

    def capture(self) -> Callable[[], Iterator[Task]]:
        """What waits now, for a compaction: taken cheaply under the broker's lock (the
        batches' URL lists are shared, not copied; host queues' id arrays are copied),
        and read later by the function returned, while this queue goes on changing."""
        fifo = [
            (entry, entry.urls, entry.next) if isinstance(entry, Span) else entry
            for entry in self.fifo
        ]
        hosts = [(list(h.front or ()), h.ids[h.head :]) for h in self.hosts.values()]
        starts = list(self.spans_first)
        spans = [(span, span.urls) for span in self.spans]

        def tasks() -> Iterator[Task]:
            for entry in fifo:
                if isinstance(entry, Task):
                    yield entry
                    continue
                span, urls, start = entry
                for index in range(start, len(urls)):
                    yield span.task_with(urls, index)
            for front, ids in hosts:
                yield from front
                for task_id in ids:
                    span, urls = spans[bisect.bisect_right(starts, task_id) - 1]
                    yield span.task_with(urls, task_id - span.first)

        return tasks

    def tasks(self) -> Iterator[Task]:
        """Every waiting task (stale copies included: the caller filters them)."""
        for entry in self.fifo:
            if isinstance(entry, Span):
                yield from entry.remaining()
            else:
                yield entry
        for queue in self.hosts.values():
            yield from queue.front or ()
            for task_id in queue.ids[queue.head :]:
                span = self.span_of(task_id)
                yield span.task(task_id - span.first)
