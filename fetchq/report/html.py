"""The summary as one self-contained HTML page: figures, charts over time, tables by place.

plotly.js is inlined once (see :mod:`fetchq.report.charts`), and a Content
Security Policy forbids every fetch, so the page opens offline and asks the
network for nothing.  Charts are drawn from the summary's time buckets (at
most 500 points a series), so a run of ten million results makes the same
page as a run of ten thousand.  Every figure is also text, in a table.
"""

from __future__ import annotations

import html
from datetime import UTC, datetime
from typing import Any

from fetchq import __version__
from fetchq.report import text as textreport
from fetchq.report.charts import (
    Charts,
    histogram_chart,
    latency_chart,
    library_script,
    rate_chart,
    throughput_chart,
)
from fetchq.report.summary import Summary
from fetchq.units import (
    format_bytes,
    format_duration,
    format_maybe_duration,
    format_rate,
    format_share,
)

PLACE_ROWS = 50
"""Places listed by name in each HTML breakdown; the rest are summed as ``other``."""

HISTOGRAM_BUCKETS = 40
"""Log-spaced latency buckets in the histogram chart."""

CONTENT_POLICY = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src data: blob:; font-src data:"
)
"""Inline scripts and styles only: the browser refuses any request the page might try."""

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222;
       padding: 0 1em; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
