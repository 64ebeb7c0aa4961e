"""The broker's side of aggregate jobs, through its API: spans go only to workers that
run them, one a lease; an aggregate counts its span's requests; counts are requests;
and all of it survives a restart."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import msgspec
import pytest
from brokerkit import Factory, crash
from fakeclock import FakeClock

from fetchq import __version__
from fetchq.errors import BadRequest
from fetchq.report.summary import Summary
from fetchq.server.service import BrokerService
from fetchq.wire.aggregates import AGGREGATE, SPAN, Aggregate
from fetchq.wire.api import PROTOCOL
from fetchq.wire.records import make_result, make_task

WALL = 1_700_000_000.0
TEMPLATE = "http://127.0.0.1:9/?i={i}"


def spans(count: int, size: int) -> list[dict[str, Any]]:
    return [
        {"template": TEMPLATE, "first": first, "count": min(size, count - first)}
        for first in range(0, count, size)
    ]


def submit_spans(broker: BrokerService, job: str, count: int, size: int) -> None:
    broker.submit({"job": job, "spans": spans(count, size), "aggregate": True})


def say_hello(broker: BrokerService, worker: str, runs: list[str] | None) -> None:
    hello: dict[str, Any] = {"protocol": PROTOCOL, "version": __version__, "worker": worker}
    hello["threads"] = 4
    if runs is not None:
        hello["runs"] = runs
    broker.hello(hello)


def lease_a_span(broker: BrokerService, count: int, size: int) -> dict[str, Any]:
    """Job ``agg`` of ``count`` requests in spans of ``size``, and its first span,
    leased to worker ``py:1``."""
    submit_spans(broker, "agg", count, size)
    say_hello(broker, "py:1", [SPAN])
    [task] = broker.lease("py:1", 10, 0)
    return task


def aggregate(
    task: dict[str, Any], failed: int = 0, worker: str = "py:1", late: int | None = None
) -> dict[str, Any]:
    """What a worker sends for the span ``task``: ``failed`` of its requests failed;
    with ``late``, they had a schedule, and that many of them started 50 ms behind it."""
    span = task["span"]
    summary = Summary()
    for offset in range(span["count"]):
        index = span["first"] + offset
        request = make_task(task["id"], task["job"], TEMPLATE.format(i=index), 1, 30.0, WALL)
        bad = offset < failed
        started = WALL + offset * 0.001
        behind = 0.05 if late is not None and offset < late else 0.0
        summary.add(
            make_result(
                request,
                worker=worker,
                started=started,
                elapsed=0.002,
                status=500 if bad else 200,
                scheduled=None if late is None else started - behind,
            )
        )
    record = Aggregate(
        id=task["id"],
        job=task["job"],
        attempt=task["attempt"],
        worker=worker,
        first=span["first"],
        requests=span["count"],
        ok=span["count"] - failed,
        failed=failed,
        summary=summary.to_state(),
    )
    built: dict[str, Any] = msgspec.to_builtins(record)
    return built


def requests_of(broker: BrokerService, job: str) -> tuple[int, ...]:
    counts = broker.job(job)
    return tuple(counts[key] for key in ("submitted", "queued", "leased", "succeeded", "failed"))


@pytest.fixture
def broker(implementation: Factory, clock: FakeClock) -> BrokerService:
    return implementation(clock=clock, wall_clock=lambda: WALL + clock.now, lease_timeout=10.0)


@pytest.fixture
def open_broker(implementation: Factory, clock: FakeClock, tmp_path: Path) -> Any:
    """Opens the broker under test, durable in ``tmp_path``: opened again, it is the same
    broker restarted."""
    path = tmp_path / "fetchq.journal"

    def opener() -> BrokerService:
        return implementation(
            clock=clock, wall_clock=lambda: WALL + clock.now, lease_timeout=10.0, durable=path
        )

    return opener


def test_spans_go_only_to_workers_that_run_them_as_many_as_a_lease_holds(
    broker: BrokerService,
) -> None:
    submit_spans(broker, "agg", 4_500, 1_000)
    broker.submit({"job": "plain", "urls": [f"http://127.0.0.1:9/p{n}" for n in range(3)]})
    say_hello(broker, "node:1", None)
    say_hello(broker, "py:1", [SPAN])
    leased = broker.lease("node:1", 100, 0)
    assert {task["job"] for task in leased} == {"plain"}, "no span for a worker without runs"
    broker.submit({"job": "plain", "urls": ["http://127.0.0.1:9/p3"]})
    first = broker.lease("py:1", 100, 0)
    [span] = [task for task in first if task.get("kind") == SPAN]
    assert [task["job"] for task in first if task is not span] == ["plain"]
    assert span["span"] == {"template": TEMPLATE, "first": 0, "count": 1_000}
    assert span["url"] == TEMPLATE
    assert broker.lease("node:1", 100, 0) == []
    second = broker.lease("py:1", 2_999, 0)  # as many spans as 2,999 requests hold
    third = broker.lease("py:1", 100, 0)
    assert [task["span"]["first"] for task in second + third] == [1_000, 2_000, 3_000]
    assert broker.lease("py:1", 10_000, 0)[0]["span"]["count"] == 500
    assert requests_of(broker, "agg") == (4_500, 0, 4_500, 0, 0)


def test_counts_of_an_aggregate_job_are_its_requests(broker: BrokerService) -> None:
    submit_spans(broker, "agg", 2_500, 1_000)
    say_hello(broker, "py:1", [SPAN])
    assert requests_of(broker, "agg") == (2_500, 2_500, 0, 0, 0)
    [first] = broker.lease("py:1", 10, 0)
    assert requests_of(broker, "agg") == (2_500, 1_500, 1_000, 0, 0)
    fleet = broker.status()
    assert (fleet["queued"], fleet["leased"]) == (1_500, 1_000), "requests there too"
    reply = broker.complete("py:1", [aggregate(first, failed=7)], [])
    assert reply["accepted"] == 1
    assert requests_of(broker, "agg") == (2_500, 1_500, 0, 993, 7)
    [record] = broker.results("agg", 10, 0)["results"]
    assert record["kind"] == AGGREGATE and record["requests"] == 1_000


def test_an_aggregate_that_miscounts_its_span_is_refused(broker: BrokerService) -> None:
    task = lease_a_span(broker, 100, 100)
    short = aggregate({**task, "span": {**task["span"], "count": 99}})
    with pytest.raises(BadRequest, match="an aggregate of 99 requests for span"):
        broker.complete("py:1", [short], [])
    assert requests_of(broker, "agg") == (100, 0, 100, 0, 0)


def test_a_report_with_one_aggregate_that_miscounts_changes_nothing(
    broker: BrokerService,
) -> None:
    """Not even the other aggregates of the report (of jobs x and y: on a store of three
    shards, in two of them)."""
    submit_spans(broker, "x", 100, 100)
    submit_spans(broker, "y", 100, 100)
    say_hello(broker, "py:1", [SPAN])
    leased = broker.lease("py:1", 100, 0) + broker.lease("py:1", 100, 0)
    assert sorted(task["job"] for task in leased) == ["x", "y"]  # one job's spans a lease
    right = aggregate(leased[0])  # first in the report, where it would be taken first
    wrong = aggregate({**leased[1], "span": {**leased[1]["span"], "count": 99}})
    with pytest.raises(BadRequest, match="an aggregate of 99 requests for span"):
        broker.complete("py:1", [right, wrong], [])
    assert requests_of(broker, "x") == (100, 0, 100, 0, 0)
    assert requests_of(broker, "y") == (100, 0, 100, 0, 0)


def test_urls_and_spans_do_not_mix_in_one_job(broker: BrokerService) -> None:
    submit_spans(broker, "agg", 10, 5)
    broker.submit({"job": "plain", "urls": ["http://127.0.0.1:9/"]})
    with pytest.raises(BadRequest, match="job agg is an aggregate job: dispatch to it with"):
        broker.submit({"job": "agg", "urls": ["http://127.0.0.1:9/"]})
    with pytest.raises(BadRequest, match="job plain is not an aggregate job"):
        broker.submit({"job": "plain", "spans": spans(10, 5)})
    with pytest.raises(BadRequest, match="job agg is an aggregate job, which takes no --per-host"):
        broker.steer("agg", {"action": "set", "per_host": 2})
    with pytest.raises(BadRequest, match="spans"):
        broker.submit({"job": "agg", "spans": [{"template": TEMPLATE, "first": 0, "count": 0}]})


def test_an_aggregate_job_survives_a_crash_and_a_compaction(open_broker: Any) -> None:
    broker = open_broker()
    first = lease_a_span(broker, 3_000, 1_000)
    sent = aggregate(first, failed=3)
    broker.complete("py:1", [sent], [])
    crash(broker)

    restarted = open_broker()
    assert requests_of(restarted, "agg") == (3_000, 2_000, 0, 997, 3)
    say_hello(restarted, "py:1", [SPAN])
    [second] = restarted.lease("py:1", 10, 0)
    restarted.complete("py:1", [aggregate(second)], [])
    restarted.compact()
    crash(restarted)

    again = open_broker()
    assert requests_of(again, "agg") == (3_000, 1_000, 0, 1_997, 3)
    delivered = again.results("agg", 10, 0)["results"]
    assert [record["first"] for record in delivered] == [0, 1_000]
    as_sent = msgspec.json.decode(msgspec.json.encode(sent))  # lists where tuples were
    assert dict(delivered[0]) == as_sent, "an aggregate comes back as it was sent"
    again.close()


def test_an_aggregate_the_schema_refuses_is_a_bad_request(broker: BrokerService) -> None:
    task = lease_a_span(broker, 10, 10)
    spoiled = {**aggregate(task), "extra": 1}
    with pytest.raises(BadRequest, match="not an aggregate: Object contains unknown field"):
        broker.complete("py:1", [spoiled], [])
    lying = {**aggregate(task), "ok": 11}  # ok and failed more than its requests
    with pytest.raises(BadRequest, match="ok and failed requests do not add up"):
        broker.complete("py:1", [lying], [])
    assert broker.complete("py:1", [aggregate(task)], [])["accepted"] == 1


def test_a_span_is_answered_by_an_aggregate_and_only_a_span_is(broker: BrokerService) -> None:
    submit_spans(broker, "agg", 10, 10)
    broker.submit({"job": "plain", "urls": ["http://127.0.0.1:9/"]})
    say_hello(broker, "py:1", [SPAN])
    leased = broker.lease("py:1", 100, 0)
    [span] = [task for task in leased if task.get("kind") == SPAN]
    [task] = [task for task in leased if task.get("kind") is None]
    plain = make_result(task, worker="py:1", started=WALL, elapsed=0.01, status=200)
    for wrong in ({**plain, "id": span["id"], "job": "agg"}, {**aggregate(span), "id": task["id"]}):
        assert broker.complete("py:1", [wrong], [])["dropped"] == 1
    assert requests_of(broker, "agg") == (10, 0, 10, 0, 0)
    assert broker.job("plain")["leased"] == 1
    right = [plain, aggregate(span)]
    assert broker.complete("py:1", right, [])["accepted"] == 2


def test_spans_the_server_ends_are_aggregates_of_all_their_requests(
    broker: BrokerService, clock: FakeClock
) -> None:
    """A cancelled span, and one whose last lease lapsed: each request counts."""
    submit_spans(broker, "agg", 300, 100)
    say_hello(broker, "py:1", [SPAN])
    for attempt in range(3):  # the server's default: 3 attempts, each lease left to lapse
        [held] = broker.lease("py:1", 10, 0)
        assert (held["span"]["first"], held["attempt"]) == (0, attempt + 1)
        clock.advance(11)
        broker.expire_leases()
    broker.steer("agg", {"action": "cancel"})
    assert requests_of(broker, "agg") == (300, 0, 0, 0, 300)
    summary = Summary()
    for record in broker.results("agg", 10, 0)["results"]:
        assert record["kind"] == AGGREGATE
        summary.add(dict(record))
    figures = summary.as_dict()
    assert figures["not_requested"] == {"cancelled": 200}
    assert (figures["requests"], figures["failed"]) == (100, 100)
    assert figures["errors"]["lease_expired"]["count"] == 100
    target = figures["target_hosts"]["rows"]
    assert [(row["host"], row["requests"]) for row in target] == [("127.0.0.1:9", 100)]


@pytest.mark.one_shard("a store of several shards takes no server-wide host limits")
def test_spans_are_leased_on_a_server_with_host_limits_and_beside_a_paced_job(
    implementation: Factory, clock: FakeClock
) -> None:
    """The server's own --per-host sorts every job by host, but not an aggregate job's
    spans; and a lease that also takes a paced task still hands spans out as spans."""
    broker = implementation(
        clock=clock, wall_clock=lambda: WALL + clock.now, lease_timeout=10.0, per_host=4
    )
    submit_spans(broker, "agg", 2_000, 1_000)
    urls = [f"http://127.0.0.1:9/p{n}" for n in range(4)]
    broker.submit({"job": "paced", "urls": urls, "rate": 1000.0})
    say_hello(broker, "py:1", [SPAN])
    leased = broker.lease("py:1", 1_000, 0)
    spans_leased = [task for task in leased if task["job"] == "agg"]
    assert [task.get("kind") for task in spans_leased] == [SPAN]
    assert {task["job"] for task in leased} == {"agg", "paced"}


def test_a_plain_url_that_looks_like_a_span_is_a_url(
    broker: BrokerService, clock: FakeClock
) -> None:
    broker.submit({"job": "odd", "urls": ['{"template": "not a span"}'], "attempts": 1})
    [task] = broker.lease("w", 1, 0)
    clock.advance(11)
    broker.expire_leases()  # its one attempt lapses: the server ends it as any task
    [record] = broker.results("odd", 10, 0)["results"]
    assert record["url"] == task["url"] and record["error"]["type"] == "lease_expired"


def test_an_aggregate_answers_no_plain_task_even_with_no_aggregate_job(
    broker: BrokerService,
) -> None:
    broker.submit({"job": "plain", "urls": ["http://127.0.0.1:9/"]})
    [task] = broker.lease("w", 1, 0)
    span_like = {**task, "span": {"template": TEMPLATE, "first": 0, "count": 1}}
    assert broker.complete("w", [aggregate(span_like)], [])["dropped"] == 1
    assert broker.job("plain")["leased"] == 1


def test_an_aggregate_for_an_earlier_attempt_still_counts_its_span(
    broker: BrokerService, clock: FakeClock
) -> None:
    first = lease_a_span(broker, 100, 100)
    clock.advance(11)
    broker.expire_leases()
    [second] = broker.lease("py:1", 10, 0)
    assert second["attempt"] == 2
    late = aggregate({**first, "span": {**first["span"], "count": 50}})  # attempt 1's
    with pytest.raises(BadRequest, match="an aggregate of 50 requests for span"):
        broker.complete("py:1", [late], [])


def test_an_aggregate_for_a_span_queued_again_still_counts_its_span(
    broker: BrokerService, clock: FakeClock
) -> None:
    """Its lease lapsed and it waits to be leased again: a late aggregate is checked
    against it all the same, and one that counts it right ends it."""
    first = lease_a_span(broker, 300, 100)
    clock.advance(11)
    broker.expire_leases()
    short = aggregate({**first, "span": {**first["span"], "count": 50}})
    with pytest.raises(BadRequest, match="an aggregate of 50 requests for span"):
        broker.complete("py:1", [short], [])
    assert broker.complete("py:1", [aggregate(first)], [])["accepted"] == 1
    assert requests_of(broker, "agg") == (300, 200, 0, 100, 0)


@pytest.mark.parametrize(
    "spoil",
    [
        lambda summary: summary["timeline"].update(width=3.0),
        lambda summary: summary["timeline"]["buckets"].append(summary["timeline"]["buckets"][0]),
        lambda summary: summary["worker_hosts"].update(
            whole=None, rows=[[name, 10, summary["timeline"]["buckets"][0][1]] for name in "ab"]
        ),
        lambda summary: summary["target_hosts"].update(
            rows=[["a", 10, summary["timeline"]["buckets"][0][1]]]
        ),
        lambda summary: summary["timeline"]["buckets"][0][1].update(first_start=1e300),
    ],
    ids=[
        "odd width",
        "a bucket twice",
        "places that miscount",
        "a place of every request, and others",
        "a time past any date",
    ],
)
def test_the_server_refuses_a_summary_no_output_could_read(
    broker: BrokerService, spoil: Any
) -> None:
    task = lease_a_span(broker, 10, 10)
    record = msgspec.json.decode(msgspec.json.encode(aggregate(task)))
    spoil(record["summary"])
    with pytest.raises(BadRequest, match="not an aggregate"):
        broker.complete("py:1", [record], [])
    assert broker.complete("py:1", [aggregate(task)], [])["accepted"] == 1


def test_a_span_that_lapsed_for_good_is_counted_expired_after_a_restart(
    open_broker: Any, clock: FakeClock
) -> None:
    broker = open_broker()
    broker.submit({"job": "agg", "spans": spans(10, 10), "aggregate": True, "attempts": 1})
    say_hello(broker, "py:1", [SPAN])
    broker.lease("py:1", 10, 0)
    clock.advance(11)
    broker.expire_leases()
    assert broker.job("agg")["expired"] == 1
    crash(broker)
    restarted = open_broker()
    assert restarted.job("agg")["expired"] == 1
    assert requests_of(restarted, "agg") == (10, 0, 0, 0, 10)
    restarted.close()


def paced_starts(task: dict[str, Any]) -> list[float]:
    """When each request of a leased paced span is due, in the server's Unix time."""
    first, spacing = task["scheduled"], task["spacing"]
    return [first + n * spacing for n in range(task["span"]["count"])]


