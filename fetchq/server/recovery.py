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

from collections import Counter
from collections.abc import Iterator
from typing import Any

from fetchq.errors import ConfigError
from fetchq.server import steering
from fetchq.server.expiry import LEASE_EXPIRED
from fetchq.server.journal import Journal
from fetchq.server.leases import Lease
from fetchq.server.leasing import lease_event
from fetchq.server.ledger import Ledger
from fetchq.server.scheduler import LOOKAHEAD
from fetchq.server.state import BrokerState
from fetchq.server.tasks import Task


def snapshot(state: BrokerState, wall: float, now: float) -> Iterator[dict[str, Any]]:
    """The live state as events: what a replay needs and nothing more.  ``wall`` and
    ``now``: the same moment in Unix time and on the broker's clock."""
    for job in state.jobs:
        yield {
            "k": "job",
            "job": job.name,
            "created": job.created,
            "submitted": job.submitted,
            "succeeded": job.succeeded,
            "failed": job.failed,
            "expired": job.expired,
            "confirmed": state.outbox.counts(job.name)[2],
            "sealed": job.sealed,
        }
    for first, job_name in state.ledger.ranges():
        yield {"k": "range", "first": first, "job": job_name}
    for batch_id, reply in state.ledger.batches():
        yield {"k": "batch", "batch": batch_id, "reply": reply}
    done = state.ledger.done
    live = [lease.task for lease in state.leases]
    live.extend(task for task in state.scheduler if task.id not in done)
    for task in sorted({task.id: task for task in live}.values()):
        yield {"k": "task", **task._asdict()}
    by_worker: dict[str, list[Lease]] = {}
    for lease in state.leases:
        by_worker.setdefault(lease.worker, []).append(lease)
    for worker, leases in sorted(by_worker.items()):
        event = lease_event(worker, leases, wall - now)
        if event is not None:
            yield event
    deliveries = list(state.outbox.deliveries())
    for delivery in deliveries:
        for result in delivery.results:
            yield {"k": "unconfirmed", "r": result}
    for result in state.outbox.waiting():
        yield {"k": "unconfirmed", "r": result}
    for delivery in deliveries:
        yield {"k": "hand", "token": delivery.token, "ids": delivery.ids()}
    yield from steering.snapshot(state, wall)


def header(ledger: Ledger, written: float) -> dict[str, Any]:
    return {"id_base": ledger.id_base, "next_id": ledger.next_id, "written": written}


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
        self.results: dict[int, dict[str, Any]] = {}
        self.deliveries: dict[str, list[int]] = {}
        self.confirmed: Counter[str] = Counter()
        self.leases: dict[int, tuple[int, str, float]] = {}
        """Leases on limited hosts still running: attempt, worker, deadline (Unix time)."""

    def run(self, journal: Journal, delivery_deadline: float) -> None:
        events = journal.read()
        first = next(events, None)
        if first is None:
            return
        ledger = self.state.ledger
        # The old process may have leased starts up to a lookahead ahead of its
        # death: host delays count from there.
        self.state.scheduler.epoch = self.now + LOOKAHEAD
        ledger.id_base = int(first["id_base"])
        ledger.next_id = int(first.get("next_id", ledger.id_base + 1))
        handlers = {
            "submit": self._submit,
            "task": self._task,
            "job": self._job_counts,
            "range": self._range,
            "batch": self._batch,
            "finish": self._finish,
            "retry": self._retry,
            "result": self._result,
            "unconfirmed": self._unconfirmed,
            "hand": self._hand,
            "return": self._return,
            "ack": self._ack,
            "lease": self._lease,
            "release": self._release,
            **dict.fromkeys(steering.STEERING_EVENTS, self._steer),
        }
        for event in events:
            handlers[event["k"]](event)
        self._rebuild(delivery_deadline)

    def _job(self, name: str) -> Any:
        return self.state.jobs.get_or_create(name, self.wall)

    # -- one method per event kind (see ``run``) ----------------------------

    def _submit(self, event: dict[str, Any]) -> None:
        job = self._job(event["job"])
        job.sealed = False
        first, urls = int(event["first"]), event["urls"]
        for offset, url in enumerate(urls):
            task_id = first + offset
            self.tasks[task_id] = Task(
                task_id, job.name, url, 1, event["attempts"], event["timeout"], event["at"]
            )
        job.submitted += len(urls)
        ledger = self.state.ledger
        ledger.next_id = max(ledger.next_id, first + len(urls))
        if urls:
            ledger.record_range(first, job.name)
        if event.get("batch"):
            reply = {"accepted": len(urls), "first_id": first}
            if event.get("reopened"):
                reply["reopened"] = True
            ledger.remember_batch(event["batch"], reply)

    def _task(self, event: dict[str, Any]) -> None:
        task = Task(**{name: event[name] for name in Task._fields})
        self.tasks[task.id] = task

    def _job_counts(self, event: dict[str, Any]) -> None:
        job = self._job(event["job"])
        job.created = event["created"]
        job.submitted = event["submitted"]
        job.succeeded = event["succeeded"]
        job.failed = event["failed"]
        job.expired = event.get("expired", 0)
        job.sealed = event["sealed"]
        # Journal format 1 called the confirmed results "delivered".
        self.confirmed[job.name] = (
            event["confirmed"] if "confirmed" in event else event["delivered"]
        )

    def _range(self, event: dict[str, Any]) -> None:
        self.state.ledger.record_range(event["first"], event["job"])

    def _batch(self, event: dict[str, Any]) -> None:
        self.state.ledger.remember_batch(event["batch"], event["reply"])

    def _finish(self, event: dict[str, Any]) -> None:
        self._job(event["job"]).sealed = True

    def _lease(self, event: dict[str, Any]) -> None:
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

    def _release(self, event: dict[str, Any]) -> None:
        for task_id, attempt in event["leases"]:
            held = self.leases.get(task_id)
            if held is not None and held[0] == attempt:
                del self.leases[task_id]

    def _retry(self, event: dict[str, Any]) -> None:
        self.leases.pop(event["id"], None)
        task = self.tasks.get(event["id"])
        if task is not None:
            self.tasks[task.id] = task._replace(attempt=event["attempt"])
            if event.get("expired"):
                self._job(task.job).expired += 1

    def _result(self, event: dict[str, Any]) -> None:
        result = self._unconfirmed(event)
        job = self._job(result["job"])
        job.count_result(bool(result.get("ok")))
        if (result.get("error") or {}).get("type") == LEASE_EXPIRED:
            job.expired += 1

    def _unconfirmed(self, event: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = event["r"]
        self.tasks.pop(result["id"], None)
        self.leases.pop(result["id"], None)
        self.results[result["id"]] = result
        return result

    def _steer(self, event: dict[str, Any]) -> None:
        steering.apply(self.state, event, now=self.now, wall=self.wall)

    def _hand(self, event: dict[str, Any]) -> None:
        self.deliveries[event["token"]] = event["ids"]

    def _return(self, event: dict[str, Any]) -> None:
        self.deliveries.pop(event["token"], None)

    def _ack(self, event: dict[str, Any]) -> None:
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
            handed = [self.results.pop(task_id) for task_id in ids if task_id in self.results]
            if handed:
                state.outbox.restore_delivery(token, handed, delivery_deadline)
        for result in self.results.values():
            state.outbox.add(result)
