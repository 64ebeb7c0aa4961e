"""Unit tests of the broker state machine, driven by a hand-advanced clock."""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from brokerkit import Factory, renew
from fakeclock import FakeClock

from fetchq.errors import BadRequest, NoSuchJob, VersionMismatch
from fetchq.server.service import BrokerService
from fetchq.server.store.broker import StoreBroker
from fetchq.server.store.connection import shard_tag
from fetchq.server.store.shards import shard_of_key
from fetchq.wire.api import MAX_LEASE, MAX_SUBMIT, MAX_WAIT, PROTOCOL, ResultsDelivery
from fetchq.wire.records import (
    RECORD_VERSION,
    RESULT_FIELDS,
    ROBOTS_REFUSED,
    TASK_FIELDS,
    make_error,
    make_result,
)

WALL = 1_700_000_000.0
LEASE = 10.0


@pytest.fixture
def make_broker(implementation: Factory, clock: FakeClock) -> Factory:
    """Brokers of the implementation under test, on the test's clock."""

    def make(**settings: Any) -> BrokerService:
        settings.setdefault("lease_timeout", LEASE)
        settings.setdefault("wall_clock", lambda: WALL)
        return implementation(clock=clock, **settings)

    return make


@pytest.fixture
def broker(make_broker: Factory) -> BrokerService:
    return make_broker()


def urls(count: int, prefix: str = "http://127.0.0.1/") -> list[str]:
    return [f"{prefix}{n}" for n in range(count)]


def submit(broker: BrokerService, job: str, count: int, **extra: Any) -> dict[str, Any]:
    return broker.submit({"job": job, "urls": urls(count), **extra})


def ok(task: dict[str, Any], worker: str = "w1") -> dict[str, Any]:
    return make_result(task, worker=worker, started=WALL, elapsed=0.01, status=200, nbytes=5)


def failed(task: dict[str, Any], kind: str, worker: str = "w1") -> dict[str, Any]:
    return make_result(
        task, worker=worker, started=WALL, elapsed=0.01, error=make_error(kind, "it broke")
    )


def http(task: dict[str, Any], status: int, worker: str = "w1") -> dict[str, Any]:
    return make_result(task, worker=worker, started=WALL, elapsed=0.01, status=status)


def drain(broker: BrokerService, job: str | None) -> list[dict[str, Any]]:
    """Take every result waiting and confirm it, as an output that wrote them would."""
    reply = broker.results(job, MAX_SUBMIT, 0)
    if reply["results"]:
        assert broker.ack(reply["token"]) == len(reply["results"])
    else:
        assert reply["token"] is None
    return reply["results"]


def ready(broker: BrokerService, job: str, count: int, worker: str = "w1") -> list[int]:
    """Submit ``count`` tasks, run them all; returns their ids in result order."""
    submit(broker, job, count)
    tasks = broker.lease(worker, count, 0)
    assert broker.complete(worker, [ok(t, worker) for t in tasks])["accepted"] == count
    return [t["id"] for t in tasks]


def ids_of(reply: dict[str, Any]) -> list[int]:
    return [r["id"] for r in reply["results"]]


def where(broker: BrokerService, job: str) -> tuple[int, int, int]:
    """A job's results as (waiting, handed out, confirmed), checking that they add up."""
    counts = broker.job(job)
    finished = counts["succeeded"] + counts["failed"]
    assert counts["waiting"] + counts["handed_out"] + counts["confirmed"] == finished
    status = broker.status()
    unconfirmed = sum(j["waiting"] + j["handed_out"] for j in status["jobs"].values())
    assert status["unconfirmed"] == unconfirmed
    return counts["waiting"], counts["handed_out"], counts["confirmed"]


EMPTY = {"results": [], "done": False, "token": None}
DONE = {"results": [], "done": True, "token": None}


# -- submit, lease, complete, results -------------------------------------


def test_hello_reports_settings_and_refuses_other_protocols(broker: BrokerService) -> None:
    reply = broker.hello({"protocol": PROTOCOL})
    assert reply["protocol"] == PROTOCOL
    assert reply["lease_timeout"] == LEASE
    with pytest.raises(VersionMismatch, match="protocol"):
        broker.hello({"protocol": PROTOCOL + 1})
    with pytest.raises(VersionMismatch):
        broker.hello({})
    assert broker.hello({"protocol": PROTOCOL})["protocol"] == PROTOCOL


@pytest.mark.one_shard("jobs in different shards take their ids there: a job's follow one another")
def test_submit_returns_consecutive_ids_and_counts(broker: BrokerService) -> None:
    first = submit(broker, "a", 3)
    second = submit(broker, "b", 2)
    third = submit(broker, "a", 4)
    assert first["accepted"] == 3
    assert second == {"accepted": 2, "first_id": first["first_id"] + 3}
    assert third == {"accepted": 4, "first_id": first["first_id"] + 5}
    counts = broker.job("a")
    assert counts["submitted"] == 7
    assert counts["queued"] == 7
    assert counts["leased"] == 0
    assert counts["sealed"] is False
    assert counts["done"] is False
    assert broker.job("b")["submitted"] == 2


@pytest.mark.embedded_only(
    "a store counts its ids itself, across every server and restart: they need no clock"
)
def test_ids_never_run_ahead_of_the_clock_so_a_new_server_gives_ids_above_the_old(
    make_broker: Factory,
) -> None:
    """A server without a journal starts its ids at the moment it started and never
    gives one above the current moment (in half microseconds), however fast it is
    asked: every id of a run is below the first id of any later run (unique across
    restarts, no chance)."""
    started = time.time_ns() // 500
    old = make_broker()
    last = 0
    for _ in range(3):
        reply = submit(old, "a", MAX_SUBMIT)
        last = reply["first_id"] + MAX_SUBMIT - 1
        assert started < reply["first_id"] and last <= time.time_ns() // 500
    old.close()
    restarted = make_broker()
    assert submit(restarted, "a", 1)["first_id"] > last


def test_empty_submit_creates_the_job(broker: BrokerService) -> None:
    reply = submit(broker, "a", 0)
    assert reply["accepted"] == 0
    assert broker.job("a")["submitted"] == 0
    assert "a" in broker.status()["jobs"]


def test_a_job_that_obeys_robots_txt_first_hands_out_its_fetch(broker: BrokerService) -> None:
    """A robots.txt fetch goes out as a task of kind ``robots`` naming its host, alone,
    before any task of that host."""
    broker.submit({"job": "r", "urls": ["http://a.test/x", "http://a.test/y"], "obey_robots": True})
    (probe,) = broker.lease("w1", 10, 0)
    assert (probe["kind"], probe["host"], probe["url"]) == (
        "robots",
        "a.test:80",
        "http://a.test/robots.txt",
    )
    assert probe["scheduled"] is None and probe["attempt"] == 1


def test_robots_txt_once_fetched_refuses_what_it_forbids(broker: BrokerService) -> None:
    """The rules a worker's fetch brings are kept for the job's host: a task they allow
    is leased, one they forbid ends as a result without a request; a second report of
    the same fetch counts for nothing."""
    urls_ = ["http://a.test/open", "http://a.test/private/x"]
    broker.submit({"job": "r", "urls": urls_, "obey_robots": True})
    (probe,) = broker.lease("w1", 10, 0)
    report = {"id": probe["id"], "attempt": probe["attempt"], "status": 200, "error": None}
    rules = "User-agent: *\nDisallow: /private\n"
    assert broker.robots("w1", {**report, "body": rules}) == {"accepted": True}
    assert broker.robots("w1", {**report, "body": ""}) == {"accepted": False}
    leased = broker.lease("w1", 10, 0)
    assert [task["url"] for task in leased] == ["http://a.test/open"]
    (refused,) = broker.results("r", 10, 0)["results"]
    assert (refused["url"], refused["error"]["type"], refused["ok"]) == (
        "http://a.test/private/x",
        ROBOTS_REFUSED,
        False,
    )
    assert broker.job("r")["leased"] == 1


def test_a_robots_txt_the_site_cannot_give_is_asked_again_then_forbids_all(
    broker: BrokerService,
) -> None:
    broker.submit({"job": "r", "urls": ["http://a.test/x"], "obey_robots": True})
    for attempt in (1, 2, 3):
        (probe,) = broker.lease("w1", 10, 0)
        assert (probe["kind"], probe["attempt"]) == ("robots", attempt)
        failed_fetch = {"id": probe["id"], "attempt": attempt, "status": 503, "body": None}
        assert broker.robots("w1", {**failed_fetch, "error": None})["accepted"] is True
    assert broker.lease("w1", 10, 0) == []
    (refused,) = broker.results("r", 10, 0)["results"]
    assert refused["error"]["type"] == ROBOTS_REFUSED
    assert "robots.txt could not be fetched (HTTP 503)" in refused["error"]["message"]


def test_a_robots_txt_fetch_handed_back_is_asked_again_at_once(broker: BrokerService) -> None:
    broker.submit({"job": "r", "urls": ["http://a.test/x"], "obey_robots": True})
    (probe,) = broker.lease("w1", 10, 0)
    assert broker.lease("w2", 10, 0) == []  # one fetch of a host at a time
    assert broker.release("w1", [[probe["id"], probe["attempt"]]]) == 1
    (again,) = broker.lease("w2", 10, 0)
    assert (again["kind"], again["host"]) == ("robots", "a.test:80")


