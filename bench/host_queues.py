"""What per-host queues cost: the broker's throughput and memory, plain queue vs by host.

The same job of ``--tasks`` URLs spread over ``--hosts`` distinct hosts runs
through an in-process broker twice: as a plain job (first in, first out) and
as a job with a per-host cap (its tasks sorted into one queue per host, hosts
taking turns).  The cap is set high enough never to hold a task back, so
what is measured is the bookkeeping alone.  Prints tasks/s through submit,
lease, complete, read and confirm, and the memory each queued task takes
(tracemalloc: what the broker allocates, not the process around it), with
the ratio of each to the plain queue, measured in the same run.

    python bench/host_queues.py [--tasks 1000000] [--hosts 100000]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
import tracemalloc
from typing import Any

from fetchq.server.broker import Broker
from fetchq.wire.records import make_result

BATCH = 10_000
LEASE = 1_000


def urls(first: int, count: int, hosts: int) -> list[str]:
    """URLs of about 40 characters over ``hosts`` distinct host names."""
    return [f"http://h{i % hosts}.example/item?id={i}" for i in range(first, first + count)]


def submit_all(broker: Broker, tasks: int, hosts: int, policy: dict[str, Any]) -> None:
    for first in range(0, tasks, BATCH):
        broker.submit(
            {"job": "bench", "urls": urls(first, min(BATCH, tasks - first), hosts), **policy}
        )
    broker.seal("bench")


def throughput(tasks: int, hosts: int, policy: dict[str, Any]) -> float:
    broker = Broker(max_pending=tasks + 1, max_results=tasks + 1)
    started = time.perf_counter()
    submit_all(broker, tasks, hosts, policy)
    done = 0
    while done < tasks:
        leased = broker.lease("w", LEASE, 0)
        results = [
            make_result(t, worker="w", started=0.0, elapsed=0.001, status=200) for t in leased
        ]
        broker.complete("w", results)
        reply = broker.results("bench", LEASE, 0)
        if reply["token"]:
            broker.ack(reply["token"])
        done += len(reply["results"])
    return tasks / (time.perf_counter() - started)


def memory_per_task(tasks: int, hosts: int, policy: dict[str, Any]) -> float:
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    broker = Broker(max_pending=tasks + 1)
    submit_all(broker, tasks, hosts, policy)
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert broker.queued() == tasks
    return held / tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--hosts", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    variants = {
        "plain queue": {},
        "per-host queues": {"per_host": 100_000},
    }
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeat):  # back to back, so both see the same machine
        for name, policy in variants.items():
            rates[name].append(throughput(args.tasks, args.hosts, policy))
    memory = {name: memory_per_task(args.tasks, args.hosts, p) for name, p in variants.items()}
    base_rate = statistics.median(rates["plain queue"])
    base_memory = memory["plain queue"]
    print(
        f"{args.tasks:,} tasks over {args.hosts:,} hosts through the broker "
        "(submit, lease, complete, read, confirm); medians of "
        f"{args.repeat} runs"
    )
    print(f"{'queue':<16} {'tasks/s':>10} {'cost':>6} {'bytes/task':>11} {'cost':>6}")
    for name in variants:
        rate = statistics.median(rates[name])
        print(
            f"{name:<16} {rate:>10,.0f} {base_rate / rate:>5.2f}x "
            f"{memory[name]:>11.0f} {memory[name] / base_memory:>5.2f}x"
        )
    print("target: per-host queues no worse than 2x the plain queue in either column")


if __name__ == "__main__":
    main()
