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
    AuthkeyFileOption,
    ServerOption,
    TlsCaOption,
    TlsCertOption,
    TlsKeyOption,
    make_app,
    reports_errors,
)
from fetchq.errors import UsageError
from fetchq.units import format_achieved, format_rate, parse_duration, parse_rate
from fetchq.wire import tls
from fetchq.wire.api import MAX_HOST_DELAY, MAX_PER_HOST
from fetchq.wire.client import BrokerClient

HELP = "List jobs; pause, resume or cancel one; change its rate and host limits while it runs."

app = make_app(HELP)

JobArgument = Annotated[str, typer.Argument(help="The job's name")]


Link = tuple[str | None, str | None, str | None, str | None, str | None]
"""The connection options every subcommand takes: server, key file, TLS CA, cert, key."""


def _connect(link: Link) -> BrokerClient:
    """Like ``status``: a server that is not there is said at once."""
    server, authkey_file, tls_ca, tls_cert, tls_key = link
    client = BrokerClient(
        config.server_address(server),
        config.client_authkey(authkey_file).key,
        tls.client_tls(tls_ca, tls_cert, tls_key),
    )
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
def list_jobs(
    as_json: Annotated[bool, typer.Option("--json", help="Print the jobs as JSON")] = False,
    server: ServerOption = None,
    authkey_file: AuthkeyFileOption = None,
    tls_ca: TlsCaOption = None,
    tls_cert: TlsCertOption = None,
    tls_key: TlsKeyOption = None,
) -> None:
    """Each job's state, counts, target and achieved rate, and limits."""
    link = (server, authkey_file, tls_ca, tls_cert, tls_key)
    jobs = _connect(link).call("status")["jobs"]
    print(json.dumps(jobs, indent=2) if as_json else render_jobs(jobs))


def _steer(link: Link, job: str, change: dict[str, Any]) -> None:
    view = _connect(link).call("steer", job, change)
    print(
        f"job {job}: {view['state']}, rate {format_rate(view['policy']['rate'])}, "
        f"limits {limits_text(view['policy'])}"
    )


ACTIONS = {
    "pause": "Lease no more tasks of the job; requests already running finish.",
    "resume": "Lease the job's tasks again (its rate starts afresh).",
    "cancel": "End the job's queued tasks as results of type cancelled; running ones finish.",
}
"""The steering commands that take nothing but the job: each one a journaled action."""


def _action_command(action: str) -> Callable[..., None]:
    def command(
        job: JobArgument,
        server: ServerOption = None,
        authkey_file: AuthkeyFileOption = None,
        tls_ca: TlsCaOption = None,
        tls_cert: TlsCertOption = None,
        tls_key: TlsKeyOption = None,
    ) -> None:
        _steer((server, authkey_file, tls_ca, tls_cert, tls_key), job, {"action": action})

    command.__doc__ = ACTIONS[action]
    return command


for _action in ACTIONS:
    app.command(_action)(reports_errors(_action_command(_action)))


@app.command("set")
@reports_errors
def set_limits(
    job: JobArgument,
    rate: Annotated[
        str | None, typer.Option(help="Requests per second for the fleet (200, 12000/m; 0: none)")
    ] = None,
    per_host: Annotated[
        int | None,
        typer.Option(min=0, max=MAX_PER_HOST, help="Requests in flight per host (0: no cap)"),
    ] = None,
    host_delay: Annotated[
        str | None, typer.Option(help="Time between starts on one host (0.5, 500ms; 0: none)")
    ] = None,
    server: ServerOption = None,
    authkey_file: AuthkeyFileOption = None,
    tls_ca: TlsCaOption = None,
    tls_cert: TlsCertOption = None,
    tls_key: TlsKeyOption = None,
) -> None:
    """Change the job's rate and host limits while it runs."""
    change: dict[str, Any] = {"action": "set"}
    if rate is not None:
        change["rate"] = parse_rate(rate, allow_zero=True) or None
    if per_host is not None:
        change["per_host"] = per_host or None
    if host_delay is not None:
        change["host_delay"] = parse_duration(host_delay, MAX_HOST_DELAY, allow_zero=True)
    if len(change) == 1:
        raise UsageError("nothing to set: give --rate, --per-host or --host-delay")
    _steer((server, authkey_file, tls_ca, tls_cert, tls_key), job, change)


if __name__ == "__main__":
    app()
