"""A worker cut off from the server for longer than its lease, then healed."""

from __future__ import annotations

import signal
import time

from checker import assert_exactly_once, assert_quiet, check_file, wait_for_job
from faultkit import exit_code
from fetchq_procs import worker_name
from netproxy import NetProxy

LEASE = "4"
"""Seconds: B, never cut, renews every third of it, so only a starvation of more than
2.7 s would lapse one of its own leases and rerun a task outside the fault."""


def test_worker_cut_off_longer_than_its_lease(cluster, target):
    """Worker A talks to the server through a proxy, worker B directly.  Cut A
    while it holds leases and keep it cut until B has finished the job,
    including A's expired tasks; then heal.  A reconnects by itself, its late
    results are dropped, and it works normally again."""
    fq = cluster("--lease-timeout", LEASE)
    job = fq.job(2000, slow=0.003)
    out = fq.tmp / "results.jsonl"
    with NetProxy(fq.server.address) as proxy:
        cut_env = dict(fq.env, FETCHQ_SERVER=proxy.address)
        a, a_log = fq.worker("--concurrency", "4", "--call-timeout", "3", env=cut_env)
        b, b_log = fq.worker("--concurrency", "4")
        fq.wait_workers(a.pid, b.pid)
        output, output_log = fq.output(job, out, "--until-done")
        dispatch, dispatch_log = fq.dispatch(job)
        assert exit_code(dispatch, dispatch_log, 60) == 0, dispatch_log.text

        fq.wait_busy(a.pid, reported=50)
        proxy.cut()
        cut_at = time.time()
        # A's leases run out (nothing it sends gets through, renewals included)
        # and B runs its tasks again; the job finishes while A is still cut.
        wait_for_job(fq.client, job.name)
        assert exit_code(output, output_log, 60) == 0, output_log.text
        a_log.wait_for(r"waiting for server at 127\.0\.0\.1:\d+", 15)
        assert a.poll() is None, a_log.text
        reported_by_a = fq.worker_seen(a.pid)["reported"]
        b.send_signal(signal.SIGTERM)
        assert exit_code(b, b_log, 30) == 0, b_log.text

        # Heal: A comes back.  Only A is left, so a second job proves it
        # leases, fetches and reports again; its reporter sends results in
        # order, so A's late batch from the cut reached the server first.
        assert time.time() - cut_at > float(LEASE), "the cut should outlast the lease"
        proxy.heal()
        second = fq.job(200)
        second_out = fq.tmp / "second.jsonl"
        dispatch2, dispatch2_log = fq.dispatch(second)
        assert exit_code(dispatch2, dispatch2_log, 60) == 0, dispatch2_log.text
        output2, output2_log = fq.output(second, second_out, "--until-done")
        assert exit_code(output2, output2_log, 60) == 0, output2_log.text
        a.send_signal(signal.SIGTERM)
        assert exit_code(a, a_log, 30) == 0, a_log.text
        a_after = fq.worker_seen(a.pid)["reported"]
        assert proxy.accepted > 1, "A should have reconnected through the proxy"

    report = check_file(job.urls, out, fault_at=cut_at)
    assert_exactly_once(report)
    assert a_after == reported_by_a + second.count, (
        f"A's late results were counted: {reported_by_a} before the heal, "
        f"{a_after} after doing all {second.count} tasks of the second job"
    )
    hits = target.hits()
    twice = [url for url, path in zip(job.urls, job.paths, strict=True) if hits[path] > 1]
    assert twice, "A's tasks should have been fetched by A during the cut and by B again"
    rerun = [report.by_url[url][0] for url in twice]
    assert all(r["attempt"] >= 2 for r in rerun), (
        f"a task fetched twice kept A's late attempt: {[r for r in rerun if r['attempt'] < 2]}"
    )
    a_name = worker_name(a.pid)
    late = [r for r in report.all_results if r["worker"] == a_name and r["started"] >= cut_at]
    assert not late, f"results A fetched during the cut were kept: {late[:3]}"
    assert_exactly_once(check_file(second.urls, second_out))
    assert_quiet(fq.client, job.name, job.count, fq.baseline)
    assert_quiet(fq.client, second.name, second.count, fq.baseline)
