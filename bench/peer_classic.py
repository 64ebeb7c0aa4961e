"""The baseline for dispatch: the classic "distributed processes" tutorial transport.

A ``BaseManager`` server process serves a plain ``queue.Queue``; the client
connects and ``put()``s one URL per call, so every URL is one round trip.
Run as a script it is the server: ``python bench/peer_classic.py PORT`` with
the key in ``BENCH_CLASSIC_AUTHKEY``.
"""

from __future__ import annotations

import os
import queue
import secrets
import sys
import time
from multiprocessing.managers import BaseManager
from typing import Any

from harness import BENCH_DIR, PYTHON, BenchError, Processes, child_env, free_port, wait_for_port

_tasks: queue.Queue[str] = queue.Queue()


def _task_queue() -> queue.Queue[str]:
    return _tasks


class QueueManager(BaseManager):
    pass


def serve(port: int, authkey: bytes) -> None:
    QueueManager.register("get_task_queue", callable=_task_queue)
    manager = QueueManager(address=("127.0.0.1", port), authkey=authkey)
    manager.get_server().serve_forever()


TRIALS = 3
"""Fresh servers per measurement; the best counts.  A put() is one round trip,
and its cost depends on whether the scheduler puts client and server on one
core or two (here about 30 us or 60 us): the baseline gets its best case."""


def put_rate(procs: Processes, template: str, count: int) -> dict[str, Any]:
    """Put ``count`` URLs one call each into a classic server: tasks/s, best of TRIALS."""
    rates = [_one_trial(procs, template, count) for _ in range(TRIALS)]
    best = max(rates)
    return {"count": count, "seconds": count / best, "rate": best, "worst_trial_rate": min(rates)}


def _one_trial(procs: Processes, template: str, count: int) -> float:
    port = free_port()
    key = secrets.token_hex(16)
    env = child_env(BENCH_CLASSIC_AUTHKEY=key)
    server = procs.start(
        "classic-server", [PYTHON, str(BENCH_DIR / "peer_classic.py"), str(port)], env=env
    )
    try:
        wait_for_port(port, server.proc)
        QueueManager.register("get_task_queue")
        manager = QueueManager(address=("127.0.0.1", port), authkey=key.encode())
        manager.connect()
        tasks: Any = manager.get_task_queue()
        started = time.perf_counter()
        for i in range(count):
            tasks.put(template.format(i=i))
        seconds = time.perf_counter() - started
        queued = tasks.qsize()
        if queued != count:
            raise BenchError(f"classic server holds {queued} URLs, expected {count}")
        return count / seconds
    finally:
        procs.stop(server)


if __name__ == "__main__":
    serve(int(sys.argv[1]), os.environ["BENCH_CLASSIC_AUTHKEY"].encode())
