"""What a task sends besides its URL: a method, headers and a body, said once per job.

A job whose tasks are not bare GETs has one or more *specs*.  The dispatcher sends
each spec to the server once, with the first batch that uses it, and every task
names its spec by a key, the digest of what it holds: the server keeps a spec once
however many tasks use it, a lease names it in a few bytes, and a worker asks for
each spec it has not met (``specs``) and keeps it.  The key is the digest so that
two dispatchers of one job agree on it, and the server checks it.

Header values are secrets (a token, a cookie): nothing here renders a spec, and
what renders jobs shows at most a method.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

import msgspec

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
"""The methods a task may use."""

MAX_BODY = 1 << 20
"""Bytes in one body: larger ones are refused at dispatch (and by the server)."""

MAX_HEADERS = 64
"""Headers in one spec."""

MAX_HEADER_TEXT = 16_384
"""Characters of header names and values in one spec."""

MAX_JOB_SPECS = 1_000
"""Distinct specs one job may use: a targets file of many distinct bodies is refused
past this, so that a job's specs stay within a few hundred MiB at the very most."""

MAX_SUBMIT_SPECS = 32
"""Specs one submit may carry (each up to ``MAX_BODY``: well inside a frame)."""

KEY_LENGTH = 32
"""Hex digits of a spec's key: 128 bits of its SHA-256."""

_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
"""A header name: an RFC 9110 token."""

WORKERS_HEADERS = frozenset(
    {"content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te"}
)
"""Headers a spec may not set: they frame the body or manage the connection, so a
wrong one breaks the exchange (and Node's fetch refuses most of them)."""

_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
"""What a header value may not hold (tab is allowed)."""


class Spec(NamedTuple):
    """A task's method, headers (in order, a name may repeat) and body."""

    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""

    @property
    def plain(self) -> bool:
        """A bare GET: what a task without a spec sends."""
        return self.method == "GET" and not self.headers and not self.body


def header_problem(name: str, value: str) -> str | None:
    """Why ``name: value`` cannot be sent as a header, or None.  Never quotes the value:
    it may be a secret."""
    if not _HEADER_NAME.fullmatch(name):
        return f"{name!r} is not a header name (letters, digits and !#$%&'*+-.^_`|~)"
    if name.lower() in WORKERS_HEADERS:
        return f"{name} is the worker's to send: it says how the body and connection go"
    if _CONTROL.search(value):
        return f"the value of header {name} holds a line break or a control character"
    if not value.isascii() and not _latin1(value):
        return f"the value of header {name} is not ISO-8859-1 text"
    return None


def _latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def spec_problem(spec: Spec) -> str | None:
    """Why ``spec`` cannot be sent, or None: one rule for the dispatcher and the server."""
    if spec.method not in METHODS:
        return f"method {spec.method!r} is not one of {', '.join(METHODS)}"
    if len(spec.headers) > MAX_HEADERS:
        return f"at most {MAX_HEADERS} headers"
    if sum(len(name) + len(value) for name, value in spec.headers) > MAX_HEADER_TEXT:
        return f"at most {MAX_HEADER_TEXT} characters of headers"
    for name, value in spec.headers:
        problem = header_problem(name, value)
        if problem:
            return problem
    if spec.body and spec.method in ("GET", "HEAD"):
        return f"a {spec.method} sends no body: use POST, PUT or PATCH for one"
    if len(spec.body) > MAX_BODY:
        return f"a body of {len(spec.body)} bytes is over the limit of {MAX_BODY} bytes"
    return None


def spec_key(spec: Spec) -> str:
    """The digest that names ``spec``: the same on every side for the same spec."""
    digest = hashlib.sha256()
    digest.update(msgspec.json.encode([spec.method, spec.headers]))
    digest.update(b"\n")
    digest.update(spec.body)
    return digest.hexdigest()[:KEY_LENGTH]


def spec_record(spec: Spec) -> dict[str, Any]:
    """``spec`` as it crosses the wire: its key, and the body in base64."""
    return {
        "key": spec_key(spec),
        "method": spec.method,
        "headers": [[name, value] for name, value in spec.headers],
        "body": base64.b64encode(spec.body).decode("ascii"),
    }


def read_spec(record: object) -> tuple[str, Spec]:
    """A spec record's key and spec, checked (the key against the digest); raises
    ValueError with one line that quotes no header value."""
    if not isinstance(record, Mapping):
        raise ValueError("a spec must be an object")
    method, headers, body, key = (
        record.get("method", "GET"),
        record.get("headers", []),
        record.get("body", ""),
        record.get("key"),
    )
    if not isinstance(method, str):
        raise ValueError("a spec's method must be text")
    if not isinstance(headers, list) or not all(_is_pair(pair) for pair in headers):
        raise ValueError("a spec's headers must be a list of [name, value] texts")
    if not isinstance(body, str) or len(body) > (MAX_BODY + 2) // 3 * 4:
        raise ValueError(f"a spec's body must be base64 text of at most {MAX_BODY} bytes")
    try:
        raw = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a spec's body is not base64") from None
    spec = Spec(method, tuple((name, value) for name, value in headers), raw)
    problem = spec_problem(spec)
    if problem:
        raise ValueError(problem)
    if key != spec_key(spec):
        raise ValueError("a spec's key is not the digest of what it holds")
    return key, spec


def _is_pair(pair: object) -> bool:
    return (
        isinstance(pair, list)
        and len(pair) == 2
        and isinstance(pair[0], str)
        and isinstance(pair[1], str)
    )


def is_key(value: object) -> bool:
    return (
        isinstance(value, str)
        and len(value) == KEY_LENGTH
        and all(c in "0123456789abcdef" for c in value)
    )
