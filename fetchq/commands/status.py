"""fetchq status: what the server holds, per job, and which workers it has seen.

``--watch`` redraws it once a second on a terminal (see :mod:`fetchq.commands.watch`).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from fetchq import config
from fetchq.commands.options import connects, reports_errors
from fetchq.errors import UsageError
from fetchq.messages import plural
from fetchq.units import format_achieved, format_duration, format_rate
from fetchq.wire.api import WORKER_GONE_AFTER
from fetchq.wire.client import BrokerClient

JOB_COLUMNS = (
    "submitted",
    "queued",
    "leased",
    "succeeded",
    "failed",
    "expired",
    "waiting",
    "handed_out",
    "confirmed",
)
"""The job counters shown, under the names ``status --json`` gives them."""


BEHIND = 0.95
"""A job achieving less than this share of its target rate, with work queued, is behind."""


def pace_lines(name: str, job: dict[str, Any], threads: int) -> list[str]:
    """A job's target and achieved rate, late starts, and, when the fleet cannot keep up,
    how many requests the rate needs in flight (Little's law) against the threads there are."""
    pace = job["pace"]
    if not pace["target"]:
        return []
    late = (
        f", {plural(pace['late'], 'late start')} (worst {format_duration(pace['worst_lateness'])})"
    )
    line = (
        f"  {name}: target {format_rate(pace['target'])}, achieved "
        f"{format_achieved(pace['achieved'], pace['achieved_over'])}{late if pace['late'] else ''}"
    )
    lines = [line]
    needed = pace["needed_in_flight"]
    measured = pace["achieved_over"] > 0
    # An aggregate job's requests count when their span reports, a round of spans at
    # a time: its achieved rate moves in steps, and says nothing of keeping up.
    steady = not job["policy"].get("aggregate")
    behind = steady and job["queued"] and measured and pace["achieved"] < BEHIND * pace["target"]
    if needed is not None and (behind or needed > threads):
        lines.append(
            f"    cannot keep up: the rate needs about {plural(needed, 'request')} in flight "
            f"(rate x mean service time) and the fleet has {plural(threads, 'fetch thread')}"
            + (f": add about {needed - threads:.0f}" if needed > threads else "")
        )
    return lines


def host_lines(name: str, job: dict[str, Any]) -> list[str]:
    return [
        f"  {name}: {host['host']} {host['queued']} queued, {host['in_flight']} in flight"
        for host in job["hosts"]
    ]


def render_status(status: dict[str, Any], address: config.Address) -> str:
    header = (
        f"server {address} (fetchq {status['version']}): {status['queued']} queued, "
        f"{status['leased']} leased, {status['unconfirmed']} unconfirmed"
    )
    lines = [header, ""]
    jobs = status["jobs"]
    if jobs:
        width = max(len("job"), *(len(name) for name in jobs))
        lines.append(f"{'job':<{width}}  " + "  ".join(f"{c:>10}" for c in JOB_COLUMNS) + "  state")
        for name, counts in jobs.items():
            cells = "  ".join(f"{counts[c]:>10}" for c in JOB_COLUMNS)
            lines.append(f"{name:<{width}}  {cells}  {counts['state']}")
        paced = [line for n, job in jobs.items() for line in pace_lines(n, job, status["threads"])]
        if paced:
            lines += ["", "pace:", *paced]
        hosts = [line for n, job in jobs.items() for line in host_lines(n, job)]
        if hosts:
            lines += ["", "hosts with the longest queues:", *hosts]
    else:
        lines.append("no jobs")
    lines.append("")
    workers = status["workers"]
    if workers:
        width = max(len("worker"), *(len(w["worker"]) for w in workers))
        lines.append(
            f"{'worker':<{width}}  {'last seen':>10}  {'leased':>7}  {'reported':>9}  rate/s"
        )
        for w in workers:
            seen = (
                "gone"
                if w["last_seen_ago"] > WORKER_GONE_AFTER
                else f"{w['last_seen_ago']:.0f}s ago"
            )
            lines.append(
                f"{w['worker']:<{width}}  {seen:>10}  {w['leased']:>7}  {w['reported']:>9}  "
                f"{w['rate']:.1f}"
            )
    else:
        lines.append("no workers seen")
    return "\n".join(lines)


@reports_errors
@connects
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON")] = False,
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="Redraw once a second until Ctrl-C")
    ] = False,
    *,
    link: config.ServerLink,
) -> None:
    """Show queue depths per job, leased tasks and the workers seen.

    An unreachable server is said at once (exit 4): a look at the queue
    should not wait for a server that is not there."""
    if watch and as_json:
        raise UsageError("--watch draws for a person; --json gives one snapshot for scripts")
    client = BrokerClient(link)
    client.connect()
    if watch:
        from fetchq.commands.watch import watch as watch_status  # rich's Live only when watching

        watch_status(client, link.address)
        return
    reply = client.call("status")
    if as_json:
        print(json.dumps(reply, indent=2))
    else:
        print(render_status(reply, link.address))
