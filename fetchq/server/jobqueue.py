"""One job's waiting tasks, all of them: adding, taking, draining, and its hosts.

Without host limits a job's tasks wait first in, first out, kept as the
batches they came in.  With them (a per-host cap, a host delay, robots.txt,
Retry-After holds, or the server's own per-host limits), tasks are sorted into
one queue per host as they arrive: a host's queue holds task ids in a compact
array (their URLs stay in the batches, found again by id) and, in front, tasks
queued again.  Hosts that are ready take turns, so a host with a long queue
never starves the others; a host held back by a limit is parked, and one
waiting for its delay waits in a heap by the time it may start.  A job's
robots.txt rules and holds live on its host queues.

The scheduler chooses between jobs and keeps what is not one job's: each
job's rate schedule (``Pace``) and the server-wide host slots
(``ServerHosts``), which a job's host queues consult for every start.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
from array import array
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

from fetchq.ids import IdSet
from fetchq.server.tasks import Batch, Task
from fetchq.urls import host_key, origin
from fetchq.wire.stages import Stages

LOOKAHEAD = 1.0
"""Seconds before its start a task may be handed to a worker."""

ROBOTS_TIMEOUT = 30.0
"""Seconds a worker may take to fetch a robots.txt."""

ROBOTS_ATTEMPTS = 3
"""Fetches of a robots.txt that cannot be had (5xx, no answer) before the host is given up."""


@dataclass
class Policy:
    """How a job (or, for the per-host settings, the whole server) paces its requests."""

    rate: float | None = None
    """Requests per second for the whole fleet (None: as fast as workers go); with
    ``stages``, the rate past their end."""
    stages: tuple[tuple[float, float, float], ...] | None = None
    """A staged rate: ``(seconds, start rate, end rate)`` each (``fetchq.wire.stages``)."""
    per_host: int | None = None
    """Requests in flight to one host at once."""
    host_delay: float = 0.0
    """Seconds between two request starts on one host."""
    obey_robots: bool = False
    retry_after: bool = False
    aggregate: bool = False
    """Its tasks are spans, leased only to workers that run them."""

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


_new_pick = tuple.__new__
"""``Pick`` made from a tuple in C, without the Python frame of its ``__new__``: one is
made for every task of a job with host limits."""


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
        self.take_ids(1)
        return task_id

    def take_ids(self, count: int) -> None:
        """The next ``count`` ids are taken."""
        self.head += count
        if self.head > 1024 and self.head * 2 > len(self.ids):
            del self.ids[: self.head]  # keep the array to what is still queued
            self.head = 0


class Pace:
    """A job's rate schedule: the start of its next request.  The scheduler keeps it;
    a job's host queues move it on as they start requests.

    A constant rate steps ``1 / rate`` from one start to the next.  A staged rate
    (``stages``) counts its requests from where the stages began (``anchor``): request
    ``index`` starts at ``anchor + stages.start_of(index)``.  A start held back (by a
    host's limits) moves the schedule on without a burst after it: the next request
    takes the first slot after that start."""

    __slots__ = ("anchor", "fresh", "index", "next_slot", "stages")

    def __init__(self) -> None:
        self.next_slot = float("-inf")
        self.fresh = True
        """Nothing leased since the job was idle: its rate starts at the next lease."""
        self.stages: Stages | None = None
        self.anchor: float | None = None
        """When the stages began (None: at the next lease)."""
        self.index = 0
        """The staged request whose start ``next_slot`` is."""

    def begin(self, now: float) -> None:
        if not self.fresh:
            return
        self.fresh = False
        if self.stages is None:
            self.next_slot = max(self.next_slot, now)
        elif self.anchor is None:
            self.anchor, self.index = now, 0
            self.next_slot = now + self.stages.start_of(0)
        elif now > self.next_slot:  # after a pause or an idle spell the stages go on
            self.anchor += now - self.next_slot
            self.next_slot = now

    def follow(self, stages: Stages | None) -> None:
        """A new staged rate starts at the next lease; a constant one (None) goes on from
        the next start."""
        self.stages, self.anchor = stages, None
        if stages is not None:
            self.fresh = True

    def moved_on(self, start: float, rate: float) -> None:
        """A request started at ``start``: the next start."""
        if self.stages is None:
            self.next_slot = max(self.next_slot, start) + 1.0 / rate
        else:
            self.next_slot, self.index = self._after(max(self.next_slot, start), self.index)

    def starts(self, count: int, horizon: float, at: float, *, take: bool) -> list[float]:
        """The next ``count`` staged starts up to ``horizon``, none before ``at``; with
        ``take``, the schedule moves on past them."""
        starts: list[float] = []
        slot, index = self.next_slot, self.index
        while len(starts) < count:
            start = max(slot, at)
            if start > horizon:
                break
            starts.append(start)
            slot, index = self._after(start, index)
        if take:
            self.next_slot, self.index = slot, index
        return starts

    def _after(self, start: float, index: int) -> tuple[float, int]:
        """The slot after request ``index`` started at ``start``: the first one that is
        not before ``start``."""
        assert self.stages is not None and self.anchor is not None
        since = start - self.anchor
        index = max(index + 1, math.ceil(self.stages.started_by(since) - 0.5))
        slot = self.anchor + self.stages.start_of(index)
        if slot < start:  # (rounding: a slot a hair before its start)
            index += 1
            slot = self.anchor + self.stages.start_of(index)
        return slot, index

    def rate_at(self, now: float, rate: float | None) -> float | None:
        """The rate the job asks for at ``now``."""
        if self.stages is None:
            return rate
        return self.stages.rate_at(now - (self.anchor if self.anchor is not None else now))


SPAN_SECONDS = 5.0
"""About how long a span of a paced aggregate job lasts: its job's rate is shared
between as many spans at once as make each span last this long."""


class Rounds:
    """An aggregate job's rate schedule: rounds of spans side by side.

    A worker runs a span's requests on its own, so each span carries its schedule,
    a first start and a spacing.  A round is up to ``lanes`` spans that share the
    job's rate: span ``n`` of a round of ``width`` starts ``n / rate`` after the
    round does, every ``width / rate`` seconds, so the round's starts together are
    the job's schedule, evenly spaced at its rate.  A round is as wide as the spans
    waiting allow, so the last one, narrower, still holds the rate.  The next round
    starts where the longest span of this one ends.  A fleet that leases late shows
    it as late starts, as a plain job's does; a new rate holds from the next round."""

    __slots__ = ("end", "given", "rate", "start", "width")

    def __init__(self, now: float) -> None:
        self.start = self.end = now
        self.rate = 1.0
        self.width = self.given = 0
        """Spans in the round, and those of them handed out."""

    @property
    def next_start(self) -> float:
        """When the next span handed out starts (the next round's, once this one is full)."""
        return self.start + self.given / self.rate if self.given < self.width else self.end

    def take(self, requests: int, waiting: int, rate: float) -> tuple[float, float]:
        """A span of ``requests``, with ``waiting`` more spans queued behind it: its
        first start and spacing."""
        if self.given == self.width:
            lanes = max(1, math.ceil(rate * SPAN_SECONDS / requests))
            self.start, self.rate = self.end, rate
            self.width, self.given = min(lanes, 1 + waiting), 0
        first = self.start + self.given / self.rate
        spacing = self.width / self.rate
        self.given += 1
        self.end = max(self.end, self.start + requests * spacing)
        return first, spacing

    def restart(self, now: float) -> None:
        """After a pause or a spell with nothing queued: a round half handed out is
        closed, and the next starts now, or once the spans running are over."""
        self.width = self.given
        self.end = max(self.end, now)


class ServerHosts:
    """The server's own per-host limits, across every job: one slot per host."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.slots: dict[str, HostSlot] = {}
        self.epoch = float("-inf")
        """Before this no start counts; a restart sets it to the moment it came back, as
        the old process may have started requests on any host until it died."""

    def slot(self, key: str) -> HostSlot | None:
        if not self.policy.limits_hosts:
            return None
        slot = self.slots.get(key)
        if slot is None:
            slot = self.slots[key] = HostSlot()
            slot.last_start = self.epoch
        return slot

    def ready_at(self, ready: float | None, slot: HostSlot | None) -> float | None:
        """When a host the job would start at ``ready`` may start, server limits too."""
        if ready is None or slot is None:
            return ready
        server_ready = slot.ready_at(self.policy.per_host, self.policy.host_delay)
        return None if server_ready is None else max(ready, server_ready)


_order = itertools.count()
"""Breaks ties between hosts waiting for the same start time."""


class JobQueue:
    """One job's waiting tasks and (with host limits) its hosts."""

    def __init__(self, name: str, server: ServerHosts) -> None:
        self.name = name
        self.server = server
        self.policy = Policy()
        self.paused = False
        self.cancelled = False
        self.fifo: deque[Task | Batch] = deque()
        self.count = 0
        """Tasks waiting, stale copies (finished elsewhere) not counted."""
        self.by_host = server.policy.limits_hosts
        self.hosts: dict[str, HostQueue] = {}
        self.ring: deque[HostQueue] = deque()
        """Hosts ready to start a request, taking turns."""
        self.waiting: list[tuple[float, int, HostQueue]] = []
        """Hosts waiting for a start time (a delay, a hold, the rate), soonest first."""
        self.batches_first: list[int] = []
        self.batches: list[Batch] = []
        self.in_ring = False
        """Listed by the scheduler among the jobs that take turns."""

    @property
    def eligible(self) -> bool:
        return self.count > 0 and not self.paused and not self.cancelled

    # -- adding -------------------------------------------------------------

    def add_batch(self, batch: Batch) -> None:
        self.fifo.append(batch)
        self.count += len(batch.urls)
        if self.by_host:
            self._sort_fifo()

    def add_retry(self, task: Task) -> None:
        """Back in front of the job (or of its host): a job's stragglers go first."""
        if self.by_host:
            bucket = self.host(host_key(task.url))
            bucket.push_front(task)
            self._list_host(bucket)
        else:
            self.fifo.appendleft(task)
        self.count += 1

    def queued_again(self, task_id: int) -> Task | None:
        """The task ``task_id`` if it waits at the front, queued again after its lease
        lapsed (a job without host limits keeps such tasks ahead of its batches)."""
        for waiting in self.fifo:
            if isinstance(waiting, Batch):
                return None
            if waiting.id == task_id:
                return waiting
        return None

    def add_task(self, task: Task) -> None:
        """At the back: a restart queues what was not done, in id order."""
        self.fifo.append(task)
        self.count += 1
        if self.by_host:
            self._sort_fifo()

    def set_policy(self, policy: Policy) -> None:
        self.policy = policy
        if policy.aggregate:  # set before its first span: spans wait in order, no host's
            self.by_host = False
        elif policy.limits_hosts:
            self.sort_by_host()

    def sort_by_host(self) -> None:
        """From now on the job's tasks wait per host (once so, a job stays so)."""
        if not self.by_host:
            self.by_host = True
            self._sort_fifo()

    # -- taking -------------------------------------------------------------

    def take_fifo(
        self, count: int, is_done: Callable[[int], bool], done: IdSet | None = None
    ) -> list[Task]:
        """Up to ``count`` tasks first in, first out, limits aside.  ``done``: the set
        ``is_done`` reads, when there is one, so that a run of a batch none of whose
        ids is done is taken without a look at each."""
        taken: list[Task] = []
        fifo = self.fifo
        while fifo and len(taken) < count:
            head = fifo[0]
            if isinstance(head, Batch):
                run = head.take_run(count - len(taken))
                if head.exhausted:
                    fifo.popleft()
                if run and done is not None and done.none_in(run[0].id, run[-1].id + 1):
                    taken.extend(run)
                else:
                    taken.extend([task for task in run if not is_done(task.id)])
                continue
            fifo.popleft()
            if not is_done(head.id):  # a stale copy: finished late by an earlier attempt
                taken.append(head)
        self.count -= len(taken)
        return taken

    def take_hosted(
        self,
        count: int,
        now: float,
        pace: Pace,
        is_done: Callable[[int], bool],
        denied: list[tuple[Task, Robots]],
        done: IdSet | None = None,
    ) -> list[Pick]:
        """Up to ``count`` tasks of hosts ready to start within ``LOOKAHEAD`` (robots.txt
        fetches first where rules are not known yet); tasks robots.txt forbids go to
        ``denied``.  ``done``: the set ``is_done`` reads, when there is one (a run of
        ids none of which is done is then taken without a look at each)."""
        horizon = now + LOOKAHEAD
        picks: list[Pick] = []
        while len(picks) < count:
            taken = self._take_host(now, horizon, pace, is_done, denied, count - len(picks), done)
            if not taken:
                break
            picks.extend(taken)
        return picks

    def drain(self, count: int, is_done: Callable[[int], bool]) -> list[Task]:
        """Take up to ``count`` waiting tasks, limits aside (a cancelled job's tasks end as
        results without a request)."""
        taken: list[Task] = []
        for host in list(self.hosts.values()):
            while len(host) and len(taken) < count:
                task = host.front.popleft() if host.front else self.task_of(host.pop_id())
                if not is_done(task.id):
                    taken.append(task)
        self.count -= len(taken)
        taken.extend(self.take_fifo(count - len(taken), is_done))
        return taken

    def next_start(self) -> float | None:
        """When the first host waiting for its time may start (None: none waits)."""
        return self.waiting[0][0] if self.waiting else None

    # -- hosts: limits, holds, robots.txt ------------------------------------

    def hold(self, url: str, until: float) -> None:
        """A site asked this job to wait (Retry-After): no start on the host before then."""
        self.sort_by_host()
        slot = self.host(host_key(url))
        slot.held_until = max(slot.held_until, until)

    def learn_robots(self, host: str, robots: Robots | None, now: float) -> None:
        """robots.txt is known for the host (None: ask again); its delay counts from
        ``now``, when the fetch was over."""
        bucket = self.host(host)
        bucket.probing = False
        bucket.robots = robots
        bucket.last_start = max(bucket.last_start, now)
        if len(bucket):
            self.unpark(bucket)

    def held_over(self, url: str) -> str:
        """A task of this job the old process leased runs on after a restart: it counts
        on its host until it ends.  Returns the host."""
        key = host_key(url)
        _started(self.host(key), float("-inf"), self.server.slot(key))
        return key

    def lease_ended(self, host: str, count: int = 1) -> None:
        """``count`` leased tasks of this job on ``host`` finished, went back or lapsed."""
        bucket = self.hosts.get(host)
        if bucket is not None:
            bucket.in_flight -= count
            self.unpark(bucket)

    def unpark(self, bucket: HostQueue) -> None:
        if bucket.parked:
            bucket.parked = False
            if len(bucket):
                self._list_host(bucket)

    def busiest_hosts(self, count: int) -> list[tuple[str, int, int]]:
        """The hosts with the longest queues: (host, waiting, in flight)."""
        rows = [(host.key, len(host), host.in_flight) for host in self.hosts.values()]
        rows = [row for row in rows if row[1] or row[2]]
        return sorted(rows, key=lambda row: (-row[1], row[0]))[:count]

    def host(self, key: str) -> HostQueue:
        queue = self.hosts.get(key)
        if queue is None:
            queue = self.hosts[key] = HostQueue(key)
            queue.last_start = self.server.epoch
        return queue

    # -- inside -------------------------------------------------------------

    def _take_host(
        self,
        now: float,
        horizon: float,
        pace: Pace,
        is_done: Callable[[int], bool],
        denied: list[tuple[Task, Robots]],
        want: int,
        done: IdSet | None = None,
    ) -> list[Pick]:
        """The next tasks of a host that is ready: hosts that are ready take turns, one
        task each (a host alone in its turn goes on, up to ``want``)."""
        while self.waiting and self.waiting[0][0] <= horizon:
            _, _, bucket = heapq.heappop(self.waiting)
            bucket.waiting = False
            self._list_host(bucket)
        for _ in range(len(self.ring)):
            bucket = self.ring.popleft()
            bucket.listed = False
            picks = self._try_host(bucket, now, horizon, pace, is_done, denied, want, done)
            if picks:
                if len(bucket) and not (bucket.parked or bucket.waiting):
                    self._list_host(bucket)  # to the back: hosts take turns
                return picks
        return []

    def _try_host(
        self,
        bucket: HostQueue,
        now: float,
        horizon: float,
        pace: Pace,
        is_done: Callable[[int], bool],
        denied: list[tuple[Task, Robots]],
        want: int,
        done: IdSet | None = None,
    ) -> list[Pick]:
        """Up to ``want`` tasks of ``bucket``, each as a turn of its own would take it:
        more than one only while no other host waits for a turn."""
        if not len(bucket):
            return []
        policy = self.policy
        if policy.obey_robots and bucket.robots is None:
            bucket.parked = True
            if bucket.probing:
                return []
            bucket.probing = True
            return [self._robots_probe(bucket, now)]
        delay = self._delay(bucket)
        server_slot = self.server.slot(bucket.key)
        picks: list[Pick] = []
        while True:
            ready = self.server.ready_at(bucket.ready_at(policy.per_host, delay), server_slot)
            if ready is None:
                bucket.parked = True
                return picks
            start = pace.next_slot if policy.rate else now
            if ready > start:
                start = ready
            if start > horizon:
                bucket.waiting = True
                heapq.heappush(self.waiting, (start, next(_order), bucket))
                return picks
            alone = not self.ring and not (self.waiting and self.waiting[0][0] <= horizon)
            run = (
                self._take_run(bucket, start, now, horizon, pace, is_done, done, want - len(picks))
                if alone and delay == 0 and server_slot is None
                else []
            )
            if run:
                picks.extend(run)
            else:
                pick = self._start_next(
                    bucket, start, now, delay, pace, server_slot, is_done, denied
                )
                if pick is None:
                    return picks
                picks.append(pick)
            if (
                len(picks) >= want
                or not len(bucket)
                or self.ring
                or (self.waiting and self.waiting[0][0] <= horizon)
            ):
                return picks

    def _start_next(
        self,
        bucket: HostQueue,
        start: float,
        now: float,
        delay: float,
        pace: Pace,
        server_slot: HostSlot | None,
        is_done: Callable[[int], bool],
        denied: list[tuple[Task, Robots]],
    ) -> Pick | None:
        """The host's next task, started at ``start`` (None: none is left)."""
        policy = self.policy
        while len(bucket):
            task = bucket.front.popleft() if bucket.front else self.task_of(bucket.pop_id())
            if is_done(task.id):
                continue  # a stale copy, already forgotten
            self.count -= 1
            if bucket.robots is not None and not bucket.robots.allowed(task.url):
                denied.append((task, bucket.robots))
                continue
            timed = bool(policy.rate) or start > now or delay > 0
            if policy.rate:
                # A host limit that held the start back moves the schedule on with it:
                # the rate is kept from there, not made up for in a burst.
                pace.moved_on(start, policy.rate)
            _started(bucket, start, server_slot)
            return _new_pick(Pick, (task, start if timed else None, bucket.key, False))
        return None

    def _take_run(
        self,
        bucket: HostQueue,
        start: float,
        now: float,
        horizon: float,
        pace: Pace,
        is_done: Callable[[int], bool],
        done: IdSet | None,
        want: int,
    ) -> list[Pick]:
        """What ``_start_next`` would take, one task at a time, from a host alone in its
        turn, taken as a run of tasks instead ([] when it does not apply): a load test
        of one host with a rate takes this way, task after task.

        It applies when nothing but the job's rate and the host's cap spaces the
        starts (no delay and no server-wide limit, which the caller checked; no task
        queued again in front; no robots.txt rules to check each URL against), and the
        next ids are one run of one batch, none of them done.  Without a rate every
        start is ``start``; with one, each start is the rate's next slot, as
        ``_start_next`` moves it on."""
        if bucket.front or bucket.robots is not None:
            return []
        policy = self.policy
        ids, head = bucket.ids, bucket.head
        count = min(want, len(ids) - head)
        if policy.per_host is not None:
            count = min(count, policy.per_host - bucket.in_flight)
        if count < 2:
            return []
        first, last = ids[head], ids[head + count - 1]
        if last - first != count - 1:
            return []
        if done is None:
            if any(map(is_done, range(first, last + 1))):
                return []
        elif not done.none_in(first, last + 1):
            return []
        batch = self.batch_of(first)
        if last - batch.first >= len(batch.urls):
            return []
        if policy.rate and pace.stages is not None:
            starts = pace.starts(count, horizon, start, take=True)
            count = len(starts)
            timed = True
        elif policy.rate:
            starts = []
            step, slot, at = 1.0 / policy.rate, pace.next_slot, start
            while len(starts) < count and at <= horizon:
                starts.append(at)
                slot = max(slot, at) + step
                at = slot
            pace.next_slot = slot
            count = len(starts)
            timed = True
        else:
            starts = [start] * count
            timed = start > now
        bucket.take_ids(count)
        self.count -= count
        tasks = batch.tasks(first - batch.first, first - batch.first + count)
        batch.left -= count
        if batch.left == 0:
            batch.urls = []  # every task of the batch is out: its URLs can go
        bucket.in_flight += count
        bucket.last_start = max(bucket.last_start, starts[-1])
        key = bucket.key
        if not timed:
            return [_new_pick(Pick, (task, None, key, False)) for task in tasks]
        return [
            _new_pick(Pick, (task, at, key, False)) for task, at in zip(tasks, starts, strict=True)
        ]

    def _robots_probe(self, bucket: HostQueue, now: float) -> Pick:
        url = origin(self.first_url(bucket)) + "/robots.txt"
        bucket.probes += 1
        probe = Task(0, self.name, url, bucket.probes, ROBOTS_ATTEMPTS, ROBOTS_TIMEOUT, now)
        _started(bucket, now, self.server.slot(bucket.key))
        return Pick(probe, None, bucket.key, robots=True)

    def _delay(self, bucket: HostQueue) -> float:
        delay = self.policy.host_delay
        robots = bucket.robots
        if robots is not None and robots.crawl_delay and robots.crawl_delay > delay:
            return robots.crawl_delay
        return delay

    def _list_host(self, bucket: HostQueue) -> None:
        if not (bucket.listed or bucket.parked or bucket.waiting):
            bucket.listed = True
            self.ring.append(bucket)

    def _sort_fifo(self) -> None:
        """Sort what waits first in, first out into the queues of its hosts."""
        fifo = self.fifo
        while fifo:
            head = fifo.popleft()
            if isinstance(head, Batch):
                if head.left < 0:
                    self._index_batch(head)
                first, hosts, ring = head.first, self.hosts, self.ring
                for index in range(head.next, len(head.urls)):
                    key = host_key(head.urls[index])
                    bucket = hosts.get(key) or self.host(key)
                    bucket.ids.append(first + index)
                    if not (bucket.listed or bucket.parked or bucket.waiting):
                        bucket.listed = True
                        ring.append(bucket)
                head.next = len(head.urls)
            else:
                bucket = self.host(host_key(head.url))
                bucket.push_back(head)
                self._list_host(bucket)

    def _index_batch(self, batch: Batch) -> None:
        """A batch whose tasks go out by host: found again by id, not by position."""
        self.batches_first.append(batch.first)
        self.batches.append(batch)
        batch.left = len(batch.urls) - batch.next

    # -- by id ----------------------------------------------------------------

    def batch_of(self, task_id: int) -> Batch:
        return self.batches[bisect.bisect_right(self.batches_first, task_id) - 1]

    def task_of(self, task_id: int) -> Task:
        batch = self.batch_of(task_id)
        task = batch.task(task_id - batch.first)
        batch.left -= 1
        if batch.left == 0:
            batch.urls = []  # every task of the batch is out: its URLs can go
        return task

    def first_url(self, bucket: HostQueue) -> str:
        if bucket.front:
            return bucket.front[0].url
        batch = self.batch_of(bucket.ids[bucket.head])
        return batch.urls[bucket.ids[bucket.head] - batch.first]

    def capture(self) -> Callable[[], Iterator[Task]]:
        """What waits now, for a compaction: taken cheaply under the broker's lock (the
        batches' URL lists are shared, not copied; host queues' id arrays are copied),
        and read later by the function returned, while this queue goes on changing."""
        fifo = [
            (entry, entry.urls, entry.next) if isinstance(entry, Batch) else entry
            for entry in self.fifo
        ]
        hosts = [(list(h.front or ()), h.ids[h.head :]) for h in self.hosts.values()]
        starts = list(self.batches_first)
        batches = [(batch, batch.urls) for batch in self.batches]

        def tasks() -> Iterator[Task]:
            for entry in fifo:
                if isinstance(entry, Task):
                    yield entry
                    continue
                batch, urls, start = entry
                for index in range(start, len(urls)):
                    yield batch.task_with(urls, index)
            for front, ids in hosts:
                yield from front
                for task_id in ids:
                    batch, urls = batches[bisect.bisect_right(starts, task_id) - 1]
                    yield batch.task_with(urls, task_id - batch.first)

        return tasks

    def tasks(self) -> Iterator[Task]:
        """Every waiting task (stale copies included: the caller filters them)."""
        for entry in self.fifo:
            if isinstance(entry, Batch):
                yield from entry.remaining()
            else:
                yield entry
        for queue in self.hosts.values():
            yield from queue.front or ()
            for task_id in queue.ids[queue.head :]:
                batch = self.batch_of(task_id)
                yield batch.task(task_id - batch.first)


def _started(bucket: HostQueue, start: float, server_slot: HostSlot | None) -> None:
    bucket.in_flight += 1
    if start > bucket.last_start:
        bucket.last_start = start
    if server_slot is not None:
        server_slot.in_flight += 1
        server_slot.last_start = max(server_slot.last_start, start)
