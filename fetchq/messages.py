"""Messages for people: one line each, on stderr, so stdout stays a program's output.

Every line a fetchq program writes for a person goes through here, so they all
start the same way and a script can tell them from results.
"""

from __future__ import annotations

import sys

PREFIX = "fetchq: "


def say(message: str) -> None:
    """A line of news: what a program is doing or has done."""
    print(f"{PREFIX}{message}", file=sys.stderr, flush=True)


def warn(message: str) -> None:
    """Something works, but not as the user probably wants it to."""
    say(f"warning: {message}")


def error(message: str) -> None:
    """Why a command is about to stop (its exit code says what kind of failure)."""
    say(f"error: {message}")
