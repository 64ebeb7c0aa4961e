"""The broker under test, for tests that drive one in-process.

The contract tests (test_broker, test_broker_model, test_journal's API tests, the
scheduler model) get every broker from ``IMPLEMENTATIONS`` through the
``implementation`` fixture (conftest), and use it only through
``BrokerService``: a second implementation (the broker's state on a store) is
added to ``IMPLEMENTATIONS`` and runs the same suite.

What the API cannot tell is here too, each in one helper that says why it looks
inside: a crash (what ``kill -9`` leaves), the journal's fsync count, and where
each task is.  A second implementation gives its own version of each.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import storekit

from fetchq.server.broker import Broker
from fetchq.server.journal import Journal
from fetchq.server.service import BrokerService
from fetchq.server.store.broker import StoreBroker

Factory = Callable[..., BrokerService]
"""Makes a broker from ``Broker``'s settings (clock, wall_clock, lease_timeout,
max_attempts, max_pending, max_results, per_host, host_delay) and ``durable``: where
its state survives a restart (None: it does not)."""


def embedded(*, durable: Path | None = None, **settings: Any) -> BrokerService:
    """The broker in this process, durable through a journal file."""
    return Broker(journal=None if durable is None else Journal(durable), **settings)


def on_store(*, durable: Path | None = None, **settings: Any) -> BrokerService:
    """The broker on a store (this test process's ``redis-server``), emptied first:
    durable as the store is, so ``durable`` only says whether to empty it (a path
    seen before: no, it is the same broker opened again)."""
    store = storekit.shared_store().client()
    if durable is None or durable not in _opened:
        store.flushall()
        if durable is not None:
            _opened.add(durable)
    return StoreBroker(store, **settings)


_opened: set[Path] = set()

IMPLEMENTATIONS: dict[str, Factory] = {"embedded": embedded, "store": on_store}


def _embedded(broker: BrokerService) -> Broker:
    assert isinstance(broker, Broker), f"no test helper for {type(broker).__name__} yet"
    return broker


def crash(broker: BrokerService) -> None:
    """What kill -9 leaves: the state as written so far, and the lock released.

    Looks inside because a crash is not an API call: every broker call writes its
    events before it returns (with no buffer in between), so closing the journal's
    descriptors unsynced is all the kernel does for a dead process; closing the lock
    file drops its flock.  On a store, the state is all in the store: a server that
    dies leaves it whole, and only its connections go."""
    if isinstance(broker, StoreBroker):
        broker.close()
        return
    journal = _embedded(broker)._recorder.journal
    assert journal is not None
    if journal._fd is not None:
        os.close(journal._fd)
        journal._fd = None
    os.close(journal._guard)


def syncs(broker: BrokerService) -> int:
    """fsyncs of the journal so far: when a write reaches the disk is not in the API."""
    journal = _embedded(broker)._recorder.journal
    assert journal is not None
    return journal.syncs


class Place(NamedTuple):
    """Where one task is: queued (how many live copies), leased, or done."""

    queued: int
    leased: bool
    done: bool


class Lease(NamedTuple):
    worker: str
    attempt: int
    deadline: float
    job: str
    host: str | None


def restart_keeps_leases(broker: BrokerService) -> bool:
    """Whether a server's restart leaves leases and deliveries as they were: on a store
    it does (they never were in the process); an embedded broker queues its unlimited
    leases' tasks again, and gives open deliveries a new deadline."""
    return isinstance(broker, StoreBroker)


def _store_jobs(broker: StoreBroker) -> list[str]:
    return [job.decode() for job in broker._store.zrange("fq:jobs", 0, -1)]


def queued_tasks(broker: BrokerService) -> Iterator[tuple[int, int]]:
    """``(id, attempt)`` of every live queued copy (stale copies left out)."""
    if isinstance(broker, StoreBroker):  # the ids in a job's queue that are neither
        store = broker._store  # done (no task left) nor leased
        for job in _store_jobs(broker):
            for raw_id in store.lrange(f"fq:{{{job}}}:queue", 0, -1):
                task = store.hget(f"fq:{{{job}}}:tasks", raw_id)
                if task is not None and not store.hexists(f"fq:{{{job}}}:holders", raw_id):
                    yield int(raw_id), json.loads(task)[0]
        return
    state = _embedded(broker)._state
    done, leases = state.ledger.done, state.leases
    for task in state.scheduler:
        if task.id not in done and leases.get(task.id) is None:
            yield task.id, task.attempt


def leases(broker: BrokerService) -> dict[int, Lease]:
    """Every lease by task id.  The API counts leases; which worker holds which task
    until when is only seen by their expiry, so the model checks it here."""
    if isinstance(broker, StoreBroker):
        store, found = broker._store, {}
        for job in _store_jobs(broker):
            for raw_id, worker in store.hgetall(f"fq:{{{job}}}:holders").items():
                task = json.loads(store.hget(f"fq:{{{job}}}:tasks", raw_id) or b"[0]")
                deadline = store.zscore("fq:due", f"{job}\n{raw_id.decode()}")
                assert deadline is not None, (job, raw_id)
                found[int(raw_id)] = Lease(worker.decode(), task[0], deadline, job, None)
        return found
    state = _embedded(broker)._state
    return {
        lease.id: Lease(
            lease.worker, lease.task.attempt, lease.deadline, lease.task.job, lease.host
        )
        for lease in state.leases
    }


def done(broker: BrokerService, task_id: int) -> bool:
    """The task has its result (later reports of it are dropped)."""
    if isinstance(broker, StoreBroker):  # a task of a known range, no longer kept
        store = broker._store
        ranges = store.zrevrangebyscore("fq:ranges", task_id, "-inf", start=0, num=1)
        if not ranges:
            return False
        first, count, *_, job = ranges[0].decode().split("\t")
        kept = store.hexists(f"fq:{{{job}}}:tasks", task_id)
        return task_id < int(first) + int(count) and not kept
    return task_id in _embedded(broker)._state.ledger.done


def renew(broker: BrokerService, worker: str, leases: list[list[int]]) -> int:
    """Renew leases as a worker does: in a report, here one with no results."""
    return int(broker.complete(worker, [], leases)["renewed"])
