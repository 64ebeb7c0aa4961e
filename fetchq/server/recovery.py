"""From the journal back to a broker's state, and from the state to a compact journal.

A replay rebuilds what a ``kill -9`` left: every acknowledged task not yet
done is queued again, every result no output confirmed is waiting again, and
deliveries an output has not confirmed keep their tokens, so that output may
still confirm them after the restart.  A task leased on a host with limits is
the exception: its worker did not die with the server and goes on running it,
so it stays leased to that worker until its lease would have lapsed (the old
deadline, in Unix time, from the journal) and counts against the host's cap
meanwhile; the worker may renew it or report it to the new process as to the
old.  A snapshot writes that state back as the fewest events that replay to it.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from fetchq.errors import ConfigError
from fetchq.ids import IdSet
from fetchq.server import events, steering
from fetchq.server.expiry import LEASE_EXPIRED
from fetchq.server.journal import Journal
from fetchq.server.leases import Lease
from fetchq.server.leasing import lease_event
from fetchq.server.ledger import Ledger
from fetchq.server.scheduler import LOOKAHEAD
from fetchq.server.state import BrokerState
from fetchq.server.tasks import Task
from fetchq.wire.aggregates import AGGREGATE, span_size
from fetchq.wire.api import ReadRecord, SubmitReply
from fetchq.wire.records import StoredResult
from fetchq.wire.specs import read_spec, spec_record


class Snapshot:
    """The live state as the fewest events that replay to it.

    Taken in two steps, so that a compaction stops the broker only for the first:
    under the broker's lock, what must be written is captured (counters copied,
    queued batches and results referenced, not copied); ``events`` then builds and
    yields the events from that capture, lock released, while the state moves on."""

    def __init__(self, state: BrokerState, wall: float, now: float) -> None:
        """``wall`` and ``now``: the same moment in Unix time and on the broker's clock."""
        self.header = header(state.ledger, wall)
        self._jobs = [
            events.job(
                job.name,
                created=job.created,
                submitted=job.submitted,
                succeeded=job.succeeded,
                failed=job.failed,
                expired=job.expired,
                confirmed=state.outbox.counts(job.name)[2],
                sealed=job.sealed,
                requests=None if job.requests is None else dataclasses.astuple(job.requests),
            )
            for job in state.jobs
        ]
        self._ranges = list(state.ledger.ranges())
        self._specs = [(job.name, list(job.specs.values())) for job in state.jobs if job.specs]
        self._batches = list(state.ledger.batches())
        self._done = state.ledger.done.copy()
        self._leased = [lease.task for lease in state.leases]
        by_worker: dict[str, list[Lease]] = {}
        for lease in state.leases:
            by_worker.setdefault(lease.worker, []).append(lease)
        self._lease_events = [
            event
            for worker, leases in sorted(by_worker.items())
            if (event := lease_event(worker, leases, wall - now)) is not None
        ]
        self._queued = state.scheduler.capture()
        self._deliveries, self._waiting = state.outbox.capture()
        self._steering = steering.snapshot(state, wall)

    def events(self) -> Iterator[events.Event]:
        yield from self._jobs
        for job_name, specs in self._specs:
            for spec in specs:
                yield events.spec(job_name, spec_record(spec))
        for first, job_name, spec_key in self._ranges:
            yield events.id_range(first, job_name, spec_key)
        for batch_id, reply in self._batches:
            yield events.batch(batch_id, reply)
        written, done = IdSet(), self._done
        for tasks in self._queued:
            for task in tasks():
                if task.id not in done and written.add(task.id):
                    yield events.task(task)
        for task in self._leased:
            if written.add(task.id):
                yield events.task(task)
        yield from self._lease_events
        for _, results in self._deliveries:
            for result in results:
                yield events.unconfirmed(result)
        for result in self._waiting:
            yield events.unconfirmed(result)
        for token, results in self._deliveries:
            yield events.hand(token, [result["id"] for result in results])
        yield from self._steering


def snapshot(state: BrokerState, wall: float, now: float) -> Iterator[events.Event]:
    """The live state as events, at once (nothing changes it meanwhile)."""
    return Snapshot(state, wall, now).events()


def header(ledger: Ledger, written: float) -> dict[str, Any]:
    return {
        "id_base": ledger.id_base,
        "next_id": ledger.next_id,
        "id_clock": ledger.follows_clock,
        "written": written,
    }


