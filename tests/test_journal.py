"""The broker's journal: restart after a crash, compaction, damage, locking, modes.

Every test drives a BrokerService with a hand-advanced clock and a journal in
``tmp_path``.  A "crash" is simulated in-process by ``crash()``: every broker
call has already handed its events to the OS on the way out of the broker
lock, so all a killed process leaves behind is the file as it is, and the
kernel closing its descriptors, which drops the ``flock`` on ``PATH.lock``.
``crash()`` does exactly that, without ``close()`` (no final flush or fsync).
``test_restart_after_kill_9`` checks the same with a real SIGKILL.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from brokerkit import Factory, crash, embedded, renew, syncs
from fakeclock import FakeClock
from fetchq_procs import poll_until

from fetchq.errors import BadRequest, ConfigError, StorageFailed
from fetchq.server import journal as journal_module
from fetchq.server.broker import Broker
from fetchq.server.journal import FORMAT, FORMAT_VERSION, Journal
from fetchq.server.service import BrokerService
from fetchq.wire.records import make_error, make_result

pytestmark = pytest.mark.embedded_only(
    "the journal is the embedded broker's: a store keeps its own files, and the store's "
    "durability is tested on real processes (test_store_faults)"
)

LEASE = 10.0
WALL = 1_700_000_000.0


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "fetchq.journal"


Opener = Callable[..., BrokerService]


@pytest.fixture
def open_broker(implementation: Factory) -> Opener:
    """Opens the broker of the implementation under test, durable at ``path``: opened
    again at the same path, it is the same broker restarted."""

    def opener(path: Path, clock: FakeClock, **settings: Any) -> BrokerService:
        settings.setdefault("lease_timeout", LEASE)
        settings.setdefault("max_attempts", 3)
        return implementation(
            clock=clock, wall_clock=lambda: WALL + clock.now, durable=path, **settings
        )

    return opener


def urls(count: int, prefix: str = "http://127.0.0.1/") -> list[str]:
    return [f"{prefix}{n}" for n in range(count)]


def ok(task: dict[str, Any], worker: str = "w") -> dict[str, Any]:
    return make_result(task, worker=worker, started=WALL, elapsed=0.01, status=200, nbytes=5)


def http_error(task: dict[str, Any], worker: str = "w") -> dict[str, Any]:
    return make_result(task, worker=worker, started=WALL, elapsed=0.01, status=404)


def refused(task: dict[str, Any], worker: str = "w") -> dict[str, Any]:
    return make_result(
        task, worker=worker, started=WALL, elapsed=0.01, error=make_error("refused", "refused")
    )


def late(task_id: int, attempt: int, job: str = "a") -> dict[str, Any]:
    """A result sent under a lease the broker no longer knows about."""
    task = {"id": task_id, "job": job, "url": "http://127.0.0.1/late", "attempt": attempt}
    return ok(task, worker="old")


def lease_all(broker: BrokerService, worker: str = "drain") -> list[dict[str, Any]]:
    leased: list[dict[str, Any]] = []
    while batch := broker.lease(worker, 1000, 0):
        leased.extend(batch)
    return leased


def take_all(broker: BrokerService, job: str | None = None, *, ack: bool) -> list[dict[str, Any]]:
    taken: list[dict[str, Any]] = []
    while True:
        reply = broker.results(job, 1000, 0)
        if not reply["results"]:
            return taken
        taken.extend(reply["results"])
        if ack:
            assert broker.ack(reply["token"]) == len(reply["results"])


def counts(broker: BrokerService, job: str) -> dict[str, Any]:
    return broker.job(job)


# -- restart after a crash ---------------------------------------------------


def test_tasks_a_cancelled_job_held_when_the_server_died_end_at_the_restart(
    open_broker: Opener, path: Path, clock: FakeClock
) -> None:
    """Their leases died with the process, so they are queued again; a cancelled job's
    queued tasks end as ``cancelled`` results, and reading needs no call to end them."""
    broker = open_broker(path, clock)
    broker.submit({"job": "c", "urls": urls(3)})
    broker.seal("c")
    assert len(lease_all(broker)) == 3
    assert broker.steer("c", {"action": "cancel"})["queued"] == 0
    crash(broker)
    restarted = open_broker(path, clock)
    state = counts(restarted, "c")
    assert (state["queued"], state["waiting"], state["failed"]) == (0, 3, 3)
    ended = take_all(restarted, "c", ack=True)
    assert [r["error"]["type"] for r in ended] == ["cancelled"] * 3
    assert counts(restarted, "c")["done"]
    restarted.close()


def test_restart_after_crash_restores_everything(
    open_broker: Opener, path: Path, clock: FakeClock
) -> None:
    broker = open_broker(path, clock)
    first_a = broker.submit({"job": "a", "urls": urls(6, "http://127.0.0.1/a"), "batch_id": "a-1"})
    held_1 = broker.lease("w1", 4, 0)  # a0..a3
    first_b = broker.submit({"job": "b", "urls": urls(3, "http://127.0.0.1/b"), "batch_id": "b-1"})
    a = [first_a["first_id"] + n for n in range(6)]
    b = [first_b["first_id"] + n for n in range(3)]
    assert b[0] == a[-1] + 1

    held_2 = broker.lease("w2", 3, 0)  # a4, a5, b0: the jobs take turns
    assert [t["id"] for t in held_1 + held_2] == [*a[:4], *a[4:], b[0]]
    reply = broker.complete("w1", [ok(held_1[0]), http_error(held_1[1]), refused(held_1[2])])
    assert reply == {
        "accepted": 2,
        "dropped": 0,
        "requeued": 1,
        "renewed": 0,
    }  # a2 goes back at attempt 2

    # w1 keeps a3 alive; w2 vanishes and its leases (a4, a5, b0) expire.
    clock.advance(6)
    assert renew(broker, "w1", [[a[3], 1]]) == 1
    clock.advance(5)
    assert broker.expire_leases() == 3

    # The expired b0 runs again (attempt 2) and succeeds; a5 fails for good.
    by_id = {t["id"]: t for t in broker.lease("w3", 5, 0)}  # three of a, two of b
    assert {i: t["attempt"] for i, t in by_id.items()} == {
        a[2]: 2,
        a[4]: 2,
        a[5]: 2,
        b[0]: 2,
        b[1]: 1,
    }
    assert broker.complete("w3", [ok(by_id[b[0]]), http_error(by_id[a[5]])])["accepted"] == 2
    # a2 and a4 are held by w3 at the crash; w3 gives a4 back untouched (attempt kept).
    assert broker.release("w3", [[a[4], 2]]) == 1

    # Outputs: a0 confirmed, a1 handed out and never confirmed, b0 confirmed,
    # a5 never handed out at all.
    first = broker.results("a", 1, 0)
    assert [r["id"] for r in first["results"]] == [a[0]]
    second = broker.results("a", 1, 0, ack=first["token"])
    assert [r["id"] for r in second["results"]] == [a[1]]
    third = broker.results("b", 10, 0)
    assert [r["id"] for r in third["results"]] == [b[0]]
    assert broker.ack(third["token"]) == 1
    assert broker.seal("b")["sealed"] is True
    before_a, before_b = counts(broker, "a"), counts(broker, "b")
    assert before_a["handed_out"] == 1 and before_a["waiting"] == 1

    crash(broker)
    del broker
    restarted = open_broker(path, clock)

    after_a, after_b = counts(restarted, "a"), counts(restarted, "b")
    # Counters survive; the leases (a2, a3) came back to the queue; the unconfirmed
    # delivery (a1) is still out under its token, with a fresh deadline.
    for key in ("submitted", "succeeded", "failed", "expired", "confirmed", "sealed"):
        assert after_a[key] == before_a[key], key
        assert after_b[key] == before_b[key], key
    assert after_a == {
        "submitted": 6,
        "queued": 3,  # a2 (was leased), a3 (was leased), a4 (released)
        "leased": 0,
        "succeeded": 1,
        "failed": 2,
        "expired": 2,  # a4 and a5, held by w2 when it vanished
        "waiting": 1,  # a5, never handed out
        "handed_out": 1,  # a1, handed out and not confirmed
        "confirmed": 1,
        "sealed": False,
        "done": False,
    }
    assert after_b == {
        "submitted": 3,
        "queued": 2,
        "leased": 0,
        "succeeded": 1,
        "failed": 0,
        "expired": 1,  # b0, held by w2 too
        "waiting": 0,
        "handed_out": 0,
        "confirmed": 1,
        "sealed": True,
        "done": False,
    }

    # The same batches sent again are recognised: same ids, nothing queued twice.
    assert restarted.submit({"job": "a", "urls": urls(6), "batch_id": "a-1"}) == {
        **first_a,
        "duplicate": True,
    }
    assert restarted.submit({"job": "b", "urls": urls(3), "batch_id": "b-1"}) == {
        **first_b,
        "duplicate": True,
    }
    assert counts(restarted, "a")["submitted"] == 6

    # Same id base: a late result of the old run for a pending task counts once;
    # one for a task already done, or an id never handed out, is dropped.
    assert restarted.complete("w1", [late(a[3], 1)]) == {
        "accepted": 1,
        "dropped": 0,
        "requeued": 0,
        "renewed": 0,
    }
    assert restarted.complete("w1", [late(a[3], 1)])["dropped"] == 1
    assert restarted.complete("w1", [late(a[0], 1), late(b[0], 2, "b")])["dropped"] == 2
    assert restarted.complete("w1", [late(a[5], 2), late(a[1], 1)])["dropped"] == 2
    assert restarted.complete("w1", [late(b[-1] + 1, 1), late(a[0] - 1, 1)])["dropped"] == 2

    # Results not confirmed before the crash come again (the one handed out once
    # its deadline passes); confirmed ones never.
    again = take_all(restarted, ack=True)
    assert sorted(r["id"] for r in again) == sorted([a[5], a[3]])
    clock.advance(LEASE)
    returned = take_all(restarted, ack=True)
    assert [r["id"] for r in returned] == [a[1]]
    again += returned

    # What is left runs again with the attempt it had last.
    leased = lease_all(restarted)
    assert {t["id"]: t["attempt"] for t in leased} == {a[2]: 2, a[4]: 2, b[1]: 1, b[2]: 1}

    # Everything ends as exactly one confirmed result per task.
    assert restarted.complete("w4", [ok(t) for t in leased])["accepted"] == 4
    restarted.seal("a")
    rest = take_all(restarted, ack=True)
    confirmed = [a[0], b[0], *(r["id"] for r in again), *(r["id"] for r in rest)]
    assert sorted(confirmed) == sorted(a + b)
    assert counts(restarted, "a")["done"] and counts(restarted, "b")["done"]
    assert restarted.results(None, 10, 0)["done"] is True
    restarted.close()


def test_restart_after_a_clean_close(open_broker: Opener, path: Path, clock: FakeClock) -> None:
    broker = open_broker(path, clock)
    first = broker.submit({"job": "a", "urls": urls(3)})["first_id"]
    [task] = broker.lease("w", 1, 0)
    broker.complete("w", [ok(task)])
    broker.close()

    restarted = open_broker(path, clock)
    assert counts(restarted, "a")["queued"] == 2
    assert [t["id"] for t in lease_all(restarted)] == [first + 1, first + 2]
    assert [r["id"] for r in take_all(restarted, ack=True)] == [first]
    restarted.close()


def test_restart_after_kill_9(path: Path) -> None:
    """A real SIGKILL: the child never flushes, fsyncs or closes anything itself (the
    embedded broker and its journal, as the child runs them)."""
    child = textwrap.dedent(
        """
        import json, os, signal, sys
        from fetchq.server.broker import Broker
        from fetchq.server.journal import Journal
        from fetchq.wire.records import make_result

        broker = Broker(journal=Journal(sys.argv[1]), lease_timeout=30)
        reply = broker.submit(
            {"job": "k", "urls": [f"http://127.0.0.1/{i}" for i in range(5)], "batch_id": "k1"}
        )
        held = broker.lease("w", 3, 0)
        done = make_result(held[0], worker="w", started=0.0, elapsed=0.1, status=200)
        broker.complete("w", [done])
        assert broker.results("k", 10, 0)["results"]  # handed out, never confirmed
        print(json.dumps(reply), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", child, str(path)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == -signal.SIGKILL, run.stderr
    reply = json.loads(run.stdout)
    first = reply["first_id"]

    clock = FakeClock()
    restarted = embedded(  # the dead process's lock is gone
        clock=clock, wall_clock=lambda: WALL + clock.now, durable=path, lease_timeout=LEASE
    )
    state = counts(restarted, "k")
    assert (state["submitted"], state["queued"], state["handed_out"]) == (5, 4, 1)
    assert [t["id"] for t in lease_all(restarted)] == [first + n for n in range(1, 5)]
    assert take_all(restarted, ack=True) == []  # still out with the (dead) output
    clock.advance(LEASE)
    assert [r["id"] for r in take_all(restarted, ack=True)] == [first]
    assert restarted.submit({"job": "k", "urls": [], "batch_id": "k1"}) == {
        **reply,
        "duplicate": True,
    }
    restarted.close()


def test_a_retry_and_a_final_expiry_are_journaled(
    open_broker: Opener, path: Path, clock: FakeClock
) -> None:
    broker = open_broker(path, clock, max_attempts=2)
    first = broker.submit({"job": "a", "urls": urls(2)})["first_id"]
    broker.lease("w", 2, 0)
    clock.advance(LEASE)
    assert broker.expire_leases() == 2  # both back at attempt 2
    [gives_up] = broker.lease("w", 1, 0)
    assert gives_up["attempt"] == 2
    clock.advance(LEASE)
    assert broker.expire_leases() == 1  # its last attempt: a failed result
    crash(broker)

    restarted = open_broker(path, clock, max_attempts=2)
    assert counts(restarted, "a")["failed"] == 1
    [other] = {first, first + 1} - {gives_up["id"]}
    assert [(t["id"], t["attempt"]) for t in lease_all(restarted)] == [(other, 2)]
    [result] = take_all(restarted, ack=True)
    assert result["id"] == gives_up["id"] and result["error"]["type"] == "lease_expired"
    restarted.close()


def test_unconfirmed_deliveries_survive_a_restart_and_a_compaction(
    open_broker: Opener, path: Path, clock: FakeClock
) -> None:
    broker = open_broker(path, clock)
    first = broker.submit({"job": "a", "urls": urls(3)})["first_id"]
    broker.complete("w", [ok(t) for t in broker.lease("w", 3, 0)])
    lapsed = broker.results("a", 1, 0)  # r0, deadline 1010
    clock.advance(5)
    kept = broker.results("a", 1, 0)  # r1, deadline 1015
    clock.advance(6)
    broker.expire_leases()  # r0 comes back
    broker.compact()  # what is still out is in the snapshot
    again = broker.results("a", 1, 0)
    assert [r["id"] for r in again["results"]] == [first]
    crash(broker)

    restarted = open_broker(path, clock)
    state = counts(restarted, "a")
    assert (state["waiting"], state["handed_out"], state["confirmed"]) == (1, 2, 0)
    assert restarted.ack(lapsed["token"]) == 0  # it had lapsed before the crash
    assert restarted.ack(kept["token"]) == 1  # an output may confirm after the restart
    assert [r["id"] for r in take_all(restarted, ack=True)] == [first + 2]
    clock.advance(LEASE - 1)
    assert take_all(restarted, ack=True) == []  # still out: a fresh deadline
    clock.advance(1)
    assert [r["id"] for r in take_all(restarted, ack=True)] == [first]
    assert restarted.ack(again["token"]) == 0
    restarted.seal("a")
    assert counts(restarted, "a")["done"] is True
    restarted.close()


def test_tasks_submitted_after_a_restart_are_leased(
    open_broker: Opener, path: Path, clock: FakeClock
) -> None:
    broker = open_broker(path, clock)
    broker.submit({"job": "a", "urls": urls(3)})
    crash(broker)

    restarted = open_broker(path, clock)
    first = restarted.submit({"job": "a", "urls": urls(2, "http://127.0.0.1/new")})["first_id"]
    leased = [t["id"] for t in lease_all(restarted)]
    assert leased[-2:] == [first, first + 1]
    assert restarted.complete("w", [ok({"id": first, "job": "a", "url": "u"})])["accepted"] == 1
    restarted.close()


# -- leases on limited hosts across a restart ----------------------------------
#
# A crash of the server does not stop its workers: a request leased on a host with a
# per-host cap goes on running, so the restarted server counts it on the host until it
# is reported or its lease would have lapsed.  Here the cap is 1: a second lease on
# the host while the first runs would be two requests at once.

CAPPED = {"job": "c", "per_host": 1}


def capped_broker(
    open_broker: Opener, path: Path, clock: FakeClock
) -> tuple[BrokerService, dict[str, Any]]:
    """A job of two tasks on one host with a cap of 1, the first leased to ``w``."""
    broker = open_broker(path, clock)
    broker.submit({**CAPPED, "urls": urls(2, "http://h.test/")})
    [running] = broker.lease("w", 2, 0)
    assert broker.lease("other", 2, 0) == []  # the cap holds before the crash
    return broker, running


def test_a_capped_lease_holds_the_host_across_restarts_until_reported(
    open_broker: Opener, path: Path, clock: FakeClock
) -> None:
    broker, running = capped_broker(open_broker, path, clock)
    crash(broker)
    restarted = open_broker(path, clock)
    crash(restarted)  # twice: the start-up compaction keeps the lease too
    restarted = open_broker(path, clock)
    assert counts(restarted, "c")["leased"] == 1
    assert restarted.lease("other", 2, 0) == []  # the old worker still runs it
    assert renew(restarted, "w", [[running["id"], 1]]) == 1  # the worker carries on
    assert restarted.complete("w", [ok(running)])["accepted"] == 1
    [following] = restarted.lease("other", 2, 0)  # the host is free: the next one goes
    assert following["id"] == running["id"] + 1
    restarted.close()


def test_a_capped_lease_lapses_after_a_restart_at_its_old_deadline(
    open_broker: Opener, path: Path, clock: FakeClock
) -> None:
    broker, running = capped_broker(open_broker, path, clock)
    clock.advance(LEASE - 1)
    crash(broker)
    restarted = open_broker(path, clock)
    assert restarted.lease("other", 2, 0) == []
    clock.advance(1)  # its deadline, set by the old process
    [again] = restarted.lease("other", 2, 0)
    assert (again["id"], again["attempt"]) == (running["id"], 2)
    restarted.close()


def test_a_renewal_before_a_crash_holds_after_it(
    open_broker: Opener, path: Path, clock: FakeClock
) -> None:
    broker, running = capped_broker(open_broker, path, clock)
    clock.advance(LEASE / 2)
    assert renew(broker, "w", [[running["id"], 1]]) == 1  # now due 1.5 timeouts from the lease
    clock.advance(LEASE / 2 + 1)  # past the deadline it was leased with
    crash(broker)
    restarted = open_broker(path, clock)
    assert restarted.lease("other", 2, 0) == []
    assert renew(restarted, "w", [[running["id"], 1]]) == 1
    restarted.close()


def test_a_task_handed_back_before_a_crash_goes_at_once_after_it(
    open_broker: Opener, path: Path, clock: FakeClock
) -> None:
    broker, running = capped_broker(open_broker, path, clock)
    assert broker.release("w", [[running["id"], 1]]) == 1
    crash(broker)
    restarted = open_broker(path, clock)
    [again] = restarted.lease("other", 1, 0)
    assert (again["id"], again["attempt"]) == (running["id"], 1)  # its attempt not used up
    restarted.close()


def test_a_capped_lease_the_journal_cannot_take_is_not_handed_out(
    open_broker: Opener, path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk: the lease call fails (the worker waits and retries) and leaves the
    task queued and its host free, so it goes once the journal works again."""
    broker = open_broker(path, clock)
    broker.submit({**CAPPED, "urls": urls(1, "http://h.test/")})
    real_write = os.write

    def full_disk(fd: int, data: bytes | memoryview) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(StorageFailed, match="No space left on device"):
        broker.lease("w", 1, 0)
    monkeypatch.setattr(os, "write", real_write)
    assert counts(broker, "c")["leased"] == 0
    [task] = broker.lease("other", 1, 0)
    assert task["attempt"] == 1
    broker.close()


def test_without_host_limits_a_lease_is_not_journaled_and_its_task_goes_again(
    open_broker: Opener, path: Path, clock: FakeClock
) -> None:
    """Only a cap needs to know what runs: other leases cost the journal nothing, and a
    restart queues their tasks again at once (a late report of one is deduplicated)."""
    broker = open_broker(path, clock)
    broker.submit({"job": "a", "urls": urls(1)})
    size = path.stat().st_size
    [task] = broker.lease("w", 1, 0)
    assert renew(broker, "w", [[task["id"], 1]]) == 1
    assert path.stat().st_size == size
    crash(broker)
    restarted = open_broker(path, clock)
    [again] = restarted.lease("other", 1, 0)
    assert again["id"] == task["id"]
    restarted.close()


# -- compaction --------------------------------------------------------------


def busy_broker(
    open_broker: Opener, path: Path, clock: FakeClock
) -> tuple[BrokerService, list[int]]:
    """Many results confirmed, a few left in every other state."""
    broker = open_broker(path, clock)
    first = broker.submit({"job": "big", "urls": urls(300), "batch_id": "big-1"})["first_id"]
    held = broker.lease("w", 297, 0)
    broker.submit({"job": "small", "urls": urls(4), "batch_id": "small-1"})
    assert broker.complete("w", [ok(t) for t in held[:290]])["accepted"] == 290
    assert broker.complete("w", [refused(t) for t in held[290:293]])["requeued"] == 3
    for _ in range(28):
        reply = broker.results("big", 10, 0)
        assert broker.ack(reply["token"]) == 10
    broker.results("big", 5, 0)  # handed out, never confirmed
    broker.seal("small")
    return broker, [first + n for n in range(300)]


def restored_state(open_broker: Opener, path: Path) -> dict[str, Any]:
    """Everything a restarted broker holds, read through its API (this uses it up)."""
    clock = FakeClock()
    broker = open_broker(path, clock)
    jobs = {job: counts(broker, job) for job in ("big", "small")}
    clock.advance(LEASE)  # deliveries still out come back
    state = {
        "jobs": jobs,
        "tasks": sorted(
            (t["id"], t["job"], t["url"], t["attempt"], t["timeout"]) for t in lease_all(broker)
        ),
        "results": sorted((r["id"], r["ok"]) for r in take_all(broker, ack=False)),
        "batch": broker.submit({"job": "big", "urls": [], "batch_id": "big-1"}),
    }
    broker.close()
    return state


def test_compaction_shrinks_the_file_and_replays_the_same_state(
    open_broker: Opener, path: Path, clock: FakeClock, tmp_path: Path
) -> None:
    broker, ids = busy_broker(open_broker, path, clock)
    uncompacted = tmp_path / "copy" / "fetchq.journal"
    uncompacted.parent.mkdir()
    shutil.copyfile(path, uncompacted)
    size = path.stat().st_size

    broker.compact()
    assert path.stat().st_size < size / 10

    # Appends after a compaction go to the new file.
    [task] = broker.lease("w", 1, 0)
    broker.complete("w", [ok(task)])
    shutil.copyfile(path, tmp_path / "compacted-then-more")
    crash(broker)

    from_log = restored_state(open_broker, uncompacted)
    from_compacted = restored_state(open_broker, path)
    # Before compaction: 290 done, 280 confirmed, 4 leased, 3 requeued, 3 never leased.
    assert from_log["jobs"]["big"] == {
        "submitted": 300,
        "queued": 10,
        "leased": 0,
        "succeeded": 290,
        "failed": 0,
        "expired": 0,
        "waiting": 5,
        "handed_out": 5,
        "confirmed": 280,
        "sealed": False,
        "done": False,
    }
    assert from_log["jobs"]["small"]["queued"] == 4 and from_log["jobs"]["small"]["sealed"]
    assert len(from_log["tasks"]) == 14 and len(from_log["results"]) == 10
    # After it, one more task completed (and nothing else changed).
    assert from_compacted["jobs"] == {
        **from_log["jobs"],
        "big": {**from_log["jobs"]["big"], "queued": 9, "succeeded": 291, "waiting": 6},
    }
    assert from_compacted["tasks"] == [t for t in from_log["tasks"] if t[0] != task["id"]]
    assert from_compacted["results"] == sorted([*from_log["results"], (task["id"], True)])
    assert (
        from_compacted["batch"]
        == from_log["batch"]
        == {
            "accepted": 300,
            "first_id": ids[0],
            "duplicate": True,
        }
    )


def test_housekeeping_compacts_once_the_log_has_grown(
    open_broker: Opener, path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_module, "COMPACT_MIN_BYTES", 0)
    broker, _ = busy_broker(open_broker, path, clock)
    grown = path.stat().st_size
    broker.housekeeping()  # starts the compaction beside it
    poll_until(lambda: path.stat().st_size < grown / 10, 30, "housekeeping to compact")
    compacted = path.stat().st_size
    broker.housekeeping()  # not grown since: left alone
    broker.close()  # waits for any compaction under way
    assert path.stat().st_size == compacted


def copy_journal(path: Path, folder: Path) -> Path:
    """The journal's files as a crash at this moment would leave them."""
    folder.mkdir()
    for file in path.parent.glob(path.name + "*"):
        if not file.name.endswith((".lock", ".compacting")):
            shutil.copyfile(file, folder / file.name)
    return folder / path.name


def test_calls_go_on_while_a_compaction_writes_and_every_crash_point_keeps_them(
    path: Path, clock: FakeClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A compaction stops clients only to capture the state: it is written with the
    broker's lock let go, while later events go to a new segment file.  A crash while
    it writes, or after it replaced the journal (before or after the old segment is
    removed), keeps every call, those made meanwhile too."""
    broker = embedded(clock=clock, wall_clock=lambda: WALL + clock.now, durable=path)
    first = broker.submit({"job": "a", "urls": urls(3)})["first_id"]
    broker.compact()  # writes now go to a segment: the next compaction replaces it
    broker.submit({"job": "c", "urls": urls(1)})
    held = broker.lease("w", 1, 0)
    crashes: dict[str, Path] = {}
    real_write = Journal._write_snapshot

    def write_slowly(journal: Journal, *args: Any) -> int:
        def meanwhile() -> None:  # another client, while the snapshot is written
            broker.submit({"job": "b", "urls": urls(2)})
            broker.complete("w", [ok(held[0])])
            broker.seal("b")

        caller = threading.Thread(target=meanwhile, daemon=True)
        caller.start()
        caller.join(10)
        assert not caller.is_alive(), "a call waited for the compaction to finish writing"
        crashes["writing"] = copy_journal(path, tmp_path / "writing")
        size = real_write(journal, *args)
        crashes["replaced"] = copy_journal(path, tmp_path / "replaced")
        return size

    monkeypatch.setattr(Journal, "_write_snapshot", write_slowly)
    broker.compact()
    monkeypatch.undo()
    assert len(list(path.parent.glob(path.name + ".*[0-9]"))) == 1, "old segments removed"
    crash(broker)
    for name, copy in {**crashes, "after": path}.items():
        restarted = embedded(clock=clock, wall_clock=lambda: WALL + clock.now, durable=copy)
        state_a, state_b = counts(restarted, "a"), counts(restarted, "b")
        assert (state_a["queued"], state_a["succeeded"]) == (2, 1), name
        assert (state_b["submitted"], state_b["sealed"]) == (2, True), name
        assert counts(restarted, "c")["submitted"] == 1, name
        leased = sorted(t["id"] for t in lease_all(restarted))
        assert leased == [first + n for n in range(1, 6)], name
        restarted.close()


def test_a_torn_last_line_is_cut_off_and_the_rest_kept(
    open_broker: Opener, path: Path, clock: FakeClock
) -> None:
    broker = open_broker(path, clock)
    first = broker.submit({"job": "a", "urls": urls(3)})["first_id"]
    held = broker.lease("w", 2, 0)
    broker.complete("w", [ok(held[0])])
    token = broker.results("a", 10, 0)["token"]  # its ack is what gets torn below
    crash(broker)
    whole = path.read_bytes()
    torn = json.dumps({"k": "ack", "token": token, "ids": [first]}).encode()[:-3]
    with open(path, "ab") as handle:
        handle.write(torn)

    journal = Journal(path)
    events = list(journal.read())
    assert events[0]["k"] == FORMAT
    assert [e["k"] for e in events[-2:]] == ["result", "hand"]
    assert path.read_bytes() == whole  # the torn bytes are gone, the rest is intact
    journal.close()

    with open(path, "ab") as handle:
        handle.write(torn)
    restarted = open_broker(path, clock)
    assert counts(restarted, "a")["succeeded"] == 1
    assert [t["id"] for t in lease_all(restarted)] == [first + 1, first + 2]
    assert restarted.ack(token) == 1  # the torn ack never landed: the delivery is still out
    clock.advance(LEASE)
    assert take_all(restarted, ack=True) == []
    restarted.close()


# -- older formats -------------------------------------------------------------


@pytest.mark.parametrize("version", [1, 2])
def test_journals_of_older_formats_still_replay(
    open_broker: Opener, path: Path, clock: FakeClock, version: int
) -> None:
    """Format 1 called confirmed results "delivered"; formats 1 and 2 called the event
    of a sealed job "finish".  A journal of either replays, and is written on in the
    current format."""
    base = 7 << 32
    confirmed = {"delivered": 1} if version == 1 else {"confirmed": 1}
    old = [
        {"k": FORMAT, "v": version, "id_base": base, "next_id": base + 1, "written": WALL},
        {"k": "job", "job": "old", "created": WALL, "submitted": 1, "succeeded": 1,
         "failed": 0, "expired": 0, "sealed": True, **confirmed},
        {"k": "range", "first": base - 1, "job": "old"},
        {"k": "submit", "job": "a", "first": base + 1, "urls": urls(2), "attempts": 3,
         "timeout": 10.0, "at": WALL, "batch": "a-1"},
        {"k": "finish", "job": "a"},
    ]  # fmt: skip
    path.write_text("".join(json.dumps(event) + "\n" for event in old))
    broker = open_broker(path, clock)
    assert counts(broker, "old")["confirmed"] == 1 and counts(broker, "old")["done"]
    state = counts(broker, "a")
    assert (state["queued"], state["sealed"]) == (2, True)
    assert broker.submit({"job": "a", "urls": urls(2), "batch_id": "a-1"})["first_id"] == base + 1
    broker.seal("a")
    broker.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0]["v"] == FORMAT_VERSION == 3
    assert lines[-1] == {"k": "seal", "job": "a"}


# -- what is not a journal ----------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        b"hello world\n",
        b'{"hello": "world"}\n',
        b"[1, 2, 3]\n",
        json.dumps({"k": FORMAT, "v": FORMAT_VERSION + 1, "id_base": 1 << 32}).encode() + b"\n",
        json.dumps({"k": FORMAT, "v": 0, "id_base": 1 << 32}).encode() + b"\n",
    ],
    ids=["text", "other-json", "json-list", "newer-version", "older-version"],
)
def test_what_is_not_a_journal_is_refused_and_left_alone(
    path: Path, clock: FakeClock, content: bytes
) -> None:
    path.write_bytes(content)
    journal = Journal(path)
    with pytest.raises(ConfigError) as caught:
        Broker(clock=clock, wall_clock=clock, journal=journal)
    journal.close()
    assert str(path) in str(caught.value)
    if b"fetchq-journal" in content:
        assert "version" in str(caught.value)
    assert path.read_bytes() == content


def test_a_file_without_a_newline_is_refused_and_left_alone(path: Path, clock: FakeClock) -> None:
    content = b"s3cr3t-authkey-with-no-newline"
    path.write_bytes(content)
    journal = Journal(path)
    try:
        with pytest.raises(ConfigError):
            Broker(clock=clock, wall_clock=clock, journal=journal)
    finally:
        journal.close()
        assert path.read_bytes() == content


@pytest.mark.parametrize(
    "lines",
    [
        [{"k": FORMAT, "v": FORMAT_VERSION}],
        [{"k": FORMAT, "v": FORMAT_VERSION, "id_base": 1 << 32}, [1]],
        [{"k": FORMAT, "v": FORMAT_VERSION, "id_base": 1 << 32}, {"x": 1}],
    ],
    ids=["header-without-id-base", "event-not-an-object", "event-without-kind"],
)
def test_a_damaged_journal_is_a_config_error(
    path: Path, clock: FakeClock, lines: list[Any]
) -> None:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    journal = Journal(path)
    try:
        with pytest.raises(ConfigError):
            Broker(clock=clock, wall_clock=clock, journal=journal)
    finally:
        journal.close()


def test_an_empty_or_missing_file_starts_a_new_journal(
    open_broker: Opener, path: Path, clock: FakeClock
) -> None:
    path.write_bytes(b"")
    broker = open_broker(path, clock)
    first = broker.submit({"job": "a", "urls": urls(1)})["first_id"]
    crash(broker)
    header = json.loads(path.read_bytes().splitlines()[0])
    assert header["k"] == FORMAT and header["v"] == FORMAT_VERSION
    assert header["id_base"] < first
    restarted = open_broker(path, clock)
    assert [t["id"] for t in lease_all(restarted)] == [first]
    restarted.close()


# -- one server per journal ---------------------------------------------------


def test_a_second_journal_on_the_same_path_is_refused(
    open_broker: Opener, path: Path, clock: FakeClock
) -> None:
    broker = open_broker(path, clock)
    with pytest.raises(ConfigError, match="in use"):
        Journal(path)
    with pytest.raises(ConfigError, match="in use"):
        open_broker(path, clock)
    broker.close()
    again = Journal(path)  # free once the first one is closed
    again.close()


# -- file modes and fsync -------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_journal_files_are_private(
    open_broker: Opener, path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    replaced: list[tuple[str, int]] = []
    real_replace = os.replace

    def spy(source: Any, target: Any) -> None:
        replaced.append((str(source), mode(Path(source))))
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", spy)
    old_umask = os.umask(0)  # the modes below come from fetchq, not from the umask
    try:
        broker = open_broker(path, clock)
        broker.submit({"job": "a", "urls": urls(2)})
        broker.compact()
    finally:
        os.umask(old_umask)
    assert mode(path) == 0o600
    assert mode(path.with_name(path.name + ".lock")) == 0o600
    assert replaced == [(str(path) + ".compacting", 0o600)] * 2  # at start and on compact()
    broker.close()

    path.chmod(0o644)  # a journal made readable by hand is private again after a restart
    restarted = open_broker(path, clock)
    assert mode(path) == 0o600
    restarted.close()


def test_submits_and_seals_are_fsynced_before_the_reply(path: Path, clock: FakeClock) -> None:
    broker = embedded(clock=clock, wall_clock=clock, durable=path)  # the journal's fsyncs
    before = syncs(broker)
    broker.submit({"job": "a", "urls": urls(2)})
    assert syncs(broker) == before + 1
    broker.seal("a")
    assert syncs(broker) == before + 2
    [task] = broker.lease("w", 1, 0)
    broker.complete("w", [ok(task)])
    assert syncs(broker) == before + 2  # left to housekeeping
    broker.housekeeping()
    assert syncs(broker) == before + 3
    broker.close()


# -- what the journal cannot encode ----------------------------------------------


def test_a_url_the_journal_cannot_encode_is_refused_whole(
    open_broker: Opener, path: Path, clock: FakeClock
) -> None:
    """A lone surrogate cannot be written as UTF-8: the batch is refused before
    anything changes, so a corrected retry with the same batch id is queued."""
    broker = open_broker(path, clock)
    batch = {
        "job": "s",
        "urls": ["http://127.0.0.1/ok", "http://127.0.0.1/\udcff"],
        "batch_id": "s-1",
    }
    with pytest.raises(BadRequest, match="valid Unicode"):
        broker.submit(batch)
    assert "s" not in broker.status()["jobs"], "a refused batch creates no job"
    assert broker.lease("w", 10, 0) == []
    retried = broker.submit({**batch, "urls": ["http://127.0.0.1/ok"]})
    assert retried == {"accepted": 1, "first_id": retried["first_id"]}
    crash(broker)
    restarted = open_broker(path, clock)
    assert counts(restarted, "s")["submitted"] == 1
    assert [t["url"] for t in restarted.lease("w", 10, 0)] == ["http://127.0.0.1/ok"]
    restarted.close()


def test_a_result_the_journal_cannot_encode_is_refused_and_changes_nothing(
    open_broker: Opener, path: Path, clock: FakeClock
) -> None:
    """The whole call is refused; the task stays leased to its worker, which can
    still report it properly, and a restart sees no trace of the bad call."""
    broker = open_broker(path, clock)
    broker.submit({"job": "a", "urls": urls(2)})
    first, second = broker.lease("w", 2, 0)
    with pytest.raises(BadRequest, match="JSON values only"):
        broker.complete("w", [ok(first), {**ok(second), "worker": "lone \ud800 surrogate"}])
    state = counts(broker, "a")
    assert (state["queued"], state["leased"], state["succeeded"], state["failed"]) == (0, 2, 0, 0)
    assert broker.complete("w", [ok(first), ok(second)])["accepted"] == 2
    crash(broker)
    restarted = open_broker(path, clock)
    state = counts(restarted, "a")
    assert (state["queued"], state["leased"], state["succeeded"], state["failed"]) == (0, 0, 2, 0)
    restarted.close()


def test_housekeeping_goes_on_while_a_compaction_writes(
    path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writing a compaction of millions of tasks takes seconds: housekeeping starts it
    beside itself and goes on expiring leases meanwhile; close waits for it."""
    broker = embedded(
        clock=clock, wall_clock=lambda: WALL + clock.now, durable=path, lease_timeout=LEASE
    )
    broker.submit({"job": "a", "urls": urls(2)})
    (task,) = broker.lease("w", 1, 0)
    writing, may_finish = threading.Event(), threading.Event()
    real_write = Journal._write_snapshot

    def write_slowly(journal: Journal, *args: Any) -> int:
        writing.set()
        assert may_finish.wait(30), "the test never let the compaction finish"
        return real_write(journal, *args)

    monkeypatch.setattr(Journal, "_write_snapshot", write_slowly)
    monkeypatch.setattr(Journal, "wants_compaction", lambda journal: True)
    broker.housekeeping()
    assert writing.wait(10), "housekeeping started no compaction"
    clock.advance(LEASE + 1)
    housekept = threading.Thread(target=broker.housekeeping, daemon=True)
    housekept.start()
    housekept.join(10)
    assert not housekept.is_alive(), "housekeeping waited for the compaction"
    assert counts(broker, "a")["expired"] == 1, "a lease lapsed while it wrote, and expired"
    closing = threading.Thread(target=broker.close, daemon=True)
    closing.start()
    closing.join(0.5)
    assert closing.is_alive(), "close did not wait for the compaction"
    may_finish.set()
    closing.join(30)
    assert not closing.is_alive()
    assert task["id"] in {
        t["id"]
        for t in lease_all(embedded(clock=clock, wall_clock=lambda: WALL + clock.now, durable=path))
    }
