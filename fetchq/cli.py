"""The ``fetchq`` command: one entry point over the four programs, status and demo.

``fetchq worker ...`` imports only the worker program, not the other five:
a fleet of workers starts faster, and so does every dispatch in a script.
``fetchq`` alone, ``--help`` and ``--version`` build the whole group.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer

from fetchq import __version__
from fetchq.commands.options import invoke, make_app, run_alone

COMMANDS: dict[str, tuple[str, str, str | None]] = {
    "server": ("fetchq.programs.queueserver", "server", "HELP"),
    "dispatch": ("fetchq.programs.dispatcher", "dispatch", "HELP"),
    "worker": ("fetchq.programs.worker", "worker", "HELP"),
    "output": ("fetchq.programs.output", "output", "HELP"),
    "status": ("fetchq.commands.status", "status", None),
    "job": ("fetchq.commands.steer", "app", "HELP"),
    "report": ("fetchq.commands.report", "report", None),
    "demo": ("fetchq.commands.demo", "demo", None),
    "tls": ("fetchq.commands.tlsinit", "app", "HELP"),
}
"""Subcommand -> (module, function or Typer group, the module's help text or None for the
docstring)."""

SUMMARIES = {
    "server": "Run the queue server the other commands connect to",
    "dispatch": "Submit URLs to fetch, as one job",
    "worker": "Fetch tasks and send back their results",
    "output": "Collect results as text, JSONL or CSV, with a summary",
    "status": "Show queue depths per job, leased tasks and workers",
    "job": "List jobs; pause, resume, cancel or re-pace one",
    "report": "Summarise saved results, as text or an HTML page",
    "demo": "Run the whole pipeline on this machine",
    "tls": "Make the files for mutual TLS",
}
"""Each command in one line of ``fetchq --help``, whole at 80 columns."""


def _load(name: str) -> tuple[Callable[..., Any], str | None]:
    module_name, function, help_name = COMMANDS[name]
    module = importlib.import_module(module_name)
    return getattr(module, function), getattr(module, help_name) if help_name else None


def build_app() -> typer.Typer:
    """The whole command group, every program imported."""
    app = make_app("fetchq: a distributed URL-fetch queue.")
    for name in COMMANDS:
        command, help_text = _load(name)
        if isinstance(command, typer.Typer):
            app.add_typer(command, name=name, help=help_text, short_help=SUMMARIES[name])
        else:
            app.command(name, help=help_text, short_help=SUMMARIES[name])(command)
    app.callback()(_root)
    return app


def _print_version(value: bool) -> None:
    if value:
        print(f"fetchq {__version__}")
        raise typer.Exit()


def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version"),
    ] = False,
) -> None:
    """fetchq: a distributed URL-fetch queue."""


def main() -> None:
    args = sys.argv[1:]
    if args and args[0] in COMMANDS:
        command, help_text = _load(args[0])
        if isinstance(command, typer.Typer):
            invoke(command, args=args[1:], prog_name=f"fetchq {args[0]}")
        else:
            run_alone(command, help_text or "", args=args[1:], prog_name=f"fetchq {args[0]}")
    else:
        invoke(build_app(), prog_name="fetchq")


if __name__ == "__main__":
    main()
