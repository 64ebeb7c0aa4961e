"""The task and result records: plain JSON-typed dicts with a version field.

These dicts are all that crosses the wire or reaches a file, so another
language only needs this page (and docs/records.md) to speak fetchq.  Readers
take every field with ``.get`` and a default, so that older records still
decode.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, NamedTuple

import msgspec

from fetchq.wire.api import LATE_AFTER, MAX_INTEGER

RECORD_VERSION = 1
"""Bumped when a field changes meaning; new optional fields do not bump it."""

TASK_FIELDS = ("v", "id", "job", "url", "attempt", "timeout", "submitted", "scheduled")
RESULT_FIELDS = (
    "v",
    "id",
    "job",
    "url",
    "ok",
    "status",
    "elapsed",
    "bytes",
    "error",
    "attempt",
    "worker",
    "started",
    "scheduled",
    "retry_after",
)

ROBOTS = "robots"
"""The ``kind`` of a task that asks a worker to fetch a host's robots.txt for a job."""


def make_task(
    task_id: int,
    job: str,
    url: str,
    attempt: int,
    timeout: float,
    submitted: float,
    scheduled: float | None = None,
) -> dict[str, Any]:
    """A task as a worker receives it: ``attempt`` counts from 1; ``scheduled`` is the
    server's Unix time before which the request must not start (None: at once)."""
    return {
        "v": RECORD_VERSION,
        "id": task_id,
        "job": job,
        "url": url,
        "attempt": attempt,
        "timeout": timeout,
        "submitted": submitted,
        "scheduled": scheduled,
    }


def make_error(kind: str, message: str) -> dict[str, str]:
    """The ``error`` field: a short machine-readable type and a readable line."""
    return {"type": kind, "message": message}


def is_ok_status(status: int | None) -> bool:
    """2xx and 3xx are answers the server meant; anything else is not ok."""
    return status is not None and 200 <= status < 400


def make_result(
    task: dict[str, Any],
    *,
    worker: str,
    started: float,
    elapsed: float,
    status: int | None = None,
    nbytes: int = 0,
    error: dict[str, str] | None = None,
    scheduled: float | None = None,
    retry_after: float | None = None,
) -> dict[str, Any]:
    """The result of one attempt at ``task``.

    ``scheduled`` is when the request was due, on the same clock as ``started``
    (the worker's); ``retry_after`` the seconds a 429 or 503 answer asked for."""
    return {
        "v": RECORD_VERSION,
        "id": task["id"],
        "job": task["job"],
        "url": task["url"],
        "ok": error is None and is_ok_status(status),
        "status": status,
        "elapsed": elapsed,
        "bytes": nbytes,
        "error": error,
        "attempt": task.get("attempt", 1),
        "worker": worker,
        "started": started,
        "scheduled": scheduled,
        "retry_after": retry_after,
    }


def worker_identity(pid: int | None = None) -> str:
    """``hostname:pid``: how results and status name a worker process (this one, or
    the one of ``pid`` on this host)."""
    return f"{socket.gethostname()}:{os.getpid() if pid is None else pid}"


RETRYABLE_ERRORS = frozenset(
    {"refused", "connect_timeout", "timeout", "reset", "connection", "protocol"}
)
"""Error types worth another attempt: the request may well succeed next time.

An HTTP status, even 500, is the server's answer and ends the task; so do
errors that another try cannot fix (``dns``, ``tls``, ``invalid_url``)."""


def is_retryable(result: Mapping[str, Any]) -> bool:
    error = result.get("error")
    return isinstance(error, dict) and error.get("type") in RETRYABLE_ERRORS


CANCELLED = "cancelled"
"""The error type of a task that ended because its job was cancelled."""

ROBOTS_REFUSED = "robots"
"""The error type of a task robots.txt forbids."""

NOT_REQUESTED = frozenset({CANCELLED, ROBOTS_REFUSED})
"""Error types of the results the server makes for tasks it ends before any request:
such a result says why the URL was not fetched, and is no request (elapsed 0, worker
``server``)."""


def not_requested(result: Mapping[str, Any]) -> str | None:
    """The error type of a result whose task was never requested, else None."""
    error = result.get("error")
    if error is None:
        return None
    kind = error.get("type") if isinstance(error, dict) else None
    return kind if kind in NOT_REQUESTED else None


_NUMBER = (int, float)
"""For isinstance: a tuple of types is checked faster than ``int | float``."""


class Lateness(NamedTuple):
    """How a request's start compares with its scheduled start."""

    seconds: float
    """Started this long after the schedule (negative: before it)."""
    late: bool
    """More than LATE_AFTER after: what status and the reports count as a late start."""


def lateness(result: Mapping[str, Any]) -> Lateness | None:
    """The lateness of a result's start; None for a result without a schedule."""
    scheduled = result.get("scheduled")
    if scheduled is None:  # most results: a job without a rate
        return None
    started = result.get("started")
    if not isinstance(scheduled, _NUMBER) or not isinstance(started, _NUMBER):
        return None
    seconds = started - scheduled
    return Lateness(seconds, seconds > LATE_AFTER)


