"""What a reported result does to its task: the rules of ``complete``.

The first result for a task wins and later ones are dropped.  A
connection-level failure with attempts left queues the task again instead;
one from an attempt that is no longer current is dropped.  Results of one
call are judged as if they came one by one, but nothing changes until the
journal has taken the whole call (``judge`` first, then ``apply`` each).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from fetchq.api import Outcome
from fetchq.records import is_retryable
from fetchq.server.state import BrokerState

Result = dict[str, Any]


class Verdict(NamedTuple):
    result: Result
    outcome: Outcome
    event: bytes | None
    """The journal line to write for it (None: nothing to write)."""


def judge(
    state: BrokerState,
    results: list[Result],
    lines: list[bytes | None],
    encode: Callable[[dict[str, Any]], bytes | None],
) -> list[Verdict]:
    """Decide each result's outcome without changing anything.

    ``lines`` are the results' journal events if already encoded (or None);
    ``encode`` makes the others (None when there is no journal)."""
    verdicts: list[Verdict] = []
    settled: set[int] = set()
    """Tasks an earlier result of this call finished or queued again: no lease now."""
    finished: set[int] = set()
    for result, line in zip(results, lines, strict=True):
        task_id = result["id"]
        if not state.ledger.known(task_id):
            verdicts.append(Verdict(result, Outcome.DROPPED, None))  # an earlier server run's
            continue
        attempt = result.get("attempt", 1)
        lease = None if task_id in settled else state.leases.get(task_id)
        current = lease is not None and lease.held_as(attempt)
        if task_id in state.ledger.done or task_id in finished:
            verdicts.append(Verdict(result, Outcome.DROPPED, None))
        elif is_retryable(result) and not current:
            verdicts.append(Verdict(result, Outcome.DROPPED, None))  # a stale attempt failed
        elif is_retryable(result) and lease is not None and attempt < lease.task.attempts:
            retry = encode({"k": "retry", "id": task_id, "attempt": attempt + 1})
            verdicts.append(Verdict(result, Outcome.RETRIED, retry))
            settled.add(task_id)
        else:
            job = state.ledger.job_of(task_id)
            if result.get("job") != job:  # the server's record of the task is the authority
                result["job"] = job
                line = None
            event = encode({"k": "result", "r": result}) if line is None else line
            verdicts.append(Verdict(result, Outcome.ACCEPTED, event))
            settled.add(task_id)
            finished.add(task_id)
    return verdicts


def apply(state: BrokerState, verdict: Verdict) -> None:
    result, outcome = verdict.result, verdict.outcome
    task_id = result["id"]
    lease = state.leases.get(task_id)
    if outcome is Outcome.DROPPED:
        if lease is not None and task_id in state.ledger.done:
            state.leases.drop(task_id)  # a lease left on a finished task ends with it
    elif outcome is Outcome.RETRIED:
        assert lease is not None
        state.leases.drop(task_id)
        state.queue.add_retry(lease.task._replace(attempt=lease.task.attempt + 1))
    else:
        if lease is None:  # its lease had expired: the queued copy is stale now
            state.queue.forget(result["job"])
        else:
            state.leases.drop(task_id)
        finish_task(state, result)


def finish_task(state: BrokerState, result: Result) -> None:
    """The task is done: its result waits for an output."""
    state.ledger.done.add(result["id"])
    job = state.jobs.find(result["job"])
    assert job is not None, result["job"]
    job.count_result(bool(result.get("ok")))
    state.outbox.add(result)
