"""fetchq status: what the server holds, per job, and which workers it has seen."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from fetchq import config
from fetchq.client import BrokerClient
from fetchq.commandline import AuthkeyFileOption, ServerOption, reports_errors

WORKER_GONE_AFTER = 60.0
"""Seconds without contact after which a worker is shown as gone."""


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


def job_state(counts: dict[str, Any]) -> str:
    return "complete" if counts["complete"] else "sealed" if counts["sealed"] else "open"


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
            lines.append(f"{name:<{width}}  {cells}  {job_state(counts)}")
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
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON")] = False,
    server: ServerOption = None,
    authkey_file: AuthkeyFileOption = None,
) -> None:
    """Show queue depths per job, leased tasks and the workers seen.

    An unreachable server is said at once (exit 4): a look at the queue
    should not wait for a server that is not there."""
    address = config.server_address(server)
    key = config.client_authkey(authkey_file)
    client = BrokerClient(address, key.key)
    client.connect()
    reply = client.call("status")
    if as_json:
        print(json.dumps(reply, indent=2))
    else:
        print(render_status(reply, address))
