"""Steering a running job: pause, resume, set and cancel, with a journaled server
killed (kill -9) and restarted in between.  Every change holds across the restart,
and output --until-done still ends with exactly one result per task."""

from __future__ import annotations

import json

from checker import assert_exactly_once, check_file, wait_for_job
from faultkit import exit_code
from fetchq_procs import poll_until, run

from fetchq.errors import ExitCode

LEASE = "3"


def job_view(fq, name: str) -> dict:
    listed = run(fq.env, "job", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    return json.loads(listed.stdout)[name]


def steer(fq, *args: str) -> str:
    result = run(fq.env, "job", *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def arrivals(fq, job) -> int:
    return sum(count for path, count in fq.target.hits().items() if f"/{job.name}?" in path)


def test_pause_resume_set_and_cancel_survive_restarts(cluster, tmp_path):
    journal = tmp_path / "journal.jsonl"
    fq = cluster("--lease-timeout", LEASE, "--journal", str(journal))
    job = fq.job(2000)
    out = fq.tmp / "results.jsonl"
    worker, worker_log = fq.worker("--concurrency", "4")
    fq.wait_workers(worker.pid)
    output, output_log = fq.output(job, out, "--until-done")
    dispatch, dispatch_log = fq.dispatch(job, "--rate", "40")
    assert exit_code(dispatch, dispatch_log, 60) == 0, dispatch_log.text
    poll_until(lambda: fq.counts(job)["succeeded"] >= 40, 30, "the job to be running")

    # Pause: what was handed out finishes (at most a second ahead), then nothing.
    assert "paused" in steer(fq, "pause", job.name)
    poll_until(lambda: fq.counts(job)["leased"] == 0, 10, "handed-out tasks to finish")
    for _ in range(2):  # the second restart reads the journal the first one compacted
        fq.server.kill()
        fq.restart_server()
    paused = job_view(fq, job.name)
    assert paused["state"] == "paused" and paused["pace"]["target"] == 40
    still = arrivals(fq, job)
    fq.wait_workers(worker.pid)  # the new server has heard the worker ask for work
    assert fq.client.call("lease", "probe-worker", 10, 1.0) == []  # a paused job hands out none
    assert arrivals(fq, job) == still

    # Resume and speed up, then restart again: the new rate holds.
    steer(fq, "resume", job.name)
    poll_until(lambda: arrivals(fq, job) >= still + 40, 30, "the job to run again")
    assert "rate 80.0/s" in steer(fq, "set", job.name, "--rate", "80/s")
    for _ in range(2):
        fq.server.kill()
        fq.restart_server()
    resumed = job_view(fq, job.name)
    assert resumed["state"] == "sealed" and resumed["pace"]["target"] == 80

    # Cancel: what is queued ends as cancelled results; nothing new is accepted.
    fq.wait_workers(worker.pid)  # back from its reconnect backoff after two restarts
    poll_until(lambda: arrivals(fq, job) >= still + 200, 30, "the job to run on")
    steer(fq, "cancel", job.name)
    refused = run(fq.env, "dispatch", f"{fq.target.url}/x", "-j", job.name)
    assert refused.returncode == ExitCode.FAILURE and "cancelled" in refused.stderr
    wait_for_job(fq.client, job.name)
    assert exit_code(output, output_log, 60) == 0, output_log.text
    worker.terminate()
    assert exit_code(worker, worker_log, 30) == 0, worker_log.text

    report = check_file(job.urls, out)
    assert_exactly_once(report, allow_failed=True)
    results = [json.loads(line) for line in out.read_text().splitlines()]
    cancelled = [r for r in results if (r["error"] or {}).get("type") == "cancelled"]
    fetched = [r for r in results if r["ok"]]
    assert cancelled and fetched and len(cancelled) + len(fetched) == job.count
    hits = fq.target.hits()
    base = len(fq.target.url)
    assert not any(hits[r["url"][base:]] for r in cancelled), "a cancelled task was requested"
    assert job_view(fq, job.name)["state"] == "done"
