"""Messages for people: one line each, on stderr, so stdout stays a program's output."""

from __future__ import annotations

import sys


def say(message: str) -> None:
    print(f"fetchq: {message}", file=sys.stderr, flush=True)
