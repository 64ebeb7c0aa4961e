"""The broker's own work per task, and what durability adds to it.

Runs the same job through an in-process broker: submit, lease, complete, read and
confirm every task, timing the broker's calls alone (the results a worker would
send are built outside the timing, in the form the server's transport hands them
to the broker: this checkout decodes them off the wire into stored results, the
baseline release unpickled dicts).  Modes: no journal, a journal with its normal
fsync policy (every submit, plus housekeeping), a journal fsynced on every call;
and, measured in the same run, the baseline release's broker with no journal
(073dcce, unpacked from the repository's history).  Each run is a child process
of its own, so each meets a fresh heap; "the server's collector" is the broker
with the cycle collector tuned as ``fetchq server`` tunes it (the baseline's server
ran with Python's defaults).

    python bench/journal_cost.py [--tasks 200000] [--repeat 3] [--baseline 073dcce]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BATCH = 10_000
LEASE = 500
BENCH = Path(__file__).resolve().parent


def wire_results(tasks: list[dict[str, Any]]) -> list[Any]:
    """A worker's results for ``tasks``, as the server's transport hands them to the
    broker: off the wire when this fetchq reads results that way, else as dicts."""
    now = time.time()
    results = [
        {
            "v": 1,
            "id": task["id"],
            "job": task["job"],
            "url": task["url"],
            "ok": True,
            "status": 200,
            "elapsed": 0.000321,
            "bytes": 612,
            "error": None,
            "attempt": task["attempt"],
            "worker": "bench-worker",
            "started": now,
            "scheduled": None,
            "retry_after": None,
        }
        for task in tasks
    ]
    try:
        from fetchq.wire.codec import JSON
    except ImportError:  # an older release: the broker took dicts off its pickle wire
        return results
    frame = JSON.dumps(["bench", "complete", ["bench-worker", results, []], {}])
    return list(JSON.loads(frame)[2][1])


def run_job(broker: Any, tasks: int, sync_every_call: bool) -> float:
    """Every task through the broker; returns the seconds spent in its calls."""
    spent = 0.0
    seal = getattr(broker, "seal", None) or broker.finish  # 'finish' before protocol 4
    clock = time.perf_counter
    for first in range(0, tasks, BATCH):
        urls = [f"http://127.0.0.1:9/?q={i}" for i in range(first, min(tasks, first + BATCH))]
        started = clock()
        broker.submit({"job": "bench", "urls": urls})
        spent += clock() - started
    seal("bench")
    done = 0
    while done < tasks:
        started = clock()
        leased = broker.lease("bench-worker", LEASE, 0)
        spent += clock() - started
        results = wire_results(leased)
        started = clock()
        broker.complete("bench-worker", results)
        if sync_every_call:
            broker.housekeeping()
        reply = broker.results("bench", LEASE, 0)
        if reply["token"]:
            broker.ack(reply["token"])
        spent += clock() - started
        done += len(reply["results"])
    return spent


SERVER_COLLECTOR = "no journal, the server's collector"
"""The broker with the cycle collector tuned as ``fetchq server`` tunes it."""


def in_child(what: str, args: list[str], **options: Any) -> float:
    """The seconds a run of this script as a child process reports (``args`` after its
    name): each run meets a fresh heap and collector."""
    child = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, timeout=600, **options
    )
    if child.returncode:
        raise SystemExit(f"{what} failed:\n{child.stderr[-2000:]}")
    return float(json.loads(child.stdout.strip().splitlines()[-1])["seconds"])


def measure(tasks: int, mode: str, folder: Path) -> float:
    return in_child(mode, ["--mode", mode, str(tasks), str(folder)])


def measure_here(tasks: int, mode: str, folder: Path) -> float:
    from fetchq.server.broker import Broker
    from fetchq.server.journal import Journal
    from fetchq.server.serve import collect_rarely

    if mode == SERVER_COLLECTOR:
        collect_rarely()
    journal = None
    if mode.startswith("journal"):
        path = folder / f"{mode.replace(' ', '-')}-{time.monotonic_ns()}.log"
        journal = Journal(path)
    broker = Broker(journal=journal)
    try:
        return run_job(broker, tasks, sync_every_call=mode == "journal, fsync every call")
    finally:
        broker.close()


def baseline(commit: str, tasks: int, folder: Path) -> float:
    """The baseline release's broker, no journal, in a child process of its own."""
    sys.path.insert(0, str(BENCH))
    from ceiling import unpack

    release = unpack(commit, folder)
    env = dict(os.environ, PYTHONPATH=str(release.root))
    return in_child("the baseline's broker", ["--child", str(tasks)], env=env, cwd=folder)


def child(tasks: int) -> None:
    """Run inside the baseline's tree: its broker, no journal."""
    from fetchq.broker import Broker  # type: ignore[import-not-found]  # 073dcce's layout

    seconds = run_job(Broker(), tasks, sync_every_call=False)
    print(json.dumps({"seconds": seconds}))


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        child(int(sys.argv[2]))
        return
    if sys.argv[1:2] == ["--mode"]:
        mode, tasks, folder = sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
        print(json.dumps({"seconds": measure_here(tasks, mode, folder)}))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--baseline", default="073dcce", help="a commit ('' for none)")
    args = parser.parse_args()
    modes = ["no journal", SERVER_COLLECTOR, "journal (default fsync)", "journal, fsync every call"]
    runs: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="fetchq-journal-cost-") as scratch:
        for _ in range(args.repeat):  # interleaved, so every mode meets the same machine
            if args.baseline:
                runs.setdefault(f"{args.baseline}, no journal", []).append(
                    baseline(args.baseline, args.tasks, Path(scratch))
                )
            for mode in modes:
                runs.setdefault(mode, []).append(measure(args.tasks, mode, Path(scratch)))
    seconds = {mode: statistics.median(found) for mode, found in runs.items()}
    base = seconds["no journal"]
    print(f"{args.tasks} tasks through the broker (submit, lease, complete, read, confirm)")
    print(f"{'mode':<36} {'tasks/s':>10} {'us/task':>8} {'vs no journal':>14}")
    for mode, spent in seconds.items():
        rate = args.tasks / spent
        print(f"{mode:<36} {rate:>10.0f} {spent / args.tasks * 1e6:>8.2f} {base / spent:>13.2f}x")


if __name__ == "__main__":
    main()
