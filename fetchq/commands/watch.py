"""``fetchq status --watch``: the server's status redrawn once a second on a terminal.

Per job: a progress bar (finished out of submitted) with its ETA at the
achieved rate, the achieved and target rates, the late starts, the failed
tasks and the leased ones (in flight at workers).  Per worker: its rate and
when it was last seen.  Every figure is the one ``status`` gives,
under the same name; "finished" is succeeded plus failed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.console import Console, Group, JustifyMethod, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from fetchq.config import Address
from fetchq.errors import ServerUnreachable
from fetchq.messages import plural
from fetchq.units import format_eta, format_rate
from fetchq.wire.api import WORKER_GONE_AFTER
from fetchq.wire.client import BrokerClient

REFRESH_EVERY = 1.0
"""Seconds between two snapshots: once a second, as top does."""

BAR_WIDTH = 24


def finished_count(counts: dict[str, Any]) -> int:
    return int(counts["succeeded"]) + int(counts["failed"])


def eta(counts: dict[str, Any]) -> str:
    """Time left at the achieved rate: ``-`` when nothing is left, ``?`` when nothing moves."""
    remaining = int(counts["submitted"]) - finished_count(counts)
    if remaining <= 0:
        return "-"
    achieved = counts["pace"]["achieved"]
    if not achieved:
        return "?"
    return format_eta(remaining / achieved)


@dataclass
class _Column:
    heading: str
    cells: list[RenderableType]
    keep: int
    """The order columns are given up in when the terminal is narrow: the highest first;
    0 is never given up (a job's or a worker's name: the thing a user copies)."""
    justify: JustifyMethod = "right"
    width: int | None = None
    """For a cell with no text of its own (the progress bar)."""

    def natural_width(self) -> int:
        if self.width is not None:
            return max(self.width, len(self.heading))
        return max([len(self.heading), *(len(str(cell)) for cell in self.cells)])


def _table(title: str, columns: list[_Column], width: int | None) -> Table:
    """The columns that fit ``width``: the least wanted are left out, never cut short."""
    kept = list(columns)
    while width is not None and _table_width(kept) > width and any(c.keep for c in kept):
        kept.remove(max(kept, key=lambda column: column.keep))
    table = Table(title=title, title_justify="left", expand=False)
    for column in kept:
        table.add_column(
            column.heading,
            justify=column.justify,
            no_wrap=column.keep > 0,
            overflow="fold",  # a name longer than the whole terminal wraps, whole
            min_width=column.width,
        )
    for row in zip(*(column.cells for column in kept), strict=True):
        table.add_row(*row)
    return table


def _table_width(columns: list[_Column]) -> int:
    """A rich table's width: each column, its padding (a space each side), the rules."""
    return sum(column.natural_width() + 3 for column in columns) + 1


def render_watch(
    status: dict[str, Any], address: Address, width: int | None = None
) -> RenderableType:
    """The whole view; ``width``: the terminal's, which the tables are fitted to."""
    header = Text(
        f"fetchq status --watch: server {address} (fetchq {status['version']}): "
        f"{status['queued']} queued, {status['leased']} leased, "
        f"{status['unconfirmed']} unconfirmed, "
        f"{plural(status['threads'], 'fetch thread')}.  Ctrl-C quits."
    )
    return Group(header, _jobs_table(status["jobs"], width), _workers_table(status, width))


def _jobs_table(jobs: dict[str, dict[str, Any]], width: int | None) -> RenderableType:
    if not jobs:
        return Text("no jobs")
    names = list(jobs)
    counts = list(jobs.values())
    bars: list[RenderableType] = [
        ProgressBar(total=max(int(c["submitted"]), 1), completed=finished_count(c), width=BAR_WIDTH)
        for c in counts
    ]
    columns = [
        _Column("job", list(names), keep=0, justify="left"),
        _Column("progress", bars, keep=8, justify="left", width=BAR_WIDTH),
        _Column("finished", [f"{finished_count(c)}/{c['submitted']}" for c in counts], keep=1),
        _Column("ETA", [eta(c) for c in counts], keep=4),
        _Column("achieved", [format_rate(c["pace"]["achieved"]) for c in counts], keep=3),
        _Column("target", [format_rate(c["pace"]["target"]) for c in counts], keep=9),
        _Column("late", [str(c["pace"]["late"]) for c in counts], keep=10),
        _Column("failed", [str(c["failed"]) for c in counts], keep=5),
        _Column("leased", [str(c["leased"]) for c in counts], keep=6),
        _Column("state", [str(c["state"]) for c in counts], keep=2, justify="left"),
    ]
    return _table("jobs", columns, width)


def _workers_table(status: dict[str, Any], width: int | None) -> RenderableType:
    workers = status["workers"]
    if not workers:
        return Text("no workers seen")

    def seen(worker: dict[str, Any]) -> str:
        ago = float(worker["last_seen_ago"])
        return "gone" if ago > WORKER_GONE_AFTER else f"{ago:.0f}s ago"

    columns = [
        _Column("worker", [str(w["worker"]) for w in workers], keep=0, justify="left"),
        _Column("rate", [format_rate(float(w["rate"])) for w in workers], keep=1),
        _Column("last seen", [seen(w) for w in workers], keep=2),
        _Column("leased", [str(w["leased"]) for w in workers], keep=3),
        _Column("reported", [str(w["reported"]) for w in workers], keep=4),
    ]
    return _table("workers", columns, width)


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
    with Live(console=console, auto_refresh=False, transient=False) as live:
        try:
            while True:
                started = clock()
                try:
                    view = render_watch(client.call("status"), address, live.console.width)
                except ServerUnreachable as exc:
                    view = Text(f"fetchq status --watch: {exc.message}; asking again every second")
                live.update(view, refresh=True)
                sleep(max(0.0, every - (clock() - started)))
        except KeyboardInterrupt:
            return
