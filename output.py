"""fetchq output: collect results and write them as text, JSONL or CSV.

Results stream to stdout (or ``--out``) as they arrive.  ``--until-done``
stops once every task of the job has its result; ``--summary`` ends with a
report: rates, success ratio, latency percentiles and histogram, status and
error counts, breakdowns by worker host and target host.  ``--html FILE``
writes the same report as one self-contained HTML page with charts.
"""

from __future__ import annotations

import contextlib
import enum
import os
import sys
from typing import Annotated, TextIO

import typer

from fetchq import config, defaults
from fetchq.commands.collect import collect
from fetchq.commands.options import (
    CheckOption,
    GiveUpOption,
    connects,
    reports_errors,
    run_alone,
    say,
)
from fetchq.errors import (
    ConfigError,
    ExitCode,
    FetchqError,
    NoSuchJob,
    UsageError,
    cannot_read,
)
from fetchq.ids import IdSet
from fetchq.messages import plural
from fetchq.report.checks import (
    check_rows,
    judge,
    parse_checks,
    render_checks,
)
from fetchq.report.formats import ids_in_file, open_writer
from fetchq.report.htmlfile import HtmlReportFile
from fetchq.report.summary import Summary
from fetchq.signals import StopRequest
from fetchq.wire.api import check_job_name
from fetchq.wire.client import BrokerClient, ResilientClient

HELP = "Collect results from the queue server as text, JSONL or CSV, with a summary."


class Format(enum.StrEnum):
    text = "text"
    jsonl = "jsonl"
    csv = "csv"
    none = "none"


def open_output(path: str | None, append: bool) -> TextIO:
    if path is None or path == "-":
        return sys.stdout
    try:
        return open(path, "a" if append else "w", encoding="utf-8", newline="")
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from None


def already_written(path: str | None, fmt: Format) -> IdSet:
    """Ids an earlier, interrupted run of output left in ``path``."""
    if path is None or path == "-" or fmt not in (Format.jsonl, Format.csv):
        raise UsageError("--append needs --out FILE and --format jsonl or csv")
    if not os.path.exists(path):
        return IdSet()
    try:
        return ids_in_file(path, fmt.value)
    except OSError as exc:
        raise cannot_read("--out file", path, exc) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot resume {path}: {exc}") from None


def fleet_threads(client: BrokerClient) -> int | None:
    """The fetch threads of the workers the server has heard from lately: what a rate's
    concurrency is weighed against (None when the server cannot say now)."""
    try:
        threads = client.call("status").get("threads")
    except FetchqError:
        return None
    return int(threads) if isinstance(threads, int) and threads > 0 else None


def say_if_unknown(client: BrokerClient, job: str) -> None:
    """Output may well start before its job is dispatched, so it waits for an unknown
    job; but it says so, and names the jobs there are, in case the name is a typo."""
    try:
        client.call("job", job)
    except NoSuchJob as exc:
        say(f"waiting for job {job}: {exc}")


@reports_errors
@connects
def output(
    job: Annotated[
        str | None,
        typer.Option("--job", "-j", metavar="NAME", help="Job to collect (else every job)"),
    ] = None,
    fmt: Annotated[
        Format, typer.Option("--format", "-F", help="How each result is written")
    ] = Format.text,
    out: Annotated[
        str | None,
        typer.Option("--out", "-o", metavar="FILE", help="Write results to this file, not stdout"),
    ] = None,
    summary: Annotated[bool, typer.Option(help="End with a summary report")] = False,
    html: Annotated[
        str | None,
        typer.Option(
            "--html",
            metavar="FILE",
            help="At the end, write the report as one self-contained HTML file",
        ),
    ] = None,
    until_done: Annotated[
        bool, typer.Option(help="Exit once every task of the job has its result")
    ] = False,
    append: Annotated[
        bool,
        typer.Option(
            help="Continue an --out file an earlier run left: skip results it already holds"
        ),
    ] = False,
    check: CheckOption = None,
    give_up_after: GiveUpOption = defaults.GIVE_UP_AFTER,
    *,
    link: config.ServerLink,
) -> None:
    """Write results as they arrive; with --until-done, stop when the job is complete."""
    if job is not None:
        check_job_name(job)
    checks = parse_checks(check)
    written_ids = already_written(out, fmt) if append else IdSet()
    page = HtmlReportFile(html) if html is not None else None
    stop = StopRequest().install()
    client = ResilientClient(link, give_up_after=give_up_after, stop=stop)
    client.connect()
    if job is not None:
        say_if_unknown(client, job)
    report = Summary() if summary or page is not None or checks else None
    try:
        with contextlib.ExitStack() as stack:
            writer = None
            if fmt is not Format.none:
                stream = open_output(out, append)
                if stream is not sys.stdout:
                    stack.enter_context(stream)
                writer = open_writer(fmt.value, stream, continuing=append and stream.tell() > 0)
            done = collect(
                client,
                job,
                writer=writer,
                summary=report,
                until_done=until_done,
                stop=stop,
                written_ids=written_ids,
            )
    except OSError as exc:  # the client's own errors are FetchqErrors: this is the writing
        where = out if out not in (None, "-") else "stdout"
        resume = " (run again with --append to resume it)" if where != "stdout" else ""
        raise FetchqError(
            f"cannot write {where}: {exc.strerror or exc}; results not written stay on "
            f"the server{resume}"
        ) from None
    if done.repeated:
        say(f"skipped {plural(done.repeated, 'result')} handed out again, already written")
    if stop.requested:
        say(f"output stopped on {stop.signal_name} after {plural(done.written, 'result')}")
    if report is not None and report.scheduled:  # only a rate weighs the fleet's threads
        report.fetch_threads = fleet_threads(client)
    judged = judge(checks, report.as_dict()) if report is not None and checks else []
    if report is not None and (summary or judged):
        to_stdout = fmt is Format.none or out not in (None, "-")
        text = (report.render() if summary else "") + render_checks(judged)
        print(text.rstrip("\n"), file=sys.stdout if to_stdout else sys.stderr, flush=True)
    if report is not None and page is not None:
        title = f"fetchq report: {'job ' + job if job else 'every job'}"
        say(page.write(report, title, check_rows(judged)))
    if stop.requested:
        raise typer.Exit(ExitCode.INTERRUPTED)
    if not all(passed for _, _, passed in judged):
        raise typer.Exit(ExitCode.CHECK_FAILED)


if __name__ == "__main__":
    run_alone(output, HELP)
