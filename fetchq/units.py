"""Numbers as people read them: durations, byte counts, rates, shares.

One place for these so that the text report, the HTML report, the live view
and the result lines all show a figure the same way.
"""

from __future__ import annotations


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
    """Requests per second, or ``n/a`` when the run took no measurable time."""
    return "n/a" if rate is None else f"{rate:.1f}/s"


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
