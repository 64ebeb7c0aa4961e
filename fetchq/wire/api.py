"""The broker's API as both sides see it: version, methods, limits, names.

Clients import this module and nothing of the server: a worker, dispatcher
or output process never loads the broker, the journal or the classic
queues.  The server checks every call against the same limits and the same
job-name rule that clients check before sending.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from typing import Any, NotRequired, Protocol, TypedDict

from fetchq import __version__
from fetchq.errors import UsageError

PROTOCOL = 5
"""Version of the broker API; a client and a server must speak the same one.

2: counters renamed (one meaning per name), leases renewed with the results
that report them, ``results`` replies whether the job is done.
3: scheduled starts, robots.txt tasks, Retry-After, steering jobs; JSON on the wire
instead of pickle (docs/PROTOCOL.md), errors as data.
4: one word per meaning: ``finish`` is ``seal`` (as the counter ``sealed``),
``control`` is ``steer``, the counter and reply field ``complete`` is ``done``
(as ``--until-done``), and complete's outcome ``retried`` is ``requeued``.
5: tasks may name a spec (method, headers, body: ``fetchq.wire.specs``), which
``submit`` carries once and ``specs`` hands to workers."""

METHODS = (
    "hello",
    "submit",
    "seal",
    "lease",
    "complete",
    "robots",
    "release",
    "results",
    "ack",
    "queued",
    "status",
    "job",
    "steer",
    "specs",
)
"""What clients may call on the broker: the whole wire API (``BrokerAPI`` types each)."""

MAX_SUBMIT = 100_000
"""URLs per submit, results per complete, and leases per renewal list."""

MAX_LEASE = 10_000
"""Tasks one lease call may take."""

MAX_WAIT = 30.0
"""Longest a call may wait on the server (clients wait a little longer for a reply)."""

MAX_TASK_TIMEOUT = 86_400.0
"""Longest a task's fetch may be given, in seconds: a day."""

MAX_RATE = 1_000_000.0
"""Highest rate a job may ask for, per second."""

MAX_PER_HOST = 100_000
"""Highest per-host cap."""

MAX_HOST_DELAY = 3600.0
"""Longest delay between two starts on one host, in seconds."""

MAX_FRAME = 64 << 20
"""Bytes in one frame either side will read: larger ones are refused unread.

A submit of 10,000 URLs is about 0.4 MB; the dispatcher also cuts its batches
at ``MAX_SUBMIT_BYTES`` so that the longest URLs still fit."""

MAX_SUBMIT_BYTES = 8 << 20
"""URL characters a dispatcher puts in one submit: even at four UTF-8 bytes each,
well inside ``MAX_FRAME``."""

MAX_DEPTH = 32
"""Deepest nesting of arrays and objects a frame may have (a request needs 4)."""

MAX_INTEGER = (1 << 63) - 1
"""Largest integer magnitude on the wire; task ids stay below 2**53, exact in
every language's JSON."""

MAX_JOB_NAME = 200

USER_AGENT = f"fetchq/{__version__}"
"""What every request says it is, robots.txt fetches included, and whom robots.txt
rules are read for."""

WORKER_GONE_AFTER = 60.0
"""Seconds since a worker's last call after which it shows as gone and its fetch
threads no longer count in the fleet's."""

RETRY_AFTER_STATUSES = frozenset({429, 503})
"""The answers whose Retry-After a result reports, and a job with retry_after obeys."""

LATE_AFTER = 0.010
"""Seconds after its scheduled time at which a request's start counts as late: the same
for the server's status and for the reports."""

ROBOTS_MAX_BYTES = 512 * 1024
"""The most of a robots.txt a worker reads (RFC 9309 asks parsers to take at least
500 KiB)."""

_JOB_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._:@+-]{{0,{MAX_JOB_NAME - 1}}}")

JOB_NAME_RULE = (
    f"letters, digits and . _ : @ + -, starting with a letter or digit, at most {MAX_JOB_NAME}"
)


def job_name_problem(name: object) -> str | None:
    """Why ``name`` cannot name a job, or None when it can: one rule for both sides."""
    if not isinstance(name, str) or not _JOB_NAME.fullmatch(name):
        return f"invalid job name {name!r}: use {JOB_NAME_RULE}"
    return None


def check_job_name(name: str) -> str:
    """A job name from a user: returned as is, or a usage error."""
    problem = job_name_problem(name)
    if problem:
        raise UsageError(problem)
    return name


class Outcome(enum.StrEnum):
    """What ``complete`` did with one reported result."""

    ACCEPTED = "accepted"
    """The task's first result: it is done and waits for an output."""
    REQUEUED = "requeued"
    """A connection-level failure with attempts left, or a 429/503 with Retry-After in
    a job that obeys it: the task is queued again."""
    DROPPED = "dropped"
    """A repeat, a stale attempt, or a task this server never leased."""


