"""The server: killed and restarted from its journal, flooded with clients, full."""

from __future__ import annotations

import signal
import threading
import time

import pytest
from checker import (
    QUIET_SLACK,
    assert_exactly_once,
    assert_quiet,
    check_file,
    wait_for_baseline,
    wait_for_job,
)
from faultkit import exit_code
from fetchq_procs import connect_broker, poll_until, worker_name
from flood import Flood
from worker_scenarios import prefetched

LEASE = "3"
HANG = 60.0
"""Seconds after which a client that has not connected counts as hung."""
WAITING = r"waiting for server at "


class ServerRestart:
    """kill -9 the server (with ``--journal``) while two workers, a dispatcher and
    an output run, then restart it on the same port with the same journal and
    key.  ``mid_dispatch``: a small ``--max-pending`` keeps the dispatcher
    waiting on the workers, so it is certainly still submitting when the server
    dies and goes on submitting to the new one.  Otherwise dispatch has
    finished and the kill lands mid-job."""

    def __init__(self, cluster, tmp_path, mid_dispatch: bool) -> None:
        journal = str(tmp_path / "journal.jsonl")
        if mid_dispatch:
            fq = cluster("--lease-timeout", LEASE, "--journal", journal, "--max-pending", "300")
            job, batch = fq.job(3000, slow=0.002), "50"
        else:
            fq = cluster("--lease-timeout", LEASE, "--journal", journal)
            job, batch = fq.job(2000, slow=0.01), "500"
        self.fq, self.job, self.out = fq, job, fq.tmp / "results.jsonl"
        self.workers = [fq.worker("--concurrency", "4") for _ in range(2)]
        self.output, self.output_log = fq.output(job, self.out, "--until-done")
        self.dispatch, self.dispatch_log = fq.dispatch(job, "--batch-size", batch)
        watching = [log for _, log in self.workers] + [self.output_log]
        if mid_dispatch:

            def half_way() -> bool:
                counts = fq.counts_once_dispatched(job)
                return (
                    counts is not None
                    and counts["submitted"] >= 1000
                    and counts["succeeded"] >= 300
                    and not counts["sealed"]
                )

            poll_until(half_way, 30, "dispatch to be half-way, with results coming")
            watching.append(self.dispatch_log)
        else:
            assert exit_code(self.dispatch, self.dispatch_log, 60) == 0, self.dispatch_log.text
            poll_until(
                lambda: 300 <= fq.counts(job)["succeeded"] <= job.count - 500,
                30,
                "the job to be running",
            )
        self.fault_at = time.time()
        fq.server.kill()
        if mid_dispatch:
            assert self.dispatch.poll() is None, "dispatch should still have been running"
        for log in watching:
            log.wait_for(WAITING, 20)  # every client noticed, and says what it waits for
        fq.restart_server()

    def dispatched(self) -> dict:
        """The dispatcher finished on the new server, every batch queued exactly once."""
        assert exit_code(self.dispatch, self.dispatch_log, 60) == 0, self.dispatch_log.text
        assert f"dispatched {self.job.count} tasks" in self.dispatch_log.text
        counts = self.fq.counts(self.job)
        assert counts["submitted"] == self.job.count, f"batches re-sent were queued twice: {counts}"
        return counts

    def finish(self) -> None:
        """Everything completes exactly once and the server is left as it started."""
        wait_for_job(self.fq.client, self.job.name)
        assert exit_code(self.output, self.output_log, 60) == 0, self.output_log.text
        for process, log in self.workers:
            process.terminate()
            assert exit_code(process, log, 30) == 0, log.text
        report = check_file(self.job.urls, self.out, fault_at=self.fault_at)
        assert_exactly_once(report)
        assert report.recovered, "results should have come after the restart too"
        # The restarted server runs the same code with the same options and
        # journal, so the first server's baseline applies to it.
        assert_quiet(self.fq.client, self.job.name, self.job.count, self.fq.baseline)


@pytest.mark.parametrize("mid_dispatch", [True, False], ids=["mid_dispatch", "after_dispatch"])
def test_server_killed_and_restarted_from_its_journal(cluster, tmp_path, mid_dispatch):
    """Every client reconnects by itself; no batch is queued twice, no acknowledged
    task is lost, and every task ends as exactly one result."""
    restart = ServerRestart(cluster, tmp_path, mid_dispatch=mid_dispatch)
    restart.dispatched()
    restart.finish()


