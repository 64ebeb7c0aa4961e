"""Numbers as people write and read them: durations, byte counts, rates, shares.

One place for these, so that a rate is read the same way by every command
(``200/s``, ``12000/m``, ``5m``, ``250ms``) and every figure is shown the same
way by the text report, the HTML report, the live view and the result lines.
"""

from __future__ import annotations

import math
import re

from fetchq.errors import UsageError
from fetchq.wire.api import MAX_RATE
from fetchq.wire.stages import MAX_STAGE_SECONDS, stages_problem


def format_duration(seconds: float) -> str:
    """Seconds as a person reads them: ``850µs``, ``12.3ms``, ``1.204s``, ``2m03.5s``."""
    if seconds < 0:
        return "-" + format_duration(-seconds)
    if seconds < 0.001:
        return f"{seconds * 1e6:.0f}µs"
    if seconds < 1.0:
        return f"{seconds * 1e3:.1f}ms"
    if seconds < 60.0:
        return f"{seconds:.3f}s"
    minutes, rest = divmod(seconds, 60.0)
    return f"{int(minutes)}m{rest:04.1f}s"


def format_bytes(n: float) -> str:
    """A byte count in SI units (``512B``, ``1.2kB``, ``3.4MB``), as curl and hey print them."""
    if n < 1000:
        return f"{n:.0f}B"
    for unit in ("kB", "MB", "GB", "TB"):
        n /= 1000.0
        if n < 1000 or unit == "TB":
            return f"{n:.1f}{unit}"
    raise AssertionError("unreachable")


def format_rate(rate: float | None) -> str:
    """Requests per second, or ``n/a`` when the run took no measurable time.

    One decimal from 1/s up (``150.1/s``); below, two significant digits, so that
    a slow rate never reads as zero (``0.5/s``, ``0.017/s`` for 1/m, ``0.00028/s``
    for 1/h)."""
    if rate is None:
        return "n/a"
    if rate == 0 or abs(rate) >= 1:
        return f"{rate:.1f}/s"
    decimals = 1 - math.floor(math.log10(abs(rate)))
    text = f"{rate:.{decimals}f}".rstrip("0").rstrip(".")
    return f"{text}.0/s" if "." not in text else f"{text}/s"


def write_rate(rate: float) -> str:
    """A rate as ``--rate`` takes it back: per second when that is short (``100``,
    ``2.5``), else per minute or hour when a whole number there (``1/m``), else per
    second with every digit that counts."""
    short = f"{rate:.6f}".rstrip("0").rstrip(".")
    if float(short) == rate:
        return short
    for unit, per in (("m", 60.0), ("h", 3600.0)):
        count = rate * per
        if count >= 1 and abs(count - round(count)) <= 1e-9 * count:
            return f"{round(count)}/{unit}"
    return f"{rate:.10g}"


def format_achieved(rate: float, over: float) -> str:
    """A rate measured over the last ``over`` seconds, saying so: ``150.0/s (last 10 s)``,
    ``38.5/s (last 0.7 s)``; ``-`` before there is anything to measure."""
    if over <= 0:
        return "-"
    return f"{format_rate(rate)} (last {over:g} s)"


def format_share(ratio: float | None) -> str:
    """A 0..1 ratio as a percentage with two decimals, or ``n/a``."""
    return "n/a" if ratio is None else f"{100.0 * ratio:.2f}%"


def format_eta(seconds: float) -> str:
    """Time left, to the second: ``45s``, ``3m07s``, ``2h05m``."""
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def format_maybe_duration(seconds: float | None) -> str:
    return "n/a" if seconds is None else format_duration(seconds)


# -- as people write them ---------------------------------------------------------

_PER = {"s": 1.0, "m": 60.0, "h": 3600.0}
_RATE = re.compile(r"(\d+(?:\.\d+)?|\.\d+)(?:/([smh]))?")
_DURATION = re.compile(r"(\d+(?:\.\d+)?|\.\d+)(ms|s|m|h)?")
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