def replay(
    journal: Journal, state: BrokerState, *, now: float, wall: float, lease_timeout: float
) -> None:
    """Replay ``journal`` into a new, empty ``state``; a damaged journal is a config error."""
    try:
        _Replay(state, now, wall).run(journal, now + lease_timeout)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise ConfigError(
            f"journal {journal.path} is damaged ({type(exc).__name__}: {exc}); "
            "move it aside to start empty"
        ) from None


class _Replay:
    def __init__(self, state: BrokerState, now: float, wall: float) -> None:
        self.state = state
        self.now = now
        self.wall = wall
        self.tasks: dict[int, Task] = {}
        self.results: dict[int, ReadRecord] = {}
        self.deliveries: dict[str, list[int]] = {}
        self.confirmed: Counter[str] = Counter()
        self.leases: dict[int, tuple[int, str, float]] = {}
        """Leases on limited hosts still running: attempt, worker, deadline (Unix time)."""

    def run(self, journal: Journal, delivery_deadline: float) -> None:
        read = journal.read()
        first = next(read, None)
        if first is None:
            return
        ledger = self.state.ledger
        # The old process may have leased starts up to a lookahead ahead of its
        # death: host delays count from there.
        self.state.scheduler.epoch = self.now + LOOKAHEAD
        ledger.id_base = int(first["id_base"])
        ledger.next_id = int(first.get("next_id", ledger.id_base + 1))
        ledger.follows_clock = bool(first.get("id_clock"))  # formats 1-2: a random base
        handlers: dict[str, Callable[[Any], object]] = {
            events.SUBMIT: self._submit,
            events.SPEC: self._spec,
            events.TASK: self._task,
            events.JOB: self._job_counts,
            events.RANGE: self._range,
            events.BATCH: self._batch,
            events.SEAL: self._seal,
            events.SEAL_BEFORE_V3: self._seal,
            events.RETRY: self._retry,
            events.RESULT: self._result,
            events.UNCONFIRMED: self._unconfirmed,
            events.HAND: self._hand,
            events.RETURN: self._return,
            events.ACK: self._ack,
            events.LEASE: self._lease,
            events.RELEASE: self._release,
            **dict.fromkeys(events.STEERING, self._steer),
        }
        for event in read:
            handlers[event["k"]](event)
        self._rebuild(delivery_deadline)

    def _job(self, name: str) -> Any:
        return self.state.jobs.get_or_create(name, self.wall)

    # -- one method per event kind (see ``run``) ----------------------------

    def _submit(self, event: events.Submit) -> None:
        job = self._job(event["job"])
        job.sealed = False
        first, urls = int(event["first"]), event["urls"]
        for offset, url in enumerate(urls):
            task_id = first + offset
            self.tasks[task_id] = Task(
                task_id, job.name, url, 1, event["attempts"], event["timeout"], event["at"]
            )
        job.submitted += len(urls)
        queue = self.state.scheduler.find(job.name)
        if queue is not None and queue.policy.aggregate:  # (its policy event came first)
            self.state.jobs.requests_of(job).submitted += sum(map(span_size, urls))
        ledger = self.state.ledger
        ledger.next_id = max(ledger.next_id, first + len(urls))
        if urls:
            ledger.record_range(first, job.name, event.get("spec"))
        batch = event.get("batch")
        if batch:
            reply: SubmitReply = {"accepted": len(urls), "first_id": first}
            if event.get("reopened"):
                reply["reopened"] = True
            ledger.remember_batch(batch, reply)

    def _task(self, event: events.TaskEvent) -> None:
        task = Task(
            event["id"],
            event["job"],
            event["url"],
            event["attempt"],
            event["attempts"],
            event["timeout"],
            event["submitted"],
        )
        self.tasks[task.id] = task

    def _job_counts(self, event: dict[str, Any]) -> None:
        job = self._job(event["job"])
        job.created = event["created"]
        job.submitted = event["submitted"]
        job.succeeded = event["succeeded"]
        job.failed = event["failed"]
        job.expired = event.get("expired", 0)
        job.sealed = event["sealed"]
        requests = event.get("requests")
        if requests is not None:
            counts = self.state.jobs.requests_of(job)
            counts.submitted, counts.succeeded, counts.failed = requests
        # Journal format 1 called the confirmed results "delivered".
        self.confirmed[job.name] = (
            event["confirmed"] if "confirmed" in event else event["delivered"]
        )

    def _range(self, event: events.Range) -> None:
        self.state.ledger.record_range(event["first"], event["job"], event.get("spec"))

    def _spec(self, event: events.SpecEvent) -> None:
        key, spec = read_spec(event["spec"])
        self._job(event["job"]).specs[key] = spec

    def _batch(self, event: events.Batch) -> None:
        self.state.ledger.remember_batch(event["batch"], event["reply"])

    def _seal(self, event: events.Seal) -> None:
        self._job(event["job"]).sealed = True

    def _lease(self, event: events.Lease) -> None:
        """Leases granted or renewed; one of a task since finished or queued again (its
        result or retry came first) is over."""
        worker = event["w"]
        for task_id, attempt, until in event["leases"]:
            task = self.tasks.get(task_id)
            if task is None or task.attempt != attempt:
                continue
            held = self.leases.get(task_id)
            if held is not None and held[:2] == (attempt, worker):
                until = max(until, held[2])  # a renewal never shortens a lease
            self.leases[task_id] = (attempt, worker, until)

    def _release(self, event: events.Release) -> None:
        for task_id, attempt in event["leases"]:
            held = self.leases.get(task_id)
            if held is not None and held[0] == attempt:
                del self.leases[task_id]

    def _retry(self, event: events.Retry) -> None:
        self.leases.pop(event["id"], None)
        task = self.tasks.get(event["id"])
        if task is not None:
            self.tasks[task.id] = task._replace(attempt=event["attempt"])
            if event.get("expired"):
                self._job(task.job).expired += 1

    def _result(self, event: events.Result) -> None:
        result = self._unconfirmed(event)
        job = self._job(result["job"])
        job.count_result(result.get("kind") == AGGREGATE or bool(result.get("ok")))
        if job.requests is not None:
            job.requests.count_record(result)
        if (result.get("error") or {}).get("type") == LEASE_EXPIRED or _lapsed_span(result):
            job.expired += 1

    def _unconfirmed(self, event: events.Result | events.Unconfirmed) -> ReadRecord:
        result = event["r"]
        self.tasks.pop(result["id"], None)
        self.leases.pop(result["id"], None)
        self.results[result["id"]] = result
        return result

    def _steer(self, event: events.SteeringEvent) -> None:
        steering.apply(self.state, event, now=self.now, wall=self.wall)

    def _hand(self, event: events.Hand) -> None:
        self.deliveries[event["token"]] = event["ids"]

    def _return(self, event: events.Return) -> None:
        self.deliveries.pop(event["token"], None)

    def _ack(self, event: events.Ack) -> None:
        self.deliveries.pop(event.get("token", ""), None)
        for task_id in event["ids"]:
            result = self.results.pop(task_id, None)
            if result is not None:
                self.confirmed[result["job"]] += 1

    # -- after the last event -----------------------------------------------

    def _rebuild(self, delivery_deadline: float) -> None:
        """Queue what was not done (but for leases still running) and count every other
        id as done, so late reports of them are dropped; deliveries keep their tokens
        with a fresh deadline.  A lease whose deadline passed while the server was down
        lapses at the first expiry, as any other."""
        state = self.state
        ledger = state.ledger
        ledger.done.add_range(ledger.id_base + 1, ledger.next_id)
        for task_id in sorted(self.tasks):
            ledger.done.discard(task_id)
            task = self.tasks[task_id]
            held = self.leases.get(task_id)
            if held is None:
                state.scheduler.add_task(task)
                continue
            _, worker, until = held
            host = state.scheduler.held_over(task)
            state.leases.grant(task, worker, self.now + (until - self.wall), host=host)
        for name, count in self.confirmed.items():
            state.outbox.restore_confirmed(name, count)
        for token, ids in self.deliveries.items():
            handed = [
                StoredResult.of(self.results.pop(task_id))
                for task_id in ids
                if task_id in self.results
            ]
            if handed:
                state.outbox.restore_delivery(token, handed, delivery_deadline)
        for result in self.results.values():
            state.outbox.add(StoredResult.of(result))


def _lapsed_span(result: ReadRecord) -> bool:
    """An aggregate the server made for a span whose last lease lapsed."""
    if result.get("kind") != AGGREGATE:
        return False
    return LEASE_EXPIRED in (result.get("summary") or {}).get("errors", {})
