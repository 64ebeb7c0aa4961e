"""Results of tasks that never reached the network (cancelled, or refused by robots.txt)
are counted apart in every report, never as requests.

A real run: a paced job cancelled half-way, its results saved as JSONL by output and
summed by ``fetchq report`` as text and HTML.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest
from fetchq_procs import connect_broker, jsonl, poll_until, run, start_worker, stop_all

from fetchq.units import format_duration

RATE = 20
TASKS = 400  # 20 s at the rate: the cancel, 2 s in, has time to land on a busy box


def figure(page: str, label: str) -> str:
    """The value of the HTML report's summary figure called ``label``."""
    match = re.search(
        r'<div class="value">([^<]*)</div><div class="label">' + re.escape(label) + "</div>", page
    )
    assert match, f"no figure {label!r} in the page"
    return html.unescape(match.group(1))


def line(text: str, start: str) -> str:
    (found,) = [row.strip() for row in text.splitlines() if row.strip().startswith(start)]
    return found


def test_a_cancelled_paced_job_reports_only_the_requests_it_made(
    server, env, target, tmp_path: Path
) -> None:
    worker, _ = start_worker(env, "--concurrency", "4")
    saved, page = tmp_path / "cut.jsonl", tmp_path / "cut.html"
    try:
        dispatched = run(
            env,
            "dispatch",
            "--template",
            f"{target.url}/?cut={{i}}",
            "--rate",
            f"{RATE}/s",
            "--count",
            str(TASKS),
            "-j",
            "cut",
        )
        assert dispatched.returncode == 0, dispatched.stderr
        client = connect_broker(env["FETCHQ_SERVER"], env["FETCHQ_AUTHKEY"])
        poll_until(lambda: client.call("job", "cut")["succeeded"] >= 40, 60, "40 results")
        client.close()
        cancelled = run(env, "job", "cancel", "cut")
        assert cancelled.returncode == 0, cancelled.stderr
        output = run(
            env, "output", "-j", "cut", "--until-done", "--format", "jsonl", "--out", str(saved)
        )
        assert output.returncode == 0, output.stderr
    finally:
        stop_all([worker])
    results = jsonl(saved.read_text())
    assert len(results) == TASKS
    never = [r for r in results if (r["error"] or {}).get("type") == "cancelled"]
    made = [r for r in results if r not in never]
    assert len(made) >= 40 and len(never) >= TASKS // 3, (len(made), len(never))
    assert all(r["worker"] == "server" and r["elapsed"] == 0.0 for r in never)

    report = run(env, "report", str(saved), "--html", str(page))
    assert report.returncode == 0, report.stderr
    text = report.stdout
    assert line(text, "Requests:") == f"Requests:     {len(made)}"
    assert line(text, "Not requested:") == f"Not requested: {len(never)} (cancelled {len(never)})"
    assert line(text, "Success:") == f"Success:      100.00% ({len(made)} ok, 0 failed)"
    rate = float(line(text, "Rate:").split()[1].removesuffix("/s"))
    assert rate == pytest.approx(RATE, rel=0.15), text
    fastest = format_duration(min(r["elapsed"] for r in made))
    assert line(text, "min:").split()[1] == fastest, text
    assert f"{len(made)} of {len(made)} results had a schedule" in text
    assert "Errors:" not in text and "server" not in text, text

    written = page.read_text()
    assert figure(written, "requests") == str(len(made))
    assert figure(written, "not requested") == f"{len(never)} (cancelled {len(never)})"
    assert figure(written, "success") == "100.00%"
    assert figure(written, "rate") == line(text, "Rate:").split()[1]


def test_the_html_report_of_results_none_of_which_was_requested() -> None:
    from test_stats import never_requested

    from fetchq.report.html import render_summary
    from fetchq.report.summary import Summary

    summary = Summary()
    for i in range(3):
        summary.add(never_requested(i, "robots"))
    page = render_summary(summary, "all refused")
    assert "<p>No requests were made.</p>" in page
    assert figure(page, "not requested") == "3 (robots 3)"
