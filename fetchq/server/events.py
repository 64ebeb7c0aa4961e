"""The journal's vocabulary: every kind of event, its fields, and the one function
that builds it.

The broker writes events before it changes anything; a restart replays them
(``recovery``); a compaction writes the live state as the fewest events that
replay to it.  Every writer builds its events here and the replay reads the
same names, so an event's shape is said once.  A field added must default
when read (older journals lack it); a field renamed or an event's meaning
changed bumps ``journal.FORMAT_VERSION``, and the replay keeps reading the
old form.

Kinds, by who writes them:

- calls: ``submit``, ``seal``, ``retry``, ``result``, ``hand``, ``return``, ``ack``,
  ``lease`` and ``release`` (of leases on hosts with limits), and the steering events
  ``policy``, ``pause``, ``resume``, ``cancel``, ``robots``, ``hold`` (``steering``
  applies these, live and replayed alike);
- compaction only: ``job`` (a job's counters), ``range`` (the job of a run of ids),
  ``batch`` (a batch id's reply), ``task`` (a task not yet done), ``unconfirmed``
  (a result no output confirmed).
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

from fetchq.server.jobqueue import Policy
from fetchq.server.tasks import Task
from fetchq.wire.api import ReadRecord, SubmitReply

SUBMIT: Literal["submit"] = "submit"
SEAL: Literal["seal"] = "seal"
SEAL_BEFORE_V3 = "finish"
"""What journals of format 1 and 2 call ``seal``."""
RETRY: Literal["retry"] = "retry"
RESULT: Literal["result"] = "result"
HAND: Literal["hand"] = "hand"
RETURN: Literal["return"] = "return"
ACK: Literal["ack"] = "ack"
POLICY: Literal["policy"] = "policy"
PAUSE: Literal["pause"] = "pause"
RESUME: Literal["resume"] = "resume"
CANCEL: Literal["cancel"] = "cancel"
ROBOTS: Literal["robots"] = "robots"
HOLD: Literal["hold"] = "hold"
JOB: Literal["job"] = "job"
RANGE: Literal["range"] = "range"
BATCH: Literal["batch"] = "batch"
TASK: Literal["task"] = "task"
UNCONFIRMED: Literal["unconfirmed"] = "unconfirmed"
LEASE: Literal["lease"] = "lease"
RELEASE: Literal["release"] = "release"
SPEC: Literal["spec"] = "spec"

STEERING = (POLICY, PAUSE, RESUME, CANCEL, ROBOTS, HOLD)
"""The events ``steering.apply`` makes so."""
KINDS: tuple[str, ...] = (
    *(SUBMIT, SPEC, SEAL, RETRY, RESULT, HAND, RETURN, ACK, LEASE, RELEASE),
    *STEERING,
    *(JOB, RANGE, BATCH, TASK, UNCONFIRMED),
)
"""Every kind a journal of the current format may hold (after its header)."""


class Submit(TypedDict):
    k: Literal["submit"]
    job: str
    first: int
    """The first task's id; the others follow one by one, in the order of ``urls``."""
    urls: list[str]
    attempts: int
    timeout: float
    at: float
    batch: str | None
    reopened: NotRequired[bool]
    """The batch reopened a done job: its reply says so again if re-sent after a restart."""
    spec: NotRequired[str]
    """The key of the spec its tasks send (absent: a bare GET)."""


def submit(
    job: str,
    first: int,
    urls: list[str],
    attempts: int,
    timeout: float,
    at: float,
    batch: str | None,
    *,
    reopened: bool = False,
    spec: str | None = None,
) -> Submit:
    event: Submit = {
        "k": SUBMIT,
        "job": job,
        "first": first,
        "urls": urls,
        "attempts": attempts,
        "timeout": timeout,
        "at": at,
        "batch": batch,
    }
    if reopened:
        event["reopened"] = True
    if spec is not None:
        event["spec"] = spec
    return event


class SpecEvent(TypedDict):
    """A job's new spec, as the wire carries it (header values included: the journal
    is the operator's, mode 0600)."""

    k: Literal["spec"]
    job: str
    spec: dict[str, Any]


def spec(job: str, record: dict[str, Any]) -> SpecEvent:
    return {"k": SPEC, "job": job, "spec": record}


class Seal(TypedDict):
    k: Literal["seal"]
    job: str


def seal(job: str) -> Seal:
    return {"k": SEAL, "job": job}


class Retry(TypedDict):
    """The task is queued again as ``attempt`` (``expired``: because its lease lapsed)."""

    k: Literal["retry"]
    id: int
    attempt: int
    expired: NotRequired[bool]


def retry(task_id: int, attempt: int, *, expired: bool = False) -> Retry:
    event: Retry = {"k": RETRY, "id": task_id, "attempt": attempt}
    if expired:
        event["expired"] = True
    return event


class Result(TypedDict):
    """The task is done: ``r`` is its result, waiting for an output."""

    k: Literal["result"]
    r: ReadRecord


def result(record: ReadRecord) -> Result:
    return {"k": RESULT, "r": record}


class Hand(TypedDict):
    """Results handed to an output under ``token``."""

    k: Literal["hand"]
    token: str
    ids: list[int]


def hand(token: str, ids: list[int]) -> Hand:
    return {"k": HAND, "token": token, "ids": ids}


class Return(TypedDict):
    """A delivery not confirmed in time: its results wait again."""

    k: Literal["return"]
    token: str


def returned(token: str) -> Return:
    return {"k": RETURN, "token": token}


class Ack(TypedDict):
    """An output confirmed a delivery: its results are gone from the server."""

    k: Literal["ack"]
    token: str
    ids: list[int]


def ack(token: str, ids: list[int]) -> Ack:
    return {"k": ACK, "token": token, "ids": ids}


