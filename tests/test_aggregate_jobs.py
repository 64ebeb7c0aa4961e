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
    start_workers,
    stop_all,
    worker_name,
)
from test_cli import assert_clean_error
from worker_scenarios import CLOCK_SLACK, assert_rate_held

from fetchq.errors import ExitCode
from fetchq.messages import plural
from fetchq.wire.aggregates import AGGREGATE, decode_aggregate

KILLED, STOPPED = "/slow?s=0.004&kill=", "/slow?s=0.002&stop="
PACED, UNEQUAL, HALTED = "/paced-agg?i=", "/slow?s=0.2&unequal=", "/paced-halt?i="
LISTED = "/listed?n="
"""The paths of tests' requests: the target is shared by the session's tests."""


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
        ((*template, "--host-delay", "1"), "--aggregate does not go with --host-delay yet"),
        ((*template, "--per-host", "2"), "--aggregate does not go with --per-host yet"),
        ((*template, "--obey-robots"), "--aggregate does not go with --obey-robots yet"),
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


def paced_job(env: dict[str, str], path: str, rate: int, seconds: int, span: int, job: str) -> Any:
    """Dispatch a paced aggregate job, collect it, and return its records and summary."""
    output = start_output(env, "--job", job, "--until-done", "--format", "jsonl", "--summary")
    try:
        dispatched = run(
            env, "dispatch", "--template", f"{env['TARGET']}{path}{{i}}", "--rate", f"{rate}/s",
            "--duration", f"{seconds}s", "--aggregate", "--span", str(span), "-j", job,
        )  # fmt: skip
        assert dispatched.returncode == 0, dispatched.stderr
        stdout, stderr = output.communicate(timeout=120)
    finally:
        stop_all([output])
    assert output.returncode == 0, stderr
    return jsonl(stdout), stderr


def assert_paced_spans(
    records: list[dict[str, Any]], target: Any, path: str, rate: int, count: int
) -> None:
    """A paced aggregate job's ``count`` requests at the target: every one, none before
    its slot of the one schedule, and the rate within 1%."""
    assert sum(record["requests"] for record in records) == count
    arrived = sorted(seen.arrived for seen in target.requests() if path in seen.path)
    assert len(arrived) == count
    first = min(record["summary"]["schedule"]["first_due"] for record in records)
    slots = [first + k / rate for k in range(count)]
    early = [k for k, at in enumerate(arrived) if at < slots[k] - CLOCK_SLACK]
    assert not early, f"{len(early)} requests came before their slot, the first {early[0]}th"
    assert_rate_held(arrived, slots)


def test_a_paced_aggregate_job_holds_its_rate_and_starts_nothing_early(server, env, target):
    """200/s for 12 s in spans of 100: ten spans side by side at 20/s each, on two
    workers.  At the target: every request, none before its slot of the one schedule,
    and the rate within 1%; the summary measures from the schedule."""
    rate, seconds = 200, 12
    workers = start_workers(env, ("--concurrency", "8"), ("--concurrency", "8"))
    try:
        records, summary = paced_job(
            {**env, "TARGET": target.url}, PACED, rate, seconds, 100, "paced"
        )
    finally:
        stop_all(workers)
    count = rate * seconds
    assert_paced_spans(records, target, PACED, rate, count)
    assert f"Requests:     {count}" in summary
    assert f"; {count} of {count} results had a schedule)" in summary
    assert "Late starts: " in summary


def most_at_once(records: list[dict[str, Any]]) -> int:
    """The most of these spans whose schedules overlapped at any moment."""
    edges = sorted(
        (record["summary"]["schedule"][end], step)
        for record in records
        for end, step in (("first_due", 1), ("last_due", -1))
    )
    held, most = 0, 0
    for _, step in edges:
        held += step
        most = max(most, held)
    return most


def test_an_unequal_fleet_shares_a_paced_aggregate_job_by_what_each_can_do(server, env, target):
    """40/s of 0.2 s requests in spans of 10: twenty spans side by side at 2/s, each
    keeping 0.4 threads busy.  A worker of 2 threads fills at most 3/4 of them: three
    spans at a time.  One of 16 threads takes the rest."""
    small, big = start_workers(env, ("--concurrency", "2"), ("--concurrency", "16"))
    try:
        records, summary = paced_job({**env, "TARGET": target.url}, UNEQUAL, 40, 10, 10, "unequal")
    finally:
        stop_all([small, big])
    assert sum(record["requests"] for record in records) == 400
    by_worker = {
        name: [r for r in records if r["worker"] == name] for name in {r["worker"] for r in records}
    }
    assert set(by_worker) == {worker_name(small.pid), worker_name(big.pid)}
    assert most_at_once(by_worker[worker_name(small.pid)]) <= 3
    assert most_at_once(by_worker[worker_name(big.pid)]) >= 10
    assert "Requests:     400" in summary


