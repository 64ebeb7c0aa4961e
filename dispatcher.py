"""fetchq dispatch: submit URL-fetch tasks to the queue server.

URLs come from arguments, files, stdin (``-``) or a template, are checked
line by line as they stream in, and reach the server in batches.  The job
name alone goes to stdout, so ``JOB=$(fetchq dispatch -f urls.txt)`` works;
everything else goes to stderr.

Dispatching to an existing job (``--job``) adds tasks to it, at its own pace: pace
and politeness options that differ from the job's are refused, with the ``fetchq
job set`` line that changes them; a job that was done is reopened, and that is said.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Iterator
from typing import Annotated, Any, BinaryIO

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fetchq import config, defaults
from fetchq.commands.options import (
    GiveUpOption,
    HostDelayOption,
    PerHostOption,
    connects,
    host_delay_seconds,
    reports_errors,
    run_alone,
    say,
)
from fetchq.commands.specs import TARGETS_FORMATS, Targets, command_spec
from fetchq.commands.submit import Submitter, UrlSpans, new_job_name
from fetchq.errors import ExitCode, UsageError, cannot_read
from fetchq.messages import plural
from fetchq.units import is_staged, parse_duration, parse_rate, parse_stages
from fetchq.urls import Rejected, argument_urls, check_template, read_urls, template_batches
from fetchq.wire.aggregates import MAX_SPAN, NOT_WITH_AGGREGATE
from fetchq.wire.api import MAX_SUBMIT, MAX_TASK_TIMEOUT, check_job_name
from fetchq.wire.client import ResilientClient
from fetchq.wire.specs import MAX_BODY, METHODS, Spec
from fetchq.wire.stages import Stages

HELP = (
    "Submit URLs to fetch: as arguments, from files or stdin (-), from a template, "
    "or as vegeta targets."
)

MAX_REPORTED = 100
"""Rejected lines reported one by one; past this only the count is given."""


def open_input(path: str) -> BinaryIO:
    if path == "-":
        return sys.stdin.buffer
    try:
        return open(path, "rb")  # closed by the caller's ExitStack
    except OSError as exc:
        raise cannot_read("input file", path, exc) from None


def input_urls(
    urls: list[str], files: list[str], stack: contextlib.ExitStack
) -> Iterator[str | Rejected]:
    """The argument URLs first, then each ``--file`` in turn, then stdin if ``-``
    was among the arguments (``--file -`` reads stdin in its place among the files)."""
    plain = [url for url in urls if url != "-"]
    yield from argument_urls(plain)
    sources = [*files, *(["-"] if "-" in urls else [])]
    for path in sources:
        stream = stack.enter_context(open_input(path)) if path != "-" else open_input(path)
        yield from read_urls(stream, "stdin" if path == "-" else path)


def input_requests(
    urls: list[str],
    files: list[str],
    targets: str | None,
    form: str,
    spec: Spec,
    stack: contextlib.ExitStack,
) -> Iterator[str | tuple[str, Spec] | Rejected]:
    """``input_urls``, or the targets of a targets file (each block's spec after the
    headers of ``spec``, the command line's)."""
    if targets is None:
        return input_urls(urls, files, stack)
    stream = stack.enter_context(open_input(targets)) if targets != "-" else open_input(targets)
    return iter(Targets(targets, stream, form=form, headers=spec.headers))


class DispatchProgress:
    """A progress bar on stderr when it is a terminal; silence otherwise."""

    def __init__(self, total: int | None) -> None:
        console = Console(stderr=True)
        self.enabled = console.is_terminal
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            disable=not self.enabled,
        )
        self._task = self._progress.add_task("submitting", total=total)

    def __enter__(self) -> DispatchProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def update(self, accepted: int) -> None:
        self._progress.update(self._task, completed=accepted, description="submitting")

    def waiting(self, queued: int) -> None:
        self._progress.update(self._task, description=f"queue full ({queued} queued), waiting")


def job_policy(
    rate: str | None,
    per_host: int | None,
    host_delay: float | None,
    obey_robots: bool,
    retry_after: bool,
) -> dict[str, Any]:
    """The job's pace and politeness, as the server takes them (only what was given;
    0 for a host limit is none)."""
    policy: dict[str, Any] = {}
    if rate is not None and is_staged(rate):
        policy["stages"] = parse_stages(rate)
    elif rate is not None:
        policy["rate"] = parse_rate(rate)
    if per_host:
        policy["per_host"] = per_host
    if host_delay:
        policy["host_delay"] = host_delay
    if obey_robots:
        policy["obey_robots"] = True
    if retry_after:
        policy["retry_after"] = True
    return policy


