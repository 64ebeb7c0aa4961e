"""The journal's disk fills up mid-job, then has room again; then the server is killed.

The "full disk" is a real file size limit on the server process
(RLIMIT_FSIZE, set from outside with prlimit once the server has started):
past it every write to the journal fails with EFBIG, as a full disk fails
with ENOSPC.  Calls that need the journal must fail unchanged and be retried
by their clients; once the limit is lifted the server carries on by itself.
A kill -9 and a restart from the journal then show that every task the
dispatcher was told was accepted really was on disk.
"""

from __future__ import annotations

import resource

from checker import assert_exactly_once, assert_quiet, check_file, wait_for_job
from faultkit import exit_code
from fetchq_procs import poll_until

LEASE = "3"
JOURNAL_FAILING = r"server: cannot write journal .*File too large"
CLIENT_WAITING = r"waiting for server at .*cannot write its journal"


def limit_file_size(pid: int, size: int | None) -> None:
    """The soft limit only (None: no limit), so that it can be lifted again."""
    _, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (hard if size is None else size, hard))


def test_a_full_disk_loses_nothing(cluster, tmp_path):
    journal = tmp_path / "journal.jsonl"
    fq = cluster("--lease-timeout", LEASE, "--journal", str(journal))
    job = fq.job(2000, slow=0.002)
    out = fq.tmp / "results.jsonl"
    worker, worker_log = fq.worker("--concurrency", "4")
    fq.wait_workers(worker.pid)
    output, output_log = fq.output(job, out, "--until-done")
    server_pid = fq.server.process.pid
    # Room for a few batches of 100 URLs and their results, then the "disk" is full.
    limit_file_size(server_pid, journal.stat().st_size + 30_000)

    dispatch, dispatch_log = fq.dispatch(job, "--batch-size", "100")
    fq.server.log.wait_for(JOURNAL_FAILING, 30)
    dispatch_log.wait_for(CLIENT_WAITING, 30)
    worker_log.wait_for(CLIENT_WAITING, 30)
    assert fq.server.log.text.count("cannot write journal") == 1, "said once, not per call"
    stuck = fq.counts(job)
    assert 0 < stuck["submitted"] < job.count, stuck
    assert journal.read_bytes().endswith(b"\n"), "a failed write left a torn line behind"

    limit_file_size(server_pid, None)
    fq.server.log.wait_for(r"journal .* is being written again", 30)
    assert exit_code(dispatch, dispatch_log, 60) == 0, dispatch_log.text
    assert fq.counts(job)["submitted"] == job.count

    # Every acknowledged task is on disk: kill -9 mid-job and restart from the journal.
    poll_until(lambda: fq.counts(job)["succeeded"] >= 500, 60, "the job to be running")
    fq.server.kill()
    fq.restart_server()
    assert fq.counts(job)["submitted"] == job.count, "acknowledged tasks were lost"
    wait_for_job(fq.client, job.name)
    assert exit_code(output, output_log, 60) == 0, output_log.text
    worker.terminate()
    assert exit_code(worker, worker_log, 30) == 0, worker_log.text

    assert_exactly_once(check_file(job.urls, out))
    assert_quiet(fq.client, job.name, job.count, fq.baseline)