def test_a_result_naming_another_job_is_kept_under_its_tasks_job(
    broker: BrokerService,
) -> None:
    """The server's record of a task says which job it is in, not the worker's report."""
    submit(broker, "a", 1)
    (task,) = broker.lease("w1", 1, 0)
    assert broker.complete("w1", [{**ok(task), "job": "b"}])["accepted"] == 1
    (kept,) = broker.results("a", 10, 0)["results"]
    assert (kept["id"], kept["job"]) == (task["id"], "a")


def test_a_429_asking_to_wait_holds_the_host_and_queues_the_task_again(
    broker: BrokerService, clock: FakeClock
) -> None:
    broker.submit({"job": "a", "urls": urls(1), "retry_after": True})
    (task,) = broker.lease("w1", 1, 0)
    tally = broker.complete("w1", [{**http(task, 429), "retry_after": 5.0}])
    assert (tally["accepted"], tally["requeued"]) == (0, 1)
    assert broker.lease("w1", 1, 0) == []  # the host is held
    clock.advance(5.1)
    (again,) = broker.lease("w1", 1, 0)
    assert (again["id"], again["attempt"]) == (task["id"], 2)


def test_a_report_of_a_robots_txt_fetch_as_a_result_is_dropped(broker: BrokerService) -> None:
    """robots.txt fetches are reported with ``robots``: one sent as a result is no task's."""
    broker.submit({"job": "r", "urls": ["http://a.test/x"], "obey_robots": True})
    (probe,) = broker.lease("w1", 10, 0)
    tally = broker.complete("w1", [ok(probe)])
    assert (tally["accepted"], tally["dropped"]) == (0, 1)
    assert broker.job("r")["leased"] == 1  # the fetch is still out


def test_lease_hands_out_at_most_max_tasks_in_order(broker: BrokerService) -> None:
    first_id = submit(broker, "a", 5, timeout=7.5)["first_id"]
    tasks = broker.lease("w1", 3, 0)
    assert [t["id"] for t in tasks] == [first_id, first_id + 1, first_id + 2]
    assert [t["url"] for t in tasks] == urls(3)
    for task in tasks:
        assert tuple(task) == TASK_FIELDS
        assert task["v"] == RECORD_VERSION
        assert task["job"] == "a"
        assert task["attempt"] == 1
        assert task["timeout"] == 7.5
        assert task["submitted"] == WALL
    rest = broker.lease("w2", 10, 0)
    assert [t["id"] for t in rest] == [first_id + 3, first_id + 4]
    assert broker.lease("w1", 10, 0) == []
    counts = broker.job("a")
    assert counts["queued"] == 0
    assert counts["leased"] == 5


def test_results_and_done_only_after_finish(broker: BrokerService) -> None:
    submit(broker, "a", 2)
    first, second = broker.lease("w1", 2, 0)
    reply = broker.complete("w1", [ok(first), http(second, 500)])
    assert reply == {"accepted": 2, "dropped": 0, "requeued": 0, "renewed": 0}
    counts = broker.job("a")
    assert (counts["succeeded"], counts["failed"], counts["waiting"]) == (1, 1, 2)

    taken = broker.results("a", 10, 0)
    assert taken["done"] is False  # not sealed: more tasks may come
    assert sorted(r["id"] for r in taken["results"]) == sorted([first["id"], second["id"]])
    assert {r["ok"] for r in taken["results"]} == {True, False}
    assert broker.results("a", 10, 0) == EMPTY
    assert broker.ack(taken["token"]) == 2

    sealed = broker.seal("a")
    assert sealed["sealed"] is True
    assert sealed["done"] is True
    assert broker.results("a", 10, 0) == DONE


def test_sealed_job_is_done_only_when_every_result_is_delivered(broker: BrokerService) -> None:
    submit(broker, "a", 2)
    broker.seal("a")
    tasks = broker.lease("w1", 2, 0)
    assert broker.results("a", 10, 0) == EMPTY
    broker.complete("w1", [ok(t) for t in tasks])
    assert broker.job("a")["done"] is False
    one = broker.results("a", 1, 0)
    assert len(one["results"]) == 1
    assert one["done"] is False
    two = broker.results("a", 1, 0, ack=one["token"])
    assert len(two["results"]) == 1
    assert two["done"] is False  # handed out, not yet confirmed
    assert broker.job("a")["done"] is False
    assert broker.results("a", 1, 0, ack=two["token"]) == DONE
    assert broker.job("a")["done"] is True


def test_job_with_no_tasks_reads_done_once_finished(broker: BrokerService) -> None:
    assert broker.results("empty", 1, 0) == EMPTY
    broker.seal("empty")
    assert broker.results("empty", 1, 0) == DONE
    assert broker.results(None, 1, 0) == DONE


def test_submitting_more_unseals_a_job(broker: BrokerService) -> None:
    broker.seal("a")
    submit(broker, "a", 1)
    assert broker.job("a")["sealed"] is False
    assert broker.results("a", 1, 0)["done"] is False


def test_results_of_all_jobs(broker: BrokerService) -> None:
    submit(broker, "a", 1)
    submit(broker, "b", 1)
    tasks = broker.lease("w1", 2, 0)
    broker.complete("w1", [ok(t) for t in tasks])
    taken = broker.results(None, 10, 0)
    assert sorted(r["job"] for r in taken["results"]) == ["a", "b"]
    assert taken["done"] is False
    broker.seal("a")
    broker.seal("b")
    assert broker.results(None, 10, 0) == EMPTY  # handed out, not yet confirmed
    assert broker.results(None, 10, 0, ack=taken["token"]) == DONE


def test_a_job_never_submitted_is_an_error_and_no_read_or_steering_creates_it(
    broker: BrokerService,
) -> None:
    submit(broker, "probes", 1)
    with pytest.raises(NoSuchJob, match="no job 'probe' on this server: did you mean 'probes'"):
        broker.job("probe")
    for change in ({"action": "pause"}, {"action": "cancel"}, {"action": "set", "rate": 5.0}):
        with pytest.raises(NoSuchJob, match="no job 'nosuch'"):
            broker.steer("nosuch", change)
    assert broker.results("nosuch", 10, 0)["done"] is False
    assert set(broker.status()["jobs"]) == {"probes"}
    broker.seal("probes")
    (task,) = broker.lease("w1", 1, 0)
    broker.complete("w1", [ok(task)])
    taken = broker.results(None, 10, 0)
    broker.ack(taken["token"])
    assert broker.results(None, 10, 0)["done"] is True, "no phantom job holds --until-done"


# -- leases that expire ----------------------------------------------------


def test_expired_lease_goes_back_with_the_next_attempt(
    broker: BrokerService, clock: FakeClock
) -> None:
    first_id = submit(broker, "a", 1)["first_id"]
    (task,) = broker.lease("w1", 1, 0)
    clock.advance(LEASE - 0.1)
    assert broker.expire_leases() == 0
    assert broker.job("a")["leased"] == 1
    clock.advance(0.2)
    assert broker.expire_leases() == 1
    counts = broker.job("a")
    assert (counts["queued"], counts["leased"]) == (1, 0)
    (again,) = broker.lease("w2", 1, 0)
    assert again["id"] == first_id == task["id"]
    assert again["attempt"] == 2
    assert broker.expire_leases() == 0


def test_lease_call_itself_expires_overdue_leases(broker: BrokerService, clock: FakeClock) -> None:
    submit(broker, "a", 1)
    broker.lease("w1", 1, 0)
    clock.advance(LEASE + 1)
    (again,) = broker.lease("w2", 1, 0)
    assert again["attempt"] == 2


def test_last_attempt_expiring_gives_one_failed_result(
    broker: BrokerService, clock: FakeClock
) -> None:
    first_id = submit(broker, "a", 1, attempts=2)["first_id"]
    broker.seal("a")
    broker.lease("w1", 1, 0)
    clock.advance(LEASE + 1)
    assert broker.expire_leases() == 1
    (second,) = broker.lease("w2", 1, 0)
    assert second["attempt"] == 2
    clock.advance(LEASE + 1)
    assert broker.expire_leases() == 1
    assert broker.lease("w3", 1, 0) == []
    clock.advance(LEASE + 1)
    assert broker.expire_leases() == 0

    taken = broker.results("a", 10, 0)
    assert taken["done"] is False  # until the output confirms it
    assert broker.results("a", 10, 0, ack=taken["token"]) == DONE
    (result,) = taken["results"]
    assert tuple(result) == RESULT_FIELDS
    assert result["id"] == first_id
    assert result["job"] == "a"
    assert result["url"] == urls(1)[0]
    assert result["ok"] is False
    assert result["status"] is None
    assert result["error"]["type"] == "lease_expired"
    assert "attempt 2 of 2" in result["error"]["message"]
    assert result["attempt"] == 2
    assert result["worker"] == "w2"
    counts = broker.job("a")
    assert (counts["failed"], counts["succeeded"], counts["confirmed"]) == (1, 0, 1)


def test_broker_max_attempts_applies_when_the_batch_gives_none(
    make_broker: Factory, clock: FakeClock
) -> None:
    broker = make_broker(max_attempts=1)
    submit(broker, "a", 1)
    broker.lease("w1", 1, 0)
    clock.advance(LEASE + 1)
    assert broker.expire_leases() == 1
    (result,) = drain(broker, "a")
    assert result["error"]["type"] == "lease_expired"
    assert result["attempt"] == 1


