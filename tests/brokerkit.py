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
from fetchq.server.store.connection import LIBRARY_KEY, Store, job_key, shard_of, shared_key

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
    return _on(_client("store", storekit.shared_store().client), durable, settings)


def on_cluster(*, durable: Path | None = None, **settings: Any) -> BrokerService:
    """The broker on a Redis Cluster of three primaries (this test process's), emptied
    first as ``on_store`` empties its store: every call must keep to one slot."""
    return _on(_client("cluster", storekit.shared_cluster().client), durable, settings)


def on_shards(*, durable: Path | None = None, **settings: Any) -> BrokerService:
    """The broker on a Redis Cluster of three primaries, its fleet in three shards
    (the first of which is the one shard of ``on_cluster``): every call must keep to
    its shard's slot, and the shards must answer as one broker."""
    client = _client("cluster", storekit.shared_cluster().client)
    return _on(client, durable, {**settings, "shards": 3})


def _client(name: str, make: Callable[[], Store]) -> Store:
    """One client of each store for the test process: a broker given a client leaves it
    open, and a Cluster's client takes a while to make."""
    if name not in _clients:
        _clients[name] = make()
    return _clients[name]


_clients: dict[str, Store] = {}


def _on(store: Store, durable: Path | None, settings: dict[str, Any]) -> StoreBroker:
    if durable is None or durable not in _opened:
        loaded = store.get(LIBRARY_KEY)
        store.flushall()  # keys only: the functions stay, and the key that says so
        if loaded is not None:
            store.set(LIBRARY_KEY, loaded)
        if durable is not None:
            _opened.add(durable)
    return StoreBroker(store, **settings)


_opened: set[Path] = set()

IMPLEMENTATIONS: dict[str, Factory] = {
    "embedded": embedded,
    "store": on_store,
    "shards": on_shards,
}


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


def id_run(broker: BrokerService, task_id: int) -> int:
    """Which run of ids a task's is in: a store of several shards numbers each shard's
    tasks apart (an id tells its shard), so ids continue where they stopped in each."""
    return shard_of(task_id) if isinstance(broker, StoreBroker) else 0


def batch_ids(reply: dict[str, Any], count: int) -> list[int]:
    """The ids of a batch's tasks, in its order: a run from ``first_id``, or each given
    (a store of several shards splits a job's batch by host)."""
    if "ids" in reply:
        return list(reply["ids"])
    return list(range(reply["first_id"], reply["first_id"] + count))


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


class _StoreView(NamedTuple):
    """A store's jobs as the helpers below read them, a few commands a job: its
    queue's ids, its tasks (id to ``[attempt, url, ...]``) and its holders."""

    queues: dict[str, list[int]]
    tasks: dict[str, dict[int, list[Any]]]
    holders: dict[str, dict[int, str]]


def _store_view(broker: StoreBroker) -> _StoreView:
    """(Of every shard: each read at one moment, one after the other.)"""
    store = broker._store
    view = _StoreView({}, {}, {})
    for shard in range(broker.shards):
        jobs = [job.decode() for job in store.zrange(shared_key("jobs", shard), 0, -1)]
        pipe = store.pipeline(transaction=True)  # one moment of the shard
        for job in jobs:
            pipe.lrange(job_key(job, "queue", shard), 0, -1)
            pipe.hgetall(job_key(job, "tasks", shard))
            pipe.hgetall(job_key(job, "holders", shard))
        replies = pipe.execute()
        for n, job in enumerate(jobs):
            queue, tasks, holders = replies[3 * n : 3 * n + 3]
            view.queues.setdefault(job, []).extend(int(task_id) for task_id in queue)
            view.tasks.setdefault(job, {}).update({int(k): json.loads(v) for k, v in tasks.items()})
            view.holders.setdefault(job, {}).update(
                {int(k): v.decode() for k, v in holders.items()}
            )
    return view


def queued_tasks(broker: BrokerService) -> Iterator[tuple[int, int]]:
    """``(id, attempt)`` of every live queued copy (stale copies left out)."""
    if isinstance(broker, StoreBroker):  # the ids in a job's queue that are neither
        view = _store_view(broker)  # done (no task left) nor leased
        for job, queue in view.queues.items():
            for task_id in queue:
                task = view.tasks[job].get(task_id)
                if task is not None and task_id not in view.holders[job]:
                    yield task_id, task[0]
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
        view = _store_view(broker)
        deadlines = {
            member: deadline
            for shard in range(broker.shards)
            for member, deadline in broker._store.zrange(
                shared_key("due", shard), 0, -1, withscores=True
            )
        }
        found = {}
        for job, holders in view.holders.items():
            for task_id, worker in holders.items():
                deadline = deadlines[f"{job}\n{task_id}".encode()]
                attempt = view.tasks[job][task_id][0]
                found[task_id] = Lease(worker, attempt, deadline, job, None)
        return found
    state = _embedded(broker)._state
    return {
        lease.id: Lease(
            lease.worker, lease.task.attempt, lease.deadline, lease.task.job, lease.host
        )
        for lease in state.leases
    }


def finished(broker: BrokerService) -> Callable[[int], bool]:
    """Whether a task has its result (later reports of it are dropped), as the broker
    is now: a store's is read once, for every task asked about after."""
    if isinstance(broker, StoreBroker):  # a task of a known range, no longer kept
        view = _store_view(broker)
        members = [
            member
            for shard in range(broker.shards)
            for member in broker._store.zrange(shared_key("ranges", shard), 0, -1)
        ]
        ranges = [
            (int(first), int(count), job)
            for first, count, *_, job in (member.decode().split("\t") for member in members)
        ]

        def is_done(task_id: int) -> bool:
            return any(
                first <= task_id < first + count and task_id not in view.tasks[job]
                for first, count, job in ranges
            )

        return is_done
    return _embedded(broker)._state.ledger.done.__contains__


def renew(broker: BrokerService, worker: str, leases: list[list[int]]) -> int:
    """Renew leases as a worker does: in a report, here one with no results."""
    return int(broker.complete(worker, [], leases)["renewed"])
