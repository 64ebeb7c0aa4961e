"""Workers that die, are told to stop, or hold a URL longer than a lease."""

from __future__ import annotations

import os
import signal
import time

from checker import assert_exactly_once, assert_quiet, check_file
from faultkit import exit_code
from fetchq_procs import poll_until, run, worker_name
from netproxy import NetProxy, holding

from fetchq.errors import ExitCode

LEASE = "2"
GRACE = 10
REPORT_HELD = 5.0
ROBOTS_AFTER = 3.0
"""The robots.txt answer comes while the other job's report is held, however long
(up to ROBOTS_AFTER) the second dispatch takes to start on a busy box."""


def test_worker_killed_mid_batch_loses_nothing(cluster):
    """kill -9 a worker while it holds leases: they expire, run again, one result each."""
    fq = cluster("--lease-timeout", LEASE)
    job = fq.job(2000, slow=0.005)
    out = fq.tmp / "results.jsonl"
    victim, _ = fq.worker("--concurrency", "4")
    survivor, survivor_log = fq.worker("--concurrency", "4")
    fq.wait_workers(victim.pid, survivor.pid)
    output, output_log = fq.output(job, out, "--until-done")
    dispatch, dispatch_log = fq.dispatch(job)
    assert exit_code(dispatch, dispatch_log, 60) == 0, dispatch_log.text

    fq.wait_busy(victim.pid, reported=50)
    fault_at = time.time()
    os.kill(victim.pid, signal.SIGKILL)
    assert victim.wait(10) == -signal.SIGKILL

    assert exit_code(output, output_log, 60) == 0, output_log.text
    survivor.terminate()
    assert exit_code(survivor, survivor_log, 30) == 0, survivor_log.text
    report = check_file(job.urls, out, fault_at=fault_at)
    assert_exactly_once(report)
    # (A survivor starved of CPU for a lease may lapse one before the kill, and the
    # victim may run and report it again: only retries begun after the kill count.)
    retried = [r for r in report.recovered if r["attempt"] >= 2 and r["started"] >= fault_at]
    assert retried, "the killed worker's leases should have expired and run again"
    assert_quiet(fq.client, job.name, job.count, fq.baseline)


def test_worker_sigterm_mid_batch_drains_and_reruns_nothing(cluster, target):
    """SIGTERM: running requests finish and report, prefetched ones go back unused.

    With ``--attempts 1`` and fast URLs there is no legitimate retry, so the
    target must see every URL exactly once and every result has attempt 1.
    Nothing here waits for a lease to expire, so the lease is the default 30 s:
    a worker starved of CPU on a loaded machine for a few seconds must not lose
    a lease and re-run a task legitimately.  The handed-back tasks are checked
    from the server's record as the victim exits, long before any lease could
    lapse."""
    fq = cluster("--lease-timeout", "30")
    job = fq.job(2000, slow=0.005)  # long enough a job to catch the victim mid-batch
    out = fq.tmp / "results.jsonl"
    victim, victim_log = fq.worker("--concurrency", "4", "--grace", str(GRACE))
    survivor, survivor_log = fq.worker("--concurrency", "4")
    fq.wait_workers(victim.pid, survivor.pid)
    output, output_log = fq.output(job, out, "--until-done")
    dispatch, dispatch_log = fq.dispatch(job, "--attempts", "1")
    assert exit_code(dispatch, dispatch_log, 60) == 0, dispatch_log.text

    fq.wait_busy(victim.pid, reported=20)
    victim.send_signal(signal.SIGTERM)
    assert exit_code(victim, victim_log, GRACE) == 0, victim_log.text  # within its grace
    assert "stopped on SIGTERM" in victim_log.text, victim_log.text
    assert fq.worker_seen(victim.pid)["leased"] == 0, "the stopped worker still holds leases"

    assert exit_code(output, output_log, 60) == 0, output_log.text
    survivor.terminate()
    assert exit_code(survivor, survivor_log, 30) == 0, survivor_log.text
    report = check_file(job.urls, out)
    assert_exactly_once(report)
    assert not report.recovered, f"no task should need a retry: {report.recovered[:3]}"
    hits = target.hits()
    again = {path: hits[path] for path in job.paths if hits[path] != 1}
    assert not again, f"URLs not requested exactly once: {list(again.items())[:5]}"
    assert_quiet(fq.client, job.name, job.count, fq.baseline)


