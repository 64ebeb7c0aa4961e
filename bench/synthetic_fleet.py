"""One process of a synthetic fleet: threads that lease tasks and report made-up
results, with no HTTP, so that the server's own cost per task is all that is measured.

    FETCHQ_AUTHKEY=... python bench/synthetic_fleet.py HOST:PORT --threads 8 --batch 100

It runs against whichever fetchq comes first on ``sys.path``: this checkout, or an
older release that ``bench/ceiling.py`` unpacked from the repository's history, so
that one script drives both sides of a comparison.  Each thread leases up to
``--batch`` tasks, turns each into an ok result at once, and reports them in one
call; it stops after ``--idle`` seconds without a task.  Prints one JSON line: the
tasks this process reported, and when (Unix time) its first lease brought a task.

With ``--spans N`` it runs an aggregate job's spans instead: it says in ``hello``
that it runs them, and reports each as one aggregate of N quick 200s, its summary
made once from made-up timings; ``reported`` then counts requests.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
import time
from typing import Any


def broker_client(
    address: str, authkey: bytes, introduce: dict[str, Any] | None = None
) -> tuple[Any, bool]:
    """A connected client of this fetchq, and whether ``complete`` takes renewals;
    ``introduce``: what it says of itself in ``hello`` (a fetchq that knows of it)."""
    from fetchq.config import parse_address

    try:  # 2026-12 and later: packages by layer
        from fetchq.wire.client import BrokerClient
    except ImportError:
        try:
            from fetchq.client import BrokerClient  # type: ignore[no-redef]
        except ImportError:  # 073dcce: the client lived beside the server
            from fetchq.protocol import BrokerClient  # type: ignore[no-redef]
    if introduce:
        client = BrokerClient(parse_address(address), authkey, introduce=introduce)
    else:
        client = BrokerClient(parse_address(address), authkey)
    info = client.connect()
    return client, int(info.get("protocol", 0)) >= 3


def made_up_result(task: dict[str, Any], worker: str, now: float) -> dict[str, Any]:
    """What a worker would send for a quick 200: every field a result has."""
    return {
        "v": 1,
        "id": task["id"],
        "job": task["job"],
        "url": task["url"],
        "ok": True,
        "status": 200,
        "elapsed": 0.000321,
        "bytes": 612,
        "error": None,
        "attempt": task.get("attempt", 1),
        "worker": worker,
        "started": now,
    }


def made_up_summary(count: int) -> dict[str, Any]:
    """The summary state of a span of ``count`` quick 200s from one worker to one host,
    as a worker would send it: latencies spread as a real target's are."""
    import random

    import msgspec

    from fetchq.report.summary import Summary

    rng = random.Random(1)
    summary = Summary()
    now = time.time()
    for n in range(count):
        started = now + n * 0.0003
        summary.add(
            {
                "id": n,
                "url": "http://127.0.0.1:9/ceiling",
                "ok": True,
                "status": 200,
                "elapsed": rng.lognormvariate(-6, 0.6),
                "bytes": 612,
                "error": None,
                "attempt": 1,
                "worker": "fleet:1",
                "started": started,
            }
        )
    state: dict[str, Any] = msgspec.to_builtins(summary.to_state())
    return state


def made_up_aggregate(task: dict[str, Any], worker: str, summary: dict[str, Any]) -> dict[str, Any]:
    """What a worker would send for the span ``task``: every request a quick 200."""
    count = task["span"]["count"]
    return {
        "v": 1,
        "kind": "aggregate",
        "id": task["id"],
        "job": task["job"],
        "attempt": task.get("attempt", 1),
        "worker": worker,
        "first": task["span"]["first"],
        "requests": count,
        "ok": count,
        "failed": 0,
        "summary": summary,
    }


def run_thread(
    client: Any,
    worker: str,
    batch: int,
    idle: float,
    renews: bool,
    done: list[int],
    first: list[float],
    summary: dict[str, Any] | None = None,
) -> None:
    """``summary``: run spans, reporting each as an aggregate with this summary."""
    reported = 0
    last_task = time.monotonic()
    while time.monotonic() - last_task < idle:
        tasks = client.call("lease", worker, batch, min(1.0, idle))
        if not tasks:
            continue
        if not first:
            first.append(time.time())
        last_task = time.monotonic()
        now = time.time()
        if summary is not None:
            results = [made_up_aggregate(task, worker, summary) for task in tasks]
            reported += sum(result["requests"] for result in results)
        else:
            results = [made_up_result(task, worker, now) for task in tasks]
            reported += len(results)
        if renews:
            client.call("complete", worker, results, [])
        else:
            client.call("complete", worker, results)
    done.append(reported)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("address")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--idle", type=float, default=2.0, help="seconds without a task: stop")
    parser.add_argument(
        "--spans", type=int, default=0, metavar="N", help="run spans of N requests (aggregates)"
    )
    args = parser.parse_args()
    worker = f"{socket.gethostname()}:{os.getpid()}"
    introduce = None
    if args.spans:  # a worker that runs spans says so, and is leased them
        introduce = {"worker": worker, "threads": args.threads, "runs": ["span"]}
    summary = made_up_summary(args.spans) if args.spans else None
    client, renews = broker_client(args.address, os.environ["FETCHQ_AUTHKEY"].encode(), introduce)
    done: list[int] = []
    first: list[float] = []
    threads = [
        threading.Thread(
            target=run_thread,
            args=(client, worker, args.batch, args.idle, renews, done, first, summary),
        )
        for _ in range(args.threads)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(json.dumps({"reported": sum(done), "first_task": min(first, default=None)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
