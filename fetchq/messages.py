"""Messages for people: one line each, on stderr, so stdout stays a program's output.

Every line a fetchq program writes for a person goes through here, so they all
start the same way and a script can tell them from results.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

PREFIX = "fetchq: "


def plural(count: float, noun: str, many: str | None = None) -> str:
    """A count and its noun, said right: ``1 task``, ``0 tasks``, ``2 tasks``, ``2.5 tasks``.

    ``many`` is the plural where it is not the noun and an ``s`` (``1 entry``,
    ``2 entries``); in a noun of several words only the last one changes."""
    number = f"{count:g}" if isinstance(count, float) else str(count)
    return f"{number} {noun if count == 1 else (many or noun + 's')}"


def say(message: str) -> None:
    """A line of news: what a program is doing or has done."""
    print(f"{PREFIX}{message}", file=sys.stderr, flush=True)


def warn(message: str) -> None:
    """Something works, but not as the user probably wants it to."""
    say(f"warning: {message}")


def error(message: str) -> None:
    """Why a command is about to stop (its exit code says what kind of failure)."""
    say(f"error: {message}")


class StatusLine:
    """A line about something still going on, such as waiting for the server.

    On a terminal it is rewritten in place, so a long wait is one line; in
    a log it appears at most once every ``interval`` seconds."""

    def __init__(self, stream: TextIO | None = None, interval: float = 10.0) -> None:
        self._stream = stream
        self.interval = interval
        self._last: float | None = None
        self._open = False

    @property
    def stream(self) -> TextIO:
        return self._stream or sys.stderr

    def _on_terminal(self) -> bool:
        isatty = getattr(self.stream, "isatty", None)
        return bool(isatty and isatty())

    def show(self, text: str, *, final: bool = False) -> None:
        """Say ``text``; ``final`` ends the line (on a terminal) and always shows."""
        line = f"{PREFIX}{text}"
        if self._on_terminal():
            self.stream.write(f"\r\x1b[K{line}" + ("\n" if final else ""))
            self.stream.flush()
            self._open = not final
            return
        now = time.monotonic()
        if final:
            if self._last is not None:  # only a wait someone was told about is said to end
                print(line, file=self.stream, flush=True)
            self._last = None
        elif self._last is None or now - self._last >= self.interval:
            print(line, file=self.stream, flush=True)
            self._last = now

    def clear(self) -> None:
        """Take an unfinished line off the terminal, before a message of its own."""
        if self._open:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._open = False
        self._last = None
