"""A clock for broker tests: it moves only when told to, and counts its callers.

The broker takes ``clock=`` and ``wall_clock=``; with this one, lease expiry is
a matter of ``advance()``, never of waiting, and a test can see (through
``calls``) that a thread has reached a wait inside the broker.
"""

from __future__ import annotations

import threading
from collections import Counter


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.calls: Counter[str] = Counter()
        self.called = threading.Condition()

    def __call__(self) -> float:
        with self.called:
            self.calls[threading.current_thread().name] += 1
            self.called.notify_all()
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
