"""Reading results off the server into writers and a summary: output's engine."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from fetchq import defaults
from fetchq.formats import ResultWriter
from fetchq.protocol import BrokerClient
from fetchq.stats import Summary


class StopCheck(Protocol):
    @property
    def requested(self) -> bool: ...


def collect(
    client: BrokerClient,
    job: str | None,
    *,
    writer: ResultWriter | None = None,
    summary: Summary | None = None,
    until_done: bool = False,
    stop: StopCheck | None = None,
    on_batch: Callable[[list[dict[str, Any]]], None] | None = None,
) -> int:
    """Write results as they arrive; returns how many were written.

    With ``until_done`` it returns once the job is sealed and every task has
    had its result handed out; otherwise it follows until stopped."""
    written = 0
    while stop is None or not stop.requested:
        reply = client.call("results", job, defaults.READ_BATCH, defaults.POLL_WAIT)
        results = reply["results"]
        for result in results:
            if writer is not None:
                writer.write(result)
            if summary is not None:
                summary.add(result)
        if results:
            written += len(results)
            if writer is not None:
                writer.flush()
            if on_batch is not None:
                on_batch(results)
        if until_done and reply["done"]:
            break
    return written
