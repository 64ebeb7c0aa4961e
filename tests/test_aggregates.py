"""Aggregate records: a summary sent as counts and sketches, merged as if its results
had been counted one by one, and refused when no summary could have produced it."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import msgspec
import pytest
from fetchq_procs import run
from hypothesis import given, settings
from hypothesis import strategies as st
from test_cli import assert_clean_error
from test_report_cli import results_jsonl

from fetchq.errors import ExitCode
from fetchq.report.summary import Summary
from fetchq.wire.aggregates import AGGREGATE, Aggregate, decode_aggregate
from fetchq.wire.records import make_error, make_result, make_task

T0 = 1_700_000_000.0


def as_aggregate(results: list[dict[str, Any]], task_id: int = 1) -> dict[str, Any]:
    """``results`` as one aggregate record, through its JSON text as a worker sends it."""
    summary = Summary()
    for result in results:
        summary.add(result)
    ok = sum(1 for result in results if result["ok"])
    record = Aggregate(
        id=task_id,
        job="agg",
        first=0,
        requests=len(results),
        ok=ok,
        failed=len(results) - ok,
        summary=summary.to_state(),
    )
    text = msgspec.json.encode(record)
    decode_aggregate(text)  # what the server checks of it on arrival
    parsed: dict[str, Any] = json.loads(text)
    return parsed


def summary_of(records: list[dict[str, Any]]) -> dict[str, Any]:
    summary = Summary()
    for record in records:
        summary.add(record)
    return summary.as_dict()


def assert_same_figures(got: Any, expected: Any, where: str = "") -> None:
    """Equal, but for sums of floats added in another order (a mean, a rate)."""
    if isinstance(expected, float) and isinstance(got, float):
        assert math.isclose(got, expected, rel_tol=1e-9), (where, got, expected)
    elif isinstance(expected, dict):
        assert isinstance(got, dict) and got.keys() == expected.keys(), (where, got, expected)
        for key in expected:
            assert_same_figures(got[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(got, list) and len(got) == len(expected), (where, got, expected)
        for index, (one, other) in enumerate(zip(got, expected, strict=True)):
            assert_same_figures(one, other, f"{where}[{index}]")
    else:
        assert got == expected, (where, got, expected)


def made_up_result(i: int, draw: Any) -> dict[str, Any]:
    host = draw(st.integers(0, 5))
    task = make_task(i, "agg", f"http://10.0.0.{host}:8080/?i={i}", 1, 30.0, T0)
    failed = draw(st.booleans()) and draw(st.booleans())
    undated = draw(st.integers(0, 9)) == 0  # no usable start: counted, not plotted
    started = 0.0 if undated else T0 + draw(st.floats(0, 2_000, allow_nan=False))
    paced = draw(st.booleans())
    return make_result(
        {**task, "attempt": draw(st.integers(1, 2))},
        worker=f"box-{draw(st.integers(0, 3))}:{i % 7}",
        started=started,
        elapsed=draw(st.floats(0, 5, allow_nan=False)),
        status=None if failed else draw(st.sampled_from([200, 204, 301, 404, 503])),
        nbytes=draw(st.integers(0, 10**6)),
        error=make_error(draw(st.sampled_from(["refused", "timeout"])), f"why {i}")
        if failed
        else None,
        scheduled=started - draw(st.floats(-0.5, 3, allow_nan=False)) if paced else None,
    )


@settings(max_examples=30, deadline=None)
@given(st.data())
def test_a_run_told_in_aggregates_gives_the_summary_of_its_results(data: Any) -> None:
    count = data.draw(st.integers(1, 200))
    results = [made_up_result(i, data.draw) for i in range(count)]
    cuts = sorted(data.draw(st.lists(st.integers(0, count), max_size=4)))
    spans = [results[a:b] for a, b in zip([0, *cuts], [*cuts, count], strict=True) if b > a]
    assert_same_figures(summary_of([as_aggregate(span) for span in spans]), summary_of(results))


def results_at(urls: list[str], seed: int, every: float) -> list[dict[str, Any]]:
    """A result from box:1 for each of ``urls``, ``every`` seconds apart, each 1 in 9
    a 500, with latencies drawn from ``seed``."""
    rng = random.Random(seed)
    return [
        make_result(
            make_task(i, "agg", url, 1, 30.0, T0),
            worker="box:1",
            started=T0 + i * every,
            elapsed=rng.lognormvariate(-4, 1),
            status=500 if i % 9 == 0 else 200,
        )
        for i, url in enumerate(urls)
    ]


def test_aggregates_and_results_merge_in_any_mix() -> None:
    results = results_at([f"http://127.0.0.{1 + i % 3}/" for i in range(3000)], 7, 0.05)
    mixed = [*results[:1000], as_aggregate(results[1000:2000]), *results[2000:2500]]
    mixed.append(as_aggregate(results[2500:]))
    assert_same_figures(summary_of(mixed), summary_of(results))


def test_a_span_at_one_worker_and_one_host_writes_its_place_tallies_once() -> None:
    """Its place tables name the place of every request (``whole``) instead of a tally
    the time buckets already add up to, and read back to the same figures."""
    results = results_at([f"http://127.0.0.1:8080/?i={i}" for i in range(500)], 11, 0.01)
    record = as_aggregate(results)
    places = record["summary"]["worker_hosts"], record["summary"]["target_hosts"]
    assert [(table["whole"], table.get("rows", [])) for table in places] == [
        ("box", []),
        ("127.0.0.1:8080", []),
    ]
    assert_same_figures(summary_of([record]), summary_of(results))
    two_hosts = [*results, {**results[0], "url": "http://127.0.0.2:8080/"}]
    assert "whole" not in as_aggregate(two_hosts)["summary"]["target_hosts"]


def nearest_rank(ordered: list[float], p: float) -> float:
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


@pytest.mark.parametrize("shape", ["lognormal", "bimodal", "uniform"])
def test_percentiles_through_aggregates_are_within_one_percent_of_exact(shape: str) -> None:
    rng = random.Random(shape)
    draw = {
        "lognormal": lambda: rng.lognormvariate(-3, 1.2),
        "bimodal": lambda: rng.choice([0.002, 0.4]) * rng.uniform(0.9, 1.1),
        "uniform": lambda: rng.uniform(0.001, 2.0),
    }[shape]
    timings = [draw() for _ in range(20_000)]
    results = [
        make_result(
            make_task(i, "agg", "http://127.0.0.1/", 1, 30.0, T0),
            worker="box:1",
            started=T0 + i * 0.001,
            elapsed=elapsed,
            status=200,
        )
        for i, elapsed in enumerate(timings)
    ]
    spans = [as_aggregate(results[i : i + 1000], i) for i in range(0, len(results), 1000)]
    ordered = sorted(timings)
    for figures in (summary_of(results)["latency"], summary_of(spans)["latency"]):
        for p in (50, 90, 99):
            exact = nearest_rank(ordered, p)
            assert abs(figures[f"p{p}"] - exact) <= 0.01 * exact, (p, figures, exact)


def test_place_totals_stay_exact_when_places_outnumber_the_table() -> None:
    results = [
        make_result(
            make_task(i, "agg", f"http://h{i % 1500}.test/", 1, 30.0, T0),
            worker="box:1",
            started=T0 + i * 0.01,
            elapsed=0.01,
            status=200,
        )
        for i in range(6000)
    ]
    merged = summary_of([as_aggregate(results[i : i + 1000]) for i in range(0, 6000, 1000)])
    table = merged["target_hosts"]
    assert sum(row["requests"] for row in table["rows"]) + table["other"]["requests"] == 6000


def test_any_timing_makes_a_record_the_server_takes() -> None:
    timings = [0.0, 5e-324, 1e-300, 3e-9, 86_400.0]
    results = [
        make_result(
            make_task(i, "agg", "http://127.0.0.1/", 1, 30.0, T0),
            worker="box:1",
            started=T0 + i,
            elapsed=elapsed,
            status=200,
        )
        for i, elapsed in enumerate(timings)
    ]
    assert summary_of([as_aggregate(results)])["requests"] == len(timings)


def a_record() -> dict[str, Any]:
    result = make_result(
        make_task(1, "agg", "http://127.0.0.1/", 1, 30.0, T0),
        worker="box:1",
        started=T0,
        elapsed=0.25,
        status=200,
    )
    return as_aggregate([result])


def latency(record: dict[str, Any]) -> dict[str, Any]:
    bucket: dict[str, Any] = record["summary"]["timeline"]["buckets"][0][1]
    return bucket["latency"]  # type: ignore[no-any-return]


def off_the_scale(record: dict[str, Any]) -> None:
    latency(record)["positive"] = [4999, [0, 0, 1]]


def counts_that_do_not_add_up(record: dict[str, Any]) -> None:
    latency(record)["positive"][1] = [2]  # two values in its bins, one in its count


def more_failed_than_requests(record: dict[str, Any]) -> None:
    record["summary"]["timeline"]["buckets"][0][1]["failed"] = 5


def another_accuracy(record: dict[str, Any]) -> None:
    latency(record)["accuracy"] = 0.01


def an_unknown_field(record: dict[str, Any]) -> None:
    record["summary"]["extra"] = 1


def a_status_that_is_no_code(record: dict[str, Any]) -> None:
    record["summary"]["statuses"] = {"ok": 1}


def a_timeline_of_odd_width(record: dict[str, Any]) -> None:
    record["summary"]["timeline"]["width"] = 3.0


@pytest.mark.parametrize(
    "spoil",
    [
        off_the_scale,
        counts_that_do_not_add_up,
        more_failed_than_requests,
        another_accuracy,
        an_unknown_field,
        a_status_that_is_no_code,
        a_timeline_of_odd_width,
    ],
)
def test_a_record_no_summary_could_have_sent_is_refused(spoil: Any) -> None:
    record = a_record()
    Summary().add(json.loads(json.dumps(record)))  # as made, it is read
    spoil(record)
    with pytest.raises(ValueError):
        Summary().add(record)


def test_report_merges_aggregate_lines_with_result_lines(env, tmp_path: Path) -> None:
    lines = results_jsonl(0, 1000).splitlines(keepends=True)
    aggregate = as_aggregate([json.loads(line) for line in lines[400:]])
    assert aggregate["kind"] == AGGREGATE
    whole, mixed = tmp_path / "all.jsonl", tmp_path / "mixed.jsonl"
    whole.write_text("".join(lines))
    mixed.write_text("".join(lines[:400]) + json.dumps(aggregate) + "\n")
    alone = run(env, "report", str(whole))
    merged = run(env, "report", str(mixed))
    assert alone.returncode == merged.returncode == 0, merged.stderr
    assert merged.stdout == alone.stdout
    assert "Requests:     1000" in merged.stdout


def test_report_names_the_line_of_a_spoiled_aggregate(env, tmp_path: Path) -> None:
    record = a_record()
    counts_that_do_not_add_up(record)
    saved = tmp_path / "spoiled.jsonl"
    saved.write_text(results_jsonl(0, 2) + json.dumps(record) + "\n")
    result = run(env, "report", str(saved))
    assert_clean_error(result, ExitCode.USAGE, f"{saved}:3: not an aggregate record")