def test_a_paced_aggregate_job_shares_its_rate_between_spans_side_by_side(
    broker: BrokerService, clock: FakeClock
) -> None:
    """100/s in 12 spans of 100: rounds of five spans at 20/s, each lasting 5 s, offset
    by one slot, so that all their requests together are one schedule 10 ms apart; the
    last round, of two spans, at 50/s each.  A round's spans are leased once their start
    is within a second, and not before."""
    broker.submit({"job": "agg", "spans": spans(1_200, 100), "aggregate": True, "rate": 100.0})
    say_hello(broker, "py:1", [SPAN])
    start = WALL + clock.now
    leased = [task for _ in range(6) for task in broker.lease("py:1", 1_000, 0)]
    assert len(leased) == 5, "one span a lease, five a round, the next round 5 s off"
    assert [task["scheduled"] for task in leased] == pytest.approx(
        [start + n * 0.01 for n in range(5)]
    )
    assert [task["spacing"] for task in leased] == pytest.approx([0.05] * 5)
    clock.advance(3.9)
    assert broker.lease("py:1", 1_000, 0) == []
    clock.advance(0.2)  # the next round starts at 5.0, within a second
    [sixth] = broker.lease("py:1", 1_000, 0)
    assert sixth["scheduled"] == pytest.approx(start + 5.0)
    leased += [sixth] + [task for _ in range(5) for task in broker.lease("py:1", 1_000, 0)]
    clock.advance(5.0)
    last = [task for _ in range(3) for task in broker.lease("py:1", 1_000, 0)]
    assert [task["spacing"] for task in last] == pytest.approx([0.02] * 2)
    starts = sorted(due for task in leased + last for due in paced_starts(task))
    assert len(starts) == 1_200
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert gaps == pytest.approx([0.01] * 1_199, abs=1e-6)


