"""What happens when time runs out: lapsed leases and lapsed deliveries.

A lease not renewed in time puts its task back as its next attempt, or,
after the last attempt (or in a cancelled job), ends it as a failed result
of type ``lease_expired``.  A robots.txt fetch that lapses is asked again.
A delivery not confirmed in time goes back to the front of its job's
results.  As everywhere, the change is planned, journaled, and only then
applied; a plan the journal cannot take is filed away again.
"""

from __future__ import annotations

from fetchq.server import events
from fetchq.server.completion import ended_without_request, finish_task
from fetchq.server.leases import Lease
from fetchq.server.outbox import Delivery
from fetchq.server.state import BrokerState
from fetchq.wire.records import StoredResult

LEASE_EXPIRED = "lease_expired"
"""The error type of a task whose worker vanished on its last attempt."""


class Expiry:
    def __init__(self, state: BrokerState, now: float, wall: float) -> None:
        self.lapsed: list[Delivery] = state.outbox.lapsed(now)
        self.overdue: list[Lease] = state.leases.overdue(now)
        self.failures: dict[int, StoredResult] = {
            lease.id: _lease_expired_result(state, lease, wall)
            for lease in self.overdue
            if not lease.robots
            and (
                lease.task.attempt >= lease.task.attempts
                or state.scheduler.is_cancelled(lease.task.job)
            )
        }

    def __bool__(self) -> bool:
        return bool(self.lapsed or self.overdue)

    @property
    def tasks(self) -> int:
        """Leases of tasks that lapsed (robots.txt fetches not counted)."""
        return sum(1 for lease in self.overdue if not lease.robots)

    def events(self) -> list[events.Event]:
        written: list[events.Event] = [events.returned(d.token) for d in self.lapsed]
        for lease in self.overdue:
            failure = self.failures.get(lease.id)
            if lease.robots:
                continue  # nothing to keep: the fetch is simply asked again
            if failure is None:
                written.append(events.retry(lease.id, lease.attempt + 1, expired=True))
            else:
                written.append(events.result(failure))
        return written

    def apply(self, state: BrokerState) -> set[str]:
        """Make the change; returns the jobs whose outputs have new results to read."""
        state.outbox.give_back(self.lapsed)
        touched = {result.job for delivery in self.lapsed for result in delivery.results}
        for lease in self.overdue:
            if lease.robots:
                state.give_back(lease)
                continue
            job = state.jobs.find(lease.task.job)
            assert job is not None
            job.expired += 1
            failure = self.failures.get(lease.id)
            if failure is None:
                state.give_back(lease, lease.attempt + 1)
            else:
                state.end_lease(lease.id)
                finish_task(state, failure)
                touched.add(failure.job)
        return touched

    def refile(self, state: BrokerState) -> None:
        """Put everything back as it was: the next call tries again."""
        for delivery in self.lapsed:
            state.outbox.refile(delivery)
        for lease in self.overdue:
            state.leases.refile(lease)


def _lease_expired_result(state: BrokerState, lease: Lease, wall: float) -> StoredResult:
    task = lease.task
    message = (
        f"lease expired on worker {lease.worker} "
        f"(attempt {task.attempt} of {task.attempts}); giving up"
    )
    return ended_without_request(state, task, LEASE_EXPIRED, message, wall, worker=lease.worker)
