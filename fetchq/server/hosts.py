"""Hosts as politeness sees them: ``host:port`` of a URL, and a host's slot.

A host is the URL's host and port, the port filled in from the scheme, so
``http://a/`` and ``http://a:80/x`` are one host and ``https://a/`` another.
"""

from __future__ import annotations

import re

DEFAULT_PORTS = {"http": "80", "https": "443"}


_AUTHORITY = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://(?:[^/?#@]*@)?([^/?#]*)")
"""Scheme, then host and port, of a URL (user info skipped): one match, in C."""


def host_key(url: str) -> str:
    """``host:port`` of an http(s) URL, lower-cased, without user info."""
    match = _AUTHORITY.match(url)
    if match is None:
        return url.lower()
    scheme, authority = match.groups()
    authority = authority.lower()
    if authority.endswith("]") or ":" not in authority.rpartition("]")[2]:
        return f"{authority}:{DEFAULT_PORTS.get(scheme.lower(), '80')}"
    return authority


def origin(url: str) -> str:
    """``scheme://host[:port]`` of a URL: where its robots.txt lives."""
    scheme, _, rest = url.partition("://")
    end = len(rest)
    for mark in "/?#":
        found = rest.find(mark, 0, end)
        if found >= 0:
            end = found
    return f"{scheme.lower()}://{rest[:end]}"


class HostSlot:
    """How busy one host is, for one job or for the whole server: requests in flight
    (leased), when the next may start, and a hold a site asked for (Retry-After)."""

    __slots__ = ("held_until", "in_flight", "last_start")

    def __init__(self) -> None:
        self.in_flight = 0
        self.last_start = float("-inf")
        self.held_until = float("-inf")

    def ready_at(self, cap: int | None, delay: float) -> float | None:
        """When the next request may start; None while the cap is reached."""
        if cap is not None and self.in_flight >= cap:
            return None
        return max(self.last_start + delay, self.held_until)
