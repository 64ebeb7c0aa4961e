"""fetchq's worker with no broker: the same ``WorkerEngine`` fed from a list in memory.

Everything a worker process does on its side (prefetch queue, fetch threads
with one ``Fetcher`` each, the reporter's batches) runs unchanged; only the
``BrokerClient`` is replaced by ``ListBroker``, which answers lease, complete,
release and queued from memory.  Compared with a real server, worker
and output, it gives the broker's cost.

    python bench/inprocess_worker.py URL COUNT CONCURRENCY

prints one JSON line: when the last result was reported (Unix time), how
many were ok, and the CPU the process used for the run.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections import deque
from typing import Any

from fetchq.commands.cpus import claim_a_cpu
from fetchq.commands.work import WorkerEngine, WorkerSettings
from fetchq.signals import StopRequest
from fetchq.wire.records import make_task, worker_identity


class ListBroker:
    """The calls ``WorkerEngine`` makes, answered from a list of URLs.

    Task records are made as they are leased, as a server hands them out, so
    the process never holds thousands of task dicts for its GC to walk."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = deque(urls)
        self.next_id = 1
        self.created = time.time()
        self.total = len(urls)
        self.reported = 0
        self.ok = 0
        self.all_reported = threading.Event()
        self.finished_at = 0.0
        self.progress: list[tuple[float, int]] = []
        """(Unix time, results reported) after every report."""
        self.lock = threading.Lock()

    def connect(self) -> dict[str, Any]:
        return {"lease_timeout": 30.0}

    def call(self, method: str, *args: Any) -> Any:
        return getattr(self, method)(*args)

    def lease(self, worker: str, max_tasks: int, wait: float) -> list[dict[str, Any]]:
        with self.lock:
            count = min(max_tasks, len(self.urls))
            first, self.next_id = self.next_id, self.next_id + count
            urls = [self.urls.popleft() for _ in range(count)]
        leased = [
            make_task(first + n, "inprocess", url, 1, 30.0, self.created)
            for n, url in enumerate(urls)
        ]
        if not leased:  # like the server: wait for work that will not come
            self.all_reported.wait(wait)
        return leased

    def complete(
        self, worker: str, results: list[dict[str, Any]], renew: list[list[int]]
    ) -> dict[str, int]:
        with self.lock:
            self.reported += len(results)
            self.ok += sum(1 for result in results if result["ok"])
            self.progress.append((time.time(), self.reported))
            if self.reported >= self.total and not self.all_reported.is_set():
                self.finished_at = time.time()
                self.all_reported.set()
        return {"accepted": len(results), "renewed": len(renew)}

    def release(self, worker: str, leases: list[list[int]]) -> int:
        with self.lock:
            self.total -= len(leases)
        return len(leases)

    def queued(self) -> int:
        with self.lock:
            return len(self.urls)


def steady_rate(progress: list[tuple[float, int]], count: int) -> float:
    """The rate between 10% and 90% of the results, as the bench reads fetchq's."""
    low = next(((t, n) for t, n in progress if n >= 0.1 * count), None)
    high = next(((t, n) for t, n in progress if n >= 0.9 * count), None)
    if not low or not high or high[0] <= low[0]:
        return float("nan")
    return (high[1] - low[1]) / (high[0] - low[0])


def main() -> None:
    url, count, concurrency = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    broker = ListBroker([f"{url}/?q={i}" for i in range(count)])
    settings = WorkerSettings(concurrency=concurrency, burst=True)
    stop = StopRequest().install()

    def make_client(_stopper: Any) -> Any:
        return broker  # stands in for every BrokerClient the engine makes

    if settings.pin:  # as a real worker process does
        claim_a_cpu()
    engine = WorkerEngine(make_client, settings, stop, worker_identity())
    cpu_before = sum(os.times()[:2])
    engine.run()
    cpu = sum(os.times()[:2]) - cpu_before
    report = {
        "finished_at": broker.finished_at,
        "first_result_at": broker.progress[0][0] if broker.progress else float("nan"),
        "steady_rate": steady_rate(broker.progress, count),
        "ok": broker.ok,
        "reported": broker.reported,
        "cpu": cpu,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
