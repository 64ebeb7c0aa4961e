"""Make docs/report.png: the HTML report of a real run, photographed in headless Chromium.

Starts two HTTP targets (127.0.0.1 and 127.0.0.2), a server on a free
loopback port with a fresh key, two workers, and dispatches a job of slow
pages, error statuses and refused connections at a rate close to what the
workers can do; ``fetchq output --html``
writes the report, and Debian's Chromium (through tests/browser.py) takes a
full-page screenshot.  Everything stays on this machine.

    python docs/report_png.py [--out docs/report.png]
"""

from __future__ import annotations

import argparse
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

from fetchq.testing.target import Target

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent / "tests"))

# The tests' own helpers: a server whose log is drained, processes stopped for sure.
from browser import chromium, open_report  # noqa: E402
from fetchq_procs import ServerProcess, clean_env, fetchq_command, start_worker, stop_all  # noqa: E402
from worker_scenarios import closed_port  # noqa: E402

RATE = "180/s"
"""About what two workers of four threads can do with these pages: some starts run late."""


def job_urls(first: Target, second: Target) -> list[str]:
    urls = []
    refused = f"http://127.0.0.1:{closed_port()}/"
    for i in range(4000):
        if i % 100 == 7:
            urls.append(f"{first.url}/status/500?i={i}")
        elif i % 150 == 11:
            urls.append(f"{first.url}/status/404?i={i}")
        elif i % 400 == 13:
            urls.append(f"{refused}?i={i}")
        elif i % 3 == 0:
            urls.append(f"{second.url}/slow?s={0.05 + 0.01 * (i % 5):.2f}&i={i}")
        else:
            urls.append(f"{first.url}/slow?s={0.004 * (1 + i % 8):.3f}&i={i}")
    return urls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DOCS / "report.png")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="fetchq-docs-"))
    env = clean_env(scratch, secrets.token_urlsafe(24))
    report = scratch / "report.html"
    with Target() as first, Target(host="127.0.0.2") as second:
        server = ServerProcess(env)
        env["FETCHQ_SERVER"] = server.address
        workers: list[subprocess.Popen[str]] = []
        try:
            workers = [start_worker(env, "--concurrency", "4")[0] for _ in range(2)]
            urls = "\n".join(job_urls(first, second)) + "\n"
            dispatch = ["dispatch", "-", "-j", "docs", "--attempts", "1", "--rate", RATE]
            subprocess.run(fetchq_command(*dispatch), env=env, input=urls, text=True, check=True)
            output = ["output", "-j", "docs", "--until-done", "--format", "none", "--summary"]
            subprocess.run(fetchq_command(*output, "--html", str(report)), env=env, check=True)
        finally:
            stop_all(workers)
            server.stop()
    with chromium() as browser, open_report(browser, report) as opened:
        opened.page.wait_for_selector("#chart-histogram .main-svg")
        opened.page.screenshot(path=str(args.out), full_page=True)
        assert opened.requests == [opened.url] and not opened.console_errors
    print(f"wrote {args.out} from {report}")


if __name__ == "__main__":
    main()