class PolicyEvent(TypedDict):
    """A job's whole policy (``jobqueue.Policy``'s fields), as set from then on."""

    k: Literal["policy"]
    job: str
    rate: float | None
    per_host: int | None
    host_delay: float
    obey_robots: bool
    retry_after: bool
    aggregate: NotRequired[bool]
    stages: NotRequired[list[list[float]]]
    """A staged rate (``rate`` is then the rate past its end)."""


def policy(job: str, rules: Policy) -> PolicyEvent:
    event: PolicyEvent = {
        "k": POLICY,
        "job": job,
        "rate": rules.rate,
        "per_host": rules.per_host,
        "host_delay": rules.host_delay,
        "obey_robots": rules.obey_robots,
        "retry_after": rules.retry_after,
        "aggregate": rules.aggregate,
    }
    if rules.stages is not None:
        event["stages"] = [list(stage) for stage in rules.stages]
    return event


class Switch(TypedDict):
    """``pause``, ``resume`` or ``cancel`` a job."""

    k: Literal["pause", "resume", "cancel"]
    job: str


def switch(kind: Literal["pause", "resume", "cancel"], job: str) -> Switch:
    return {"k": kind, "job": job}


class Robots(TypedDict):
    """What a worker fetched as ``host``'s robots.txt for a job (``last``: its last try)."""

    k: Literal["robots"]
    job: str
    host: str
    status: int | None
    body: str | None
    error: dict[str, Any] | None
    last: bool


def robots(job: str, host: str, report: dict[str, Any], *, last: bool) -> Robots:
    return {
        "k": ROBOTS,
        "job": job,
        "host": host,
        "status": report.get("status"),
        "body": report.get("body"),
        "error": report.get("error"),
        "last": last,
    }


class Hold(TypedDict):
    """A site's Retry-After: no request of the job to the URL's host before ``until``
    (Unix time)."""

    k: Literal["hold"]
    job: str
    url: str
    until: float


def hold(job: str, url: str, until: float) -> Hold:
    return {"k": HOLD, "job": job, "url": url, "until": until}


SteeringEvent = PolicyEvent | Switch | Robots | Hold


class JobEvent(TypedDict):
    """A job's own counters, as a compaction found them."""

    k: Literal["job"]
    job: str
    created: float
    submitted: int
    succeeded: int
    failed: int
    expired: int
    confirmed: int
    sealed: bool
    requests: NotRequired[list[int]]
    """An aggregate job's requests: submitted, succeeded, failed."""


def job(
    name: str,
    *,
    created: float,
    submitted: int,
    succeeded: int,
    failed: int,
    expired: int,
    confirmed: int,
    sealed: bool,
    requests: tuple[int, int, int] | None = None,
) -> JobEvent:
    event: JobEvent = {
        "k": JOB,
        "job": name,
        "created": created,
        "submitted": submitted,
        "succeeded": succeeded,
        "failed": failed,
        "expired": expired,
        "confirmed": confirmed,
        "sealed": sealed,
    }
    if requests is not None:
        event["requests"] = list(requests)
    return event


class Range(TypedDict):
    """Ids from ``first`` on belong to ``job`` (up to the next range's first)."""

    k: Literal["range"]
    first: int
    job: str
    spec: NotRequired[str]
    """The key of the spec the range's tasks send (absent: a bare GET)."""


def id_range(first: int, job: str, spec: str | None = None) -> Range:
    event: Range = {"k": RANGE, "first": first, "job": job}
    if spec is not None:
        event["spec"] = spec
    return event


class Batch(TypedDict):
    """A batch id seen, and the reply its submit got: a re-sent batch gets it again."""

    k: Literal["batch"]
    batch: str
    reply: SubmitReply


def batch(batch_id: str, reply: SubmitReply) -> Batch:
    return {"k": BATCH, "batch": batch_id, "reply": reply}


class TaskEvent(TypedDict):
    """A task not yet done, with its current attempt (``tasks.Task``'s fields)."""

    k: Literal["task"]
    id: int
    job: str
    url: str
    attempt: int
    attempts: int
    timeout: float
    submitted: float


def task(queued: Task) -> TaskEvent:
    return {
        "k": TASK,
        "id": queued.id,
        "job": queued.job,
        "url": queued.url,
        "attempt": queued.attempt,
        "attempts": queued.attempts,
        "timeout": queued.timeout,
        "submitted": queued.submitted,
    }


class Unconfirmed(TypedDict):
    """A result no output has confirmed yet (handed out or waiting)."""

    k: Literal["unconfirmed"]
    r: ReadRecord


def unconfirmed(record: ReadRecord) -> Unconfirmed:
    return {"k": UNCONFIRMED, "r": record}


class Lease(TypedDict):
    """Leases on hosts with limits, granted or renewed: ``[id, attempt, deadline]``, the
    deadline in Unix time.  A restart counts them against their hosts until they are
    reported, released or would have lapsed, since their worker may still run them."""

    k: Literal["lease"]
    w: str
    leases: list[list[Any]]


def lease(worker: str, leases: list[list[Any]]) -> Lease:
    return {"k": LEASE, "w": worker, "leases": leases}


class Release(TypedDict):
    """Leases on hosts with limits given back unstarted: ``[id, attempt]``."""

    k: Literal["release"]
    leases: list[list[int]]


def release(leases: list[list[int]]) -> Release:
    return {"k": RELEASE, "leases": leases}


Event = (
    Submit
    | SpecEvent
    | Seal
    | Retry
    | Result
    | Hand
    | Return
    | Ack
    | SteeringEvent
    | JobEvent
    | Range
    | Batch
    | TaskEvent
    | Unconfirmed
    | Lease
    | Release
)
"""Any event after a journal's header."""
