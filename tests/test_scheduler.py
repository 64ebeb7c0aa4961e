"""The scheduler alone: rates, per-host caps and delays, fairness, robots.txt, holds."""

from __future__ import annotations

import pytest

from fetchq.ids import IdSet
from fetchq.server.jobqueue import Pick, Policy, Robots
from fetchq.server.scheduler import LOOKAHEAD, Scheduler
from fetchq.server.tasks import Batch

BASE = 9 << 32


def never(_: int) -> bool:
    return False


def submit(scheduler: Scheduler, job: str, urls: list[str], first: int = BASE + 1) -> int:
    scheduler.add_batch(Batch(job, first, urls, 3, 5.0, 0.0), now=0.0)
    return first + len(urls)


def hosts_of(picks: list) -> list[str | None]:
    return [pick.host for pick in picks]


def test_a_rate_spaces_starts_evenly_and_hands_out_only_a_second_ahead() -> None:
    scheduler = Scheduler()
    scheduler.set_policy("a", Policy(rate=10.0))
    submit(scheduler, "a", [f"http://h/{n}" for n in range(100)])
    picks = scheduler.take(100, 1000.0, never)
    starts = [pick.start for pick in picks]
    assert starts == [1000.0 + n * 0.1 for n in range(len(starts))]
    assert len(picks) == int(LOOKAHEAD * 10) + 1  # only what starts within the lookahead
    assert scheduler.take(100, 1000.0, never) == []
    assert scheduler.next_change(1000.0) == starts[-1] + 0.1 - LOOKAHEAD
    later = scheduler.take(100, 1000.5, never)
    assert later[0].start == starts[-1] + 0.1


def test_a_late_fleet_keeps_the_schedule() -> None:
    """Slots do not move when workers come late: lateness shows in the results."""
    scheduler = Scheduler()
    scheduler.set_policy("a", Policy(rate=10.0))
    submit(scheduler, "a", [f"http://h/{n}" for n in range(50)])
    first = scheduler.take(5, 1000.0, never)
    behind = scheduler.take(20, 1003.0, never)  # three seconds later
    assert behind[0].start == first[-1].start + 0.1
    assert len(behind) == 20 and behind[-1].start < 1003.0 + LOOKAHEAD


def test_a_host_limit_moves_the_rate_on_instead_of_bunching_starts() -> None:
    scheduler = Scheduler()
    scheduler.set_policy("a", Policy(rate=10.0, retry_after=True))
    submit(scheduler, "a", [f"http://a.test/{n}" for n in range(20)])
    scheduler.take(1, 1000.0, never)
    scheduler.hold("a", "http://a.test/0", until=1002.0)  # the site asked for two seconds
    starts = [pick.start for pick in scheduler.take(20, 1001.5, never)]
    assert starts[:3] == [1002.0, 1002.1, 1002.2]


def test_a_pause_is_not_lateness() -> None:
    scheduler = Scheduler()
    scheduler.set_policy("a", Policy(rate=10.0))
    submit(scheduler, "a", [f"http://h/{n}" for n in range(50)])
    scheduler.take(5, 1000.0, never)
    scheduler.pause("a", True, 1000.5)
    assert scheduler.take(5, 1001.0, never) == []
    scheduler.pause("a", False, 1010.0)
    assert scheduler.take(1, 1010.0, never)[0].start == 1010.0


def test_per_host_cap_holds_and_hosts_take_turns() -> None:
    scheduler = Scheduler()
    scheduler.set_policy("a", Policy(per_host=2))
    urls = [f"http://a.test/{n}" for n in range(100)] + ["http://b.test/1", "http://c.test/1"]
    submit(scheduler, "a", urls)
    picks = scheduler.take(10, 0.0, never)
    assert sorted(hosts_of(picks)) == ["a.test:80", "a.test:80", "b.test:80", "c.test:80"]
    assert scheduler.take(10, 0.0, never) == []  # a.test is at its cap
    scheduler.lease_ended("a", "a.test:80")
    assert hosts_of(scheduler.take(10, 0.0, never)) == ["a.test:80"]
    assert scheduler.busiest_hosts("a", 1) == [("a.test:80", 97, 2)]