def test_five_hundred_clients_connecting_at_once(cluster):
    """500 clients connect and call at the same moment while a job of 2,000 tasks
    runs: every one is served and holds its connection at the same time as all
    the others, none hangs, the job completes exactly once, and once they have
    closed the server's threads and fds are back to the baseline.  How fast
    they connect depends on the machine's load: only a hang fails (the
    barriers' deadline), never a slow start."""
    fq = cluster("--lease-timeout", LEASE)
    job = fq.job(2000, slow=0.002)
    out = fq.tmp / "results.jsonl"
    worker, worker_log = fq.worker("--concurrency", "4")
    output, output_log = fq.output(job, out, "--until-done")
    dispatch, dispatch_log = fq.dispatch(job)
    flood = Flood(
        fq.server.address,
        fq.env["FETCHQ_AUTHKEY"].encode(),
        clients=500,
        processes=10,
        hang=HANG,
    )
    usage: dict[str, int] = {}
    try:
        flood.start()
        if flood.all_connected():
            usage = fq.status()["process"]
    finally:
        hung = flood.close()
    assert not hung, f"{hung} clients still running after the deadline"
    assert not flood.errors, (
        f"{len(flood.errors)} clients failed, first {flood.errors[:3]}; the server "
        f"{'runs' if fq.server.process.poll() is None else 'has exited'}, and said: "
        f"{fq.server.log.text[-1000:]!r}"
    )
    assert len(flood.answers) == flood.clients
    assert all(isinstance(queued, int) for queued in flood.answers)
    # One server thread per open connection: all 500 were connected at once.
    # (The baseline itself may include a side connection still closing.)
    assert usage["threads"] >= fq.baseline["threads"] + flood.clients - QUIET_SLACK, usage
    assert exit_code(dispatch, dispatch_log, 60) == 0, dispatch_log.text
    assert exit_code(output, output_log, 60) == 0, output_log.text
    worker.send_signal(signal.SIGTERM)
    assert exit_code(worker, worker_log, 30) == 0, worker_log.text
    assert_exactly_once(check_file(job.urls, out))
    assert_quiet(fq.client, job.name, job.count, fq.baseline)
    wait_for_baseline(fq.client, fq.baseline)


def test_dispatch_into_a_full_queue_waits_and_never_overfills(cluster):
    """--max-pending 300: a dispatcher of 3,000 URLs in batches of 100 waits for
    room while one worker consumes; queued never passes the limit plus a batch."""
    max_pending, batch = 300, 100
    fq = cluster("--lease-timeout", LEASE, "--max-pending", str(max_pending))
    job = fq.job(3000, slow=0.002)
    out = fq.tmp / "results.jsonl"
    worker, worker_log = fq.worker("--concurrency", "4")
    output, output_log = fq.output(job, out, "--until-done")
    dispatch, dispatch_log = fq.dispatch(job, "--batch-size", str(batch))

    samples: list[tuple[int, int, bool]] = []
    stop = threading.Event()

    def sample() -> None:
        watcher = connect_broker(fq.server.address, fq.env["FETCHQ_AUTHKEY"])
        try:
            deadline = time.monotonic() + 60
            while not stop.is_set() and time.monotonic() < deadline:
                status = watcher.call("status")
                queued = status["jobs"].get(job.name, {}).get("queued", 0)
                samples.append((status["queued"], queued, dispatch.poll() is None))
                stop.wait(0.01)
        finally:
            watcher.close()

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        assert exit_code(dispatch, dispatch_log, 60) == 0, dispatch_log.text
        assert exit_code(output, output_log, 60) == 0, output_log.text
    finally:
        stop.set()
        sampler.join(10)
    worker.send_signal(signal.SIGTERM)
    assert exit_code(worker, worker_log, 30) == 0, worker_log.text
    assert not sampler.is_alive()
    assert f"dispatched {job.count} tasks" in dispatch_log.text, dispatch_log.text
    highest = max(max(total, queued) for total, queued, _ in samples)
    assert highest <= max_pending + batch, f"queued reached {highest}"
    waited = [s for s in samples if s[2] and s[0] >= max_pending - batch]
    assert waited, f"the queue never filled while dispatching (highest {highest})"
    report = check_file(job.urls, out)
    assert_exactly_once(report)
    assert_quiet(fq.client, job.name, job.count, fq.baseline)


