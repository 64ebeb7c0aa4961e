"""Aggregate jobs end to end: spans leased by real workers, one record per span, and a
summary whose counts are what the target received."""

from __future__ import annotations

import json
import os
import signal
from typing import Any

from fetchq_procs import (
    connect_broker,
    jsonl,
    poll_until,
    run,
    start_output,
    start_worker,
    stop_all,
    worker_name,
)
from test_cli import assert_clean_error

from fetchq.errors import ExitCode
from fetchq.messages import plural
from fetchq.wire.aggregates import AGGREGATE, decode_aggregate

KILLED, STOPPED = "/slow?s=0.004&kill=", "/slow?s=0.002&stop="
"""The paths of two tests' requests: the target is shared by the session's tests."""


def requested(target: Any, prefix: str) -> int:
    """Requests the target received whose path starts with ``prefix``."""
    return sum(n for path, n in target.hits().items() if path.startswith(prefix))


def dispatch_spans(env: dict[str, str], template: str, count: int, span: int, job: str) -> Any:
    """``fetchq dispatch --aggregate``, which must succeed."""
    dispatched = run(
        env, "dispatch", "--template", template, "--count", str(count),
        "--aggregate", "--span", str(span), "-j", job,
    )  # fmt: skip
    assert dispatched.returncode == 0, dispatched.stderr
    return dispatched


def test_an_aggregate_job_counts_exactly_what_the_target_received(server, env, target):
    count, span = 5_000, 700
    workers = [start_worker(env, "--concurrency", "8") for _ in range(2)]
    output = start_output(env, "--job", "agg", "--until-done", "--format", "jsonl", "--summary")
    try:
        dispatched = dispatch_spans(env, f"{target.url}/agg?i={{i}}", count, span, "agg")
        assert "dispatched 5000 requests in 8 spans" in dispatched.stderr
        stdout, stderr = output.communicate(timeout=120)
        assert output.returncode == 0, stderr
        listed = run(env, "job", "list", "--json")
    finally:
        stop_all([output, *(process for process, _ in workers)])
    records = jsonl(stdout)
    assert {record["kind"] for record in records} == {AGGREGATE}
    assert sorted(record["first"] for record in records) == list(range(0, count, span))
    for record in records:  # each line is a record the server and fetchq report read
        decode_aggregate(json.dumps(record))
    assert sum(record["requests"] for record in records) == count
    assert requested(target, "/agg?") == count
    assert target.hits()[f"/agg?i={count - 1}"] == 1
    assert f"Requests:     {count}" in stderr
    assert f"[200]  {count}" in stderr
    job = json.loads(listed.stdout)["agg"]
    assert (job["submitted"], job["succeeded"], job["failed"]) == (count, count, 0)
    assert job["policy"]["aggregate"] is True


def test_a_worker_killed_in_a_span_loses_nothing_and_counts_nothing_twice(server, env, target):
    """SIGKILL a worker mid-span: the span lapses, runs again elsewhere, counts once."""
    count, span = 3_000, 500
    victim, _ = start_worker(env, "--concurrency", "2")
    output = start_output(env, "--job", "kill", "--until-done", "--format", "jsonl", "--summary")
    survivor = None
    try:
        dispatch_spans(env, f"{target.url}/slow?s=0.004&kill={{i}}", count, span, "kill")
        client = connect_broker(env["FETCHQ_SERVER"], env["FETCHQ_AUTHKEY"])
        victim_name = worker_name(victim.pid)

        def victim_in_a_span() -> bool:
            workers = {w["worker"]: w for w in client.call("status")["workers"]}
            seen = workers.get(victim_name)
            return bool(seen and seen["leased"] > 0) and requested(target, KILLED) > 100

        poll_until(victim_in_a_span, 60, "the victim worker to be inside a span")
        os.kill(victim.pid, signal.SIGKILL)
        survivor, _ = start_worker(env, "--concurrency", "4")
        stdout, stderr = output.communicate(timeout=120)
        assert output.returncode == 0, stderr
    finally:
        stop_all([output, victim, *([survivor] if survivor else [])])
    records = jsonl(stdout)
    assert sorted(record["first"] for record in records) == list(range(0, count, span))
    assert sum(record["requests"] for record in records) == count
    again = [record for record in records if record["attempt"] > 1]
    assert again, "the victim's span ran again"
    assert requested(target, KILLED) > count, "the lapsed span's requests went out twice"
    assert f"Requests:     {count}" in stderr
    spans_again = plural(len(again), "span")
    assert f"Leased again: {spans_again} ({len(again) * span} requests)" in stderr


