"""How long a journal compaction stops the broker's clients.

Fills a journaled in-process broker with ``--tasks`` queued tasks (2,000,000 by
default: ``MAX_PENDING``, the most a server holds), then compacts its journal
while client threads call ``queued`` and ``lease`` in a loop, and prints how
long the compaction took and the longest any one call waited (and, for scale,
the longest in the seconds before, with no compaction).  Clients must not
stall for the length of a compaction: the target is a longest wait under
100 ms.

    python bench/compaction_pause.py [--tasks 2000000] [--clients 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

from fetchq.server.broker import Broker
from fetchq.server.journal import Journal

BATCH = 10_000
IDLE = 5.0
"""Seconds the clients call before the compaction: the longest call then is the noise."""
TARGET = 0.100
"""Seconds: the longest a client call may wait while the journal is compacted."""


def fill(broker: Broker, tasks: int, hosts: int) -> None:
    for first in range(0, tasks, BATCH):
        count = min(BATCH, tasks - first)
        urls = [f"http://h{i % hosts}.example/item?id={i}" for i in range(first, first + count)]
        broker.submit({"job": "bench", "urls": urls})


def client(broker: Broker, stop: threading.Event, waits: list[float]) -> None:
    """Calls as workers and ``--burst`` workers make them; notes each call's time."""
    while not stop.is_set():
        started = time.perf_counter()
        broker.queued()
        waits.append(time.perf_counter() - started)
        started = time.perf_counter()
        leased = broker.lease("bench-worker", 1, 0)
        waits.append(time.perf_counter() - started)
        if leased:
            broker.release("bench-worker", [[t["id"], t["attempt"]] for t in leased])
        time.sleep(0.001)


def measure(
    folder: Path, tasks: int, clients: int, by_host: bool
) -> tuple[float, float, float, float]:
    """Returns (compaction seconds, longest call while it ran, median call, longest call
    in as long a time before it: what the machine gives without a compaction)."""
    journal = Journal(folder / f"pause-{time.monotonic_ns()}.journal")
    broker = Broker(journal=journal, max_pending=tasks + 1, lease_timeout=600)
    try:
        if by_host:
            broker.submit({"job": "bench", "urls": [], "per_host": 100_000})
        fill(broker, tasks, hosts=1000)
        stop = threading.Event()
        waits: list[list[float]] = [[] for _ in range(clients)]
        threads = [
            threading.Thread(target=client, args=(broker, stop, w), daemon=True) for w in waits
        ]
        for thread in threads:
            thread.start()
        time.sleep(0.2)  # the clients are calling
        for w in waits:
            w.clear()
        time.sleep(IDLE)
        idle = max(wait for w in waits for wait in w)
        for w in waits:
            w.clear()
        started = time.perf_counter()
        broker.compact()
        took = time.perf_counter() - started
        time.sleep(0.05)
        stop.set()
        for thread in threads:
            thread.join(10)
        every = [wait for w in waits for wait in w]
        return took, max(every), statistics.median(every), idle
    finally:
        broker.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=2_000_000)
    parser.add_argument("--clients", type=int, default=2)
    args = parser.parse_args()
    print(f"compacting a journal of {args.tasks:,} queued tasks, {args.clients} clients calling")
    print(
        f"{'queue':<16} {'compaction':>11} {'longest call':>13} {'median call':>12}"
        f" {'longest, idle':>14}"
    )
    with tempfile.TemporaryDirectory(dir=".") as folder:
        for name, by_host in (("plain queue", False), ("per-host queues", True)):
            took, longest, median, idle = measure(Path(folder), args.tasks, args.clients, by_host)
            print(
                f"{name:<16} {took:>10.2f}s {longest * 1000:>11.1f}ms {median * 1e6:>10.0f}µs"
                f" {idle * 1000:>12.1f}ms"
            )
    print(f"target: longest call under {TARGET * 1000:.0f} ms")


if __name__ == "__main__":
    main()
