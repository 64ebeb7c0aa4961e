"""Rates and durations as people write them, and the limits the command line holds them to."""

from __future__ import annotations

import pytest
from fetchq_procs import run

from fetchq.errors import ExitCode, UsageError
from fetchq.units import format_rate, parse_duration, parse_rate
from fetchq.wire.api import MAX_HOST_DELAY, MAX_RATE


@pytest.mark.parametrize(
    ("text", "per_second"),
    [("200", 200.0), ("200/s", 200.0), ("12000/m", 200.0), ("60/h", 1 / 60), (" .5/s ", 0.5)],
)
def test_rates(text, per_second):
    assert parse_rate(text) == pytest.approx(per_second)


@pytest.mark.parametrize(
    "text", ["", "fast", "0", "0/s", "-5", "5/d", "1e3", "2000001", "100 /s", "100/ s", "1 00"]
)
def test_rates_that_are_refused(text):
    with pytest.raises(UsageError, match="invalid rate"):
        parse_rate(text)
    assert parse_rate(f"{MAX_RATE:.0f}") == MAX_RATE


def test_a_rate_is_written_without_spaces_inside_and_the_error_says_so():
    with pytest.raises(UsageError, match="with no spaces: 200, 200/s, 12000/m, 60/h"):
        parse_rate("100 /s")
    with pytest.raises(UsageError, match="no space: 30s, 5m, 1h, 250ms"):
        parse_duration("5 m")


def test_the_slowest_rate_is_one_an_hour():
    assert parse_rate("1/h") == pytest.approx(1 / 3600)
    for text in ("0.5/h", "0.0001"):
        with pytest.raises(UsageError, match="the slowest is 1/h"):
            parse_rate(text)


@pytest.mark.parametrize(
    ("rate", "text"),
    [
        (150.04, "150.0/s"),
        (1.0, "1.0/s"),
        (0.0, "0.0/s"),
        (0.5, "0.5/s"),
        (0.001, "0.001/s"),
        (1 / 60, "0.017/s"),
        (1 / 3600, "0.00028/s"),
        (None, "n/a"),
    ],
)
def test_a_slow_rate_never_reads_as_zero(rate, text):
    assert format_rate(rate) == text


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90.0), ("90s", 90.0), ("1.5m", 90.0), ("2h", 7200.0), ("250ms", 0.25)],
)
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


def test_durations_that_are_refused():
    for text in ("", "soon", "0", "0ms", "5d", "-1s"):
        with pytest.raises(UsageError, match="invalid duration"):
            parse_duration(text)
    with pytest.raises(UsageError, match="at most 3600s"):
        parse_duration("61m", MAX_HOST_DELAY)
    assert parse_duration("1h", MAX_HOST_DELAY) == MAX_HOST_DELAY


@pytest.mark.parametrize(
    ("option", "value", "said"),
    [
        ("--rate", "2000000", "at most 1,000,000/s"),
        ("--host-delay", "2h", "at most 3600s"),
        ("--per-host", "100001", "less than or equal to 100000"),
        ("--timeout", "90000", "less than or equal to 86400"),
    ],
)
def test_dispatch_refuses_a_limit_the_server_would_refuse_before_it_connects(
    env, option, value, said
):
    """Exit 2 (usage) at once in one line, not exit 1 from the server's BadRequest."""
    env["FETCHQ_SERVER"] = "127.0.0.1:9"  # nothing listens: the check must come first
    done = run(env, "dispatch", option, value, "http://127.0.0.1:9/x", timeout=20)
    assert done.returncode == ExitCode.USAGE, done.stderr
    assert said in done.stderr and len(done.stderr.splitlines()) == 1, done.stderr


def test_zero_means_none_only_where_asked():
    """``fetchq job set --rate 0`` removes the rate, however zero is written."""
    for text in ("0", "0.0", "0/m", " 0/h "):
        assert parse_rate(text, allow_zero=True) == 0.0
    for text in ("0", "0s", "0ms", "0.0m"):
        assert parse_duration(text, allow_zero=True) == 0.0
    with pytest.raises(UsageError, match="more than zero"):
        parse_rate("0/m")
