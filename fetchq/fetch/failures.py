"""Every way a fetch can fail, named: the error types a result carries.

requests and urllib3 wrap the real cause in several layers; ``classify``
walks them all and names what happened on the network, whatever layer
noticed it, so that a result from any worker reads the same.
"""

from __future__ import annotations

import http.client
import socket
import ssl
from collections.abc import Iterator
from typing import Any

import requests
import urllib3.exceptions

MAX_MESSAGE = 200
"""Error messages are cut to this many characters: results stay small."""


class DeadlineExceeded(Exception):
    """The task's total time ran out while the body was still arriving."""


class PartialAnswer(Exception):
    """A failure after the answer started: keeps its status and bytes so far."""

    def __init__(self, status: int, nbytes: int, cause: Exception) -> None:
        super().__init__(status, nbytes)
        self.status = status
        self.nbytes = nbytes
        self.cause = cause


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception it wraps, outermost first.

    requests and urllib3 wrap the real cause in several ways: ``raise ... from``,
    an exception passed as an argument (requests' ConnectionError holds urllib3's
    MaxRetryError, whose ``reason`` holds the socket error), so all are followed.
    """
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo and len(seen) < 64:
        cur = todo.pop(0)
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        yield cur
        nxt: list[Any] = [cur.__cause__, getattr(cur, "reason", None), *cur.args]
        if not cur.__suppress_context__:
            nxt.append(cur.__context__)
        todo.extend(e for e in nxt if isinstance(e, BaseException))


def _first(chain: list[BaseException], *kinds: type[BaseException]) -> BaseException | None:
    return next((e for e in chain if isinstance(e, kinds)), None)


def shorten(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def _describe(exc: BaseException) -> str:
    """A readable line for ``exc``: its text, or its class name when it has none."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc)
    return text if text else type(exc).__name__


def _root(chain: list[BaseException]) -> BaseException:
    """The exception the walk of :func:`_chain` reached last.

    The walk is breadth-first, so this is one of the most deeply wrapped,
    usually the socket error that says what happened; it may be an argument
    or a ``__context__`` rather than a ``__cause__``."""
    return chain[-1]


def classify(exc: BaseException) -> tuple[str, str]:
    """Map an exception from a fetch to ``(error type, short message)``.

    The type names what happened on the network, whatever layer noticed it,
    so the order of the checks matters: urllib3's NewConnectionError is a
    subclass of ConnectTimeoutError, and RemoteDisconnected is both a
    ConnectionResetError and a BadStatusLine.
    """
    chain = list(_chain(exc))

    if isinstance(exc, DeadlineExceeded):
        return "timeout", shorten(str(exc) or "total time exceeded")

    if isinstance(exc, requests.TooManyRedirects):
        return "too_many_redirects", shorten(str(exc))

    bad_url = _first(
        chain,
        requests.exceptions.InvalidURL,
        requests.exceptions.MissingSchema,
        requests.exceptions.InvalidSchema,
        requests.exceptions.URLRequired,
        urllib3.exceptions.LocationValueError,
    )
    if bad_url is not None:
        return "invalid_url", shorten(_describe(bad_url))

    tls = _first(chain, ssl.SSLError, ssl.CertificateError)
    if tls is None:
        tls = _first(chain, requests.exceptions.SSLError, urllib3.exceptions.SSLError)
    if tls is not None:
        return "tls", shorten(f"TLS error: {_describe(tls)}")

    dns = _first(chain, socket.gaierror)
    if dns is not None:
        return "dns", shorten(f"name resolution failed: {_describe(dns)}")
    if _first(chain, urllib3.exceptions.NameResolutionError) is not None:
        return "dns", "name resolution failed"

    if _first(chain, ConnectionRefusedError) is not None:
        return "refused", "connection refused"

    connect_timeout = isinstance(exc, requests.ConnectTimeout) or any(
        isinstance(e, urllib3.exceptions.ConnectTimeoutError)
        and not isinstance(e, urllib3.exceptions.NewConnectionError)
        for e in chain
    )
    if connect_timeout:
        return "connect_timeout", "connect timed out"

    if any(
        isinstance(e, requests.Timeout | urllib3.exceptions.TimeoutError | TimeoutError)
        and not isinstance(e, urllib3.exceptions.NewConnectionError)
        for e in chain
    ):
        return "timeout", "read timed out"

    if _first(chain, http.client.RemoteDisconnected) is not None:
        return "reset", "server closed the connection without a response"
    if _first(chain, ConnectionResetError) is not None:
        return "reset", "connection reset by peer"
    if _first(chain, BrokenPipeError, ConnectionAbortedError) is not None:
        return "reset", "connection broken: the server stopped reading"
    incomplete = next(
        (
            e
            for e in chain
            if isinstance(e, http.client.IncompleteRead)
            and not isinstance(e, urllib3.exceptions.InvalidChunkLength)
        ),
        None,
    )
    if isinstance(incomplete, http.client.IncompleteRead):
        # http.client keeps the bytes read so far, urllib3 only their count.
        part = incomplete.partial
        got = part if isinstance(part, int) else len(part)
        return "reset", shorten(
            f"connection closed before the body was complete ({got} bytes read, "
            f"{incomplete.expected} more expected)"
        )

    malformed = _first(
        chain,
        requests.exceptions.ChunkedEncodingError,
        requests.exceptions.ContentDecodingError,
        urllib3.exceptions.InvalidChunkLength,
        urllib3.exceptions.DecodeError,
        urllib3.exceptions.InvalidHeader,
        urllib3.exceptions.ResponseNotChunked,
        http.client.HTTPException,
    )
    if malformed is not None:
        cause = _root(chain)
        text = _describe(cause) if isinstance(cause, http.client.HTTPException) else ""
        name = type(cause).__name__
        return "protocol", shorten(f"malformed HTTP answer: {name} {text}".strip())

    if _first(chain, urllib3.exceptions.ProtocolError) is not None:
        return "reset", shorten(f"connection broken: {_describe(_root(chain))}")

    network = _first(chain, requests.ConnectionError, urllib3.exceptions.HTTPError) or next(
        (
            e
            for e in chain
            if isinstance(e, OSError) and not isinstance(e, requests.RequestException)
        ),
        None,
    )
    if network is not None:
        return "connection", shorten(f"connection failed: {_describe(_root(chain))}")

    return "internal", shorten(f"{type(exc).__name__}: {exc}")
