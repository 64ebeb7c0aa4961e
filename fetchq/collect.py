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
    skip_ids: set[int] | frozenset[int] = frozenset(),
) -> int:
    """Write results as they arrive; returns how many were written.

    Each batch is confirmed to the server only after it has been written and
    flushed (with the next request, or on the way out), so results an
    output never wrote are handed out again, to this run or the next.
    With ``until_done`` it returns once the job is sealed and every task's
    result is confirmed; otherwise it follows until stopped."""
    written = 0
    token: str | None = None
    try:
        while stop is None or not stop.requested:
            reply = client.call("results", job, defaults.READ_BATCH, defaults.POLL_WAIT, token)
            token = None
            results = reply["results"]
            if skip_ids:  # already in the file an interrupted run left: confirm, don't repeat
                results = [result for result in results if result["id"] not in skip_ids]
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
            token = reply.get("token")
            if until_done and reply["done"]:
                break
    finally:
        if token is not None:
            client.call("ack", token)
    return written
