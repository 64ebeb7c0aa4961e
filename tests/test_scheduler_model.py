"""A model of pacing and politeness: hypothesis drives a journaled broker through any
interleaving of submit, lease, renew, release, complete, expiry, pause, resume, cancel,
policy changes and crash-restarts, with tasks spread over many hosts.

After every step: no host has more requests in flight than its cap (the job's and the
server's), and the starts handed out on each host are never closer than its delay,
restarts included.  What is in flight is the model's own account, not the broker's: a
request runs from its lease until its worker reports it or its lease lapses, and a
crash of the server does not stop the workers, so what the old process leased still
runs (and may still be reported) after the restart.  At the end everything is drained
and every submitted task has exactly one result, cancelled ones included.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from brokerkit import Factory, batch_ids, crash, on_shards, renew
from fakeclock import FakeClock
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from fetchq.errors import BadRequest, NoSuchJob
from fetchq.server.service import BrokerService
from fetchq.urls import host_key
from fetchq.wire.records import make_error, make_result

WALL = 1_700_000_000.0
LEASE = 10.05
"""Off the 0.1 s grid every clock step, start and delay here keeps to: a lease never
lapses at the very moment the model looks, so the model and the broker never differ on
which side of a deadline a moment falls (after a restart the broker has it from Unix
time, a rounding away)."""
JOBS = ("j0", "j1")
HOSTS = tuple(f"h{n}.test" for n in range(6))
SERVER_CAP = 3
JITTER = 1e-6
GAPS_CHECKED = Counter[str]()
"""Start gaps the delay invariant looked at, over every example: it must see some."""
HELD_OVER = Counter[str]()
"""Requests still running across a restart, over every example: it must see some."""


@dataclass
class Running:
    """A request a worker runs: from its lease until it reports or its lease lapses."""

    task: dict[str, Any]
    worker: str
    until: float
    """When its lease lapses on the model's clock: the lease timeout after the later of
    its lease and its scheduled start, or after its last renewal if that is later."""

    @property
    def key(self) -> tuple[str, str]:
        return self.task["job"], host_key(self.task["url"])


class SchedulerMachine(RuleBasedStateMachine):
    implementation: Factory

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="fetchq-scheduler-model-"))
        self.clock = FakeClock()
        self.broker = self.start()
        self.submitted: set[int] = set()
        self.running: dict[int, Running] = {}
        """What workers run, by a number of the model's own (one task may run twice)."""
        self.leases = itertools.count()
        self.starts: dict[tuple[str, str], list[float]] = defaultdict(list)
        self.delay = {job: 0.0 for job in JOBS}
        self.cap: dict[str, int | None] = dict.fromkeys(JOBS)
        self.cancelled: set[str] = set()
        self.known: set[str] = set()
        """Jobs a submit created: steering any other is an error, and creates nothing."""
        self.results: Counter[int] = Counter()
        self.grandfathered: Counter[tuple[str, str]] = Counter()
        """Leases a host held when its cap was lowered: they run on; no new one starts."""
        self.n = 0

    server_cap: int | None = SERVER_CAP
    """The servers' cap on every host over all jobs (a store of several shards takes
    none: each job's caps are what it checks there)."""

    def start(self) -> BrokerService:
        return type(self).implementation(
            clock=self.clock,
            wall_clock=lambda: WALL + self.clock.now,
            durable=self.dir / "journal",
            lease_timeout=LEASE,
            max_attempts=2,
            per_host=self.server_cap,
        )

    def teardown(self) -> None:
        try:
            self.drain()
        finally:
            self.broker.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- steps --------------------------------------------------------------

    @initialize()
    def a_busy_host(self) -> None:
        """Every example starts with a few starts due on one host, so the delay
        invariant always has gaps to check, whatever the rules drawn after."""
        self.submit("j0", [HOSTS[0]] * 4)
        self.lease("w0", 4)

    @rule(job=st.sampled_from(JOBS), hosts=st.lists(st.sampled_from(HOSTS), max_size=12))
    def submit(self, job: str, hosts: list[str]) -> None:
        urls = []
        for host in hosts:
            self.n += 1
            urls.append(f"http://{host}/{self.n}")
        change: dict[str, Any] = {}
        if self.cap[job] is None and self.delay[job] == 0.0:  # the job's first limits
            change = {"per_host": 2, "host_delay": 0.5}
        if job in self.cancelled:  # a cancelled job refuses new work
            with pytest.raises(BadRequest, match="cancelled"):
                self.broker.submit({"job": job, "urls": urls, **change})
            return
        reply = self.broker.submit({"job": job, "urls": urls, **change})
        self.known.add(job)
        if change:
            self.cap[job], self.delay[job] = 2, 0.5
        self.submitted.update(batch_ids(reply, len(urls)))

    @rule(worker=st.sampled_from(["w0", "w1"]), count=st.integers(1, 20))
    def lease(self, worker: str, count: int) -> None:
        now = self.clock.now
        for task in self.broker.lease(worker, count, 0):
            running = [r.task for r in self.running.values() if r.task["id"] == task["id"]]
            assert all(r["attempt"] < task["attempt"] for r in running), (task, running)
            scheduled = task.get("scheduled")
            start = now if scheduled is None else max(now, scheduled - WALL)
            self.running[next(self.leases)] = Running(task, worker, start + LEASE)
            if scheduled is not None:
                self.starts[(task["job"], host_key(task["url"]))].append(scheduled)

    @precondition(lambda self: self.running)
    @rule(data=st.data())
    def complete(self, data: st.DataObject) -> None:
        chosen = data.draw(st.lists(st.sampled_from(sorted(self.running)), max_size=6, unique=True))
        by_worker: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for number in chosen:
            running = self.running.pop(number)
            task = running.task
            retry = data.draw(st.booleans(), label="retryable failure")
            error = make_error("reset", "cut") if retry else None
            result = make_result(
                task,
                worker=running.worker,
                started=WALL,
                elapsed=0.01,
                error=error,
                status=None if retry else 200,
            )
            by_worker[running.worker].append(result)
        for worker, results in by_worker.items():
            self.broker.complete(worker, results)

    @rule(worker=st.sampled_from(["w0", "w1"]))
    def renew_held(self, worker: str) -> None:
        """The worker renews what it runs (as a report with no results does): each lease
        now lapses a lease timeout from now, if not later already."""
        mine = [r for r in self.running.values() if r.worker == worker]
        pairs = [[r.task["id"], r.task["attempt"]] for r in mine]
        assert renew(self.broker, worker, pairs) == len(pairs), "the server lost a lease"
        for running in mine:
            running.until = max(running.until, self.clock.now + LEASE)

    @precondition(lambda self: self.running)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        """A worker hands back tasks it has not started: they run no more."""
        chosen = data.draw(st.lists(st.sampled_from(sorted(self.running)), max_size=4, unique=True))
        by_worker: dict[str, list[list[int]]] = defaultdict(list)
        for number in chosen:
            running = self.running.pop(number)
            by_worker[running.worker].append([running.task["id"], running.task["attempt"]])
        for worker, pairs in by_worker.items():
            assert self.broker.release(worker, pairs) == len(pairs), "the server lost a lease"

    @rule(seconds=st.sampled_from([0.1, 0.5, 1.0, 3.0, 7.0, 11.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.broker.expire_leases()
        # A lease that lapsed was given up by its worker (it died, as far as anyone
        # can tell): it runs no more and reports nothing.
        for number in [n for n, r in self.running.items() if r.until <= self.clock.now]:
            del self.running[number]

    @rule(job=st.sampled_from(JOBS), action=st.sampled_from(["pause", "resume", "cancel"]))
    def steer(self, job: str, action: str) -> None:
        if job not in self.known:
            with pytest.raises(NoSuchJob):
                self.broker.steer(job, {"action": action})
            return
        self.broker.steer(job, {"action": action})
        if action == "cancel":
            self.cancelled.add(job)

    @rule(job=st.sampled_from(JOBS), cap=st.integers(1, 3), delay=st.sampled_from([0.2, 1.0]))
    def set_limits(self, job: str, cap: int, delay: float) -> None:
        if job not in self.known:
            with pytest.raises(NoSuchJob):
                self.broker.steer(job, {"action": "set", "per_host": cap, "host_delay": delay})
            return
        self.broker.steer(job, {"action": "set", "per_host": cap, "host_delay": delay})
        # Leases already out run on, starts already handed out keep their spacing;
        # new ones keep the new limits.
        self.cap[job] = cap
        self.grandfathered = self.lease_counts()[0]
        for key in [k for k in self.starts if k[0] == job]:
            self.starts[key] = [self.starts[key][-1]]
        self.delay[job] = delay

    @rule()
    def restart(self) -> None:
        """The server dies and comes back; its workers do not: what they run runs on,
        and they report it to the new process."""
        crash(self.broker)
        self.broker = self.start()
        HELD_OVER["requests"] += len(self.running)

    # -- what must always hold ------------------------------------------------

    def lease_counts(self) -> tuple[Counter[tuple[str, str]], Counter[str]]:
        """Requests in flight per job and host, and per host, as the model saw them go."""
        per_job: Counter[tuple[str, str]] = Counter()
        per_host: Counter[str] = Counter()
        for running in self.running.values():
            per_job[running.key] += 1
            per_host[running.key[1]] += 1
        return per_job, per_host

    @invariant()
    def leases_are_what_runs(self) -> None:
        """The server holds a lease for each request a worker runs, and for nothing
        else: none forgotten by a restart, none kept after its report."""
        per_job = Counter(r.task["job"] for r in self.running.values())
        for job in self.known:
            assert self.broker.job(job)["leased"] == per_job[job], (job, per_job)

    @invariant()
    def caps_hold(self) -> None:
        per_job, per_host = self.lease_counts()
        for key, count in per_job.items():
            cap = self.cap[key[0]]
            allowed = max(cap, self.grandfathered[key]) if cap is not None else count
            assert count <= allowed, (per_job, self.grandfathered)
            self.grandfathered[key] = min(self.grandfathered[key], count)
        if self.server_cap is not None:
            assert all(count <= self.server_cap for count in per_host.values()), per_host

    @invariant()
    def delays_hold(self) -> None:
        for (job, host), starts in self.starts.items():
            ordered = sorted(starts)
            gaps = [b - a for a, b in itertools.pairwise(ordered)]
            assert all(gap >= self.delay[job] - JITTER for gap in gaps), (job, host, ordered)
            GAPS_CHECKED["gaps"] += len(gaps)

    # -- the end ----------------------------------------------------------------

    def drain(self) -> None:
        for job in self.known:
            self.broker.steer(job, {"action": "resume"})
        self.broker.complete("w0", [])
        for _ in range(2000):
            self.clock.advance(1.0)
            self.broker.expire_leases()
            tasks = self.broker.lease("drainer", 100, 0)
            results = [
                make_result(t, worker="drainer", started=WALL, elapsed=0.01, status=200)
                for t in tasks
            ]
            self.broker.complete("drainer", results)
            reply = self.broker.results(None, 10_000, 0)
            for result in reply["results"]:
                self.results[result["id"]] += 1
            if reply["token"]:
                self.broker.ack(reply["token"])
            if set(self.results) >= self.submitted and not self.broker.queued():
                break
        assert set(self.results) == self.submitted
        assert all(count == 1 for count in self.results.values()), self.results.most_common(3)


def test_scheduler_model(implementation: Factory) -> None:
    shared: dict[str, Any] = {"implementation": implementation}
    if implementation is on_shards:
        shared["server_cap"] = None
    machine = type("SchedulerOn", (SchedulerMachine,), shared)
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=60,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
    assert GAPS_CHECKED["gaps"] > 0, "no example ever checked a delay between two starts"
    assert HELD_OVER["requests"] > 0, "no example ever restarted with requests in flight"
