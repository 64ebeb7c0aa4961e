"""fetchq report: the summary of saved results, as text or a self-contained HTML page.

Like ``vegeta report`` and ``vegeta plot``: any number of JSONL files written
by ``fetchq output --format jsonl``, merged into one summary.
"""

from __future__ import annotations

from typing import Annotated

import typer

from fetchq.commands.options import reports_errors, say
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
) -> None:
    """Summarise saved results, merging several files: text on stdout, --html for a page."""
    page = HtmlReportFile(html) if html is not None else None
    summary = Summary()
    for result in read_results(files):
        summary.add(result)
    print(summary.render(), end="", flush=True)
    if page is not None:
        say(page.write(summary, f"fetchq report: {', '.join(files)}"))