h2 { font-size: 1.15em; margin-top: 2em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
p.meta { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { padding: 0.25em 0.8em; border-bottom: 1px solid #eee; text-align: right; }
th { background: #f6f6f6; }
td.text, th.text { text-align: left; }
td.message { text-align: left; font-family: ui-monospace, monospace; font-size: 0.9em; }
.figures { display: grid; grid-template-columns: repeat(auto-fill, minmax(11em, 1fr));
           gap: 0.6em; }
.figure { background: #f6f8fa; border-radius: 6px; padding: 0.6em 0.8em; }
.figure .value { font-size: 1.3em; font-weight: 600; }
.figure .label { color: #666; font-size: 0.85em; }
.chart { margin: 0.5em 0 1.5em 0; }
.late { font-weight: 600; }
"""


def render_summary(summary: Summary, title: str, checks: list[list[str]] | None = None) -> str:
    """The whole page for ``summary``; ``checks``: rows of (check, measured, verdict)."""
    histogram = [
        {"low": low, "high": high, "count": count}
        for low, high, count in summary.histogram(HISTOGRAM_BUCKETS, log=True)
    ]
    return render(summary.as_dict(PLACE_ROWS), histogram, title, checks)


def render(
    figures: dict[str, Any],
    histogram: list[dict[str, Any]],
    title: str,
    checks: list[list[str]] | None = None,
) -> str:
    """The whole page from ``Summary.as_dict()`` figures and latency buckets, the checks
    (``--check``) at the top, where a failed build is read first."""
    charts = Charts()
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="meta">{html.escape(_when(figures))}</p>',
    ]
    if checks:
        failed = sum(1 for row in checks if row[2] != "pass")
        said = f"{failed} of {len(checks)} failed" if failed else f"all {len(checks)} passed"
        parts.append(
            _section("Checks", said, _table(["check", "measured", "verdict"], checks, ("text",)))
        )
    skipped = textreport.not_requested_text(figures["not_requested"])
    if not figures["requests"] and skipped is None:
        parts.append("<p>No results.</p>")
    elif not figures["requests"]:
        parts.append("<p>No requests were made.</p>")
        parts.append('<div class="figures">' + _figure("not requested", skipped or "") + "</div>")
    else:
        parts += _body(figures, histogram, charts)
    # plotly.js (a few MB) and the charts come last, so figures and tables show first.
    return (
        "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
        f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_POLICY}">\n'
        f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(parts)
        + f"\n{library_script()}\n{charts.script()}"
        + "\n</body>\n</html>\n"
    )


def _when(d: dict[str, Any]) -> str:
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    if d["started"] is None:
        return f"fetchq {__version__}, report made {generated}"
    started = datetime.fromtimestamp(d["started"], UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return (
        f"Run started {started} and lasted {format_duration(d['duration'])}. "
        f"fetchq {__version__}, report made {generated}."
    )


def _section(title: str, intro: str, *content: str) -> str:
    lead = f"<p>{html.escape(intro)}</p>" if intro else ""
    return f"<h2>{html.escape(title)}</h2>{lead}" + "".join(content)


def _body(d: dict[str, Any], histogram: list[dict[str, Any]], charts: Charts) -> list[str]:
    schedule = d["schedule"]
    points = d["timeline"]["points"]
    width = d["timeline"]["width"]
    summary = [_summary_figures(d), _latency_table(d)]
    if schedule is not None:
        summary.append(f'<p class="late">{html.escape(textreport.late_starts_line(schedule))}</p>')
        concurrency = textreport.concurrency_line(schedule)
        if concurrency:
            summary.append(f"<p>{html.escape(concurrency)}</p>")
    dashed = " (solid: service time; dashed: from the schedule)" if schedule else ""
    parts = [
        _section("Summary", "", *summary),
        _section(
            "Throughput and errors over time",
            f"Requests started per second, in buckets of {format_duration(width)}.",
            charts.place("throughput", throughput_chart(points, width)),
        ),
        _section(
            "Latency over time",
            f"Percentiles of the requests started in each bucket{dashed}.",
            charts.place("latency", latency_chart(points, width, schedule is not None)),
        ),
    ]
    if schedule is not None:
        parts.append(
            _section(
                "Target and achieved rate",
                "Requests due per second (target), started per second (achieved), "
                "and late starts per second.",
                charts.place("rate", rate_chart(points, width)),
            )
        )
    parts += [
        _section(
            "Latency histogram",
            "Service time, in log-spaced buckets from min to max.",
            charts.place("histogram", histogram_chart(histogram)),
        ),
        _section("Status codes", "", _status_table(d)),
        _section("Errors by type", "", _errors_table(d)),
        _section("By worker host", "", _places_table(d["worker_hosts"])),
        _section("By target host", "", _places_table(d["target_hosts"])),
    ]
    return parts


def _figure(label: str, value: str) -> str:
    return (
        f'<div class="figure"><div class="value">{html.escape(value)}</div>'
        f'<div class="label">{html.escape(label)}</div></div>'
    )


def _summary_figures(d: dict[str, Any]) -> str:
    skipped = textreport.not_requested_text(d["not_requested"])
    cells = [
        ("requests", str(d["requests"])),
        *([("not requested", skipped)] if skipped else []),
        ("duration", format_duration(d["duration"])),
        ("rate", format_rate(d["rate"])),
        ("throughput (ok only)", format_rate(d["throughput"])),
        ("success", format_share(d["success_ratio"])),
        ("ok / failed", f"{d['ok']} / {d['failed']}"),
        ("retried", str(d["retried"])),
        ("bytes received", format_bytes(d["bytes"]["total"])),
        ("p50 latency", format_maybe_duration(d["latency"]["p50"])),
        ("p99 latency", format_maybe_duration(d["latency"]["p99"])),
    ]
    return '<div class="figures">' + "".join(_figure(k, v) for k, v in cells) + "</div>"


def _table(header: list[str], rows: list[list[str]], kinds: tuple[str, ...] = ("text",)) -> str:
    """A table whose figures stay text; ``kinds`` gives the CSS class of the first columns."""

    def cell(tag: str, i: int, value: str) -> str:
        kind = f' class="{kinds[i]}"' if i < len(kinds) and kinds[i] else ""
        return f"<{tag}{kind}>{html.escape(value)}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _latency_table(d: dict[str, Any]) -> str:
    schedule = d["schedule"]
    header = ["latency", "service time"] + (["from schedule"] if schedule else [])
    rows = []
    for key in textreport.LATENCY_KEYS:
        row = [key, format_maybe_duration(d["latency"][key])]
        if schedule:
            row.append(format_maybe_duration(schedule["response_time"][key]))
        rows.append(row)
    return _table(header, rows)


def _status_table(d: dict[str, Any]) -> str:
    if not d["status_codes"]:
        return "<p>No result had an HTTP status.</p>"
    total = d["requests"]
    rows = [[code, str(n), format_share(n / total)] for code, n in d["status_codes"].items()]
    return _table(["status", "count", "share"], rows)


def _errors_table(d: dict[str, Any]) -> str:
    if not d["errors"]:
        return "<p>No errors.</p>"
    total = d["requests"]
    rows = [
        [kind, str(e["count"]), format_share(e["count"] / total), " ".join(e["example"].split())]
        for kind, e in d["errors"].items()
    ]
    return _table(
        ["error type", "count", "share", "sample message"], rows, ("text", "", "", "message")
    )


def _places_table(breakdown: dict[str, Any]) -> str:
    rows = [*breakdown["rows"], *([breakdown["other"]] if breakdown["other"] else [])]
    return _table(
        ["host", "requests", "rate", "success", "p50", "p99"],
        [
            [
                row["host"],
                str(row["requests"]),
                format_rate(row["rate"]),
                format_share(row["success_ratio"]),
                format_maybe_duration(row["p50"]),
                format_maybe_duration(row["p99"]),
            ]
            for row in rows
        ],
    )
