"""Who waits inside the broker, and waking only those a change can help.

Workers wait for tasks, dispatchers for room in the queue, outputs for the
results of the job they read; all on the broker's one lock.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable


class Waiters:
    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock
        self.tasks = threading.Condition(lock)
        """Workers waiting for a task."""
        self.room = threading.Condition(lock)
        """Dispatchers waiting for room in a full queue."""
        self._outputs: dict[str | None, threading.Condition] = {}
        """Outputs waiting, by the job they read (None: every job)."""

    def outputs(self, job: str | None) -> threading.Condition:
        waiting = self._outputs.get(job)
        if waiting is None:
            waiting = self._outputs[job] = threading.Condition(self._lock)
        return waiting

    def wake_outputs(self, jobs: Iterable[str]) -> None:
        """Wake the outputs that read these jobs, and those that read every job."""
        for name in (*jobs, None):
            waiting = self._outputs.get(name)
            if waiting is not None:
                waiting.notify_all()
