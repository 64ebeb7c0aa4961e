"""A staged rate: stages of a constant rate or a linear ramp, one after the other.

Request ``n`` (from 0) of a staged job starts where the integral of the rate reaches
``n + 1/2``: the middle of its share of the schedule, so that a ramp from 0 does not
start with a request at no rate at all, and a stage of rate 0 is a pause.  What goes
past the stages' end keeps the last rate they had (``tail_rate``).  The dispatcher
counts a template job's requests with it, and the server schedules starts with it.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from typing import NamedTuple

from fetchq.wire.api import MAX_RATE

MAX_STAGES = 100
MAX_STAGE_SECONDS = 30 * 86_400.0


class Stage(NamedTuple):
    seconds: float
    start: float
    """Requests per second as the stage begins."""
    end: float
    """... and as it ends: the same for a constant rate."""


def stages_problem(stages: Sequence[Sequence[float]]) -> str | None:
    """Why ``stages`` (``[seconds, start, end]`` each) cannot be a job's rate, or None."""
    if not 1 <= len(stages) <= MAX_STAGES:
        return f"a staged rate has 1 to {MAX_STAGES} stages"
    for stage in stages:
        if (
            not isinstance(stage, list | tuple)
            or len(stage) != 3
            or not all(
                isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
                for x in stage
            )
        ):
            return "each stage is [seconds, start rate, end rate]"
        seconds, start, end = stage
        if not 0 < seconds <= MAX_STAGE_SECONDS:
            return f"a stage lasts more than 0 and at most {MAX_STAGE_SECONDS:g} seconds"
        if not (0 <= start <= MAX_RATE and 0 <= end <= MAX_RATE):
            return f"a stage's rates are from 0 to {MAX_RATE:g} per second"
    if Stages([[float(x) for x in stage] for stage in stages]).total < 1:
        return "the stages hold no request: give one a rate above 0"
    return None


class Stages:
    """The schedule a list of stages makes: when request ``n`` starts, how many have
    started by a time, and the rate at a time (all in seconds from the stages' start)."""

    def __init__(self, stages: Sequence[Sequence[float]]) -> None:
        self.stages = tuple(Stage(*stage) for stage in stages)
        self._begins: list[float] = []
        """When each stage begins."""
        self._counts: list[float] = []
        """The integral of the rate where each stage begins."""
        at = count = 0.0
        for stage in self.stages:
            self._begins.append(at)
            self._counts.append(count)
            at += stage.seconds
            count += (stage.start + stage.end) / 2 * stage.seconds
        self.duration = at
        self.total = count
        """Requests the stages hold (fractional: ``requests`` rounds it)."""
        self.tail_rate = next(
            (rate for stage in reversed(self.stages) for rate in (stage.end, stage.start) if rate),
            0.0,
        )

    @property
    def requests(self) -> int:
        """Requests that start within the stages."""
        return math.floor(self.total + 0.5)

    def start_of(self, n: int) -> float:
        """When request ``n`` starts."""
        target = n + 0.5
        if target > self.total:
            return self.duration + (target - self.total) / self.tail_rate
        index = bisect.bisect_left(self._counts, target) - 1  # (never a pause: it holds none)
        stage, left = self.stages[index], target - self._counts[index]
        return self._begins[index] + _time_into(stage, left)

    def started_by(self, t: float) -> float:
        """The integral of the rate from the start to ``t``."""
        if t <= 0:
            return 0.0
        if t >= self.duration:
            return self.total + (t - self.duration) * self.tail_rate
        index = bisect.bisect_right(self._begins, t) - 1
        stage, into = self.stages[index], t - self._begins[index]
        rate_then = stage.start + (stage.end - stage.start) * into / stage.seconds
        return self._counts[index] + (stage.start + rate_then) / 2 * into

    def rate_at(self, t: float) -> float:
        if t < 0:
            return self.stages[0].start
        if t >= self.duration:
            return self.tail_rate
        index = bisect.bisect_right(self._begins, t) - 1
        stage, into = self.stages[index], t - self._begins[index]
        return stage.start + (stage.end - stage.start) * into / stage.seconds


def _time_into(stage: Stage, count: float) -> float:
    """Seconds into ``stage`` at which its integral reaches ``count`` (> 0, within it).

    The rate is ``a + (b - a) t / T``; its integral ``a t + k t^2`` with
    ``k = (b - a) / 2T``, solved for ``t`` in the form that loses no precision when
    ``k`` is small: ``t = 2 count / (a + sqrt(a^2 + 4 k count))``."""
    a, k = stage.start, (stage.end - stage.start) / (2 * stage.seconds)
    root = math.sqrt(max(0.0, a * a + 4 * k * count))
    return min(stage.seconds, 2 * count / (a + root)) if a + root > 0 else stage.seconds
