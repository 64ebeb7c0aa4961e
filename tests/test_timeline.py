"""Time buckets stay bounded however long the run: neighbours merge, nothing is lost."""

from __future__ import annotations

import pytest

from fetchq.report import sketch
from fetchq.report.tally import Tally
from fetchq.report.timeline import Timeline

T0 = 1_700_000_000.0


def test_buckets_start_one_second_wide_and_aligned() -> None:
    timeline = Timeline()
    timeline.at(T0 + 0.2).requests += 1
    timeline.at(T0 + 0.9).requests += 1
    timeline.at(T0 + 3.5).requests += 1
    points = [(start, bucket.requests) for start, bucket in timeline.buckets()]
    assert points == [(T0, 2), (T0 + 1, 0), (T0 + 2, 0), (T0 + 3, 1)]
    assert timeline.width == 1.0


def test_a_long_run_doubles_the_width_and_keeps_every_count() -> None:
    timeline = Timeline(max_buckets=100)
    seconds = 10_000  # a request a second for close to three hours
    for i in range(seconds):
        bucket = timeline.at(T0 + i)
        bucket.requests += 1
        bucket.latency.add(0.001 * (1 + i % 10))
        assert len(timeline) <= 100
    assert timeline.width == 128.0  # 10,000 s / 128 s = 79 buckets; 64 s would need 157
    counts = [bucket.requests for _, bucket in timeline.buckets()]
    assert sum(counts) == seconds
    assert max(counts) == 128
    assert all(start % 128 == 0 for start, _ in timeline.buckets())
    whole = sketch.merged(bucket.latency for bucket in timeline.all_buckets())
    assert whole.count == seconds
    assert sketch.quantile(whole, 50) == pytest.approx(0.005, rel=0.01)


def test_a_result_far_in_the_past_keeps_the_timeline_bounded() -> None:
    timeline = Timeline(max_buckets=50)
    timeline.at(T0).requests += 1
    timeline.at(T0 - 86_400).requests += 1  # a worker whose clock is a day behind
    assert len(list(timeline.buckets())) <= 50
    assert sum(bucket.requests for _, bucket in timeline.buckets()) == 2
    assert timeline.width >= 86_400 / 50


def test_results_without_a_time_are_counted_apart() -> None:
    timeline = Timeline()
    timeline.at(0.0).requests += 1
    timeline.at(T0).requests += 1
    assert timeline.undated.requests == 1
    assert [bucket.requests for _, bucket in timeline.buckets()] == [1]
    assert sum(bucket.requests for bucket in timeline.all_buckets()) == 2


def test_merged_buckets_keep_every_figure() -> None:
    """Coarsening merges tallies: counts, span and both sketches survive it."""
    timeline = Timeline(max_buckets=2)
    for second, ok, late in ((0, True, False), (1, False, True), (2, True, True)):
        bucket = timeline.at(T0 + second)
        bucket.scheduled += 1
        bucket.add(T0 + second, 0.5, ok)
        bucket.add_schedule(0.5 + second, late)
    assert timeline.width == 2.0  # three seconds in two buckets at most
    whole = Tally()
    for bucket in timeline.all_buckets():
        whole.merge(bucket)
    assert (whole.requests, whole.failed, whole.ok) == (3, 1, 2)
    assert (whole.scheduled, whole.late) == (3, 2)
    assert (whole.first_start, whole.last_end) == (T0, T0 + 2.5)
    assert whole.rate == pytest.approx(3 / 2.5)
    assert whole.latency.count == 3
    assert whole.response is not None and whole.response.count == 3
    assert sketch.quantile(whole.response, 100) == pytest.approx(2.5, rel=0.01)
