"""Result writers: how ``output`` turns result dicts into lines of text, JSONL or CSV.

Every writer writes each result as it comes (nothing is held back beyond the
stream's own buffer), so a follower of ``output`` sees results as they land and a
killed ``output`` loses nothing it already printed.
"""

from __future__ import annotations

import csv
import json
import os
from typing import Any, TextIO

from fetchq.errors import UsageError
from fetchq.ids import IdSet
from fetchq.units import format_bytes, format_duration
from fetchq.wire.aggregates import AGGREGATE
from fetchq.wire.records import RESULT_FIELDS

FORMATS = ("text", "jsonl", "csv")

CSV_FIELDS = tuple(
    column
    for name in RESULT_FIELDS
    if name != "v"
    for column in (("error_type", "error_message") if name == "error" else (name,))
)
"""CSV columns: the result fields flattened (``error`` split in two, no record version)."""

TEXT_LABEL_WIDTH = 16
"""Width of the status / error column: it fits ``ERR invalid_url`` (15) and every
shorter label; the three longer ones (``ERR lease_expired``, ``ERR connect_timeout``,
``ERR too_many_redirects``) push the rest of their line to the right."""


class ResultWriter:
    """Base of the writers: ``write`` one result dict, ``flush`` the stream."""

    def __init__(self, stream: TextIO, *, continuing: bool = False) -> None:
        self.stream = stream
        self.continuing = continuing
        """True when appending to a file that already holds results (no new header)."""

    def write(self, result: dict[str, Any]) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        self.stream.flush()


class JsonlWriter(ResultWriter):
    """One compact JSON object a line, fields in the documented order then any extras."""

    def write(self, result: dict[str, Any]) -> None:
        ordered = {k: result[k] for k in RESULT_FIELDS if k in result}
        ordered.update((k, v) for k, v in result.items() if k not in ordered)
        self.stream.write(json.dumps(ordered, separators=(",", ":")) + "\n")


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


class CsvWriter(ResultWriter):
    """A header row, then one row a result; ``None`` is an empty cell, booleans true/false.

    The header is written at once so that even a run with no results yields a valid
    file.  Rows end in ``\\n`` rather than the csv module's ``\\r\\n`` because the
    stream is usually a text-mode stdout, where ``\\r\\n`` would be translated again.
    """

    def __init__(self, stream: TextIO, *, continuing: bool = False) -> None:
        super().__init__(stream, continuing=continuing)
        self._writer = csv.writer(stream, lineterminator="\n")
        if not continuing:
            self._writer.writerow(CSV_FIELDS)

    def write(self, result: dict[str, Any]) -> None:
        if result.get("kind") == AGGREGATE:
            raise UsageError(
                f"job {result.get('job')} is an aggregate job: its records sum a span of "
                "requests each, and CSV has a row a request; use --format jsonl or text"
            )
        error = result.get("error") or {}
        row = {
            **{k: result.get(k) for k in CSV_FIELDS},
            "error_type": error.get("type"),
            "error_message": error.get("message"),
        }
        self._writer.writerow([_csv_cell(row[k]) for k in CSV_FIELDS])


def _one_line(text: Any) -> str:
    """Collapse whitespace so that a multi-line message cannot break the one-line-a-result rule."""
    return " ".join(str(text).split())


def text_line(result: dict[str, Any]) -> str:
    """The human line for one result: status or error, latency, size, URL, error message;
    for an aggregate, its span's counts."""
    if result.get("kind") == AGGREGATE:
        return aggregate_line(result)
    status = result.get("status")
    error = result.get("error")
    if error is None:
        label = "???" if status is None else str(status)
    else:
        kind = _one_line(error.get("type") or "error")
        label = f"ERR {kind}" if status is None else f"{status} ERR {kind}"
    line = (
        f"{label:<{TEXT_LABEL_WIDTH}} "
        f"{format_duration(float(result.get('elapsed') or 0.0)):>8} "
        f"{format_bytes(int(result.get('bytes') or 0)):>7}  "
        f"{_one_line(result.get('url', ''))}"
    )
    if error is not None and error.get("message"):
        line += f" ({_one_line(error['message'])})"
    return line


def aggregate_line(record: dict[str, Any]) -> str:
    """The human line for an aggregate: its span and what its requests came to."""
    first, requests = int(record.get("first") or 0), int(record.get("requests") or 0)
    label = f"{'SPAN':<{TEXT_LABEL_WIDTH}} "
    return (
        f"{label}{requests} requests (#{first}..#{first + requests - 1}): "
        f"{record.get('ok')} ok, {record.get('failed')} failed, by {record.get('worker')}"
    )


class TextWriter(ResultWriter):
    """Aligned, colourless lines for people reading a terminal or a log."""

    def write(self, result: dict[str, Any]) -> None:
        self.stream.write(text_line(result) + "\n")


_WRITERS: dict[str, type[ResultWriter]] = {
    "text": TextWriter,
    "jsonl": JsonlWriter,
    "csv": CsvWriter,
}


def open_writer(fmt: str, stream: TextIO, *, continuing: bool = False) -> ResultWriter:
    """The writer for ``fmt`` (one of :data:`FORMATS`) on ``stream``."""
    try:
        cls = _WRITERS[fmt]
    except KeyError:
        raise ValueError(
            f"unknown output format {fmt!r} (choose from {', '.join(FORMATS)})"
        ) from None
    return cls(stream, continuing=continuing)


def ids_in_file(path: str | os.PathLike[str], fmt: str) -> IdSet:
    """The result ids a JSONL or CSV file already holds, for an output that resumes it.

    A last line without its newline was torn by a crash mid-write: it is cut
    off, and its result will be written again."""
    if fmt not in ("jsonl", "csv"):
        raise ValueError(f"cannot resume a {fmt} file: only jsonl and csv keep ids")
    ids = IdSet()
    complete = 0
    with open(path, "rb") as handle:
        for number, line in enumerate(handle):
            if not line.endswith(b"\n"):
                break
            complete += len(line)
            if fmt == "csv":
                if number == 0:
                    continue
                cell = next(csv.reader([line.decode("utf-8")]), [""])[0]
                if cell.isdigit():
                    ids.add(int(cell))
            elif line.strip():
                value = json.loads(line).get("id")
                if isinstance(value, int):
                    ids.add(value)
    if complete < os.path.getsize(path):
        with open(path, "r+b") as handle:
            handle.truncate(complete)
    return ids
