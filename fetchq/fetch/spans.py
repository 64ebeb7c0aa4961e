"""A span of an aggregate job, run by a worker: its requests, and the one record they
come to.

The worker expands the span into its requests, its fetch threads fetch them as
any others, and each result goes into the span's summary instead of onto the
wire.  When the last one is in, the span's aggregate record is what the worker
reports for it (see ``fetchq.wire.aggregates``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import msgspec

from fetchq.report.summary import Summary
from fetchq.wire.aggregates import Aggregate, Span


class SpanRun:
    """One span being fetched.  Its requests are ``(run, task)`` pairs on the worker's
    queue; ``add`` counts a result and, for the last one, returns the span's record."""

    def __init__(self, task: dict[str, Any], worker: str) -> None:
        """``task``: the leased span's record; raises ValueError when it holds no span."""
        self.task = task
        self.worker = worker
        self.span = msgspec.convert(task.get("span"), Span)
        self.summary = Summary()
        self.left = self.span.count
        self.ok = 0
        self.abandoned = False
        """Handed back (the worker is stopping): its last results are not reported."""
        self._lock = threading.Lock()

    @property
    def id(self) -> int:
        return int(self.task["id"])

    def requests(self) -> Iterator[tuple[SpanRun, dict[str, Any]]]:
        """Each request as a task record a ``Fetcher`` takes, paired with this run."""
        base = {key: self.task.get(key) for key in ("v", "id", "job", "attempt", "timeout")}
        base["submitted"] = self.task.get("submitted")
        for url in self.span.urls():
            yield self, {**base, "url": url}

    def add(self, result: dict[str, Any]) -> dict[str, Any] | None:
        """Count one request's result; the span's record once all are in (None before,
        and None for good once the span was handed back)."""
        with self._lock:
            self.summary.add(result)
            self.ok += bool(result.get("ok"))
            self.left -= 1
            if self.left or self.abandoned:
                return None
        return self.record()

    def record(self) -> dict[str, Any]:
        """The span's aggregate record, as JSON types (any encoder writes it)."""
        task, count = self.task, self.span.count
        record = Aggregate(
            id=self.id,
            job=str(task.get("job")),
            attempt=int(task.get("attempt") or 1),
            worker=self.worker,
            first=self.span.first,
            requests=count,
            ok=self.ok,
            failed=count - self.ok,
            summary=self.summary.to_state(),
        )
        built: dict[str, Any] = msgspec.to_builtins(record)
        return built
