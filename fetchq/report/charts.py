"""The report's charts, drawn by plotly from the summary's time buckets.

The only module that imports ``plotly`` (the ``report`` extra).  Each chart is
a plotly figure; the page gets a placeholder where each goes, plotly.js as
the plotly package ships it, and one script that draws them all.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import plotly.graph_objects as go
import plotly.io
import plotly.offline

from fetchq.units import format_duration

CHART_HEIGHT = 320

CHART_CONFIG = {"displaylogo": False, "responsive": True}

SERVICE_COLOURS = {"p50": "#1f77b4", "p90": "#ff7f0e", "p99": "#d62728"}


def library_script() -> str:
    """plotly.js itself, inline: a few MB, the same for every report."""
    return f"<script>{plotly.offline.get_plotlyjs()}</script>"


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


def throughput_chart(points: list[dict[str, Any]], width: float) -> go.Figure:
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


def latency_chart(points: list[dict[str, Any]], width: float, scheduled: bool) -> go.Figure:
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


def rate_chart(points: list[dict[str, Any]], width: float) -> go.Figure:
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


def histogram_chart(histogram: list[dict[str, Any]]) -> go.Figure:
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
