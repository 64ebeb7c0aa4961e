"""The summary as plain text, from ``Summary.as_dict()`` figures.

No colour, so it pipes and diffs cleanly.  Results that were no request
(cancelled, refused by robots.txt) are named on a ``Not requested:`` line and
are in no other figure.  A run without schedules reads as
it always did; a run with a rate also shows the response time from the
schedule beside the service time, and a ``Late starts:`` line.
"""

from __future__ import annotations

from typing import Any

from fetchq.messages import plural
from fetchq.units import (
    format_bytes,
    format_duration,
    format_maybe_duration,
    format_rate,
    format_share,
)

HISTOGRAM_WIDTH = 40
"""Characters of the longest histogram bar."""

LATENCY_KEYS = ("min", "mean", "p50", "p90", "p95", "p99", "max")


def render(figures: dict[str, Any]) -> str:
    if not figures["requests"]:
        skipped = not_requested_text(figures["not_requested"])
        if skipped is None:
            return "Summary:\n  no results\n"
        return f"Summary:\n  no requests\n  Not requested: {skipped}\n"
    lines = _totals(figures)
    lines += ["", *_latency(figures)]
    lines += ["", "Histogram:", *_histogram(figures["histogram"])]
    if figures["status_codes"]:
        lines += ["", "Status codes:"]
        lines += [f"  [{code}]  {n}" for code, n in figures["status_codes"].items()]
    if figures["errors"]:
        lines += ["", "Errors:"]
        kind_width = max(len(kind) for kind in figures["errors"])
        for kind, entry in figures["errors"].items():
            example = " ".join(entry["example"].split())  # one line even for multi-line messages
            lines.append(f"  {kind:<{kind_width}}  {entry['count']:>6}  e.g. {example}")
    lines += ["", "Worker hosts:", *breakdown_lines(figures["worker_hosts"])]
    lines += ["", "Target hosts:", *breakdown_lines(figures["target_hosts"])]
    return "\n".join(lines) + "\n"


def not_requested_text(counts: dict[str, int]) -> str | None:
    """``135 (cancelled 135)``: results that were no request, by why; None if none."""
    if not counts:
        return None
    kinds = ", ".join(f"{kind} {n}" for kind, n in counts.items())
    return f"{sum(counts.values())} ({kinds})"


def _totals(d: dict[str, Any]) -> list[str]:
    count, ok = d["requests"], d["ok"]
    skipped = not_requested_text(d["not_requested"])
    return [
        "Summary:",
        f"  Requests:     {count}",
        *([f"  Not requested: {skipped}"] if skipped else []),
        f"  Duration:     {format_duration(d['duration'])}",
        f"  Rate:         {format_rate(d['rate'])}",
        f"  Throughput:   {format_rate(d['throughput'])} (ok only)",
        f"  Success:      {format_share(d['success_ratio'])} ({ok} ok, {count - ok} failed)",
        f"  Retried:      {d['retried']}",
        *_leased_again(d.get("leased_again")),
        (
            f"  Bytes:        {format_bytes(d['bytes']['total'])} total, "
            f"{format_bytes(d['bytes']['mean'])} mean"
        ),
    ]


def _leased_again(again: dict[str, int] | None) -> list[str]:
    """The spans run again after their lease lapsed: their first run's requests may
    have reached the target without being measured."""
    if not again:
        return []
    spans, requests = plural(again["spans"], "span"), plural(again["requests"], "request")
    line = (
        f"  Leased again: {spans} ({requests}) after a lapse: "
        "their first run may have reached the target unmeasured"
    )
    return [line]


def _latency(d: dict[str, Any]) -> list[str]:
    service = d["latency"]
    schedule = d["schedule"]
    if schedule is None:
        return ["Latency:"] + [
            f"  {key + ':':<6}{format_duration(service[key]):>10}" for key in LATENCY_KEYS
        ]
    response = schedule["response_time"]
    lines = [
        f"Latency:  {'service time':>14}  {'from schedule':>14}",
        *(
            f"  {key + ':':<6}{format_duration(service[key]):>16}"
            f"  {format_maybe_duration(response[key]):>14}"
            for key in LATENCY_KEYS
        ),
        (
            f"  (from schedule: started + elapsed - scheduled; {schedule['requests']} of "
            f"{plural(d['requests'], 'result')} had a schedule)"
        ),
        "",
        late_starts_line(schedule),
    ]
    concurrency = concurrency_line(schedule)
    if concurrency:
        lines.append(concurrency)
    return lines


def late_starts_line(schedule: dict[str, Any]) -> str:
    late = schedule["late"]
    return (
        f"Late starts: {late['count']} of {plural(schedule['requests'], 'request')} started "
        "more than "
        f"{format_duration(late['after'])} after their scheduled time; the worst "
        f"{format_duration(late['worst'])} late"
    )


def concurrency_line(schedule: dict[str, Any]) -> str | None:
    """Little's law against the fleet's fetch threads, when the summary was told them."""
    threads, needed = schedule["fetch_threads"], schedule["threads_needed"]
    if threads is None or needed is None:
        return None
    return (
        f"Concurrency: the target rate {format_rate(schedule['target_rate'])} times the mean "
        f"service time {format_duration(schedule['service_mean'])} needs about "
        f"{plural(needed, 'fetch thread')}; the fleet has {threads}"
        + (f": add about {needed - threads}" if needed > threads else "")
    )


def _histogram(buckets: list[dict[str, Any]]) -> list[str]:
    tallest = max(b["count"] for b in buckets)
    labels = [format_duration(b["high"]) for b in buckets]
    label_width = max(len(label) for label in labels)
    count_width = max(len(str(tallest)), 5)
    lines = []
    for label, bucket in zip(labels, buckets, strict=True):
        count = bucket["count"]
        bar = "■" * round(HISTOGRAM_WIDTH * count / tallest) if tallest else ""
        lines.append(f"  {label:>{label_width}} [{count:>{count_width}}] |{bar}")
    return lines


def breakdown_lines(breakdown: dict[str, Any]) -> list[str]:
    """A table of places: the named rows, then ``other`` for the rest."""
    rows = list(breakdown["rows"])
    if breakdown["other"] is not None:
        rows.append(breakdown["other"])
    width = max(len("host"), *(len(row["host"]) for row in rows))
    header = (
        f"  {'host':<{width}}  {'requests':>9}  {'rate':>10}  {'success':>8}"
        f"  {'p50':>9}  {'p99':>9}"
    )
    lines = [header]
    for row in rows:
        lines.append(
            f"  {row['host']:<{width}}  {row['requests']:>9}  {format_rate(row['rate']):>10}"
            f"  {format_share(row['success_ratio']):>8}"
            f"  {format_maybe_duration(row['p50']):>9}  {format_maybe_duration(row['p99']):>9}"
        )
    return lines
