"""A span of an aggregate job, run by a worker: its requests, and the one record they
come to.

The worker expands the span into its requests, its fetch threads fetch them as
any others, and each result goes into the span's summary instead of onto the
wire.  When the last one is in, the span's aggregate record is what the worker
reports for it (see ``fetchq.wire.aggregates``).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from typing import Any

import msgspec

from fetchq.report.summary import Summary
from fetchq.wire.aggregates import Aggregate, Span


class SpanRun:
    """One span being fetched.  Its requests are ``(run, task)`` pairs on the worker's
    queue; ``add`` counts a result and, for the last one, returns the span's record.

    Each fetch thread sums its results into a summary of its own, so no lock is
    taken per request (one held across a summary's update would make the threads
    queue on it); the thread that counts the last result merges them."""

    def __init__(self, task: dict[str, Any], worker: str) -> None:
        """``task``: the leased span's record; raises ValueError when it holds no span."""
        self.task = task
        self.worker = worker
        self.span = msgspec.convert(task.get("span"), Span)
        self.abandoned = False
        """Handed back (the worker is stopping): its last results are not reported."""
        self._parts: dict[int, Summary] = {}
        """Each fetch thread's summary of the results it fetched (by thread id)."""
        self._counted = itertools.count(1)
        """Results counted, a ticket each: ``next`` on it is one step in C."""

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
        thread = threading.get_ident()
        part = self._parts.get(thread)
        if part is None:
            part = self._parts[thread] = Summary()
        part.add(result)
        # Every thread adds before it takes a ticket: the last ticket's holder is the
        # only one left, with every result in some part.
        if next(self._counted) < self.span.count or self.abandoned:
            return None
        return self.record()

    def record(self) -> dict[str, Any]:
        """The span's aggregate record, as JSON types (any encoder writes it)."""
        summary = Summary()
        for part in self._parts.values():
            summary.merge(part)
        task, count = self.task, self.span.count
        ok = summary.totals().ok
        record = Aggregate(
            id=self.id,
            job=str(task.get("job")),
            attempt=int(task.get("attempt") or 1),
            worker=self.worker,
            first=self.span.first,
            requests=count,
            ok=ok,
            failed=count - ok,
            summary=summary.to_state(),
        )
        built: dict[str, Any] = msgspec.to_builtins(record)
        return built