def test_renew_before_the_deadline_prevents_expiry(broker: BrokerService, clock: FakeClock) -> None:
    submit(broker, "a", 1)
    (task,) = broker.lease("w1", 1, 0)
    clock.advance(LEASE - 2)
    assert renew(broker, "w1", [[task["id"], 1]]) == 1
    clock.advance(5)  # past the first deadline, within the renewed one
    assert broker.expire_leases() == 0
    assert broker.job("a")["leased"] == 1
    assert broker.complete("w1", [ok(task)])["accepted"] == 1
    clock.advance(LEASE * 3)
    assert broker.expire_leases() == 0
    assert len(drain(broker, "a")) == 1


def test_renewed_lease_still_expires_later(broker: BrokerService, clock: FakeClock) -> None:
    submit(broker, "a", 1)
    (task,) = broker.lease("w1", 1, 0)
    clock.advance(LEASE - 2)
    renew(broker, "w1", [[task["id"], 1]])
    clock.advance(LEASE + 1)
    assert broker.expire_leases() == 1


def test_renew_by_another_worker_or_attempt_does_nothing(
    broker: BrokerService, clock: FakeClock
) -> None:
    submit(broker, "a", 1)
    (task,) = broker.lease("w1", 1, 0)
    clock.advance(LEASE - 2)
    assert renew(broker, "w2", [[task["id"], 1]]) == 0
    assert renew(broker, "w1", [[task["id"], 2]]) == 0
    assert renew(broker, "w1", [[task["id"] + 1, 1]]) == 0
    clock.advance(3)
    assert broker.expire_leases() == 1


# -- failures and retries --------------------------------------------------


def test_retryable_failure_requeues_and_later_success_is_the_result(broker: BrokerService) -> None:
    submit(broker, "a", 1)
    (task,) = broker.lease("w1", 1, 0)
    assert broker.complete("w1", [failed(task, "refused")]) == {
        "accepted": 0,
        "dropped": 0,
        "requeued": 1,
        "renewed": 0,
    }
    assert drain(broker, "a") == []
    counts = broker.job("a")
    assert (counts["queued"], counts["leased"], counts["failed"]) == (1, 0, 0)
    (again,) = broker.lease("w2", 1, 0)
    assert again["attempt"] == 2
    assert broker.complete("w2", [ok(again, "w2")])["accepted"] == 1
    (result,) = drain(broker, "a")
    assert result["ok"] is True
    assert result["attempt"] == 2
    assert result["worker"] == "w2"
    assert broker.lease("w1", 1, 0) == []


def test_late_starts_count_in_a_call_that_also_requeues(broker: BrokerService) -> None:
    """The pace a job shows counts every accepted result, also those of a call whose
    other results went back to the queue."""
    submit(broker, "a", 3, rate=1000.0)
    late, on_time, refused = broker.lease("w1", 3, 0)
    results = [
        {**ok(late), "scheduled": late["scheduled"], "started": late["scheduled"] + 0.5},
        {**ok(on_time), "scheduled": on_time["scheduled"], "started": on_time["scheduled"]},
        failed(refused, "refused"),
    ]
    assert broker.complete("w1", results)["requeued"] == 1
    pace = broker.status()["jobs"]["a"]["pace"]
    assert (pace["late"], pace["worst_lateness"]) == (1, 0.5)


def test_retryable_failure_on_the_last_attempt_is_the_result(broker: BrokerService) -> None:
    submit(broker, "a", 1, attempts=2)
    (task,) = broker.lease("w1", 1, 0)
    assert broker.complete("w1", [failed(task, "timeout")])["requeued"] == 1
    (again,) = broker.lease("w1", 1, 0)
    reply = broker.complete("w1", [failed(again, "refused")])
    assert reply == {"accepted": 1, "dropped": 0, "requeued": 0, "renewed": 0}
    (result,) = drain(broker, "a")
    assert result["error"]["type"] == "refused"
    assert result["attempt"] == 2
    assert broker.job("a")["failed"] == 1
    assert broker.lease("w1", 1, 0) == []


def test_single_attempt_retryable_failure_ends_at_once(broker: BrokerService) -> None:
    submit(broker, "a", 1, attempts=1)
    (task,) = broker.lease("w1", 1, 0)
    assert broker.complete("w1", [failed(task, "refused")])["accepted"] == 1
    assert len(drain(broker, "a")) == 1


@pytest.mark.parametrize(
    "make",
    [
        lambda task: http(task, 404),
        lambda task: http(task, 500),
        lambda task: failed(task, "dns"),
        lambda task: failed(task, "tls"),
    ],
    ids=["404", "500", "dns", "tls"],
)
def test_non_retryable_errors_end_the_task_at_once(
    broker: BrokerService, make: Callable[[dict[str, Any]], dict[str, Any]]
) -> None:
    submit(broker, "a", 1, attempts=5)
    (task,) = broker.lease("w1", 1, 0)
    assert broker.complete("w1", [make(task)]) == {
        "accepted": 1,
        "dropped": 0,
        "requeued": 0,
        "renewed": 0,
    }
    assert broker.lease("w1", 1, 0) == []
    (result,) = drain(broker, "a")
    assert result["ok"] is False
    assert result["attempt"] == 1
    assert broker.job("a")["failed"] == 1


# -- exactly once ----------------------------------------------------------


@pytest.mark.parametrize("late_first", [True, False])
def test_first_completion_wins_after_a_lease_moved(
    broker: BrokerService, clock: FakeClock, late_first: bool
) -> None:
    submit(broker, "a", 1)
    (task_a,) = broker.lease("A", 1, 0)
    clock.advance(LEASE + 1)
    (task_b,) = broker.lease("B", 1, 0)
    assert task_b["id"] == task_a["id"]
    assert task_b["attempt"] == 2
    late, current = ok(task_a, "A"), ok(task_b, "B")
    first, second = (late, current) if late_first else (current, late)
    assert broker.complete(first["worker"], [first])["accepted"] == 1
    assert broker.complete(second["worker"], [second]) == {
        "accepted": 0,
        "dropped": 1,
        "requeued": 0,
        "renewed": 0,
    }
    (result,) = drain(broker, "a")
    assert result["worker"] == first["worker"]
    assert drain(broker, "a") == []
    counts = broker.job("a")
    assert (counts["succeeded"], counts["leased"], counts["queued"]) == (1, 0, 0)
    clock.advance(LEASE * 3)
    assert broker.expire_leases() == 0
    assert drain(broker, "a") == []


def test_completion_of_a_requeued_task_is_accepted_and_never_leased_again(
    broker: BrokerService, clock: FakeClock
) -> None:
    submit(broker, "a", 2)
    task, other = broker.lease("A", 2, 0)
    clock.advance(LEASE + 1)
    assert broker.expire_leases() == 2  # both queued again as attempt 2
    assert broker.complete("A", [ok(task, "A")])["accepted"] == 1
    leased = broker.lease("B", 10, 0)
    assert [t["id"] for t in leased] == [other["id"]]
    assert broker.lease("B", 10, 0) == []
    counts = broker.job("a")
    assert (counts["queued"], counts["leased"], counts["succeeded"]) == (0, 1, 1)
    (result,) = drain(broker, "a")
    assert result["id"] == task["id"]
    assert result["worker"] == "A"


def test_completion_of_a_task_not_leased_yet_is_accepted_and_it_is_never_leased(
    broker: BrokerService,
) -> None:
    """A first result for a task of this server that no worker holds is accepted,
    also for one still in its submitted batch: that task is done, and a lease of
    the batch around it skips it."""
    submit(broker, "a", 300)
    (first,) = broker.lease("A", 1, 0)
    later = {**first, "id": first["id"] + 5}  # ids of one batch are consecutive
    assert broker.complete("A", [ok(later, "A")])["accepted"] == 1
    leased = broker.lease("B", 100, 0)
    assert [t["id"] for t in leased] == [first["id"] + n for n in range(1, 102) if n != 5]
    assert broker.job("a")["succeeded"] == 1


def test_stale_retryable_failure_is_dropped(broker: BrokerService, clock: FakeClock) -> None:
    submit(broker, "a", 1)
    (task_a,) = broker.lease("A", 1, 0)
    clock.advance(LEASE + 1)
    (task_b,) = broker.lease("B", 1, 0)
    assert broker.complete("A", [failed(task_a, "refused", "A")])["dropped"] == 1
    assert renew(broker, "B", [[task_b["id"], 2]]) == 1  # B still holds it
    assert broker.lease("C", 1, 0) == []
    assert broker.complete("B", [ok(task_b, "B")])["accepted"] == 1
    assert len(drain(broker, "a")) == 1


def test_repeated_completion_is_dropped(broker: BrokerService) -> None:
    submit(broker, "a", 2)
    tasks = broker.lease("w1", 2, 0)
    results = [ok(t) for t in tasks]
    assert broker.complete("w1", results)["accepted"] == 2
    assert broker.complete("w1", results) == {
        "accepted": 0,
        "dropped": 2,
        "requeued": 0,
        "renewed": 0,
    }
    assert broker.complete("w1", [failed(tasks[0], "refused")])["dropped"] == 1
    assert len(drain(broker, "a")) == 2
    assert broker.job("a")["succeeded"] == 2


