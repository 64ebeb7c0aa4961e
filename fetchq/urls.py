"""Reading and checking URLs: from arguments, files, stdin or a template.

Input is streamed line by line in bytes, so a file of millions of URLs takes
constant memory, and a bad line (too long, not UTF-8, not an http(s) URL)
is reported with its line number and skipped without touching the others.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import urlsplit

MAX_URL_LENGTH = 8192
"""Longer than any URL a real server accepts (most stop at 8 KiB)."""

_BAD_ASCII = re.compile(r"[\x00-\x20\x7f]")

_BAD_CATEGORIES = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})
"""Unicode controls, invisible format characters and every kind of space or
line separator (U+00A0, U+2028, U+200B, ...): a URL never holds them
unencoded, and in a file they hide where one URL ends."""


@dataclass(frozen=True)
class Rejected:
    """An input line that is not a URL we can fetch, and why."""

    source: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.reason}"


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be fetched, or None when it can."""
    if len(url) > MAX_URL_LENGTH:
        return f"URL longer than {MAX_URL_LENGTH} characters"
    try:
        url.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"not valid UTF-8 (character {exc.start + 1})"
    bad = _bad_character(url)
    if bad is not None:
        return (
            f"URL contains a space or control character (U+{ord(url[bad]):04X}) at column {bad + 1}"
        )
    scheme, sep, _ = url.partition("://")
    if not sep:
        return "not a URL: expected http://HOST/... or https://HOST/..."
    if scheme.lower() not in ("http", "https"):
        return f"unsupported scheme {scheme!r}: only http and https are fetched"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"malformed URL: {exc}"
    if not parts.hostname:
        return "URL has no host"
    if port == 0:
        return "URL has port 0"
    return None


def _bad_character(url: str) -> int | None:
    """Where the first space, control or separator character is, if any.

    Most URLs are ASCII, where one regex answers; only the others are looked
    at a character at a time."""
    ascii_bad = _BAD_ASCII.search(url)
    end = ascii_bad.start() if ascii_bad else len(url)
    if not url.isascii():
        for index in range(end):
            if unicodedata.category(url[index]) in _BAD_CATEGORIES:
                return index
    return end if ascii_bad else None


def read_urls(stream: BinaryIO, source: str) -> Iterator[str | Rejected]:
    """URLs of a text stream, one a line; blank lines and ``#`` comments are skipped."""
    number = 0
    limit = MAX_URL_LENGTH + 2
    while True:
        chunk = stream.readline(limit)
        if not chunk:
            return
        number += 1
        if len(chunk) == limit and not chunk.endswith(b"\n"):
            while chunk and not chunk.endswith(b"\n"):  # drop the rest of an overlong line
                chunk = stream.readline(1 << 16)
            yield Rejected(source, number, f"line longer than {MAX_URL_LENGTH} bytes")
            continue
        try:
            text = chunk.decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            yield Rejected(source, number, f"not valid UTF-8 (byte {exc.start + 1})")
            continue
        if not text or text.startswith("#"):
            continue
        problem = url_problem(text)
        yield Rejected(source, number, problem) if problem else text


def argument_urls(urls: Iterable[str]) -> Iterator[str | Rejected]:
    for number, url in enumerate(urls, 1):
        problem = url_problem(url)
        yield Rejected("argument", number, problem) if problem else url


DEFAULT_PORTS = {"http": "80", "https": "443"}

_PLAIN_AUTHORITY = re.compile(
    r"(https?)://([a-z0-9.-]*[a-z0-9-](:[1-9][0-9]{0,4})?)(?=[/?#]|\Z)",
    re.IGNORECASE | re.ASCII,  # else U+0130, U+212A, U+017F match i, k, s
)
"""Scheme, ``host[:port]`` and port of the common URL, in one match in C: an ASCII
name or IPv4 address with no trailing dot, a port without leading zeros.  Anything
else (user info too) takes the general path, which gives the same key."""


HOST_NAMES_KEPT = 4096
"""Host spellings whose normal form is remembered (upper case, IDNA, trailing dots, IPv6)."""


def host_key(url: str) -> str:
    """``host:port`` of an http(s) URL, as the server's per-host limits, holds and
    robots.txt and the report's target-host rows all count hosts.

    One site has many spellings, and a crawler that counts them apart loads it
    twice: the host is lower-cased, without user info or trailing dot, an
    internationalised name in its ASCII (IDNA) form, an IPv6 address in brackets
    and compressed; the port is filled in from the scheme.  So ``http://A.com./``,
    ``http://u:p@a.com:80/x`` and ``http://a.com/`` are one host, ``https://a.com/``
    another.  Never raises: a name IDNA refuses keeps its lower-cased text.

    Runs once per task on the server and per result in reports, so the common
    URL costs one regex match; only the others are parsed further."""
    match = _PLAIN_AUTHORITY.match(url)
    if match is None:
        return _general_host_key(url)
    if match[3]:
        return match[2].lower()
    return match[2].lower() + ":" + DEFAULT_PORTS[match[1].lower()]