def test_worker_stopped_while_the_server_is_down_drains_when_it_returns(cluster, tmp_path):
    """SIGTERM a worker while its server is down, then bring the server back within
    the worker's grace period: the worker sends what it fetched and exits 0.

    "What it fetched" is counted at the target: every request the target served
    this worker (the only one running until it has exited) ends as exactly one
    result from it in the output.  A result it held at SIGTERM and never sent
    would show twice at the target (the task runs again on the next worker) and
    under the other worker's name in the output."""
    fq = cluster("--lease-timeout", LEASE, "--journal", str(tmp_path / "journal.jsonl"))
    # Requests of 0.1 s: the worker is still fetching after its reporter found the
    # server gone, so what it holds at SIGTERM is both a batch being sent and results
    # fetched since.
    job = fq.job(300, slow=0.1)
    out = fq.tmp / "results.jsonl"
    # A grace of 30 s: its reporter's backoff may wait some 6 s between attempts, and a
    # busy machine may take seconds to restart the server.
    worker, worker_log = fq.worker("--concurrency", "4", "--grace", "30")
    fq.wait_workers(worker.pid)
    dispatch, dispatch_log = fq.dispatch(job)
    assert exit_code(dispatch, dispatch_log, 60) == 0, dispatch_log.text
    fq.wait_busy(worker.pid, reported=50)
    fq.server.kill()
    # Its fetch threads finish what they hold; the results wait for the server.
    worker_log.wait_for(WAITING, 20)
    worker.send_signal(signal.SIGTERM)
    fq.restart_server()
    assert exit_code(worker, worker_log, 40) == 0, worker_log.text
    assert "stopped on SIGTERM" in worker_log.text, worker_log.text
    served = fq.target.hits()
    fetched = {path for path in job.paths if served[path]}
    seen = fq.worker_seen(worker.pid)
    assert seen.get("reported", 0) > 0, f"no result reached the restarted server: {seen}"
    assert seen["leased"] == 0, seen

    rest, rest_log = fq.worker("--concurrency", "8")
    output, output_log = fq.output(job, out, "--until-done")
    assert exit_code(output, output_log, 60) == 0, output_log.text
    rest.terminate()
    assert exit_code(rest, rest_log, 30) == 0, rest_log.text
    report = check_file(job.urls, out)
    assert_exactly_once(report)
    served = fq.target.hits()
    again = sorted(path for path in fetched if served[path] != 1)
    assert not again, f"{len(again)} fetched by the stopped worker ran again, e.g. {again[:3]}"
    base = len(fq.target.url)
    name = worker_name(worker.pid)
    from_it = [r["url"][base:] for r in report.all_results if r["worker"] == name]
    assert sorted(from_it) == sorted(fetched), (len(from_it), len(fetched))
    assert_quiet(fq.client, job.name, job.count, fq.baseline)


def test_a_worker_stopped_while_its_server_stays_down_stops_saying_it_waits(cluster):
    """SIGINT a worker whose server is gone for good: it says it waits while it does
    (its grace period, trying to hand back and report), then that it could not, and
    nothing after that claims it is still waiting."""
    fq = cluster("--lease-timeout", "30")
    job = fq.job(10, slow=2)
    worker, log = fq.worker("--concurrency", "1", "--prefetch", "10", "--grace", "2")
    fq.wait_workers(worker.pid)
    dispatch, dispatch_log = fq.dispatch(job)
    assert exit_code(dispatch, dispatch_log, 60) == 0, dispatch_log.text
    poll_until(lambda: prefetched(fq.counts(job)), 30, "the worker to prefetch")
    fq.server.kill()
    log.wait_for(WAITING, 20)
    worker.send_signal(signal.SIGINT)
    assert exit_code(worker, log, 30) == 0, log.text
    said = log.text.split("could not hand back", 1)
    assert len(said) == 2, log.text
    assert WAITING not in said[1], log.text
