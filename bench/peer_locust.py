"""Locust against the target: ``HttpUser`` and ``FastHttpUser``, headless, no wait time.

The rate is Locust's own: requests counted over the time its users ran (from
its ``--json`` stats), so Locust's start-up is not held against it.
"""

from __future__ import annotations

import importlib.util
import json
from typing import Any

from harness import BENCH_DIR, PYTHON, BenchError, Processes

USER_CLASSES = {"HttpUser": "Requests", "FastHttpUser": "Fast"}


def available() -> str | None:
    """Why Locust cannot run here, or None when it can."""
    if importlib.util.find_spec("locust") is None:
        return "locust is not installed (pip install -e '.[bench]')"
    return None


def run(
    procs: Processes,
    url: str,
    user: str,
    *,
    users: int,
    processes: int,
    seconds: float,
) -> dict[str, Any]:
    command = [
        PYTHON,
        "-m",
        "locust",
        "-f",
        str(BENCH_DIR / "locustfile.py"),
        "--headless",
        "--users",
        str(users),
        "--spawn-rate",
        str(max(users, 100)),
        "--run-time",
        f"{seconds:g}s",
        "--stop-timeout",
        "5",
        "--host",
        url,
        "--only-summary",
        "--json",
        "--loglevel",
        "ERROR",
    ]
    if processes > 1:
        command += ["--processes", str(processes)]
    command.append(USER_CLASSES[user])
    child = procs.start(f"locust-{user}-{processes}", command)
    try:
        finished = child.wait(seconds + 60)
        if finished.code not in (0, 1):  # 1: some requests failed, checked below
            raise BenchError(f"locust exited with {finished.code}:\n{child.tail()}")
        stats = _stats(child.log.read_text(errors="replace"))
    finally:
        procs.stop(child)
    requests = sum(entry["num_requests"] for entry in stats)
    failures = sum(entry["num_failures"] for entry in stats)
    began = min(entry["start_time"] for entry in stats)
    ended = max(entry["last_request_timestamp"] for entry in stats)
    if requests == 0 or failures:
        raise BenchError(f"locust {user}: {requests} requests, {failures} failures")
    return {
        "requests": requests,
        "seconds": ended - began,
        "rate": requests / (ended - began),
        "cpu_per_request_us": finished.cpu / requests * 1e6,
    }


def _stats(output: str) -> list[dict[str, Any]]:
    """The JSON list Locust prints, found in its mixed output."""
    start = output.find("[\n")
    end = output.find("\n]", start)
    if start < 0 or end < 0:
        raise BenchError(f"no JSON stats in Locust's output:\n{output[-2000:]}")
    return json.loads(output[start : end + 2])
