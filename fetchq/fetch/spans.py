"""A span of an aggregate job, run by a worker: its requests, and the one record they
come to.

The worker expands the span into its requests, its fetch threads fetch them as
any others, and each result goes into the span's summary instead of onto the
wire.  When the last one is in, the span's aggregate record is what the worker
reports for it (see ``fetchq.wire.aggregates``).

A span of a job with a rate comes with its schedule: its first request's start
and the spacing of the rest.  A ``PacedFeed`` hands such requests to the fetch
threads as they come due, in the order of their starts across every span the
worker runs, and tells the worker when it holds as much paced work as its
threads can do.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable, Iterator
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
        scheduled, spacing = task.get("scheduled"), task.get("spacing")
        self.paced = spacing is not None
        """Its requests start on a schedule: ``scheduled``, then every ``spacing`` seconds
        (the server's Unix time)."""
        if self.paced and not (
            isinstance(scheduled, int | float) and isinstance(spacing, int | float) and spacing > 0
        ):
            raise ValueError(f"a paced span needs a start and a spacing above 0: {spacing!r}")
        self.begun = False
        """A paced span: some of its requests went to the fetch threads."""
        self.abandoned = False
        """Handed back (the worker is stopping): its last results are not reported."""
        self._parts: dict[int, Summary] = {}
        """Each fetch thread's summary of the results it fetched (by thread id)."""
        self._counted = itertools.count(1)
        """Results counted, a ticket each: ``next`` on it is one step in C."""

    @property
    def id(self) -> int:
        return int(self.task["id"])

    @property
    def spacing(self) -> float:
        """Seconds from one of a paced span's starts to the next."""
        return float(self.task["spacing"])

    @property
    def rate(self) -> float:
        """Requests a second a paced span starts (0 for one that is not paced)."""
        return 1.0 / self.spacing if self.paced else 0.0

    def requests(self) -> Iterator[tuple[SpanRun, dict[str, Any]]]:
        """Each request as a task record a ``Fetcher`` takes, paired with this run; a
        paced span's with its ``scheduled`` start."""
        base = {key: self.task.get(key) for key in ("v", "id", "job", "attempt", "timeout", "spec")}
        base["submitted"] = self.task.get("submitted")
        if not self.paced:
            for url in self.span.request_urls():
                yield self, {**base, "url": url}
            return
        first, spacing = float(self.task["scheduled"]), self.spacing
        for n, url in enumerate(self.span.request_urls()):
            yield self, {**base, "url": url, "scheduled": first + n * spacing}

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


FEED_AHEAD = 0.02
"""Seconds before its start a paced request is handed to the fetch threads: a thread
takes it and waits for the start itself, so none starts late for want of a wake-up."""

BUSY_SHARE = 0.75
"""The share of its fetch threads a worker fills with paced spans (Little's law: a
span's rate times the time a request takes is the threads it keeps busy)."""


class PacedFeed:
    """Paced spans' requests, handed to the fetch threads (``put``) as they come due,
    on a thread of its own: the worker's other threads wait on the server.

    ``has_room`` says whether one more span fits the fetch threads, from the rates
    of the spans held and the time a request took of late; the worker leases a paced
    span only then, so that a fleet of unequal workers shares a rate by what each
    can do.  Until it has timed a request, a worker holds one paced span at a time:
    it cannot know yet what more would cost."""

    def __init__(
        self, put: Callable[[Any], None], clock_offset: Callable[[], float], threads: int
    ) -> None:
        self._put = put
        self._clock_offset = clock_offset
        self._threads = threads
        self._heap: list[tuple[float, int, SpanRun, Iterator[tuple[SpanRun, dict[str, Any]]]]] = []
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._closed = False
        self._held: dict[int, float] = {}
        """The rate of each paced span held (by ``id`` of its run)."""
        self._last_rate = 0.0
        self.service = 0.0
        """How long a request takes: the mean of the first ones timed, then smoothed
        over the last ones."""
        self._timed = 0
        self.room = threading.Event()
        """Set when a span is done: there may be room for another."""
        self._thread = threading.Thread(target=self._feed, name="paced-feed", daemon=True)
        self._thread.start()

    def add(self, run: SpanRun) -> None:
        requests = run.requests()
        due = float(run.task["scheduled"]) - self._clock_offset()
        with self._wake:
            self._held[id(run)] = self._last_rate = run.rate
            heapq.heappush(self._heap, (due, next(self._order), run, requests))
            self._wake.notify()

    def done(self, run: SpanRun) -> None:
        """The span is over (reported, or given up): its rate is free again."""
        with self._wake:
            self._held.pop(id(run), None)
        self.room.set()

    def timed(self, elapsed: float) -> None:
        """A paced request took ``elapsed`` seconds (no lock: an estimate)."""
        self._timed += 1
        self.service += (elapsed - self.service) / min(self._timed, 32)
        if self._timed == 1:
            self.room.set()  # there may be room for more than one span now

    def has_room(self) -> bool:
        with self._wake:
            held = sum(self._held.values())
        if not held:
            return True
        if not self._timed:
            return False
        return (held + self._last_rate) * self.service <= self._threads * BUSY_SHARE

    def close(self) -> list[SpanRun]:
        """Stop feeding; the spans with requests not yet handed out."""
        with self._wake:
            self._closed = True
            self._wake.notify()
            left = [run for _, _, run, _ in self._heap]
            self._heap.clear()
        self._thread.join()
        return left

    def _feed(self) -> None:
        heap = self._heap
        with self._wake:
            while not self._closed:
                horizon = time.time() + FEED_AHEAD
                while heap and heap[0][0] <= horizon:
                    _, order, run, requests = heap[0]
                    request = next(requests, None)
                    if request is None:
                        heapq.heappop(heap)
                        continue
                    run.begun = True
                    self._put(request)
                    due = float(request[1]["scheduled"]) + run.spacing - self._clock_offset()
                    heapq.heapreplace(heap, (due, order, run, requests))
                self._wake.wait(heap[0][0] - horizon if heap else None)
