"""fetchq's own runs: dispatch into a real server, workers end to end, the in-process loop."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from harness import (
    BENCH_DIR,
    PYTHON,
    BenchError,
    Child,
    Fetchq,
    Finished,
    Processes,
    cpu_seconds,
    rss_bytes,
)

from fetchq.config import parse_address
from fetchq.wire.client import BrokerClient

MEMORY_TEMPLATE = "http://127.0.0.1:9/item?id={i}"
"""URLs of about 33 characters, as bench/server_memory.py uses; nothing fetches them."""


def dispatch(procs: Processes, count: int, wire: str = "json") -> dict[str, Any]:
    """``fetchq dispatch --template --count`` into a fresh server with no workers.

    Also gives the server's memory per queued task (RSS after minus before)
    and the dispatcher's start-up time (a one-URL dispatch after it)."""
    fq = Fetchq(procs, wire)
    with fq.server() as (address, server):
        time.sleep(0.2)  # let the server settle before its empty size is read
        before = rss_bytes(server.pid)
        cpu_before = cpu_seconds(server.pid)
        big = fq.run(
            address, "dispatch", "--template", MEMORY_TEMPLATE, "--count", str(count), "--job", "d"
        )
        server_cpu = cpu_seconds(server.pid) - cpu_before
        after = rss_bytes(server.pid)
        one = fq.run(
            address, "dispatch", "--template", MEMORY_TEMPLATE, "--count", "1", "--job", "e"
        )
        queued = _status(fq, address)["queued"]
    if queued != count + 1:
        raise BenchError(f"server holds {queued} tasks after dispatching {count + 1}")
    return {
        "count": count,
        "seconds": big.seconds,
        "rate": count / big.seconds,
        "startup_seconds": one.seconds,
        "rate_after_startup": count / max(big.seconds - one.seconds, 1e-9),
        "dispatch_cpu_s": big.cpu,
        "server_cpu_s": server_cpu,
        "rss_empty": before,
        "rss_full": after,
        "bytes_per_task": (after - before) / count,
    }


def workers(
    procs: Processes,
    url: str,
    count: int,
    *,
    processes: int,
    concurrency: int,
    wire: str = "json",
    spans: bool = False,
) -> dict[str, Any]:
    """``count`` tasks queued in a real server, then ``fetchq worker --burst`` and
    ``fetchq output --until-done --format none``: from the worker's launch to
    the moment output has collected every result.  ``spans``: the same requests as
    an aggregate job (``--aggregate``, spans of the default size)."""
    fq = Fetchq(procs, wire)
    with fq.server() as (address, server):
        template = url + "/?q={i}"
        job = ("--template", template, "--count", str(count), "--job", "w")
        fq.run(address, "dispatch", *job, *(("--aggregate",) if spans else ()))
        output = fq.start(
            "fetchq-output",
            "output",
            "--job",
            "w",
            "--until-done",
            "--format",
            "none",
            server=address,
        )
        server_cpu = cpu_seconds(server.pid)
        worker = fq.start(
            "fetchq-worker",
            "worker",
            "--burst",
            "--concurrency",
            str(concurrency),
            "--processes",
            str(processes),
            server=address,
        )
        progress = _watch(output, address, fq, timeout=count / 50 + 60)
        collected = output.check(progress.finished)
        seconds = collected.seconds - (worker.started - output.started)
        server_cpu = cpu_seconds(server.pid) - server_cpu
        worked = worker.wait_ok(timeout=60)
        procs.stop(output)
        procs.stop(worker)
        job = _status(fq, address)["jobs"]["w"]
    if job["succeeded"] != count or job["failed"]:
        raise BenchError(f"fetchq job ended with {job['succeeded']} ok and {job['failed']} failed")
    return {
        "count": count,
        "seconds": seconds,
        "rate": count / seconds,
        "steady_rate": progress.steady_rate(worker.started, count),
        "first_result_s": progress.first_result(worker.started),
        "worker_cpu_per_request_us": worked.cpu / count * 1e6,
        "server_cpu_per_task_us": server_cpu / count * 1e6,
        "output_cpu_per_task_us": collected.cpu / count * 1e6,
    }