def test_a_worker_stopped_in_paced_spans_leaves_them_to_lapse_and_they_run_again(
    server, env, target
):
    """A paced span cannot finish on schedule in the grace period: a worker asked to
    stop gives up the spans it began, which lapse, run again and count once, said as
    leased again.  Three spans side by side, 20/s together for 6 s."""
    count, span = 120, 40
    stopped, stopped_said = start_worker(env, "--concurrency", "4")
    client = connect_broker(env["FETCHQ_SERVER"], env["FETCHQ_AUTHKEY"])
    output = start_output(env, "--job", "halt", "--until-done", "--format", "jsonl", "--summary")
    survivor = None
    try:
        dispatched = run(
            env, "dispatch", "--template", f"{target.url}{HALTED}{{i}}", "--rate", "20/s",
            "--count", str(count), "--aggregate", "--span", str(span), "-j", "halt",
        )  # fmt: skip
        assert dispatched.returncode == 0, dispatched.stderr
        poll_until(lambda: client.call("job", "halt")["leased"] == count, 30, "all spans leased")
        poll_until(lambda: requested(target, HALTED) >= 10, 30, "all three spans begun")
        stopped.send_signal(signal.SIGTERM)
        assert stopped.wait(timeout=30) == 0, stopped_said.text()
        stopped_said.wait_for(f"worker {worker_name(stopped.pid)}: stopped on SIGTERM")
        survivor, _ = start_worker(env, "--concurrency", "4")
        stdout, stderr = output.communicate(timeout=120)
        assert output.returncode == 0, stderr
    finally:
        client.close()
        stop_all([output, stopped, *([survivor] if survivor else [])])
    records = jsonl(stdout)
    assert sum(record["requests"] for record in records) == count
    assert {record["attempt"] for record in records} == {2}
    assert f"Requests:     {count}" in stderr
    assert f"Leased again: 3 spans ({count} requests)" in stderr


def test_an_aggregate_job_of_a_files_urls_runs_them_in_spans(server, env, target, tmp_path):
    """230 URLs of a file, and a line that is no URL: spans of 50 of the good ones (the
    last of 30), each URL requested once, the bad line skipped as for any job."""
    lines = [f"{target.url}{LISTED}{n}" for n in range(230)]
    lines.insert(57, "ftp://127.0.0.1/no")
    listed = tmp_path / "urls.txt"
    listed.write_text("\n".join(lines) + "\n")
    worker, _ = start_worker(env, "--concurrency", "8")
    try:
        dispatched = run(
            env, "dispatch", "--file", str(listed), "--aggregate", "--span", "50", "-j", "listed"
        )
        output = run(
            env, "output", "--job", "listed", "--until-done", "--format", "jsonl", "--summary"
        )
    finally:
        stop_all([worker])
    assert dispatched.returncode == ExitCode.SKIPPED_INPUT, dispatched.stderr
    assert f"skipped {listed}:58: unsupported scheme 'ftp'" in dispatched.stderr
    assert "dispatched 230 requests in 5 spans" in dispatched.stderr
    assert output.returncode == 0, output.stderr
    records = jsonl(output.stdout)
    assert sorted((r["first"], r["requests"]) for r in records) == [
        (0, 50), (50, 50), (100, 50), (150, 50), (200, 30)
    ]  # fmt: skip
    hits = {path: n for path, n in target.hits().items() if path.startswith(LISTED)}
    assert hits == {f"{LISTED}{n}": 1 for n in range(230)}
    assert "Requests:     230" in output.stderr


def test_an_aggregate_job_sends_its_method_headers_and_body_with_every_request(server, env, target):
    """A load test of a write path: each of a span's requests is sent as the job asks."""
    dispatched = run(
        env,
        *("dispatch", "-j", "agg-patch", "--aggregate", "--span", "100", "--method", "PATCH"),
        *("-H", "X-Load: 1", "--body", "hello", "--template", f"{target.url}/agg-patch?i={{i}}"),
        *("--count", "300"),
    )
    assert dispatched.returncode == 0, dispatched.stderr
    worker = run(env, "worker", "--burst", "--concurrency", "4")
    assert worker.returncode == 0, worker.stderr
    output = run(env, "output", "-j", "agg-patch", "--until-done", "--format", "jsonl")
    assert sum(record["requests"] for record in jsonl(output.stdout)) == 300
    seen = target.requests("/agg-patch?")
    assert len(seen) == 300
    assert {(s.method, s.body, dict(s.headers)["X-Load"]) for s in seen} == {
        ("PATCH", b"hello", "1")
    }
