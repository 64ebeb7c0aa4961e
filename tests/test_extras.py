"""An optional extra that is not installed: one line, exit 2, and the pip line that adds
it to this installation (from a clone, or from an index)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from fetchq_procs import PYTHON, REPO
from test_cli import assert_clean_error

from fetchq.errors import ExitCode

NEEDS = {
    "tls": ("cryptography", "fetchq tls init", "the cryptography package"),
    "report": ("plotly", "--html", "plotly, the charting library"),
}


def run_without(
    library: str, env: dict[str, str], cwd: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    """``fetchq ARGS`` in a Python where importing ``library`` fails, as without its extra."""
    code = (
        f"import sys; sys.modules[{library!r}] = None; "
        "from fetchq.cli import main; sys.argv[0] = 'fetchq'; main()"
    )
    return subprocess.run(
        [PYTHON, "-c", code, *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def command_for(extra: str, tmp_path: Path) -> list[str]:
    if extra == "tls":
        return ["tls", "init", str(tmp_path / "tls")]
    results = tmp_path / "results.jsonl"
    results.write_text("")
    return ["report", str(results), "--html", str(tmp_path / "report.html")]


@pytest.mark.parametrize("extra", NEEDS)
def test_a_missing_extra_from_a_clone_gives_the_clones_install_line(env, tmp_path, extra):
    library, needed_by, what = NEEDS[extra]
    said = f"fetchq: error: {needed_by} needs the {extra} extra ({what}), which is not installed"
    for cwd, where in ((REPO, "."), (tmp_path, str(REPO))):
        result = run_without(library, env, cwd, *command_for(extra, tmp_path))
        assert_clean_error(result, ExitCode.USAGE)
        assert result.stderr == f"{said}: pip install -e '{where}[{extra}]'\n"
    assert not (tmp_path / "tls").exists() and not (tmp_path / "report.html").exists()


def test_a_missing_extra_from_an_index_gives_the_package_name(env, tmp_path):
    """Installed from an index, fetchq is a package with no clone behind it: the line
    names the package.  (A copy of the package with the metadata pip writes then.)"""
    site = tmp_path / "site"
    shutil.copytree(REPO / "fetchq", site / "fetchq", ignore=shutil.ignore_patterns("__pycache__"))
    info = site / "fetchq-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fetchq\nVersion: 0.1.0\n")
    env["PYTHONPATH"] = f"{site}:{env['PYTHONPATH']}"
    for extra, (library, needed_by, _) in NEEDS.items():
        result = run_without(library, env, tmp_path, *command_for(extra, tmp_path))
        assert_clean_error(result, ExitCode.USAGE, f"{needed_by} needs the {extra} extra")
        assert result.stderr.endswith(f": pip install 'fetchq[{extra}]'\n"), result.stderr
