"""``fetchq status --watch``: the server's status redrawn once a second on a terminal.

Per job: a progress bar (finished out of submitted) with its ETA, the rate
now, the target rate when the server gives one, the failed tasks and the
leased ones (in flight at workers).  Per worker: its rate and when it was
last heard from.  Counters keep the names ``status`` gives them; "finished"
is succeeded plus failed.  The rate now is worked out here, from the change
in each job's finished count between snapshots.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from fetchq.client import BrokerClient
from fetchq.config import Address
from fetchq.errors import ServerUnreachable
from fetchq.status import WORKER_GONE_AFTER, job_state
from fetchq.units import format_eta, format_rate

REFRESH_EVERY = 1.0
"""Seconds between two snapshots: once a second, as top does."""

RATE_WINDOW = 5.0
"""Seconds of snapshots the rate now is measured over: long enough to smooth batches."""

BAR_WIDTH = 24


class RateMeter:
    """Each job's rate now: finished tasks per second over the last few snapshots."""

    def __init__(self, window: float = RATE_WINDOW) -> None:
        self.window = window
        self._samples: dict[str, deque[tuple[float, int]]] = {}

    def sample(self, job: str, now: float, finished: int) -> float | None:
        """Record ``finished`` at ``now``; returns the rate over the window (None at first)."""
        samples = self._samples.setdefault(job, deque())
        if samples and finished < samples[-1][1]:
            samples.clear()  # the count went back: a server restarted without its journal
        samples.append((now, finished))
        while len(samples) > 2 and samples[1][0] <= now - self.window:
            samples.popleft()
        first_time, first_finished = samples[0]
        span = now - first_time
        return (finished - first_finished) / span if span > 0 else None


def finished_count(counts: dict[str, Any]) -> int:
    return int(counts["succeeded"]) + int(counts["failed"])


def eta(counts: dict[str, Any], rate: float | None) -> str:
    remaining = int(counts["submitted"]) - finished_count(counts)
    if remaining <= 0:
        return "-"
    if not rate:
        return "?"
    return format_eta(remaining / rate)


def render_watch(
    status: dict[str, Any], address: Address, meter: RateMeter, now: float
) -> RenderableType:
    header = Text(
        f"fetchq status --watch: server {address} (fetchq {status['version']}): "
        f"{status['queued']} queued, {status['leased']} leased, "
        f"{status['unconfirmed']} unconfirmed.  Ctrl-C quits."
    )
    return Group(header, _jobs_table(status["jobs"], meter, now), _workers_table(status))


def _jobs_table(jobs: dict[str, dict[str, Any]], meter: RateMeter, now: float) -> RenderableType:
    if not jobs:
        return Text("no jobs")
    table = Table(title="jobs", title_justify="left", expand=False)
    for heading in ("job", "progress", "finished", "ETA", "rate now", "target rate", "failed"):
        table.add_column(heading, justify="left" if heading in ("job", "progress") else "right")
    table.add_column("leased", justify="right")
    table.add_column("state")
    for name, counts in jobs.items():
        finished = finished_count(counts)
        total = int(counts["submitted"])
        rate = meter.sample(name, now, finished)
        target = counts.get("rate")
        table.add_row(
            name,
            ProgressBar(total=max(total, 1), completed=finished, width=BAR_WIDTH),
            f"{finished}/{total}",
            eta(counts, rate),
            format_rate(rate),
            "-" if target is None else format_rate(float(target)),
            str(counts["failed"]),
            str(counts["leased"]),
            job_state(counts),
        )
    return table


def _workers_table(status: dict[str, Any]) -> RenderableType:
    workers = status["workers"]
    if not workers:
        return Text("no workers seen")
    table = Table(title="workers", title_justify="left", expand=False)
    table.add_column("worker")
    for heading in ("rate", "last contact", "leased", "reported"):
        table.add_column(heading, justify="right")
    for worker in workers:
        ago = float(worker["last_seen_ago"])
        table.add_row(
            worker["worker"],
            format_rate(float(worker["rate"])),
            "gone" if ago > WORKER_GONE_AFTER else f"{ago:.0f}s ago",
            str(worker["leased"]),
            str(worker["reported"]),
        )
    return table


def watch(
    client: BrokerClient,
    address: Address,
    *,
    console: Console | None = None,
    every: float = REFRESH_EVERY,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Redraw the status every ``every`` seconds until Ctrl-C.

    A server that goes away is said on screen and asked again at the next
    tick, so the view survives a restart."""
    meter = RateMeter()
    with Live(console=console, auto_refresh=False, transient=False) as live:
        try:
            while True:
                started = clock()
                try:
                    view = render_watch(client.call("status"), address, meter, started)
                except ServerUnreachable as exc:
                    view = Text(f"fetchq status --watch: {exc.message}; asking again every second")
                live.update(view, refresh=True)
                sleep(max(0.0, every - (clock() - started)))
        except KeyboardInterrupt:
            return
