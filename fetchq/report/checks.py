"""Thresholds that turn a report into a pass or a fail, as k6's do: ``p99<250ms``.

A check is a figure of the summary, a comparison and a number with its unit.
Latencies take a time (``250ms``, ``1.5s``, ``800us``), shares a percentage
(``success>=99.5%``; ``errors`` and ``late`` also a count), and ``rate`` a rate
(``990/s``).  A malformed check is refused before anything connects, so a
typo fails a build at once rather than after a run.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fetchq.errors import UsageError
from fetchq.units import format_duration, format_rate

LATENCIES = ("min", "mean", "p50", "p90", "p95", "p99", "max")
"""Service-time figures; ``sched_`` before one names the same figure measured from
the schedule."""

OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "<": operator.lt,
    ">": operator.gt,
}

_CHECK = re.compile(r"\s*([a-z_0-9]+)\s*(<=|>=|<|>)\s*([0-9]*\.?[0-9]+)\s*([a-zµ%/]*)\s*")

_TIME_UNITS = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}
_RATE_UNITS = {"/s": 1.0, "/m": 1 / 60}


@dataclass(frozen=True)
class Check:
    text: str
    figure: str
    compare: str
    threshold: float
    """In seconds, requests a second, a 0..1 share, or a count."""
    kind: str
    """``time``, ``rate``, ``share`` or ``count``: how the threshold and the measured
    value are read and written."""

    def measure(self, figures: dict[str, Any]) -> float | None:
        """The figure in ``figures`` (``Summary.as_dict``), None when there is none."""
        name = self.figure
        if name in LATENCIES:
            return figures["latency"][name]
        if name.startswith("sched_"):
            schedule = figures["schedule"]
            return None if schedule is None else schedule["response_time"][name[6:]]
        if name == "rate":
            return figures["rate"]
        requests = figures["requests"]
        if name == "success":
            return figures["success_ratio"]
        if name == "errors":
            failed = figures["failed"]
            if self.kind == "count":
                return failed
            return failed / requests if requests else None
        schedule = figures["schedule"]  # late
        late = 0 if schedule is None else schedule["late"]["count"]
        if self.kind == "count":
            return late
        return late / requests if requests else None

    def passes(self, measured: float | None) -> bool:
        return measured is not None and OPERATORS[self.compare](measured, self.threshold)

    def written(self, value: float | None) -> str:
        if value is None:
            return "-"
        if self.kind == "time":
            return format_duration(value)
        if self.kind == "rate":
            return format_rate(value)
        if self.kind == "share":
            return f"{value * 100:.2f}%"
        return f"{value:g}"


def parse_check(text: str) -> Check:
    """A check from its text; raises ValueError saying what is wrong with it."""
    match = _CHECK.fullmatch(text)
    if match is None:
        raise ValueError(
            f"--check {text!r}: write a figure, a comparison and a number, e.g. 'p99<250ms'"
        )
    figure, compare, number, unit = match.groups()
    value = float(number)
    latency = figure in LATENCIES or (figure.startswith("sched_") and figure[6:] in LATENCIES)
    if latency:
        if unit not in _TIME_UNITS:
            raise ValueError(f"--check {text!r}: {figure} takes a time, e.g. 250ms or 1.5s")
        return Check(text, figure, compare, value * _TIME_UNITS[unit], "time")
    if figure == "rate":
        if unit not in _RATE_UNITS:
            raise ValueError(f"--check {text!r}: rate takes a rate, e.g. 990/s")
        return Check(text, figure, compare, value * _RATE_UNITS[unit], "rate")
    if figure == "success" or (figure in ("errors", "late") and unit == "%"):
        if unit != "%":
            raise ValueError(f"--check {text!r}: success takes a percentage, e.g. 99.5%")
        return Check(text, figure, compare, value / 100, "share")
    if figure in ("errors", "late"):
        if unit:
            raise ValueError(f"--check {text!r}: {figure} takes a percentage or a count")
        return Check(text, figure, compare, value, "count")
    known = ", ".join([*LATENCIES, "sched_p99 (and the like)", "success", "errors", "rate", "late"])
    raise ValueError(f"--check {text!r}: no figure {figure!r}; there are {known}")


def parse_checks(texts: list[str] | None) -> list[Check]:
    """``--check`` as given; a malformed one is a ``UsageError``."""
    try:
        return [parse_check(text) for text in texts or []]
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def judge(checks: list[Check], figures: dict[str, Any]) -> list[tuple[Check, float | None, bool]]:
    """Each check with what was measured and whether it passed."""
    return [
        (check, measured, check.passes(measured))
        for check in checks
        for measured in [check.measure(figures)]
    ]


def check_rows(judged: list[tuple[Check, float | None, bool]]) -> list[list[str]]:
    """Each check as the report's table shows it: the check, what was measured, its
    verdict."""
    return [
        [check.text, check.written(measured), "pass" if passed else "FAIL"]
        for check, measured, passed in judged
    ]


def render_checks(judged: list[tuple[Check, float | None, bool]]) -> str:
    """The table of checks that ends a text summary."""
    if not judged:
        return ""
    rows = check_rows(judged)
    width = max(len(text) for text, _, _ in rows)
    lines = ["", "Checks:"]
    for text, measured, verdict in rows:
        lines.append(f"  {text:<{width}}  {measured:>10}  {verdict}")
    failed = sum(1 for _, _, passed in judged if not passed)
    lines.append(f"  {failed} of {len(judged)} failed" if failed else f"  all {len(judged)} passed")
    return "\n".join(lines) + "\n"
