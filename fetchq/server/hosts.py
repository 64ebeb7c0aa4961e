"""Hosts as politeness sees them: ``host:port`` of a URL, and a host's slot.

A host is the URL's host and port, the port filled in from the scheme, so
``http://a/`` and ``http://a:80/x`` are one host and ``https://a/`` another.
"""

from __future__ import annotations

DEFAULT_PORTS = {"http": "80", "https": "443"}


def host_key(url: str) -> str:
    """``host:port`` of an http(s) URL, lower-cased, without user info."""
    scheme, _, rest = url.partition("://")
    end = len(rest)
    for mark in "/?#":
        found = rest.find(mark, 0, end)
        if found >= 0:
            end = found
    authority = rest[:end]
    at = authority.rfind("@")
    if at >= 0:
        authority = authority[at + 1 :]
    authority = authority.lower()
    if authority.startswith("["):  # an IPv6 literal: [::1]:8080
        close = authority.find("]")
        host, port = authority[: close + 1], authority[close + 2 :]
    else:
        host, _, port = authority.partition(":")
    return f"{host}:{port or DEFAULT_PORTS.get(scheme.lower(), '80')}"


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
