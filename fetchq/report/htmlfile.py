"""Where an HTML report goes: checked before a run starts, written when it ends.

The charts need the ``report`` extra (plotly).  A command given ``--html``
without it fails at once, with the line to install it, rather than after
reading ten million results.
"""

from __future__ import annotations

import os
import tempfile
from types import ModuleType

from fetchq.errors import ConfigError
from fetchq.extras import extra_missing
from fetchq.report.summary import Summary
from fetchq.units import format_bytes


class HtmlReportFile:
    def __init__(self, path: str) -> None:
        self.path = path
        self._module = _html_report_module()
        directory = os.path.dirname(os.path.abspath(path))
        if os.path.isdir(path):
            raise ConfigError(f"cannot write the HTML report to {path}: it is a directory")
        if not os.path.isdir(directory):
            raise ConfigError(f"cannot write the HTML report to {path}: no directory {directory}")
        if not os.access(directory, os.W_OK):
            raise ConfigError(f"cannot write the HTML report to {path}: {directory} is read-only")

    def write(self, summary: Summary, title: str, checks: list[list[str]] | None = None) -> str:
        """Write the report (``checks``: rows of check, measured, verdict); returns what
        to tell the user."""
        page = self._module.render_summary(summary, title, checks)
        try:
            write_whole(self.path, page)
        except OSError as exc:
            raise ConfigError(f"cannot write the HTML report to {self.path}: {exc}") from None
        return f"wrote the HTML report to {self.path} ({format_bytes(len(page.encode()))})"


def write_whole(path: str, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all: a temporary file renamed over it.

    A report half written by a stopped run is never left where the last good one was."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(prefix=".fetchq-report-", suffix=".html", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def _umask() -> int:
    """The process's umask (only readable by setting it), for a file mode like open()'s."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _html_report_module() -> ModuleType:
    try:
        from fetchq.report import html as htmlreport
    except ImportError as exc:
        if (exc.name or "").split(".")[0] == "plotly":
            raise extra_missing("report", "--html", "plotly, the charting library") from None
        raise
    return htmlreport
