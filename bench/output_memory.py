"""Output's memory over a long run, and the time and size of its HTML report.

Runs output's own consuming path, ``collect()`` into the JSONL writer (to
/dev/null), the summary and ``--html``, in a child process per size, fed by
a fake broker client that makes results as a server would hand them out:
batches of 5,000, dense ids, 10,000 results per second of run time, eight
worker hosts, three busy target hosts and one result in ten to a host of
its own (a crawl), lognormal latencies, a few failures.  Only the client is
fake; every line of fetchq that output runs on results is the real one.

Prints each size's peak RSS (the child's ``ru_maxrss``), the ratio of each
to the 1,000,000-result run, results per second through the whole path, the
time to write the HTML report and its size.  With ``--chromium`` it also
opens the 1,000,000-result report in headless Chromium and times it (needs
the test extra and Debian's chromium).

    python bench/output_memory.py [--sizes 100000,1000000,10000000] [--chromium]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fetchq.commands.collect import collect
from fetchq.report.formats import JsonlWriter
from fetchq.report.htmlfile import HtmlReportFile
from fetchq.report.summary import Summary
from fetchq.wire.records import make_error, make_result, make_task

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
BATCH = 5000
RATE = 10_000.0
"""Results per second of (simulated) run time: 10M results span about 17 minutes."""
T0 = 1_700_000_000.0
ID_BASE = 7 << 32


class FakeBroker:
    """Answers ``results`` and ``ack`` as the server does, with made-up results."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.made = 0
        self.rng = random.Random(1)
        self.tasks = [
            make_task(0, "bench", f"http://10.0.0.{1 + host}:8080/", 1, 30.0, T0)
            for host in range(3)
        ]

    def call(self, method: str, *args: Any) -> Any:
        if method == "ack":
            return None
        assert method == "results", method
        count = min(BATCH, self.total - self.made)
        batch = [self._result(self.made + i) for i in range(count)]
        self.made += count
        return {"results": batch, "token": f"t{self.made}", "done": self.made >= self.total}

    def _result(self, i: int) -> dict[str, Any]:
        rng = self.rng
        crawl = i % 10 == 9
        url = f"http://site{i}.test/page" if crawl else f"http://10.0.0.{1 + i % 3}:8080/?q={i}"
        task = make_task(ID_BASE + i, "bench", url, 1, 30.0, T0)
        failed = i % 97 == 0
        return make_result(
            task,
            worker=f"worker-{i % 8}:{1000 + i % 4}",
            started=T0 + i / RATE,
            elapsed=rng.lognormvariate(math.log(0.02), 0.6),
            status=None if failed else (500 if i % 53 == 0 else 200),
            nbytes=512,
            error=make_error("timeout", "read timed out") if failed else None,
        )


def child(total: int, html_path: str) -> None:
    broker = FakeBroker(total)
    summary = Summary()
    page = HtmlReportFile(html_path)
    with open(os.devnull, "w") as sink:
        started = time.perf_counter()
        writer = JsonlWriter(sink)
        done = collect(broker, "bench", writer=writer, summary=summary, until_done=True)  # type: ignore[arg-type]
        collected = time.perf_counter() - started
    assert done.written == total, (done.written, total)
    started = time.perf_counter()
    page.write(summary, f"fetchq report: {total} results")
    html_seconds = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "results": total,
                "peak_rss_mib": peak_kib / 1024,
                "results_per_second": total / collected,
                "html_seconds": html_seconds,
                "html_bytes": os.path.getsize(html_path),
                "time_buckets": len(summary.timeline),
                "bucket_width": summary.timeline.width,
                "target_host_rows": len(summary.target_hosts),
            }
        )
    )


def open_in_chromium(path: str) -> dict[str, float]:
    sys.path.insert(0, str(REPO / "tests"))
    from browser import chromium, open_report

    with chromium() as browser, open_report(browser, Path(path)) as opened:
        opened.page.wait_for_selector("#chart-histogram .main-svg")
        timing = opened.page.evaluate(
            "() => { const n = performance.getEntriesByType('navigation')[0];"
            " return {load: n.loadEventEnd, dom: n.domContentLoadedEventEnd}; }"
        )
        assert opened.requests == [opened.url], opened.requests
        assert not opened.console_errors, opened.console_errors
    return {"load_ms": timing["load"], "dom_ms": timing["dom"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,1000000,10000000")
    parser.add_argument("--chromium", action="store_true", help="time opening the 1M report")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--html", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, args.html)
        return
    runs = []
    with tempfile.TemporaryDirectory(prefix="fetchq-bench-") as scratch:
        for size in (int(text) for text in args.sizes.split(",")):
            html = os.path.join(scratch, f"report-{size}.html")
            done = subprocess.run(
                [sys.executable, __file__, "--child", str(size), "--html", html],
                capture_output=True,
                text=True,
                check=True,
            )
            run = json.loads(done.stdout.strip().splitlines()[-1])
            runs.append(run)
            print(
                f"{size:>11,} results: peak RSS {run['peak_rss_mib']:7.1f} MiB, "
                f"{run['results_per_second']:8,.0f} results/s through collect, "
                f"HTML in {run['html_seconds']:.2f} s, {run['html_bytes'] / 1e6:.2f} MB "
                f"({run['time_buckets']} buckets of {run['bucket_width']:g} s, "
                f"{run['target_host_rows']} target-host rows)",
                flush=True,
            )
            if args.chromium and size == 1_000_000:
                opened = open_in_chromium(html)
                print(
                    f"{'':>11}  opened in headless Chromium: DOM ready {opened['dom_ms']:.0f} ms, "
                    f"loaded {opened['load_ms']:.0f} ms",
                    flush=True,
                )
    base = next((run for run in runs if run["results"] == 1_000_000), runs[0])
    for run in runs:
        ratio = run["peak_rss_mib"] / base["peak_rss_mib"]
        print(f"peak RSS at {run['results']:,} / at {base['results']:,}: {ratio:.2f}")


if __name__ == "__main__":
    main()
