"""The workers the server has heard from, and how fast each finishes tasks."""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field

from fetchq.wire.api import WorkerRow

RATE_WINDOW = 10.0
"""Seconds of recent completions a worker's rate is measured over."""


@dataclass
class WorkerSeen:
    first_seen: float
    last_seen: float
    reported: int = 0
    """Results the server took from this worker (accepted, or queued again to retry)."""
    threads: int = 0
    """Fetch threads the worker said it runs (0: not said)."""
    runs: frozenset[str] = frozenset()
    """Kinds of task beyond a URL's it said it runs (``"span"``: an aggregate job's)."""
    recent: deque[tuple[float, int]] = field(default_factory=deque)

    def record(self, now: float, count: int) -> None:
        self.reported += count
        self.recent.append((now, count))
        while self.recent and self.recent[0][0] < now - RATE_WINDOW:
            self.recent.popleft()

    def rate(self, now: float) -> float:
        span = min(RATE_WINDOW, max(now - self.first_seen, 1e-9))
        return sum(n for t, n in self.recent if t >= now - RATE_WINDOW) / span


class WorkerTable:
    def __init__(self) -> None:
        self._workers: dict[str, WorkerSeen] = {}

    def seen(self, worker: str, now: float) -> WorkerSeen:
        """Note contact from ``worker`` (any call it makes)."""
        seen = self._workers.get(worker)
        if seen is None:
            seen = self._workers[worker] = WorkerSeen(now, now)
        seen.last_seen = now
        return seen

    def threads(self, now: float, alive: float) -> int:
        """Fetch threads of the workers heard from in the last ``alive`` seconds."""
        return sum(s.threads for s in self._workers.values() if now - s.last_seen <= alive)

    def rows(self, now: float, holding: Counter[str]) -> list[WorkerRow]:
        """One row per worker for ``status``: last contact, tasks finished, rate, leases."""
        return [
            {
                "worker": name,
                "last_seen_ago": round(now - seen.last_seen, 3),
                "reported": seen.reported,
                "threads": seen.threads,
                "rate": round(seen.rate(now), 1),
                "leased": holding[name],
            }
            for name, seen in sorted(self._workers.items())
        ]
