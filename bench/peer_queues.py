"""The task-queue peers: the same GET job through RQ and through Celery, on Redis.

The bench starts its own ``redis-server`` on a free loopback port with no
persistence.  Jobs are queued first (not timed); the time runs from the
worker's launch until every job has finished, as for fetchq's worker.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import time
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as dist_version
from typing import Any

from harness import (
    BENCH_DIR,
    PYTHON,
    BenchError,
    Child,
    Processes,
    child_env,
    free_port,
    tool_version,
    wait_for_port,
)

QUEUE = "bench"


def missing(peer: str) -> str | None:
    """Why ``peer`` (rq or celery) cannot run here, or None when it can."""
    if shutil.which("redis-server") is None:
        return "redis-server is not on PATH (Debian package redis-server)"
    for module in (peer, "redis"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install -e '.[bench]')"
    return None


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {
        "redis-server": tool_version(["redis-server", "--version"], r"v=(\S+)")
    }
    for dist in ("rq", "celery", "redis"):
        try:
            found[dist] = dist_version(dist)
        except PackageNotFoundError:
            found[dist] = None
    return found


class Redis:
    """A throwaway redis-server: loopback, a free port, nothing written to disk."""

    def __init__(self, procs: Processes) -> None:
        self.procs = procs
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        folder = procs.folder / "redis"
        folder.mkdir(exist_ok=True)
        command = [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--daemonize", "no",
            "--dir", str(folder), "--loglevel", "warning",
        ]  # fmt: skip
        self.child: Child = procs.start("redis-server", command)
        wait_for_port(self.port, self.child.proc)
        import redis

        self.client = redis.Redis.from_url(self.url)

    def flush(self) -> None:
        self.client.flushall()

    def stop(self) -> None:
        self.client.close()
        self.procs.stop(self.child)


def _worker_env(redis: Redis) -> dict[str, str]:
    return child_env(PYTHONPATH=str(BENCH_DIR), BENCH_REDIS_URL=redis.url)


def rq_run(procs: Processes, redis: Redis, url: str, count: int) -> dict[str, Any]:
    """RQ's ``SimpleWorker`` in burst mode: one job at a time, in the worker process."""
    import peer_jobs
    from rq import Queue

    redis.flush()
    queue = Queue(QUEUE, connection=redis.client)
    for first in range(0, count, 1000):
        jobs = [
            Queue.prepare_data(peer_jobs.fetch, args=(f"{url}/?q={i}",))
            for i in range(first, min(count, first + 1000))
        ]
        queue.enqueue_many(jobs)
    command = [
        PYTHON, "-m", "rq.cli", "worker", "--burst", "--quiet",
        "--worker-class", "rq.worker.SimpleWorker", "--url", redis.url, QUEUE,
    ]  # fmt: skip
    worker = procs.start("rq-worker", command, env=_worker_env(redis))
    try:
        done = worker.wait_ok(timeout=count / 20 + 60)
    finally:
        procs.stop(worker)
    finished = queue.finished_job_registry.count
    failed = queue.failed_job_registry.count
    if finished != count or failed:
        raise BenchError(f"rq: {finished} finished and {failed} failed of {count}\n{worker.tail()}")
    return {"count": count, "seconds": done.seconds, "rate": count / done.seconds}


def celery_run(
    procs: Processes, redis: Redis, url: str, count: int, *, concurrency: int
) -> dict[str, Any]:
    """Celery's threads pool with a Redis broker and result backend."""
    from celery import Celery

    redis.flush()
    sender = Celery("bench-sender", broker=redis.url, backend=redis.url)
    sender.conf.task_default_queue = QUEUE
    ids = [
        sender.send_task("bench.fetch", args=[f"{url}/?q={i}"], queue=QUEUE).id
        for i in range(count)
    ]
    command = [
        PYTHON, "-m", "celery", "-A", "peer_celery_app", "worker", "--pool", "threads",
        "--concurrency", str(concurrency), "--queues", QUEUE, "--loglevel", "WARNING",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip
    worker = procs.start("celery-worker", command, env=_worker_env(redis))
    try:
        deadline = time.monotonic() + count / 20 + 60
        while _celery_results(redis) < count:
            if worker.proc.poll() is not None:
                raise BenchError(f"celery worker exited early:\n{worker.tail()}")
            if time.monotonic() > deadline:
                raise BenchError(f"celery: not done in time\n{worker.tail()}")
            time.sleep(0.02)
        seconds = time.perf_counter() - worker.started
    finally:
        procs.stop(worker)
        sender.close()
    ok = _celery_successes(redis, ids)
    if ok != count:
        raise BenchError(f"celery: {ok} of {count} jobs succeeded")
    return {"count": count, "seconds": seconds, "rate": count / seconds}


def _celery_results(redis: Redis) -> int:
    return sum(1 for _ in redis.client.scan_iter("celery-task-meta-*", count=10_000))


def _celery_successes(redis: Redis, ids: list[str]) -> int:
    ok = 0
    for first in range(0, len(ids), 1000):
        keys = [f"celery-task-meta-{task_id}" for task_id in ids[first : first + 1000]]
        for raw in redis.client.mget(keys):
            meta = json.loads(raw) if raw else {}
            if meta.get("status") == "SUCCESS" and meta.get("result", {}).get("ok"):
                ok += 1
    return ok
