"""Result writers: each format parses back to what was written."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pytest

from fetchq.report.formats import CSV_FIELDS, FORMATS, open_writer, text_line
from fetchq.wire.records import RESULT_FIELDS, make_error, make_result, make_task

T0 = 1_700_000_000.0


def ok_result() -> dict[str, Any]:
    task = make_task(7, "job1", "http://127.0.0.1:8000/a?x=1,2", 1, 30.0, T0)
    return make_result(
        task, worker="host:42", started=T0 + 0.5, elapsed=0.0123, status=200, nbytes=1234
    )


def failed_result() -> dict[str, Any]:
    task = make_task(8, "job1", "http://127.0.0.1:1/", 3, 30.0, T0)
    return make_result(
        task,
        worker="host:43",
        started=T0 + 1.0,
        elapsed=0.001,
        error=make_error("refused", 'connection refused, "port 1"\nsecond line'),
    )


def write_all(fmt: str, results: list[dict[str, Any]]) -> str:
    stream = io.StringIO()
    writer = open_writer(fmt, stream)
    for r in results:
        writer.write(r)
    writer.flush()
    return stream.getvalue()


def test_formats_and_unknown_format() -> None:
    assert FORMATS == ("text", "jsonl", "csv")
    with pytest.raises(ValueError, match="xml"):
        open_writer("xml", io.StringIO())


def test_jsonl_round_trips_every_field_in_order() -> None:
    extra = {**ok_result(), "region": "eu"}
    results = [ok_result(), failed_result(), extra]
    lines = write_all("jsonl", results).splitlines()
    assert len(lines) == 3
    for line, original in zip(lines, results, strict=True):
        assert ", " not in line.split('"url"')[0]  # compact separators
        decoded = json.loads(line)
        assert decoded == original
    assert list(json.loads(lines[2])) == [*RESULT_FIELDS, "region"]


def test_jsonl_writes_as_results_come() -> None:
    stream = io.StringIO()
    writer = open_writer("jsonl", stream)
    writer.write(ok_result())
    assert stream.getvalue().count("\n") == 1


def test_csv_parses_back() -> None:
    text = write_all("csv", [ok_result(), failed_result()])
    rows = list(csv.DictReader(io.StringIO(text)))
    assert text.splitlines()[0] == ",".join(CSV_FIELDS)
    assert len(rows) == 2
    good, bad = rows
    assert good == {
        "id": "7",
        "job": "job1",
        "url": "http://127.0.0.1:8000/a?x=1,2",
        "ok": "true",
        "status": "200",
        "elapsed": "0.0123",
        "bytes": "1234",
        "error_type": "",
        "error_message": "",
        "attempt": "1",
        "worker": "host:42",
        "started": repr(T0 + 0.5),
        "scheduled": "",
        "retry_after": "",
    }
    assert bad["ok"] == "false"
    assert bad["status"] == ""
    assert bad["error_type"] == "refused"
    assert bad["error_message"] == 'connection refused, "port 1"\nsecond line'
    assert bad["attempt"] == "3"


def test_csv_header_once_even_with_no_rows() -> None:
    assert write_all("csv", []) == ",".join(CSV_FIELDS) + "\n"
    text = write_all("csv", [ok_result()] * 3)
    assert text.count("id,job,url") == 1


def test_text_lines() -> None:
    lines = write_all("text", [ok_result(), failed_result()]).splitlines()
    assert len(lines) == 2  # the multi-line message stays on one line
    good, bad = lines
    assert good.startswith("200 ")
    assert "12.3ms" in good and "1.2kB" in good
    assert good.endswith("http://127.0.0.1:8000/a?x=1,2")
    assert bad.startswith("ERR refused")
    assert "http://127.0.0.1:1/" in bad
    assert bad.endswith('(connection refused, "port 1" second line)')
    # Aligned: the URL starts in the same column on both lines.
    assert good.index("http://") == bad.index("http://")


def test_text_line_for_status_with_error_and_plain_failure() -> None:
    task = make_task(1, "j", "http://127.0.0.1/x", 1, 30.0, T0)
    partial = make_result(
        task,
        worker="h:1",
        started=T0,
        elapsed=2.0,
        status=200,
        error=make_error("read-timeout", "body timed out"),
    )
    assert text_line(partial).startswith("200 ERR read-timeout")
    server_error = make_result(task, worker="h:1", started=T0, elapsed=0.5, status=503)
    assert text_line(server_error).startswith("503 ")
