"""fetchq report: the summary of saved results, as text or a self-contained HTML page.

Like ``vegeta report`` and ``vegeta plot``: any number of JSONL files written
by ``fetchq output --format jsonl``, merged into one summary.
"""

from __future__ import annotations

from typing import Annotated

import typer

from fetchq.commands.options import CheckOption, reports_errors, say
from fetchq.errors import ExitCode
from fetchq.report.checks import (
    check_rows,
    judge,
    parse_checks,
    render_checks,
)
from fetchq.report.htmlfile import HtmlReportFile
from fetchq.report.resultfiles import read_results
from fetchq.report.summary import Summary


@reports_errors
def report(
    files: Annotated[
        list[str],
        typer.Argument(
            help="JSONL files from fetchq output --format jsonl (- for stdin)",
            metavar="FILE.jsonl",
            show_default=False,
        ),
    ],
    html: Annotated[
        str | None,
        typer.Option(
            "--html", metavar="FILE", help="Also write the report as one self-contained HTML file"
        ),
    ] = None,
    check: CheckOption = None,
) -> None:
    """Summarise saved results, merging several files: text on stdout, --html for a page."""
    checks = parse_checks(check)
    page = HtmlReportFile(html) if html is not None else None
    summary = Summary()
    for result in read_results(files):
        summary.add(result)
    judged = judge(checks, summary.as_dict())
    print(summary.render() + render_checks(judged), end="", flush=True)
    if page is not None:
        say(page.write(summary, f"fetchq report: {', '.join(files)}", check_rows(judged)))
    if not all(passed for _, _, passed in judged):
        raise typer.Exit(ExitCode.CHECK_FAILED)