def test_slow_url_outlives_its_lease_by_heartbeats(cluster, target):
    """A 5 s URL under a 2 s lease stays with one worker: renewals keep its lease.

    Without renewals the lease lapses at 2 s and at 4 s and the URL is fetched
    three times (the first result still wins).  A renewal comes every 2/3 s, so
    the lease lapses only if the worker is starved of CPU for 1.3 s, which a
    loaded machine can do once; twice within 5 s is not a load this suite
    survives anyway.  So: at most one re-run, each re-run on a lapsed lease
    only (the server's count of lapsed leases bounds the repeated fetches), and
    exactly one result for the slow URL as for every other."""
    fq = cluster("--lease-timeout", LEASE)
    job = fq.job(2000)
    slow = f"{target.url}/slow?s=5&t={job.name}"
    job.urls.append(slow)
    out = fq.tmp / "results.jsonl"
    workers = [fq.worker("--concurrency", "4") for _ in range(2)]
    output, output_log = fq.output(job, out, "--until-done")
    stdin = "\n".join([slow, *job.urls[:-1]]) + "\n"
    dispatched = run(fq.env, "dispatch", "-", "--job", job.name, stdin=stdin, timeout=60)
    assert dispatched.returncode == 0, dispatched.stderr

    assert exit_code(output, output_log, 60) == 0, output_log.text
    for process, log in workers:
        process.terminate()
        assert exit_code(process, log, 30) == 0, log.text
    report = check_file(job.urls, out)
    assert_exactly_once(report)
    result = report.by_url[slow][0]
    assert result["ok"] and result["elapsed"] >= 4.5, result
    hits = target.hits()
    fetched = hits[slow[len(target.url) :]]
    assert fetched <= 2, f"the slow URL was fetched {fetched} times: its lease was not renewed"
    # From the server's own record: a task goes out again only after its lease
    # lapsed, so each fetch beyond a URL's first is matched by a lapsed lease.
    again = fetched - 1 + sum(hits[path] - 1 for path in job.paths)
    lapsed = fq.counts(job)["expired"]
    assert again <= lapsed, (
        f"{again} fetches repeated a URL but only {lapsed} leases lapsed: "
        "a task was handed out again while its lease was live"
    )
    assert_quiet(fq.client, job.name, job.count + 1, fq.baseline)


def test_a_worker_whose_results_are_refused_stops_and_loses_nothing(cluster):
    """The server refuses a worker's results (a proxy spoils the method name of its
    ``complete`` calls, so the real server answers each with an error): the worker
    must not count them as fetched, says why and stops with exit 1, and the tasks
    it held run again on another worker once their leases lapse."""
    fq = cluster("--lease-timeout", LEASE)
    job = fq.job(300)
    out = fq.tmp / "results.jsonl"

    def spoil(frame: bytes) -> bytes:
        return frame.replace(b'"complete"', b'"complote"', 1)

    with NetProxy(fq.server.address, rewrite=spoil) as proxy:
        refused = {**fq.env, "FETCHQ_SERVER": proxy.address}
        victim, victim_log = fq.worker("--concurrency", "4", env=refused)
        fq.wait_workers(victim.pid)
        dispatch, dispatch_log = fq.dispatch(job)
        assert exit_code(dispatch, dispatch_log, 60) == 0, dispatch_log.text
        assert exit_code(victim, victim_log, 30) == ExitCode.FAILURE, victim_log.text
    assert "the server refused" in victim_log.text and "complote" in victim_log.text
    assert "stopped after" not in victim_log.text, victim_log.text
    assert fq.worker_seen(victim.pid)["reported"] == 0

    survivor, survivor_log = fq.worker("--concurrency", "4")
    output, output_log = fq.output(job, out, "--until-done")
    assert exit_code(output, output_log, 60) == 0, output_log.text
    survivor.terminate()
    assert exit_code(survivor, survivor_log, 30) == 0, survivor_log.text
    report = check_file(job.urls, out)
    assert_exactly_once(report)
    assert worker_name(victim.pid) not in {r["worker"] for r in report.all_results}
    assert any(r["attempt"] >= 2 for r in report.all_results), "the refused tasks ran again"
    assert_quiet(fq.client, job.name, job.count, fq.baseline)


def test_a_robots_txt_fetched_as_the_worker_stops_is_still_reported(cluster, target):
    """SIGTERM while a robots.txt fetch runs and a report is on its way (a proxy holds
    each report REPORT_HELD seconds): the robots.txt report, which comes in after the
    reporter's last look, still goes out before the worker exits, rather than its lease
    lapsing and the job's host waiting for it."""
    fq = cluster("--lease-timeout", "30")
    polite, plain = fq.job(1), fq.job(1)

    target.robots_after = ROBOTS_AFTER
    try:
        with NetProxy(fq.server.address, rewrite=holding("complete", REPORT_HELD)) as proxy:
            held = {**fq.env, "FETCHQ_SERVER": proxy.address}
            worker, log = fq.worker("--concurrency", "4", env=held)
            fq.wait_workers(worker.pid)
            obeying = run(fq.env, "dispatch", *polite.urls, "--obey-robots", "-j", polite.name)
            assert obeying.returncode == 0, obeying.stderr
            poll_until(lambda: target.hits()["/robots.txt"] > 0, 30, "the robots.txt fetch")
            fetched = run(fq.env, "dispatch", *plain.urls, "-j", plain.name)
            assert fetched.returncode == 0, fetched.stderr
            poll_until(lambda: target.hits()[plain.paths[0]] == 1, 30, "the other job's fetch")
            worker.send_signal(signal.SIGTERM)  # its result's report is now on its way
            assert exit_code(worker, log, GRACE + REPORT_HELD) == 0, log.text
    finally:
        target.robots_after = 0.0
    assert fq.worker_seen(worker.pid)["leased"] == 0, "the robots.txt fetch was never reported"
    assert fq.counts(plain)["succeeded"] == 1
