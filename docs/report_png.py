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
import os
import re
import secrets
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from fetchq.target import Target

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent / "tests"))

from browser import chromium, open_report  # noqa: E402

RATE = "180/s"
"""About what two workers of four threads can do with these pages: some starts run late."""


def fetchq(*args: str) -> list[str]:
    return [sys.executable, "-m", "fetchq", *args]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
    env = {k: v for k, v in os.environ.items() if not k.startswith("FETCHQ_")}
    env.update(FETCHQ_AUTHKEY=secrets.token_urlsafe(24), XDG_CONFIG_HOME=str(scratch))
    with Target() as first, Target(host="127.0.0.2") as second:
        server = subprocess.Popen(
            fetchq("server", "--port", "0"), env=env, stderr=subprocess.PIPE, text=True
        )
        workers: list[subprocess.Popen[str]] = []
        try:
            assert server.stderr is not None
            for line in server.stderr:
                match = re.search(r"listening on (\S+)", line)
                if match:
                    env["FETCHQ_SERVER"] = match.group(1)
                    break
            workers = [
                subprocess.Popen(fetchq("worker", "--concurrency", "4"), env=env) for _ in range(2)
            ]
            urls = "\n".join(job_urls(first, second)) + "\n"
            subprocess.run(
                fetchq("dispatch", "-", "-j", "docs", "--attempts", "1", "--rate", RATE),
                env=env,
                input=urls,
                text=True,
                check=True,
            )
            report = scratch / "report.html"
            subprocess.run(
                fetchq(
                    "output",
                    "-j",
                    "docs",
                    "--until-done",
                    "--format",
                    "none",
                    "--summary",
                    "--html",
                    str(report),
                ),
                env=env,
                check=True,
            )
        finally:
            for process in [*workers, server]:
                process.terminate()
                process.wait(30)
    with chromium() as browser, open_report(browser, report) as opened:
        opened.page.wait_for_selector("#chart-histogram .main-svg")
        opened.page.screenshot(path=str(args.out), full_page=True)
        assert opened.requests == [opened.url] and not opened.console_errors
    print(f"wrote {args.out} from {report}")


if __name__ == "__main__":
    main()