def dispatch_refused(env: dict[str, str], *args: str) -> Any:
    return run(env, "dispatch", "--aggregate", *args, "-j", "refused")


def test_what_an_aggregate_job_does_not_take_is_refused_before_connecting(env, target):
    env["FETCHQ_SERVER"] = "127.0.0.1:9"  # nothing listens: refusals come first
    template = ("--template", f"{target.url}/?i={{i}}", "--count", "10")
    for args, why in [
        ((*template, "--rate", "100"), "--aggregate does not go with --rate yet"),
        ((*template, "--per-host", "2"), "--aggregate does not go with --per-host yet"),
        ((*template, "--obey-robots"), "--aggregate does not go with --obey-robots yet"),
        ((f"{target.url}/one",), "--aggregate takes --template"),
    ]:
        assert_clean_error(dispatch_refused(env, *args), ExitCode.USAGE, why)
    alone = run(env, "dispatch", *template, "--span", "10")
    assert_clean_error(alone, ExitCode.USAGE, "--span goes with --aggregate")


def test_csv_of_an_aggregate_job_is_refused_in_one_line(server, env, target):
    dispatched = run(
        env, "dispatch", "--template", f"{target.url}/?i={{i}}", "--count", "20", "--aggregate"
    )
    assert dispatched.returncode == 0, dispatched.stderr
    job = dispatched.stdout.strip()
    worked = run(env, "worker", "--burst", "--concurrency", "2")
    assert worked.returncode == 0, worked.stderr
    refused = run(env, "output", "--job", job, "--until-done", "--format", "csv")
    assert_clean_error(refused, ExitCode.USAGE, f"job {job} is an aggregate job")
    kept = run(env, "output", "--job", job, "--until-done", "--format", "jsonl", timeout=60)
    assert kept.returncode == 0, kept.stderr
    assert [record["requests"] for record in jsonl(kept.stdout)] == [20]


def test_sigterm_finishes_the_span_begun_and_hands_back_the_rest(server, env, target):
    """A stopping worker finishes the span it began (nothing is fetched twice) and hands
    back the spans it had not begun, without using an attempt."""
    count, span = 1_500, 300
    stopping, log = start_worker(env, "--concurrency", "2", "--prefetch", "1000")
    output = start_output(env, "--job", "stop", "--until-done", "--format", "jsonl")
    survivor = None
    try:
        dispatch_spans(env, f"{target.url}/slow?s=0.002&stop={{i}}", count, span, "stop")
        poll_until(lambda: requested(target, STOPPED) > 50, 60, "the worker to begin a span")
        stopping.send_signal(signal.SIGTERM)
        assert stopping.wait(60) == 0, log.text()
        survivor, _ = start_worker(env, "--concurrency", "4")
        stdout, stderr = output.communicate(timeout=120)
        assert output.returncode == 0, stderr
    finally:
        stop_all([output, stopping, *([survivor] if survivor else [])])
    records = jsonl(stdout)
    assert sum(record["requests"] for record in records) == count
    assert all(record["attempt"] == 1 for record in records)
    assert requested(target, STOPPED) == count, "each request went out once"
    ran = {record["first"]: record["worker"] for record in records}
    assert ran[0] == worker_name(stopping.pid), "it finished the span it began"
    assert ran[span] == worker_name(survivor.pid), "it handed back the span it had not begun"
