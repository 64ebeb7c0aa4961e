"""What a reported result does to its task: the rules of ``complete``.

The first result for a task wins and later ones are dropped.  A
connection-level failure with attempts left queues the task again instead;
one from an attempt that is no longer current is dropped.  For a job that
obeys Retry-After, a 429 or 503 answer that names a wait holds the host for
that long and queues the task again too.  A cancelled job retries nothing.  Results of one
call are judged as if they came one by one, but nothing changes until the
journal has taken the whole call (``judge`` first, then ``apply_all``).

Most calls are simpler: every result is the first for a task leased now, an
answer to keep.  ``all_current`` spots such a call by looking at each field
in C, and ``accept_all`` applies it a step at a time for the whole call; the
rules above then say the same thing.
"""

from __future__ import annotations

import operator
from collections import Counter
from collections.abc import Callable
from typing import NamedTuple, cast

from fetchq.errors import BadRequest
from fetchq.report.summary import Summary
from fetchq.server import events
from fetchq.server.jobs import Job, requests_in
from fetchq.server.leases import Lease
from fetchq.server.state import BrokerState
from fetchq.server.tasks import Task
from fetchq.wire.aggregates import Aggregate, Span, StoredAggregate, read_span, span_size
from fetchq.wire.api import RETRY_AFTER_STATUSES, Outcome, Record
from fetchq.wire.records import (
    RETRYABLE_ERRORS,
    StoredResult,
    make_error,
    make_result,
    make_task,
)

Result = StoredResult


NO_EVENTS: list[bytes] = []
"""Shared by every verdict that writes nothing: never appended to."""
MAX_HOLD = 3600.0
"""Longest a Retry-After may hold a host: a site asking for a day is asking to stop."""


class Verdict(NamedTuple):
    result: Result
    outcome: Outcome
    events: list[bytes]
    """The journal lines to write for it."""
    hold: float = 0.0
    """Seconds its host is held (Retry-After)."""


_id_of = operator.attrgetter("id")
_job_of = operator.attrgetter("job")
_ok_of = operator.attrgetter("ok")
_status_of = operator.attrgetter("head.status")
_error_of = operator.attrgetter("head.error")
_job_of_lease = operator.attrgetter("task.job")
_robots_of = operator.attrgetter("robots")
_host_of = operator.attrgetter("host")


def all_current(state: BrokerState, results: list[Result], *, spans: bool) -> list[Lease] | None:
    """The leases the results end, when every result is the first for a task that is
    leased now, under the job its lease names, an answer to keep (neither one to retry
    nor one asking to wait); None when any is not, and ``judge`` decides.  Such an
    answer is kept whichever attempt it is from, as ``judge`` keeps it."""
    ids = list(map(_id_of, results))
    if len(set(ids)) != len(ids):
        return None
    found = list(map(state.leases.get, ids))
    if None in found:
        return None
    leases = cast(list[Lease], found)
    if any(map(_robots_of, leases)):
        return None
    jobs = list(map(_job_of_lease, leases))
    if jobs != list(map(_job_of, results)):
        return None
    # A span is answered by an aggregate, and only a span is (``spans``: every result
    # is an aggregate; else none is): any other call goes to ``judge``.
    aggregate = state.jobs.aggregate
    if spans and not aggregate.issuperset(jobs):
        return None
    if not spans and aggregate and not aggregate.isdisjoint(jobs):
        return None
    if not RETRY_AFTER_STATUSES.isdisjoint(map(_status_of, results)):
        return None
    for error in filter(None, map(_error_of, results)):
        if error.get("type") in RETRYABLE_ERRORS:
            return None
    return leases


def check_spans(state: BrokerState, results: list[Result]) -> None:
    """``BadRequest`` for an aggregate that does not count its span's requests: a worker
    that ran a span counts each of its requests once.  The span is the one leased now,
    or, when its lease lapsed, the one queued again; an aggregate for a span that is
    neither is judged as any late result is."""
    for result in results:
        if isinstance(result, StoredAggregate):
            span = _span_of(state, result.id)
            if span is None:
                continue  # done, or never leased: ``judge`` decides
            expected, counted = span_size(span.url), sum(result.counts)
            if counted != expected:
                raise BadRequest(
                    f"an aggregate of {counted} requests for span {result.id}, "
                    f"which stands for {expected}"
                )


def _span_of(state: BrokerState, task_id: int) -> Task | None:
    """The span ``task_id``, leased or queued again after a lapse (None: neither)."""
    lease = state.leases.get(task_id)
    if lease is not None:
        return lease.task if lease.task.job in state.jobs.aggregate else None
    if not state.ledger.known(task_id):
        return None
    job = state.ledger.job_of(task_id)
    queue = state.scheduler.find(job) if job in state.jobs.aggregate else None
    return None if queue is None else queue.queued_again(task_id)