def test_a_paced_aggregate_job_resumes_on_its_grid_and_takes_a_new_rate(
    broker: BrokerService, clock: FakeClock
) -> None:
    broker.submit({"job": "agg", "spans": spans(4_000, 100), "aggregate": True, "rate": 100.0})
    say_hello(broker, "py:1", [SPAN])
    start = WALL + clock.now
    assert len([task for _ in range(5) for task in broker.lease("py:1", 1_000, 0)]) == 5
    broker.steer("agg", {"action": "pause"})
    clock.advance(20.0)
    broker.steer("agg", {"action": "resume"})
    resumed = [task for _ in range(6) for task in broker.lease("py:1", 1_000, 0)]
    assert len(resumed) == 5
    firsts = sorted(task["scheduled"] for task in resumed)
    now = WALL + clock.now
    assert all(now <= first < now + 0.05 for first in firsts), "no start in the past"
    assert [(first - start) / 0.01 % 5 for first in firsts] == pytest.approx([0, 1, 2, 3, 4])
    broker.steer("agg", {"action": "set", "rate": 400.0})
    clock.advance(5.0)
    faster = [task for _ in range(30) for task in broker.lease("py:1", 1_000, 0)]
    assert len(faster) == 20, "twenty lanes of 20/s: the spans go on at 400/s"
    assert [task["spacing"] for task in faster] == pytest.approx([0.05] * 20)


