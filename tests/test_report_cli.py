"""fetchq report: saved results merged into one summary, and clear errors for bad input."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

from fetchq_procs import PYTHON, run
from test_cli import assert_clean_error
from worker_scenarios import closed_port

from fetchq.errors import ExitCode
from fetchq.report.formats import JsonlWriter
from fetchq.wire.records import make_error, make_result, make_task

T0 = 1_700_000_000.0


def results_jsonl(first: int, count: int) -> str:
    stream = io.StringIO()
    writer = JsonlWriter(stream)
    for i in range(first, first + count):
        task = make_task(i, "saved", f"http://127.0.0.{1 + i % 2}:8080/?i={i}", 1, 30.0, T0)
        failed = i % 10 == 0
        writer.write(
            make_result(
                task,
                worker=f"box-{i % 3}:{i % 5}",
                started=T0 + i * 0.01,
                elapsed=0.001 * (1 + i % 50),
                status=None if failed else 200,
                error=make_error("refused", "connection refused") if failed else None,
            )
        )
    return stream.getvalue()


def test_several_files_merge_into_the_summary_of_all(env, tmp_path: Path) -> None:
    whole, first, second = tmp_path / "all.jsonl", tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    whole.write_text(results_jsonl(0, 1000))
    first.write_text(results_jsonl(0, 400))
    second.write_text(results_jsonl(400, 600))
    alone = run(env, "report", str(whole))
    merged = run(env, "report", str(first), str(second))
    assert alone.returncode == merged.returncode == 0, merged.stderr
    assert merged.stdout == alone.stdout
    assert "Requests:     1000" in merged.stdout
    assert "refused" in merged.stdout and "[200]  900" in merged.stdout
    assert "box-0" in merged.stdout and "127.0.0.2:8080" in merged.stdout
    from_stdin = run(env, "report", "-", str(second), stdin=first.read_text())
    assert from_stdin.stdout == alone.stdout


def test_a_line_that_is_not_a_result_is_named_by_file_and_line(env, tmp_path: Path) -> None:
    saved = tmp_path / "torn.jsonl"
    saved.write_text(results_jsonl(0, 3) + '{"id": 4, "elapsed": 0.1, "url"\n')
    result = run(env, "report", str(saved))
    assert_clean_error(result, ExitCode.USAGE, f"{saved}:4: not a JSON line")
    assert result.stdout == ""
    not_results = tmp_path / "status.jsonl"
    not_results.write_text('{"jobs": {}}\n')
    result = run(env, "report", str(not_results))
    assert_clean_error(result, ExitCode.USAGE, f"{not_results}:1: not a result")


def test_a_missing_file_is_a_usage_error(env, tmp_path: Path) -> None:
    result = run(env, "report", str(tmp_path / "nowhere.jsonl"))
    assert_clean_error(result, ExitCode.USAGE, "cannot read", "nowhere.jsonl")


def run_without_plotly(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``fetchq ARGS`` in a Python where importing plotly fails, as without the extra."""
    code = (
        "import sys; sys.modules['plotly'] = None; "
        "from fetchq.cli import main; sys.argv[0] = 'fetchq'; main()"
    )
    return subprocess.run(
        [PYTHON, "-c", code, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_html_without_the_report_extra_says_which_extra(env, tmp_path: Path) -> None:
    saved = tmp_path / "bad.jsonl"
    saved.write_text("not even json\n")  # the extra is checked before any result is read
    page = tmp_path / "report.html"
    result = run_without_plotly(env, "report", str(saved), "--html", str(page))
    assert_clean_error(result, ExitCode.USAGE, "--html needs the report extra", "pip install")
    assert len(result.stderr.splitlines()) == 1
    assert not page.exists()
    env["FETCHQ_SERVER"] = f"127.0.0.1:{closed_port()}"
    result = run_without_plotly(env, "output", "--html", str(page), "--give-up-after", "0")
    assert_clean_error(result, ExitCode.USAGE, "--html needs the report extra", "pip install")
    # without --html the same Python reports without plotly
    saved.write_text(results_jsonl(0, 5))
    assert run_without_plotly(env, "report", str(saved)).returncode == 0


def test_an_unwritable_html_path_fails_before_output_connects(env, tmp_path: Path) -> None:
    env["FETCHQ_SERVER"] = f"127.0.0.1:{closed_port()}"  # nothing there: connecting would fail
    result = run(env, "output", "--html", str(tmp_path / "no" / "such" / "dir.html"))
    assert_clean_error(result, ExitCode.USAGE, "cannot write the HTML report", "no directory")
