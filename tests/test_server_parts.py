"""The broker's parts, each alone: ledger, queue, leases, outbox, validation, journal."""

from __future__ import annotations

import errno
import gc
import os
from pathlib import Path

import pytest

from fetchq.errors import BadRequest, StorageFailed, UsageError
from fetchq.server import events, validate
from fetchq.server.journal import Journal, encode_event
from fetchq.server.leases import HEAP_SLACK, LeaseTable
from fetchq.server.ledger import REMEMBERED_BATCHES, Ledger
from fetchq.server.outbox import Outbox
from fetchq.server.scheduler import Scheduler
from fetchq.server.tasks import Batch, Task
from fetchq.wire.api import MAX_JOB_NAME, job_name_problem
from fetchq.wire.records import StoredResult

BASE = 5 << 32


def task(task_id: int, job: str = "a", attempt: int = 1) -> Task:
    return Task(task_id, job, f"http://127.0.0.1/{task_id}", attempt, 3, 5.0, 0.0)


def result(task_id: int, job: str = "a") -> dict[str, object]:
    return {"id": task_id, "job": job, "ok": True}


# -- ledger -------------------------------------------------------------------


def test_ledger_knows_the_job_of_every_id_it_allocated() -> None:
    ledger = Ledger(BASE)
    first_a = ledger.allocate("a", 3)
    assert ledger.allocate("b", 0) == first_a + 3  # an empty batch takes no ids
    first_b = ledger.allocate("b", 2)
    first_c = ledger.allocate("a", 1)
    assert (first_a, first_b, first_c) == (BASE + 1, BASE + 4, BASE + 6)
    assert [ledger.job_of(i) for i in range(BASE + 1, BASE + 7)] == ["a"] * 3 + ["b"] * 2 + ["a"]
    assert ledger.known(BASE + 6) and not ledger.known(BASE + 7) and not ledger.known(BASE)


def test_ledger_remembers_the_newest_batches_only() -> None:
    ledger = Ledger(BASE)
    for n in range(REMEMBERED_BATCHES + 5):
        ledger.remember_batch(f"b{n}", {"accepted": n})
    assert ledger.batch_reply("b4") is None
    assert ledger.batch_reply("b5") == {"accepted": 5}
    assert ledger.batch_reply(None) is None


# -- queue --------------------------------------------------------------------


def never(_: int) -> bool:
    return False


def test_a_job_is_first_in_first_out_with_retries_in_front() -> None:
    queue = Scheduler()
    queue.add_batch(Batch("a", BASE + 1, ["u1", "u2", "u3"], 3, 5.0, 0.0), now=0.0)
    queue.add_batch(Batch("a", BASE + 4, ["u4"], 3, 5.0, 0.0), now=0.0)
    assert (len(queue), queue.count("a"), queue.count("b")) == (4, 4, 0)
    (first,) = queue.take(1, 0.0, never)
    queue.add_retry(first.task._replace(attempt=2))
    taken = queue.take(10, 0.0, never)
    assert [(p.task.id, p.task.attempt, p.start) for p in taken] == [
        (BASE + 1, 2, None),
        (BASE + 2, 1, None),
        (BASE + 3, 1, None),
        (BASE + 4, 1, None),
    ]
    assert len(queue) == 0 and queue.count("a") == 0


def test_jobs_take_turns() -> None:
    queue = Scheduler()
    queue.add_batch(Batch("a", BASE + 1, ["a1", "a2", "a3", "a4"], 3, 5.0, 0.0), now=0.0)
    queue.add_batch(Batch("b", BASE + 5, ["b1", "b2"], 3, 5.0, 0.0), now=0.0)
    urls = [pick.task.url for pick in queue.take(4, 0.0, never)]
    assert sorted(urls) == ["a1", "a2", "b1", "b2"]


def test_a_stale_copy_is_forgotten_and_skipped() -> None:
    queue = Scheduler()
    queue.add_batch(Batch("a", BASE + 1, ["u1", "u2"], 3, 5.0, 0.0), now=0.0)
    queue.forget("a")  # BASE + 1 finished elsewhere while queued
    assert len(queue) == 1
    assert [p.task.id for p in queue.take(5, 0.0, lambda i: i == BASE + 1)] == [BASE + 2]
    assert len(queue) == 0


# -- leases -------------------------------------------------------------------


def test_a_lease_is_one_heap_entry_however_often_renewed() -> None:
    leases = LeaseTable()
    leases.grant(task(1), "w", deadline=10.0)
    for n in range(100):
        assert leases.renew(1, 1, "w", deadline=11.0 + n)
    assert len(leases._expiry) == 1
    assert leases.overdue(50.0) == []  # filed under 10, renewed to 110: filed again
    assert len(leases._expiry) == 1
    (lapsed,) = leases.overdue(110.0)
    assert lapsed.id == 1


def test_only_the_holder_renews_and_ended_leases_are_swept() -> None:
    leases = LeaseTable()
    leases.grant(task(1), "w", deadline=10.0)
    assert not leases.renew(1, 1, "other", 20.0)
    assert not leases.renew(1, 2, "w", 20.0)
    assert [lease.id for lease in leases.overdue(10.0)] == [1]
    for n in range(2, 3 * HEAP_SLACK):
        leases.grant(task(n), "w", deadline=float(n))
        leases.drop(n)
    assert len(leases._expiry) <= 2 * len(leases) + HEAP_SLACK + 1


