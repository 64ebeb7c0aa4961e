"""Server memory per queued task: RSS of a real server before and after a big dispatch.

Starts ``fetchq server`` (no journal) on a free loopback port, reads its
resident set size, dispatches ``--tasks`` URLs with ``fetchq dispatch
--template`` (no workers, so they all stay queued), reads it again, and prints
the bytes per queued task and the dispatch rate.

    python bench/server_memory.py [--tasks 1000000]
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        match = re.search(r"VmRSS:\s+(\d+) kB", status.read())
    assert match, "no VmRSS in /proc status"
    return int(match.group(1)) * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    args = parser.parse_args()
    env = dict(os.environ, FETCHQ_AUTHKEY=secrets.token_urlsafe(24))
    env["XDG_CONFIG_HOME"] = tempfile.mkdtemp()
    server = subprocess.Popen(
        [sys.executable, "-m", "fetchq", "server", "--port", "0"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stderr is not None
        address = None
        for line in server.stderr:
            match = re.search(r"listening on (\S+)", line)
            if match:
                address = match.group(1)
                break
        assert address, "the server did not start"
        env["FETCHQ_SERVER"] = address
        before = rss_bytes(server.pid)
        started = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "fetchq",
                "dispatch",
                "--template",
                "http://127.0.0.1:9/item?id={i}",
                "--count",
                str(args.tasks),
                "--job",
                "memory",
            ],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=600,
        )
        seconds = time.perf_counter() - started
        after = rss_bytes(server.pid)
    finally:
        server.terminate()
        server.wait(30)
    url_length = len(f"http://127.0.0.1:9/item?id={args.tasks // 2}")
    print(
        f"server RSS: {before / 2**20:.1f} MiB empty, {after / 2**20:.1f} MiB with "
        f"{args.tasks} queued tasks (URLs of about {url_length} characters)"
    )
    print(f"memory per queued task: {(after - before) / args.tasks:.0f} bytes")
    print(f"dispatch: {args.tasks / seconds:,.0f} tasks/s ({seconds:.2f}s, including start-up)")


if __name__ == "__main__":
    main()
