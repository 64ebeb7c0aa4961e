"""robots.txt as a job sees one host: parsed with protego, the parser Scrapy uses.

protego understands wildcards, ``$`` anchors and ``Crawl-delay``; the
standard library's ``urllib.robotparser`` misses the wildcards.  What a
failed fetch means follows RFC 9309: a 4xx answer (there is no robots.txt)
allows everything; a 5xx answer or no answer at all means the site cannot
say, so the fetch is tried again, and after the last attempt nothing on the
host is fetched.
"""

from __future__ import annotations

from typing import Any

from protego import Protego

from fetchq.server.jobqueue import Robots
from fetchq.wire.api import USER_AGENT


class RobotsRules(Robots):
    def __init__(self, text: str) -> None:
        self._parsed = Protego.parse(text)
        delay = self._parsed.crawl_delay(USER_AGENT)
        self.crawl_delay = float(delay) if delay is not None else None

    def allowed(self, url: str) -> bool:
        return bool(self._parsed.can_fetch(url, USER_AGENT))


class AllowAll(Robots):
    crawl_delay = None

    def allowed(self, url: str) -> bool:
        return True


class DisallowAll(Robots):
    crawl_delay = None

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def allowed(self, url: str) -> bool:
        return False


def rules_from(report: dict[str, Any], last_attempt: bool) -> Robots | None:
    """The rules a worker's robots.txt fetch gives; None: fetch it again."""
    status = report.get("status")
    if isinstance(status, int) and 200 <= status < 300:
        return RobotsRules(str(report.get("body") or ""))
    if isinstance(status, int) and 400 <= status < 500:
        return AllowAll()
    if not last_attempt:
        return None
    error = report.get("error") or {}
    why = f"HTTP {status}" if status is not None else error.get("message", "no answer")
    return DisallowAll(f"robots.txt could not be fetched ({why}), so nothing on the host is")


def refusal(robots: Robots) -> str:
    """The message of a result robots.txt stopped."""
    if isinstance(robots, DisallowAll):
        return robots.reason
    return "disallowed by robots.txt"
