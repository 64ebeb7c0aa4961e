"""A report opened in a real headless Chromium (Debian's ``chromium``), as a person would.

Playwright drives the system browser (``executable_path``), never one it
downloads.  Every request the page makes is recorded, and so is every
console error and uncaught exception.

    python tests/browser.py REPORT.html OUT.png   # a full-page screenshot
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from playwright.sync_api import BrowserContext, Page, sync_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1200, "height": 900}
LOAD_TIMEOUT_MS = 30_000


@dataclass
class OpenedReport:
    page: Page
    url: str
    requests: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)

    def screenshot(self, **options: Any) -> Image.Image:
        return Image.open(io.BytesIO(self.page.screenshot(**options))).convert("RGB")


@contextmanager
def chromium() -> Iterator[BrowserContext]:
    """The system Chromium with a fresh profile; fails (never skips) when it is missing."""
    if not os.access(CHROMIUM, os.X_OK):
        raise AssertionError(f"{CHROMIUM} is missing: apt-get install -y chromium")
    with tempfile.TemporaryDirectory(prefix="fetchq-chromium-") as profile, sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport=VIEWPORT,  # type: ignore[arg-type]
        )
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def open_report(browser: BrowserContext, path: Path) -> Iterator[OpenedReport]:
    """``path`` loaded from file://, every request and console error recorded from the start."""
    page = browser.new_page()
    try:
        opened = OpenedReport(page, path.resolve().as_uri())
        page.on("request", lambda request: opened.requests.append(request.url))
        page.on(
            "console",
            lambda message: (
                opened.console_errors.append(message.text) if message.type == "error" else None
            ),
        )
        page.on("pageerror", lambda error: opened.console_errors.append(str(error)))
        page.goto(opened.url, wait_until="load", timeout=LOAD_TIMEOUT_MS)
        yield opened
    finally:
        page.close()


def colours(image: Image.Image) -> int:
    """How many distinct colours a picture has (1 for a blank one)."""
    found = image.getcolors(maxcolors=image.width * image.height)
    assert found is not None
    return len(found)


def main() -> None:
    report, out = Path(sys.argv[1]), Path(sys.argv[2])
    with chromium() as browser, open_report(browser, report) as opened:
        opened.page.screenshot(path=str(out), full_page=True)
        print(f"requests: {opened.requests}; console errors: {opened.console_errors}")


if __name__ == "__main__":
    main()
