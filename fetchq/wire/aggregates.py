"""The aggregate record: what a worker sends for a span of an aggregate job.

A worker that fetches a span of requests sends one record for all of them
instead of a result each: the span's summary as counts and latency sketches,
which output and report merge with other aggregates and with results.  Its
shape is declared here once, as msgspec structs, so that whoever reads one
(the server as it arrives, an output, ``fetchq report`` from a file) checks
every field's type and bound in C while decoding.  What types cannot say
(a sketch's counts adding up, a known accuracy) the report's modules check as
they rebuild the summary.

The figures mean what the summary's do (docs/reports.md): each part is the
state of one object of :mod:`fetchq.report`.  Unbounded in a report, they are
bounded here, so a record from a hostile peer stays small in memory.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from fetchq.wire.api import MAX_INTEGER, MAX_JOB_NAME

AGGREGATE: Literal["aggregate"] = "aggregate"
"""The ``kind`` of a record that aggregates a span's requests."""

MAX_KEY = 5_000
"""Sketch bin keys a record may use: at the reports' accuracy, key 5,000 stands for
about 10**21 and key -5,000 for 10**-21.  Bins are kept densely from the lowest key
to the highest, so a bound on keys bounds the memory a record can ask for."""

MAX_BUCKETS = 500
"""Time buckets in a record, as in a report's timeline."""

MAX_PLACES = 400
"""Named places per table in a record: twice what a report's table keeps."""

MAX_KINDS = 1_000
"""Status codes, error types or reasons never requested, each."""

MAX_TEXT = 2_000
"""Characters of a place name, an error type or an error's example message."""

Count = Annotated[int, msgspec.Meta(ge=0, le=2**53)]
Number = Annotated[float, msgspec.Meta(ge=-1e300, le=1e300)]
"""A finite number (JSON has no infinity; a report's empty extremes are null)."""
Text = Annotated[str, msgspec.Meta(max_length=MAX_TEXT)]
Key = Annotated[int, msgspec.Meta(ge=-MAX_KEY, le=MAX_KEY)]
Bins = tuple[Key, Annotated[list[Count], msgspec.Meta(max_length=2 * MAX_KEY + 1)]]
"""A sketch store: the first bin's key, then one count per key from there."""


class _State(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    pass


class SketchState(_State):
    """A latency sketch (DDSketch): its accuracy, its bins for positive and negative
    values, its count of zeros, and its exact count, sum, min and max."""

    accuracy: float
    count: Count = 0
    sum: Number = 0.0
    zero: Count = 0
    min: Number | None = None
    max: Number | None = None
    positive: Bins | None = None
    negative: Bins | None = None


class TallyState(_State):
    """Requests counted together (a time bucket, a place, a run): ``Tally``."""

    latency: SketchState
    requests: Count = 0
    failed: Count = 0
    scheduled: Count = 0
    late: Count = 0
    first_start: Number | None = None
    last_end: Number | None = None
    response: SketchState | None = None


class TimelineState(_State):
    """Tallies by the slice of time they started in: bucket ``i`` starts at ``i * width``."""

    width: Annotated[float, msgspec.Meta(gt=0, le=1e12)]
    undated: TallyState
    buckets: Annotated[
        list[tuple[Annotated[int, msgspec.Meta(ge=0, le=MAX_INTEGER)], TallyState]],
        msgspec.Meta(max_length=MAX_BUCKETS),
    ] = msgspec.field(default_factory=list)


class PlacesState(_State):
    """Tallies by place, each with its weight in the table, and the rest as ``other``."""

    other: TallyState
    rows: Annotated[list[tuple[Text, Count, TallyState]], msgspec.Meta(max_length=MAX_PLACES)] = (
        msgspec.field(default_factory=list)
    )


class ScheduleState(_State):
    """The extremes of the schedule: latest start behind it, response times, due times."""

    worst_lateness: Number
    response_min: Number
    response_max: Number
    first_due: Number
    last_due: Number


class SummaryState(_State):
    """A summary of requests: ``fetchq.report.summary.Summary``."""

    timeline: TimelineState
    worker_hosts: PlacesState
    target_hosts: PlacesState
    bytes: Count = 0
    retried: Count = 0
    min: Number | None = None
    max: Number | None = None
    statuses: Annotated[dict[Text, Count], msgspec.Meta(max_length=MAX_KINDS)] = msgspec.field(
        default_factory=dict
    )
    errors: Annotated[dict[Text, tuple[Count, Text]], msgspec.Meta(max_length=MAX_KINDS)] = (
        msgspec.field(default_factory=dict)
    )
    """Error type -> count and one example message."""
    not_requested: Annotated[dict[Text, Count], msgspec.Meta(max_length=MAX_KINDS)] = msgspec.field(
        default_factory=dict
    )
    schedule: ScheduleState | None = None


class Aggregate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One record for a span of requests, as a worker reports it in place of results.

    ``id`` and ``attempt`` are the span's task's, as a result's are; ``requests``,
    ``ok`` and ``failed`` repeat the summary's totals, so the server counts a job's
    requests without reading the summary."""

    v: Literal[1] = 1
    kind: Literal["aggregate"] = "aggregate"
    id: Annotated[int, msgspec.Meta(ge=0, le=MAX_INTEGER)]
    job: Annotated[str, msgspec.Meta(max_length=MAX_JOB_NAME)]
    attempt: Annotated[int, msgspec.Meta(ge=1, le=MAX_INTEGER)] = 1
    worker: Text = ""
    first: Count
    """The index (in the job) of the span's first request."""
    requests: Count
    ok: Count
    failed: Count
    summary: SummaryState


decode_aggregate = msgspec.json.Decoder(Aggregate).decode
"""An aggregate record from its JSON text, checked; raises msgspec.DecodeError or
msgspec.ValidationError (a ValueError) with the path of what is wrong."""


def decode_summary(value: object) -> SummaryState:
    """A record's ``summary`` as read from a JSON line (dicts and lists), checked as
    ``decode_aggregate`` checks it; raises msgspec.ValidationError (a ValueError)."""
    return msgspec.convert(value, SummaryState)