@dataclass
class Progress:
    """Results recorded by the server over time, sampled while output runs."""

    finished: Finished
    samples: list[tuple[float, int]]
    """(perf_counter, tasks with a result)"""

    def _when(self, reached: float) -> tuple[float, int] | None:
        return next(((t, n) for t, n in self.samples if n >= reached), None)

    def first_result(self, launched: float) -> float:
        first = self._when(1)
        return first[0] - launched if first else float("nan")

    def steady_rate(self, launched: float, count: int) -> float:
        """The rate between 10% and 90% of the results: start-up and tail left out."""
        low, high = self._when(0.1 * count), self._when(0.9 * count)
        if not low or not high or high[0] <= low[0]:
            return float("nan")
        return (high[1] - low[1]) / (high[0] - low[0])


SAMPLE_EVERY = 0.05


def _watch(output: Child, address: str, fq: Fetchq, timeout: float) -> Progress:
    """Wait for ``output`` to exit, sampling the job's progress on the server."""
    client = BrokerClient(
        parse_address(address), fq.env["FETCHQ_AUTHKEY"].encode(), fq.client_tls()
    )
    samples: list[tuple[float, int]] = []
    deadline = time.monotonic() + timeout
    next_sample = 0.0
    try:
        while (finished := output.poll()) is None:
            now = time.perf_counter()
            if now >= next_sample:
                counts = client.call("job", "w")
                samples.append((now, counts["succeeded"] + counts["failed"]))
                next_sample = now + SAMPLE_EVERY
            if time.monotonic() > deadline:
                raise BenchError(f"fetchq output not done after {timeout:g}s\n{output.tail()}")
            time.sleep(0.005)
    finally:
        client.close()
    return Progress(finished, samples)


def inprocess(procs: Processes, url: str, count: int, *, concurrency: int) -> dict[str, Any]:
    """The worker's engine fed from a list in its own process: launch to last result."""
    command = [PYTHON, str(BENCH_DIR / "inprocess_worker.py"), url, str(count), str(concurrency)]
    launched = time.time()
    child = procs.start("inprocess-worker", command)
    try:
        child.wait_ok(timeout=count / 50 + 60)
        lines = child.log.read_text().strip().splitlines()
    finally:
        procs.stop(child)
    report = json.loads(lines[-1])
    if report["ok"] != count:
        raise BenchError(f"in-process loop: {report['ok']} of {count} ok\n{child.tail()}")
    seconds = report["finished_at"] - launched
    return {
        "count": count,
        "seconds": seconds,
        "rate": count / seconds,
        "steady_rate": report["steady_rate"],
        "first_result_s": report["first_result_at"] - launched,
        "worker_cpu_per_request_us": report["cpu"] / count * 1e6,
    }


def calls(procs: Processes, wire: str, seconds: float) -> dict[str, Any]:
    """Logins/s and calls/s of one client (bench/call_rate.py) against a fresh server."""
    fq = Fetchq(procs, wire)
    with fq.server() as (address, _):
        env = dict(fq.env, FETCHQ_SERVER=address)
        command = [PYTHON, str(BENCH_DIR / "call_rate.py"), address, str(seconds)]
        child = procs.start(f"call-rate-{wire}", command, env=env)
        try:
            child.wait_ok(timeout=2 * seconds + 60)
            figures = json.loads(child.log.read_text().strip().splitlines()[-1])
        finally:
            procs.stop(child)
    return {**figures, "rate": figures["calls_per_s"]}


def _status(fq: Fetchq, address: str) -> dict[str, Any]:
    child = fq.start("fetchq-status", "status", "--json", server=address)
    try:
        child.wait_ok(60)
        text = child.log.read_text()
    finally:
        fq.procs.stop(child)
    return json.loads(text[text.index("{") : text.rindex("}") + 1])
