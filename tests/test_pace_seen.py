"""The rate the server says a job achieves: whole seconds only, none of the ramp-up."""

from __future__ import annotations

from typing import Any

import pytest

from fetchq.commands.status import pace_lines
from fetchq.server.jobs import RECENT, PaceSeen
from fetchq.units import format_achieved
from fetchq.wire.api import LATE_AFTER
from fetchq.wire.records import StoredResult, lateness

T0 = 1000.0


def results(n: int, *, late_by: float = 0.0) -> list[StoredResult]:
    """Results as the server keeps them."""
    one = {"id": 1, "elapsed": 0.02, "scheduled": T0, "started": T0 + late_by}
    return [StoredResult.of(one) for _ in range(n)]


def run_at(pace: PaceSeen, rate: int, start: float, end: float) -> None:
    """Results coming in at ``rate`` a second from ``start`` to ``end``, ten batches a second."""
    steps = round((end - start) * 10)
    for step in range(steps):
        pace.record(start + step / 10, results(rate // 10))


def test_a_young_job_is_measured_from_the_second_after_its_first_result() -> None:
    pace = PaceSeen()
    assert (pace.rate(T0), pace.measured_over(T0)) == (0.0, 0.0)
    run_at(pace, 150, T0 + 0.7, T0 + 1.1)  # the first result late in a second, then 150/s
    assert (pace.rate(T0 + 1.1), pace.measured_over(T0 + 1.1)) == (0.0, 0.0), "too young"
    run_at(pace, 150, T0 + 1.1, T0 + 1.9)
    # No whole second after the first result's yet: measured since the first result.
    assert pace.measured_over(T0 + 1.9) == pytest.approx(1.2)
    assert pace.rate(T0 + 1.9) == pytest.approx(150.0, rel=0.1)
    run_at(pace, 150, T0 + 1.9, T0 + 3.5)
    assert pace.measured_over(T0 + 3.5) == 2  # T0+1 and T0+2; T0+3 is still filling
    assert pace.rate(T0 + 3.5) == pytest.approx(150.0)
    assert pace.mean_elapsed(T0 + 3.5) == pytest.approx(0.02)


def test_an_older_job_is_measured_over_the_last_whole_seconds() -> None:
    pace = PaceSeen()
    run_at(pace, 100, T0, T0 + 20)
    run_at(pace, 200, T0 + 20, T0 + 25.5)
    assert pace.measured_over(T0 + 25.5) == RECENT
    # T0+15 .. T0+24: five seconds at 100/s and five at 200/s; T0+25 half filled is not in it
    assert pace.rate(T0 + 25.5) == pytest.approx(150.0)
    assert pace.rate(T0 + 40) == 0.0 and pace.mean_elapsed(T0 + 40) is None, "idle since"


def test_late_starts_are_the_ones_the_reports_call_late() -> None:
    pace = PaceSeen()
    on_the_edge = {"id": 2, "scheduled": 0.0, "started": LATE_AFTER}
    late = [*results(1, late_by=0.2), *results(1, late_by=0.5), *results(1, late_by=0.3)]
    pace.record(T0, [*late, StoredResult.of(on_the_edge), *results(1)])
    assert pace.late == 3 and pace.worst_lateness == pytest.approx(0.5)
    never_started = {"id": 3, "scheduled": 0.0}  # ended by the server: cancelled, refused
    pace.record(T0, [StoredResult.of(never_started), *results(2, late_by=0.7)])
    assert pace.late == 5 and pace.worst_lateness == pytest.approx(0.7)
    assert lateness(on_the_edge) == (LATE_AFTER, False), "late is more than LATE_AFTER"
    assert lateness({"scheduled": 0.0, "started": 0.0101}) == (0.0101, True)
    assert lateness({"started": T0, "scheduled": None}) is None


def test_the_window_is_said_with_the_rate() -> None:
    assert format_achieved(150.04, 10) == "150.0/s (last 10 s)"
    assert format_achieved(38.46, 0.7) == "38.5/s (last 0.7 s)"
    assert format_achieved(0.0, 0) == "-"


def test_a_job_not_measured_yet_is_not_said_to_fall_behind() -> None:
    pace = {"target": 100.0, "achieved": 0.0, "achieved_over": 0.0, "late": 0}
    job: dict[str, Any] = {
        "queued": 500,
        "policy": {"aggregate": False},
        "pace": {**pace, "needed_in_flight": 2.0, "worst_lateness": 0.0},
    }
    assert pace_lines("young", job, threads=8) == ["  young: target 100.0/s, achieved -"]
    job["pace"].update(achieved=50.0, achieved_over=3.0)
    (said, behind) = pace_lines("young", job, threads=8)
    assert said == "  young: target 100.0/s, achieved 50.0/s (last 3 s)"
    assert behind.startswith("    cannot keep up:"), behind
    job["policy"]["aggregate"] = True  # counted a round of spans at a time: in steps
    assert pace_lines("steps", job, threads=8) == [
        "  steps: target 100.0/s, achieved 50.0/s (last 3 s)"
    ]
