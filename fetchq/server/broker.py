"""The broker: the server's one lock over its parts, and the API clients call.

A task is in exactly one place: queued, leased to one worker, or done.  A
lease that is not renewed in time puts its task back (or, after the last
attempt, turns it into a failed result), so a worker that vanishes loses
nothing.  Completions are deduplicated by task id: the first result that
arrives for a task is the one that counts, later ones are dropped.

Each part (ledger, scheduler, leases, outbox, jobs, workers) keeps its own state
and is tested alone; this class checks the arguments, takes the lock, writes
the journal and then tells the parts what changed.  Writing first means a
call the journal cannot record changes nothing.  Every method takes and
returns plain data and signals a bad call with ``BadRequest``.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from fetchq import __version__, defaults
from fetchq.errors import BadRequest, StorageFailed, VersionMismatch
from fetchq.server import completion, events, leasing, recovery, steering, validate, views
from fetchq.server.expiry import Expiry
from fetchq.server.jobqueue import Policy
from fetchq.server.jobs import Job
from fetchq.server.journal import Journal
from fetchq.server.leases import Lease
from fetchq.server.ledger import Ledger, id_clock
from fetchq.server.recorder import Recorder
from fetchq.server.scheduler import Scheduler
from fetchq.server.service import BrokerService
from fetchq.server.state import BrokerState
from fetchq.server.tasks import Batch, Task
from fetchq.wire.aggregates import SPAN, StoredAggregate
from fetchq.wire.api import (
    MAX_LEASE,
    MAX_SUBMIT,
    MAX_WAIT,
    PROTOCOL,
    CompleteTally,
    HelloReply,
    JobCounts,
    JobView,
    Outcome,
    Record,
    ResultsDelivery,
    RobotsReply,
    StatusReply,
    SubmitReply,
)
from fetchq.wire.records import StoredResult
from fetchq.wire.specs import MAX_BODY, MAX_JOB_SPECS, Spec, spec_record

CANCEL_ROUNDS = 10
"""Rounds of ``leasing.CANCEL_BATCH`` cancelled tasks one housekeeping ends at most."""

CLOCK_STEP = 0.1
"""Seconds the wall clock must move against the monotonic one to count as set (NTP
steps at 0.128 s); below that, scheduled starts keep one offset to Unix time."""


class Waiters:
    """Who waits inside the broker, and waking only those a change can help.

    Workers wait for tasks, dispatchers for room in the queue, outputs for the
    results of the job they read; all on the broker's one lock."""

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock
        self.tasks = threading.Condition(lock)
        """Workers waiting for a task."""
        self.room = threading.Condition(lock)
        """Dispatchers waiting for room in a full queue."""
        self._outputs: dict[str | None, threading.Condition] = {}
        """Outputs waiting, by the job they read (None: every job)."""

    def outputs(self, job: str | None) -> threading.Condition:
        waiting = self._outputs.get(job)
        if waiting is None:
            waiting = self._outputs[job] = threading.Condition(self._lock)
        return waiting

    def wake_outputs(self, jobs: Iterable[str]) -> None:
        """Wake the outputs that read these jobs, and those that read every job."""
        for name in (*jobs, None):
            waiting = self._outputs.get(name)
            if waiting is not None:
                waiting.notify_all()