def test_a_lone_host_keeps_the_rate_from_one_lease_to_the_next() -> None:
    """A host alone in its turn hands out a run of tasks at once; the rate's schedule
    goes on from the end of one run to the start of the next."""
    scheduler = Scheduler()
    scheduler.set_policy("a", Policy(rate=10.0, per_host=100))
    submit(scheduler, "a", [f"http://a.test/{n}" for n in range(50)])
    first = scheduler.take(100, 1000.0, never)
    second = scheduler.take(100, 1000.5, never)
    starts = [pick.start for pick in first + second]
    assert 1000.0 + LOOKAHEAD - 0.1 <= first[-1].start <= 1000.0 + LOOKAHEAD  # a second ahead
    assert 1000.5 + LOOKAHEAD - 0.1 <= second[-1].start <= 1000.5 + LOOKAHEAD
    assert starts == pytest.approx([1000.0 + n * 0.1 for n in range(len(starts))], abs=1e-9)
    assert [pick.task.id for pick in first + second] == [BASE + 1 + n for n in range(len(starts))]


def test_a_lone_hosts_cap_holds_for_a_run_and_after_it() -> None:
    scheduler = Scheduler()
    scheduler.set_policy("a", Policy(per_host=5))
    submit(scheduler, "a", [f"http://a.test/{n}" for n in range(50)])
    assert len(scheduler.take(20, 0.0, never)) == 5
    assert scheduler.take(20, 0.0, never) == []  # at its cap
    scheduler.lease_ended("a", "a.test:80", 2)
    assert [pick.task.id for pick in scheduler.take(20, 0.0, never)] == [BASE + 6, BASE + 7]


@pytest.mark.parametrize("as_set", [False, True], ids=["is_done", "done set"])
def test_a_run_of_a_lone_host_skips_tasks_already_done(as_set: bool) -> None:
    """A task finished before a restart is still in its batch: a run of ids that holds
    one is not taken whole (whether done is asked id by id or of the server's set)."""
    scheduler = Scheduler()
    scheduler.set_policy("a", Policy(per_host=100))
    submit(scheduler, "a", [f"http://a.test/{n}" for n in range(10)])
    done = IdSet([BASE + 4])
    picks = scheduler.take_tasks(20, 0.0, done.__contains__, done if as_set else None)
    assert [pick.task.id for pick in picks if isinstance(pick, Pick)] == [
        BASE + n for n in range(1, 11) if n != 4
    ]


class AllowAll(Robots):
    crawl_delay = None

    def allowed(self, url: str) -> bool:
        return True


@pytest.mark.parametrize(
    "policy", [Policy(retry_after=True), Policy(obey_robots=True)], ids=["retry-after", "robots"]
)
def test_a_host_with_a_long_queue_does_not_starve_the_others(policy: Policy) -> None:
    """Obeying Retry-After, or a robots.txt that allows everything, limits nothing by
    itself (no cap, no delay), yet the job's tasks wait per host and the hosts take
    turns: fifty tasks for a.test do not keep b.test and c.test waiting."""
    scheduler = Scheduler()
    scheduler.set_policy("a", policy)
    urls = [f"http://a.test/{n}" for n in range(50)] + ["http://b.test/1", "http://c.test/1"]
    submit(scheduler, "a", urls)
    if policy.obey_robots:  # each host's robots.txt is asked for first
        probes = scheduler.take(10, 0.0, never)
        assert all(p.robots for p in probes)
        assert hosts_of(probes) == ["a.test:80", "b.test:80", "c.test:80"]
        for probe in probes:
            scheduler.lease_ended("a", probe.host)
            scheduler.learn_robots("a", str(probe.host), AllowAll())
    assert hosts_of(scheduler.take(3, 0.0, never)) == ["a.test:80", "b.test:80", "c.test:80"]


def test_a_host_delay_spaces_starts_on_each_host() -> None:
    scheduler = Scheduler()
    scheduler.set_policy("a", Policy(host_delay=0.5))
    urls = [f"http://a.test/{n}" for n in range(10)] + [f"http://b.test/{n}" for n in range(10)]
    submit(scheduler, "a", urls)
    picks = scheduler.take(20, 100.0, never)
    for host in ("a.test:80", "b.test:80"):
        starts = [p.start for p in picks if p.host == host]
        assert starts == [100.0 + 0.5 * n for n in range(len(starts))]
        assert starts[-1] <= 100.0 + LOOKAHEAD


def test_the_servers_limits_hold_across_jobs() -> None:
    scheduler = Scheduler(Policy(per_host=1))
    submit(scheduler, "a", ["http://a.test/1", "http://a.test/2"])
    submit(scheduler, "b", ["http://a.test/3", "http://b.test/1"], first=BASE + 10)
    assert sorted(hosts_of(scheduler.take(10, 0.0, never))) == ["a.test:80", "b.test:80"]
    scheduler.lease_ended("a", "a.test:80")
    assert hosts_of(scheduler.take(10, 0.0, never)) == ["a.test:80"]


