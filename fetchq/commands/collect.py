"""Reading results off the server into writers and a summary: output's engine."""

from __future__ import annotations

import operator
from dataclasses import dataclass
from itertools import compress
from typing import Protocol

from fetchq import defaults
from fetchq.ids import IdSet
from fetchq.report.formats import ResultWriter
from fetchq.report.summary import Summary
from fetchq.wire.client import BrokerClient

_id_of = operator.itemgetter("id")


@dataclass
class Collected:
    """What one run of :func:`collect` did."""

    written: int = 0
    repeated: int = 0
    """Results handed out again that were already written: confirmed, not repeated."""


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
    written_ids: IdSet | None = None,
) -> Collected:
    """Write results as they arrive; returns how many were written and skipped.

    Each batch is confirmed to the server only after it has been written and
    flushed (with the next request, or on the way out), so results an
    output never wrote are handed out again, to this run or the next.
    With ``until_done`` it returns once the job is sealed and every task's
    result is confirmed; otherwise it follows until stopped."""
    done = Collected()
    token: str | None = None
    seen = written_ids if written_ids is not None else IdSet()
    try:
        while stop is None or not stop.requested:
            reply = client.call("results", job, defaults.READ_BATCH, defaults.POLL_WAIT, token)
            token = None
            handed = reply["results"]
            # A result handed out again (this output stalled past the lease, or an
            # interrupted run left it in the file) is confirmed but not repeated.
            results = list(compress(handed, seen.add_each(list(map(_id_of, handed)))))
            done.repeated += len(handed) - len(results)
            for result in results:
                if writer is not None:
                    writer.write(result)
                if summary is not None:
                    summary.add(result)
            if results:
                done.written += len(results)
                if writer is not None:
                    writer.flush()
            token = reply.get("token")
            if until_done and reply["done"]:
                break
    finally:
        if token is not None:
            client.call("ack", token)
    return done
