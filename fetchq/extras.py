"""Optional extras (``tls``, ``report``): one error, one exit code and the right install
line when a command needs one that is not installed.

The line depends on how fetchq was installed: from a clone (``pip install -e .`` or
``pip install .``, which pip records, PEP 610) the extra is added from that folder;
from an index, by name.
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

from fetchq.errors import ExtraMissing

PACKAGE = "fetchq"


def extra_missing(extra: str, needed_by: str, library: str) -> ExtraMissing:
    """``needed_by`` (a command or an option) cannot run without ``extra``, which brings
    ``library``: the error that says so, with the line that installs it."""
    return ExtraMissing(
        f"{needed_by} needs the {extra} extra ({library}), which is not installed: "
        f"{install_line(extra)}"
    )


def install_line(extra: str) -> str:
    """The pip command that adds ``extra`` to this installation of fetchq."""
    clone = source_folder()
    if clone is None:
        return f"pip install '{PACKAGE}[{extra}]'"
    folder, editable = clone
    where = "." if Path.cwd().resolve() == folder.resolve() else str(folder)
    return f"pip install {'-e ' if editable else ''}'{where}[{extra}]'"


def source_folder() -> tuple[Path, bool] | None:
    """The clone fetchq was installed from and whether it runs from there (editable);
    None for an installation from an index."""
    here = Path(__file__).resolve().parent.parent
    if (here / "setup.cfg").is_file():  # the package is imported from the clone itself
        return here, True
    try:  # the first on the path, as the import found the package
        record = json.loads(
            importlib.metadata.distribution(PACKAGE).read_text("direct_url.json") or "{}"
        )
    except importlib.metadata.PackageNotFoundError:
        return None
    url = str(record.get("url", ""))
    if "dir_info" in record and url.startswith("file:"):
        return Path(url2pathname(urlsplit(url).path)), bool(record["dir_info"].get("editable"))
    return None