def refuse_with_aggregate(policy: dict[str, Any]) -> None:
    """A usage error for what ``--aggregate`` does not go with (yet)."""
    for name, option in NOT_WITH_AGGREGATE.items():
        if name in policy:
            raise UsageError(f"--aggregate does not go with {option} yet")


def spans(template: str, count: int, size: int) -> list[dict[str, Any]]:
    """A template job's requests as spans of ``size`` (the last one shorter)."""
    return [
        {"template": template, "first": first, "count": min(size, count - first)}
        for first in range(0, count, size)
    ]


@reports_errors
@connects
def dispatch(
    urls: Annotated[
        list[str] | None,
        typer.Argument(metavar="URL", help="URLs to fetch; - reads them from stdin"),
    ] = None,
    file: Annotated[
        list[str] | None,
        typer.Option(
            "--file",
            "-f",
            metavar="FILE",
            help="File of URLs, one a line (- for stdin); repeatable",
        ),
    ] = None,
    template: Annotated[
        str | None,
        typer.Option(
            metavar="URL", help="URL with {i} replaced by 0 .. count-1, e.g. 'http://h/?q={i}'"
        ),
    ] = None,
    count: Annotated[
        int | None, typer.Option(min=0, metavar="N", help="URLs the template makes")
    ] = None,
    job: Annotated[
        str | None,
        typer.Option("--job", "-j", metavar="NAME", help="Job name (else a new unique one)"),
    ] = None,
    timeout: Annotated[
        float,
        typer.Option(
            min=0.001,
            max=MAX_TASK_TIMEOUT,
            metavar="SECONDS",
            help="Seconds one fetch may take in all",
        ),
    ] = defaults.TASK_TIMEOUT,
    attempts: Annotated[
        int | None,
        typer.Option(
            min=1, max=100, metavar="N", help="Tries per task (else the server's --max-attempts)"
        ),
    ] = None,
    batch_size: Annotated[
        int, typer.Option(min=1, max=MAX_SUBMIT, metavar="N", help="URLs per submit call")
    ] = defaults.SUBMIT_BATCH,
    rate: Annotated[
        str | None,
        typer.Option(
            metavar="RATE",
            help="Requests per second for the whole fleet: 200, 200/s, 12000/m, 60/h; or "
            "stages: '0..500/s over 1m, 500/s for 5m, 500..0/s over 30s'. "
            "For a new job; an existing job keeps its own (fetchq job set changes it)",
        ),
    ] = None,
    duration: Annotated[
        str | None,
        typer.Option(
            metavar="DURATION", help="With --template and --rate: run for this long (30s, 5m, 1h)"
        ),
    ] = None,
    per_host: PerHostOption = None,
    host_delay: HostDelayOption = None,
    obey_robots: Annotated[
        bool,
        typer.Option(help="Fetch robots.txt first; skip what it disallows, honour Crawl-delay"),
    ] = False,
    retry_after: Annotated[
        bool, typer.Option(help="On 429/503 with Retry-After, hold the host and try again later")
    ] = False,
    aggregate: Annotated[
        bool,
        typer.Option(
            "--aggregate",
            help="Workers send one summary per span of requests instead of a result each: "
            "a load test of millions of requests that costs the server next to nothing",
        ),
    ] = False,
    span: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=MAX_SPAN,
            metavar="N",
            help=f"With --aggregate: requests a worker leases at once [default: {defaults.SPAN}]",
        ),
    ] = None,
    method: Annotated[
        str | None,
        typer.Option(metavar="METHOD", help=f"HTTP method: {', '.join(METHODS)} [default: GET]"),
    ] = None,
    header: Annotated[
        list[str] | None,
        typer.Option(
            "--header",
            "-H",
            metavar="'NAME: VALUE'",
            help="A header every request sends; repeatable. Values are secrets: never shown",
        ),
    ] = None,
    header_env: Annotated[
        list[str] | None,
        typer.Option(
            metavar="'NAME: VARIABLE'",
            help="A header whose value is the environment variable's, so that a token "
            "never sits on a command line; repeatable",
        ),
    ] = None,
    body: Annotated[
        str | None,
        typer.Option(
            metavar="@FILE|TEXT", help=f"The body every request sends (at most {MAX_BODY} bytes)"
        ),
    ] = None,
    targets: Annotated[
        str | None,
        typer.Option(
            metavar="FILE",
            help="vegeta targets: blocks of 'METHOD URL', headers and an @body line, "
            "blank lines between (- for stdin)",
        ),
    ] = None,
    targets_format: Annotated[
        str,
        typer.Option(metavar="FORMAT", help="http (vegeta's text blocks) or json (one a line)"),
    ] = "http",
    give_up_after: GiveUpOption = defaults.GIVE_UP_AFTER,
    *,
    link: config.ServerLink,
) -> None:
    """Submit URLs as tasks of one job and print the job's name."""
    urls, files = urls or [], file or []
    spec = command_spec(method, header or [], header_env or [], body)
    if targets is not None:
        if urls or files or template is not None:
            raise UsageError("--targets says every request itself: give it without URLs")
        if method is not None or body is not None:
            raise UsageError("--targets says each request's method and body: drop --method, --body")
        targets_format = targets_format.lower()
        if targets_format not in TARGETS_FORMATS:
            raise UsageError(f"--targets-format: use one of {', '.join(TARGETS_FORMATS)}")
    policy = job_policy(rate, per_host, host_delay_seconds(host_delay), obey_robots, retry_after)
    if "stages" in policy:
        if duration is not None:
            raise UsageError("--duration does not go with stages: they say how long the job runs")
        if template is not None and count is not None:
            raise UsageError(
                "with stages, --template makes as many URLs as the stages hold: drop --count"
            )
        if template is not None:
            count = Stages(policy["stages"]).requests
    if duration is not None:
        if template is None or rate is None or count is not None:
            raise UsageError("--duration goes with --template and --rate, instead of --count")
        count = math.ceil(policy["rate"] * parse_duration(duration))
    if (template is None) != (count is None):
        raise UsageError("--template and --count go together")
    if not urls and not files and template is None and targets is None:
        raise UsageError(
            "nothing to dispatch: give URLs, --file PATH (or -), --template or --targets"
        )
    if template is not None and count is not None:
        try:
            check_template(template, count)
        except ValueError as exc:
            raise UsageError(f"--template: {exc}") from None
    if span is not None and not aggregate:
        raise UsageError("--span goes with --aggregate")
    if aggregate:
        refuse_with_aggregate(policy)
        policy["aggregate"] = True
    job_name = check_job_name(job) if job else new_job_name()
    client = ResilientClient(link, give_up_after=give_up_after)
    client.connect()

    submitter = Submitter(
        client,
        job_name,
        timeout=timeout,
        attempts=attempts,
        batch_size=batch_size,
        policy=policy,
        spec=spec,
    )
    skipped = 0
    with contextlib.ExitStack() as stack, DispatchProgress(count) as progress:
        submitter.on_full = progress.waiting
        submitter.on_accepted = progress.update
        url_spans = UrlSpans(submitter, span or defaults.SPAN) if aggregate else None
        add = submitter.add if url_spans is None else url_spans.add
        use = submitter.use if url_spans is None else url_spans.use
        for item in input_requests(urls, files, targets, targets_format, spec, stack):
            if isinstance(item, Rejected):
                skipped += 1
                if skipped <= MAX_REPORTED:
                    say(f"skipped {item}")
                continue
            if isinstance(item, tuple):  # a target: its URL and its spec
                use(item[1])
                item = item[0]
            add(item)
        if url_spans is not None:
            url_spans.finish()
        if aggregate and template is not None and count is not None:
            submitter.add_spans(spans(template, count, span or defaults.SPAN))
        elif template is not None and count is not None:
            for batch in template_batches(template, count, size=batch_size):
                submitter.add_many(batch)
        submitter.finish()
    print(job_name, flush=True)
    if submitter.reopened:
        say(
            f"job {job_name} was done: these tasks reopen it (an output that stopped when it "
            "was done will not see their results: start another)"
        )
    tasks = plural(submitter.accepted, "task")
    if aggregate:
        tasks = f"{plural(submitter.requests, 'request')} in {plural(submitter.accepted, 'span')}"
    message = f"dispatched {tasks} as job {job_name} to {link.address}"
    if skipped:
        say(f"{message}; skipped {plural(skipped, 'invalid line')}")
        raise typer.Exit(ExitCode.SKIPPED_INPUT)
    if not submitter.accepted:
        say(f"{message}: the input held no URLs")
    else:
        say(message)


if __name__ == "__main__":
    run_alone(dispatch, HELP)
