"""What ``status`` shows: counts, state, pace and hosts of every job, and the fleet.

Pace, per job: the target rate, the rate achieved over the last whole seconds
(and over how many: ``achieved_over``, fewer for a young job, 0 before any), the requests that
started late and the worst lateness, and, from Little's law, how many requests
must be in flight to hold the rate (rate x mean service time: how long each
request holds a fetch thread) against the fetch threads the fleet has.
"""

from __future__ import annotations

import os
import threading

from fetchq.server.jobqueue import Policy
from fetchq.server.jobs import Job
from fetchq.server.state import BrokerState
from fetchq.server.steering import job_state
from fetchq.wire.api import (
    WORKER_GONE_AFTER,
    FleetCounts,
    JobView,
    PolicyView,
    ProcessUsage,
)

BUSIEST_HOSTS = 5
"""Hosts shown per job: those with the longest queues."""


def fleet_threads(state: BrokerState, now: float) -> int:
    return state.workers.threads(now, WORKER_GONE_AFTER)


def policy_view(policy: Policy) -> PolicyView:
    return {
        "rate": policy.rate,
        "stages": None if policy.stages is None else [list(stage) for stage in policy.stages],
        "per_host": policy.per_host,
        "host_delay": policy.host_delay,
        "obey_robots": policy.obey_robots,
        "retry_after": policy.retry_after,
        "aggregate": policy.aggregate,
    }


def job_view(state: BrokerState, job: Job, now: float) -> JobView:
    queue = state.scheduler.find(job.name)
    policy = queue.policy if queue is not None else Policy()
    pace = state.scheduler.paces.get(job.name)
    target = pace.rate_at(now, policy.rate) if pace is not None else policy.rate
    mean = job.pace.mean_elapsed(now)
    needed = round(target * mean, 1) if target and mean is not None else None
    counts = state.counts(job)
    return {
        **counts,
        "state": job_state(state, job.name, counts),
        "policy": policy_view(policy),
        "pace": {
            "target": target,
            "achieved": round(job.pace.rate(now), 1),
            "achieved_over": round(job.pace.measured_over(now), 1),
            "late": job.pace.late,
            "worst_lateness": round(job.pace.worst_lateness, 4),
            "mean_elapsed": mean,
            "needed_in_flight": needed,
        },
        "hosts": [
            {"host": host, "queued": queued, "in_flight": in_flight}
            for host, queued, in_flight in state.scheduler.busiest_hosts(job.name, BUSIEST_HOSTS)
        ],
    }


def status(state: BrokerState, now: float) -> FleetCounts:
    """The fleet at a glance.  Queued and leased are summed from the jobs' own counts,
    so that an aggregate job counts requests there too, not spans."""
    jobs = {job.name: job_view(state, job, now) for job in state.jobs}
    return {
        "queued": sum(view["queued"] for view in jobs.values()),
        "leased": sum(view["leased"] for view in jobs.values()),
        "unconfirmed": state.outbox.unconfirmed,
        "threads": fleet_threads(state, now),
        "jobs": jobs,
        "workers": state.workers.rows(now, state.leases.held_by()),
    }


def process_usage() -> ProcessUsage:
    """Threads and open descriptors of the server: a leak shows here first."""
    try:
        descriptors = len(os.listdir("/proc/self/fd"))
    except OSError:
        descriptors = -1
    return {"threads": threading.active_count(), "fds": descriptors}
