"""Every command's help as a user reads it in an 80-column terminal: whole option names,
a placeholder only where an option takes a value, and the environment variables."""

from __future__ import annotations

import os
import re
import subprocess

import pytest
import typer
from fetchq_procs import fetchq_command

from fetchq import cli

WIDTH = 80

VARIABLES = {
    "--server": "FETCHQ_SERVER",
    "--tls-ca": "FETCHQ_TLS_CA",
    "--tls-cert": "FETCHQ_TLS_CERT",
    "--tls-key": "FETCHQ_TLS_KEY",
}
"""The options of connecting commands that read a variable, and the variable."""

COMMAND_PATHS = [
    [],
    ["server"],
    ["dispatch"],
    ["worker"],
    ["output"],
    ["status"],
    ["job"],
    ["job", "list"],
    ["job", "pause"],
    ["job", "resume"],
    ["job", "cancel"],
    ["job", "set"],
    ["report"],
    ["demo"],
    ["tls"],
    ["tls", "init"],
]


def click_command(path: list[str]) -> typer.core.TyperCommand:
    """The command as typer built it: the options its help must show."""
    command = typer.main.get_command(cli.build_app())
    for name in path:
        command = command.commands[name]  # type: ignore[attr-defined]
    return command  # type: ignore[return-value]


def help_at(path: list[str], env: dict[str, str], columns: int = WIDTH) -> str:
    terminal = {**env, "COLUMNS": str(columns), "LINES": "50"}
    result = subprocess.run(
        fetchq_command(*path, "--help"),
        env=terminal,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


@pytest.mark.parametrize("path", COMMAND_PATHS, ids=lambda path: " ".join(path) or "fetchq")
def test_help_at_80_columns_is_whole(path: list[str], env: dict[str, str]) -> None:
    text = help_at(path, env)
    lines = text.splitlines()
    assert all(len(line) <= WIDTH for line in lines), [ln for ln in lines if len(ln) > WIDTH]
    assert "…" not in text
    flat = " ".join(text.split())
    command = click_command(path)
    for param in command.params:
        if param.param_type_name != "option":
            continue
        for name in [*param.opts, *param.secondary_opts]:
            assert re.search(rf"(^|[\s,/]){re.escape(name)}(\s|,|$)", text, re.M), (name, text)
        if getattr(param, "is_flag", False):
            # the flag's own row: its names, then its help; never a value's placeholder
            long = " / ".join(name for name in [*param.opts, *param.secondary_opts] if "--" in name)
            row = re.compile(rf"\s+(-\w, )?{re.escape(long)}(\s{{2,}}\S.*)?")
            rows = [line for line in lines if row.fullmatch(line)]
            assert len(rows) == 1, (long, text)
            assert "<" not in rows[0] and "[default: no-" not in flat, rows[0]
        variable = VARIABLES.get(param.opts[0]) if path != ["server"] else None
        if variable:
            assert f"[env var: {variable}]" in flat, (variable, text)
    for row in _commands_section(lines):
        assert not row.rstrip().endswith("..."), row  # each command's summary whole


def _commands_section(lines: list[str]) -> list[str]:
    if "Commands:" not in lines:
        return []
    return [line for line in lines[lines.index("Commands:") + 1 :] if line.strip()]


def test_connecting_commands_name_every_variable_they_read(env: dict[str, str]) -> None:
    """The key never is an option, so its variables are named in --authkey-file's help."""
    for path in (["worker"], ["status"], ["job", "set"], ["dispatch"], ["output"]):
        flat = " ".join(help_at(path, env).split())
        for variable in (
            "FETCHQ_SERVER",
            "FETCHQ_AUTHKEY,",
            "FETCHQ_AUTHKEY_FILE",
            "FETCHQ_TLS_CA",
            "FETCHQ_TLS_CERT",
            "FETCHQ_TLS_KEY",
        ):
            assert variable in flat, (path, variable)


def test_each_program_file_gives_the_same_help_at_80_columns(env: dict[str, str]) -> None:
    from fetchq_procs import PYTHON, REPO

    terminal = {**env, "COLUMNS": str(WIDTH)}
    result = subprocess.run(
        [PYTHON, str(REPO / "worker.py"), "--help"],
        env=terminal,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "--connect-timeout SECONDS" in result.stdout
    assert "--follow-redirects / --no-follow-redirects" in result.stdout
    assert os.linesep.join(
        line for line in result.stdout.splitlines() if line.startswith("  ")
    ) == os.linesep.join(
        line for line in help_at(["worker"], env).splitlines() if line.startswith("  ")
    )
