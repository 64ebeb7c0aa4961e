"""Dispatching to a job that exists adds tasks at the job's own pace, and says what it did.

A real server, the real dispatcher: pace options that differ from the job's are
refused in one line that names the ``fetchq job set`` that changes them, nothing of
the refused dispatch is queued, and a job that was done is reopened with a line
saying so.
"""

from __future__ import annotations

import json
from typing import Any

from brokerkit import crash
from fetchq_procs import jsonl, run
from test_cli import assert_clean_error
from worker_scenarios import closed_port

from fetchq.errors import ExitCode
from fetchq.server.broker import Broker
from fetchq.server.journal import Journal


def job_view(env: dict[str, str], job: str) -> dict[str, Any]:
    status = run(env, "status", "--json")
    assert status.returncode == 0, status.stderr
    view: dict[str, Any] = json.loads(status.stdout)["jobs"][job]
    return view


def job_row(env: dict[str, str], job: str) -> str:
    listed = run(env, "job", "list")
    assert listed.returncode == 0, listed.stderr
    (row,) = [line for line in listed.stdout.splitlines() if line.split()[0] == job]
    return row


def test_an_existing_job_keeps_its_pace_and_a_dispatch_asking_another_is_refused(
    server, env
) -> None:
    nowhere = f"http://127.0.0.1:{closed_port()}/"  # no worker: every task stays queued
    urls = [f"{nowhere}?i={i}" for i in range(3)]
    first = run(env, "dispatch", *urls, "--rate", "100/s", "-j", "paced")
    assert first.returncode == 0, first.stderr
    assert "dispatched 3 tasks as job paced" in first.stderr

    slower = run(env, "dispatch", f"{nowhere}?more", "--rate", "0.001", "-j", "paced")
    assert_clean_error(
        slower,
        ExitCode.FAILURE,
        "job paced has rate 100.0/s, and this dispatch asks for rate 0.001/s",
        "to change it, run fetchq job set paced --rate 0.001",
    )
    assert len(slower.stderr.splitlines()) == 1 and slower.stdout == "", slower.stderr
    view = job_view(env, "paced")
    assert (view["submitted"], view["policy"]["rate"]) == (3, 100.0), "nothing changed"

    for asked in (["--rate", "6000/m"], []):  # the job's own rate, or none: tasks are added
        added = run(env, "dispatch", f"{nowhere}?same", *asked, "-j", "paced")
        assert added.returncode == 0, added.stderr
        assert "dispatched 1 task as job paced" in added.stderr
        assert "reopen" not in added.stderr
    view = job_view(env, "paced")
    assert (view["submitted"], view["policy"]["rate"]) == (5, 100.0)

    capped = run(env, "dispatch", f"{nowhere}?cap", "--per-host", "2", "-j", "paced")
    assert_clean_error(
        capped,
        ExitCode.FAILURE,
        "job paced has no per-host cap, and this dispatch asks for a per-host cap of 2",
        "fetchq job set paced --per-host 2",
    )
    polite = run(env, "dispatch", f"{nowhere}?robots", "--obey-robots", "-j", "paced")
    assert_clean_error(
        polite,
        ExitCode.FAILURE,
        "job paced does not obey robots.txt, and this dispatch asks it to",
        "dispatch to a new job name",
    )
    assert job_view(env, "paced")["submitted"] == 5

    changed = run(env, "job", "set", "paced", "--rate", "0.001")  # as the refusal said
    assert changed.returncode == 0, changed.stderr
    assert "rate 0.001/s" in changed.stdout, changed.stdout
    assert job_view(env, "paced")["policy"]["rate"] == 0.001
    assert " 0.001/s " in job_row(env, "paced")


def test_dispatching_to_a_done_job_reopens_it_and_says_so(server, env, target) -> None:
    first = run(env, "dispatch", f"{target.url}/?done=1", f"{target.url}/?done=2", "-j", "again")
    assert first.returncode == 0, first.stderr
    assert run(env, "worker", "--burst").returncode == 0
    output = run(env, "output", "-j", "again", "--until-done", "--format", "jsonl")
    assert len(jsonl(output.stdout)) == 2
    assert job_row(env, "again").split()[1] == "done"

    more = run(env, "dispatch", f"{target.url}/?done=3", "-j", "again")
    assert more.returncode == 0, more.stderr
    assert more.stdout == "again\n"
    assert "job again was done: these tasks reopen it" in more.stderr, more.stderr
    assert "dispatched 1 task as job again" in more.stderr
    view = job_view(env, "again")
    assert (view["state"], view["submitted"], view["done"]) == ("sealed", 3, False)
    assert run(env, "worker", "--burst").returncode == 0
    output = run(env, "output", "-j", "again", "--until-done", "--format", "jsonl")
    assert [r["url"] for r in jsonl(output.stdout)] == [f"{target.url}/?done=3"]


def test_a_batch_that_reopened_its_job_says_so_again_after_a_restart(tmp_path, clock) -> None:
    """The reply to a batch sent again (its first reply lost) is the first reply, across
    a crash of the server too: the journal keeps that the batch reopened its job."""
    path = tmp_path / "fetchq.journal"
    broker = Broker(clock=clock, journal=Journal(path))
    broker.seal("empty")  # sealed with nothing to wait for: done
    assert broker.job("empty")["done"] is True
    batch = {"job": "empty", "urls": ["http://127.0.0.1/x"], "batch_id": "run:1"}
    first = broker.submit(batch)
    assert first["reopened"] is True
    assert "reopened" not in broker.submit({**batch, "batch_id": "run:2"}), "open: nothing to say"
    crash(broker)
    restarted = Broker(clock=clock, journal=Journal(path))
    assert restarted.submit(batch) == {**first, "duplicate": True}
    restarted.close()