def accepted_events(
    results: list[Result],
    encoded: list[bytes | None],
    encode: Callable[[events.Event], bytes] | None,
) -> list[bytes]:
    """The journal lines of results ``accept_all`` keeps (none without a journal)."""
    if encode is None:
        return []
    return [
        encode(events.result(result)) if line is None else line
        for result, line in zip(results, encoded, strict=True)
    ]


def accept_all(
    state: BrokerState, results: list[Result], leases: list[Lease], now: float
) -> set[str]:
    """Keep results ``all_current`` found current, ending their leases; returns the
    jobs that got results."""
    if not results:
        return set()
    state.leases.end_all(leases)
    hosts = list(map(_host_of, leases))
    if any(hosts):
        on_hosts = Counter(
            (lease.task.job, host) for lease, host in zip(leases, hosts, strict=True) if host
        )
        for (job_name, host), count in on_hosts.items():
            state.scheduler.lease_ended(job_name, host, count)
    state.ledger.done.add_all(list(map(_id_of, results)))
    jobs = list(map(_job_of, results))
    by_job = {jobs[0]: results} if len(set(jobs)) == 1 else _by_job(results)
    for name, of_job in by_job.items():
        job = state.jobs.find(name)
        assert job is not None, name
        # What pace needs of each result is read here, before it waits for an output.
        job.pace.record(now, of_job, _requests(job, of_job))
        ok = sum(map(_ok_of, of_job))
        job.succeeded += ok
        job.failed += len(of_job) - ok
        if job.requests is not None:
            for result in of_job:
                job.requests.count(result)
        state.outbox.add_all(name, of_job)
    return set(by_job)


def judge(
    state: BrokerState,
    results: list[Result],
    encoded: list[bytes | None],
    encode: Callable[[events.Event], bytes] | None,
    wall: float,
) -> list[Verdict]:
    """Decide each result's outcome without changing anything.

    ``encoded`` are the results' journal events if already encoded (or None);
    ``encode`` makes the others (None: there is no journal, and no event to make)."""
    verdicts: list[Verdict] = []
    settled: set[int] = set()
    """Tasks an earlier result of this call finished or queued again: no lease now."""
    finished: set[int] = set()
    known, done, leases, job_of = (
        state.ledger.known,
        state.ledger.done,
        state.leases.get,
        state.ledger.job_of,
    )
    accepted = Outcome.ACCEPTED
    aggregate = state.jobs.aggregate
    for result, line in zip(results, encoded, strict=True):
        task_id = result.id
        span = bool(aggregate) and known(task_id) and job_of(task_id) in aggregate
        if span != isinstance(result, StoredAggregate):
            # A span is answered by an aggregate, and only a span is.
            verdicts.append(Verdict(result, Outcome.DROPPED, NO_EVENTS))
            continue
        if task_id not in settled:
            # Most results: the first for a task its worker holds, an answer to keep.
            # A task with a lease is not done: its first result ends its lease.
            lease = leases(task_id)
            if (
                lease is not None
                and lease.task.attempt == result.attempt
                and not lease.robots
                and result.status not in RETRY_AFTER_STATUSES
                and not result.retryable
            ):
                job = lease.task.job
                if result.job != job:  # the server's record of the task is the authority
                    result = result.with_job(job)
                    line = None
                if line is None and encode is not None:
                    line = encode(events.result(result))
                verdicts.append(Verdict(result, accepted, NO_EVENTS if line is None else [line]))
                settled.add(task_id)
                finished.add(task_id)
                continue
        if not known(task_id) or task_id in finished or task_id in done:
            verdicts.append(Verdict(result, Outcome.DROPPED, NO_EVENTS))  # repeat, or unknown
            continue
        attempt = result.attempt
        lease = None if task_id in settled else leases(task_id)
        current = lease is not None and lease.task.attempt == attempt
        retryable = result.retryable
        if retryable and not current:
            verdicts.append(Verdict(result, Outcome.DROPPED, NO_EVENTS))  # a stale attempt
            continue
        job = job_of(task_id)
        hold = _asked_to_wait(state, job, result) if result.status in RETRY_AFTER_STATUSES else 0
        if (
            (retryable or hold)
            and lease is not None
            and current
            and attempt < lease.task.attempts
            and not state.scheduler.is_cancelled(job)
        ):
            written = []
            if encode is not None:
                written.append(encode(events.retry(task_id, attempt + 1)))
                if hold:
                    written.append(encode(events.hold(job, result.url, wall + hold)))
            verdicts.append(Verdict(result, Outcome.REQUEUED, written, hold))
            settled.add(task_id)
            continue
        if result.job != job:  # the server's record of the task is the authority
            result = result.with_job(job)
            line = None
        event = encode(events.result(result)) if line is None and encode is not None else line
        verdicts.append(Verdict(result, Outcome.ACCEPTED, NO_EVENTS if event is None else [event]))
        settled.add(task_id)
        finished.add(task_id)
    return verdicts


