"""Graceful stop: the first SIGINT/SIGTERM asks to drain, the second stops at once.

The handler only sets a flag (and puts the default handlers back, so that a
second signal ends the process the ordinary way); loops check the flag.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType


class StopRequest:
    def __init__(self) -> None:
        self.event = threading.Event()
        self.signal_name: str | None = None
        self._requested = False

    @property
    def requested(self) -> bool:
        if self._requested and not self.event.is_set():
            self.event.set()  # set here, in a loop, never inside the handler
        return self._requested

    def request(self) -> None:
        self._requested = True
        self.event.set()

    def install(self) -> StopRequest:
        """Only the main thread may install handlers; call it there."""
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self._requested = True
        self.signal_name = signal.Signals(signum).name
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    def wait(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` or until asked to stop; signals wake it within 0.1 s."""
        deadline = timeout
        while deadline > 0 and not self.requested:
            step = min(0.1, deadline)
            self.event.wait(step)
            deadline -= step
        return self.requested
