"""Helpers for tests that drive a Broker in-process."""

from __future__ import annotations

import os

from fetchq.server.broker import Broker


def crash(broker: Broker) -> None:
    """What kill -9 leaves: the file as written so far, and the lock released.

    Every broker call writes its events before it returns (with no buffer in
    between), so closing the descriptors is all the kernel does for a dead
    process; closing the lock file drops its flock."""
    journal = broker._recorder.journal
    assert journal is not None
    if journal._fd is not None:
        os.close(journal._fd)
        journal._fd = None
    os.close(journal._guard)


def renew(broker: Broker, worker: str, leases: list[list[int]]) -> int:
    """Renew leases as a worker does: in a report, here one with no results."""
    return int(broker.complete(worker, [], leases)["renewed"])
