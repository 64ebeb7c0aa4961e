"""The queue state machine the server holds: jobs, leases, attempts, results.

A task is in exactly one place: queued, leased to one worker, or done.  A
lease that is not renewed in time puts its task back (or, after the last
attempt, turns it into a failed result), so a worker that vanishes loses
nothing.  Completions are deduplicated by task id: the first result that
arrives for a task is the one that counts, later ones are dropped.

Every public method takes and returns plain data (dicts, lists, str, int,
float, bool, None) and signals a bad call with ``BadRequest``, so the
transport underneath could change without changing this API.  All methods
are thread-safe: the server runs one thread per client connection.
"""

from __future__ import annotations

import bisect
import contextlib
import heapq
import os
import random
import threading
import time
import uuid
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from fetchq import __version__, defaults
from fetchq.errors import BadRequest, ConfigError, VersionMismatch
from fetchq.journal import Journal, encode_event
from fetchq.records import is_retryable, make_error, make_result, make_task

PROTOCOL = 1
"""Version of the broker API; clients and servers must agree on it."""

MAX_SUBMIT = 100_000
MAX_LEASE = 10_000
MAX_WAIT = 30.0
MAX_JOB_NAME = 200
REMEMBERED_BATCHES = 10_000
RATE_WINDOW = 10.0


class Queued(NamedTuple):
    """A task as the server keeps it: a tuple is the smallest thing that reads well."""

    id: int
    job: str
    url: str
    attempt: int
    attempts: int
    timeout: float
    submitted: float


class Span:
    """A submitted batch not yet handed out, kept as the list that came off the wire.

    Queued tasks cost their URL string and a list slot (about 90 bytes for a
    short URL) instead of a tuple and an id object each; a task becomes a
    ``Queued`` only when it is leased."""

    __slots__ = ("attempts", "first", "job", "next", "submitted", "timeout", "urls")

    def __init__(
        self, job: str, first: int, urls: list[str], attempts: int, timeout: float, at: float
    ) -> None:
        self.job = job
        self.first = first
        self.urls = urls
        self.attempts = attempts
        self.timeout = timeout
        self.submitted = at
        self.next = 0

    def take(self) -> Queued:
        index = self.next
        self.next += 1
        return Queued(
            self.first + index,
            self.job,
            self.urls[index],
            1,
            self.attempts,
            self.timeout,
            self.submitted,
        )

    def remaining(self) -> list[Queued]:
        return [
            Queued(self.first + i, self.job, url, 1, self.attempts, self.timeout, self.submitted)
            for i, url in enumerate(self.urls[self.next :], self.next)
        ]

    @property
    def exhausted(self) -> bool:
        return self.next >= len(self.urls)


class Lease(NamedTuple):
    task: Queued
    worker: str
    deadline: float


class Delivery(NamedTuple):
    """Results handed to an output, kept until it confirms it wrote them."""

    results: list[dict[str, Any]]
    deadline: float


@dataclass(eq=False)
class Job:
    name: str
    created: float
    submitted: int = 0
    queued: int = 0
    leased: int = 0
    succeeded: int = 0
    failed: int = 0
    handed_out: int = 0
    """Results handed to an output that has not confirmed them yet."""
    delivered: int = 0
    """Results an output confirmed it wrote: these are gone from the server."""
    sealed: bool = False
    results: deque[dict[str, Any]] = field(default_factory=deque)

    def counts(self) -> dict[str, Any]:
        return {
            "submitted": self.submitted,
            "queued": self.queued,
            "leased": self.leased,
            "done": self.succeeded,
            "failed": self.failed,
            "undelivered": len(self.results),
            "handed_out": self.handed_out,
            "delivered": self.delivered,
            "sealed": self.sealed,
            "complete": self.sealed and self.delivered == self.submitted,
        }


@dataclass
class WorkerSeen:
    first_seen: float
    last_seen: float
    completed: int = 0
    recent: deque[tuple[float, int]] = field(default_factory=deque)

    def record(self, now: float, count: int) -> None:
        self.completed += count
        self.recent.append((now, count))
        while self.recent and self.recent[0][0] < now - RATE_WINDOW:
            self.recent.popleft()

    def rate(self, now: float) -> float:
        span = min(RATE_WINDOW, max(now - self.first_seen, 1e-9))
        return sum(n for t, n in self.recent if t >= now - RATE_WINDOW) / span


