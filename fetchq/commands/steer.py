"""fetchq job: list jobs, and pause, resume, cancel or re-pace one while it runs.

Every change is journaled on the server, so a restart keeps it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any

import typer

from fetchq import config
from fetchq.commands.options import (
    HostDelayOption,
    PerHostOption,
    connects,
    host_delay_seconds,
    make_app,
    reports_errors,
)
from fetchq.errors import UsageError
from fetchq.messages import plural
from fetchq.units import format_achieved, format_duration, format_rate, parse_rate
from fetchq.wire.client import BrokerClient

HELP = "List jobs; pause, resume or cancel one; change its rate and host limits while it runs."

app = make_app(HELP)

JobArgument = Annotated[str, typer.Argument(metavar="JOB", help="The job's name")]


def _connect(link: config.ServerLink) -> BrokerClient:
    """Like ``status``: a server that is not there is said at once."""
    client = BrokerClient(link)
    client.connect()
    return client


def limits_text(policy: dict[str, Any]) -> str:
    parts = []
    if policy.get("per_host"):
        parts.append(f"{policy['per_host']}/host")
    if policy.get("host_delay"):
        parts.append(f"{policy['host_delay']:g}s/host")
    if policy.get("obey_robots"):
        parts.append("robots")
    if policy.get("retry_after"):
        parts.append("retry-after")
    if policy.get("aggregate"):
        parts.append("aggregate")
    return ",".join(parts) or "-"


def render_jobs(jobs: dict[str, dict[str, Any]]) -> str:
    if not jobs:
        return "no jobs"
    head = (
        "job",
        "state",
        "finished",
        "of",
        "queued",
        "leased",
        "target",
        "achieved",
        "late",
        "limits",
    )
    rows = [head]
    for name, job in jobs.items():
        pace = job["pace"]
        rows.append(
            (
                name,
                job["state"],
                str(job["succeeded"] + job["failed"]),
                str(job["submitted"]),
                str(job["queued"]),
                str(job["leased"]),
                format_rate(pace["target"]),
                format_achieved(pace["achieved"], pace["achieved_over"]),
                str(pace["late"]),
                limits_text(job["policy"]),
            )
        )
    widths = [max(len(row[n]) for row in rows) for n in range(len(head))]
    return "\n".join(
        "  ".join(
            cell.ljust(width) if n < 2 else cell.rjust(width)
            for n, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    )


@app.command("list")
@reports_errors
@connects
def list_jobs(
    as_json: Annotated[bool, typer.Option("--json", help="Print the jobs as JSON")] = False,
    *,
    link: config.ServerLink,
) -> None:
    """Each job's state, counts, target and achieved rate, and limits."""
    jobs = _connect(link).call("status")["jobs"]
    print(json.dumps(jobs, indent=2) if as_json else render_jobs(jobs))


def policy_words(policy: dict[str, Any]) -> str:
    """A job's pace and host limits as a sentence's end: what ``job set`` leaves."""
    rate = f"rate {format_rate(policy['rate'])}" if policy.get("rate") else "no rate limit"
    per_host = policy.get("per_host")
    delay = policy.get("host_delay")
    hosts = f"at most {per_host} in flight per host" if per_host else "no limit in flight per host"
    gap = f", {format_duration(delay)} between starts on a host" if delay else ""
    return f"{rate}, {hosts}{gap}"


def steered(action: str, job: str, view: dict[str, Any]) -> str:
    """What a steering command did, said as done (``job J resumed: ...``), and what the
    job does now in words (the job's state alone, ``sealed``, read as if nothing had)."""
    state, queued, leased = view["state"], int(view["queued"]), int(view["leased"])
    finishing = f"{plural(leased, 'leased task')} finishing" if leased else ""
    if state == "done":
        return f"job {job} is done: every task has its result, there is nothing to {action}"
    if action == "pause":
        waiting = f"{plural(queued, 'queued task')} waiting" if queued else ""
        notes = "; ".join(part for part in (waiting, finishing) if part)
        return f"job {job} paused: none of its tasks is leased until `fetchq job resume {job}`" + (
            f" ({notes})" if notes else ""
        )
    if action == "resume":
        if state == "cancelled":
            return f"job {job} is cancelled: resuming it runs nothing"
        pace = f", {format_rate(view['policy']['rate'])}" if view["policy"].get("rate") else ""
        return f"job {job} resumed: its tasks are leased again ({queued} queued{pace})"
    if action == "cancel":
        return f"job {job} cancelled: its queued tasks end as cancelled results" + (
            f" ({finishing})" if finishing else ""
        )
    paused = f" (it stays paused: `fetchq job resume {job}` runs it)" if state == "paused" else ""
    return f"job {job} set: {policy_words(view['policy'])}{paused}"


def _steer(link: config.ServerLink, job: str, change: dict[str, Any]) -> None:
    view = _connect(link).call("steer", job, change)
    print(steered(change["action"], job, view))


ACTIONS = {
    "pause": "Lease none of the job's tasks until it is resumed. Running ones finish.",
    "resume": "Lease the job's tasks again (its rate starts afresh).",
    "cancel": "End the job's queued tasks as cancelled results. Running ones finish.",
}
"""The steering commands that take nothing but the job: each one a journaled action."""


def _action_command(action: str) -> Callable[..., None]:
    def command(job: JobArgument, *, link: config.ServerLink) -> None:
        _steer(link, job, {"action": action})

    command.__doc__ = ACTIONS[action]
    return command


for _action in ACTIONS:
    app.command(_action)(reports_errors(connects(_action_command(_action))))


@app.command("set")
@reports_errors
@connects
def set_limits(
    job: JobArgument,
    rate: Annotated[
        str | None,
        typer.Option(
            metavar="RATE", help="Requests per second for the fleet (200, 12000/m; 0: none)"
        ),
    ] = None,
    per_host: PerHostOption = None,
    host_delay: HostDelayOption = None,
    *,
    link: config.ServerLink,
) -> None:
    """Change the job's rate and host limits while it runs."""
    change: dict[str, Any] = {"action": "set"}
    if rate is not None:
        change["rate"] = parse_rate(rate, allow_zero=True) or None
    if per_host is not None:
        change["per_host"] = per_host or None
    if host_delay is not None:
        change["host_delay"] = host_delay_seconds(host_delay)
    if len(change) == 1:
        raise UsageError("nothing to set: give --rate, --per-host or --host-delay")
    _steer(link, job, change)


if __name__ == "__main__":
    app()