def test_an_overdue_lease_refiled_is_found_again() -> None:
    leases = LeaseTable()
    leases.grant(task(1, "j"), "w", deadline=10.0)
    (lease,) = leases.overdue(11.0)
    assert leases.overdue(11.0) == []
    leases.refile(lease)
    assert leases.overdue(11.0) == [lease]
    assert (len(leases), leases.count("j"), leases.held_by()["w"]) == (1, 1, 1)


# -- outbox -------------------------------------------------------------------


def test_a_confirmed_delivery_lets_its_results_go_at_once() -> None:
    """A confirmed delivery may wait in the expiry heap until its deadline; its
    results must not, or they would outlive their confirmation by a lease timeout,
    beyond --max-results."""

    def alive() -> int:
        gc.collect()
        return sum(isinstance(o, StoredResult) for o in gc.get_objects())

    before = alive()
    outbox = Outbox()
    for n in range(1, 101):
        outbox.add(result(n, "a"))
    outbox.hand_out("t1", outbox.select("a", 100), deadline=10.0)
    assert alive() == before + 100
    assert len(outbox.confirm("t1").results) == 100
    assert alive() == before


def test_outbox_hands_out_confirms_and_takes_back_in_order() -> None:
    outbox = Outbox()
    for n in range(1, 6):
        outbox.add(result(n, "a" if n < 4 else "b"))
    assert [r["id"] for r in outbox.select(None, 4)] == [1, 2, 3, 4]
    outbox.hand_out("t1", outbox.select("a", 2), deadline=10.0)
    outbox.hand_out("t2", outbox.select("a", 5), deadline=11.0)
    assert outbox.counts("a") == (0, 3, 0) and outbox.unconfirmed == 5
    assert outbox.confirm("t2") is not None and outbox.confirm("t2") is None
    assert outbox.counts("a") == (0, 2, 1) and outbox.unconfirmed == 4
    lapsed = outbox.lapsed(10.5)
    assert [d.token for d in lapsed] == ["t1"]
    outbox.give_back(lapsed)
    assert [r["id"] for r in outbox.select("a", 5)] == [1, 2]
    assert outbox.counts("a") == (2, 0, 1)


# -- validation ---------------------------------------------------------------


def test_one_job_name_rule_for_server_and_client() -> None:
    good = ["a", "job-2026.11:x@y+z_1", "A" * MAX_JOB_NAME]
    bad = ["", "-a", "a b", "é", "A" * (MAX_JOB_NAME + 1), 7, None]
    for name in good:
        assert job_name_problem(name) is None
        assert validate.job_name(name) == name
    for name in bad:
        assert job_name_problem(name) is not None
        with pytest.raises(BadRequest, match="invalid job name"):
            validate.job_name(name)
    from fetchq.wire.api import check_job_name

    with pytest.raises(UsageError, match="invalid job name"):
        check_job_name("a b")


def test_results_are_bounded_in_shape_and_size() -> None:
    good = {"id": 1, "attempt": 1, "url": "http://h/" + "a" * 8000, "error": {"type": "x"}}
    assert validate.results_list([good]) == [good]
    for bad, why in [
        ({**good, "url": "x" * (validate.MAX_RESULT_TEXT + 1)}, "characters of text"),
        ({**good, "extra": [1, 2]}, "plain values"),
        ({**good, "error": {"nested": {"deep": 1}}}, "plain values"),
        ({**good, **{f"f{n}": 0 for n in range(40)}}, "fields a result"),
    ]:
        with pytest.raises(BadRequest, match=why):
            validate.results_list([good, bad])


def test_a_lone_surrogate_url_is_refused() -> None:
    with pytest.raises(BadRequest, match="lone surrogates"):
        validate.submit_request({"job": "a", "urls": ["http://127.0.0.1/\ud800"]})
    assert validate.submit_request({"job": "a", "urls": ["http://127.0.0.1/é"]}).urls


# -- journal ------------------------------------------------------------------


def test_a_failed_write_leaves_the_file_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The OS accepts part of a write and then reports a full disk."""
    journal = Journal(tmp_path / "j")
    journal.rewrite([], {"id_base": BASE, "next_id": BASE + 1})
    journal.write([encode_event(events.seal("a"))])
    before = (tmp_path / "j").read_bytes()
    real_write = os.write
    calls = {"n": 0}

    def full_disk(fd: int, data: bytes | memoryview) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            return real_write(fd, bytes(data)[:5])  # a short write...
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # ...then the disk is full

    monkeypatch.setattr(os, "write", full_disk)
    for _ in range(2):
        with pytest.raises(StorageFailed, match="No space left on device"):
            journal.write([encode_event(events.seal("b"))])
        calls["n"] = 0
    assert (tmp_path / "j").read_bytes() == before
    assert capsys.readouterr().err.count("cannot write journal") == 1  # said once
    monkeypatch.setattr(os, "write", real_write)
    journal.write([encode_event(events.seal("c"))])
    assert "being written again" in capsys.readouterr().err
    assert [e.get("job") for e in journal.read()] == [None, "a", "c"]
    journal.close()


def test_the_typed_api_declares_exactly_the_wire_methods() -> None:
    """``BrokerAPI`` and ``METHODS`` are one contract: a method served but not typed
    (or typed but not served) would be a hole in the seam a second broker fills."""
    from fetchq.server.service import BrokerService
    from fetchq.wire.api import METHODS, BrokerAPI

    typed = {name for name in vars(BrokerAPI) if not name.startswith("_")}
    assert typed == set(METHODS)
    housekeeping = {name for name in vars(BrokerService) if not name.startswith("_")}
    assert housekeeping == {"housekeeping", "expire_leases", "compact", "close"}
