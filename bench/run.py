"""fetchq's benchmarks, side by side with what users would otherwise pick.

    python bench/run.py [--quick] [--repeat N] [--json PATH] [--cases dispatch,workers,peers]

Starts everything it needs on 127.0.0.1 (an HTTP target, fetchq servers,
redis-server), runs every case --repeat times, interleaving the variants so
that they are measured back to back, and prints the medians, their ratios
and the issue's targets.  Peers that are not installed are skipped, and it
says so.  Every process it starts is stopped before it exits, Ctrl-C
included.

- target: nginx with the bench's own config when ``nginx`` is installed,
  else ``python -m fetchq.testing.target`` in its own process
- dispatch: ``fetchq dispatch --template --count N`` into a running server,
  over the JSON wire, over the pickle wire fetchq spoke before protocol 3
  (the baseline: bench/pickle_wire/), and inside mutual TLS; vs the classic
  tutorial transport (one ``put()`` per URL); the server's memory per queued
  task is read from the same runs
- workers: N tasks queued, then ``fetchq worker --burst`` (1 and 2 processes,
  JSON and pickle wire) and ``fetchq output --until-done --format none``,
  launch to last result;
  the same engine fed from an in-process list (the broker's cost); Locust
  ``HttpUser`` (1 and 2 processes) and ``FastHttpUser``; wrk and hey
- peers: the same GET job through RQ (``SimpleWorker``) and Celery (threads
  pool) on a redis-server of the bench's own
- wire: one client's logins/s and calls/s (``queued()``, one round trip
  each) over JSON, pickle and mutual TLS (bench/call_rate.py)
- cpu: CPU per GET on one thread through fetchq's ``Fetcher``, requests'
  ``Session.get`` (Locust's ``HttpUser``), requests' urllib3 pool and bare
  ``http.client`` (bench/fetch_cpu.py): where a worker's CPU goes
- storm: 1,000 and 3,000 clients released at once, each logs in and makes one call:
  ok, dropped, hung, the slowest, and the server's threads after (bench/connect_storm.py)
- ceiling: a synthetic fleet (no HTTP) through one server on a core of its own,
  this checkout against the release before pace and the JSON wire (073dcce,
  unpacked from the repository's history) in the same run: tasks/s and the
  server's CPU per task (bench/ceiling.py)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import ceiling
import connect_storm
import fetch_cpu
import fetchq_runs
import httptarget
import peer_classic
import peer_loadtools
import peer_locust
import peer_queues
import report
from harness import BENCH_DIR, PYTHON, BenchError, Processes, say

CASES = ("dispatch", "workers", "wire", "peers", "cpu", "storm", "ceiling")


@dataclass(frozen=True)
class Sizes:
    dispatch: int
    """URLs dispatched into a server (also the memory figure's queue)."""
    classic: int
    """URLs put() one by one through the classic transport."""
    worker: int
    """Tasks per worker run (and per in-process run)."""
    peer: int
    """Jobs per RQ / Celery run, and fetchq's run beside them."""
    cpu: int
    """GETs per client in the one-thread CPU case."""
    locust_seconds: float
    tool_seconds: float
    call_seconds: float
    """Seconds of logins, then of calls, per wire in the wire case."""
    concurrency: int
    """Fetch threads per fetchq worker process, Locust users per process,
    Celery threads; wrk/hey connections are twice this."""
    ceiling: int
    """Tasks through the synthetic fleet, per ceiling run."""
    storm: tuple[int, ...]
    """Clients released at once, one storm per figure."""
    aggregate: int
    """Requests of the aggregate job through the synthetic fleet, per ceiling run."""


FULL = Sizes(
    1_000_000, 20_000, 30_000, 5_000, 10_000, 10.0, 5.0, 3.0, 16, 300_000, (1000, 3000), 20_000_000
)
QUICK = Sizes(200_000, 5_000, 5_000, 500, 2_000, 3.0, 2.0, 1.0, 16, 50_000, (1000,), 2_000_000)


class Bench:
    def __init__(self, procs: Processes, target: httptarget.HttpTarget, sizes: Sizes) -> None:
        self.procs = procs
        self.target = target
        self.sizes = sizes
        self.runs: report.Runs = {}
        self.skipped: dict[str, str] = {}
        self.failed: dict[str, list[str]] = {}
        self.storms: report.Runs = {}
        """Storm outcomes, apart from ``runs``: counts of clients, not rates."""

    def skip(self, variant: str, reason: str) -> None:
        self.skipped[variant] = reason
        say(f"skipping {variant}: {reason}")

    def measure(
        self, case: str, variants: list[tuple[str, Callable[[], dict[str, Any]]]], repeat: int
    ) -> None:
        """Each variant ``repeat`` times, interleaved: A B C, A B C, ..."""
        for variant, _ in variants:
            self.runs.setdefault(variant, [])
        for n in range(repeat):
            for variant, run in variants:
                say(f"{case}: {variant} (run {n + 1} of {repeat})")
                started = time.perf_counter()
                try:
                    result = run()
                except Exception as exc:  # one broken peer must not sink the whole run
                    text = str(exc) if isinstance(exc, BenchError) else f"{exc!r}"
                    say(f"{variant} failed: {text}")
                    self.failed.setdefault(variant, []).append(text)
                    continue
                self.runs[variant].append(result)
                took = time.perf_counter() - started
                say(f"  {result['rate']:,.0f}/s ({took:.1f}s)")

    # -- the cases --------------------------------------------------------

    def dispatch(self, repeat: int) -> None:
        s = self.sizes
        variants = [
            ("fetchq dispatch", lambda: fetchq_runs.dispatch(self.procs, s.dispatch)),
            (
                "fetchq dispatch, pickle wire",
                lambda: fetchq_runs.dispatch(self.procs, s.dispatch, "pickle"),
            ),
            ("fetchq dispatch, TLS", lambda: fetchq_runs.dispatch(self.procs, s.dispatch, "tls")),
            (
                "classic put()",
                lambda: peer_classic.put_rate(self.procs, fetchq_runs.MEMORY_TEMPLATE, s.classic),
            ),
        ]
        self.measure("dispatch", variants, repeat)

    def workers(self, repeat: int) -> None:
        s, url = self.sizes, self.target.url
        variants: list[tuple[str, Callable[[], dict[str, Any]]]] = [
            (
                "fetchq 1 process",
                lambda: fetchq_runs.workers(
                    self.procs, url, s.worker, processes=1, concurrency=s.concurrency
                ),
            ),
            (
                "fetchq 2 processes",
                lambda: fetchq_runs.workers(
                    self.procs, url, s.worker, processes=2, concurrency=s.concurrency
                ),
            ),
            (
                "fetchq 1 process, pickle wire",
                lambda: fetchq_runs.workers(
                    self.procs, url, s.worker, processes=1, concurrency=s.concurrency, wire="pickle"
                ),
            ),
            (
                "fetchq 2 processes, pickle wire",
                lambda: fetchq_runs.workers(
                    self.procs, url, s.worker, processes=2, concurrency=s.concurrency, wire="pickle"
                ),
            ),
            (
                "fetchq 2 processes, aggregate",
                lambda: fetchq_runs.workers(
                    self.procs, url, s.worker, processes=2, concurrency=s.concurrency, spans=True
                ),
            ),
            (
                "in-process loop",
                lambda: fetchq_runs.inprocess(self.procs, url, s.worker, concurrency=s.concurrency),
            ),
        ]
        locust_missing = peer_locust.available()
        for user, processes in (("HttpUser", 1), ("HttpUser", 2), ("FastHttpUser", 1)):
            name = f"locust {user}" + (f" {processes} processes" if processes > 1 else "")
            if locust_missing:
                self.skip(name, locust_missing)
                continue
            variants.append((name, self._locust(user, processes)))
        for tool in peer_loadtools.TOOLS:
            tool_missing = peer_loadtools.available(tool)
            if tool_missing:
                self.skip(tool, tool_missing)
                continue
            variants.append((tool, self._tool(tool)))
        self.measure("workers", variants, repeat)

    def _locust(self, user: str, processes: int) -> Callable[[], dict[str, Any]]:
        s = self.sizes
        return lambda: peer_locust.run(
            self.procs,
            self.target.url,
            user,
            users=s.concurrency * processes,
            processes=processes,
            seconds=s.locust_seconds,
        )

    def _tool(self, tool: str) -> Callable[[], dict[str, Any]]:
        s = self.sizes
        return lambda: peer_loadtools.run(
            self.procs,
            tool,
            self.target.url,
            connections=2 * s.concurrency,
            seconds=s.tool_seconds,
        )

    def wire(self, repeat: int) -> None:
        seconds = self.sizes.call_seconds
        variants = [
            (f"calls, {wire}", lambda wire=wire: fetchq_runs.calls(self.procs, wire, seconds))
            for wire in ("json", "pickle", "tls")
        ]
        self.measure("wire", variants, repeat)

    def peers(self, repeat: int) -> None:
        s, url = self.sizes, self.target.url
        rq_missing = peer_queues.missing("rq")
        celery_missing = peer_queues.missing("celery")
        if rq_missing:
            self.skip("rq SimpleWorker", rq_missing)
        if celery_missing:
            self.skip("celery threads", celery_missing)
        if rq_missing and celery_missing:
            return
        try:
            redis = peer_queues.Redis(self.procs)
        except BenchError as exc:
            for name in ("rq SimpleWorker", "celery threads"):
                self.skip(name, f"redis-server did not start: {exc}")
            return
        try:
            variants: list[tuple[str, Callable[[], dict[str, Any]]]] = [
                (
                    "fetchq (peer job)",
                    lambda: fetchq_runs.workers(
                        self.procs, url, s.peer, processes=1, concurrency=s.concurrency
                    ),
                )
            ]
            if not rq_missing:
                variants.append(
                    ("rq SimpleWorker", lambda: peer_queues.rq_run(self.procs, redis, url, s.peer))
                )
            if not celery_missing:
                variants.append(
                    (
                        "celery threads",
                        lambda: peer_queues.celery_run(
                            self.procs, redis, url, s.peer, concurrency=s.concurrency
                        ),
                    )
                )
            self.measure("peers", variants, repeat)
        finally:
            redis.stop()

    def cpu(self, repeat: int) -> None:
        """One process measures every client in turn; repeated like the other cases."""
        command = [PYTHON, str(BENCH_DIR / "fetch_cpu.py"), self.target.url, str(self.sizes.cpu)]
        for n in range(repeat):
            say(f"cpu: CPU per GET, one thread (run {n + 1} of {repeat})")
            child = self.procs.start("fetch-cpu", command)
            try:
                child.wait_ok(timeout=self.sizes.cpu / 100 + 60)
                figures = json.loads(child.log.read_text().strip().splitlines()[-1])
            except BenchError as exc:
                say(f"cpu case failed: {exc}")
                self.failed.setdefault("cpu", []).append(str(exc))
                continue
            finally:
                self.procs.stop(child)
            for name, micros in figures.items():
                run = {"cpu_us": micros, "rate": 1e6 / micros}
                self.runs.setdefault(f"1 thread: {name}", []).append(run)
            say("  " + ", ".join(f"{name} {micros:.0f} us" for name, micros in figures.items()))
            post, get = figures.get(fetch_cpu.POST_CLIENT), figures.get("fetchq Fetcher.fetch")
            if post and get:
                say(f"  a POST of 1 KiB costs {post / get:.2f}x a GET")

    def storm(self, repeat: int) -> None:
        """Clients released at once against this checkout's server only;
        ``bench/connect_storm.py --baseline COMMIT`` runs the same storms against an
        earlier release, back to back."""
        chosen = connect_storm.variants(
            self.procs,
            ceiling.Release("main"),
            None,
            list(self.sizes.storm),
            connect_storm.PER_PROCESS,
        )
        for n in range(repeat):
            for name, run in chosen:
                say(f"{name} (run {n + 1} of {repeat})")
                try:
                    result = run()
                except BenchError as exc:
                    say(f"{name} failed: {exc}")
                    self.failed.setdefault(name, []).append(str(exc))
                    continue
                self.storms.setdefault(name, []).append(result)
                say("  " + connect_storm.line(name, result))

    def ceiling(self, repeat: int) -> None:
        """The server's own cost per task, against the baseline release in the same run."""
        try:
            baseline = ceiling.unpack(ceiling.BASELINE, self.procs.folder)
        except (BenchError, OSError, subprocess.SubprocessError) as exc:
            self.skip(f"ceiling: {ceiling.BASELINE}", str(exc))
            baseline = None
        variants = ceiling.variants(
            self.procs, ceiling.Release("main"), baseline, self.sizes.ceiling, self.sizes.aggregate
        )
        self.measure("ceiling", variants, repeat)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python bench/run.py",
        description=__doc__.split("\n\n")[0],
        epilog="Everything runs on 127.0.0.1; see the docstring of bench/run.py for the cases.",
    )
    parser.add_argument("--quick", action="store_true", help="small counts: about two minutes")
    parser.add_argument("--repeat", type=int, default=3, help="runs per variant (default 3)")
    parser.add_argument(
        "--json",
        type=Path,
        default=BENCH_DIR / "results" / "latest.json",
        help="where to write the results (default bench/results/latest.json)",
    )
    parser.add_argument(
        "--cases",
        default=",".join(CASES),
        help=f"comma-separated cases to run (default {','.join(CASES)})",
    )
    parser.add_argument(
        "--target",
        choices=("auto", "python"),
        default="auto",
        help="auto: nginx if installed, else fetchq.testing.target; python: always that",
    )
    args = parser.parse_args(argv)
    cases = [case.strip() for case in args.cases.split(",") if case.strip()]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}: choose from {', '.join(CASES)}")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    args.cases = cases
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = QUICK if args.quick else FULL
    # Ctrl-C even when started with SIGINT ignored (a background job); SIGTERM alike.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    load = os.getloadavg()[0]
    if load > 0.5:
        say(f"the machine is busy (load {load:.2f}): figures will be lower and noisier")
    began = time.perf_counter()
    record: dict[str, Any] = {
        "date": report.now_iso(),
        "git": report.git_state(),
        "machine": report.machine(),
        "versions": report.python_versions(),
        "load_before": round(load, 2),
        "settings": {"quick": args.quick, "repeat": args.repeat, **asdict(sizes)},
    }
    try:
        with (
            tempfile.TemporaryDirectory(prefix="fetchq-bench-") as folder,
            Processes(Path(folder)) as procs,
        ):
            target = httptarget.start_target(procs, prefer_nginx=args.target == "auto")
            if target.name != "nginx":
                why = "not installed" if args.target == "auto" else "not asked for"
                say(f"nginx {why}: the target is fetchq.testing.target, itself a bottleneck")
            say(f"target: {target.name} {target.version or ''} at {target.url}")
            record["target"] = {"name": target.name, "version": target.version}
            bench = Bench(procs, target, sizes)
            for case in CASES:
                if case in args.cases:
                    getattr(bench, case)(args.repeat)
    except KeyboardInterrupt:
        say("interrupted: every process the bench started has been stopped")
        return 130
    except BenchError as exc:
        say(f"could not run: {exc}")
        return 1

    record["versions"].update(_tool_versions(target))
    med = report.medians(bench.runs)
    rows = report.build_rows(med, bench.skipped)
    record.update(
        load_after=round(os.getloadavg()[0], 2),
        seconds=round(time.perf_counter() - began, 1),
        runs=bench.runs,
        storms=bench.storms,
        medians=med,
        skipped=bench.skipped,
        failed=bench.failed,
        table=[asdict(row) for row in rows],
    )
    report.write_json(args.json, record)

    machine = record["machine"]
    versions = record["versions"]
    print()
    print(
        f"fetchq {versions['fetchq']} bench, {record['date']}, {machine['nproc']} x "
        f"{machine['cpu_model']}, Python {versions['python']}, requests {versions['requests']}, "
        f"locust {versions['locust'] or '-'}"
    )
    print(
        f"target: {target.name} {target.version or ''}; medians of {args.repeat} runs; "
        f"concurrency {sizes.concurrency} per process; took {record['seconds']:.0f}s; "
        f"load {record['load_before']:.2f} before, {record['load_after']:.2f} after"
    )
    print()
    print(report.format_details(bench.runs, med))
    print()
    print(report.format_table(rows))
    for name, results in bench.storms.items():
        for result in results:
            print(connect_storm.line(name, result))
    for variant, reason in bench.skipped.items():
        print(f"skipped {variant}: {reason}")
    for variant, errors in bench.failed.items():
        print(f"FAILED {variant}: {len(errors)} run(s): {errors[0].splitlines()[0]}")
    if args.quick:
        print("--quick: small counts, so start-up weighs heavily; judge targets on a full run")
    print(f"\nresults written to {args.json}")
    return 1 if bench.failed else 0


def _tool_versions(target: httptarget.HttpTarget) -> dict[str, str | None]:
    found: dict[str, str | None] = {"target": f"{target.name} {target.version or ''}".strip()}
    found.update(peer_queues.versions())
    for tool in peer_loadtools.TOOLS:
        found[tool] = peer_loadtools.version(tool) if not peer_loadtools.available(tool) else None
    return found


if __name__ == "__main__":
    sys.exit(main())
