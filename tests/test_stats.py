"""The summary report: real figures from known results, and no division by zero."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fetchq.records import make_error, make_result, make_task
from fetchq.stats import Summary, format_bytes, format_duration, percentile

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
) -> dict[str, Any]:
    task = make_task(i, "job1", f"http://127.0.0.1:8000/{i}", attempt, 30.0, T0)
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
    assert lat["p50"] == pytest.approx(0.050)
    assert lat["p90"] == pytest.approx(0.090)
    assert lat["p95"] == pytest.approx(0.095)
    assert lat["p99"] == pytest.approx(0.099)


def test_percentile_is_nearest_rank() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 51) == 3.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([1.0, 2.0], 0) == 1.0


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
    assert [b["count"] for b in buckets] == [10] * 9 + [10]
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