def late_by(scheduled: object, started: object) -> Lateness | None:
    """How late a start was against its schedule (None without a schedule)."""
    if not isinstance(scheduled, _NUMBER) or not isinstance(started, _NUMBER):
        return None
    seconds = started - scheduled
    return Lateness(seconds, seconds > LATE_AFTER)


_Integer = Annotated[int, msgspec.Meta(ge=-MAX_INTEGER, le=MAX_INTEGER)]
_Seconds = Annotated[float, msgspec.Meta(ge=-MAX_INTEGER, le=MAX_INTEGER)]
"""Within the integers' range: a number beyond it goes the checked way (a float out
of this range is still taken there; an integer is refused)."""
_Plain = str | _Integer | float | bool | None


class ResultHead(msgspec.Struct, forbid_unknown_fields=True):
    """A result with the fields fetchq's workers send, each of its type: what the server
    decodes a worker's results into, in C.  A result with other fields, or fields of
    other types, is read the general way instead (``StoredResult.of``)."""

    id: _Integer
    job: str = ""
    url: str = ""
    ok: bool = False
    status: _Integer | None = None
    elapsed: _Seconds | None = None
    bytes: _Integer | None = None
    error: dict[str, _Plain] | None = None
    attempt: _Integer = 1
    worker: str = ""
    started: _Seconds | None = None
    scheduled: _Seconds | None = None
    retry_after: _Seconds | None = None
    v: _Integer = RECORD_VERSION


_read = msgspec.json.Decoder()
_read_head = msgspec.json.Decoder(ResultHead)
_write = msgspec.json.Encoder()


def _number(value: object) -> float | None:
    """A field that should be a number, as one (None when it is not)."""
    if type(value) is float or type(value) is int:
        return float(value)
    return None


def _head_of(result: Mapping[str, Any]) -> ResultHead:
    error, attempt, status = result.get("error"), result.get("attempt", 1), result.get("status")
    return ResultHead(
        id=result["id"],
        job=str(result.get("job") or ""),
        url=str(result.get("url") or ""),
        ok=bool(result.get("ok")),
        status=status if type(status) is int else None,
        error=error if isinstance(error, dict) else None,
        attempt=attempt if type(attempt) is int else 1,
        elapsed=_number(result.get("elapsed")),
        started=_number(result.get("started")),
        scheduled=_number(result.get("scheduled")),
        retry_after=_number(result.get("retry_after")),
    )


class StoredResult(Mapping[str, Any]):
    """A result as the server keeps it and hands it on: its JSON text, checked once when
    it arrived, and its fields as decoded then (``head``).

    The text goes to the output (and to the journal) as it came: the server does not
    build the record again to send it.  As a ``Mapping`` it reads like the dict it
    was (a test, a classic client), decoded from the text when asked."""

    __slots__ = ("attempt", "head", "id", "job", "ok", "raw")

    def __init__(self, raw: bytes, head: ResultHead) -> None:
        self.raw = raw
        """The result's JSON text, checked."""
        self.head = head
        self.id = head.id
        self.job = head.job
        """As the worker said: the server sets it from its own record of the task."""
        self.attempt = head.attempt
        self.ok = head.ok

    @classmethod
    def of(cls, result: Mapping[str, Any]) -> StoredResult:
        """A result the server made, read back (a journal) or was handed in process, in
        the form it keeps; raises TypeError or ValueError when it is no JSON."""
        if isinstance(result, StoredResult):
            return result
        return cls(_write.encode(result), _head_of(result))

    @classmethod
    def read(cls, raw: bytes) -> StoredResult:
        """A result kept as its text elsewhere (a store), taken back as it was written:
        decoded in C when it has the fields fetchq's workers send, else field by field."""
        try:
            return cls(raw, _read_head.decode(raw))
        except msgspec.ValidationError:
            return cls(raw, _head_of(_read.decode(raw)))

    def with_job(self, job: str) -> StoredResult:
        """The same result under the job the server's own record names."""
        return StoredResult(
            _write.encode({**self.record, "job": job}), msgspec.structs.replace(self.head, job=job)
        )

    @property
    def status(self) -> int | None:
        return self.head.status

    @property
    def url(self) -> str:
        return self.head.url

    @property
    def elapsed(self) -> float | None:
        return self.head.elapsed

    @property
    def retry_after(self) -> float | None:
        return self.head.retry_after

    @property
    def retryable(self) -> bool:
        error = self.head.error
        return error is not None and error.get("type") in RETRYABLE_ERRORS

    def lateness(self) -> Lateness | None:
        head = self.head
        return None if head.scheduled is None else late_by(head.scheduled, head.started)

    @property
    def record(self) -> dict[str, Any]:
        record: dict[str, Any] = _read.decode(self.raw)
        return record

    def __getitem__(self, key: str) -> Any:
        return self.record[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.record.get(key, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self.record)

    def __len__(self) -> int:
        return len(self.record)

    def __repr__(self) -> str:
        return f"StoredResult({self.raw.decode('utf-8', 'replace')})"
