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
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from fetchq.config import Address
from fetchq.errors import ServerUnreachable
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


def render_watch(status: dict[str, Any], address: Address) -> RenderableType:
    header = Text(
        f"fetchq status --watch: server {address} (fetchq {status['version']}): "
        f"{status['queued']} queued, {status['leased']} leased, "
        f"{status['unconfirmed']} unconfirmed, {status['threads']} fetch threads.  Ctrl-C quits."
    )
    return Group(header, _jobs_table(status["jobs"]), _workers_table(status))


def _jobs_table(jobs: dict[str, dict[str, Any]]) -> RenderableType:
    if not jobs:
        return Text("no jobs")
    table = Table(title="jobs", title_justify="left", expand=False)
    table.add_column("job")
    table.add_column("progress")
    for heading in ("finished", "ETA", "achieved", "target", "late", "failed", "leased"):
        table.add_column(heading, justify="right")
    table.add_column("state")
    for name, counts in jobs.items():
        finished = finished_count(counts)
        total = int(counts["submitted"])
        pace = counts["pace"]
        table.add_row(
            name,
            ProgressBar(total=max(total, 1), completed=finished, width=BAR_WIDTH),
            f"{finished}/{total}",
            eta(counts),
            format_rate(pace["achieved"]),
            format_rate(pace["target"]),
            str(pace["late"]),
            str(counts["failed"]),
            str(counts["leased"]),
            counts["state"],
        )
    return table


def _workers_table(status: dict[str, Any]) -> RenderableType:
    workers = status["workers"]
    if not workers:
        return Text("no workers seen")
    table = Table(title="workers", title_justify="left", expand=False)
    table.add_column("worker")
    for heading in ("rate", "last seen", "leased", "reported"):
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
    with Live(console=console, auto_refresh=False, transient=False) as live:
        try:
            while True:
                started = clock()
                try:
                    view = render_watch(client.call("status"), address)
                except ServerUnreachable as exc:
                    view = Text(f"fetchq status --watch: {exc.message}; asking again every second")
                live.update(view, refresh=True)
                sleep(max(0.0, every - (clock() - started)))
        except KeyboardInterrupt:
            return
