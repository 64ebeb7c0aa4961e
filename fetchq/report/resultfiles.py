"""Reading saved results back: the JSONL files ``fetchq output --format jsonl`` writes,
results and aggregate records alike."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from typing import Any, TextIO

from fetchq.errors import UsageError, cannot_read
from fetchq.report.summary import Summary
from fetchq.wire.aggregates import AGGREGATE, check_summary, decode_aggregate

STDIN = "-"


def read_results(paths: Sequence[str]) -> Iterator[dict[str, Any]]:
    """Every result and aggregate record of every file, in order; ``-`` reads standard
    input.  An aggregate is checked as the server checks one (``decode_aggregate``).

    A line that is neither stops the reading with a usage error naming
    the file and line: a report that skipped it would be silently wrong."""
    for path in paths:
        if path == STDIN:
            yield from _results_in(sys.stdin, "<stdin>")
            continue
        try:
            handle = open(path, encoding="utf-8")  # noqa: SIM115 (closed below; errors mapped here)
        except OSError as exc:
            raise cannot_read("results file", path, exc) from None
        with handle:
            yield from _results_in(handle, path)


def _results_in(handle: TextIO, name: str) -> Iterator[dict[str, Any]]:
    number = 0
    try:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UsageError(
                    f"{name}:{number}: not a JSON line ({exc.msg}); "
                    "expected results from fetchq output --format jsonl"
                ) from None
            if isinstance(record, dict) and record.get("kind") == AGGREGATE:
                try:
                    aggregate = decode_aggregate(line)
                    check_summary(aggregate)
                    Summary.from_state(aggregate.summary)
                except ValueError as exc:  # msgspec's errors are ValueErrors too
                    raise UsageError(f"{name}:{number}: not an aggregate record: {exc}") from None
            elif not isinstance(record, dict) or not isinstance(record.get("elapsed"), int | float):
                raise UsageError(
                    f"{name}:{number}: not a result (a JSON object with elapsed, url, status ...)"
                )
            yield record
    except UnicodeDecodeError:
        raise UsageError(f"{name}:{number + 1}: not UTF-8 text") from None
