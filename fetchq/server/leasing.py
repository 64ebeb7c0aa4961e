"""Handing tasks to workers: leases with their start times, and tasks that end here.

The scheduler says which tasks go and when they may start (on the broker's
monotonic clock); a lease tells the worker that start in Unix time, and
lasts from the start, not from the moment it was leased.  Tasks robots.txt forbids and
the tasks of a cancelled job end as results without a request.

A lease on a host with limits (a per-host cap, delay, robots.txt or Retry-After) is
journaled with its worker and deadline: the worker goes on running it when the server
dies, so a restarted server counts it against the host's cap until it is reported or
would have lapsed (see ``recovery``).  Other leases are not: their tasks are simply
queued again after a restart.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import msgspec

from fetchq.errors import StorageFailed
from fetchq.server import events, robots
from fetchq.server.completion import ended_without_request, finish_task
from fetchq.server.jobqueue import Pick
from fetchq.server.leases import Lease, records, task_records
from fetchq.server.ledger import Ledger
from fetchq.server.state import BrokerState
from fetchq.server.tasks import Task
from fetchq.wire.aggregates import SPAN, read_span
from fetchq.wire.records import CANCELLED, ROBOTS_REFUSED, StoredResult

CANCEL_BATCH = 10_000
"""Queued tasks of a cancelled job turned into results per round (each is journaled)."""

_probe_ids = itertools.count(-1, -1)
"""robots.txt fetches are leased under negative ids: never a task's."""


def lease(
    state: BrokerState,
    worker: str,
    count: int,
    *,
    spans: bool = False,
    now: float,
    wall: float,
    wall_offset: float,
    lease_timeout: float,
    write: Callable[..., None] | None,
) -> list[dict[str, Any]]:
    """Up to ``count`` task records for ``worker``, leased to it.

    A start goes out in Unix time as ``start + wall_offset``: one offset for every
    call, so that starts keep the schedule's exact spacing in Unix time too.  When the
    journal cannot take the leases on limited hosts, every lease of the call is given
    back and ``StorageFailed`` raised: nothing was handed out.  ``write``: the
    journal's, None when there is none.  ``spans``: the worker runs an aggregate job's
    spans (at most one a call)."""
    done = state.ledger.done
    taken = state.scheduler.take_tasks(count, now, done.__contains__, done, spans=spans)
    plain = [entry for entry in taken if not isinstance(entry, Pick)]
    if len(plain) == len(taken):
        # The usual case, a job with no pace and no host limits: leased as a batch.
        state.leases.grant_plain(plain, worker, now + lease_timeout)
        built = task_records(plain, itertools.repeat(None))
        if state.ledger.spec_jobs:
            name_specs(built, state.ledger)
        if state.scheduler.span_jobs:
            as_spans(built, state.scheduler.span_jobs)
        return built
    granted: list[Lease] = []
    at_once = now + lease_timeout
    for entry in taken:
        if not isinstance(entry, Pick):
            granted.append(Lease(entry[0], entry, worker, at_once))
            continue
        task, start, host, robots = entry
        if robots:
            task = task._replace(id=next(_probe_ids), submitted=wall)
        if start is None:
            granted.append(Lease(task[0], task, worker, at_once, None, host, robots))
            continue
        deadline = max(now, start) + lease_timeout
        granted.append(Lease(task[0], task, worker, deadline, start + wall_offset, host, robots))
    state.leases.grant_all(granted)
    event = lease_event(worker, granted, wall_offset) if write is not None else None
    if write is not None and event is not None:
        try:
            write(event)
        except StorageFailed:
            for given in reversed(granted):
                state.give_back(given)
            raise
    built = records(granted)
    if state.ledger.spec_jobs:
        name_specs(built, state.ledger)
    if state.scheduler.span_jobs:
        as_spans(built, state.scheduler.span_jobs, state.scheduler.spacings)
    return built


def name_specs(built: list[dict[str, Any]], ledger: Ledger) -> None:
    """Each task record names the spec its task sends, when it has one (a robots.txt
    fetch, under a negative id, is a bare GET).  Only a job that has specs costs a
    look-up per task."""
    jobs, spec_of = ledger.spec_jobs, ledger.spec_of
    for record in built:
        if record["job"] in jobs and record["id"] > 0:
            key = spec_of(record["id"])
            if key is not None:
                record["spec"] = key


def as_spans(
    built: list[dict[str, Any]], jobs: list[str], spacings: dict[int, float] | None = None
) -> None:
    """The records of ``jobs``' tasks as spans: the span the worker runs, in place of the
    text the server keeps for it, and its template as the URL.  A paced span's
    ``scheduled`` is its first request's start, and ``spacing`` the seconds from one of
    its requests' starts to the next (``spacings``, by id)."""
    for record in built:
        if record["job"] in jobs:
            span = read_span(record["url"])
            url = span.template or span.urls_from(0, 1)[0]
            record.update(kind=SPAN, url=url, span=msgspec.to_builtins(span))
            if spacings and record["id"] in spacings:
                record["spacing"] = spacings[record["id"]]


def lease_event(worker: str, leases: list[Lease], wall_offset: float) -> events.Lease | None:
    """The journal event for the leases that count against a host's limits: each
    ``[id, attempt, deadline in Unix time]`` (None when there is none)."""
    counted: list[list[Any]] = [
        [lease.id, lease.attempt, lease.deadline + wall_offset]
        for lease in leases
        if lease.host is not None and not lease.robots
    ]
    return events.lease(worker, counted) if counted else None


def refused_by_robots(state: BrokerState, wall: float) -> tuple[list[Task], list[StoredResult]]:
    """The tasks the last lease found forbidden, with the results they end as."""
    denied, state.scheduler.denied = state.scheduler.denied, []
    tasks = [task for task, _ in denied]
    results = [
        ended_without_request(state, task, ROBOTS_REFUSED, robots.refusal(rules), wall)
        for task, rules in denied
    ]
    return tasks, results


def cancelled(state: BrokerState, room: int, wall: float) -> tuple[list[Task], list[StoredResult]]:
    """Queued tasks of cancelled jobs, at most ``room``, with the results they end as."""
    tasks: list[Task] = []
    done = state.ledger.done.__contains__
    for name, queue in state.scheduler.jobs.items():
        if queue.cancelled and queue.count and len(tasks) < room:
            tasks.extend(state.scheduler.drain(name, min(room, CANCEL_BATCH) - len(tasks), done))
    results = [
        ended_without_request(state, task, CANCELLED, f"job {task.job} was cancelled", wall)
        for task in tasks
    ]
    return tasks, results


def end_without_request(
    state: BrokerState,
    tasks: list[Task],
    results: list[StoredResult],
    write: Callable[..., None],
) -> set[str]:
    """Journal and record results of tasks that end here; returns their jobs.  A journal
    that cannot take them puts the tasks back: they come round again."""
    if not tasks:
        return set()
    try:
        write(*(events.result(result) for result in results))
    except StorageFailed:
        state.scheduler.put_back(tasks)
        return set()
    for result in results:
        finish_task(state, result)
    return {result.job for result in results}
