"""Hosts as politeness sees them: a URL's origin, and a host's slot.

A host is ``fetchq.urls.host_key`` of a URL: its host and port, the port filled
in from the scheme.
"""

from __future__ import annotations


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
