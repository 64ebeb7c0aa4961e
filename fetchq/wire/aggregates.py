"""Aggregate jobs on the wire: the spans workers lease, and the record they send back.

An aggregate job's tasks are spans: each stands for ``count`` requests, the
template's URLs for indices ``first`` .. ``first + count - 1``, and is leased,
renewed, lapsed and counted as one task.  A worker expands a span itself.

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

import math
from typing import Annotated, Literal

import msgspec

from fetchq.urls import template_range
from fetchq.wire.api import MAX_INTEGER, MAX_JOB_NAME
from fetchq.wire.records import ResultHead, StoredResult

AGGREGATE: Literal["aggregate"] = "aggregate"
"""The ``kind`` of a record that aggregates a span's requests."""

SPAN = "span"
"""The ``kind`` of a leased task that is a span, and the capability a worker names in
``hello`` (``"runs": ["span"]``) to be leased any: a worker that does not name it is
never leased one."""

MAX_SPAN = 100_000
"""Requests one span may stand for."""

NOT_WITH_AGGREGATE = {
    "per_host": "--per-host",
    "host_delay": "--host-delay",
    "obey_robots": "--obey-robots",
    "retry_after": "--retry-after",
    "stages": "a staged --rate",
}
"""The politeness an aggregate job does not take yet (a job's policy field, and the
option that sets it): a worker runs a span's requests without asking the server,
so the server cannot count them by host.  A rate it can keep: each span carries
its schedule (see ``fetchq.server.jobqueue.Rounds``)."""

MAX_TEMPLATE = 8_192
"""Characters of a span's URL template (a URL's limit)."""


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

FIRST_WIDTH = 1.0
"""Seconds a time bucket is wide at first; a record's is this doubled, 0 or more times."""

MAX_KEY_WINDOW = 7_000
"""Bin keys from the lowest to the highest in one record, for positive values and for
negative ones: the whole range a report sketches (``fetchq.report.sketch``: 10**-12
to 10**18 seconds).  Merged, a record's sketches never make a store of more bins."""

Count = Annotated[int, msgspec.Meta(ge=0, le=2**53)]
Time = Annotated[float, msgspec.Meta(ge=-1e10, le=1e11)]
"""A Unix time (0: none known), between the years 1653 and 5138: any a report can
write as a date."""
Number = Annotated[float, msgspec.Meta(ge=-1e300, le=1e300)]
"""A finite number (JSON has no infinity; a report's empty extremes are null)."""
Text = Annotated[str, msgspec.Meta(max_length=MAX_TEXT)]
Key = Annotated[int, msgspec.Meta(ge=-MAX_KEY, le=MAX_KEY)]
Bins = tuple[Key, Annotated[list[Count], msgspec.Meta(max_length=2 * MAX_KEY + 1)]]
"""A sketch store: the first bin's key, then one count per key from there."""


Url = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TEMPLATE)]