def test_completion_from_another_server_run_is_dropped(broker: BrokerService) -> None:
    first_id = submit(broker, "a", 2)["first_id"]
    foreign = [
        {"id": first_id - 1, "job": "a", "url": "http://127.0.0.1/", "ok": True},
        {"id": first_id + 2, "job": "a", "url": "http://127.0.0.1/", "ok": True},
        {"id": 7, "job": "a", "url": "http://127.0.0.1/", "ok": True},
        {"id": -1, "job": "nope", "url": "http://127.0.0.1/", "ok": True},
    ]
    assert broker.complete("w1", foreign) == {
        "accepted": 0,
        "dropped": 4,
        "requeued": 0,
        "renewed": 0,
    }
    assert drain(broker, None) == []
    assert len(broker.lease("w1", 10, 0)) == 2


# -- release ---------------------------------------------------------------


def test_release_puts_tasks_back_without_using_an_attempt(broker: BrokerService) -> None:
    first_id = submit(broker, "a", 3)["first_id"]
    tasks = broker.lease("w1", 3, 0)
    pairs = [[t["id"], t["attempt"]] for t in tasks[:2]]
    assert broker.release("w1", pairs) == 2
    counts = broker.job("a")
    assert (counts["queued"], counts["leased"]) == (2, 1)
    again = broker.lease("w2", 10, 0)
    assert [(t["id"], t["attempt"]) for t in again] == [(first_id, 1), (first_id + 1, 1)]


def test_release_needs_the_matching_id_attempt_and_worker(broker: BrokerService) -> None:
    submit(broker, "a", 1)
    (task,) = broker.lease("w1", 1, 0)
    assert broker.release("w1", [[task["id"], 2]]) == 0
    assert broker.release("w1", [[task["id"] + 1, 1]]) == 0
    assert broker.release("w2", [[task["id"], 1]]) == 0
    assert broker.lease("w2", 1, 0) == []
    assert broker.release("w1", [[task["id"], 1]]) == 1
    assert broker.release("w1", [[task["id"], 1]]) == 0


def test_a_lease_named_twice_in_one_release_goes_back_once(broker: BrokerService) -> None:
    submit(broker, "a", 1)
    (task,) = broker.lease("w1", 1, 0)
    assert broker.release("w1", [[task["id"], 1], [task["id"], 1]]) == 1
    assert broker.job("a")["queued"] == 1
    assert len(broker.lease("w2", 10, 0)) == 1


def test_release_resent_after_the_task_moved_on_does_nothing(broker: BrokerService) -> None:
    """A release re-sent after a lost reply must not take the task from its new holder."""
    submit(broker, "a", 1)
    (task,) = broker.lease("A", 1, 0)
    assert broker.release("A", [[task["id"], 1]]) == 1
    (again,) = broker.lease("B", 1, 0)
    assert again["attempt"] == 1
    assert broker.release("A", [[task["id"], 1]]) == 0
    assert renew(broker, "B", [[task["id"], 1]]) == 1
    assert broker.lease("C", 1, 0) == []


def test_released_last_attempt_is_still_run(broker: BrokerService) -> None:
    submit(broker, "a", 1, attempts=1)
    (task,) = broker.lease("w1", 1, 0)
    broker.release("w1", [[task["id"], 1]])
    (again,) = broker.lease("w2", 1, 0)
    assert again["attempt"] == 1
    assert broker.complete("w2", [ok(again, "w2")])["accepted"] == 1


def test_ids_this_server_never_gave_out_change_nothing_however_large(
    broker: BrokerService,
) -> None:
    """A stale id from another server, say: its result is dropped, its release and
    renewal do nothing, its robots.txt report is not taken, and the call goes on."""
    submit(broker, "a", 1)
    (task,) = broker.lease("w1", 1, 0)
    stranger = {**task, "id": 2**52 + 7}
    assert broker.release("w1", [[stranger["id"], 1]]) == 0
    tally = broker.complete("w1", [ok(stranger)], [[stranger["id"], 1], [task["id"], 1]])
    assert tally == {"accepted": 0, "requeued": 0, "dropped": 1, "renewed": 1}
    report = {"id": stranger["id"], "attempt": 1, "job": "a", "host": "a.test:80",
              "status": 404, "body": "", "error": None}  # fmt: skip
    assert broker.robots("w1", report) == {"accepted": False}
    assert broker.complete("w1", [ok(task)])["accepted"] == 1
    if isinstance(broker, StoreBroker):  # and nothing was written beyond its shards
        tags = {key.split(b"}")[0] + b"}" for key in broker._store.scan_iter(match="{fq*")}
        assert tags <= {shard_tag(shard).encode() for shard in range(broker.shards)}


# -- batch ids and backpressure ----------------------------------------------


def test_same_batch_id_is_queued_once(broker: BrokerService) -> None:
    batch = {"job": "a", "urls": urls(3), "batch_id": "run:1"}
    first = broker.submit(batch)
    again = broker.submit(batch)
    assert first["accepted"] == 3
    assert "duplicate" not in first
    assert again == {**first, "duplicate": True}
    assert broker.job("a")["submitted"] == 3
    assert len(broker.lease("w1", 10, 0)) == 3
    other = broker.submit({**batch, "batch_id": "run:2"})
    assert other["first_id"] == first["first_id"] + 3


def test_a_batch_of_a_job_with_host_limits_sent_again_is_queued_once(
    broker: BrokerService,
) -> None:
    """Its tasks are where their hosts' are (on a store of three shards, a.test, b.test
    and f.test are one in each): every one is queued once, and the same reply given."""
    hosts = ["a", "b", "f", "a", "b", "f"]
    batch = {"job": "h", "urls": [f"http://{h}.test/{n}" for n, h in enumerate(hosts)],
             "per_host": 2, "batch_id": "run:1"}  # fmt: skip
    first = broker.submit(batch)
    assert first["accepted"] == 6
    assert broker.submit(batch) == {**first, "duplicate": True}
    assert broker.job("h")["submitted"] == 6
    leased = broker.lease("w1", 10, 0)
    assert sorted(t["url"] for t in leased) == sorted(batch["urls"])


def test_a_batch_of_a_job_with_host_limits_that_does_not_fit_queues_none_of_it(
    make_broker: Factory,
) -> None:
    """A full queue takes none of a batch, and a batch queued before and sent again
    gets its reply, full queue or not.  (On a store of three shards these batches are
    split over all three, a part each.)"""
    broker = make_broker(max_pending=4)
    hosts = ["a", "b", "f"]

    def batch(n: int, **extra: Any) -> dict[str, Any]:
        return {"job": "h", "urls": [f"http://{h}.test/{n}" for h in hosts], "per_host": 2,
                **extra}  # fmt: skip

    first = broker.submit(batch(1, batch_id="first"))
    assert len(broker.lease("w1", 1, 0)) == 1  # room for two: each part would fit alone
    assert broker.submit(batch(1, batch_id="first")) == {**first, "duplicate": True}
    assert broker.submit(batch(2))["full"] is True
    assert broker.job("h")["submitted"] == 3, "none of a batch that did not fit"
    assert len(broker.lease("w1", 2, 0)) == 2
    assert broker.submit(batch(2))["accepted"] == 3
    assert broker.job("h")["submitted"] == 6


def test_full_reply_is_not_remembered_for_the_batch_id(make_broker: Factory) -> None:
    broker = make_broker(max_pending=2)
    submit(broker, "a", 2)
    batch = {"job": "a", "urls": urls(1), "batch_id": "b"}
    assert broker.submit(batch)["full"] is True
    broker.lease("w1", 2, 0)
    reply = broker.submit(batch)
    assert reply["accepted"] == 1
    assert "duplicate" not in reply


def test_batch_resent_while_the_first_copy_waits_for_room_is_queued_once(
    make_broker: Factory, clock: FakeClock
) -> None:
    broker = make_broker(max_pending=2)
    submit(broker, "fill", 2)
    batch = {"job": "a", "urls": urls(2), "batch_id": "run:1", "wait": 5.0}
    replies: list[dict[str, Any]] = []
    names = ["submit-1", "submit-2"]
    threads = [
        threading.Thread(target=lambda: replies.append(broker.submit(batch)), name=n, daemon=True)
        for n in names
    ]
    for thread in threads:
        thread.start()
    # Each submit reads the clock twice under the broker's lock right before it
    # waits for room, so once both have, both are waiting (the fake clock stands still).
    with clock.called:
        assert clock.called.wait_for(lambda: all(clock.calls[n] >= 2 for n in names), 5)
    assert len(broker.lease("w1", 2, 0)) == 2  # makes room and wakes both
    for thread in threads:
        thread.join(5)
    assert not any(thread.is_alive() for thread in threads)
    assert len(replies) == 2
    assert sorted(bool(r.get("duplicate")) for r in replies) == [False, True]
    assert replies[0]["first_id"] == replies[1]["first_id"]
    assert broker.job("a")["submitted"] == 2
    assert len(broker.lease("w1", 10, 0)) == 2


