"""Outputs that die mid-stream or stall: every result still lands exactly once."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import termios
import threading

from checker import assert_exactly_once, assert_quiet, check, check_file
from faultkit import exit_code
from fetchq_procs import jsonl, poll_until

LEASE = "2"


def complete_lines(path) -> int:
    try:
        with open(path, "rb") as handle:
            return handle.read().count(b"\n")
    except FileNotFoundError:
        return 0


def test_output_killed_mid_stream_then_appended_gives_each_result_once(cluster):
    """kill -9 output while it writes; ``--append`` finishes the file without repeats.

    The killed run's unconfirmed delivery comes back after the lease timeout;
    the resumed run cuts a torn last line and skips ids the file holds."""
    fq = cluster("--lease-timeout", LEASE)
    job = fq.job(2000, slow=0.005)
    out = fq.tmp / "results.jsonl"
    workers = [fq.worker("--concurrency", "4") for _ in range(2)]
    first, _ = fq.output(job, out, "--until-done")
    dispatch, dispatch_log = fq.dispatch(job)
    assert exit_code(dispatch, dispatch_log, 60) == 0, dispatch_log.text

    def mid_stream() -> bool:
        counts = fq.counts(job)
        return complete_lines(out) >= 200 and counts["succeeded"] + counts["failed"] < job.count

    poll_until(mid_stream, 30, "output to be writing results mid-job")
    os.kill(first.pid, signal.SIGKILL)
    assert first.wait(10) == -signal.SIGKILL
    lines_at_kill = complete_lines(out)

    second, second_log = fq.output(job, out, "--until-done", "--append")
    assert exit_code(second, second_log, 60) == 0, second_log.text
    for process, log in workers:
        process.terminate()
        assert exit_code(process, log, 30) == 0, log.text
    report = check_file(job.urls, out)
    assert_exactly_once(report)
    assert lines_at_kill < job.count, "the first output should have died mid-stream"
    assert_quiet(fq.client, job.name, job.count, fq.baseline)


class PausedReader:
    """Reads a pipe on a thread, but only once ``resume()`` is called."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.chunks: list[str] = []
        self.go = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        self.go.wait(120)
        for line in self.stream:
            self.chunks.append(line)

    def nearly_full(self) -> bool:
        """Less room left in the pipe than one buffered write (8 KiB) needs."""
        capacity = fcntl.fcntl(self.stream.fileno(), fcntl.F_GETPIPE_SZ)
        return self.pending_bytes() > capacity - 8192

    def pending_bytes(self) -> int:
        """Bytes written into the pipe and not read yet."""
        size = bytearray(4)
        fcntl.ioctl(self.stream.fileno(), termios.FIONREAD, size)
        return int.from_bytes(size, "little")

    def resume(self) -> None:
        self.go.set()

    def text(self, timeout: float) -> str:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the pipe was not closed in time"
        return "".join(self.chunks)


def test_output_stalled_longer_than_the_lease_writes_nothing_twice(cluster):
    """An output blocked on a full pipe (a paused ``| less``, Ctrl-Z, a slow disk)
    for longer than the lease timeout must still write each result once."""
    fq = cluster("--lease-timeout", LEASE)
    job = fq.job(2000)
    worker, worker_log = fq.worker("--concurrency", "4")
    output, output_log = fq.launch(
        fq.env,
        "output",
        "--job",
        job.name,
        "--format",
        "jsonl",
        "--until-done",
        stdout=subprocess.PIPE,
    )
    reader = PausedReader(output.stdout)
    dispatch, dispatch_log = fq.dispatch(job)
    assert exit_code(dispatch, dispatch_log, 60) == 0, dispatch_log.text

    # Blocked mid-batch: the pipe is full and the server has a
    # delivery out that the output cannot confirm until its write returns.
    # Blocked mid-batch: the pipe is (all but a write's worth) full and the
    # server has a delivery out that the output cannot confirm until its
    # write returns.
    def blocked() -> dict | None:
        counts = fq.counts(job)
        return counts if reader.nearly_full() and counts["handed_out"] > 0 else None

    stalled = poll_until(blocked, 30, "output to block on a full pipe mid-delivery")
    # The server takes the delivery back: handed_out drops while delivered
    # stays put (a confirmation would have raised it).
    poll_until(
        lambda: (
            fq.counts(job)["handed_out"] == 0
            and fq.counts(job)["confirmed"] == stalled["confirmed"]
            and output.poll() is None
        ),
        15,
        "the delivery to expire while output is stalled",
    )
    reader.resume()
    assert exit_code(output, output_log, 60) == 0, output_log.text
    results = jsonl(reader.text(30))
    worker.terminate()
    assert exit_code(worker, worker_log, 30) == 0, worker_log.text
    report = check(job.urls, results)
    assert_exactly_once(report)
