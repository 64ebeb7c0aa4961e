"""The HTML report, opened in a real headless Chromium: offline, no errors, charts drawn.

Both reports come from real runs: a server, a worker, target hosts on
127.0.0.1 and 127.0.0.2, and output --html; the second job has a rate the
worker cannot keep, so its results carry schedules and late starts.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser import OpenedReport, chromium, colours, open_report
from fetchq_procs import jsonl, run
from playwright.sync_api import BrowserContext
from test_report_cli import results_jsonl
from worker_scenarios import closed_port

from fetchq.errors import ExitCode
from fetchq.testing.target import Target


@pytest.fixture(scope="module")
def browser() -> Iterator[BrowserContext]:
    with chromium() as running:
        yield running


def assert_offline_and_clean(opened: OpenedReport) -> None:
    assert opened.requests == [opened.url], "the report asked for something besides itself"
    assert opened.console_errors == []


def drawn(opened: OpenedReport, selector: str) -> int:
    return opened.page.locator(selector).count()


def table_rows(opened: OpenedReport, heading: str) -> list[list[str]]:
    """The cells of the table under ``heading``, as text."""
    rows: list[list[str]] = opened.page.evaluate(
        """(heading) => {
            const h2 = [...document.querySelectorAll('h2')].find(h => h.textContent === heading);
            let node = h2.nextElementSibling;
            while (node && node.tagName !== 'TABLE') node = node.nextElementSibling;
            return [...node.querySelectorAll('tbody tr')].map(
                tr => [...tr.children].map(td => td.textContent));
        }""",
        heading,
    )
    return rows


def test_report_of_a_real_run_opens_offline_with_charts_and_tables(
    server, env, target, tmp_path: Path, browser: BrowserContext
) -> None:
    refused_port = closed_port()
    refused = f"http://127.0.0.1:{refused_port}/"
    with Target(host="127.0.0.2") as other:
        urls = [f"{target.url}/slow?s=0.01&i={i}" for i in range(300)]
        urls += [f"{other.url}/?i={i}" for i in range(100)]
        urls += [f"{target.url}/status/500?i={i}" for i in range(20)]
        urls += [f"{refused}?i={i}" for i in range(5)]
        dispatched = run(
            env, "dispatch", "-", "-j", "html", "--attempts", "1", stdin="\n".join(urls) + "\n"
        )
        assert dispatched.returncode == 0, dispatched.stderr
        worker = run(env, "worker", "--burst", "--concurrency", "4")
        assert worker.returncode == 0, worker.stderr
    results_file, report = tmp_path / "results.jsonl", tmp_path / "report.html"
    output = run(
        env,
        "output",
        "-j",
        "html",
        "--until-done",
        "--format",
        "jsonl",
        "--out",
        str(results_file),
        "--html",
        str(report),
    )
    assert output.returncode == 0, output.stderr
    assert f"wrote the HTML report to {report}" in output.stderr
    assert "Summary:" not in output.stdout + output.stderr, "--html alone prints no text summary"
    results = jsonl(results_file.read_text())
    assert len(results) == len(urls)

    with open_report(browser, report) as opened:
        assert_offline_and_clean(opened)
        assert opened.page.title() == "fetchq report: job html"
        figures = opened.page.locator(".figure").all_inner_texts()
        assert f"{len(urls)}\nrequests" in figures
        assert drawn(opened, "#chart-throughput .barlayer .trace") == 2  # ok and failed
        assert drawn(opened, "#chart-throughput .barlayer .point") > 0
        assert drawn(opened, "#chart-latency .scatterlayer .trace") == 3  # p50, p90, p99
        assert drawn(opened, "#chart-histogram .barlayer .point") > 0
        assert drawn(opened, "#chart-rate") == 0, "no rate chart for a job without a rate"
        assert ["500", "20", "4.71%"] in table_rows(opened, "Status codes")
        (error,) = table_rows(opened, "Errors by type")
        assert error[:2] == ["refused", "5"] and error[3]
        targets = {row[0]: row[1] for row in table_rows(opened, "By target host")}
        assert targets == {
            f"127.0.0.1:{target.port}": "320",
            f"127.0.0.2:{other.port}": "100",
            f"127.0.0.1:{refused_port}": "5",
        }
        workers = table_rows(opened, "By worker host")
        assert [row[:2] for row in workers] == [[socket.gethostname(), str(len(urls))]]
        page = opened.screenshot(full_page=True)
        assert colours(page) > 50, "the page is blank"
        chart = opened.screenshot(clip=_box(opened, "#chart-throughput"))
        assert colours(chart) > 5, "the throughput chart drew nothing"

    merged = run(env, "report", str(results_file), "--html", str(tmp_path / "again.html"))
    assert merged.returncode == 0, merged.stderr
    with open_report(browser, tmp_path / "again.html") as opened:
        assert_offline_and_clean(opened)
        again = {row[0]: row[1] for row in table_rows(opened, "By target host")}
        assert again == targets


def _box(opened: OpenedReport, selector: str) -> dict[str, float]:
    box = opened.page.locator(selector).bounding_box()
    assert box is not None, f"{selector} is not on the page"
    return {"x": box["x"], "y": box["y"], "width": box["width"], "height": box["height"]}


def test_report_of_a_job_with_a_rate_shows_schedule_and_late_starts(
    server, env, target, tmp_path: Path, browser: BrowserContext
) -> None:
    """100/s asked of two threads on a 50 ms page (40/s at most): starts fall behind."""
    dispatched = run(
        env,
        "dispatch",
        "--template",
        f"{target.url}/slow?s=0.05&i={{i}}",
        "--count",
        "200",
        "--rate",
        "100/s",
        "-j",
        "rated",
    )
    assert dispatched.returncode == 0, dispatched.stderr
    worker = run(env, "worker", "--burst", "--concurrency", "2")
    assert worker.returncode == 0, worker.stderr
    path = tmp_path / "rated.html"
    output = run(
        env,
        "output",
        "-j",
        "rated",
        "--until-done",
        "--format",
        "none",
        "--summary",
        "--html",
        str(path),
    )
    assert output.returncode == 0, output.stderr
    (late_line,) = [line for line in output.stdout.splitlines() if line.startswith("Late starts:")]
    with open_report(browser, path) as opened:
        assert_offline_and_clean(opened)
        assert drawn(opened, "#chart-rate .scatterlayer .trace") == 2  # target and achieved
        assert drawn(opened, "#chart-rate .barlayer .point") > 0  # late starts
        # service time solid and from the schedule dashed, for p50, p90 and p99
        assert drawn(opened, "#chart-latency .scatterlayer .trace") == 6
        late = opened.page.locator("p.late").inner_text()
        assert late == late_line
        assert int(late.split()[2]) > 100, late
        assert (
            late.startswith("Late starts: ") and " of 200 requests started more than 10.0ms" in late
        )
        latency = {row[0]: row[1:] for row in table_rows(opened, "Summary")}
        service, from_schedule = (seconds(cell) for cell in latency["p99"])
        assert 0.05 <= service < 2.0, "the page takes 50 ms (more on a loaded box)"
        assert from_schedule > service + 1.0, "queued behind the rate, not measured from start"


def seconds(text: str) -> float:
    """A duration as the report prints it (``850µs``, ``12.3ms``, ``1.204s``) in seconds."""
    for unit, scale in (("µs", 1e-6), ("ms", 1e-3), ("s", 1.0)):
        if text.endswith(unit):
            return float(text.removesuffix(unit)) * scale
    raise AssertionError(f"not a duration: {text}")


def test_report_of_an_aggregate_job_is_the_report_of_its_requests(
    server, env, target, tmp_path: Path, browser: BrowserContext
) -> None:
    """Spans of 500, one aggregate each: the page counts and draws every request."""
    template = f"{target.url}/slow?s=0.002&agg={{i}}"
    job = ("-j", "aggregate-html")
    dispatched = run(
        env,
        "dispatch",
        "--template",
        template,
        "--count",
        "3000",
        "--aggregate",
        "--span",
        "500",
        *job,
    )
    assert dispatched.returncode == 0, dispatched.stderr
    worker = run(env, "worker", "--burst", "--concurrency", "4")
    assert worker.returncode == 0, worker.stderr
    report = tmp_path / "aggregate.html"
    output = run(env, "output", *job, "--until-done", "--format", "none", "--html", str(report))
    assert output.returncode == 0, output.stderr
    with open_report(browser, report) as opened:
        assert_offline_and_clean(opened)
        figures = opened.page.locator(".figure").all_inner_texts()
        assert "3000\nrequests" in figures
        assert drawn(opened, "#chart-throughput .barlayer .point") > 0
        assert drawn(opened, "#chart-latency .scatterlayer .trace") == 3
        assert drawn(opened, "#chart-histogram .barlayer .point") > 0
        assert ["200", "3000", "100.00%"] in table_rows(opened, "Status codes")
        targets = {row[0]: row[1] for row in table_rows(opened, "By target host")}
        assert targets == {f"127.0.0.1:{target.port}": "3000"}
        assert colours(opened.screenshot(full_page=True)) > 50, "the page is blank"


def test_report_shows_its_checks_at_the_top(browser, env, tmp_path) -> None:
    """The table of --check thresholds is the first thing under the title: a failed
    build is read first."""
    saved, page = tmp_path / "run.jsonl", tmp_path / "checked.html"
    saved.write_text(results_jsonl(0, 100))
    done = run(
        env, "report", str(saved), "--html", str(page),
        "--check", "p99<250ms", "--check", "success>=99.5%",
    )  # fmt: skip
    assert done.returncode == ExitCode.CHECK_FAILED, done.stderr
    with open_report(browser, page) as opened:
        assert_offline_and_clean(opened)
        headings = opened.page.locator("h2").all_text_contents()
        assert headings[0] == "Checks", headings
        rows = table_rows(opened, "Checks")
        assert opened.page.get_by_text("1 of 2 failed").is_visible()
    assert [row[0] for row in rows] == ["p99<250ms", "success>=99.5%"]
    assert [row[2] for row in rows] == ["pass", "FAIL"]
    assert rows[1][1] == "90.00%"
