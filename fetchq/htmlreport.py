"""The summary as one self-contained HTML file: figures, charts over time, tables by place.

The only module that imports ``plotly`` (the ``report`` extra).  plotly.js is
inlined once from the copy the plotly package ships, and a Content Security
Policy forbids every fetch, so the file opens offline and asks the network for
nothing.  Charts are drawn from the summary's time buckets (at most 500
points a series), so a run of ten million results makes the same small page
as a run of ten thousand.
"""

from __future__ import annotations

import html
import json
import os
import tempfile
from datetime import UTC, datetime
from typing import Any

import plotly.graph_objects as go
import plotly.io
import plotly.offline

from fetchq import __version__, textreport
from fetchq.stats import Summary
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

CHART_HEIGHT = 320

CHART_CONFIG = {"displaylogo": False, "responsive": True}

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

SERVICE_COLOURS = {"p50": "#1f77b4", "p90": "#ff7f0e", "p99": "#d62728"}


def render_summary(summary: Summary, title: str) -> str:
    """The whole page for ``summary``."""
    histogram = [
        {"low": low, "high": high, "count": count}
        for low, high, count in summary.histogram(HISTOGRAM_BUCKETS, log=True)
    ]
    return render(summary.as_dict(PLACE_ROWS), histogram, title)


def render(figures: dict[str, Any], histogram: list[dict[str, Any]], title: str) -> str:
    """The whole page from ``Summary.as_dict()`` figures and latency buckets."""
    charts = Charts()
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="meta">{html.escape(_when(figures))}</p>',
    ]
    if not figures["requests"]:
        parts.append("<p>No results.</p>")
    else:
        parts += _body(figures, histogram, charts)
    # plotly.js (a few MB) and the charts come last, so figures and tables show first.
    return (
        "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
        f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_POLICY}">\n'
        f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(parts)
        + f"\n<script>{plotly.offline.get_plotlyjs()}</script>\n{charts.script()}"
        + "\n</body>\n</html>\n"
    )


def write(path: str, page: str) -> None:
    """Write ``page`` to ``path`` whole or not at all (a temporary file renamed over it)."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(prefix=".fetchq-report-", suffix=".html", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(page)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


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
            charts.place("throughput", _throughput_chart(points, width)),
        ),
        _section(
            "Latency over time",
            f"Percentiles of the requests started in each bucket{dashed}.",
            charts.place("latency", _latency_chart(points, width, schedule is not None)),
        ),
    ]
    if schedule is not None:
        parts.append(
            _section(
                "Target and achieved rate",
                "Requests due per second (target), started per second (achieved), "
                "and late starts per second.",
                charts.place("rate", _rate_chart(points, width)),
            )
        )
    parts += [
        _section(
            "Latency histogram",
            "Service time, in log-spaced buckets from min to max.",
            charts.place("histogram", _histogram_chart(histogram)),
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
    cells = [
        ("requests", str(d["requests"])),
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


class Charts:
    """The page's charts: a placeholder where each goes, one script that draws them all."""

    def __init__(self) -> None:
        self._figures: dict[str, str] = {}

    def place(self, name: str, figure: go.Figure) -> str:
        figure.update_layout(
            height=CHART_HEIGHT,
            margin={"l": 60, "r": 20, "t": 40, "b": 50},
            legend={"orientation": "h", "x": 0, "y": 1.02, "yanchor": "bottom"},
            template="plotly_white",
        )
        element = f"chart-{name}"
        self._figures[element] = plotly.io.to_json(figure, validate=False)
        return (
            f'<div class="chart" data-chart="{name}">'
            f'<div id="{element}" style="height:{CHART_HEIGHT}px"></div></div>'
        )

    def script(self) -> str:
        figures = ",".join(f'"{element}":{spec}' for element, spec in self._figures.items())
        code = (
            f"const figures = {{{figures}}};\n"
            f"const config = {json.dumps(CHART_CONFIG)};\n"
            "for (const [element, figure] of Object.entries(figures)) {\n"
            "  Plotly.newPlot(element, figure.data, figure.layout, config);\n"
            "}"
        )
        return "<script>" + code.replace("</", "<\\/") + "</script>"


def _times(points: list[dict[str, Any]], width: float) -> list[str]:
    """Bucket middles as UTC date strings, which plotly puts on a time axis."""
    return [
        datetime.fromtimestamp(p["start"] + width / 2, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
        for p in points
    ]


def _throughput_chart(points: list[dict[str, Any]], width: float) -> go.Figure:
    x = _times(points, width)
    figure = go.Figure()
    figure.add_bar(
        x=x,
        y=[(p["requests"] - p["failed"]) / width for p in points],
        name="ok /s",
        marker_color="#2ca02c",
    )
    figure.add_bar(
        x=x, y=[p["failed"] / width for p in points], name="failed /s", marker_color="#d62728"
    )
    figure.update_layout(barmode="stack", bargap=0.05, xaxis_title="time (UTC)")
    figure.update_yaxes(title_text="requests per second", rangemode="tozero")
    return figure


def _latency_chart(points: list[dict[str, Any]], width: float, scheduled: bool) -> go.Figure:
    x = _times(points, width)
    figure = go.Figure()
    for p, colour in SERVICE_COLOURS.items():
        figure.add_scatter(
            x=x,
            y=[_ms(point[p]) for point in points],
            name=f"{p} service time",
            mode="lines",
            line={"color": colour},
        )
        if scheduled:
            figure.add_scatter(
                x=x,
                y=[_ms(point[f"response_{p}"]) for point in points],
                name=f"{p} from schedule",
                mode="lines",
                line={"color": colour, "dash": "dash"},
            )
    figure.update_layout(xaxis_title="time (UTC)")
    figure.update_yaxes(title_text="milliseconds", rangemode="tozero")
    return figure


def _rate_chart(points: list[dict[str, Any]], width: float) -> go.Figure:
    x = _times(points, width)
    figure = go.Figure()
    figure.add_bar(
        x=x, y=[p["late"] / width for p in points], name="late starts /s", marker_color="#d62728"
    )
    figure.add_scatter(
        x=x, y=[p["scheduled"] / width for p in points], name="target /s", mode="lines"
    )
    figure.add_scatter(
        x=x, y=[p["requests"] / width for p in points], name="achieved /s", mode="lines"
    )
    figure.update_layout(xaxis_title="time (UTC)")
    figure.update_yaxes(title_text="requests per second", rangemode="tozero")
    return figure


def _histogram_chart(histogram: list[dict[str, Any]]) -> go.Figure:
    figure = go.Figure()
    figure.add_bar(
        x=[format_duration(b["high"]) for b in histogram],
        y=[b["count"] for b in histogram],
        hovertext=[
            f"{format_duration(b['low'])} to {format_duration(b['high'])}: {b['count']}"
            for b in histogram
        ],
        hoverinfo="text",
        name="requests",
        marker_color="#1f77b4",
    )
    figure.update_xaxes(title_text="service time, up to", type="category")
    figure.update_yaxes(title_text="requests")
    return figure


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0
