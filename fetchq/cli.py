"""The ``fetchq`` command: one entry point over the four programs, status and demo."""

from __future__ import annotations

from typing import Annotated

import typer

import dispatcher
import output
import queueserver
import worker
from fetchq import __version__
from fetchq.commandline import make_app
from fetchq.demo import demo
from fetchq.status import status

app = make_app("fetchq: a distributed URL-fetch queue.")
app.command("server", help=queueserver.HELP)(queueserver.server)
app.command("dispatch", help=dispatcher.HELP)(dispatcher.dispatch)
app.command("worker", help=worker.HELP)(worker.worker)
app.command("output", help=output.HELP)(output.output)
app.command("status")(status)
app.command("demo")(demo)


def _print_version(value: bool) -> None:
    if value:
        print(f"fetchq {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version"),
    ] = False,
) -> None:
    """fetchq: a distributed URL-fetch queue."""


def main() -> None:
    app()


if __name__ == "__main__":
    main()