MIN_RATE = 1 / 3600
"""The slowest rate a command takes: one request an hour."""


def parse_rate(text: str, *, allow_zero: bool = False) -> float:
    """Requests per second from ``R``, ``R/s``, ``R/m`` or ``R/h``, written without spaces
    inside, from 1/h to MAX_RATE (``allow_zero``: 0 too, where it means no rate)."""
    match = _RATE.fullmatch(text.strip())
    if not match:
        raise UsageError(
            f"invalid rate {text!r}: write a number per second, or one per second, minute "
            "or hour with no spaces: 200, 200/s, 12000/m, 60/h"
        )
    rate = float(match.group(1)) / _PER[match.group(2) or "s"]
    if allow_zero and rate == 0:
        return 0.0
    if not math.isfinite(rate) or rate <= 0:
        raise UsageError(f"invalid rate {text!r}: it must be more than zero")
    if rate < MIN_RATE:
        raise UsageError(f"invalid rate {text!r}: the slowest is 1/h (one request an hour)")
    if rate > MAX_RATE:
        raise UsageError(f"invalid rate {text!r}: at most {MAX_RATE:,.0f}/s")
    return rate


_STAGE = re.compile(
    r"(?P<start>\d+(?:\.\d+)?|\.\d+)(?:\.\.(?P<end>\d+(?:\.\d+)?|\.\d+))?"
    r"(?:/(?P<per>[smh]))?\s+(?P<how>for|over)\s+(?P<time>\S+)"
)


def is_staged(text: str) -> bool:
    """``--rate`` written as stages (``0..500/s over 1m, 500/s for 5m``), not one rate."""
    return "," in text or ".." in text or re.search(r"\s(?:for|over)\b", text) is not None


def parse_stages(text: str) -> list[list[float]]:
    """A staged ``--rate``: stages ``R/s for DURATION`` and ramps ``A..B/s over DURATION``,
    separated by commas, as ``[seconds, start rate, end rate]`` each (per second)."""
    stages: list[list[float]] = []
    for part in text.split(","):
        match = _STAGE.fullmatch(part.strip())
        if not match:
            raise UsageError(
                f"invalid stage {part.strip()!r} in --rate: write 'R/s for DURATION' or "
                "'A..B/s over DURATION', as in '0..500/s over 1m, 500/s for 5m'"
            )
        per = _PER[match["per"] or "s"]
        start = float(match["start"]) / per
        end = start if match["end"] is None else float(match["end"]) / per
        if (match["end"] is None) != (match["how"] == "for"):
            raise UsageError(
                f"invalid stage {part.strip()!r} in --rate: a rate holds 'for' a time, "
                "a ramp A..B goes 'over' one"
            )
        if max(start, end) > MAX_RATE:
            raise UsageError(f"invalid stage {part.strip()!r}: at most {MAX_RATE:,.0f}/s")
        stages.append([parse_duration(match["time"], MAX_STAGE_SECONDS), start, end])
    problem = stages_problem(stages)
    if problem:
        raise UsageError(f"invalid --rate {text!r}: {problem}")
    return stages


def parse_duration(text: str, most: float | None = None, *, allow_zero: bool = False) -> float:
    """Seconds from ``90``, ``90s``, ``1.5m``, ``2h`` or ``250ms``, written without spaces
    inside (at most ``most``; ``allow_zero``: where 0 means none)."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise UsageError(
            f"invalid duration {text!r}: write seconds, or a number and its unit with no "
            "space: 30s, 5m, 1h, 250ms"
        )
    seconds = float(match.group(1)) * _SECONDS[match.group(2) or "s"]
    if allow_zero and seconds == 0:
        return 0.0
    if not math.isfinite(seconds) or seconds <= 0:
        raise UsageError(f"invalid duration {text!r}: it must be more than zero")
    if most is not None and seconds > most:
        raise UsageError(f"invalid duration {text!r}: at most {most:g}s")
    return seconds