def test_full_queue_pushes_back_until_tasks_are_leased(
    make_broker: Factory,
) -> None:
    broker = make_broker(max_pending=10)
    assert submit(broker, "a", 10)["accepted"] == 10
    assert submit(broker, "a", 5, wait=0) == {"accepted": 0, "full": True, "queued": 10}
    assert broker.job("a")["submitted"] == 10
    broker.lease("w1", 4, 0)
    assert submit(broker, "a", 5)["full"] is True  # 6 + 5 > 10
    broker.lease("w1", 1, 0)
    assert submit(broker, "a", 5)["accepted"] == 5  # 5 + 5 fits
    assert broker.job("a")["submitted"] == 15
    assert submit(broker, "a", 1)["full"] is True


def test_oversized_batch_into_an_empty_queue_is_accepted(
    make_broker: Factory,
) -> None:
    broker = make_broker(max_pending=10)
    assert submit(broker, "a", 25)["accepted"] == 25
    assert submit(broker, "a", 1)["full"] is True
    assert len(broker.lease("w1", 100, 0)) == 25
    assert submit(broker, "a", 1)["accepted"] == 1


def test_results_waiting_in_every_job_count_together_against_max_results(
    make_broker: Factory,
) -> None:
    """The bound is the server's, over all jobs (on a store of three shards, jobs x, y
    and z are one in each)."""
    broker = make_broker(max_results=2)
    for job in ("x", "y", "z"):
        submit(broker, job, 2)
    tasks = [task for _ in range(3) for task in broker.lease("w1", 1, 0)]
    assert sorted(t["job"] for t in tasks) == ["x", "y", "z"]  # jobs take turns
    broker.complete("w1", [ok(t) for t in tasks if t["job"] != "z"])
    assert broker.lease("w1", 3, 0) == []  # x's and y's wait: z leases nothing either
    taken = broker.results(None, 10, 0)
    assert broker.ack(taken["token"]) == 2
    assert len(broker.lease("w1", 3, 0)) == 3


def test_undelivered_results_stop_leasing(make_broker: Factory) -> None:
    broker = make_broker(max_results=2)
    submit(broker, "a", 4)
    tasks = broker.lease("w1", 2, 0)
    broker.complete("w1", [ok(t) for t in tasks])
    assert broker.lease("w1", 2, 0) == []
    assert broker.job("a")["queued"] == 2
    taken = broker.results("a", 1, 0)
    assert len(taken["results"]) == 1
    assert broker.lease("w1", 2, 0) == []  # handed out but not confirmed: still counts
    assert broker.ack(taken["token"]) == 1
    (one,) = broker.lease("w1", 1, 0)  # below the limit again: leasing resumes
    broker.complete("w1", [ok(one)])
    assert broker.lease("w1", 2, 0) == []
    assert len(drain(broker, "a")) == 2
    assert len(broker.lease("w1", 2, 0)) == 1


# -- acknowledgements ----------------------------------------------------------


def test_ack_confirms_a_delivery(broker: BrokerService) -> None:
    ids = ready(broker, "a", 3)
    broker.seal("a")
    assert where(broker, "a") == (3, 0, 0)
    reply = broker.results("a", 10, 0)
    assert ids_of(reply) == ids
    assert isinstance(reply["token"], str) and reply["token"]
    assert reply["done"] is False
    assert where(broker, "a") == (0, 3, 0)
    assert broker.job("a")["done"] is False
    assert broker.results("a", 10, 0) == EMPTY  # nothing waits, yet not done
    assert broker.ack(reply["token"]) == 3
    assert where(broker, "a") == (0, 0, 3)
    assert broker.job("a")["done"] is True
    assert broker.results("a", 10, 0) == DONE


def test_next_results_call_confirms_the_previous_delivery(broker: BrokerService) -> None:
    ids = ready(broker, "a", 3)
    broker.seal("a")
    first = broker.results("a", 2, 0)
    assert ids_of(first) == ids[:2]
    assert where(broker, "a") == (1, 2, 0)
    second = broker.results("a", 2, 0, ack=first["token"])
    assert ids_of(second) == ids[2:]
    assert second["done"] is False
    assert second["token"] not in (None, first["token"])
    assert where(broker, "a") == (0, 1, 2)
    assert broker.results("a", 2, 0, ack=second["token"]) == DONE
    assert where(broker, "a") == (0, 0, 3)


def test_ack_in_a_call_for_another_job_still_confirms(broker: BrokerService) -> None:
    ready(broker, "a", 1)
    reply = broker.results("a", 10, 0)
    assert broker.results("b", 10, 0, ack=reply["token"]) == EMPTY
    assert where(broker, "a") == (0, 0, 1)
    assert broker.ack(reply["token"]) == 0


def test_acking_twice_or_an_unknown_token_returns_zero_and_changes_nothing(
    broker: BrokerService,
) -> None:
    ready(broker, "a", 2)
    reply = broker.results("a", 1, 0)
    before = broker.status()
    assert where(broker, "a") == (1, 1, 0)
    assert broker.ack("nope") == 0
    assert broker.ack("") == 0
    assert broker.ack("0" * 32) == 0
    assert broker.results("other", 1, 0, ack="nope") == EMPTY
    assert broker.status()["jobs"] == before["jobs"]
    assert broker.status()["unconfirmed"] == before["unconfirmed"] == 2

    assert broker.ack(reply["token"]) == 1
    after = broker.status()
    assert where(broker, "a") == (1, 0, 1)
    assert broker.ack(reply["token"]) == 0
    assert broker.results("other", 1, 0, ack=reply["token"]) == EMPTY
    assert broker.status()["jobs"] == after["jobs"]
    assert broker.status()["unconfirmed"] == after["unconfirmed"] == 1
    assert where(broker, "a") == (1, 0, 1)


def test_bad_results_call_does_not_apply_its_ack(broker: BrokerService) -> None:
    ready(broker, "a", 1)
    reply = broker.results("a", 10, 0)
    with pytest.raises(BadRequest):
        broker.results("a", 0, 0, ack=reply["token"])
    with pytest.raises(BadRequest):
        broker.results("", 1, 0, ack=reply["token"])
    assert where(broker, "a") == (0, 1, 0)
    assert broker.ack(reply["token"]) == 1


def test_unconfirmed_delivery_expires_and_comes_back_in_order(
    broker: BrokerService, clock: FakeClock
) -> None:
    ids = ready(broker, "a", 5)
    broker.seal("a")
    first = broker.results("a", 3, 0)
    assert ids_of(first) == ids[:3]
    clock.advance(LEASE - 0.1)
    assert where(broker, "a") == (2, 3, 0)  # not yet due
    clock.advance(0.2)
    assert where(broker, "a") == (5, 0, 0)  # back, and not counted as delivered
    assert broker.job("a")["done"] is False
    again = broker.results("a", 10, 0)
    assert ids_of(again) == ids  # back at the front, in their order, ahead of the rest
    assert again["results"][:3] == first["results"]
    assert again["token"] != first["token"]
    assert again["done"] is False
    assert broker.ack(first["token"]) == 0  # the lapsed delivery cannot be confirmed
    assert where(broker, "a") == (0, 5, 0)
    assert broker.ack(again["token"]) == 5
    assert where(broker, "a") == (0, 0, 5)
    assert broker.results("a", 10, 0) == DONE


def test_expired_delivery_is_handed_out_whole_even_in_smaller_calls(
    broker: BrokerService, clock: FakeClock
) -> None:
    ids = ready(broker, "a", 4)
    first = broker.results("a", 3, 0)
    clock.advance(LEASE + 1)
    parts = [broker.results("a", 2, 0), broker.results("a", 2, 0)]
    assert [ids_of(p) for p in parts] == [ids[:2], ids[2:]]
    assert broker.ack(first["token"]) == 0
    assert [broker.ack(p["token"]) for p in parts] == [2, 2]
    assert where(broker, "a") == (0, 0, 4)


def test_confirmed_delivery_never_comes_back(broker: BrokerService, clock: FakeClock) -> None:
    ids = ready(broker, "a", 2)
    reply = broker.results("a", 10, 0)
    assert ids_of(reply) == ids
    clock.advance(LEASE - 1)
    assert broker.ack(reply["token"]) == 2
    for _ in range(3):
        clock.advance(LEASE)
        assert broker.expire_leases() == 0
        assert broker.results("a", 10, 0) == EMPTY
        assert broker.results(None, 10, 0) == EMPTY
        assert where(broker, "a") == (0, 0, 2)
    broker.seal("a")
    assert broker.results("a", 10, 0) == DONE


def test_done_waits_for_the_last_confirmation(broker: BrokerService, clock: FakeClock) -> None:
    ids = ready(broker, "a", 2)
    broker.seal("a")
    first = broker.results("a", 1, 0)
    second = broker.results("a", 1, 0)
    assert ids_of(first) + ids_of(second) == ids
    for _ in range(3):
        assert broker.results("a", 10, 0) == EMPTY
        assert broker.results(None, 10, 0) == EMPTY
        assert broker.job("a")["done"] is False
    assert broker.ack(second["token"]) == 1
    assert where(broker, "a") == (0, 1, 1)
    assert broker.results("a", 10, 0) == EMPTY  # the first is still unconfirmed
    assert broker.job("a")["done"] is False
    assert broker.ack(first["token"]) == 1
    assert broker.job("a")["done"] is True
    assert broker.results("a", 10, 0) == DONE
    assert broker.results(None, 10, 0) == DONE


