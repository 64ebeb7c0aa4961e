"""Staged rates: the stages as written, the schedule they make, and the scheduler keeping
it (in one process, on a made-up clock); the fleet holding it is in test_pace."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
from brokerkit import Factory, crash
from fakeclock import FakeClock

from fetchq.errors import BadRequest, UsageError
from fetchq.server.jobqueue import Policy
from fetchq.server.scheduler import LOOKAHEAD, Scheduler
from fetchq.server.tasks import Batch
from fetchq.units import is_staged, parse_stages
from fetchq.wire.stages import Stages

RAMP = "0..500/s over 1m, 500/s for 5m, 500..0/s over 30s"


def test_stages_are_read_as_written():
    assert parse_stages(RAMP) == [[60.0, 0.0, 500.0], [300.0, 500.0, 500.0], [30.0, 500.0, 0.0]]
    assert parse_stages("600/m for 10s,  .5..1.5 over 2m") == [
        [10.0, 10.0, 10.0],
        [120.0, 0.5, 1.5],
    ]
    assert is_staged(RAMP) and is_staged("100/s for 1m") and not is_staged("100/s")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("100/s over 1m", "a rate holds 'for' a time"),
        ("0..100/s for 1m", "a ramp A..B goes 'over' one"),
        ("100/s for", "invalid stage"),
        ("100/s for 1m,", "invalid stage ''"),
        ("0/s for 1m", "the stages hold no request"),
        ("100/s for 0s", "more than zero"),
        ("2000000/s for 1s", "at most"),
    ],
)
def test_a_malformed_stage_says_which_and_why(text: str, reason: str):
    with pytest.raises(UsageError, match=reason.replace("(", r"\(")):
        parse_stages(text)


def test_request_n_starts_where_the_integral_reaches_n_and_a_half():
    stages = Stages(parse_stages(RAMP))
    assert stages.total == 15_000 + 150_000 + 7_500
    assert stages.requests == 172_500
    for n in (0, 1, 7, 14_999, 15_000, 99_999, 165_000, 172_499):
        assert stages.started_by(stages.start_of(n)) == pytest.approx(n + 0.5, abs=1e-6)
    starts = [stages.start_of(n) for n in range(0, stages.requests, 97)]
    assert starts == sorted(starts)
    assert stages.start_of(0) == pytest.approx(math.sqrt(2 * 0.5 * 60 / 500))  # a t^2 / 2T
    assert stages.start_of(172_500) == pytest.approx(390 + 0.5 / 500)  # past the end: tail rate
    assert stages.rate_at(30) == 250 and stages.rate_at(100) == 500 and stages.rate_at(375) == 250


def test_a_stage_of_rate_zero_is_a_pause():
    stages = Stages(parse_stages("10/s for 1s, 0/s for 5s, 10/s for 1s"))
    starts = [stages.start_of(n) for n in range(stages.requests)]
    assert len(starts) == 20
    assert starts[9] < 1 and starts[10] > 6


def scheduler_with(policy: Policy, count: int = 2_000) -> Scheduler:
    scheduler = Scheduler()
    scheduler.set_policy("a", policy)
    scheduler.add_batch(Batch("a", 1, [f"http://h/{n}" for n in range(count)], 3, 5.0, 0.0), 0.0)
    return scheduler


def never(_: int) -> bool:
    return False


def test_the_scheduler_gives_each_task_its_staged_start():
    stages = parse_stages("0..100/s over 4s, 100/s for 4s")
    scheduler = scheduler_with(Policy(rate=100.0, stages=tuple(map(tuple, stages))))
    starts = []
    for now in (1000.0 + step * 0.5 for step in range(10)):  # up to 1004.5
        starts += [pick.start for pick in scheduler.take(1_000, now, never)]
    schedule = Stages(stages)
    assert starts == pytest.approx([1000.0 + schedule.start_of(n) for n in range(len(starts))])
    due = [n for n in range(schedule.requests) if schedule.start_of(n) <= 4.5 + LOOKAHEAD]
    assert len(starts) == len(due) == 200 + 150, "all that start within the lookahead"


def test_a_new_constant_rate_replaces_the_rest_of_the_stages():
    stages = tuple(map(tuple, parse_stages("0..100/s over 4s, 100/s for 100s")))
    scheduler = scheduler_with(Policy(rate=100.0, stages=stages))
    before = scheduler.take(1_000, 1000.0, never)
    scheduler.set_policy("a", Policy(rate=10.0))
    after = [pick.start for pick in scheduler.take(1_000, 1001.0, never)]
    assert after[0] > before[-1].start
    assert len(after) >= 5
    assert [b - a for a, b in itertools.pairwise(after)] == pytest.approx([0.1] * (len(after) - 1))


def test_a_pause_holds_the_stages_where_they_were():
    stages = tuple(map(tuple, parse_stages("10/s for 2s, 50/s for 2s")))
    scheduler = scheduler_with(Policy(rate=50.0, stages=stages))
    first = [pick.start for pick in scheduler.take(1_000, 1000.0, never)]
    scheduler.pause("a", True, 1000.5)
    scheduler.pause("a", False, 1100.0)
    resumed = [pick.start for pick in scheduler.take(1_000, 1100.0, never)]
    assert len(first) == 10
    assert resumed[0] == 1100.0, "the next start, moved to the resume"
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(resumed)]
    assert gaps[:9] == [0.1] * 9, "the rest of the first stage's 10/s"
    assert resumed[10] == pytest.approx(1100.0 - 0.05 + 1.0 + 0.01), "then 50/s"


def test_a_staged_rate_survives_a_restart_and_job_set_rate_ends_it(
    implementation: Factory, tmp_path: Path
):
    path = tmp_path / "fetchq.journal"
    stages = parse_stages("0..100/s over 4s, 100/s for 4s")
    broker = implementation(durable=path)
    broker.submit({"job": "s", "urls": ["http://127.0.0.1/a"], "stages": stages})
    crash(broker)
    restarted = implementation(durable=path)
    assert restarted.status()["jobs"]["s"]["policy"]["stages"] == stages
    restarted.compact()
    crash(restarted)
    again = implementation(durable=path)
    assert again.status()["jobs"]["s"]["policy"]["stages"] == stages
    view = again.steer("s", {"action": "set", "rate": 5.0})
    assert (view["policy"]["stages"], view["policy"]["rate"]) == (None, 5.0)
    with pytest.raises(BadRequest, match="stages: a stage lasts"):
        again.submit({"job": "t", "urls": [], "stages": [[0, 1, 1]]})
    for malformed in ([5], [[1, "x", 2]], "fast", []):
        with pytest.raises(BadRequest, match="stages: "):
            again.submit({"job": "t", "urls": [], "stages": malformed})
    again.close()


@pytest.mark.parametrize("hosts", [1, 2], ids=["a lone host's runs", "hosts taking turns"])
def test_a_job_with_host_limits_keeps_the_staged_starts(hosts: int):
    """Tasks that wait per host go one at a time, or as a run from a host alone in its
    turn: at the staged starts either way."""
    stages = parse_stages("0..100/s over 4s, 100/s for 4s")
    scheduler = Scheduler()
    scheduler.set_policy("a", Policy(rate=100.0, stages=tuple(map(tuple, stages)), per_host=500))
    urls = [f"http://h{n % hosts}.test/{n}" for n in range(2_000)]
    scheduler.add_batch(Batch("a", 1, urls, 3, 5.0, 0.0), 0.0)
    starts = []
    for now in (1000.0 + step * 0.5 for step in range(10)):
        starts += [pick.start for pick in scheduler.take(1_000, now, never)]
    schedule = Stages(stages)
    assert starts == pytest.approx([1000.0 + schedule.start_of(n) for n in range(len(starts))])
    assert len(starts) == 350


def test_status_shows_the_rate_the_stages_ask_for_now(implementation: Factory, clock: FakeClock):
    broker = implementation(clock=clock)
    stages = parse_stages("0..100/s over 4s, 100/s for 4s")
    broker.submit(
        {"job": "s", "urls": [f"http://127.0.0.1/{n}" for n in range(900)], "stages": stages}
    )
    broker.lease("w", 1, 0)  # the stages begin
    clock.advance(2.0)
    assert broker.status()["jobs"]["s"]["pace"]["target"] == pytest.approx(50.0)
    clock.advance(10.0)
    assert broker.status()["jobs"]["s"]["pace"]["target"] == pytest.approx(100.0)


def test_a_start_held_back_takes_the_next_staged_slot_without_a_burst():
    stages = tuple(map(tuple, parse_stages("10/s for 100s")))
    scheduler = scheduler_with(Policy(rate=10.0, stages=stages, retry_after=True))
    assert scheduler.take(1, 1000.0, never)[0].start == 1000.05
    scheduler.hold("a", "http://h/0", until=1002.0)  # the site asked for two seconds
    starts = [pick.start for pick in scheduler.take(20, 1001.5, never)]
    assert starts[:3] == pytest.approx([1002.0, 1002.05, 1002.15])


def test_a_dispatch_to_a_staged_job_keeps_its_stages(implementation: Factory):
    broker = implementation()
    stages = parse_stages("0..100/s over 4s, 100/s for 4s")
    broker.submit({"job": "s", "urls": ["http://127.0.0.1/a"], "stages": stages})
    broker.submit({"job": "s", "urls": ["http://127.0.0.1/b"], "stages": stages})  # the same
    with pytest.raises(BadRequest, match="has a staged rate, and this dispatch asks for other"):
        broker.submit({"job": "s", "urls": ["http://127.0.0.1/c"], "stages": stages[:1]})
    with pytest.raises(BadRequest, match="job set s --rate R ends its stages"):
        broker.submit({"job": "s", "urls": ["http://127.0.0.1/c"], "rate": 5.0})


def test_a_broker_leases_at_the_staged_starts_and_a_pause_holds_them(
    implementation: Factory, clock: FakeClock
):
    """Through the broker's API: the starts leased are the stages' own, a second ahead
    at most, from the first lease on; a pause holds them, and they go on where they
    were at the resume."""
    wall = 1_700_000_000.0
    broker = implementation(clock=clock, wall_clock=lambda: wall + clock.now)
    stages = parse_stages("0..100/s over 4s, 100/s for 4s")
    schedule = Stages(stages)
    urls = [f"http://127.0.0.1/{n}" for n in range(schedule.requests)]
    broker.submit({"job": "s", "urls": urls, "stages": stages})
    first_lease = wall + clock.now
    starts = []
    for _ in range(4):
        starts += [task["scheduled"] for task in broker.lease("w", 1_000, 0)]
        clock.advance(0.5)
    assert starts == pytest.approx(
        [first_lease + schedule.start_of(n) for n in range(len(starts))], abs=1e-6
    )
    assert len(starts) == math.floor(schedule.started_by(1.5 + LOOKAHEAD) + 0.5)
    broker.steer("s", {"action": "pause"})
    clock.advance(10.0)
    broker.steer("s", {"action": "resume"})
    resumed = [task["scheduled"] for task in broker.lease("w", 1_000, 0)]
    assert resumed[0] == pytest.approx(wall + clock.now, abs=1e-6)  # the next start: now
    done = len(starts)
    assert [start - resumed[0] for start in resumed] == pytest.approx(
        [schedule.start_of(done + n) - schedule.start_of(done) for n in range(len(resumed))],
        abs=1e-6,
    )  # and the stages go on from where they were


@pytest.mark.parametrize("hosts", [1, 2], ids=["one host", "two hosts"])
def test_a_broker_keeps_the_staged_starts_of_a_job_with_host_limits(
    implementation: Factory, clock: FakeClock, hosts: int
):
    """Through the broker's API, a job whose tasks wait per host: its starts are the
    stages' own, whichever host each goes to."""
    wall = 1_700_000_000.0
    broker = implementation(clock=clock, wall_clock=lambda: wall + clock.now)
    stages = parse_stages("0..100/s over 4s, 100/s for 4s")
    urls = [f"http://h{n % hosts}.test/{n}" for n in range(2_000)]
    broker.submit({"job": "s", "urls": urls, "stages": stages, "per_host": 500})
    first_lease = wall + clock.now
    starts = []
    for _ in range(10):
        starts += [task["scheduled"] for task in broker.lease("w", 1_000, 0)]
        clock.advance(0.5)
    schedule = Stages(stages)
    assert sorted(starts) == pytest.approx(
        [first_lease + schedule.start_of(n) for n in range(len(starts))], abs=1e-6
    )
    assert len(starts) == math.floor(schedule.started_by(4.5 + LOOKAHEAD) + 0.5)
