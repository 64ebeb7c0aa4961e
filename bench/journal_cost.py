"""What durability costs: the broker's own work with and without a journal.

Runs the same job through an in-process broker three ways: no journal, a
journal with its normal fsync policy (every submit, plus housekeeping), and
a journal on every call — and prints tasks/s and the ratio to no journal.
The broker is driven directly so the figures are the journal's cost alone,
not the network's.

    python bench/journal_cost.py [--tasks 200000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from fetchq.server.broker import Broker
from fetchq.server.journal import Journal
from fetchq.wire.records import make_result

BATCH = 10_000
LEASE = 500


def run_job(broker: Broker, tasks: int, sync_every_call: bool) -> float:
    """Submit, lease, complete, read and confirm ``tasks`` tasks; returns seconds."""
    started = time.perf_counter()
    for first in range(0, tasks, BATCH):
        urls = [f"http://127.0.0.1:9/?q={i}" for i in range(first, min(tasks, first + BATCH))]
        broker.submit({"job": "bench", "urls": urls})
    broker.seal("bench")
    done = 0
    while done < tasks:
        leased = broker.lease("bench-worker", LEASE, 0)
        results = [
            make_result(task, worker="bench-worker", started=0.0, elapsed=0.001, status=200)
            for task in leased
        ]
        broker.complete("bench-worker", results)
        if sync_every_call:
            broker.housekeeping()
        reply = broker.results("bench", LEASE, 0)
        if reply["token"]:
            broker.ack(reply["token"])
        done += len(reply["results"])
    return time.perf_counter() - started


def measure(tasks: int, mode: str, folder: Path) -> float:
    journal = None
    if mode != "no journal":
        path = folder / f"{mode.replace(' ', '-')}-{time.monotonic_ns()}.log"
        journal = Journal(path)
    broker = Broker(journal=journal)
    try:
        return run_job(broker, tasks, sync_every_call=mode == "journal, fsync every call")
    finally:
        broker.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    modes = ["no journal", "journal (default fsync)", "journal, fsync every call"]
    with tempfile.TemporaryDirectory(dir=".") as folder:
        seconds = {
            mode: statistics.median(
                measure(args.tasks, mode, Path(folder)) for _ in range(args.repeat)
            )
            for mode in modes
        }
    base = seconds["no journal"]
    print(f"{args.tasks} tasks through the broker (submit, lease, complete, read, confirm)")
    print(f"{'mode':<28} {'tasks/s':>10} {'vs no journal':>14}")
    for mode in modes:
        rate = args.tasks / seconds[mode]
        print(f"{mode:<28} {rate:>10.0f} {base / seconds[mode]:>13.2f}x")


if __name__ == "__main__":
    main()
