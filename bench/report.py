"""Medians, the final table against the issue's targets, and the JSON record of a run."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any

from ceiling import BASELINE
from harness import BENCH_DIR, median

Runs = dict[str, list[dict[str, Any]]]


@dataclass
class Row:
    case: str
    fetchq: str
    peer: str
    ratio: str
    target: str
    met: str

    @staticmethod
    def header() -> Row:
        return Row("case", "fetchq", "peer", "ratio", "target", "met")


def medians(runs: Runs) -> dict[str, dict[str, float]]:
    """Per variant, the median of every numeric field over its runs."""
    out: dict[str, dict[str, float]] = {}
    for variant, results in runs.items():
        if not results:
            continue
        keys = [key for key, value in results[0].items() if isinstance(value, int | float)]
        out[variant] = {key: median([run[key] for run in results]) for key in keys}
    return out


def _rate(value: float | None, unit: str = "/s") -> str:
    return "-" if value is None else f"{value:,.0f}{unit}"


def _ratio(ours: float | None, theirs: float | None) -> float | None:
    if ours is None or not theirs:
        return None
    return ours / theirs


def build_rows(med: dict[str, dict[str, float]], skipped: dict[str, str]) -> list[Row]:
    """The final table: one row per figure the issue asks for."""

    def rate(variant: str, key: str = "rate") -> float | None:
        return med.get(variant, {}).get(key)

    rows: list[Row] = []

    def compare(
        case: str,
        ours: str,
        theirs: str | None,
        target: float | None,
        unit: str = "/s",
        key: str = "rate",
    ) -> None:
        mine = rate(ours, key)
        # A peer without the figure (Locust's rate is already steady) gives its rate.
        peer = (rate(theirs, key) or rate(theirs)) if theirs else None
        if mine is None and (theirs is None or peer is None):
            return  # this case was not run (or failed, which is listed under the table)
        ratio = _ratio(mine, peer)
        if theirs and peer is None:
            shown = "skipped" if theirs in skipped else "failed"
            rows.append(Row(case, _rate(mine, unit), shown, "-", "-", "-"))
            return
        goal = "-" if target is None else f">= {target:g}x"
        met = "-" if target is None or ratio is None else ("met" if ratio >= target else "NOT met")
        shown = "-" if ratio is None else f"{ratio:.2f}x"
        rows.append(Row(case, _rate(mine, unit), _rate(peer, unit), shown, goal, met))

    dispatch = med.get("fetchq dispatch")
    if dispatch:
        count = int(dispatch["count"])
        fast = dispatch["rate"] >= 1_000_000
        rows.append(
            Row(
                f"dispatch {count:,} URLs, JSON wire (wall, incl. start-up)",
                f"{dispatch['rate']:,.0f}/s in {dispatch['seconds']:.2f}s",
                "-",
                "-",
                ">= 1,000,000/s",
                "met" if fast else "NOT met",
            )
        )
    # The JSON wire against the pickle wire fetchq spoke before protocol 3, same run.
    compare(
        "dispatch: JSON vs pickle wire", "fetchq dispatch", "fetchq dispatch, pickle wire", None
    )
    compare(
        "worker, 1 process: JSON vs pickle wire",
        "fetchq 1 process",
        "fetchq 1 process, pickle wire",
        0.95,
    )
    compare(
        "worker, 2 processes: JSON vs pickle wire",
        "fetchq 2 processes",
        "fetchq 2 processes, pickle wire",
        0.95,
    )
    compare(
        "worker steady, 1 process: JSON vs pickle wire",
        "fetchq 1 process",
        "fetchq 1 process, pickle wire",
        None,
        key="steady_rate",
    )
    compare("calls/s, one client: JSON vs pickle wire", "calls, json", "calls, pickle", None)
    # What TLS costs: the same JSON wire inside mutual TLS.
    compare("dispatch: TLS vs plaintext", "fetchq dispatch, TLS", "fetchq dispatch", None)
    compare("calls/s, one client: TLS vs plaintext", "calls, tls", "calls, json", None)
    compare(
        "logins/s: TLS vs plaintext",
        "calls, tls",
        "calls, json",
        None,
        key="logins_per_s",
    )
    compare("dispatch vs classic put() per URL", "fetchq dispatch", "classic put()", 40)
    compare("worker, 1 process vs Locust HttpUser", "fetchq 1 process", "locust HttpUser", 1.5)
    compare(
        "worker, 2 processes vs Locust HttpUser --processes 2",
        "fetchq 2 processes",
        "locust HttpUser 2 processes",
        1.5,
    )
    # Locust's own rate leaves its start-up out; so does fetchq's steady rate (10% to 90%).
    compare(
        "worker steady, 1 process vs Locust HttpUser",
        "fetchq 1 process",
        "locust HttpUser",
        None,
        key="steady_rate",
    )
    compare(
        "worker steady, 2 processes vs Locust HttpUser -p 2",
        "fetchq 2 processes",
        "locust HttpUser 2 processes",
        None,
        key="steady_rate",
    )
    compare(
        "worker, 1 process vs Locust FastHttpUser", "fetchq 1 process", "locust FastHttpUser", None
    )
    compare("worker, 2 processes vs wrk (box ceiling)", "fetchq 2 processes", "wrk", None)
    compare("worker, 2 processes vs hey (box ceiling)", "fetchq 2 processes", "hey", None)
    compare(
        "broker overhead: through fetchq vs in-process loop",
        "fetchq 1 process",
        "in-process loop",
        0.9,
    )
    compare(
        "broker overhead, steady (10% to 90%)",
        "fetchq 1 process",
        "in-process loop",
        None,
        key="steady_rate",
    )
    if dispatch:
        per_task = dispatch["bytes_per_task"]
        rows.append(
            Row(
                f"server memory, {int(dispatch['count']):,} queued tasks",
                f"{per_task:,.0f} B/task",
                "-",
                "-",
                "<= 200 B/task",
                "met" if per_task <= 200 else "NOT met",
            )
        )
    fetcher = med.get("1 thread: fetchq Fetcher.fetch", {}).get("cpu_us")
    for peer, label in (
        ("1 thread: requests Session.get", "requests Session.get"),
        ("1 thread: urllib3 pool of requests' adapter", "urllib3 pool"),
    ):
        theirs = med.get(peer, {}).get("cpu_us")
        if fetcher and theirs:
            rows.append(
                Row(
                    f"CPU per GET, 1 thread: Fetcher vs {label}",
                    f"{fetcher:.0f} us",
                    f"{theirs:.0f} us",
                    f"{theirs / fetcher:.2f}x",
                    "-",
                    "-",
                )
            )
    compare("end to end vs RQ SimpleWorker", "fetchq (peer job)", "rq SimpleWorker", None)
    compare("end to end vs Celery threads", "fetchq (peer job)", "celery threads", None)
    better = max(
        (name for name in ("rq SimpleWorker", "celery threads") if rate(name)),
        key=lambda name: rate(name) or 0.0,
        default=None,
    )
    if better:
        compare(f"end to end vs the better peer ({better})", "fetchq (peer job)", better, 5)
    elif "rq SimpleWorker" in skipped or "celery threads" in skipped:
        rows.append(Row("end to end vs RQ / Celery", "-", "skipped", "-", "-", "-"))
    rows.extend(ceiling_rows(med))
    return rows


def ceiling_rows(med: dict[str, dict[str, float]]) -> list[Row]:
    """The server's ceiling (bench/ceiling.py): this checkout against the baseline
    release, and a job with a rate and a per-host cap against a plain one."""
    rows: list[Row] = []

    def figure(name: str, key: str) -> float | None:
        return med.get(name, {}).get(key)

    for batch in (100, 500):
        label = f"ceiling 2x8, batch {batch}"
        ours, theirs = f"{label}: main", f"{label}: {BASELINE}"
        for key, unit, goal in (("rate", "/s", 1.5), ("server_us_per_task", " us", 0.6)):
            mine, base = figure(ours, key), figure(theirs, key)
            if mine is None or base is None:
                continue
            ratio = mine / base
            met = ratio >= goal if key == "rate" else ratio <= goal
            what = "tasks/s" if key == "rate" else "server CPU per task"
            rows.append(
                Row(
                    f"{label}, {what}: main vs {BASELINE}",
                    _rate(mine, unit),
                    _rate(base, unit),
                    f"{ratio:.2f}x",
                    f"{'>=' if key == 'rate' else '<='} {goal:g}x",
                    "met" if met else "NOT met",
                )
            )
        paced = figure(f"{label}, rate + per-host: main", "server_us_per_task")
        plain = figure(ours, "server_us_per_task")
        if paced is not None and plain is not None:
            rows.append(
                Row(
                    f"{label}, server CPU per task: rate + per-host vs plain",
                    f"{paced:.1f} us",
                    f"{plain:.1f} us",
                    f"{paced / plain:.2f}x",
                    "<= 1.5x",
                    "met" if paced / plain <= 1.5 else "NOT met",
                )
            )
    return rows


def format_table(rows: list[Row]) -> str:
    table = [Row.header(), *rows]
    columns = list(
        zip(*[(r.case, r.fetchq, r.peer, r.ratio, r.target, r.met) for r in table], strict=True)
    )
    widths = [max(len(cell) for cell in column) for column in columns]
    lines = []
    for n, row in enumerate(table):
        cells = (row.case, row.fetchq, row.peer, row.ratio, row.target, row.met)
        lines.append(
            "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()
        )
        if n == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def format_details(runs: Runs, med: dict[str, dict[str, float]]) -> str:
    """Every variant: median rate, spread over runs, and CPU per request where known."""
    width = max([len("variant"), *(len(variant) for variant in runs)])
    lines = [
        f"{'variant':<{width}} {'runs':>4} {'median/s':>10} {'min/s':>10} {'max/s':>10}  notes"
    ]
    for variant, results in runs.items():
        if not results:
            continue
        rates = [run["rate"] for run in results]
        notes = []
        figures = med[variant]
        for key, label in (
            ("steady_rate", "steady {:,.0f}/s"),
            ("first_result_s", "first result at {:.2f}s"),
            ("cpu_us", "{:.0f} us CPU per GET (rate: GETs per CPU-second)"),
            ("worker_cpu_per_request_us", "worker CPU {:.0f} us/req"),
            ("cpu_per_request_us", "CPU {:.0f} us/req incl. start-up"),
            ("server_cpu_per_task_us", "server CPU {:.1f} us/task"),
            ("output_cpu_per_task_us", "output CPU {:.1f} us/task"),
            ("seconds", "{:.2f}s"),
            ("count", "{:,.0f} tasks"),
            ("requests", "{:,.0f} requests"),
            ("startup_seconds", "start-up {:.2f}s"),
            ("worst_trial_rate", "best of 3 servers, worst {:,.0f}/s"),
            ("rate_after_startup", "{:,.0f}/s after start-up"),
        ):
            if key in figures:
                notes.append(label.format(figures[key]))
        lines.append(
            f"{variant:<{width}} {len(rates):>4} {median(rates):>10,.0f} {min(rates):>10,.0f} "
            f"{max(rates):>10,.0f}  {', '.join(notes)}"
        )
    return "\n".join(lines)


def _dist(name: str) -> str | None:
    try:
        return dist_version(name)
    except PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    model = None
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        match = re.search(r"model name\s*:\s*(.+)", cpuinfo)
        model = match.group(1).strip() if match else None
    except OSError:
        pass
    memory = None
    try:
        match = re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text())
        memory = int(match.group(1)) * 1024 if match else None
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "memory_bytes": memory,
        "system": f"{platform.system()} {platform.release()}",
        "hostname": platform.node(),
    }


def python_versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("fetchq", "requests", "urllib3", "locust", "gevent", "geventhttpclient"):
        found[name] = _dist(name)
    return found


def git_state() -> dict[str, Any]:
    root = BENCH_DIR.parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    status = git("status", "--porcelain")
    return {
        "commit": git("rev-parse", "HEAD"),
        "dirty": bool(status) if status is not None else None,
    }


def write_json(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
    tmp.replace(path)


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