def test_counts_add_up_through_hand_out_expiry_and_ack(
    broker: BrokerService, clock: FakeClock
) -> None:
    submit(broker, "a", 6)
    tasks = broker.lease("w1", 6, 0)
    assert where(broker, "a") == (0, 0, 0)
    broker.complete("w1", [ok(t) for t in tasks[:4]])
    assert where(broker, "a") == (4, 0, 0)
    early = broker.results("a", 2, 0)
    assert where(broker, "a") == (2, 2, 0)
    clock.advance(LEASE / 2)
    late = broker.results("a", 1, 0)
    assert where(broker, "a") == (1, 3, 0)
    broker.complete("w1", [ok(t) for t in tasks[4:]])  # their leases are still current
    assert where(broker, "a") == (3, 3, 0)
    assert broker.ack(late["token"]) == 1
    assert where(broker, "a") == (3, 2, 1)
    clock.advance(LEASE / 2)  # the early delivery lapses
    assert where(broker, "a") == (5, 0, 1)
    assert broker.status()["unconfirmed"] == 5
    assert broker.ack(early["token"]) == 0
    assert len(drain(broker, "a")) == 5
    assert where(broker, "a") == (0, 0, 6)
    assert broker.status()["unconfirmed"] == 0


def test_unconfirmed_results_count_against_max_results(
    make_broker: Factory, clock: FakeClock
) -> None:
    broker = make_broker(max_results=2)
    submit(broker, "a", 4)
    tasks = broker.lease("w1", 4, 0)
    assert len(tasks) == 4  # nothing waits for output yet
    broker.complete("w1", [ok(t) for t in tasks[:2]])
    broker.release("w1", [[t["id"], 1] for t in tasks[2:]])
    assert broker.lease("w1", 2, 0) == []
    reply = broker.results("a", 10, 0)
    assert len(reply["results"]) == 2
    assert broker.lease("w1", 2, 0) == []  # handed out, not confirmed
    clock.advance(LEASE + 1)
    assert where(broker, "a") == (2, 0, 0)
    assert broker.lease("w1", 2, 0) == []  # lapsed and waiting again: still counts
    again = broker.results("a", 1, 0)
    assert broker.ack(again["token"]) == 1
    assert len(broker.lease("w1", 2, 0)) == 2  # one confirmed: below the limit
    assert broker.lease("w1", 2, 0) == []


def test_ack_wakes_a_lease_waiting_for_output_room(make_broker: Factory, clock: FakeClock) -> None:
    broker = make_broker(max_results=1)
    ready(broker, "a", 1)
    submit(broker, "a", 1)
    reply = broker.results("a", 1, 0)
    leased: list[list[dict[str, Any]]] = []
    waiter = threading.Thread(
        target=lambda: leased.append(broker.lease("w2", 1, 20.0)), name="lease-wait", daemon=True
    )
    waiter.start()
    # The waiter reads the clock only under the broker's lock and, with the fake
    # clock standing still, leaves that lock only to wait: once it has read the
    # clock, the ack below (which needs the lock) runs while it waits.
    with clock.called:
        assert clock.called.wait_for(lambda: clock.calls["lease-wait"] >= 1, 5)
    assert broker.ack(reply["token"]) == 1
    waiter.join(5)
    assert not waiter.is_alive()
    assert [len(batch) for batch in leased] == [1]


def test_a_report_judged_result_by_result_wakes_an_output_waiting(
    make_broker: Factory, clock: FakeClock
) -> None:
    """A report with a repeat in it is judged one result at a time, not taken whole:
    an output waiting for the job's results is woken by it all the same."""
    broker = make_broker()
    submit(broker, "a", 1)
    (task,) = broker.lease("w1", 1, 0)
    got: list[ResultsDelivery] = []
    waiter = threading.Thread(
        target=lambda: got.append(broker.results("a", 10, 20.0)), name="results-wait", daemon=True
    )
    waiter.start()
    with clock.called:  # as in the test above: the waiter waits once it read the clock
        assert clock.called.wait_for(lambda: clock.calls["results-wait"] >= 1, 5)
    tally = broker.complete("w1", [ok(task), ok(task)])
    assert (tally["accepted"], tally["dropped"]) == (1, 1)
    waiter.join(5)  # unwoken, it would sleep until the lease's deadline, LEASE away
    assert not waiter.is_alive()
    assert [result["id"] for result in got[0]["results"]] == [task["id"]]


@pytest.mark.one_shard("jobs in different shards hand out their results by turns of the shards")
def test_results_of_all_jobs_lapse_back_each_to_its_own_job(
    broker: BrokerService, clock: FakeClock
) -> None:
    a_ids = ready(broker, "a", 2)
    b_ids = ready(broker, "b", 2)
    broker.seal("a")
    broker.seal("b")
    first = broker.results(None, 3, 0)
    assert [(r["job"], r["id"]) for r in first["results"]] == [
        ("a", a_ids[0]),
        ("a", a_ids[1]),
        ("b", b_ids[0]),
    ]
    assert where(broker, "a") == (0, 2, 0)
    assert where(broker, "b") == (1, 1, 0)
    clock.advance(LEASE + 1)
    assert where(broker, "a") == (2, 0, 0)
    assert where(broker, "b") == (2, 0, 0)
    from_b = broker.results("b", 10, 0)
    assert ids_of(from_b) == b_ids  # b's lapsed result is back ahead of b's other one
    from_a = broker.results("a", 10, 0)
    assert ids_of(from_a) == a_ids
    assert broker.ack(first["token"]) == 0
    assert broker.results(None, 10, 0, ack=from_a["token"]) == EMPTY
    assert where(broker, "a") == (0, 0, 2)
    assert broker.results(None, 10, 0, ack=from_b["token"]) == DONE
    assert where(broker, "b") == (0, 0, 2)


def test_lapsed_delivery_goes_to_another_output_exactly_once(
    broker: BrokerService, clock: FakeClock
) -> None:
    ids = ready(broker, "a", 3)
    broker.seal("a")
    to_first = broker.results("a", 10, 0)  # this output then dies
    assert ids_of(to_first) == ids
    clock.advance(LEASE + 1)
    to_second = broker.results("a", 10, 0)  # another output
    assert ids_of(to_second) == ids
    assert broker.results("a", 10, 0) == EMPTY  # a third output gets none of them
    assert broker.results(None, 10, 0) == EMPTY
    assert broker.ack(to_first["token"]) == 0  # the dead output's late word counts for nothing
    assert where(broker, "a") == (0, 3, 0)
    assert broker.ack(to_second["token"]) == 3
    assert where(broker, "a") == (0, 0, 3)
    clock.advance(LEASE * 3)
    assert broker.results("a", 10, 0) == DONE
    assert broker.job("a")["confirmed"] == 3


def test_several_lapsed_deliveries_come_back_in_their_first_order(
    broker: BrokerService, clock: FakeClock
) -> None:
    ids = ready(broker, "a", 4)
    first = broker.results("a", 2, 0)
    clock.advance(1.0)
    second = broker.results("a", 2, 0)
    assert ids_of(first) + ids_of(second) == ids
    clock.advance(LEASE)  # both lapse in one sweep
    assert ids_of(broker.results("a", 10, 0)) == ids  # comes back as ids[2:] + ids[:2]


# -- cancelling --------------------------------------------------------------


def queue_state(broker: BrokerService, job: str) -> tuple[int, int, int]:
    counts = broker.job(job)
    return counts["queued"], counts["waiting"], counts["failed"]


def test_a_cancel_ends_queued_tasks_as_cancelled_results_and_a_read_changes_nothing(
    make_broker: Factory,
) -> None:
    """Cancelling ends the queued tasks at once, as far as the results' room allows;
    housekeeping ends the rest as outputs make room.  ``results`` only reads: it hands
    out what has ended and never ends a task itself."""
    broker = make_broker(max_results=2)
    submit(broker, "c", 5)
    broker.seal("c")
    view = broker.steer("c", {"action": "cancel"})
    assert (view["queued"], view["waiting"], view["failed"]) == (3, 2, 2)
    taken = broker.results("c", 10, 0)
    assert [r["error"]["type"] for r in taken["results"]] == ["cancelled"] * 2
    assert broker.ack(taken["token"]) == 2
    assert broker.results("c", 10, 0) == EMPTY, "room again, but a read ends nothing"
    assert queue_state(broker, "c") == (3, 0, 2)
    broker.housekeeping()  # what the server does twice a second
    assert queue_state(broker, "c") == (1, 2, 4)
    broker.housekeeping()
    assert queue_state(broker, "c") == (1, 2, 4), "no room: nothing more ends"
    assert [r["error"]["type"] for r in drain(broker, "c")] == ["cancelled"] * 2
    broker.housekeeping()
    assert queue_state(broker, "c") == (0, 1, 5)
    assert [r["error"]["message"] for r in drain(broker, "c")] == ["job c was cancelled"]
    assert broker.results("c", 10, 0) == DONE


