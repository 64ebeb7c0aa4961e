"""The GET job the task-queue peers run: what a fetchq worker does for one task.

Each thread keeps its own keep-alive ``requests.Session`` (as fetchq's fetch
threads do), and the job returns a small timing result.  RQ and Celery
workers import this module (``bench/`` is on their ``PYTHONPATH``).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import requests

_local = threading.local()


def fetch(url: str) -> dict[str, Any]:
    session = getattr(_local, "session", None)
    if session is None:
        session = _local.session = requests.Session()
    started = time.time()
    t0 = time.perf_counter()
    reply = session.get(url, timeout=30)
    return {
        "url": url,
        "status": reply.status_code,
        "ok": reply.ok,
        "bytes": len(reply.content),
        "elapsed": time.perf_counter() - t0,
        "started": started,
    }