def test_a_span_may_list_its_urls(broker: BrokerService) -> None:
    urls = [f"http://127.0.0.1:9/listed/{n}" for n in range(3)]
    listed = {"first": 7, "count": 3, "urls": urls}
    broker.submit({"job": "agg", "spans": [listed], "aggregate": True})
    say_hello(broker, "py:1", [SPAN])
    [task] = broker.lease("py:1", 100, 0)
    assert task["span"] == listed
    assert task["url"] == urls[0]
    for wrong, why in [
        ({**listed, "template": TEMPLATE}, "a span has a template or urls, not both"),
        ({**listed, "count": 4}, "a span of 4 requests with 3 urls"),
        ({"first": 0, "count": 1}, "a span needs a template or urls"),
        ({**listed, "urls": [*urls[:2], 5]}, "Expected `str`, got `int`"),
    ]:
        with pytest.raises(BadRequest, match=why):
            broker.submit({"job": "agg", "spans": [wrong]})


def test_status_tells_a_paced_aggregate_jobs_service_time_and_late_starts(
    broker: BrokerService,
) -> None:
    """As for a plain paced job: the service time the rate needs threads for, and the
    late starts, here from each aggregate's own figures."""
    broker.submit({"job": "agg", "spans": spans(200, 100), "aggregate": True, "rate": 100.0})
    say_hello(broker, "py:1", [SPAN])
    first = broker.lease("py:1", 100, 0)
    second = broker.lease("py:1", 100, 0)
    broker.complete("py:1", [aggregate(first[0], late=7), aggregate(second[0], late=0)], [])
    pace = broker.status()["jobs"]["agg"]["pace"]
    assert (pace["late"], pace["worst_lateness"]) == (7, pytest.approx(0.05))
    assert pace["mean_elapsed"] == pytest.approx(0.002)
