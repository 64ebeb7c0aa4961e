"""Rates and durations as people write them: ``200/s``, ``12000/m``, ``60/h``, ``5m``.

(How fetchq shows them is in ``fetchq.units``.)"""

from __future__ import annotations

import math
import re

from fetchq.api import MAX_RATE
from fetchq.errors import UsageError

_PER = {"s": 1.0, "m": 60.0, "h": 3600.0}
_RATE = re.compile(r"\s*(\d+(?:\.\d+)?|\.\d+)\s*(?:/\s*([smh]))?\s*")
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h)?\s*")
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_rate(text: str, *, allow_zero: bool = False) -> float:
    """Requests per second from ``R``, ``R/s``, ``R/m`` or ``R/h`` (``allow_zero``: where
    0 means no rate)."""
    match = _RATE.fullmatch(text)
    if not match:
        raise UsageError(f"invalid rate {text!r}: use a number per second, or 200/s, 12000/m, 60/h")
    rate = float(match.group(1)) / _PER[match.group(2) or "s"]
    if allow_zero and rate == 0:
        return 0.0
    if not math.isfinite(rate) or rate <= 0:
        raise UsageError(f"invalid rate {text!r}: it must be more than zero")
    if rate > MAX_RATE:
        raise UsageError(f"invalid rate {text!r}: at most {MAX_RATE:,.0f}/s")
    return rate


def parse_duration(text: str, most: float | None = None, *, allow_zero: bool = False) -> float:
    """Seconds from ``90``, ``90s``, ``1.5m``, ``2h`` or ``250ms`` (at most ``most``;
    ``allow_zero``: where 0 means none)."""
    match = _DURATION.fullmatch(text)
    if not match:
        raise UsageError(f"invalid duration {text!r}: use seconds, or 30s, 5m, 1h")
    seconds = float(match.group(1)) * _SECONDS[match.group(2) or "s"]
    if allow_zero and seconds == 0:
        return 0.0
    if not math.isfinite(seconds) or seconds <= 0:
        raise UsageError(f"invalid duration {text!r}: it must be more than zero")
    if most is not None and seconds > most:
        raise UsageError(f"invalid duration {text!r}: at most {most:g}s")
    return seconds
