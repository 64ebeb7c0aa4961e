"""Outputs that die mid-stream or stall: every result still lands exactly once."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import termios
import threading
from pathlib import Path
from typing import Any

from checker import assert_exactly_once, assert_quiet, check, check_file
from faultkit import exit_code
from fetchq_procs import jsonl, poll_until
from netproxy import NetProxy

LEASE = "2"


def complete_lines(path) -> int:
    try:
        with open(path, "rb") as handle:
            return handle.read().count(b"\n")
    except FileNotFoundError:
        return 0


def hold_until_unconfirmed(proxy: NetProxy, fq: Any, job: Any, out: Path) -> tuple[int, int]:
    """Hold what the output sends until its file holds results it never confirmed.

    The output gets the answer to the call it already made, writes that batch,
    and its confirmation (carried by its next call) stays in the proxy, so the
    file holds more complete lines than the server counts as delivered.  If the
    call itself was caught in the proxy, nothing more arrives: heal and retry.
    Returns (complete lines, delivered), frozen while requests are held."""

    def unconfirmed() -> tuple[int, int] | None:
        # A call that got through just before the hold may not be handled yet: its
        # confirmation would land after these counts (as it once did in CI).
        if not proxy.answered():
            return None
        # The whole delivery written, not a part of it its buffer let out (a batch of
        # 37 results is past 8 KiB): every result handed out is in the file.
        counts = fq.counts(job)
        lines, delivered = complete_lines(out), counts["confirmed"]
        whole = lines == delivered + counts["handed_out"]
        return (lines, delivered) if lines > delivered and whole else None

    for _ in range(5):
        proxy.hold_requests()
        try:
            return poll_until(unconfirmed, 3, "the output to write a batch it cannot confirm")
        except AssertionError:
            proxy.heal()
    raise AssertionError("the output never wrote a batch it had not confirmed")


def test_output_killed_mid_stream_then_appended_gives_each_result_once(cluster):
    """kill -9 output with results in its file that the server never saw confirmed;
    ``--append`` finishes the file: it meets those results again and skips them.

    The killed run's unconfirmed deliveries come back after the lease timeout;
    the resumed run cuts a torn last line and skips ids the file holds."""
    fq = cluster("--lease-timeout", LEASE)
    job = fq.job(2000, slow=0.005)
    out = fq.tmp / "results.jsonl"
    workers = [fq.worker("--concurrency", "4") for _ in range(2)]
    with NetProxy(fq.server.address) as proxy:
        first, _ = fq.output(
            job, out, "--until-done", env=dict(fq.env, FETCHQ_SERVER=proxy.address)
        )
        dispatch, dispatch_log = fq.dispatch(job)
        assert exit_code(dispatch, dispatch_log, 60) == 0, dispatch_log.text

        def mid_stream() -> bool:
            counts = fq.counts(job)
            return complete_lines(out) >= 200 and counts["succeeded"] + counts["failed"] < job.count

        poll_until(mid_stream, 30, "output to be writing results mid-job")
        lines_at_kill, delivered_at_kill = hold_until_unconfirmed(proxy, fq, job, out)
        os.kill(first.pid, signal.SIGKILL)
        assert first.wait(10) == -signal.SIGKILL
    assert lines_at_kill < job.count, "the first output should have died mid-stream"

    second, second_log = fq.output(job, out, "--until-done", "--append")
    assert exit_code(second, second_log, 60) == 0, second_log.text
    for process, log in workers:
        process.terminate()
        assert exit_code(process, log, 30) == 0, log.text
    report = check_file(job.urls, out)
    assert_exactly_once(report)
    repeated = lines_at_kill - delivered_at_kill
    assert f"skipped {repeated} results handed out again" in second_log.text, second_log.text
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
