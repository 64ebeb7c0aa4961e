"""The Celery app for the task-queue comparison: Redis broker and result backend.

The worker is started as ``celery -A peer_celery_app worker --pool threads``
with ``BENCH_REDIS_URL`` naming the bench's own redis-server.
"""

from __future__ import annotations

import os
from typing import Any

import peer_jobs
from celery import Celery

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")

app = Celery("peer_celery_app", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    task_default_queue="bench",
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    task_serializer="json",
    result_serializer="json",
)


@app.task(name="bench.fetch")
def fetch(url: str) -> dict[str, Any]:
    return peer_jobs.fetch(url)