def test_a_pause_or_cancel_holds_where_the_jobs_tasks_are_all_done_as_well(
    broker: BrokerService,
) -> None:
    """A job paused or cancelled while some of its tasks are done holds all of it: a
    later batch is not leased while paused, and refused once cancelled.  (On a store
    of several shards the batches go to two of them, and the part in one of them is
    done before the pause, and again before the cancel; the later batches go there.)"""
    first, second, *later = batches_in_two_shards()

    def finish(n: int) -> None:  # the queued task of URL n run, its result confirmed
        (task,) = [t for t in broker.lease("w1", 2, 0) if t["url"].endswith(f"/{n}")]
        assert broker.complete("w1", [ok(task)])["accepted"] == 1
        assert [result["id"] for result in drain(broker, "c")] == [task["id"]]

    broker.submit({"job": "c", "urls": ["http://a.test/0"], "batch_id": second})
    (undone,) = broker.lease("w1", 1, 0)  # held: the second shard's part is not done
    broker.submit({"job": "c", "urls": ["http://a.test/1"], "batch_id": first})
    broker.seal("c")
    finish(1)
    broker.steer("c", {"action": "pause"})
    broker.submit({"job": "c", "urls": ["http://a.test/2"], "batch_id": later[0]})
    assert broker.lease("w1", 2, 0) == []
    broker.steer("c", {"action": "resume"})
    finish(2)
    broker.seal("c")  # the first shard's part done again
    broker.steer("c", {"action": "cancel"})
    with pytest.raises(BadRequest, match="job c was cancelled"):
        broker.submit({"job": "c", "urls": ["http://a.test/3"], "batch_id": later[1]})
    assert undone["url"].endswith("/0")


def batches_in_two_shards(shards: int = 3) -> list[str]:
    """Four batch ids: on a store of ``shards``, the second goes to another shard than
    the others (to any other broker, four batch ids)."""
    names = [f"batch-{n}" for n in range(40)]

    def shard(name: str) -> int:
        return shard_of_key(name, shards)

    first = names[0]
    second = next(name for name in names if shard(name) != shard(first))
    return [first, second, *[name for name in names[1:] if shard(name) == shard(first)][:2]]


def test_a_released_task_of_a_cancelled_job_ends_at_once(broker: BrokerService) -> None:
    submit(broker, "c", 2)
    tasks = broker.lease("w1", 2, 0)
    broker.steer("c", {"action": "cancel"})
    assert broker.release("w1", [[t["id"], t["attempt"]] for t in tasks]) == 2
    assert queue_state(broker, "c") == (0, 2, 2)


# -- bad calls ---------------------------------------------------------------

BAD_CALLS: dict[str, Callable[[BrokerService], Any]] = {
    "hello-not-dict": lambda b: b.hello("hi"),
    "submit-not-dict": lambda b: b.submit(["http://127.0.0.1/"]),
    "submit-empty-job": lambda b: b.submit({"job": "", "urls": urls(1)}),
    "submit-job-not-str": lambda b: b.submit({"job": 5, "urls": urls(1)}),
    "submit-long-job": lambda b: b.submit({"job": "j" * 201, "urls": urls(1)}),
    "submit-urls-str": lambda b: b.submit({"job": "j", "urls": "http://127.0.0.1/"}),
    "submit-url-int": lambda b: b.submit({"job": "j", "urls": ["http://127.0.0.1/", 5]}),
    "submit-too-many": lambda b: b.submit({"job": "j", "urls": ["http://h/"] * (MAX_SUBMIT + 1)}),
    "submit-timeout-str": lambda b: b.submit({"job": "j", "urls": [], "timeout": "5"}),
    "submit-timeout-zero": lambda b: b.submit({"job": "j", "urls": [], "timeout": 0}),
    "submit-attempts-zero": lambda b: b.submit({"job": "j", "urls": [], "attempts": 0}),
    "submit-attempts-bool": lambda b: b.submit({"job": "j", "urls": [], "attempts": True}),
    "submit-attempts-float": lambda b: b.submit({"job": "j", "urls": [], "attempts": 2.0}),
    "submit-wait-negative": lambda b: b.submit({"job": "j", "urls": [], "wait": -1}),
    "submit-wait-long": lambda b: b.submit({"job": "j", "urls": [], "wait": MAX_WAIT + 1}),
    "submit-batch-id-int": lambda b: b.submit({"job": "j", "urls": [], "batch_id": 3}),
    "seal-empty": lambda b: b.seal(""),
    "seal-none": lambda b: b.seal(None),  # type: ignore[arg-type]
    "job-empty": lambda b: b.job(""),
    "lease-no-worker": lambda b: b.lease("", 1, 0),
    "lease-worker-int": lambda b: b.lease(3, 1, 0),  # type: ignore[arg-type]
    "lease-zero": lambda b: b.lease("w", 0, 0),
    "lease-too-many": lambda b: b.lease("w", MAX_LEASE + 1, 0),
    "lease-float-count": lambda b: b.lease("w", 1.5, 0),  # type: ignore[arg-type]
    "lease-bool-count": lambda b: b.lease("w", True, 0),
    "lease-wait-str": lambda b: b.lease("w", 1, "0"),  # type: ignore[arg-type]
    "lease-wait-long": lambda b: b.lease("w", 1, MAX_WAIT + 1),
    "lease-surrogate-worker": lambda b: b.lease("w\ud800", 1, 0),
    "robots-surrogate-error": lambda b: b.robots(
        "w", {"id": -1, "error": {"type": "refused", "message": "\ud800"}}
    ),
    "complete-not-list": lambda b: b.complete("w", {"id": 1}),  # type: ignore[arg-type]
    "complete-item-str": lambda b: b.complete("w", ["result"]),
    "complete-id-str": lambda b: b.complete("w", [{"id": "1"}]),
    "complete-id-bool": lambda b: b.complete("w", [{"id": True}]),
    "complete-no-worker": lambda b: b.complete("", []),
    "release-not-list": lambda b: b.release("w", "x"),  # type: ignore[arg-type]
    "release-short-pair": lambda b: b.release("w", [[1]]),
    "release-str-id": lambda b: b.release("w", [["1", 1]]),
    "release-bool-attempt": lambda b: b.release("w", [[1, True]]),
    "renew-long-pair": lambda b: b.complete("w", [], [[1, 2, 3]]),
    "renew-not-pair": lambda b: b.complete("w", [], [5]),
    "renew-no-worker": lambda b: b.complete("", [], []),
    "results-empty-job": lambda b: b.results("", 1, 0),
    "results-zero": lambda b: b.results("j", 0, 0),
    "results-wait-negative": lambda b: b.results("j", 1, -0.5),
    "results-ack-int": lambda b: b.results("j", 1, 0, ack=5),  # type: ignore[arg-type]
    "results-ack-bytes": lambda b: b.results("j", 1, 0, ack=b"t"),  # type: ignore[arg-type]
    "ack-int": lambda b: b.ack(5),  # type: ignore[arg-type]
    "ack-none": lambda b: b.ack(None),  # type: ignore[arg-type]
    "ack-list": lambda b: b.ack(["t"]),  # type: ignore[arg-type]
}


@pytest.mark.parametrize("call", BAD_CALLS.values(), ids=BAD_CALLS.keys())
def test_bad_calls_raise_bad_request_and_change_nothing(
    broker: BrokerService, call: Callable[[BrokerService], Any]
) -> None:
    first_id = submit(broker, "a", 2)["first_id"]
    (held,) = broker.lease("w0", 1, 0)
    before = broker.status()
    with pytest.raises(BadRequest):
        call(broker)
    assert broker.status()["jobs"] == before["jobs"]
    assert broker.status()["queued"] == 1
    assert broker.submit({"job": "a", "urls": urls(1)})["first_id"] == first_id + 2
    tasks = broker.lease("w0", 10, 0)
    assert [t["id"] for t in tasks] == [first_id + 1, first_id + 2]
    reply = broker.complete("w0", [ok(t) for t in [held, *tasks]])
    assert reply["accepted"] == 3
    broker.seal("a")
    assert sorted(r["id"] for r in drain(broker, "a")) == [first_id, first_id + 1, first_id + 2]
    assert broker.results("a", 10, 0) == DONE


def test_version_mismatch_leaves_the_broker_working(broker: BrokerService) -> None:
    with pytest.raises(VersionMismatch):
        broker.hello({"protocol": "1"})
    assert submit(broker, "a", 1)["accepted"] == 1


# -- host limits -------------------------------------------------------------


@pytest.mark.one_shard("a store of several shards takes no server-wide host limits")
def test_host_caps_hold_per_job_and_for_the_server_over_every_job(make_broker: Factory) -> None:
    """Each job's cap, and the server's over all its jobs, counted until each lease ends."""
    broker = make_broker(per_host=3)
    for job in ("a", "b"):
        broker.submit({"job": job, "urls": urls(4, "http://h.test/"), "per_host": 2})
    broker.submit({"job": "c", "urls": urls(2, "http://other.test/"), "per_host": 2})
    leased = broker.lease("w1", 20, 0)
    on_h = [t for t in leased if t["url"].startswith("http://h.test/")]
    assert len(on_h) == 3  # the server's cap, though the two jobs' caps allow 4
    assert len(leased) - len(on_h) == 2  # another host is not held back by it
    assert broker.lease("w1", 20, 0) == []
    broker.complete("w1", [ok(on_h[0])])  # one ends: room for one more on h.test
    (again,) = broker.lease("w1", 20, 0)
    assert again["url"].startswith("http://h.test/")
    assert broker.lease("w1", 20, 0) == []


