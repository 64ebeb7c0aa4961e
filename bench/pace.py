"""A fleet-wide rate at 50% and 90% of what this box can do: achieved rate and lateness.

Starts a target (nginx when installed, else fetchq's own), a server, and two
worker processes; measures the box's capacity with a job that has no rate;
then runs a job at 50% and at 90% of that capacity for ``--seconds`` each
and prints, from the results ``fetchq output`` wrote, the rate achieved
over the middle of the run and the p50/p99 of start lateness (``started -
scheduled``, both on the worker's clock).

    python bench/pace.py [--seconds 20] [--workers 2] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path
from typing import Any

from harness import Fetchq, Processes, say
from httptarget import start_target


def run_job(
    fq: Fetchq, address: str, url: str, name: str, count: int, rate: float | None
) -> list[dict[str, Any]]:
    out = fq.procs.folder / f"{name}.jsonl"
    dispatch = ["dispatch", "--template", f"{url}/?{name}={{i}}", "--count", str(count)]
    if rate is not None:
        dispatch += ["--rate", f"{rate:.3f}"]
    fq.run(address, *dispatch, "-j", name)
    fq.run(address, "output", "-j", name, "--until-done", "--format", "jsonl", "--out", str(out))
    return [json.loads(line) for line in out.read_text().splitlines()]


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def achieved(results: list[dict[str, Any]]) -> float:
    """Starts per second between 10% and 90% of the run (start-up and tail left out)."""
    starts = sorted(r["started"] for r in results)
    low, high = starts[len(starts) // 10], starts[len(starts) * 9 // 10]
    return (len(starts) * 8 // 10) / (high - low)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, Processes(Path(folder)) as procs:
        target = start_target(procs)
        fq = Fetchq(procs)
        with fq.server() as (address, _):
            for n in range(args.workers):
                fq.start(
                    f"worker-{n}", "worker", "--concurrency", str(args.concurrency), server=address
                )
            say(f"target {target.name}; measuring capacity")
            flat = run_job(fq, address, target.url, "capacity", 20_000, None)
            capacity = achieved(flat)
            say(f"capacity {capacity:,.0f}/s")
            rows = []
            for share in (0.5, 0.9):
                rate = capacity * share
                results = run_job(
                    fq,
                    address,
                    target.url,
                    f"rate{int(share * 100)}",
                    int(rate * args.seconds),
                    rate,
                )
                lateness = [r["started"] - r["scheduled"] for r in results]
                rows.append((share, rate, achieved(results), lateness))
    print(
        f"capacity (no rate, {args.workers} workers x {args.concurrency} threads, "
        f"target {target.name}): {capacity:,.0f} requests/s"
    )
    print(
        f"{'share':>6} {'target/s':>10} {'achieved/s':>11} {'ratio':>6} "
        f"{'late p50':>9} {'late p99':>9}"
    )
    for share, rate, got, lateness in rows:
        print(
            f"{share:>6.0%} {rate:>10,.0f} {got:>11,.0f} {got / rate:>6.3f} "
            f"{percentile(lateness, 50) * 1000:>7.2f}ms {percentile(lateness, 99) * 1000:>7.2f}ms"
        )


if __name__ == "__main__":
    main()
