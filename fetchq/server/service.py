"""The broker as the server program runs it: the wire API and its housekeeping.

The serving loop, the classic queues and the contract tests depend on this
``Protocol``, never on a class, so that the embedded broker (``broker.Broker``,
state in this process) and one that keeps its state on a store are
interchangeable behind it.
"""

from __future__ import annotations

from typing import Protocol

from fetchq.wire.api import BrokerAPI


class BrokerService(BrokerAPI, Protocol):
    """``BrokerAPI`` plus what only the program that owns the broker calls."""

    max_pending: int
    """Queued tasks before submits wait for room: the classic queue's ``full()``."""

    def housekeeping(self) -> None:
        """Expire overdue leases and deliveries, end what steering left to end, make
        the state durable (fsync, compaction): called twice a second."""
        ...

    def expire_leases(self) -> int:
        """Return overdue leases to the queue (or fail them) now; returns how many."""
        ...

    def compact(self) -> None:
        """Rewrite what keeps the state durable as the live state alone."""
        ...

    def close(self) -> None:
        """Make everything durable and let go of it; the broker is not used after."""
        ...