class Forbid(Robots):
    crawl_delay = 2.0

    def allowed(self, url: str) -> bool:
        return "/private" not in url


def test_robots_are_asked_first_then_obeyed() -> None:
    scheduler = Scheduler()
    scheduler.set_policy("a", Policy(obey_robots=True))
    submit(scheduler, "a", ["http://a.test/1", "http://a.test/private/2", "http://a.test/3"])
    (probe,) = scheduler.take(10, 0.0, never)
    assert probe.robots and probe.task.url == "http://a.test/robots.txt"
    assert scheduler.take(10, 0.0, never) == []  # nothing before robots.txt is known
    scheduler.lease_ended("a", probe.host)
    scheduler.learn_robots("a", "a.test:80", Forbid())
    # The robots.txt fetch was a request too: Crawl-delay (2 s) counts from it.
    assert scheduler.take(10, 0.0, never) == []
    assert [(p.task.url, p.start) for p in scheduler.take(10, 1.0, never)] == [
        ("http://a.test/1", 2.0)
    ]
    assert [(p.task.url, p.start) for p in scheduler.take(10, 3.0, never)] == [
        ("http://a.test/3", 4.0)
    ]
    assert [task.url for task, _ in scheduler.denied] == ["http://a.test/private/2"]


def test_a_hold_keeps_a_host_waiting() -> None:
    scheduler = Scheduler()
    scheduler.set_policy("a", Policy(retry_after=True))
    submit(scheduler, "a", ["http://a.test/1", "http://b.test/1"])
    scheduler.hold("a", "http://a.test/1", until=30.0)
    assert hosts_of(scheduler.take(10, 0.0, never)) == ["b.test:80"]
    assert scheduler.take(10, 28.0, never) == []
    assert [p.start for p in scheduler.take(10, 29.5, never)] == [30.0]


def test_a_cancelled_job_is_drained_not_handed_out() -> None:
    scheduler = Scheduler()
    submit(scheduler, "a", [f"http://a.test/{n}" for n in range(5)])
    scheduler.cancel("a")
    assert scheduler.take(10, 0.0, never) == []
    assert len(scheduler.drain("a", 3, never)) == 3
    assert scheduler.count("a") == 2


def test_the_spellings_of_one_host_share_its_cap() -> None:
    """Upper case, user info, a trailing dot, the default port, the IDNA form: one host."""
    scheduler = Scheduler()
    scheduler.set_policy("a", Policy(per_host=1))
    urls = ["http://a.test/1", "http://A.TEST./2", "http://u:p@a.test:80/3"]
    urls += ["http://bücher.test/1", "http://xn--bcher-kva.test/2", "http://BÜCHER.test./3"]
    submit(scheduler, "a", urls)
    picks = scheduler.take(10, 0.0, never)
    assert sorted(hosts_of(picks)) == ["a.test:80", "xn--bcher-kva.test:80"]
    assert scheduler.take(10, 0.0, never) == []  # each at its cap, whatever the spelling
    scheduler.lease_ended("a", "a.test:80")
    assert [p.task.url for p in scheduler.take(10, 0.0, never)] == ["http://A.TEST./2"]


def test_a_hold_asked_under_one_spelling_holds_the_others() -> None:
    scheduler = Scheduler()
    scheduler.set_policy("a", Policy(retry_after=True))
    submit(scheduler, "a", ["http://a.test/1", "http://A.test./2"])
    scheduler.hold("a", "http://u:p@a.test:80/0", until=1002.0)
    assert [(p.task.url, p.start) for p in scheduler.take(10, 1001.0, never)] == [
        ("http://a.test/1", 1002.0),
        ("http://A.test./2", 1002.0),
    ]


def test_robots_txt_is_asked_at_the_normal_address_without_user_info() -> None:
    scheduler = Scheduler()
    scheduler.set_policy("a", Policy(obey_robots=True))
    submit(scheduler, "a", ["http://u:secret@BÜCHER.Test.:80/1", "http://bücher.test/2"])
    (probe,) = scheduler.take(10, 0.0, never)
    assert probe.robots and probe.task.url == "http://xn--bcher-kva.test/robots.txt"
    assert probe.host == "xn--bcher-kva.test:80"
