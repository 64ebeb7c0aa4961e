"""The classic tutorial's two queues, served by the broker.

A client written like the well-known "distributed processes" example
(a BaseManager subclass registering ``get_task_queue`` and
``get_result_queue``) works against ``fetchq server`` unchanged: URLs it
``put()``s become tasks of the job ``classic``, fetched by fetchq workers,
and ``get()`` on the result queue returns their result records.

The classic interface has no acknowledgements, so a client that dies inside
``get()`` can lose the result it was being handed; ``fetchq output`` has none
of that problem.
"""

from __future__ import annotations

import queue
import time
from typing import Any

from fetchq.errors import NoSuchJob
from fetchq.server.service import BrokerService
from fetchq.urls import url_problem
from fetchq.wire.api import MAX_WAIT

CLASSIC_JOB = "classic"
QUEUE_METHODS = ("put", "put_nowait", "get", "get_nowait", "qsize", "empty", "full")


def classic_count(broker: BrokerService, counter: str) -> int:
    """One counter of the classic job: 0 before its first ``put`` makes the job."""
    try:
        return int(broker.job(CLASSIC_JOB)[counter])  # type: ignore[literal-required]
    except NoSuchJob:
        return 0


class ClassicTaskQueue:
    """``put(url)`` submits one task; a full server raises ``queue.Full`` like a Queue."""

    def __init__(self, broker: BrokerService) -> None:
        self._broker = broker

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        url = item.get("url") if isinstance(item, dict) else item
        problem = url_problem(url) if isinstance(url, str) else "expected a URL string"
        if problem:
            raise ValueError(f"fetchq cannot fetch {url!r}: {problem}")
        wait = 0.0 if not block else min(MAX_WAIT, timeout if timeout is not None else MAX_WAIT)
        while True:
            reply = self._broker.submit({"job": CLASSIC_JOB, "urls": [url], "wait": wait})
            if reply.get("accepted"):
                return
            if not block or timeout is not None:
                raise queue.Full

    def put_nowait(self, item: Any) -> None:
        self.put(item, block=False)

    def qsize(self) -> int:
        return classic_count(self._broker, "queued")

    def empty(self) -> bool:
        return self.qsize() == 0

    def full(self) -> bool:
        """True when ``put_nowait`` would raise ``Full``: the server holds ``--max-pending``
        queued tasks, over every job (the bound is the server's, not this queue's)."""
        return self._broker.queued() >= self._broker.max_pending


class ClassicResultQueue:
    """``get()`` returns the next result record of the classic job."""

    def __init__(self, broker: BrokerService) -> None:
        self._broker = broker

    def get(self, block: bool = True, timeout: float | None = None) -> dict[str, Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = MAX_WAIT if deadline is None else max(0.0, deadline - time.monotonic())
            wait = min(MAX_WAIT, remaining) if block else 0.0
            reply = self._broker.results(CLASSIC_JOB, 1, wait)
            token = reply["token"]
            if reply["results"] and token is not None:
                self._broker.ack(token)
                return dict(reply["results"][0])
            if not block or (deadline is not None and time.monotonic() >= deadline):
                raise queue.Empty

    def get_nowait(self) -> dict[str, Any]:
        return self.get(block=False)

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        raise ValueError("results are put by fetchq workers, not by clients")

    def put_nowait(self, item: Any) -> None:
        self.put(item)

    def qsize(self) -> int:
        return classic_count(self._broker, "waiting")

    def empty(self) -> bool:
        return self.qsize() == 0

    def full(self) -> bool:
        return False