class JobCounts(TypedDict):
    """One job's counters, as ``job`` and ``status`` report them, each under one name.

    A submitted task is in exactly one of queued, leased, succeeded, failed;
    a finished task's result is in exactly one of waiting, handed_out,
    confirmed."""

    submitted: int
    """Tasks the server accepted.  For an aggregate job, whose tasks are spans, this and
    queued, leased, succeeded and failed count the spans' requests instead."""
    queued: int
    """Tasks waiting for a worker."""
    leased: int
    """Tasks a worker holds now."""
    succeeded: int
    """Tasks whose result is ok."""
    failed: int
    """Tasks whose result is not ok, after their last attempt."""
    expired: int
    """Leases that lapsed because their worker went quiet; the task moved on."""
    waiting: int
    """Results not yet handed to any output."""
    handed_out: int
    """Results handed to an output that has not confirmed writing them."""
    confirmed: int
    """Results an output confirmed it wrote: gone from the server."""
    sealed: bool
    """The dispatcher said the job's submission is finished."""
    done: bool
    """Sealed, and every task's result confirmed."""


Record = dict[str, Any]
"""A task or result record (``fetchq.wire.records``): plain JSON types, read with ``.get``."""
ReadRecord = Mapping[str, Any]
"""A record as a reader sees it: a dict, or the server's stored form of a result."""


class HelloReply(TypedDict):
    protocol: int
    version: str
    lease_timeout: float
    max_attempts: int
    max_body: int
    """Bytes in the largest body a task may send."""
    time: float
    """The server's Unix time, so a client can tell how far its clock is off."""


class SubmitReply(TypedDict):
    """``{"accepted": n, "first_id": id}``; ``{"accepted": 0, "full": true, "queued": n}``
    when the queue stayed full; a re-sent batch gets its first reply, ``duplicate``."""

    accepted: int
    first_id: NotRequired[int]
    ids: NotRequired[list[int]]
    """Each task's id, in the batch's order, for a batch whose ids are not one run (a
    store of several shards splits a job's batch by host), in place of ``first_id``."""
    full: NotRequired[bool]
    queued: NotRequired[int]
    duplicate: NotRequired[bool]
    reopened: NotRequired[bool]
    """The job was done, and this batch reopened it."""


class CompleteTally(TypedDict):
    """What ``complete`` did with a report: one count per ``Outcome``, and leases renewed."""

    accepted: int
    requeued: int
    dropped: int
    renewed: int


class RobotsReply(TypedDict):
    accepted: bool
    """False for a fetch whose lease had lapsed (it was asked of someone else)."""


class ResultsDelivery(TypedDict):
    """Results handed to an output under ``token`` (None when there are none), and
    whether the job is done."""

    results: Sequence[ReadRecord]
    done: bool
    token: str | None


class PolicyView(TypedDict):
    rate: float | None
    """With ``stages``, the rate past their end."""
    stages: list[list[float]] | None
    """A staged rate: ``[seconds, start rate, end rate]`` each."""
    per_host: int | None
    host_delay: float
    obey_robots: bool
    retry_after: bool
    aggregate: bool
    """Its tasks are spans whose workers send one aggregate each."""


class PaceView(TypedDict):
    target: float | None
    """The rate the job asks for now (a staged rate's where its stages are)."""
    achieved: float
    achieved_over: float
    """The whole seconds ``achieved`` was measured over (0: not measured yet)."""
    late: int
    worst_lateness: float
    mean_elapsed: float | None
    needed_in_flight: float | None


class HostRow(TypedDict):
    host: str
    queued: int
    in_flight: int


class JobView(JobCounts):
    """A job as ``steer`` replies and ``status`` lists it: its counts, state, policy, pace
    and busiest hosts."""

    state: str
    """open, sealed, done, paused or cancelled."""
    policy: PolicyView
    pace: PaceView
    hosts: list[HostRow]


class WorkerRow(TypedDict):
    worker: str
    last_seen_ago: float
    reported: int
    threads: int
    rate: float
    leased: int


class ProcessUsage(TypedDict):
    threads: int
    fds: int


class FleetCounts(TypedDict):
    """What the server holds and who works for it: ``status`` without the version and
    the process's own usage."""

    queued: int
    leased: int
    unconfirmed: int
    threads: int
    jobs: dict[str, JobView]
    workers: list[WorkerRow]


class StatusReply(FleetCounts):
    version: str
    process: ProcessUsage


class BrokerAPI(Protocol):
    """The broker as clients call it: one method per name in ``METHODS``.

    Here, with the wire, rather than with the server: the replies' types are what a
    client reads, and any broker (the embedded one, or one on a store) must give the
    same.  Arguments are as they arrive from the wire, checked by the broker."""

    def hello(self, client: dict[str, Any]) -> HelloReply: ...

    def submit(self, batch: dict[str, Any]) -> SubmitReply: ...

    def seal(self, job_name: str) -> JobCounts: ...

    def lease(self, worker: str, max_tasks: int, wait: float) -> list[Record]: ...

    def complete(
        self, worker: str, results: list[Record], renew: list[list[int]] | None = None
    ) -> CompleteTally: ...

    def robots(self, worker: str, report: dict[str, Any]) -> RobotsReply: ...

    def release(self, worker: str, leases: list[list[int]]) -> int: ...

    def results(
        self, job_name: str | None, max_results: int, wait: float, ack: str | None = None
    ) -> ResultsDelivery: ...

    def ack(self, token: str) -> int: ...

    def queued(self) -> int: ...

    def status(self) -> StatusReply: ...

    def job(self, job_name: str) -> JobCounts: ...

    def steer(self, job_name: str, change: dict[str, Any]) -> JobView: ...

    def specs(self, job_name: str, keys: list[str]) -> list[dict[str, Any]]: ...