def _process_usage() -> dict[str, int]:
    """Threads and open descriptors of the server: a leak shows here first."""
    try:
        descriptors = len(os.listdir("/proc/self/fd"))
    except OSError:
        descriptors = -1
    return {"threads": threading.active_count(), "fds": descriptors}


def _require(condition: object, message: str) -> None:
    if not condition:
        raise BadRequest(message)


def _number(value: Any, name: str, low: float, high: float) -> float:
    _require(
        isinstance(value, (int, float)) and not isinstance(value, bool),
        f"{name} must be a number",
    )
    _require(low <= value <= high, f"{name} must be between {low} and {high}")
    return float(value)


def _integer(value: Any, name: str, low: int, high: int) -> int:
    _require(isinstance(value, int) and not isinstance(value, bool), f"{name} must be an integer")
    _require(low <= value <= high, f"{name} must be between {low} and {high}")
    return int(value)


def _job_name(value: Any) -> str:
    _require(isinstance(value, str) and 0 < len(value) <= MAX_JOB_NAME, "job must be a short name")
    return str(value)


class Broker:
    def __init__(
        self,
        *,
        lease_timeout: float = defaults.LEASE_TIMEOUT,
        max_attempts: int = defaults.MAX_ATTEMPTS,
        max_pending: int = defaults.MAX_PENDING,
        max_results: int = defaults.MAX_RESULTS,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        journal: Journal | None = None,
    ) -> None:
        self.lease_timeout = lease_timeout
        self.max_attempts = max_attempts
        self.max_pending = max_pending
        self.max_results = max_results
        self._clock = clock
        self._wall = wall_clock
        self._lock = threading.Lock()
        self._tasks_ready = threading.Condition(self._lock)
        self._room = threading.Condition(self._lock)
        self._results_ready = threading.Condition(self._lock)
        # Ids start at a random base, so a result held across a server restart
        # (without a journal) can never be mistaken for a new task's.
        self._id_base = random.randrange(1, 1 << 20) << 32
        self._next_id = self._id_base + 1
        self._queue: deque[Queued | Span] = deque()
        self._queued = 0
        """Tasks waiting to be leased; the deque may also hold stale copies of done ones."""
        self._leases: dict[int, Lease] = {}
        self._expiry: list[tuple[float, int, int]] = []
        self._done = bytearray(1)
        self._batch_starts: list[int] = []
        self._batch_jobs: list[str] = []
        self._jobs: dict[str, Job] = {}
        self._workers: dict[str, WorkerSeen] = {}
        self._batches: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._undelivered = 0
        self._deliveries: dict[str, Delivery] = {}
        self._delivery_expiry: list[tuple[float, int, str]] = []
        self._deliveries_made = 0
        self._journal = journal
        if journal is not None:
            self._restore(journal)

    # -- the wire API ---------------------------------------------------

    def hello(self, client: dict[str, Any]) -> dict[str, Any]:
        """Handshake: refuse clients of another protocol, tell them our settings."""
        _require(isinstance(client, dict), "hello takes a dict")
        theirs = client.get("protocol")
        if theirs != PROTOCOL:
            raise VersionMismatch(
                f"client speaks fetchq protocol {theirs}, server speaks {PROTOCOL} "
                f"(server version {__version__}): install the same fetchq version on both"
            )
        return {
            "protocol": PROTOCOL,
            "version": __version__,
            "lease_timeout": self.lease_timeout,
            "max_attempts": self.max_attempts,
        }

    def submit(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Queue a batch of URLs for a job; wait up to ``wait`` s for room.

        Replies ``{"accepted": n, "first_id": id}`` (ids are consecutive), or
        ``{"accepted": 0, "full": True}`` when the queue stayed full.  A batch
        id seen before gets its first reply again, so a retried submit after a
        lost reply never queues the same URLs twice."""
        _require(isinstance(batch, dict), "submit takes a dict")
        job_name = _job_name(batch.get("job"))
        urls = batch.get("urls")
        if not isinstance(urls, list):
            raise BadRequest("urls must be a list")
        _require(len(urls) <= MAX_SUBMIT, f"at most {MAX_SUBMIT} urls per submit")
        _require(all(isinstance(u, str) for u in urls), "urls must be strings")
        try:
            "".join(urls).encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequest("urls must be valid Unicode text (no lone surrogates)") from None
        timeout = _number(batch.get("timeout", defaults.TASK_TIMEOUT), "timeout", 0.001, 86400)
        attempts = batch.get("attempts")
        attempts = self.max_attempts if attempts is None else _integer(attempts, "attempts", 1, 100)
        wait = _number(batch.get("wait", 0.0), "wait", 0, MAX_WAIT)
        batch_id = batch.get("batch_id")
        _require(batch_id is None or isinstance(batch_id, str), "batch_id must be a string")
        with self._locked():
            deadline = self._clock() + wait
            while True:
                # Checked again after every wait: a re-sent batch may arrive while
                # the first copy (whose reply was lost) still waits for room here.
                if batch_id is not None and batch_id in self._batches:
                    return dict(self._batches[batch_id], duplicate=True)
                if self._has_room(len(urls)):
                    break
                remaining = deadline - self._clock()
                if remaining <= 0:
                    return {"accepted": 0, "full": True, "queued": self._queued}
                self._room.wait(remaining)
            job = self._job(job_name)
            job.sealed = False
            first_id = self._next_id
            self._next_id += len(urls)
            if urls:
                self._batch_starts.append(first_id)
                self._batch_jobs.append(job.name)
            self._grow_done_bitmap()
            now = self._wall()
            if urls:
                self._queue.append(Span(job.name, first_id, urls, attempts, timeout, now))
            job.submitted += len(urls)
            job.queued += len(urls)
            self._queued += len(urls)
            reply = {"accepted": len(urls), "first_id": first_id}
            if batch_id is not None:
                self._remember_batch(batch_id, reply)
            self._log(
                "submit",
                job=job.name,
                first=first_id,
                urls=urls,
                attempts=attempts,
                timeout=timeout,
                at=now,
                batch=batch_id,
            )
            self._tasks_ready.notify_all()
        self._sync()
        return reply

    def finish(self, job_name: str) -> dict[str, Any]:
        """Mark a job's submission complete, so outputs know when it is done."""
        name = _job_name(job_name)
        with self._locked():
            job = self._job(name)
            job.sealed = True
            self._log("finish", job=name)
            self._results_ready.notify_all()
            counts = job.counts()
        self._sync()
        return counts

    def lease(self, worker: str, max_tasks: int, wait: float) -> list[dict[str, Any]]:
        """Hand up to ``max_tasks`` tasks to ``worker``, waiting up to ``wait`` s for any."""
        _require(isinstance(worker, str) and worker, "worker must be a name")
        count = _integer(max_tasks, "max_tasks", 1, MAX_LEASE)
        wait = _number(wait, "wait", 0, MAX_WAIT)
        with self._locked():
            self._seen(worker)
            deadline = self._clock() + wait
            while True:
                self._expire_locked()
                if self._queued and self._undelivered < self.max_results:
                    return self._lease_locked(worker, count)
                remaining = deadline - self._clock()
                if remaining <= 0:
                    return []
                self._tasks_ready.wait(min(remaining, self._until_next_expiry()))

    def complete(self, worker: str, results: list[dict[str, Any]]) -> dict[str, int]:
        """Record results; the first result for a task wins, repeats are dropped.

        A connection-level failure with attempts left puts the task back
        instead; one from an attempt that is no longer current is dropped."""
        _require(isinstance(worker, str) and worker, "worker must be a name")
        _require(isinstance(results, list), "results must be a list")
        _require(len(results) <= MAX_SUBMIT, f"at most {MAX_SUBMIT} results per call")
        for result in results:  # all checked before any is applied: a bad call changes nothing
            _require(isinstance(result, dict), "each result must be a dict")
            _require(type(result.get("id")) is int, "each result needs an integer id")
            _require(type(result.get("attempt", 1)) is int, "attempt must be an integer")
        lines: list[bytes | None] = [None] * len(results)
        if self._journal is not None:  # encoded up front: the journal must take every result
            try:
                lines = [encode_event({"k": "result", "r": result}) for result in results]
            except (TypeError, ValueError, UnicodeEncodeError) as exc:
                raise BadRequest(f"results must hold JSON values only: {exc}") from None
        accepted = dropped = retried = 0
        with self._locked():
            now = self._clock()
            for result, line in zip(results, lines, strict=True):
                outcome = self._complete_one(result, line)
                if outcome == "accepted":
                    accepted += 1
                elif outcome == "retried":
                    retried += 1
                else:
                    dropped += 1
            self._seen(worker, now).record(now, accepted + retried)
            if accepted:
                self._results_ready.notify_all()
            if retried:
                self._tasks_ready.notify_all()
        return {"accepted": accepted, "dropped": dropped, "retried": retried}

    def release(self, worker: str, leases: list[list[int]]) -> int:
        """Put back tasks a worker holds but will not run; their attempt is not used up."""
        pairs = self._lease_pairs(worker, leases)
        released = 0
        with self._locked():
            self._seen(worker)
            for task_id, attempt in reversed(pairs):
                lease = self._leases.get(task_id)
                if lease is None or lease.task.attempt != attempt or lease.worker != worker:
                    continue
                self._drop_lease(task_id)
                self._requeue(lease.task, lease.task.attempt)
                released += 1
            if released:
                self._tasks_ready.notify_all()
        return released

    def renew(self, worker: str, leases: list[list[int]]) -> int:
        """Extend the leases a worker still holds; returns how many were still its own."""
        pairs = self._lease_pairs(worker, leases)
        renewed = 0
        with self._locked():
            now = self._seen(worker).last_seen
            deadline = now + self.lease_timeout
            for task_id, attempt in pairs:
                lease = self._leases.get(task_id)
                if lease is None or lease.task.attempt != attempt or lease.worker != worker:
                    continue
                self._leases[task_id] = lease._replace(deadline=deadline)
                heapq.heappush(self._expiry, (deadline, task_id, attempt))
                renewed += 1
        return renewed

    def results(
        self, job_name: str | None, max_results: int, wait: float, ack: str | None = None
    ) -> dict[str, Any]:
        """Hand out up to ``max_results`` results of a job (of all jobs when None).

        The reply's ``token`` names this delivery: the output confirms it
        (``ack``, or the ``ack`` argument of its next call) once it has
        written the results.  Unconfirmed results go back to the queue after
        the lease timeout, so an output that dies loses nothing.  ``done`` is
        true once the job is sealed and every task's result is confirmed."""
        name = None if job_name is None else _job_name(job_name)
        count = _integer(max_results, "max_results", 1, MAX_SUBMIT)
        wait = _number(wait, "wait", 0, MAX_WAIT)
        _require(ack is None or isinstance(ack, str), "ack must be a delivery token")
        with self._locked():
            if ack is not None:
                self._ack_locked(ack)
            deadline = self._clock() + wait
            while True:
                self._expire_locked()
                taken = self._take_results(name, count)
                if taken:
                    self._tasks_ready.notify_all()
                    token = self._hand_out(taken)
                    return {"results": taken, "done": False, "token": token}
                if self._all_delivered(name):
                    return {"results": [], "done": True, "token": None}
                remaining = deadline - self._clock()
                if remaining <= 0:
                    return {"results": [], "done": False, "token": None}
                self._results_ready.wait(min(remaining, self._until_next_expiry()))

    def ack(self, token: str) -> int:
        """Confirm a delivery: its results are written and can be forgotten."""
        _require(isinstance(token, str), "ack takes a delivery token")
        with self._locked():
            return self._ack_locked(token)

    def status(self) -> dict[str, Any]:
        """Counts per job and the workers seen, for ``fetchq status``."""
        with self._locked():
            self._expire_locked()
            now = self._clock()
            holding = Counter(lease.worker for lease in self._leases.values())
            workers = [
                {
                    "worker": name,
                    "last_seen_ago": round(now - seen.last_seen, 3),
                    "completed": seen.completed,
                    "rate": round(seen.rate(now), 1),
                    "leased": holding[name],
                }
                for name, seen in sorted(self._workers.items())
            ]
            return {
                "version": __version__,
                "process": _process_usage(),
                "queued": self._queued,
                "leased": len(self._leases),
                "undelivered": self._undelivered,
                "jobs": {name: job.counts() for name, job in self._jobs.items()},
                "workers": workers,
            }

    def job(self, job_name: str) -> dict[str, Any]:
        """One job's counts (an unknown job reads as empty and unsealed)."""
        name = _job_name(job_name)
        with self._locked():
            self._expire_locked()
            job = self._jobs.get(name)
            return job.counts() if job else Job(name, 0.0).counts()

    # -- housekeeping the server calls -----------------------------------

    def expire_leases(self) -> int:
        """Return overdue leases to the queue (or fail them); returns how many."""
        with self._locked():
            return self._expire_locked()

    def compact(self) -> None:
        """Rewrite the journal as the live state, when it has grown large."""
        if self._journal is None:
            return
        with self._locked():
            self._journal.rewrite(self._snapshot(), self._journal_header())

    def maintain_journal(self) -> None:
        """Housekeeping: fsync what was written, compact when the log has grown."""
        if self._journal is None:
            return
        self._journal.sync()
        if self._journal.wants_compaction():
            self.compact()

    def close(self) -> None:
        if self._journal is not None:
            with self._locked():
                pass
            self._journal.close()

    # -- the journal ------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The broker lock; on the way out, events go to the OS before any reply."""
        with self._lock:
            try:
                yield
            finally:
                if self._journal is not None:
                    self._journal.flush()

    def _log(self, kind: str, **fields: Any) -> None:
        if self._journal is not None:
            self._journal.append({"k": kind, **fields})

    def _sync(self) -> None:
        """Acknowledged submissions survive a power cut: fsync before the reply."""
        if self._journal is not None:
            self._journal.sync()

    def _journal_header(self) -> dict[str, Any]:
        return {"id_base": self._id_base, "next_id": self._next_id, "written": self._wall()}

    def _snapshot(self) -> Iterator[dict[str, Any]]:
        """The live state as events: what a replay needs and nothing more."""
        for job in self._jobs.values():
            yield {
                "k": "job",
                "job": job.name,
                "created": job.created,
                "submitted": job.submitted,
                "succeeded": job.succeeded,
                "failed": job.failed,
                "delivered": job.delivered,
                "sealed": job.sealed,
            }
        for first, job_name in zip(self._batch_starts, self._batch_jobs, strict=True):
            yield {"k": "range", "first": first, "job": job_name}
        for batch_id, reply in self._batches.items():
            yield {"k": "batch", "batch": batch_id, "reply": reply}
        live = [lease.task for lease in self._leases.values()]
        live.extend(task for task in self._queued_tasks() if not self._is_done(task.id))
        for task in sorted({task.id: task for task in live}.values()):
            yield {"k": "task", **task._asdict()}
        for delivery in self._deliveries.values():
            for result in delivery.results:
                yield {"k": "unconfirmed", "r": result}
        for job in self._jobs.values():
            for result in job.results:
                yield {"k": "unconfirmed", "r": result}
        for token, delivery in self._deliveries.items():
            yield {
                "k": "hand",
                "token": token,
                "ids": [result["id"] for result in delivery.results],
            }

    def _restore(self, journal: Journal) -> None:
        """Replay the journal into this (new) broker, then compact it."""
        try:
            self._replay_all(journal)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            raise ConfigError(
                f"journal {journal.path} is damaged ({type(exc).__name__}: {exc}); "
                "move it aside to start empty"
            ) from None
        journal.rewrite(self._snapshot(), self._journal_header())

    def _replay_all(self, journal: Journal) -> None:
        events = journal.read()
        header = next(events, None)
        if header is not None:
            self._id_base = int(header["id_base"])
            self._next_id = int(header.get("next_id", self._id_base + 1))
            tasks: dict[int, Queued] = {}
            results: dict[int, dict[str, Any]] = {}
            deliveries: dict[str, list[int]] = {}
            for event in events:
                self._replay(event, tasks, results, deliveries)
            self._rebuild(tasks, results, deliveries)

    def _replay(
        self,
        event: dict[str, Any],
        tasks: dict[int, Queued],
        results: dict[int, dict[str, Any]],
        deliveries: dict[str, list[int]],
    ) -> None:
        kind = event["k"]
        if kind == "submit":
            job = self._job(event["job"])
            job.sealed = False
            first = int(event["first"])
            for offset, url in enumerate(event["urls"]):
                task_id = first + offset
                tasks[task_id] = Queued(
                    task_id, job.name, url, 1, event["attempts"], event["timeout"], event["at"]
                )
            job.submitted += len(event["urls"])
            self._next_id = max(self._next_id, first + len(event["urls"]))
            if event["urls"]:
                self._batch_starts.append(first)
                self._batch_jobs.append(job.name)
            if event.get("batch"):
                self._remember_batch(
                    event["batch"], {"accepted": len(event["urls"]), "first_id": first}
                )
        elif kind == "task":
            task = Queued(**{name: event[name] for name in Queued._fields})
            tasks[task.id] = task
        elif kind == "job":
            job = self._job(event["job"])
            job.created = event["created"]
            job.submitted = event["submitted"]
            job.succeeded = event["succeeded"]
            job.failed = event["failed"]
            job.delivered = event["delivered"]
            job.sealed = event["sealed"]
        elif kind == "range":
            self._batch_starts.append(event["first"])
            self._batch_jobs.append(event["job"])
        elif kind == "batch":
            self._remember_batch(event["batch"], event["reply"])
        elif kind == "finish":
            self._job(event["job"]).sealed = True
        elif kind == "retry":
            retried = tasks.get(event["id"])
            if retried is not None:
                tasks[retried.id] = retried._replace(attempt=event["attempt"])
        elif kind in ("result", "unconfirmed"):
            result = event["r"]
            tasks.pop(result["id"], None)
            results[result["id"]] = result
            if kind == "result":
                job = self._job(result["job"])
                if result.get("ok"):
                    job.succeeded += 1
                else:
                    job.failed += 1
        elif kind == "hand":
            deliveries[event["token"]] = event["ids"]
        elif kind == "return":
            deliveries.pop(event["token"], None)
        elif kind == "ack":
            deliveries.pop(event.get("token", ""), None)
            for task_id in event["ids"]:
                result = results.pop(task_id, None)
                if result is not None:
                    self._job(result["job"]).delivered += 1

    def _rebuild(
        self,
        tasks: dict[int, Queued],
        results: dict[int, dict[str, Any]],
        deliveries: dict[str, list[int]],
    ) -> None:
        """Queue what was not done (leases were lost with the old process) and
        count every other id as done, so late reports of them are dropped.
        Deliveries an output has not confirmed keep their tokens and get a
        fresh deadline: the output may still confirm them after the restart."""
        self._done = bytearray(b"\xff" * ((self._next_id - self._id_base) // 8 + 1))
        for offset in range(self._next_id - self._id_base, len(self._done) * 8):
            self._done[offset >> 3] &= ~(1 << (offset & 7)) & 0xFF  # ids not handed out yet
        for task_id in sorted(tasks):
            task = tasks[task_id]
            offset = task_id - self._id_base
            self._done[offset >> 3] &= ~(1 << (offset & 7)) & 0xFF
            self._queue.append(task)
            self._jobs[task.job].queued += 1
            self._queued += 1
        self._undelivered = len(results)
        for token, ids in deliveries.items():
            handed = [results.pop(task_id) for task_id in ids if task_id in results]
            if handed:
                self._track_delivery(token, handed)
                for job, count in self._count_by_job(handed).items():
                    job.handed_out += count
        for result in results.values():
            self._jobs[result["job"]].results.append(result)

    # -- internals (lock held) --------------------------------------------

    def _has_room(self, incoming: int) -> bool:
        return self._queued == 0 or self._queued + incoming <= self.max_pending

    def _job(self, name: str) -> Job:
        job = self._jobs.get(name)
        if job is None:
            job = self._jobs[name] = Job(name, self._wall())
        return job

    def _seen(self, worker: str, now: float | None = None) -> WorkerSeen:
        now = self._clock() if now is None else now
        seen = self._workers.get(worker)
        if seen is None:
            seen = self._workers[worker] = WorkerSeen(now, now)
        seen.last_seen = now
        return seen

    def _remember_batch(self, batch_id: str, reply: dict[str, Any]) -> None:
        self._batches[batch_id] = reply
        while len(self._batches) > REMEMBERED_BATCHES:
            self._batches.popitem(last=False)

    def _grow_done_bitmap(self) -> None:
        needed = (self._next_id - self._id_base) // 8 + 1
        if needed > len(self._done):
            self._done.extend(bytes(needed - len(self._done)))

    def _is_done(self, task_id: int) -> bool:
        offset = task_id - self._id_base
        return bool(self._done[offset >> 3] & (1 << (offset & 7)))

    def _mark_done(self, task_id: int) -> None:
        offset = task_id - self._id_base
        self._done[offset >> 3] |= 1 << (offset & 7)

    def _known(self, task_id: int) -> bool:
        return self._id_base < task_id < self._next_id

    def _job_of(self, task_id: int) -> str:
        """Ids are handed out in contiguous batches, so a bisect finds any task's job."""
        return self._batch_jobs[bisect.bisect_right(self._batch_starts, task_id) - 1]

    def _queued_tasks(self) -> Iterator[Queued]:
        """Every entry of the queue as a task (stale copies of done tasks included)."""
        for entry in self._queue:
            if isinstance(entry, Span):
                yield from entry.remaining()
            else:
                yield entry

    def _lease_locked(self, worker: str, count: int) -> list[dict[str, Any]]:
        deadline = self._clock() + self.lease_timeout
        leased: list[dict[str, Any]] = []
        while self._queue and len(leased) < count:
            head = self._queue[0]
            if isinstance(head, Span):
                task = head.take()
                if head.exhausted:
                    self._queue.popleft()
            else:
                task = head
                self._queue.popleft()
            if self._is_done(task.id):
                continue  # finished late by an earlier attempt: no longer counted as queued
            job = self._jobs[task.job]
            job.queued -= 1
            self._queued -= 1
            job.leased += 1
            self._leases[task.id] = Lease(task, worker, deadline)
            heapq.heappush(self._expiry, (deadline, task.id, task.attempt))
            leased.append(
                make_task(task.id, task.job, task.url, task.attempt, task.timeout, task.submitted)
            )
        if self._queued < self.max_pending:
            self._room.notify_all()
        return leased

    def _drop_lease(self, task_id: int) -> Lease | None:
        lease = self._leases.pop(task_id, None)
        if lease is not None:
            self._jobs[lease.task.job].leased -= 1
        return lease

    def _requeue(self, task: Queued, attempt: int) -> None:
        """Retries go to the front: a job's stragglers should not wait behind new jobs."""
        self._queue.appendleft(task._replace(attempt=attempt))
        self._jobs[task.job].queued += 1
        self._queued += 1
        if attempt != task.attempt:
            self._log("retry", id=task.id, attempt=attempt)

    def _complete_one(self, result: dict[str, Any], line: bytes | None) -> str:
        """``line``: the result's journal event, already encoded (None without a journal)."""
        task_id = result["id"]
        if not self._known(task_id):
            return "dropped"  # leased from an earlier server run
        attempt = result.get("attempt", 1)
        lease = self._leases.get(task_id)
        if self._is_done(task_id):
            if lease is not None and lease.task.attempt == attempt:
                self._drop_lease(task_id)
            return "dropped"
        current = lease is not None and lease.task.attempt == attempt
        if is_retryable(result):
            if lease is None or not current:
                return "dropped"  # a stale attempt failed; the task is queued or running again
            if attempt < lease.task.attempts:
                self._drop_lease(task_id)
                self._requeue(lease.task, attempt + 1)
                return "retried"
        job = self._jobs[self._job_of(task_id)]
        if result.get("job") != job.name:  # the server's record of the task is the authority
            result["job"] = job.name
            line = None
        if lease is None:  # its lease had expired: the task waits in the queue, now stale
            job.queued -= 1
            self._queued -= 1
        self._drop_lease(task_id)
        self._finish(job, task_id, result, line)
        return "accepted"

    def _finish(
        self, job: Job, task_id: int, result: dict[str, Any], line: bytes | None = None
    ) -> None:
        if line is not None and self._journal is not None:
            self._journal.append_encoded(line)
        else:
            self._log("result", r=result)
        self._mark_done(task_id)
        if result.get("ok"):
            job.succeeded += 1
        else:
            job.failed += 1
        job.results.append(result)
        self._undelivered += 1

    def _until_next_expiry(self) -> float:
        deadlines = [heap[0][0] for heap in (self._expiry, self._delivery_expiry) if heap]
        if not deadlines:
            return MAX_WAIT
        return max(0.0, min(deadlines) - self._clock()) + 0.001

    def _expire_locked(self) -> int:
        now = self._clock()
        expired = 0
        lapsed = []
        while self._delivery_expiry and self._delivery_expiry[0][0] <= now:
            _, _, token = heapq.heappop(self._delivery_expiry)
            delivery = self._deliveries.pop(token, None)
            if delivery is not None:
                self._log("return", token=token)
                lapsed.append(delivery)
        for delivery in reversed(lapsed):  # the first handed out ends up first again
            self._return_delivery(delivery)
        if lapsed:
            self._results_ready.notify_all()
        while self._expiry and self._expiry[0][0] <= now:
            deadline, task_id, attempt = heapq.heappop(self._expiry)
            lease = self._leases.get(task_id)
            if lease is None or lease.task.attempt != attempt or lease.deadline != deadline:
                continue  # completed, released or renewed since
            self._drop_lease(task_id)
            expired += 1
            task = lease.task
            if task.attempt < task.attempts:
                self._requeue(task, task.attempt + 1)
                continue
            message = (
                f"lease expired on worker {lease.worker} "
                f"(attempt {task.attempt} of {task.attempts}); giving up"
            )
            record = make_task(task.id, task.job, task.url, task.attempt, task.timeout, 0.0)
            self._finish(
                self._jobs[task.job],
                task.id,
                make_result(
                    record,
                    worker=lease.worker,
                    started=self._wall(),
                    elapsed=0.0,
                    error=make_error("lease_expired", message),
                ),
            )
        if expired:
            self._tasks_ready.notify_all()
            self._results_ready.notify_all()
        return expired

    def _take_results(self, name: str | None, count: int) -> list[dict[str, Any]]:
        jobs = [self._jobs[name]] if name in self._jobs else []
        if name is None:
            jobs = [job for job in self._jobs.values() if job.results]
        taken: list[dict[str, Any]] = []
        for job in jobs:
            before = len(taken)
            while job.results and len(taken) < count:
                taken.append(job.results.popleft())
            job.handed_out += len(taken) - before
        return taken

    def _hand_out(self, results: list[dict[str, Any]]) -> str:
        token = uuid.uuid4().hex
        self._log("hand", token=token, ids=[result["id"] for result in results])
        self._track_delivery(token, results)
        return token

    def _track_delivery(self, token: str, results: list[dict[str, Any]]) -> None:
        deadline = self._clock() + self.lease_timeout
        self._deliveries[token] = Delivery(results, deadline)
        self._deliveries_made += 1  # breaks ties in hand-out order, not token order
        heapq.heappush(self._delivery_expiry, (deadline, self._deliveries_made, token))

    def _ack_locked(self, token: str) -> int:
        delivery = self._deliveries.pop(token, None)
        if delivery is None:
            return 0  # already confirmed, or expired and queued again
        self._log("ack", token=token, ids=[result["id"] for result in delivery.results])
        for job, count in self._count_by_job(delivery.results).items():
            job.handed_out -= count
            job.delivered += count
        self._undelivered -= len(delivery.results)
        self._tasks_ready.notify_all()
        self._results_ready.notify_all()
        return len(delivery.results)

    def _return_delivery(self, delivery: Delivery) -> None:
        """An output did not confirm in time: its results go back, in order, to the front."""
        for result in reversed(delivery.results):
            self._jobs[result["job"]].results.appendleft(result)
        for job, count in self._count_by_job(delivery.results).items():
            job.handed_out -= count

    def _count_by_job(self, results: list[dict[str, Any]]) -> dict[Job, int]:
        counts: dict[Job, int] = {}
        for result in results:
            job = self._jobs[result["job"]]
            counts[job] = counts.get(job, 0) + 1
        return counts

    def _all_delivered(self, name: str | None) -> bool:
        if name is None:
            jobs = list(self._jobs.values())
            return bool(jobs) and all(job.counts()["complete"] for job in jobs)
        job = self._jobs.get(name)
        return job is not None and job.sealed and job.delivered == job.submitted

    def _lease_pairs(self, worker: Any, leases: Any) -> list[tuple[int, int]]:
        _require(isinstance(worker, str) and worker, "worker must be a name")
        _require(isinstance(leases, list), "leases must be a list of [id, attempt]")
        _require(len(leases) <= MAX_SUBMIT, f"at most {MAX_SUBMIT} leases per call")
        pairs = []
        for item in leases:
            _require(
                isinstance(item, (list, tuple))
                and len(item) == 2
                and all(isinstance(x, int) and not isinstance(x, bool) for x in item),
                "each lease must be [id, attempt]",
            )
            pairs.append((int(item[0]), int(item[1])))
        return pairs


BROKER_METHODS = (
    "hello",
    "submit",
    "finish",
    "lease",
    "complete",
    "release",
    "renew",
    "results",
    "ack",
    "status",
    "job",
)
"""What clients may call on the broker: the whole wire API."""