class Broker:
    """The embedded broker: a ``BrokerService`` whose state is in this process, made
    durable (when asked) by a journal file."""

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
        per_host: int | None = None,
        host_delay: float = 0.0,
    ) -> None:
        """``per_host`` and ``host_delay`` limit every host across all jobs together."""
        self.lease_timeout = lease_timeout
        self.max_attempts = max_attempts
        self.max_pending = max_pending
        self.max_results = max_results
        self._clock = clock
        self._wall = wall_clock
        self._wall_offset = wall_clock() - clock()
        self._lock = threading.Lock()
        self._compacting = threading.Lock()
        self._compaction: threading.Thread | None = None
        """Housekeeping's compaction, running beside it: writing 2,000,000 queued tasks
        takes seconds, and leases must go on expiring and the journal being fsynced."""
        self._waiters = Waiters(self._lock)
        server_policy = Policy(per_host=per_host, host_delay=host_delay)
        self._state = BrokerState(Ledger(id_clock()), scheduler=Scheduler(server_policy))
        self._recorder = Recorder(journal)
        if journal is not None:
            recovery.replay(
                journal,
                self._state,
                now=clock(),
                wall=wall_clock(),
                lease_timeout=lease_timeout,
            )
            self._recorder.compact(self._state, self._wall(), self._clock())
            self._end_cancelled()  # what a cancelled job's dead leases left queued

    # -- the wire API ---------------------------------------------------

    def hello(self, client: dict[str, Any]) -> HelloReply:
        """Handshake: refuse clients of another protocol, tell them our settings."""
        validate.require(isinstance(client, dict), "hello takes a dict")
        theirs = client.get("protocol")
        worker, threads = client.get("worker"), client.get("threads")
        if theirs != PROTOCOL:
            raise VersionMismatch(
                f"client speaks fetchq protocol {theirs}, server speaks {PROTOCOL} "
                f"(server version {__version__}): install the same fetchq version on both"
            )
        if worker is not None:  # a worker says how many fetch threads it runs, and what
            threads = validate.integer(threads, "threads", 0, 100_000)
            runs = validate.capabilities(client.get("runs", []))
            with self._lock:
                seen = self._state.workers.seen(validate.worker_name(worker), self._clock())
                seen.threads, seen.runs = threads, runs
        return {
            "protocol": PROTOCOL,
            "version": __version__,
            "lease_timeout": self.lease_timeout,
            "max_attempts": self.max_attempts,
            "max_body": MAX_BODY,
            "time": self._wall(),
        }

    def submit(self, batch: dict[str, Any]) -> SubmitReply:
        """Queue a batch of URLs for a job; wait up to ``wait`` s for room.

        Replies ``{"accepted": n, "first_id": id}`` (ids are consecutive; with
        ``"reopened": True`` when the job was done and this batch reopened it),
        or ``{"accepted": 0, "full": True}`` when the queue stayed full.  A batch
        id seen before gets its first reply again, so a retried submit after a
        lost reply never queues the same URLs twice.  A new job takes the
        batch's pace and politeness; an existing one keeps its own, and a batch
        asking for others is refused (see ``steering.submit_policy_event``).  Ids
        never run ahead of the clock: a submit that would waits for it (see
        ``Ledger``)."""
        request = validate.submit_request(batch)
        attempts = request.attempts or self.max_attempts
        count = len(request.urls)
        state = self._state
        with self._lock:
            if state.scheduler.is_cancelled(request.job):
                raise BadRequest(f"job {request.job} was cancelled: use another job name")
            self._refuse_mixed(request)
            deadline = self._clock() + request.wait
            while True:
                # Checked again after every wait: a re-sent batch may arrive while
                # the first copy (whose reply was lost) still waits for room here.
                seen = state.ledger.batch_reply(request.batch_id)
                if seen is not None:
                    return {**seen, "duplicate": True}
                queued = len(state.scheduler)
                if queued == 0 or queued + count <= self.max_pending:
                    ahead = state.ledger.ahead(count, id_clock())
                    if not ahead:
                        break
                    self._waiters.room.wait(ahead)  # ids stay below the clock (see Ledger)
                    continue
                remaining = deadline - self._clock()
                if remaining <= 0:
                    return {"accepted": 0, "full": True, "queued": queued}
                self._waiters.room.wait(remaining)
            first_id = state.ledger.next_id
            now = self._wall()
            policy = steering.submit_policy_event(state, request.job, request.policy)
            known = state.jobs.find(request.job)
            new_specs = self._new_specs(request, known)
            reopened = known is not None and known.sealed and state.counts(known)["done"]
            self._recorder.write(
                *([policy] if policy else []),
                *(events.spec(request.job, spec_record(spec)) for spec in new_specs.values()),
                events.submit(
                    request.job,
                    first_id,
                    request.urls,
                    attempts,
                    request.timeout,
                    now,
                    request.batch_id,
                    reopened=reopened,
                    spec=request.spec,
                ),
            )
            if policy:
                steering.apply(state, policy, now=self._clock(), wall=now)
            job = state.jobs.get_or_create(request.job, now)
            job.sealed = False
            job.submitted += count
            job.specs.update(new_specs)
            if request.spans:
                state.jobs.requests_of(job).submitted += request.requests
            state.ledger.allocate(job.name, count, request.spec)
            state.scheduler.add_batch(
                Batch(job.name, first_id, request.urls, attempts, request.timeout, now),
                self._clock(),
            )
            reply: SubmitReply = {"accepted": count, "first_id": first_id}
            if reopened:
                reply["reopened"] = True
            if request.batch_id is not None:
                state.ledger.remember_batch(request.batch_id, reply)
            self._waiters.tasks.notify(count)
        self._recorder.sync()
        return reply

    def _new_specs(self, request: validate.SubmitRequest, job: Job | None) -> dict[str, Spec]:
        """The specs ``request`` brings that its job lacks; refused when its tasks name
        a spec neither has, or the job would hold too many."""
        known = job.specs if job is not None else {}
        new = {key: spec for key, spec in request.specs.items() if key not in known}
        if request.spec is not None and request.spec not in known and request.spec not in new:
            raise BadRequest(
                f"job {request.job} has no spec {request.spec}: send it with the batch"
            )
        if len(known) + len(new) > MAX_JOB_SPECS:
            raise BadRequest(
                f"job {request.job} would send more than {MAX_JOB_SPECS} distinct "
                "method, header and body combinations"
            )
        return new

    def _refuse_mixed(self, request: validate.SubmitRequest) -> None:
        """Spans go to an aggregate job and URLs to any other, never the other way."""
        job = self._state.jobs.find(request.job)
        if job is None:
            aggregate = bool(request.policy.get("aggregate"))
        else:
            queue = self._state.scheduler.find(request.job)
            aggregate = queue is not None and queue.policy.aggregate
        if request.spans != aggregate:
            raise steering.not_its_kind(request.job, aggregate)

    def seal(self, job_name: str) -> JobCounts:
        """Mark a job's submission finished, so outputs know when it is done."""
        name = validate.job_name(job_name)
        with self._lock:
            self._recorder.write(events.seal(name))
            job = self._state.jobs.get_or_create(name, self._wall())
            job.sealed = True
            self._waiters.wake_outputs([name])
            counts = self._state.counts(job)
        self._recorder.sync()
        return counts

    def lease(self, worker: str, max_tasks: int, wait: float) -> list[dict[str, Any]]:
        """Hand up to ``max_tasks`` tasks to ``worker``, waiting up to ``wait`` s for any."""
        worker = validate.worker_name(worker)
        count = validate.integer(max_tasks, "max_tasks", 1, MAX_LEASE)
        wait = validate.wait(wait)
        state = self._state
        with self._lock:
            spans = SPAN in state.workers.seen(worker, self._clock()).runs
            deadline = self._clock() + wait
            while True:
                self._expire_locked()
                if len(state.scheduler) and state.outbox.unconfirmed < self.max_results:
                    leased = self._lease_locked(worker, count, spans)
                    if leased:
                        return leased
                remaining = deadline - self._clock()
                if remaining <= 0:
                    return []
                self._waiters.tasks.wait(min(remaining, self._until_next_change()))

    def complete(
        self, worker: str, results: list[Record], renew: list[list[int]] | None = None
    ) -> CompleteTally:
        """Record results, and renew the leases ``worker`` still holds (``[id, attempt]``).

        The first result for a task wins, repeats are dropped.  A
        connection-level failure with attempts left puts the task back
        instead; one from an attempt that is no longer current is dropped."""
        worker = validate.worker_name(worker)
        stored = validate.results_list(results)
        held = validate.lease_pairs(renew or [])
        lines = self._recorder.result_lines(stored)
        with self._lock:
            now = self._clock()
            kinds = set(map(type, stored))  # in C: no aggregate, as a rule
            current = None  # a call mixing results and aggregates is judged one by one
            if kinds <= {StoredResult}:
                current = completion.all_current(self._state, stored, spans=False)
            else:
                completion.check_spans(self._state, stored)
                if kinds == {StoredAggregate}:
                    current = completion.all_current(self._state, stored, spans=True)
            if current is not None:
                self._recorder.write_lines(
                    completion.accepted_events(stored, lines, self._recorder.encoder())
                )
                jobs = completion.accept_all(self._state, stored, current, now)
                tally = Counter({Outcome.ACCEPTED: len(stored)})
            else:
                verdicts = completion.judge(
                    self._state, stored, lines, self._recorder.encoder(), self._wall()
                )
                self._recorder.write_lines([line for v in verdicts for line in v.events])
                tally, jobs = completion.apply_all(self._state, verdicts, now)
            renewed = [
                pair
                for pair in held
                if self._state.leases.renew(*pair, worker, now + self.lease_timeout)
            ]
            self._journal_renewals(worker, renewed)
            seen = self._state.workers.seen(worker, now)
            seen.record(now, tally[Outcome.ACCEPTED] + tally[Outcome.REQUEUED])
            if jobs:
                self._waiters.wake_outputs(jobs)
            self._waiters.tasks.notify(tally[Outcome.REQUEUED] + self._freed())
        return {
            "accepted": tally[Outcome.ACCEPTED],
            "requeued": tally[Outcome.REQUEUED],
            "dropped": tally[Outcome.DROPPED],
            "renewed": len(renewed),
        }

    def robots(self, worker: str, report: dict[str, Any]) -> RobotsReply:
        """A worker's fetch of a host's robots.txt for a job (a task of kind ``robots``)."""
        worker = validate.worker_name(worker)
        report = validate.robots_report(report)
        state = self._state
        with self._lock:
            state.workers.seen(worker, self._clock())
            accepted = steering.robots_fetched(
                state, report, self._recorder.write, now=self._clock(), wall=self._wall()
            )
            self._waiters.tasks.notify_all()
        return {"accepted": accepted}

    def steer(self, job_name: str, change: dict[str, Any]) -> JobView:
        """Steer a job while it runs: pause, resume, cancel, or set its pace and limits."""
        name = validate.job_name(job_name)
        action, policy = validate.steering(change)
        state = self._state
        with self._lock:
            job = state.jobs.existing(name)
            if action == "set":
                event: events.SteeringEvent | None = steering.policy_event(state, name, policy)
            elif state.counts(job)["done"]:
                event = None  # nothing runs to pause, resume or cancel: a later dispatch
                # that reopens the job must find it as it was, not paused
            else:
                event = events.switch(action, name)
            if event is not None:
                self._recorder.write(event)
                steering.apply(state, event, now=self._clock(), wall=self._wall())
            if action == "cancel":
                self._end_cancelled()  # as many as there is room for; housekeeping the rest
            self._waiters.tasks.notify_all()
            self._waiters.wake_outputs([name])
            view = views.job_view(state, job, self._clock())
        self._recorder.sync()
        return view

    def release(self, worker: str, leases: list[list[int]]) -> int:
        """Put back tasks a worker holds but will not run; their attempt is not used up."""
        worker = validate.worker_name(worker)
        pairs = validate.lease_pairs(leases)
        released = 0
        cancelled = False
        state = self._state
        with self._lock:
            state.workers.seen(worker, self._clock())
            returned: dict[int, Lease] = {}  # a pair named twice is handed back once
            for task_id, attempt in reversed(pairs):
                lease = state.leases.get(task_id)
                if lease is not None and lease.held_as(attempt, worker):
                    returned.setdefault(task_id, lease)
            counted = [[t.id, t.attempt] for t in returned.values() if t.host is not None]
            if counted:  # a restart must not count them as still running
                self._recorder.write(events.release(counted))
            for lease in returned.values():
                state.give_back(lease)
                released += 1
                cancelled = cancelled or state.scheduler.is_cancelled(lease.task.job)
            if cancelled:
                self._end_cancelled()
            self._waiters.tasks.notify(released + self._freed())
        return released

    def results(
        self, job_name: str | None, max_results: int, wait: float, ack: str | None = None
    ) -> ResultsDelivery:
        """Hand out up to ``max_results`` results of a job (of all jobs when None).

        The reply's ``token`` names this delivery: the output confirms it
        (``ack``, or the ``ack`` argument of its next call) once it has
        written the results.  Unconfirmed results go back to the queue after
        the lease timeout, so an output that dies loses nothing.
        ``done`` is true once the job is sealed and every task's result
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
                    if self._recorder.journal is not None:  # ids listed only to be written
                        self._recorder.write(events.hand(token, [r.id for r in selected]))
                    outbox.hand_out(token, selected, self._clock() + self.lease_timeout, name)
                    return {"results": selected, "done": False, "token": token}
                if self._state.all_confirmed(name):
                    return {"results": [], "done": True, "token": None}
                remaining = deadline - self._clock()
                if remaining <= 0:
                    return {"results": [], "done": False, "token": None}
                self._waiters.outputs(name).wait(min(remaining, self._until_next_change()))

    def ack(self, token: str) -> int:
        """Confirm a delivery: its results are written and can be forgotten."""
        token = validate.token(token)
        with self._lock:
            return self._ack_locked(token)

    def queued(self) -> int:
        """Tasks waiting for a worker: the cheap question a ``--burst`` worker asks."""
        with self._lock:
            return len(self._state.scheduler)

    def status(self) -> StatusReply:
        """Counts per job and the workers seen, for ``fetchq status``."""
        state = self._state
        with self._lock:
            self._expire_locked()
            counts = views.status(state, self._clock())
        process = views.process_usage()  # a directory listing: not under the lock
        return {"version": __version__, **counts, "process": process}

    def job(self, job_name: str) -> JobCounts:
        """One job's counts (a job the server never heard of is ``NoSuchJob``)."""
        name = validate.job_name(job_name)
        with self._lock:
            self._expire_locked()
            return self._state.counts(self._state.jobs.existing(name))

    def specs(self, job_name: str, keys: list[str]) -> list[dict[str, Any]]:
        """The specs of ``job_name`` a worker asks for by key (those the job has: a task
        never names another)."""
        name = validate.job_name(job_name)
        wanted = validate.spec_keys(keys)
        with self._lock:
            job = self._state.jobs.existing(name)
            found = [job.specs[key] for key in wanted if key in job.specs]
        return [spec_record(spec) for spec in found]

    # -- housekeeping the server program runs ----------------------------

    def housekeeping(self) -> None:
        """Expire overdue leases and deliveries, fsync the journal, compact it if grown."""
        with self._lock:
            self._expire_locked()
        for _ in range(CANCEL_ROUNDS):  # the lock is let go between rounds
            with self._lock:
                if not self._end_cancelled():
                    break
        self._recorder.sync_quietly()
        running = self._compaction is not None and self._compaction.is_alive()
        if not running and self._recorder.wants_compaction():
            self._compaction = threading.Thread(
                target=self._compact_quietly, name="compaction", daemon=True
            )
            self._compaction.start()

    def _compact_quietly(self) -> None:
        with contextlib.suppress(StorageFailed):  # said; tried again later
            self.compact()

    def expire_leases(self) -> int:
        """Return overdue leases to the queue (or fail them); returns how many."""
        with self._lock:
            return self._expire_locked()

    def compact(self) -> None:
        """Rewrite the journal as the live state.  Clients wait only while the state is
        captured and a new journal segment started; the writing is done without the lock
        (with 2,000,000 queued tasks it takes seconds)."""
        with self._compacting:  # one at a time
            prepared = self._recorder.prepare_compaction()
            if prepared is None:
                return
            with self._lock:
                compaction = self._recorder.start_compaction(
                    self._state, self._wall(), self._clock(), prepared
                )
            self._recorder.finish_compaction(compaction)

    def close(self) -> None:
        """Wait for a compaction under way, then close the journal."""
        if self._compaction is not None:
            self._compaction.join()
        with self._lock:
            self._recorder.close()

    # -- internals (lock held) --------------------------------------------

    def _lease_locked(self, worker: str, count: int, spans: bool) -> list[dict[str, Any]]:
        state, wall = self._state, self._wall()
        leased = leasing.lease(
            state,
            worker,
            count,
            spans=spans,
            now=self._clock(),
            wall=wall,
            wall_offset=self._steady_wall_offset(),
            lease_timeout=self.lease_timeout,
            write=self._recorder.write if self._recorder.journal is not None else None,
        )
        self._end_without_request(*leasing.refused_by_robots(state, wall))
        if len(state.scheduler) < self.max_pending:
            self._waiters.room.notify_all()
        return leased

    def _steady_wall_offset(self) -> float:
        """Unix time minus the monotonic clock, kept while it moves less than CLOCK_STEP.

        Read afresh, the two clocks are read a moment apart (another thread may run
        between them), so the offset wobbles by a millisecond or more; a start
        converted with a wobbling offset would show late or early by that much."""
        offset = self._wall() - self._clock()
        if abs(offset - self._wall_offset) > CLOCK_STEP:
            self._wall_offset = offset  # the wall clock was set
        return self._wall_offset

    def _end_cancelled(self) -> int:
        """End queued tasks of cancelled jobs as results, as many as the results' room
        and one round allow; returns how many.  Done where tasks of a cancelled job are
        queued (the cancel, a release, a restart) and by housekeeping as outputs make
        room: never by a read."""
        room = self.max_results - self._state.outbox.unconfirmed
        if room <= 0:
            return 0
        tasks, results = leasing.cancelled(self._state, room, self._wall())
        self._end_without_request(tasks, results)
        return len(tasks)

    def _end_without_request(self, tasks: list[Task], results: list[StoredResult]) -> None:
        """Tasks that end here as results (cancelled, or forbidden by robots.txt)."""
        ended = leasing.end_without_request(self._state, tasks, results, self._recorder.write)
        self._waiters.wake_outputs(ended)

    def _journal_renewals(self, worker: str, renewed: list[tuple[int, int]]) -> None:
        """Renewed leases on limited hosts get their new deadline in the journal, so a
        restart counts them as running for as long as this process would have.  A journal
        that cannot take it (said already) keeps the call from failing: the renewal holds
        here, only a crash before the journal works again would forget it."""
        leases = [self._state.leases.get(task_id) for task_id, _ in renewed]
        event = leasing.lease_event(
            worker, [lease for lease in leases if lease is not None], self._steady_wall_offset()
        )
        if event is not None:
            with contextlib.suppress(StorageFailed):
                self._recorder.write(event)

    def _freed(self) -> int:
        """Leases on limited hosts that ended: each may let a waiting task go."""
        freed, self._state.scheduler.freed = self._state.scheduler.freed, 0
        return freed

    def _ack_locked(self, token: str) -> int:
        outbox = self._state.outbox
        delivery = outbox.delivery(token)
        if delivery is None:
            return 0  # already confirmed, or lapsed and handed out again
        if self._recorder.journal is not None:  # ids listed only to be written
            self._recorder.write(events.ack(token, delivery.ids()))
        was_full = outbox.unconfirmed >= self.max_results
        confirmed = outbox.confirm(token)
        assert confirmed is not None
        self._waiters.wake_outputs(confirmed.jobs)
        if was_full and outbox.unconfirmed < self.max_results:
            self._waiters.tasks.notify_all()  # leasing was paused for room: it may resume
        return len(confirmed.results)

    def _until_next_change(self) -> float:
        """Seconds until a lease or delivery may lapse or a paced task may go."""
        state, now = self._state, self._clock()
        times = [
            t
            for t in (
                state.leases.next_deadline(),
                state.outbox.next_deadline(),
                state.scheduler.next_change(now),
            )
            if t is not None
        ]
        if not times:
            return MAX_WAIT
        return max(0.0, min(times) - now) + 0.001

    def _expire_locked(self) -> int:
        """Lapsed leases and deliveries (see ``expiry``); returns how many leases lapsed."""
        expiry = Expiry(self._state, self._clock(), self._wall())
        if not expiry:
            return 0
        try:
            self._recorder.write(*expiry.events())
        except StorageFailed:
            expiry.refile(self._state)  # nothing changed; the next call tries again
            return 0
        self._waiters.wake_outputs(expiry.apply(self._state))
        self._waiters.tasks.notify(len(expiry.overdue) + self._freed())
        return expiry.tasks


def _conforms(broker: Broker) -> BrokerService:
    """Where mypy checks that the embedded broker is a whole ``BrokerService``."""
    return broker
