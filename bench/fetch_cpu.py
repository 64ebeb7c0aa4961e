"""Where a worker's CPU goes: CPU per GET, one thread, for each layer of the HTTP stack.

Runs the same keep-alive GETs through fetchq's ``Fetcher`` (and POSTs of 1 KiB, a
task with a spec, beside them), through
``requests.Session.get`` (what Locust's ``HttpUser`` calls), through the
urllib3 pool that requests' own adapter holds, and through bare
``http.client``, one thread and no queue, so the figure is the client's CPU
alone and hardly moved by other load on the machine.

    python bench/fetch_cpu.py URL COUNT [--profile]

prints one JSON object: CPU microseconds per request for each client, the median of
5 rounds in which the clients take turns;
``--profile`` also prints cProfile's top functions for ``Fetcher.fetch``.
"""

from __future__ import annotations

import cProfile
import http.client
import json
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import requests

from fetchq.fetch import Fetcher
from fetchq.fetch.fetcher import outgoing
from fetchq.wire.records import make_task
from fetchq.wire.specs import Spec

POST_BODY = 1024
POST_CLIENT = "fetchq Fetcher.fetch, POST of 1 KiB"
"""A task with a spec: what a load test of a write path sends (at most 10% dearer than
a GET is the aim)."""

WARM_UP = 200
ROUNDS = 5
"""Turns each client takes, one after the other, COUNT / ROUNDS GETs each."""


def cpu_per_call(call: Callable[[int], None], count: int) -> float:
    """CPU microseconds per call, after a warm-up that opens the connections."""
    for i in range(WARM_UP):
        call(i)
    started = time.process_time()
    for i in range(count):
        call(i)
    return (time.process_time() - started) / count * 1e6


def clients(base: str) -> dict[str, Callable[[int], None]]:
    fetcher = Fetcher("bench:0")
    session = requests.Session()
    session.get(base + "/").close()
    pool = session.get_adapter(base).poolmanager.connection_from_url(base)
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port)

    def fetchq_fetcher(i: int) -> None:
        result = fetcher.fetch(make_task(i, "cpu", f"{base}/?q={i}", 1, 30.0, 0.0))
        assert result["ok"], result

    post = make_task(0, "cpu", "", 1, 30.0, 0.0)
    post["spec"] = outgoing(
        Spec("POST", (("Content-Type", "application/octet-stream"),), bytes(POST_BODY))
    )

    def fetchq_fetcher_post(i: int) -> None:
        result = fetcher.fetch({**post, "id": i, "url": f"{base}/?q={i}"})
        assert result["ok"], result

    def requests_session(i: int) -> None:
        reply = session.get(f"{base}/?q={i}")
        assert reply.ok and reply.content

    def urllib3_pool(i: int) -> None:
        reply = pool.urlopen(
            "GET", f"/?q={i}", preload_content=False, retries=False, redirect=False
        )
        while reply.read1(65536):
            pass
        reply.release_conn()

    def bare_http_client(i: int) -> None:
        conn.request("GET", f"/?q={i}")
        reply = conn.getresponse()
        assert reply.status == 200 and reply.read()

    return {
        "fetchq Fetcher.fetch": fetchq_fetcher,
        POST_CLIENT: fetchq_fetcher_post,
        "requests Session.get": requests_session,
        "urllib3 pool of requests' adapter": urllib3_pool,
        "http.client": bare_http_client,
    }


def main() -> None:
    base, count = sys.argv[1], int(sys.argv[2])
    calls = clients(base)
    if "--profile" in sys.argv[3:]:
        profile = cProfile.Profile()
        profile.runcall(cpu_per_call, calls["fetchq Fetcher.fetch"], count)
        stats = pstats.Stats(profile, stream=sys.stderr)
        stats.sort_stats("cumulative").print_stats(30)
    # Rounds, each client's turn in each, and the median of each client's rounds: a
    # machine that speeds up or slows down during the run meets every client alike.
    rounds: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(ROUNDS):
        for name, call in calls.items():
            rounds[name].append(cpu_per_call(call, max(1, count // ROUNDS)))
    print(json.dumps({name: statistics.median(found) for name, found in rounds.items()}))


if __name__ == "__main__":
    main()
