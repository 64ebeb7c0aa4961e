"""The broker's parts, held together: what the broker guards with its lock and what a
journal replay rebuilds."""

from __future__ import annotations

from dataclasses import dataclass, field

from fetchq.api import JobCounts
from fetchq.server.jobs import Job, JobTable
from fetchq.server.leases import LeaseTable
from fetchq.server.ledger import Ledger
from fetchq.server.outbox import Outbox
from fetchq.server.taskqueue import TaskQueue
from fetchq.server.workers import WorkerTable


@dataclass
class BrokerState:
    ledger: Ledger
    queue: TaskQueue = field(default_factory=TaskQueue)
    leases: LeaseTable = field(default_factory=LeaseTable)
    outbox: Outbox = field(default_factory=Outbox)
    jobs: JobTable = field(default_factory=JobTable)
    workers: WorkerTable = field(default_factory=WorkerTable)

    def counts(self, job: Job) -> JobCounts:
        """A job's counters, gathered from the parts that hold its tasks and results."""
        waiting, handed_out, confirmed = self.outbox.counts(job.name)
        return {
            "submitted": job.submitted,
            "queued": self.queue.count(job.name),
            "leased": self.leases.count(job.name),
            "succeeded": job.succeeded,
            "failed": job.failed,
            "expired": job.expired,
            "waiting": waiting,
            "handed_out": handed_out,
            "confirmed": confirmed,
            "sealed": job.sealed,
            "complete": job.sealed and confirmed == job.submitted,
        }

    def all_confirmed(self, name: str | None) -> bool:
        """The job (every job, for None) is sealed and each of its results confirmed."""
        jobs = [job for job in self.jobs if name is None or job.name == name]
        return bool(jobs) and all(self.counts(job)["complete"] for job in jobs)