def _asked_to_wait(state: BrokerState, job: str, result: Result) -> float:
    """Seconds a 429 or 503 answer asked this job to leave its host alone (0: none)."""
    seconds = result.retry_after
    if not isinstance(seconds, int | float) or not state.scheduler.policy(job).retry_after:
        return 0.0
    return min(max(float(seconds), 0.001), MAX_HOLD)


def apply(state: BrokerState, verdict: Verdict, now: float) -> None:
    result, outcome = verdict.result, verdict.outcome
    task_id = result.id
    lease = state.leases.get(task_id)
    if outcome is Outcome.DROPPED:
        if lease is not None and task_id in state.ledger.done:
            state.end_lease(task_id)  # a lease left on a finished task ends with it
    elif outcome is Outcome.REQUEUED:
        assert lease is not None
        state.end_lease(task_id)
        if verdict.hold:
            state.scheduler.hold(lease.task.job, lease.task.url, now + verdict.hold)
        state.scheduler.add_retry(lease.task._replace(attempt=lease.task.attempt + 1))
    else:
        if lease is None:  # its lease had expired: the queued copy is stale now
            state.scheduler.forget(result.job)
        else:
            state.end_lease(task_id)
        finish_task(state, result)


def apply_all(
    state: BrokerState, verdicts: list[Verdict], now: float
) -> tuple[Counter[Outcome], set[str]]:
    """``apply`` each verdict; returns how many ended each way, and the jobs that got
    results.  (The common call, every result an answer to a current lease, does not
    come here: ``accept_all`` takes it.)"""
    for verdict in verdicts:
        apply(state, verdict, now)
    accepted = [verdict.result for verdict in verdicts if verdict.outcome is Outcome.ACCEPTED]
    by_job = _by_job(accepted)
    for name, results in by_job.items():
        job = state.jobs.find(name)
        assert job is not None, name
        job.pace.record(now, results, _requests(job, results))
    return Counter(verdict.outcome for verdict in verdicts), set(by_job)


def _requests(job: Job, results: list[Result]) -> int | None:
    """For an aggregate job, the requests ``results`` stand for; None for any other job
    (one request a result)."""
    if job.requests is None:
        return None
    return sum(map(requests_in, results))


def _by_job(results: list[Result]) -> dict[str, list[Result]]:
    by_job: dict[str, list[Result]] = {}
    for result in results:
        by_job.setdefault(result.job, []).append(result)
    return by_job


def ended_without_request(
    state: BrokerState, task: Task, kind: str, message: str, wall: float, worker: str = "server"
) -> Result:
    """The result of a task the server ends: cancelled, forbidden by robots.txt, or
    out of attempts when its last lease lapsed on ``worker``.  A span's (a task of an
    aggregate job) is an aggregate that counts every one of its requests so
    (``ended_span``)."""
    span = read_span(task.url) if task.job in state.jobs.aggregate else None
    url = task.url if span is None else span.urls_from(0, 1)[0]
    record = make_task(task.id, task.job, url, task.attempt, task.timeout, task.submitted)
    result = make_result(
        record, worker=worker, started=wall, elapsed=0.0, error=make_error(kind, message)
    )
    if span is None:
        return StoredResult.of(result)
    return ended_span(result, span)


def ended_span(result: Record, span: Span) -> StoredAggregate:
    """The aggregate of a span the server ended: ``result`` for each of its requests,
    all of them failed (as a task's would be), so that the job's counts and its
    report agree."""
    summary = Summary()
    summary.add(result, count=span.count)
    record = Aggregate(
        id=result["id"],
        job=result["job"],
        attempt=result["attempt"],
        worker=result["worker"],
        first=span.first,
        requests=span.count,
        ok=0,
        failed=span.count,
        summary=summary.to_state(),
    )
    return StoredAggregate.of_struct(record)


def finish_task(state: BrokerState, result: Result) -> None:
    """The task is done: its result waits for an output."""
    state.ledger.done.add(result.id)
    job = state.jobs.find(result.job)
    assert job is not None, result.job
    job.count_result(result.ok)
    if job.requests is not None:
        job.requests.count(result)
    state.outbox.add(result)
