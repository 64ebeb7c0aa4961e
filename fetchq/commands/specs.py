"""What a dispatch asks its tasks to send: a spec from the command line, or one per
block of a vegeta targets file.

Header values are secrets: no message here quotes one.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import msgspec

from fetchq.errors import FetchqError, UsageError, cannot_read
from fetchq.urls import Rejected, url_problem
from fetchq.wire.specs import MAX_BODY, MAX_JOB_SPECS, METHODS, Spec, header_problem, spec_problem

TARGETS_FORMATS = ("http", "json")
"""vegeta's two targets formats: text blocks, and one JSON object a line."""


def parse_header(text: str, option: str = "--header") -> tuple[str, str]:
    """``'Name: value'`` as a header (a usage error quotes the name, never the value)."""
    name, colon, value = text.partition(":")
    name, value = name.strip(), value.strip()
    if not colon or not name:
        raise UsageError(f"{option} takes 'Name: value', as in 'Accept: text/html'")
    problem = header_problem(name, value)
    if problem:
        raise UsageError(f"{option}: {problem}")
    return name, value


def header_from_env(text: str) -> tuple[str, str]:
    """``'Name: VARIABLE'``: the header's value from the environment, never a command line."""
    name, variable = parse_header(text, "--header-env")
    value = os.environ.get(variable)
    if value is None:
        raise UsageError(f"--header-env {name}: environment variable {variable} is not set")
    problem = header_problem(name, value)
    if problem:
        raise UsageError(f"--header-env {name}: {problem} (from {variable})")
    return name, value


def read_body(text: str, max_body: int = MAX_BODY) -> bytes:
    """``--body``: ``@FILE`` for a file's bytes, anything else as UTF-8 text."""
    if text.startswith("@"):
        return body_file(text[1:], max_body)
    body = text.encode("utf-8")
    if len(body) > max_body:
        raise UsageError(f"--body is over the server's limit of {max_body} bytes")
    return body


def body_file(path: str | Path, max_body: int = MAX_BODY) -> bytes:
    """A body file's bytes; a ``FetchqError`` that says why not (unreadable, too big)."""
    try:
        with open(path, "rb") as stream:
            body = stream.read(max_body + 1)
    except OSError as exc:
        raise cannot_read("body file", path, exc) from None
    if len(body) > max_body:
        raise UsageError(f"body file {path} is over the server's limit of {max_body} bytes")
    return body


def command_spec(
    method: str | None,
    headers: list[str],
    header_env: list[str],
    body: str | None,
    max_body: int = MAX_BODY,
) -> Spec:
    """The spec of every task a dispatch sends, from its options."""
    name = (method or "GET").upper()
    if name not in METHODS:
        raise UsageError(f"--method {method!r}: use one of {', '.join(METHODS)}")
    spec = Spec(
        name,
        tuple([*map(parse_header, headers), *map(header_from_env, header_env)]),
        b"" if body is None else read_body(body, max_body),
    )
    problem = spec_problem(spec)
    if problem:
        raise UsageError(problem)
    return spec


_REQUEST_LINE = re.compile(r"(?:GET|HEAD|POST|PUT|PATCH|DELETE|OPTIONS|CONNECT|TRACE) ")


def _starts_a_target(line: str) -> bool:
    """A ``METHOD URL`` line begins a target even with no blank line before it, as in
    vegeta."""
    return _REQUEST_LINE.match(line) is not None


class _JsonTarget(msgspec.Struct, forbid_unknown_fields=False):
    url: str
    method: str = "GET"
    header: dict[str, list[str]] = {}
    body: str = ""


_read_target = msgspec.json.Decoder(_JsonTarget)


class Targets:
    """The requests of a vegeta targets file (``-``: stdin), as ``(url, spec)`` pairs
    or ``Rejected`` blocks, each spec made once however many blocks send it.

    ``headers``: sent by every block before its own (``--header``)."""

    def __init__(
        self,
        path: str,
        stream: BinaryIO,
        *,
        form: str = "http",
        headers: tuple[tuple[str, str], ...] = (),
        max_body: int = MAX_BODY,
    ) -> None:
        self.path = path
        self.source = "stdin" if path == "-" else path
        self._stream = stream
        self._form = form
        self._headers = headers
        self._max_body = max_body
        self._base = Path(".") if path == "-" else Path(path).parent
        self._bodies: dict[str, bytes] = {}
        self._specs: dict[Spec, Spec] = {}

    def __iter__(self) -> Iterator[tuple[str, Spec] | Rejected]:
        return self._json() if self._form == "json" else self._blocks()

    def _json(self) -> Iterator[tuple[str, Spec] | Rejected]:
        for number, raw in enumerate(self._stream, 1):
            if not raw.strip():
                continue
            try:
                target = _read_target.decode(raw)
                body = base64.b64decode(target.body, validate=True)
            except msgspec.DecodeError as exc:
                yield Rejected(self.source, number, f"not a JSON target: {exc}")
                continue
            except (binascii.Error, ValueError):
                yield Rejected(self.source, number, "body is not base64")
                continue
            headers = tuple(
                (name, value) for name, values in target.header.items() for value in values
            )
            yield self._target(number, target.method, target.url, headers, body)

    def _blocks(self) -> Iterator[tuple[str, Spec] | Rejected]:
        block: list[tuple[int, str]] = []
        for number, raw in enumerate(self._stream, 1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                line = "\ufffd"  # refused below, as what it is not
            if line.startswith("#"):
                continue
            if block and (not line or _starts_a_target(line)):
                yield self._block(block)
                block = []
            if line:
                block.append((number, line))
        if block:
            yield self._block(block)

    def _block(self, block: list[tuple[int, str]]) -> tuple[str, Spec] | Rejected:
        number, first = block[0]
        method, _, url = first.partition(" ")
        headers: list[tuple[str, str]] = []
        body = b""
        for line_number, line in block[1:]:
            if body:
                return Rejected(self.source, line_number, "a body (@file) ends its target")
            if line.startswith("@"):
                found = self._body(line[1:].strip())
                if isinstance(found, str):
                    return Rejected(self.source, line_number, found)
                body = found
                continue
            name, colon, value = line.partition(":")
            if not colon or not name.strip():
                return Rejected(self.source, line_number, "not a 'Name: value' header")
            problem = header_problem(name.strip(), value.strip())
            if problem:
                return Rejected(self.source, line_number, problem)
            headers.append((name.strip(), value.strip()))
        return self._target(number, method, url.strip(), tuple(headers), body)

    def _target(
        self, number: int, method: str, url: str, headers: tuple[tuple[str, str], ...], body: bytes
    ) -> tuple[str, Spec] | Rejected:
        if method.upper() not in METHODS:
            return Rejected(self.source, number, f"{method!r} is not one of {', '.join(METHODS)}")
        problem = url_problem(url)
        if problem:
            return Rejected(self.source, number, problem)
        spec = Spec(method.upper(), (*self._headers, *headers), body)
        problem = spec_problem(spec)
        if problem:
            return Rejected(self.source, number, problem)
        made = self._specs.setdefault(spec, spec)
        if len(self._specs) > MAX_JOB_SPECS:
            raise UsageError(
                f"{self.source}: more than {MAX_JOB_SPECS} distinct method, header and body "
                "combinations in one job: split it into jobs"
            )
        return url, made

    def _body(self, name: str) -> bytes | str:
        """The bytes of a block's body file (relative to the targets file), or why not."""
        if name not in self._bodies:
            try:
                self._bodies[name] = body_file(self._base / name, self._max_body)
            except FetchqError as exc:
                return str(exc)
        return self._bodies[name]
