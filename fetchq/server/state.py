"""The broker's parts, held together: what the broker guards with its lock and what a
journal replay rebuilds."""

from __future__ import annotations

from dataclasses import dataclass, field

from fetchq.server import events
from fetchq.server.jobs import Job, JobTable
from fetchq.server.leases import Lease, LeaseTable
from fetchq.server.ledger import Ledger
from fetchq.server.outbox import Outbox
from fetchq.server.scheduler import Scheduler
from fetchq.server.workers import WorkerTable
from fetchq.wire.aggregates import span_size
from fetchq.wire.api import JobCounts


@dataclass
class BrokerState:
    ledger: Ledger
    scheduler: Scheduler = field(default_factory=Scheduler)
    leases: LeaseTable = field(default_factory=LeaseTable)
    outbox: Outbox = field(default_factory=Outbox)
    jobs: JobTable = field(default_factory=JobTable)
    workers: WorkerTable = field(default_factory=WorkerTable)
    steering: dict[tuple[str, str, str], events.Robots | events.Hold] = field(default_factory=dict)
    """The latest robots.txt and hold event per job and host, for snapshots."""

    def counts(self, job: Job) -> JobCounts:
        """A job's counters, gathered from the parts that hold its tasks and results."""
        waiting, handed_out, confirmed = self.outbox.counts(job.name)
        submitted, succeeded, failed = job.submitted, job.succeeded, job.failed
        queued, leased = self.scheduler.count(job.name), self.leases.count(job.name)
        if job.requests is not None:  # an aggregate job: its spans' requests
            requests = job.requests
            submitted, succeeded, failed = requests.submitted, requests.succeeded, requests.failed
            leased = sum(
                span_size(lease.task.url) for lease in self.leases if lease.task.job == job.name
            )
            queued = submitted - succeeded - failed - leased
        return {
            "submitted": submitted,
            "queued": queued,
            "leased": leased,
            "succeeded": succeeded,
            "failed": failed,
            "expired": job.expired,
            "waiting": waiting,
            "handed_out": handed_out,
            "confirmed": confirmed,
            "sealed": job.sealed,
            "done": job.sealed and confirmed == job.submitted,  # in tasks, spans or not
        }

    def end_lease(self, task_id: int) -> Lease | None:
        """A lease is over (its task finished, went back or lapsed): its host has room."""
        lease = self.leases.drop(task_id)
        if lease is not None:
            self.scheduler.lease_ended(lease.task.job, lease.host)
        return lease

    def give_back(self, lease: Lease, attempt: int | None = None) -> None:
        """End a lease and queue its work again: a robots.txt fetch is asked for anew,
        a task goes back in front (as ``attempt`` when given)."""
        self.end_lease(lease.id)
        if lease.robots:
            assert lease.host is not None
            self.scheduler.learn_robots(lease.task.job, lease.host, None)
        else:
            task = lease.task if attempt is None else lease.task._replace(attempt=attempt)
            self.scheduler.add_retry(task)

    def all_confirmed(self, name: str | None) -> bool:
        """The job (every job, for None) is sealed and each of its results confirmed."""
        if name is None:
            jobs = list(self.jobs)
        else:
            found = self.jobs.find(name)
            jobs = [found] if found is not None else []
        return bool(jobs) and all(self.counts(job)["done"] for job in jobs)