@pytest.mark.one_shard("a job of several shards gets host limits only when dispatched")
def test_first_host_limits_set_while_a_job_runs_hold_for_what_it_has_leased(
    broker: BrokerService,
) -> None:
    """``job set --per-host`` on a job dispatched without it: tasks already leased count
    against the cap, queued ones keep their order per host, later batches join them."""
    broker.submit({"job": "a", "urls": urls(3, "http://h.test/") + urls(2, "http://g.test/")})
    first = broker.lease("w1", 2, 0)  # both on h.test, before any limit
    broker.steer("a", {"action": "set", "per_host": 2})
    broker.submit({"job": "a", "urls": urls(2, "http://k.test/")})
    leased = broker.lease("w1", 20, 0)
    assert sorted(t["url"] for t in leased) == [
        "http://g.test/0",  # h.test is full with the two leased before the limit
        "http://g.test/1",
        "http://k.test/0",
        "http://k.test/1",
    ], leased
    broker.complete("w1", [ok(first[0])])
    (third,) = broker.lease("w1", 20, 0)
    assert third["url"] == "http://h.test/2"
    done = [ok(task) for task in [first[1], *leased, third]]
    assert broker.complete("w1", done)["accepted"] == len(done)
    assert broker.job("a")["succeeded"] == 7


def test_a_host_delay_spaces_the_starts_it_hands_out(
    make_broker: Factory, clock: FakeClock
) -> None:
    broker = make_broker(wall_clock=lambda: WALL + clock.now)
    broker.submit({"job": "a", "urls": urls(4, "http://h.test/"), "host_delay": 0.5})
    starts = [t["scheduled"] for t in broker.lease("w1", 10, 0)]
    assert [b - a for a, b in itertools.pairwise(starts)] == [0.5, 0.5]  # a second ahead
    assert broker.lease("w1", 10, 0) == []  # the next start is more than a second away
    clock.advance(1.0)
    (fourth,) = broker.lease("w1", 10, 0)
    assert fourth["scheduled"] - starts[0] == 1.5


# -- status ----------------------------------------------------------------


@pytest.mark.one_shard("jobs in different shards are leased from by turns of the shards")
def test_status_lists_jobs_and_workers_with_leased_counts(
    broker: BrokerService, clock: FakeClock
) -> None:
    submit(broker, "a", 3)
    submit(broker, "b", 2)
    held = broker.lease("w1", 2, 0)
    assert [t["job"] for t in held] == ["a", "b"]  # jobs take turns
    broker.lease("w2", 1, 0)
    clock.advance(1.0)
    broker.complete("w1", [ok(held[0])])
    status = broker.status()
    assert status["queued"] == 2
    assert status["leased"] == 2
    assert status["unconfirmed"] == 1
    assert set(status["jobs"]) == {"a", "b"}
    a, b = status["jobs"]["a"], status["jobs"]["b"]
    assert (a["queued"], a["leased"], a["succeeded"]) == (1, 1, 1)
    assert (b["queued"], b["leased"], b["succeeded"]) == (1, 1, 0)
    workers = {w["worker"]: w for w in status["workers"]}
    assert [w["worker"] for w in status["workers"]] == ["w1", "w2"]
    assert workers["w1"]["leased"] == 1
    assert workers["w1"]["reported"] == 1
    assert workers["w2"]["leased"] == 1
    assert workers["w2"]["reported"] == 0
    assert workers["w2"]["last_seen_ago"] == 1.0
    assert workers["w1"]["last_seen_ago"] == 0.0


def test_status_tells_a_jobs_pace_lately_and_its_busiest_hosts(
    make_broker: Factory, clock: FakeClock
) -> None:
    """The rate its results came in at over the whole seconds since its first, their
    mean service time, and its hosts with the longest queues."""
    broker = make_broker(wall_clock=lambda: WALL + clock.now)
    mixed = urls(6, "http://h.test/") + urls(2, "http://g.test/")
    broker.submit({"job": "a", "urls": mixed, "per_host": 5})
    leased = broker.lease("w1", 20, 0)
    assert len(leased) == 7  # five on h.test, its cap; both on g.test
    clock.advance(0.2)
    broker.complete("w1", [ok(leased[0])])  # the first result: its second is not measured
    clock.advance(1.0)
    broker.complete("w1", [ok(task) for task in leased[1:4]])
    clock.advance(1.0)
    broker.complete("w1", [ok(task) for task in leased[4:7]])
    clock.advance(1.0)
    view = broker.status()["jobs"]["a"]
    assert (view["pace"]["achieved"], view["pace"]["achieved_over"]) == (3.0, 2.0)
    assert view["pace"]["mean_elapsed"] == pytest.approx(0.01)
    assert view["hosts"] == [{"host": "h.test:80", "queued": 1, "in_flight": 0}]


# -- many threads ------------------------------------------------------------


def test_concurrent_workers_give_exactly_one_result_per_task(implementation: Factory) -> None:
    total, per_batch = 5000, 1000
    broker = implementation(lease_timeout=30.0, max_pending=10_000)
    expected_ids: set[int] = set()
    for start in range(0, total, per_batch):
        reply = broker.submit({"job": "load", "urls": urls(per_batch), "batch_id": str(start)})
        expected_ids.update(range(reply["first_id"], reply["first_id"] + per_batch))
    broker.seal("load")
    assert len(expected_ids) == total
    totals: Counter[str] = Counter()
    totals_lock = threading.Lock()
    collected: list[dict[str, Any]] = []
    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            for _ in range(10_000):  # bounded; ends far sooner
                tasks = broker.lease(name, 37, 0.01)
                if not tasks:
                    counts = broker.job("load")
                    if counts["succeeded"] + counts["failed"] == total:
                        return
                    continue
                results = []
                for task in tasks:
                    if task["id"] % 7 == 0 and task["attempt"] == 1:
                        results.append(failed(task, "reset", name))
                    elif task["id"] % 11 == 0:
                        results.append(http(task, 404, name))
                    else:
                        results.append(ok(task, name))
                reply = broker.complete(name, results)
                again = broker.complete(name, results)  # a re-sent batch changes nothing
                with totals_lock:
                    totals.update(reply)
                    totals["dropped_again"] += again["dropped"]
                    totals["accepted_again"] += again["accepted"]
        except BaseException as exc:
            errors.append(exc)

    def read() -> None:
        try:
            token = None
            for _ in range(10_000):
                reply = broker.results("load", 300, 0.01, ack=token)
                collected.extend(reply["results"])
                if reply["done"]:
                    return
                token = reply["token"]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(f"w{n}",), daemon=True) for n in range(8)]
    threads.append(threading.Thread(target=read, daemon=True))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert not errors
    assert not any(thread.is_alive() for thread in threads)

    ids = [r["id"] for r in collected]
    assert len(ids) == total
    assert set(ids) == expected_ids
    retried = sum(1 for i in expected_ids if i % 7 == 0)
    not_found = sum(1 for i in expected_ids if i % 11 == 0)
    assert totals["requeued"] == retried
    assert totals["accepted"] == total
    assert totals["accepted_again"] == 0
    assert totals["dropped"] == 0
    counts = broker.job("load")
    assert counts["submitted"] == total
    assert counts["succeeded"] + counts["failed"] == total
    assert counts["confirmed"] == total
    assert counts["handed_out"] == counts["waiting"] == 0
    assert counts["failed"] == not_found
    assert counts["done"] is True
    assert sum(1 for r in collected if r["attempt"] == 2) == retried
    status = broker.status()
    assert (status["queued"], status["leased"], status["unconfirmed"]) == (0, 0, 0)
    assert sum(w["reported"] for w in status["workers"]) == total + retried


def test_scheduled_starts_keep_the_schedule_though_the_wall_clock_wobbles(
    make_broker: Factory, clock: FakeClock
) -> None:
    """Read a moment apart, the wall clock and the monotonic one differ by a little more
    or less each time; the starts must still be exactly 1/rate apart in Unix time,
    and a wall clock that is set (a step) must show in them."""
    wobble = iter([0.0, 0.003, -0.002, 0.004, -0.001] * 40)
    wall = {"offset": WALL - clock.now}
    broker = make_broker(wall_clock=lambda: clock.now + wall["offset"] + next(wobble))
    broker.submit({"job": "paced", "urls": urls(20), "rate": 10.0})
    starts = []
    for _ in range(10):
        starts += [task["scheduled"] for task in broker.lease("w1", 1, 0)]
        clock.advance(0.1)
    assert [round(b - a, 6) for a, b in itertools.pairwise(starts)] == [0.1] * 9
    wall["offset"] += 30.0  # the wall clock is set half a minute on
    (later,) = [task["scheduled"] for task in broker.lease("w1", 1, 0)]
    assert later - starts[-1] == pytest.approx(30.1, abs=0.01)


def test_pausing_or_cancelling_a_done_job_changes_nothing(broker: BrokerService) -> None:
    """There is nothing to pause: a dispatch that later reopens the job runs at once."""
    submit(broker, "a", 1)
    broker.seal("a")
    (task,) = broker.lease("w1", 1, 0)
    broker.complete("w1", [ok(task)])
    broker.ack(broker.results("a", 10, 0)["token"])
    for action in ("pause", "cancel"):
        assert broker.steer("a", {"action": action})["state"] == "done"
    submit(broker, "a", 1)
    assert len(broker.lease("w1", 10, 0)) == 1, "the reopened job was left paused or cancelled"
