"""Tasks waiting for a worker, in order, kept as compactly as they arrived."""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Iterator
from typing import NamedTuple


class Queued(NamedTuple):
    """A task as the server keeps it between leases: a tuple is the smallest thing that
    reads well."""

    id: int
    job: str
    url: str
    attempt: int
    attempts: int
    timeout: float
    submitted: float


class Span:
    """A submitted batch not yet handed out, kept as the list that came off the wire.

    Queued tasks cost their URL string and a list slot (about 90 bytes for a
    short URL) instead of a tuple and an id object each; a task becomes a
    ``Queued`` only when it is taken."""

    __slots__ = ("attempts", "first", "job", "next", "submitted", "timeout", "urls")

    def __init__(
        self, job: str, first: int, urls: list[str], attempts: int, timeout: float, at: float
    ) -> None:
        self.job = job
        self.first = first
        self.urls = urls
        self.attempts = attempts
        self.timeout = timeout
        self.submitted = at
        self.next = 0

    def take(self) -> Queued:
        index = self.next
        self.next += 1
        return self._task(index)

    def _task(self, index: int) -> Queued:
        return Queued(
            self.first + index,
            self.job,
            self.urls[index],
            1,
            self.attempts,
            self.timeout,
            self.submitted,
        )

    def remaining(self) -> Iterator[Queued]:
        return (self._task(index) for index in range(self.next, len(self.urls)))

    @property
    def exhausted(self) -> bool:
        return self.next >= len(self.urls)


class TaskQueue:
    """First in, first out, except that retries go to the front: a job's stragglers
    should not wait behind new jobs.

    A task whose lease expired is queued again; if its first worker then reports
    after all, the queued copy is stale.  The copy stays in place (finding it
    would cost a scan) but stops being counted (``forget``), and ``take`` skips
    it."""

    def __init__(self) -> None:
        self._entries: deque[Queued | Span] = deque()
        self._count = 0
        self._per_job: Counter[str] = Counter()

    def add_batch(self, span: Span) -> None:
        if span.urls:
            self._entries.append(span)
            self._count += len(span.urls)
            self._per_job[span.job] += len(span.urls)

    def add_retry(self, task: Queued) -> None:
        self._entries.appendleft(task)
        self._count += 1
        self._per_job[task.job] += 1

    def add_task(self, task: Queued) -> None:
        """One task at the back (a restart queues what was not done, in id order)."""
        self._entries.append(task)
        self._count += 1
        self._per_job[task.job] += 1

    def forget(self, job: str) -> None:
        """One queued copy of ``job`` turned stale: its task finished elsewhere."""
        self._count -= 1
        self._per_job[job] -= 1

    def take(self, count: int, is_done: Callable[[int], bool]) -> list[Queued]:
        """Up to ``count`` tasks from the front, stale copies skipped."""
        taken: list[Queued] = []
        entries = self._entries
        while entries and len(taken) < count:
            head = entries[0]
            if isinstance(head, Span):
                task = head.take()
                if head.exhausted:
                    entries.popleft()
            else:
                entries.popleft()
                task = head
            if is_done(task.id):
                continue  # finished late by an earlier attempt: already forgotten
            taken.append(task)
            self._count -= 1
            self._per_job[task.job] -= 1
        return taken

    def __len__(self) -> int:
        return self._count

    def count(self, job: str) -> int:
        return self._per_job[job]

    def __iter__(self) -> Iterator[Queued]:
        """Every entry as a task, stale copies included (the caller filters them)."""
        for entry in self._entries:
            if isinstance(entry, Span):
                yield from entry.remaining()
            else:
                yield entry
