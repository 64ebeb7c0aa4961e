"""Thresholds on a report (``--check``): what they read, and the exit codes that make a
report pass or fail a build (0, 99, and 2 for a check that is malformed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fetchq_procs import run
from test_cli import assert_clean_error
from test_report_cli import results_jsonl

from fetchq.errors import ExitCode
from fetchq.report.checks import parse_check


@pytest.mark.parametrize(
    ("text", "figure", "threshold", "kind"),
    [
        ("p99<250ms", "p99", 0.25, "time"),
        ("mean <= 1.5s", "mean", 1.5, "time"),
        ("sched_p95<800us", "sched_p95", 0.0008, "time"),
        ("success>=99.5%", "success", 0.995, "share"),
        ("errors<1%", "errors", 0.01, "share"),
        ("errors<=3", "errors", 3.0, "count"),
        ("rate>=990/s", "rate", 990.0, "rate"),
        ("rate>=600/m", "rate", 10.0, "rate"),
        ("late<1%", "late", 0.01, "share"),
    ],
)
def test_checks_read_their_figure_and_unit(text, figure, threshold, kind) -> None:
    check = parse_check(text)
    assert (check.figure, check.kind) == (figure, kind)
    assert check.threshold == pytest.approx(threshold)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("p99<250", "p99 takes a time"),
        ("p99 = 250ms", "write a figure, a comparison and a number"),
        ("success>=99.5", "success takes a percentage"),
        ("rate>=990", "rate takes a rate"),
        ("p98<1s", "no figure 'p98'"),
        ("late<2ms", "late takes a percentage or a count"),
    ],
)
def test_a_malformed_check_says_what_is_wrong(text, why) -> None:
    with pytest.raises(ValueError, match=why):
        parse_check(text)


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    """100 results: 90% ok, service times 1 to 50 ms, about 96 a second."""
    path = tmp_path / "run.jsonl"
    path.write_text(results_jsonl(0, 100))
    return path


def test_a_report_whose_checks_pass_exits_0_with_its_table(env, saved) -> None:
    done = run(env, "report", str(saved), "--check", "p99<250ms", "--check", "success>=85%")
    assert done.returncode == 0, done.stderr
    table = done.stdout.split("Checks:\n", 1)[1].splitlines()
    assert table[0].split() == ["p99<250ms", "50.0ms", "pass"]
    assert table[1].split() == ["success>=85%", "90.00%", "pass"]
    assert table[2].strip() == "all 2 passed"


def test_a_report_with_a_failed_check_exits_99(env, saved) -> None:
    done = run(
        env, "report", str(saved), "--check", "success>=99.5%", "--check", "errors<=10",
        "--check", "p50<1ms",
    )  # fmt: skip
    assert done.returncode == ExitCode.CHECK_FAILED, done.stderr
    table = done.stdout.split("Checks:\n", 1)[1].splitlines()
    assert [line.split()[-1] for line in table[:3]] == ["FAIL", "pass", "FAIL"]
    assert table[1].split()[1] == "10"
    assert table[3].strip() == "2 of 3 failed"


def test_a_malformed_check_is_a_usage_error_before_anything_is_read(env, tmp_path) -> None:
    missing = tmp_path / "not-there.jsonl"
    done = run(env, "report", str(missing), "--check", "p99<250")
    assert_clean_error(done, ExitCode.USAGE, "--check 'p99<250': p99 takes a time")


def test_output_checks_a_job_as_it_ends_it(server, env, target) -> None:
    """``fetchq output --check``: the table after the results, and the exit code; a
    malformed check stops it before it connects."""
    for job in ("checked", "unchecked"):
        urls = [f"{target.url}/{job}?n={n}" for n in range(20)]
        dispatched = run(env, "dispatch", "-j", job, *urls)
        assert dispatched.returncode == 0, dispatched.stderr
    worked = run(env, "worker", "--burst", "--concurrency", "4")
    assert worked.returncode == 0, worked.stderr
    passed = run(
        env, "output", "-j", "checked", "--until-done", "--format", "none",
        "--check", "success>=100%", "--check", "errors<=0",
    )  # fmt: skip
    assert passed.returncode == 0, passed.stderr
    assert passed.stdout.rstrip().endswith("all 2 passed"), passed.stdout
    assert "Summary:" not in passed.stdout, "only the checks without --summary"
    failed = run(
        env, "output", "-j", "unchecked", "--until-done", "--format", "none", "--summary",
        "--check", "p50<1us",
    )  # fmt: skip
    assert failed.returncode == ExitCode.CHECK_FAILED, failed.stderr
    assert "Requests:     20" in failed.stdout
    assert failed.stdout.rstrip().endswith("1 of 1 failed"), failed.stdout
    offline = {**env, "FETCHQ_SERVER": "127.0.0.1:9"}
    refused = run(offline, "output", "-j", "checked", "--check", "p99<250")
    assert_clean_error(refused, ExitCode.USAGE, "--check 'p99<250': p99 takes a time")