class Span(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Requests ``first`` .. ``first + count - 1`` of an aggregate job: the URLs its
    ``template`` makes with ``{i}`` replaced by each index, or its ``urls`` (a run of
    the URLs a file or the command line gave, ``first`` the index of its first)."""

    first: Annotated[int, msgspec.Meta(ge=0, le=2**53)]
    count: Annotated[int, msgspec.Meta(ge=1, le=MAX_SPAN)]
    template: Annotated[str, msgspec.Meta(max_length=MAX_TEMPLATE)] = ""
    urls: Annotated[list[Url], msgspec.Meta(max_length=MAX_SPAN)] | None = None

    def __post_init__(self) -> None:
        if self.urls is None:
            if not self.template:
                raise ValueError("a span needs a template or urls")
        elif self.template:
            raise ValueError("a span has a template or urls, not both")
        elif len(self.urls) != self.count:
            raise ValueError(f"a span of {self.count} requests with {len(self.urls)} urls")

    def request_urls(self) -> list[str]:
        return self.urls_from(0, self.count)

    def urls_from(self, start: int, count: int) -> list[str]:
        """``count`` of its URLs, from its ``start``-th on."""
        if self.urls is not None:
            return self.urls[start : start + count]
        return template_range(self.template, self.first + start, count)


_span_encoder = msgspec.json.Encoder()
_span_decoder = msgspec.json.Decoder(Span)


def span_text(span: Span) -> str:
    """A span as the server keeps it, in place of a task's URL: its JSON text."""
    return _span_encoder.encode(span).decode()


def read_span(text: str) -> Span:
    """The span ``span_text`` wrote; raises msgspec.DecodeError (a ValueError)."""
    return _span_decoder.decode(text)


def spans_of(value: object) -> list[Span]:
    """A submit's ``spans``, checked; raises msgspec.ValidationError (a ValueError)."""
    return msgspec.convert(value, list[Span])


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
    first_start: Time | None = None
    last_end: Time | None = None
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
    """Tallies by place, each with its weight in the table, and the rest as ``other``;
    or ``whole``, the one place of every request the summary counts over time (a
    span's, most often: one worker, one target host), whose tally is the sum of
    the time buckets' and is not written twice."""

    other: TallyState
    rows: Annotated[list[tuple[Text, Count, TallyState]], msgspec.Meta(max_length=MAX_PLACES)] = (
        msgspec.field(default_factory=list)
    )
    whole: Text | None = None


class ScheduleState(_State):
    """The extremes of the schedule: latest start behind it, response times, due times."""

    worst_lateness: Number
    response_min: Number
    response_max: Number
    first_due: Time
    last_due: Time


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
    requests: Annotated[int, msgspec.Meta(ge=1, le=MAX_SPAN)]
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


MAX_AGGREGATE_TEXT = 4 << 20
"""Bytes of one aggregate's JSON text: a span's record is tens of kilobytes, and one of
every bucket and place at their limits stays within this."""

_write = msgspec.json.Encoder()


class StoredAggregate(StoredResult):
    """An aggregate as the server keeps it: its text, checked, and the fields the rules
    of ``complete`` read (its span's id, attempt and job, and an answer to keep, as a
    result with a status is), with the requests it counts as succeeded and failed.

    What ``fetchq status`` tells of a job's pace it reads here as from a result: the
    requests' service time (``head.elapsed``, summed), and their late starts."""

    __slots__ = ("counts", "late", "worst_lateness")

    def __init__(self, raw: bytes, record: Aggregate) -> None:
        timeline = record.summary.timeline
        tallies = [timeline.undated, *(tally for _, tally in timeline.buckets)]
        super().__init__(
            raw,
            ResultHead(
                id=record.id,
                job=record.job,
                ok=True,
                attempt=record.attempt,
                worker=record.worker,
                elapsed=sum(tally.latency.sum for tally in tallies),
            ),
        )
        self.counts = (record.ok, record.failed)
        self.late = sum(tally.late for tally in tallies)
        schedule = record.summary.schedule
        self.worst_lateness = 0.0 if schedule is None else schedule.worst_lateness

    @classmethod
    def read(cls, raw: bytes) -> StoredAggregate:
        """An aggregate from its text, checked; raises ValueError when it is no aggregate
        (msgspec's errors are ValueErrors, and say where)."""
        return cls.checked(raw, decode_aggregate(raw))

    @classmethod
    def checked(cls, raw: bytes, record: Aggregate) -> StoredAggregate:
        """``raw``, decoded as ``record``, once what its types cannot say is checked too;
        raises ValueError."""
        if len(raw) > MAX_AGGREGATE_TEXT:
            raise ValueError(f"an aggregate of {len(raw)} bytes (at most {MAX_AGGREGATE_TEXT})")
        if record.ok + record.failed != record.requests:
            raise ValueError("an aggregate whose ok and failed requests do not add up")
        check_summary(record)
        return cls(raw, record)

    @classmethod
    def of_struct(cls, record: Aggregate) -> StoredAggregate:
        """An aggregate the server made itself."""
        return cls.checked(_write.encode(record), record)

    @classmethod
    def of_record(cls, record: dict[str, object]) -> StoredAggregate:
        """``read``, for an aggregate decoded as a dict (the general way)."""
        return cls.read(_write.encode(record))

    def with_job(self, job: str) -> StoredAggregate:
        record = decode_aggregate(self.raw)
        record.job = job
        return StoredAggregate(_write.encode(record), record)


def check_summary(record: Aggregate) -> None:
    """What the schema cannot say of an aggregate's summary, checked in a few steps a
    time bucket and a place, so that an output never meets a summary it cannot read:
    raises ValueError.  Its tallies count each of its requests once, over time and in
    each place table (but those never requested); no bucket index or place comes
    twice; the timeline's width is 1 s doubled; its sketches' keys lie within
    MAX_KEY_WINDOW, and each counts its tally's requests."""
    summary = record.summary
    timeline = summary.timeline
    check_width(timeline.width)
    buckets = [tally for _, tally in timeline.buckets]
    if len({index for index, _ in timeline.buckets}) != len(buckets):
        raise ValueError("a time bucket given twice")
    tallies = [*buckets, timeline.undated]
    _same_totals("its time buckets", tallies, record)
    for name, table in (("worker", summary.worker_hosts), ("target", summary.target_hosts)):
        if table.whole is not None:
            if table.rows or table.other.requests:
                raise ValueError(f"a {name} host of every request, and other {name} hosts")
            continue
        rows = [tally for _, _, tally in table.rows]
        if len({place for place, _, _ in table.rows}) != len(rows):
            raise ValueError(f"a {name} host given twice")
        _same_totals(f"its {name} hosts", [*rows, table.other], record)
        tallies += [*rows, table.other]
    keys: dict[bool, list[int]] = {True: [], False: []}
    for tally in tallies:
        if tally.latency.count != tally.requests:
            raise ValueError("a tally whose latencies are not one per request")
        for sketch in (tally.latency, tally.response):
            if sketch is None:
                continue
            for positive, bins in ((True, sketch.positive), (False, sketch.negative)):
                if bins is not None:
                    keys[positive] += [bins[0], bins[0] + len(bins[1]) - 1]
    for found in keys.values():
        if found and max(found) - min(found) > MAX_KEY_WINDOW:
            raise ValueError(f"sketch keys more than {MAX_KEY_WINDOW} apart")


def check_width(width: float) -> None:
    """ValueError unless a timeline ``width`` is FIRST_WIDTH doubled, 0 or more times."""
    ratio = width / FIRST_WIDTH
    if ratio < 1 or ratio != 2 ** round(math.log2(ratio)):
        raise ValueError(f"a timeline {width} s wide: not {FIRST_WIDTH} s doubled")


def _same_totals(what: str, tallies: list[TallyState], record: Aggregate) -> None:
    """The tallies count the aggregate's requests (those never requested, which a
    server-made aggregate may hold, count as failed and in no tally)."""
    skipped = sum(record.summary.not_requested.values())
    requests = sum(tally.requests for tally in tallies) + skipped
    failed = sum(tally.failed for tally in tallies) + skipped
    if (requests, failed) != (record.requests, record.failed):
        raise ValueError(
            f"{what} count {requests} requests and {failed} failed, the aggregate "
            f"{record.requests} and {record.failed}"
        )


class _SpanSize(msgspec.Struct):
    count: int


_span_size_decoder = msgspec.json.Decoder(_SpanSize)


def span_size(text: str) -> int:
    """The requests a span stands for, from the text the server keeps for it (its URLs,
    if it lists them, skipped over in C)."""
    return _span_size_decoder.decode(text).count
