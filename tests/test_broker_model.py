"""A model-based test of the Broker with a journal: hypothesis drives random calls.

The model below mirrors what the broker should hold (every task queued, leased
or done; every result undelivered, handed out or confirmed; job counters) and
checks each reply against it.  After every step the public counts
(``status()``) must match the model, and — looking inside the broker — every
task must be in exactly one place.  ``restart`` replays the journal into a new
Broker as after ``kill -9``: leases die with the old process, deliveries keep
their tokens (with a fresh deadline).  At the end everything is drained and
each submitted task must have exactly one confirmed result, across restarts.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brokerkit import (
    IMPLEMENTATIONS,
    Factory,
    crash,
    finished,
    id_run,
    leases,
    on_shards,
    queued_tasks,
    renew,
    restart_keeps_leases,
)
from fakeclock import FakeClock
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from fetchq.server.service import BrokerService
from fetchq.wire.records import is_retryable, make_error, make_result

LEASE = 10.0
JOBS = ("j0", "j1", "j2")
WORKERS = ("w0", "w1", "w2")
BATCH_IDS = ("b0", "b1", "b2", "b3")


@dataclass
class Task:
    id: int
    job: str
    url: str
    attempts: int
    state: str = "queued"
    """queued | leased | done"""
    attempt: int = 1
    worker: str = ""
    deadline: float = 0.0

    def record(self) -> dict[str, Any]:
        return {"id": self.id, "job": self.job, "url": self.url, "attempt": self.attempt}


@dataclass
class JobModel:
    submitted: int = 0
    sealed: bool = False
    succeeded: int = 0
    failed: int = 0
    delivered: int = 0

    @property
    def done(self) -> bool:
        return self.sealed and self.delivered == self.submitted


@dataclass
class Delivery:
    ids: list[int]
    deadline: float
    jobs: Counter[str] = field(default_factory=Counter)


def step(method: Callable[..., Any]) -> Callable[..., Any]:
    """Note whether the last step ran to its end: the final drain needs a sane state."""

    @functools.wraps(method)
    def wrapper(self: BrokerMachine, *args: Any, **kwargs: Any) -> Any:
        self.broken = True
        result = method(self, *args, **kwargs)
        self.broken = False
        return result

    return wrapper


class BrokerMachine(RuleBasedStateMachine):
    implementation: Factory = IMPLEMENTATIONS["embedded"]
    """The broker under test: ``test_broker_model`` sets each implementation in turn."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="fetchq-model-"))
        self.clock = FakeClock()
        self.broker = self.start()
        self.broken = False
        self.tasks: dict[int, Task] = {}
        self.jobs: dict[str, JobModel] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.next_id: dict[int, int] = {}
        """The next id of each run of ids (see ``brokerkit.id_run``)."""
        self.urls = 0
        self.ok: dict[int, bool] = {}
        self.undelivered: set[int] = set()
        self.deliveries: dict[str, Delivery] = {}
        self.tokens: list[str] = []
        self.confirmed: set[int] = set()
        self.history: list[dict[str, Any]] = []

    def start(self) -> BrokerService:
        return type(self).implementation(
            lease_timeout=LEASE,
            max_attempts=3,
            clock=self.clock,
            wall_clock=self.clock,
            durable=self.dir / "journal",
        )

    # -- the model's side of each call ----------------------------------------

    def expire(self) -> int:
        """What the broker's _expire_locked does, on the model."""
        now = self.clock.now
        for token, delivery in list(self.deliveries.items()):
            if delivery.deadline <= now:
                del self.deliveries[token]
                self.undelivered.update(delivery.ids)
        expired = 0
        for task in self.tasks.values():
            if task.state != "leased" or task.deadline > now:
                continue
            expired += 1
            if task.attempt < task.attempts:
                task.state, task.attempt = "queued", task.attempt + 1
            else:
                self.finish_task(task, ok=False)
        return expired

    def finish_task(self, task: Task, *, ok: bool) -> None:
        task.state = "done"
        self.ok[task.id] = ok
        job = self.jobs[task.job]
        if ok:
            job.succeeded += 1
        else:
            job.failed += 1
        self.undelivered.add(task.id)

    def accept_submit(
        self, job: str, urls: list[str], attempts: int, reply: dict[str, Any]
    ) -> None:
        assert "duplicate" not in reply and "full" not in reply, reply
        assert reply["accepted"] == len(urls)
        first = reply["first_id"]
        run = id_run(self.broker, first)
        if run in self.next_id:
            assert first == self.next_id[run], "ids must continue where they stopped"
        self.next_id[run] = first + len(urls)
        model = self.jobs.setdefault(job, JobModel())
        assert reply.get("reopened", False) is model.done, "a done job is reopened, and said"
        model.submitted += len(urls)
        model.sealed = False
        for offset, url in enumerate(urls):
            assert first + offset not in self.tasks
            self.tasks[first + offset] = Task(first + offset, job, url, attempts)

    def took_leases(self, worker: str, count: int, leased: list[dict[str, Any]]) -> None:
        queued = sum(1 for task in self.tasks.values() if task.state == "queued")
        assert len(leased) == min(count, queued), (len(leased), count, queued)
        assert len({record["id"] for record in leased}) == len(leased)
        for record in leased:
            task = self.tasks[record["id"]]
            assert task.state == "queued", (task, record)
            assert (record["job"], record["url"], record["attempt"]) == (
                task.job,
                task.url,
                task.attempt,
            )
            task.state, task.worker, task.deadline = "leased", worker, self.clock.now + LEASE
            self.history.append(record)

    def predict_complete(self, result: dict[str, Any]) -> str:
        """What _complete_one does with one result, applied to the model."""
        task = self.tasks.get(result["id"])
        if task is None or task.state not in ("queued", "leased"):
            return "dropped"
        current = task.state == "leased" and task.attempt == result["attempt"]
        if is_retryable(result):
            if not current:
                return "dropped"
            if task.attempt < task.attempts:
                task.state, task.attempt = "queued", task.attempt + 1
                return "requeued"
        self.finish_task(task, ok=bool(result["ok"]))
        return "accepted"

    def complete_all(self, worker: str, results: list[dict[str, Any]]) -> None:
        expected = {"accepted": 0, "dropped": 0, "requeued": 0, "renewed": 0}
        for result in results:
            expected[self.predict_complete(result)] += 1
        assert self.broker.complete(worker, results) == expected

    def ack_model(self, token: str) -> int:
        delivery = self.deliveries.pop(token, None)
        if delivery is None:
            return 0
        for task_id in delivery.ids:
            assert task_id not in self.confirmed, f"task {task_id} confirmed twice"
            self.confirmed.add(task_id)
            self.jobs[self.tasks[task_id].job].delivered += 1
        return len(delivery.ids)

    def done_flag(self, job: str | None) -> bool:
        if job is None:
            return bool(self.jobs) and all(model.done for model in self.jobs.values())
        return job in self.jobs and self.jobs[job].done

    def check_results(self, job: str | None, count: int, reply: dict[str, Any]) -> None:
        pool = [i for i in self.undelivered if job is None or self.tasks[i].job == job]
        results = reply["results"]
        assert len(results) == min(count, len(pool)), (len(results), count, len(pool))
        ids = [result["id"] for result in results]
        assert len(set(ids)) == len(ids)
        for result in results:
            task_id = result["id"]
            assert task_id not in self.confirmed, f"confirmed result {task_id} handed out again"
            assert task_id in self.undelivered, f"result {task_id} is not waiting for delivery"
            assert result["job"] == self.tasks[task_id].job
            assert result["ok"] == self.ok[task_id]
        if not results:
            assert reply["token"] is None
            assert reply["done"] is self.done_flag(job)
            return
        assert reply["done"] is False
        token = reply["token"]
        assert token not in self.deliveries and token not in self.tokens
        self.undelivered.difference_update(ids)
        self.deliveries[token] = Delivery(ids, self.clock.now + LEASE)
        self.tokens.append(token)

    def result_for(self, record: dict[str, Any], outcome: str, worker: str) -> dict[str, Any]:
        status = {"ok": 200, "http_error": 500}.get(outcome)
        error = make_error("refused", "connection refused") if outcome == "retryable" else None
        return make_result(
            record, worker=worker, started=self.clock.now, elapsed=0.01, status=status, error=error
        )

    # -- rules --------------------------------------------------------------------

    @rule(
        job=st.sampled_from(JOBS),
        size=st.integers(0, 5),
        attempts=st.integers(1, 3),
        batch=st.none() | st.sampled_from(BATCH_IDS),
    )
    @step
    def submit(self, job: str, size: int, attempts: int, batch: str | None) -> None:
        if batch is not None:  # an id is unique to its batch, and a batch to its job
            batch = f"{job}:{batch}"
        urls = [f"http://127.0.0.1/{job}/{self.urls + n}" for n in range(size)]
        self.urls += size
        reply = self.broker.submit(
            {"job": job, "urls": urls, "attempts": attempts, "timeout": 5.0, "batch_id": batch}
        )
        if batch is not None and batch in self.batches:
            assert reply == {**self.batches[batch], "duplicate": True}
            return
        self.accept_submit(job, urls, attempts, reply)
        if batch is not None:
            self.batches[batch] = {
                "accepted": size,
                "first_id": reply["first_id"],
                **({"reopened": True} if reply.get("reopened") else {}),
            }

    @rule(worker=st.sampled_from(WORKERS), count=st.integers(1, 6))
    @step
    def lease(self, worker: str, count: int) -> None:
        self.expire()
        self.took_leases(worker, count, self.broker.lease(worker, count, 0))

    @precondition(lambda self: self.history)
    @rule(data=st.data())
    @step
    def complete(self, data: st.DataObject) -> None:
        held = [task for task in self.tasks.values() if task.state == "leased"]
        if held and data.draw(st.booleans(), label="current leases"):
            picked = data.draw(st.lists(st.sampled_from(held), min_size=1, max_size=4))
            records = [task.record() for task in picked]
            workers = [task.worker for task in picked]
        else:  # anything ever leased: stale, duplicated, from an old process
            records = data.draw(st.lists(st.sampled_from(self.history), min_size=1, max_size=4))
            workers = [data.draw(st.sampled_from(WORKERS), label="worker") for _ in records]
        if data.draw(st.booleans(), label="wrong worker"):
            workers = [data.draw(st.sampled_from(WORKERS), label="worker")] * len(records)
        outcomes = st.sampled_from(["ok", "http_error", "retryable", "retryable"])
        results = [
            self.result_for(record, data.draw(outcomes, label="outcome"), worker)
            for record, worker in zip(records, workers, strict=True)
        ]
        if data.draw(st.booleans(), label="repeat one"):
            results.append(dict(results[0]))
        if self.next_id and data.draw(st.booleans(), label="unknown id"):
            next_id = data.draw(st.sampled_from(sorted(self.next_id.values())), label="run")
            unknown = {**records[0], "id": next_id + data.draw(st.integers(0, 9))}
            results.append(self.result_for(unknown, "ok", workers[0]))
        self.complete_all(workers[0], results)

    @precondition(lambda self: self.history)
    @rule(data=st.data(), worker=st.sampled_from(WORKERS))
    @step
    def release(self, data: st.DataObject, worker: str) -> None:
        records = data.draw(st.lists(st.sampled_from(self.history), min_size=1, max_size=4))
        pairs = [[record["id"], record["attempt"]] for record in records]
        expected = 0
        for task_id, attempt in reversed(pairs):
            task = self.tasks[task_id]
            if task.state == "leased" and task.attempt == attempt and task.worker == worker:
                task.state = "queued"
                expected += 1
        assert self.broker.release(worker, pairs) == expected

    @precondition(lambda self: self.history)
    @rule(data=st.data(), worker=st.sampled_from(WORKERS))
    @step
    def renew(self, data: st.DataObject, worker: str) -> None:
        records = data.draw(st.lists(st.sampled_from(self.history), min_size=1, max_size=4))
        pairs = [[record["id"], record["attempt"]] for record in records]
        expected = 0
        for task_id, attempt in pairs:
            task = self.tasks[task_id]
            if task.state == "leased" and task.attempt == attempt and task.worker == worker:
                task.deadline = self.clock.now + LEASE
                expected += 1
        assert renew(self.broker, worker, pairs) == expected

    @rule(seconds=st.sampled_from([1, 3, 5, 9, 10, 11, 25]), expire=st.booleans())
    @step
    def advance(self, seconds: float, expire: bool) -> None:
        self.clock.advance(seconds)
        if expire:
            expected = self.expire()
            assert self.broker.expire_leases() == expected

    @rule(
        data=st.data(),
        job=st.none() | st.sampled_from(JOBS),
        count=st.integers(1, 6),
        then=st.sampled_from(["ack", "keep", "ack-with-next-call"]),
    )
    @step
    def results(self, data: st.DataObject, job: str | None, count: int, then: str) -> None:
        piggyback = None
        if then == "ack-with-next-call" and self.tokens:
            piggyback = data.draw(st.sampled_from(self.tokens), label="token")
            self.ack_model(piggyback)
        self.expire()
        reply = self.broker.results(job, count, 0, ack=piggyback)
        self.check_results(job, count, reply)
        if then == "ack" and reply["token"] is not None:
            assert self.broker.ack(reply["token"]) == self.ack_model(reply["token"])

    @precondition(lambda self: self.tokens)
    @rule(data=st.data())
    @step
    def ack(self, data: st.DataObject) -> None:
        token = data.draw(st.sampled_from(self.tokens), label="token")
        expected = self.ack_model(token)
        assert self.broker.ack(token) == expected

    @rule(job=st.sampled_from(JOBS))
    @step
    def seal(self, job: str) -> None:
        counts = self.broker.seal(job)
        self.jobs.setdefault(job, JobModel()).sealed = True
        self.check_job(job, counts)

    @rule()
    @step
    def compact(self) -> None:
        self.broker.compact()

    @rule(clean=st.booleans())
    @step
    def restart(self, clean: bool) -> None:
        self.restart_broker(clean=clean)

    def restart_broker(self, *, clean: bool) -> None:
        if clean:
            self.broker.close()
        else:
            crash(self.broker)
        old, self.broker = self.broker, self.start()
        if restart_keeps_leases(old):
            return
        for task in self.tasks.values():
            if task.state == "leased":  # the lease died with the old process
                task.state = "queued"
        for delivery in self.deliveries.values():
            delivery.deadline = self.clock.now + LEASE

    # -- invariants ---------------------------------------------------------------------

    def check_job(self, name: str, got: dict[str, Any]) -> None:
        model = self.jobs[name]
        tasks = [task for task in self.tasks.values() if task.job == name]
        states = Counter(task.state for task in tasks)
        handed = sum(
            1 for d in self.deliveries.values() for i in d.ids if self.tasks[i].job == name
        )
        expected = {
            "submitted": len(tasks),
            "leased": states["leased"],
            "succeeded": model.succeeded,
            "failed": model.failed,
            "waiting": sum(1 for i in self.undelivered if self.tasks[i].job == name),
            "handed_out": handed,
            "confirmed": model.delivered,
            "sealed": model.sealed,
            "done": model.done,
        }
        assert model.submitted == len(tasks)
        assert model.delivered == sum(1 for i in self.confirmed if self.tasks[i].job == name)
        assert {key: got[key] for key in expected} == expected, name
        assert got["queued"] == states["queued"], name
        assert got["queued"] + got["leased"] + got["succeeded"] + got["failed"] == got["submitted"]
        assert got["succeeded"] + got["failed"] == (
            got["waiting"] + got["handed_out"] + got["confirmed"]
        )

    @invariant()
    @step
    def counts_agree(self) -> None:
        self.expire()
        status = self.broker.status()
        assert set(status["jobs"]) == set(self.jobs)
        for name in self.jobs:
            self.check_job(name, status["jobs"][name])
        assert status["leased"] == sum(1 for t in self.tasks.values() if t.state == "leased")
        assert status["unconfirmed"] == len(self.undelivered) + sum(
            len(d.ids) for d in self.deliveries.values()
        )

    @invariant()
    @step
    def each_task_in_exactly_one_place(self) -> None:
        """White box: the broker's queue, leases and done set against the model (the API
        counts tasks in each place; which task is where only the inside shows)."""
        held = leases(self.broker)
        is_done = finished(self.broker)
        live: Counter[int] = Counter()
        attempts: dict[int, int] = {}
        for task_id, attempt in queued_tasks(self.broker):
            live[task_id] += 1
            attempts[task_id] = attempt
        assert set(live) <= set(self.tasks)
        assert set(held) <= set(self.tasks)
        for task_id, task in self.tasks.items():
            places = (live[task_id], task_id in held, is_done(task_id))
            if task.state == "queued":
                assert places == (1, False, False), (task, places)
                assert attempts[task_id] == task.attempt, task
            elif task.state == "leased":
                assert places == (0, True, False), (task, places)
                lease = held[task_id]
                assert (lease.worker, lease.attempt, lease.deadline) == (
                    task.worker,
                    task.attempt,
                    task.deadline,
                ), task
            else:
                assert places == (0, False, True), (task, places)

    @invariant()
    def confirmed_results_are_unique_and_known(self) -> None:
        assert self.confirmed <= {i for i, t in self.tasks.items() if t.state == "done"}
        assert not self.confirmed & self.undelivered
        handed = [i for d in self.deliveries.values() for i in d.ids]
        assert len(handed) == len(set(handed))
        assert not set(handed) & (self.confirmed | self.undelivered)

    # -- the end: drain everything --------------------------------------------------

    def teardown(self) -> None:
        try:
            if not self.broken:
                self.drain()
        finally:
            self.broker.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    def drain(self) -> None:
        for job in JOBS:
            self.seal(job)
        for _ in range(10):
            self.clock.advance(LEASE)
            assert self.broker.expire_leases() == self.expire()
            while leased := self.broker.lease("drainer", 50, 0):
                self.took_leases("drainer", 50, leased)
                self.complete_all("drainer", [self.result_for(r, "ok", "-") for r in leased])
            for job in JOBS:
                while True:
                    self.expire()
                    reply = self.broker.results(job, 50, 0)
                    self.check_results(job, 50, reply)
                    if not reply["results"]:
                        break
                    assert self.broker.ack(reply["token"]) == self.ack_model(reply["token"])
            if not any(t.state in ("queued", "leased") for t in self.tasks.values()):
                break
        self.counts_agree()
        for job in JOBS:
            assert self.broker.job(job)["done"] is True, self.broker.job(job)
            assert self.broker.results(job, 1, 0) == {
                "results": [],
                "done": True,
                "token": None,
            }
        # Exactly one confirmed result per task, across every restart.
        assert self.confirmed == set(self.tasks)
        assert all(task.state == "done" for task in self.tasks.values())

        # And a restart brings none of them back.
        self.restart_broker(clean=False)
        assert self.broker.results(None, 1000, 0)["results"] == []
        for job in JOBS:
            assert self.broker.job(job)["done"] is True


