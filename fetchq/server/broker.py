"""The broker: the server's one lock over its parts, and the API clients call.

A task is in exactly one place: queued, leased to one worker, or done.  A
lease that is not renewed in time puts its task back (or, after the last
attempt, turns it into a failed result), so a worker that vanishes loses
nothing.  Completions are deduplicated by task id: the first result that
arrives for a task is the one that counts, later ones are dropped.

Each part (ledger, queue, leases, outbox, jobs, workers) keeps its own state
and is tested alone; this class checks the arguments, takes the lock, writes
the journal and then tells the parts what changed.  Writing first means a
call the journal cannot record changes nothing.  Every method takes and
returns plain data and signals a bad call with ``BadRequest``.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from fetchq import __version__, defaults
from fetchq.api import MAX_LEASE, MAX_SUBMIT, MAX_WAIT, PROTOCOL, JobCounts, Outcome
from fetchq.errors import BadRequest, StorageFailed, VersionMismatch
from fetchq.server import completion, recovery, validate
from fetchq.server.expiry import Expiry
from fetchq.server.jobs import Job
from fetchq.server.journal import Journal, encode_event
from fetchq.server.ledger import Ledger, random_id_base
from fetchq.server.outbox import count_by_job
from fetchq.server.state import BrokerState
from fetchq.server.taskqueue import Span

Result = dict[str, Any]


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
        self._results_ready: dict[str | None, threading.Condition] = {}
        """Outputs waiting, by the job they read (None: every job)."""
        self._state = BrokerState(Ledger(random_id_base()))
        self._journal = journal
        if journal is not None:
            recovery.replay(
                journal,
                self._state,
                now=clock(),
                wall=wall_clock(),
                lease_timeout=lease_timeout,
            )
            self._compact()

    # -- the wire API ---------------------------------------------------

    def hello(self, client: dict[str, Any]) -> dict[str, Any]:
        """Handshake: refuse clients of another protocol, tell them our settings."""
        validate.require(isinstance(client, dict), "hello takes a dict")
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
            "time": self._wall(),
        }

    def submit(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Queue a batch of URLs for a job; wait up to ``wait`` s for room.

        Replies ``{"accepted": n, "first_id": id}`` (ids are consecutive), or
        ``{"accepted": 0, "full": True}`` when the queue stayed full.  A batch
        id seen before gets its first reply again, so a retried submit after a
        lost reply never queues the same URLs twice."""
        request = validate.submit_request(batch)
        attempts = request.attempts or self.max_attempts
        count = len(request.urls)
        state = self._state
        with self._lock:
            deadline = self._clock() + request.wait
            while True:
                # Checked again after every wait: a re-sent batch may arrive while
                # the first copy (whose reply was lost) still waits for room here.
                seen = state.ledger.batch_reply(request.batch_id)
                if seen is not None:
                    return dict(seen, duplicate=True)
                if len(state.queue) == 0 or len(state.queue) + count <= self.max_pending:
                    break
                remaining = deadline - self._clock()
                if remaining <= 0:
                    return {"accepted": 0, "full": True, "queued": len(state.queue)}
                self._room.wait(remaining)
            first_id = state.ledger.next_id
            now = self._wall()
            self._write(
                {
                    "k": "submit",
                    "job": request.job,
                    "first": first_id,
                    "urls": request.urls,
                    "attempts": attempts,
                    "timeout": request.timeout,
                    "at": now,
                    "batch": request.batch_id,
                }
            )
            job = state.jobs.get(request.job, now)
            job.sealed = False
            job.submitted += count
            state.ledger.allocate(job.name, count)
            state.queue.add_batch(
                Span(job.name, first_id, request.urls, attempts, request.timeout, now)
            )
            reply = {"accepted": count, "first_id": first_id}
            if request.batch_id is not None:
                state.ledger.remember_batch(request.batch_id, reply)
            self._tasks_ready.notify(count)
        self._sync()
        return reply

    def finish(self, job_name: str) -> JobCounts:
        """Mark a job's submission complete, so outputs know when it is done."""
        name = validate.job_name(job_name)
        with self._lock:
            self._write({"k": "finish", "job": name})
            job = self._state.jobs.get(name, self._wall())
            job.sealed = True
            self._wake_outputs([name])
            counts = self._state.counts(job)
        self._sync()
        return counts

    def lease(self, worker: str, max_tasks: int, wait: float) -> list[dict[str, Any]]:
        """Hand up to ``max_tasks`` tasks to ``worker``, waiting up to ``wait`` s for any."""
        worker = validate.worker_name(worker)
        count = validate.integer(max_tasks, "max_tasks", 1, MAX_LEASE)
        wait = validate.wait(wait)
        state = self._state
        with self._lock:
            state.workers.seen(worker, self._clock())
            deadline = self._clock() + wait
            while True:
                self._expire_locked()
                if len(state.queue) and state.outbox.unconfirmed < self.max_results:
                    return self._lease_locked(worker, count)
                remaining = deadline - self._clock()
                if remaining <= 0:
                    return []
                self._tasks_ready.wait(min(remaining, self._until_next_expiry()))

    def complete(
        self, worker: str, results: list[Result], renew: list[list[int]] | None = None
    ) -> dict[str, int]:
        """Record results, and renew the leases ``worker`` still holds (``[id, attempt]``).

        The first result for a task wins, repeats are dropped.  A
        connection-level failure with attempts left puts the task back
        instead; one from an attempt that is no longer current is dropped."""
        worker = validate.worker_name(worker)
        results = validate.results_list(results)
        held = validate.lease_pairs(renew or [])
        lines: list[bytes | None] = [None] * len(results)
        if self._journal is not None:  # encoded outside the lock: the journal must take each
            try:
                lines = [encode_event({"k": "result", "r": result}) for result in results]
            except (TypeError, ValueError, UnicodeEncodeError) as exc:
                raise BadRequest(f"results must hold JSON values only: {exc}") from None
        with self._lock:
            now = self._clock()
            verdicts = completion.judge(self._state, results, lines, self._encode)
            self._write_lines([v.event for v in verdicts if v.event is not None])
            tally = dict.fromkeys(Outcome, 0)
            for verdict in verdicts:
                completion.apply(self._state, verdict)
                tally[verdict.outcome] += 1
            renewed = sum(
                self._state.leases.renew(task_id, attempt, worker, now + self.lease_timeout)
                for task_id, attempt in held
            )
            seen = self._state.workers.seen(worker, now)
            seen.record(now, tally[Outcome.ACCEPTED] + tally[Outcome.RETRIED])
            if tally[Outcome.ACCEPTED]:
                self._wake_outputs(
                    {v.result["job"] for v in verdicts if v.outcome is Outcome.ACCEPTED}
                )
            if tally[Outcome.RETRIED]:
                self._tasks_ready.notify(tally[Outcome.RETRIED])
        return {**{str(o): n for o, n in tally.items()}, "renewed": renewed}

    def release(self, worker: str, leases: list[list[int]]) -> int:
        """Put back tasks a worker holds but will not run; their attempt is not used up."""
        worker = validate.worker_name(worker)
        pairs = validate.lease_pairs(leases)
        released = 0
        state = self._state
        with self._lock:
            state.workers.seen(worker, self._clock())
            for task_id, attempt in reversed(pairs):
                lease = state.leases.get(task_id)
                if lease is None or not lease.held_as(attempt, worker):
                    continue
                state.leases.drop(task_id)
                state.queue.add_retry(lease.task)
                released += 1
            self._tasks_ready.notify(released)
        return released

    def results(
        self, job_name: str | None, max_results: int, wait: float, ack: str | None = None
    ) -> dict[str, Any]:
        """Hand out up to ``max_results`` results of a job (of all jobs when None).

        The reply's ``token`` names this delivery: the output confirms it
        (``ack``, or the ``ack`` argument of its next call) once it has
        written the results.  Unconfirmed results go back to the queue after
        the lease timeout, so an output that dies loses nothing.
        ``complete`` is true once the job is sealed and every task's result
        is confirmed."""
        name = None if job_name is None else validate.job_name(job_name)
        count = validate.integer(max_results, "max_results", 1, MAX_SUBMIT)
        wait = validate.wait(wait)
        token = None if ack is None else validate.token(ack)
        outbox = self._state.outbox
        with self._lock:
            if token is not None:
                self._ack_locked(token)
            deadline = self._clock() + wait
            while True:
                self._expire_locked()
                selected = outbox.select(name, count)
                if selected:
                    token = uuid.uuid4().hex
                    self._write({"k": "hand", "token": token, "ids": [r["id"] for r in selected]})
                    outbox.hand_out(token, selected, self._clock() + self.lease_timeout)
                    return {"results": selected, "complete": False, "token": token}
                if self._state.all_confirmed(name):
                    return {"results": [], "complete": True, "token": None}
                remaining = deadline - self._clock()
                if remaining <= 0:
                    return {"results": [], "complete": False, "token": None}
                self._output_waiters(name).wait(min(remaining, self._until_next_expiry()))

    def ack(self, token: str) -> int:
        """Confirm a delivery: its results are written and can be forgotten."""
        token = validate.token(token)
        with self._lock:
            return self._ack_locked(token)

    def queued(self) -> int:
        """Tasks waiting for a worker: the cheap question a ``--burst`` worker asks."""
        with self._lock:
            return len(self._state.queue)

    def status(self) -> dict[str, Any]:
        """Counts per job and the workers seen, for ``fetchq status``."""
        state = self._state
        with self._lock:
            self._expire_locked()
            now = self._clock()
            reply = {
                "version": __version__,
                "queued": len(state.queue),
                "leased": len(state.leases),
                "unconfirmed": state.outbox.unconfirmed,
                "jobs": {job.name: self._state.counts(job) for job in state.jobs},
                "workers": state.workers.rows(now, state.leases.held_by()),
            }
        reply["process"] = _process_usage()  # a directory listing: not under the lock
        return reply

    def job(self, job_name: str) -> JobCounts:
        """One job's counts (an unknown job reads as empty and unsealed)."""
        name = validate.job_name(job_name)
        with self._lock:
            self._expire_locked()
            return self._state.counts(self._state.jobs.find(name) or Job(name, 0.0))

    # -- housekeeping the server program runs ----------------------------

    def housekeeping(self) -> None:
        """Expire overdue leases and deliveries, fsync the journal, compact it if grown."""
        with self._lock:
            self._expire_locked()
        if self._journal is None:
            return
        try:
            self._journal.sync()
            if self._journal.wants_compaction():
                with self._lock:
                    self._compact()
        except StorageFailed:
            pass  # the journal said what is wrong; the next round tries again

    def expire_leases(self) -> int:
        """Return overdue leases to the queue (or fail them); returns how many."""
        with self._lock:
            return self._expire_locked()

    def compact(self) -> None:
        """Rewrite the journal as the live state."""
        with self._lock:
            self._compact()

    def close(self) -> None:
        if self._journal is not None:
            with self._lock:
                self._journal.close()

    # -- the journal (lock held) ------------------------------------------

    def _write(self, *events: dict[str, Any]) -> None:
        """Journal events before the change they describe; raises StorageFailed."""
        if self._journal is not None:
            self._journal.write([encode_event(event) for event in events])

    def _write_lines(self, lines: list[bytes]) -> None:
        if self._journal is not None:
            self._journal.write(lines)

    def _sync(self) -> None:
        """Acknowledged submissions survive a power cut: fsync before the reply (outside
        the lock, so other calls go on meanwhile)."""
        if self._journal is not None:
            self._journal.sync()

    def _compact(self) -> None:
        if self._journal is not None:
            ledger = self._state.ledger
            self._journal.rewrite(
                recovery.snapshot(self._state), recovery.header(ledger, self._wall())
            )

    # -- internals (lock held) --------------------------------------------

    def _output_waiters(self, name: str | None) -> threading.Condition:
        waiters = self._results_ready.get(name)
        if waiters is None:
            waiters = self._results_ready[name] = threading.Condition(self._lock)
        return waiters

    def _wake_outputs(self, jobs: Iterable[str]) -> None:
        """Wake the outputs that read these jobs, and those that read every job."""
        for name in (*jobs, None):
            waiters = self._results_ready.get(name)
            if waiters is not None:
                waiters.notify_all()

    def _lease_locked(self, worker: str, count: int) -> list[dict[str, Any]]:
        state = self._state
        deadline = self._clock() + self.lease_timeout
        tasks = state.queue.take(count, state.ledger.done.__contains__)
        leased = [state.leases.grant(task, worker, deadline).record() for task in tasks]
        if len(state.queue) < self.max_pending:
            self._room.notify_all()
        return leased

    def _encode(self, event: dict[str, Any]) -> bytes | None:
        return encode_event(event) if self._journal is not None else None

    def _ack_locked(self, token: str) -> int:
        outbox = self._state.outbox
        delivery = outbox.delivery(token)
        if delivery is None:
            return 0  # already confirmed, or lapsed and handed out again
        self._write({"k": "ack", "token": token, "ids": delivery.ids()})
        was_full = outbox.unconfirmed >= self.max_results
        outbox.confirm(token)
        self._wake_outputs(count_by_job(delivery.results))
        if was_full and outbox.unconfirmed < self.max_results:
            self._tasks_ready.notify_all()  # leasing was paused for room: it may resume
        return len(delivery.results)

    def _until_next_expiry(self) -> float:
        deadlines = [
            d
            for d in (self._state.leases.next_deadline(), self._state.outbox.next_deadline())
            if d is not None
        ]
        if not deadlines:
            return MAX_WAIT
        return max(0.0, min(deadlines) - self._clock()) + 0.001

    def _expire_locked(self) -> int:
        """Lapsed leases and deliveries (see ``expiry``); returns how many leases lapsed."""
        expiry = Expiry(self._state, self._clock(), self._wall())
        if not expiry:
            return 0
        try:
            self._write(*expiry.events())
        except StorageFailed:
            expiry.refile(self._state)  # nothing changed; the next call tries again
            return 0
        self._wake_outputs(expiry.apply(self._state))
        self._tasks_ready.notify(len(expiry.overdue))
        return len(expiry.overdue)


def _process_usage() -> dict[str, int]:
    """Threads and open descriptors of the server: a leak shows here first."""
    try:
        descriptors = len(os.listdir("/proc/self/fd"))
    except OSError:
        descriptors = -1
    return {"threads": threading.active_count(), "fds": descriptors}
