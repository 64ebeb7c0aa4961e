"""Tasks as the server keeps them while they wait: as compactly as they arrived."""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple


class Task(NamedTuple):
    """A task as the server keeps it between leases: a tuple is the smallest thing that
    reads well."""

    id: int
    job: str
    url: str
    attempt: int
    attempts: int
    timeout: float
    submitted: float


_new_task = tuple.__new__
"""``Task`` made from a tuple in C, without the Python frame of its ``__new__``: a
run of tasks is made for every lease."""


class Batch:
    """A submitted batch not yet leased, kept as the list that came off the wire.

    Queued tasks cost their URL string and a list slot (about 90 bytes for a
    short URL) instead of a tuple and an id object each; a task becomes a
    ``Task`` only when it is taken."""

    __slots__ = ("attempts", "first", "job", "left", "next", "submitted", "timeout", "urls")

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
        """The next task first in, first out."""
        self.left = -1
        """Tasks not yet leased, once the batch goes out by host (-1 until then)."""

    def take(self) -> Task:
        index = self.next
        self.next += 1
        if self.left > 0:
            self.left -= 1
        return self.task(index)

    def take_run(self, count: int) -> list[Task]:
        """The next ``count`` tasks (fewer at the end), first in, first out."""
        start = self.next
        end = min(len(self.urls), start + count)
        self.next = end
        if self.left > 0:
            self.left = max(0, self.left - (end - start))
        return self.tasks(start, end)

    def tasks(self, start: int, stop: int) -> list[Task]:
        """The tasks at ``start`` .. ``stop - 1``, as first attempts."""
        first, job, urls = self.first, self.job, self.urls
        attempts, timeout, submitted = self.attempts, self.timeout, self.submitted
        return [
            _new_task(Task, (first + index, job, urls[index], 1, attempts, timeout, submitted))
            for index in range(start, stop)
        ]

    def task(self, index: int) -> Task:
        return self.task_with(self.urls, index)

    def task_with(self, urls: list[str], index: int) -> Task:
        """As ``task``, from ``urls`` as they were when captured (``urls`` is let go
        once every task of the batch is out)."""
        return _new_task(
            Task,
            (
                self.first + index,
                self.job,
                urls[index],
                1,
                self.attempts,
                self.timeout,
                self.submitted,
            ),
        )

    def remaining(self) -> Iterator[Task]:
        return (self.task(index) for index in range(self.next, len(self.urls)))

    @property
    def exhausted(self) -> bool:
        return self.next >= len(self.urls)
