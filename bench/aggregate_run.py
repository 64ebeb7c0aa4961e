"""The same load test as a plain job and as an aggregate job, on this machine: worker
throughput of each, the server's CPU per request, and the two reports side by side;
then an aggregate job paced at half the aggregate throughput, and the rate it held.

    python bench/aggregate_run.py [--count 100000] [--repeat 3] [--paced 20] [--json PATH]

Two worker processes (16 fetch threads each) against nginx (or fetchq's own
target when nginx is missing) on 127.0.0.1; ``fetchq output --summary`` collects
each job.  The two kinds of job take turns, ``--repeat`` times, and the medians
are printed; the reports are those of the last round.  The paced job runs for
``--paced`` seconds (0: not at all).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import httptarget
from harness import Fetchq, Processes, cpu_seconds, median, say

REPORT_LINES = ("Requests:", "Rate:", "Success:", "mean:", "p50:", "p90:", "p99:", "max:")
"""The lines of the text summary set side by side."""


def one_run(procs: Processes, url: str, count: int, aggregate: bool) -> dict[str, Any]:
    fq = Fetchq(procs)
    with fq.server("--max-pending", str(count + 1)) as (address, server):
        job = ("--template", url + "/?q={i}", "--count", str(count), "--job", "load")
        fq.run(address, "dispatch", *job, *(("--aggregate",) if aggregate else ()))
        output = fq.start(
            "fetchq-output", "output", "--job", "load", "--until-done", "--summary",
            "--format", "none", server=address,
        )  # fmt: skip
        before = cpu_seconds(server.pid)
        worker = fq.start(
            "fetchq-worker", "worker", "--burst", "--processes", "2", "--concurrency", "16",
            server=address,
        )  # fmt: skip
        collected = output.wait_ok(count / 100 + 120)
        seconds = collected.seconds - (worker.started - output.started)
        server_cpu = cpu_seconds(server.pid) - before
        worker.wait_ok(60)
    report = output.log.read_text()
    return {
        "count": count,
        "rate": count / seconds,
        "server_us_per_request": server_cpu / count * 1e6,
        "report": [line.strip() for line in report.splitlines() if line.strip()],
    }


def paced_run(procs: Processes, url: str, rate: float, seconds: int) -> dict[str, Any]:
    """An aggregate job at ``rate`` for ``seconds``: the rate its report says it held
    (requests over the time from the first start to the last end) and its late starts."""
    fq = Fetchq(procs)
    count = int(rate * seconds)
    with fq.server("--max-pending", str(count + 1)) as (address, _):
        worker = fq.start(
            "fetchq-worker", "worker", "--processes", "2", "--concurrency", "16",
            server=address,
        )  # fmt: skip
        job = ("--template", url + "/?q={i}", "--rate", f"{rate:.0f}/s", "--count", str(count))
        fq.run(address, "dispatch", *job, "--aggregate", "--job", "paced")
        output = fq.start(
            "fetchq-output", "output", "--job", "paced", "--until-done", "--summary",
            "--format", "none", server=address,
        )  # fmt: skip
        output.wait_ok(seconds + 120)
        procs.stop(worker)
    report = [line.strip() for line in output.log.read_text().splitlines() if line.strip()]
    held = next(line for line in report if line.startswith("Rate:"))
    late = next((line for line in report if line.startswith("Late starts:")), "Late starts: -")
    achieved = float(re.sub(r"[^0-9.]", "", held.split()[1]))
    return {"rate": rate, "count": count, "achieved": achieved, "late": late, "report": report}


def side_by_side(plain: list[str], aggregate: list[str]) -> list[str]:
    """The report lines both runs have, plain on the left."""

    def pick(lines: list[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for line in lines:
            for key in REPORT_LINES:
                if line.startswith(key) and key not in found:
                    found[key] = re.sub(r"\s+", " ", line[len(key) :]).strip()
        return found

    left, right = pick(plain), pick(aggregate)
    rows = [f"{'':<10} {'plain job':<36} aggregate job"]
    rows += [f"{key:<10} {left.get(key, '-'):<36} {right.get(key, '-')}" for key in REPORT_LINES]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--paced", type=int, default=20, help="seconds of the paced job")
    parser.add_argument("--json", type=Path, help="also write the runs here")
    args = parser.parse_args(argv)
    runs: dict[str, list[dict[str, Any]]] = {"plain": [], "aggregate": []}
    with (
        tempfile.TemporaryDirectory(prefix="fetchq-aggregate-") as folder,
        Processes(Path(folder)) as procs,
    ):
        target = httptarget.start_target(procs)
        for n in range(args.repeat):
            for kind in runs:
                say(f"{kind} job, {args.count} requests (run {n + 1} of {args.repeat})")
                run_folder = Path(folder) / f"{kind}-{n}"
                run_folder.mkdir()
                with Processes(run_folder) as run_procs:
                    result = one_run(run_procs, target.url, args.count, kind == "aggregate")
                runs[kind].append(result)
                say(f"  {result['rate']:,.0f} requests/s")
        half = median([r["rate"] for r in runs["aggregate"]]) / 2
        if args.paced:
            say(f"aggregate job at {half:,.0f}/s, half its throughput, for {args.paced} s")
            paced_folder = Path(folder) / "paced"
            paced_folder.mkdir()
            with Processes(paced_folder) as run_procs:
                paced = paced_run(run_procs, target.url, half, args.paced)
    plain_rate = median([r["rate"] for r in runs["plain"]])
    aggregate_rate = median([r["rate"] for r in runs["aggregate"]])
    for kind, rate in (("plain", plain_rate), ("aggregate", aggregate_rate)):
        server = median([r["server_us_per_request"] for r in runs[kind]])
        print(f"{kind + ' job':<15} {rate:>9,.0f} requests/s   server {server:.2f} us/request")
    print(f"aggregate / plain: x{aggregate_rate / plain_rate:.2f} worker throughput")
    if args.paced:
        held = paced["achieved"] / paced["rate"]
        print(
            f"paced aggregate: {paced['rate']:,.0f}/s asked, {paced['achieved']:,.1f}/s held"
            f" (x{held:.4f}); {paced['late']}"
        )
    print()
    print("\n".join(side_by_side(runs["plain"][-1]["report"], runs["aggregate"][-1]["report"])))
    if args.json:
        saved: dict[str, Any] = {**runs, **({"paced": paced} if args.paced else {})}
        args.json.write_text(json.dumps(saved, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