MODEL_SETTINGS = settings(
    max_examples=150,
    stateful_step_count=50,
    deadline=None,
    database=None,  # nothing written to the work tree; a failure prints its steps
    suppress_health_check=[HealthCheck.too_slow],
)


def test_broker_model(implementation: Factory) -> None:
    machine = type("Machine", (BrokerMachine,), {"implementation": staticmethod(implementation)})
    # On a Cluster in shards the store broker runs the very calls it runs on one store,
    # in several slots: a shorter sweep shows they keep to them, and add up to one.
    sweep = settings(MODEL_SETTINGS, max_examples=30) if implementation is on_shards else None
    run_state_machine_as_test(machine, settings=sweep or MODEL_SETTINGS)


# -- counts the model relies on -------------------------------------------------


def test_queued_counts_only_tasks_still_to_run(implementation: Factory) -> None:
    clock = FakeClock()
    broker = implementation(lease_timeout=LEASE, clock=clock, wall_clock=clock)
    broker.submit({"job": "a", "urls": ["http://127.0.0.1/1"]})
    [task] = broker.lease("slow", 1, 0)
    clock.advance(LEASE)
    assert broker.expire_leases() == 1  # back in the queue, attempt 2
    late = make_result(task, worker="slow", started=0.0, elapsed=1.0, status=200)
    assert broker.complete("slow", [late])["accepted"] == 1  # the first result wins
    counts = broker.job("a")
    assert counts["queued"] + counts["leased"] + counts["succeeded"] + counts["failed"] == 1
    assert broker.status()["queued"] == 0