def _general_host_key(url: str) -> str:
    """``host_key`` of any URL, parsed the way urllib3 (and so requests) reads it:
    the host follows the last ``@`` of the authority."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url.lower()
    end = len(rest)
    for mark in "/?#":
        found = rest.find(mark, 0, end)
        if found >= 0:
            end = found
    authority = rest[:end].rpartition("@")[2]
    if authority.startswith("["):
        host, bracket, after = authority.partition("]")
        host += bracket
        port = after[1:] if after.startswith(":") else ""
    else:
        host, _, port = authority.partition(":")
    if not port:
        port = DEFAULT_PORTS.get(scheme.lower(), "80")
    elif port.isascii() and port.isdigit():
        port = str(int(port))
    else:
        port = port.lower()
    return f"{_normal_host(host)}:{port}"


@functools.lru_cache(maxsize=HOST_NAMES_KEPT)
def _normal_host(host: str) -> str:
    """A host name or address as ``host_key`` writes it (see there).

    IDNA as requests applies it (the ``idna`` package, IDNA 2008 with UTS #46
    mapping), so the key is the name the request is sent to; a name it refuses
    keeps its lower-cased text."""
    if host.startswith("[") and host.endswith("]"):
        try:
            return f"[{ipaddress.IPv6Address(host[1:-1]).compressed}]"
        except ValueError:
            return host.lower()
    name = host.rstrip(".")
    if name.isascii():
        return name.lower()
    import idna  # only here: most hosts never need it, and it is slow to load

    for spelling in (name, name.lower()):
        try:
            return idna.encode(spelling, uts46=True).decode("ascii").rstrip(".")
        except ValueError:  # idna.IDNAError and UnicodeError both are
            continue
    return name.lower()


def origin(url: str) -> str:
    """``scheme://host[:port]`` of a URL, its host as ``host_key`` writes it and the
    port left out when it is the scheme's own: where its robots.txt lives.  Never
    carries user info, so a robots.txt request never sends a URL's credentials."""
    scheme = url.partition("://")[0].lower()
    key = host_key(url)
    host, _, port = key.rpartition(":")
    return f"{scheme}://{host if port == DEFAULT_PORTS.get(scheme) else key}"


PLACEHOLDER = "{i}"


def check_template(template: str, count: int, start: int = 0) -> None:
    """Raise ValueError, before anything is sent, if the template cannot work.

    The first and the last URL decide for all of them: the number is written
    in plain digits, and more digits only make a port, an address or the URL
    larger or longer, so a URL in between is never invalid when both ends are
    valid."""
    if PLACEHOLDER not in template:
        raise ValueError(f"template has no {PLACEHOLDER} placeholder")
    if count < 0:
        raise ValueError("count must be zero or more")
    if start < 0:
        raise ValueError("the first number must be zero or more")
    for sample in (start, start + max(count - 1, 0)):
        problem = url_problem(template.replace(PLACEHOLDER, str(sample)))
        if problem:
            raise ValueError(f"template gives an invalid URL for i={sample}: {problem}")


def template_urls(template: str, count: int, start: int = 0) -> Iterator[str]:
    """``count`` URLs with ``{i}`` replaced by ``start``, ``start + 1``, ...

    The template is checked once, when the first URL is asked for (see
    :func:`check_template`); the URLs themselves are not checked again."""
    for batch in template_batches(template, count, start):
        yield from batch


def template_batches(
    template: str, count: int, start: int = 0, size: int = 10_000
) -> Iterator[list[str]]:
    """The same URLs as ``template_urls``, ``size`` at a time: a million of them are
    made in a tenth of the time it takes to make them one by one."""
    check_template(template, count, start)
    for first in range(start, start + count, size):
        yield template_range(template, first, min(size, start + count - first))


def template_range(template: str, first: int, count: int) -> list[str]:
    """The URLs ``template`` makes for ``first`` .. ``first + count - 1``, unchecked: one
    f-string a URL when ``{i}`` stands once in it."""
    prefix, _, suffix = template.partition(PLACEHOLDER)
    numbers = range(first, first + count)
    if PLACEHOLDER in suffix:
        return [template.replace(PLACEHOLDER, str(i)) for i in numbers]
    return [f"{prefix}{i}{suffix}" for i in numbers]
