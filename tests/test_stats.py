"""The summary report: real figures from known results, and no division by zero."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pytest

from fetchq.report.summary import Summary
from fetchq.units import format_bytes, format_duration
from fetchq.wire.records import make_error, make_result, make_task

T0 = 1_700_000_000.0


def result(
    i: int,
    *,
    elapsed: float = 0.01,
    status: int | None = 200,
    error: dict[str, str] | None = None,
    started: float | None = None,
    nbytes: int = 100,
    attempt: int = 1,
    url: str | None = None,
) -> dict[str, Any]:
    task = make_task(i, "job1", url or f"http://127.0.0.1:8000/{i}", attempt, 30.0, T0)
    return make_result(
        task,
        worker="host:1",
        started=T0 + i * 0.01 if started is None else started,
        elapsed=elapsed,
        status=status,
        nbytes=nbytes,
        error=error,
    )


def hundred() -> Summary:
    """Latencies 1..100 ms, added in a scrambled order so sorting is exercised."""
    summary = Summary()
    for ms in [*range(100, 50, -1), *range(1, 51)]:
        summary.add(result(ms, elapsed=ms / 1000))
    return summary


def test_percentiles_of_1_to_100_ms() -> None:
    lat = hundred().as_dict()["latency"]
    assert lat["min"] == pytest.approx(0.001)
    assert lat["max"] == pytest.approx(0.100)
    assert lat["mean"] == pytest.approx(0.0505)
    # Percentiles come from a sketch: within 1% of the exact nearest-rank values.
    assert lat["p50"] == pytest.approx(0.050, rel=0.01)
    assert lat["p90"] == pytest.approx(0.090, rel=0.01)
    assert lat["p95"] == pytest.approx(0.095, rel=0.01)
    assert lat["p99"] == pytest.approx(0.099, rel=0.01)


def test_duration_rate_throughput_and_bytes() -> None:
    summary = Summary()
    # 3 results: started at T0, T0+1, T0+2; the last one takes 2 s -> duration 4 s.
    summary.add(result(1, started=T0, elapsed=0.5, nbytes=1000))
    summary.add(result(2, started=T0 + 1, elapsed=0.5, status=500, nbytes=3000))
    summary.add(result(3, started=T0 + 2, elapsed=2.0, nbytes=2000))
    d = summary.as_dict()
    assert d["duration"] == pytest.approx(4.0)
    assert d["rate"] == pytest.approx(0.75)
    assert d["throughput"] == pytest.approx(0.5)
    assert d["success_ratio"] == pytest.approx(2 / 3)
    assert d["bytes"] == {"total": 6000, "mean": 2000.0}
    assert (d["requests"], d["ok"], d["failed"]) == (3, 2, 1)


def mixed() -> Summary:
    summary = Summary()
    for i in range(6):
        summary.add(result(i, status=200))
    for i in range(6, 8):
        summary.add(result(i, status=404))
    summary.add(result(8, status=500, attempt=3))
    refused = make_error("refused", "connection refused")
    for i in range(9, 12):
        summary.add(result(i, status=None, error=refused, nbytes=0, attempt=2))
    summary.add(result(12, status=None, error=make_error("timeout", "read timed out")))
    return summary


def test_status_and_error_counts() -> None:
    summary = mixed()
    d = summary.as_dict()
    assert summary.count == 13
    assert d["status_codes"] == {"200": 6, "404": 2, "500": 1}
    assert list(d["status_codes"]) == ["200", "404", "500"]
    assert d["errors"] == {
        "refused": {"count": 3, "example": "connection refused"},
        "timeout": {"count": 1, "example": "read timed out"},
    }
    assert d["retried"] == 4
    assert d["success_ratio"] == pytest.approx(6 / 13)
    # Every result is counted once, by status or else by error.
    assert sum(d["status_codes"].values()) + 4 == summary.count


def test_as_dict_is_json() -> None:
    d = mixed().as_dict()
    assert json.loads(json.dumps(d)) == d


def test_histogram_counts_sum_to_count() -> None:
    summary = hundred()
    buckets = summary.as_dict()["histogram"]
    assert len(buckets) == 10
    assert sum(b["count"] for b in buckets) == 100
    # Ten latencies a bucket; 0.090 sits on an edge, and the sketch (1% accurate)
    # puts it in the last bucket.
    assert [b["count"] for b in buckets] == [10] * 8 + [9, 11], buckets
    assert buckets[0]["low"] == pytest.approx(0.001)
    assert buckets[-1]["high"] == pytest.approx(0.100)
    uneven = mixed()
    assert sum(b["count"] for b in uneven.as_dict()["histogram"]) == uneven.count


def test_render_has_figures_and_histogram() -> None:
    summary = mixed()
    summary.add(result(99, elapsed=1.5))
    text = summary.render()
    assert "Requests:     14" in text
    assert "[200]  7" in text
    assert "[404]  2" in text
    assert "refused" in text and "connection refused" in text
    assert "1.500s" in text  # max latency, human-formatted
    assert "10.0ms" in text
    bars = [line for line in text.splitlines() if "] |" in line]
    assert len(bars) == 10
    counts = [int(line.split("[")[1].split("]")[0]) for line in bars]
    assert sum(counts) == 14
    assert max(len(line.split("|", 1)[1]) for line in bars) == 40


def test_empty_summary() -> None:
    summary = Summary()
    assert summary.count == 0
    assert "no results" in summary.render()
    d = summary.as_dict()
    assert d["requests"] == 0
    assert d["duration"] == 0.0
    assert d["rate"] is None and d["throughput"] is None and d["success_ratio"] is None
    assert d["latency"]["p99"] is None
    assert d["histogram"] == []


def test_single_result_with_zero_duration() -> None:
    summary = Summary()
    summary.add(result(1, elapsed=0.0))
    d = summary.as_dict()
    assert d["duration"] == 0.0
    assert d["rate"] is None
    assert d["latency"]["p50"] == 0.0
    assert d["histogram"] == [{"low": 0.0, "high": 0.0, "count": 1}]
    text = summary.render()
    assert "n/a" in text and "100.00%" in text


def test_single_result() -> None:
    summary = Summary()
    summary.add(result(1, elapsed=0.25))
    d = summary.as_dict()
    assert d["duration"] == pytest.approx(0.25)
    assert d["rate"] == pytest.approx(4.0)
    assert "250.0ms" in summary.render()


def test_result_without_status_or_error_is_counted() -> None:
    summary = Summary()
    summary.add({"id": 1, "url": "http://127.0.0.1/", "elapsed": 0.1})
    assert summary.as_dict()["errors"]["unknown"]["count"] == 1


def test_add_after_render_keeps_figures_right() -> None:
    summary = hundred()
    summary.render()
    summary.add(result(200, elapsed=0.0005))
    lat = summary.as_dict()["latency"]
    assert lat["min"] == pytest.approx(0.0005)
    assert lat["max"] == pytest.approx(0.100)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.0004, "400µs"), (0.0123, "12.3ms"), (1.2044, "1.204s"), (123.5, "2m03.5s")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(("n", "text"), [(0, "0B"), (999, "999B"), (1234, "1.2kB"), (5e6, "5.0MB")])
def test_format_bytes(n: float, text: str) -> None:
    assert format_bytes(n) == text


# -- percentiles from sketches, against exact values ---------------------------


def exact_percentile(sorted_values: list[float], p: float) -> float:
    """Nearest rank: the value at 1-based rank ceil(p / 100 * n), a latency some request had."""
    rank = max(1, math.ceil(p / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


def draws(kind: str, n: int, rng: random.Random) -> list[float]:
    if kind == "uniform":
        return [rng.uniform(0.001, 0.5) for _ in range(n)]
    if kind == "lognormal":
        return [rng.lognormvariate(math.log(0.03), 1.2) for _ in range(n)]
    # bimodal: most answers from a cache, a quarter from a slow backend
    return [
        rng.gauss(0.004, 0.0004) if rng.random() < 0.75 else rng.gauss(0.8, 0.1) for _ in range(n)
    ]


@pytest.mark.parametrize("kind", ["uniform", "lognormal", "bimodal"])
def test_percentiles_are_within_one_percent_of_exact(kind: str) -> None:
    rng = random.Random(kind)
    latencies = draws(kind, 40_000, rng)
    summary = Summary()
    # Spread over ten minutes, so the figures are merged from many time buckets.
    for i, elapsed in enumerate(latencies):
        summary.add(result(i, elapsed=elapsed, started=T0 + i * 0.015))
    lat = summary.as_dict()["latency"]
    ordered = sorted(latencies)
    for p in (50, 90, 95, 99):
        exact = exact_percentile(ordered, p)
        assert lat[f"p{p}"] == pytest.approx(exact, rel=0.01), (kind, p)
    assert lat["min"] == ordered[0] and lat["max"] == ordered[-1]
    assert lat["mean"] == pytest.approx(sum(latencies) / len(latencies))


def test_place_and_time_bucket_percentiles_are_within_one_percent() -> None:
    rng = random.Random(7)
    fast = draws("lognormal", 5000, rng)
    slow = [10 * value for value in draws("lognormal", 5000, rng)]
    summary = Summary()
    for i, (a, b) in enumerate(zip(fast, slow, strict=True)):
        # the fast host answers in the first 100 s, the slow one in the next 100 s
        summary.add(result(i, elapsed=a, started=T0 + i * 0.02, url="http://127.0.0.2:81/a"))
        summary.add(result(i, elapsed=b, started=T0 + 100 + i * 0.02, url="http://127.0.0.3/b"))
    d = summary.as_dict()
    rows = {row["host"]: row for row in d["target_hosts"]["rows"]}
    for host, values in (("127.0.0.2:81", fast), ("127.0.0.3:80", slow)):
        ordered = sorted(values)
        assert rows[host]["p50"] == pytest.approx(exact_percentile(ordered, 50), rel=0.01)
        assert rows[host]["p99"] == pytest.approx(exact_percentile(ordered, 99), rel=0.01)
    points = d["timeline"]["points"]
    first_second = sorted(fast[:50])  # requests started in [T0, T0 + 1)
    assert points[0]["requests"] == 50
    assert points[0]["p90"] == pytest.approx(exact_percentile(first_second, 90), rel=0.01)


# -- latency from the schedule (a job with a rate) -----------------------------


def scheduled_result(i: int, *, due: float | None, started: float, elapsed: float) -> dict:
    record = result(i, started=started, elapsed=elapsed)
    record["scheduled"] = due
    return record


def test_without_a_schedule_there_is_no_schedule_section() -> None:
    summary = mixed()
    summary.add(scheduled_result(50, due=None, started=T0, elapsed=0.02))
    d = summary.as_dict()
    assert d["schedule"] is None
    text = summary.render()
    assert "Late starts" not in text
    assert "schedule" not in text
    assert "\nLatency:\n  min:" in text


def test_response_time_is_measured_from_the_schedule() -> None:
    summary = Summary()
    # Due every 10 ms; the first 90 start on time, the last 10 start 200 ms late.
    for i in range(100):
        due = T0 + i * 0.01
        late = 0.2 if i >= 90 else 0.0
        summary.add(scheduled_result(i, due=due, started=due + late, elapsed=0.05))
    summary.add(result(100, elapsed=0.05))  # a result without a schedule: service time only
    d = summary.as_dict()
    schedule = d["schedule"]
    assert schedule["requests"] == 100
    assert schedule["late"] == {"after": 0.01, "count": 10, "worst": pytest.approx(0.2)}
    response = schedule["response_time"]
    assert response["min"] == pytest.approx(0.05)
    assert response["max"] == pytest.approx(0.25)
    assert response["p50"] == pytest.approx(0.05, rel=0.01)
    assert response["p95"] == pytest.approx(0.25, rel=0.01)
    assert d["latency"]["p95"] == pytest.approx(0.05, rel=0.01)
    assert schedule["target_rate"] == pytest.approx(100.0)
    text = summary.render()
    late = [line for line in text.splitlines() if line.startswith("Late starts:")]
    assert late == [
        (
            "Late starts: 10 of 100 requests started more than 10.0ms after their scheduled "
            "time; the worst 200.0ms late"
        )
    ]
    assert "service time" in text and "from schedule" in text
    p95 = next(line for line in text.splitlines() if line.startswith("  p95:"))
    service, response_p95 = p95.split()[1:]
    assert service == "50.0ms"
    assert float(response_p95.removesuffix("ms")) == pytest.approx(250.0, rel=0.01)


def test_a_start_within_ten_ms_is_not_late() -> None:
    summary = Summary()
    summary.add(scheduled_result(1, due=T0, started=T0 + 0.011, elapsed=0.01))
    summary.add(scheduled_result(2, due=T0 + 1, started=T0 + 1.009, elapsed=0.01))
    late = summary.as_dict()["schedule"]["late"]
    assert late["count"] == 1
    assert late["worst"] == pytest.approx(0.011, abs=1e-6)


def test_fleet_fetch_threads_are_set_against_littles_law() -> None:
    """100/s of requests that hold a thread 0.4 s each need 40 threads, however late
    they started: the wait before a request holds no thread."""
    summary = Summary()
    for i in range(101):  # 100/s for one second, each started 0.1 s after its due time
        due = T0 + i * 0.01
        summary.add(scheduled_result(i, due=due, started=due + 0.1, elapsed=0.4))
    assert summary.as_dict()["schedule"]["threads_needed"] == 40
    assert "Concurrency:" not in summary.render()
    summary.fetch_threads = 8
    line = next(x for x in summary.render().splitlines() if x.startswith("Concurrency:"))
    assert "needs about 40 fetch threads; the fleet has 8: add about 32" in line


# -- breakdowns by place -------------------------------------------------------


def test_breakdowns_by_worker_host_and_target_host() -> None:
    summary = Summary()
    for i in range(30):
        record = result(i, elapsed=0.01 if i < 20 else 0.2, started=T0 + i * 0.1)
        record["worker"] = f"box-a:{100 + i % 3}" if i < 20 else "box-b:7"
        record["url"] = "http://127.0.0.2:8080/x" if i % 2 else "https://Example.test/y"
        if i >= 25:
            record["ok"], record["status"] = False, 500
        summary.add(record)
    d = summary.as_dict()
    workers = d["worker_hosts"]["rows"]
    assert [(row["host"], row["requests"]) for row in workers] == [("box-a", 20), ("box-b", 10)]
    assert workers[1]["success_ratio"] == pytest.approx(0.5)
    assert workers[0]["p99"] == pytest.approx(0.01, rel=0.01)
    assert workers[1]["p99"] == pytest.approx(0.2, rel=0.01)
    assert workers[0]["rate"] == pytest.approx(20 / (1.9 + 0.01))
    targets = {row["host"]: row["requests"] for row in d["target_hosts"]["rows"]}
    assert targets == {"127.0.0.2:8080": 15, "example.test:443": 15}
    text = summary.render()
    assert "Worker hosts:" in text and "Target hosts:" in text
    row = next(line for line in text.splitlines() if line.strip().startswith("box-b"))
    # box-b: ten results started from T0 + 2.0 to T0 + 2.9, each 0.2 s long: 10 in 1.1 s
    assert row.split()[:4] == ["box-b", "10", "9.1/s", "50.00%"]


def test_breakdown_lists_the_busiest_places_and_sums_the_rest() -> None:
    summary = Summary()
    i = 0
    for host in range(15):
        for _ in range(100 - host):  # host 0 busiest
            summary.add(result(i, url=f"http://127.0.1.{host}/"))
            i += 1
    breakdown = summary.as_dict(place_rows=10)["target_hosts"]
    assert [row["host"] for row in breakdown["rows"]] == [f"127.0.1.{h}:80" for h in range(10)]
    assert breakdown["other"]["requests"] == sum(100 - h for h in range(10, 15))


def never_requested(i: int, kind: str) -> dict[str, Any]:
    """A result the server made for a task it ended itself, as completion does."""
    task = make_task(i, "job1", f"http://127.0.0.9:8000/{i}", 1, 30.0, T0)
    return make_result(
        task, worker="server", started=T0 + 500, elapsed=0.0, error=make_error(kind, "ended")
    )


def test_results_never_requested_are_counted_apart() -> None:
    """Cancelled and robots-refused results are named, and are in no request figure."""
    summary = Summary()
    for i in range(1, 5):
        summary.add(result(i, started=T0 + i, elapsed=0.5, nbytes=1000))
    summary.add(result(5, started=T0 + 5, elapsed=0.25, status=500))
    for i in range(10, 13):
        summary.add(never_requested(i, "cancelled"))
    summary.add(never_requested(13, "robots"))
    d = summary.as_dict()
    assert (d["requests"], d["ok"], d["failed"]) == (5, 4, 1)
    assert d["not_requested"] == {"cancelled": 3, "robots": 1}
    assert d["duration"] == pytest.approx(4.25)  # T0+1 .. T0+5.25: the cancelling is not in it
    assert d["rate"] == pytest.approx(5 / 4.25)
    assert d["success_ratio"] == pytest.approx(0.8)
    assert d["latency"]["min"] == pytest.approx(0.25)
    assert d["latency"]["p50"] == pytest.approx(0.5, rel=0.01)
    assert d["histogram"][0]["low"] == pytest.approx(0.25)
    assert sum(b["count"] for b in d["histogram"]) == 5
    assert sum(p["requests"] for p in d["timeline"]["points"]) == 5
    assert d["errors"] == {}
    assert [row["host"] for row in d["worker_hosts"]["rows"]] == ["host"]
    assert "127.0.0.9:8000" not in {row["host"] for row in d["target_hosts"]["rows"]}
    text = summary.render()
    assert "  Requests:     5\n  Not requested: 4 (cancelled 3, robots 1)\n" in text


def test_a_summary_of_results_none_of_which_was_requested() -> None:
    summary = Summary()
    summary.add(never_requested(1, "robots"))
    d = summary.as_dict()
    assert (d["requests"], d["rate"], d["latency"]["min"]) == (0, None, None)
    assert summary.render() == "Summary:\n  no requests\n  Not requested: 1 (robots 1)\n"
    assert "no results" in Summary().render()


def test_the_spellings_of_one_target_host_are_one_row() -> None:
    """The report counts hosts as per-host limits do: one site under several spellings
    is one row, not a row per spelling each looking half as busy."""
    spellings = [
        "http://bücher.example/a",
        "http://xn--bcher-kva.example:80/b",
        "http://u:p@BÜCHER.Example./c",
        "https://bücher.example/d",
    ]
    summary = Summary()
    for i, url in enumerate(spellings):
        summary.add(result(i, url=url))
    rows = summary.as_dict()["target_hosts"]["rows"]
    assert {row["host"]: row["requests"] for row in rows} == {
        "xn--bcher-kva.example:80": 3,
        "xn--bcher-kva.example:443": 1,
    }
