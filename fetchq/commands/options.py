"""What every command shares: connection options, error reporting, messages.

Commands print one line per problem on stderr and exit with the code of the
fetchq error that ended them; a user's mistake never shows a traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer

from fetchq import config
from fetchq.errors import ExitCode, FetchqError
from fetchq.messages import error, say
from fetchq.wire import tls

__all__ = [
    "AuthkeyFileOption",
    "GiveUpOption",
    "ServerOption",
    "TlsCaOption",
    "TlsCertOption",
    "TlsKeyOption",
    "make_app",
    "reports_errors",
    "run_alone",
    "say",
]

F = TypeVar("F", bound=Callable[..., Any])

ServerOption = Annotated[
    str | None,
    typer.Option(
        "--server",
        "-s",
        help=f"Server address HOST:PORT [env: {config.ENV_SERVER}; default: 127.0.0.1:7439]",
        show_default=False,
    ),
]
AuthkeyFileOption = Annotated[
    str | None,
    typer.Option(
        "--authkey-file",
        help=(
            f"File holding the server's key [else ${config.ENV_AUTHKEY}, "
            f"then ${config.ENV_AUTHKEY_FILE}, then {config.default_key_path()}]"
        ),
        show_default=False,
    ),
]

TlsCaOption = Annotated[
    str | None,
    typer.Option(
        "--tls-ca",
        help=f"Use TLS, trusting a server certificate this CA signed [env: {tls.ENV_TLS_CA}]",
        show_default=False,
    ),
]
TlsCertOption = Annotated[
    str | None,
    typer.Option(
        "--tls-cert",
        help=f"Client certificate, for a server that asks for one [env: {tls.ENV_TLS_CERT}]",
        show_default=False,
    ),
]
TlsKeyOption = Annotated[
    str | None,
    typer.Option(
        "--tls-key",
        help=f"The client certificate's private key [env: {tls.ENV_TLS_KEY}]",
        show_default=False,
    ),
]

GiveUpOption = Annotated[
    float,
    typer.Option(
        "--give-up-after",
        min=0,
        help="Seconds to keep trying to reach the server before failing",
    ),
]


def reports_errors(command: F) -> F:
    """Turn fetchq errors into one line on stderr and their exit code."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except FetchqError as exc:
            error(exc.message)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            say("interrupted")
            raise typer.Exit(ExitCode.INTERRUPTED) from None

    return wrapper  # type: ignore[return-value]


def make_app(help_text: str) -> typer.Typer:
    """A Typer app with settings every fetchq command wants (no locals in tracebacks)."""
    return typer.Typer(
        help=help_text,
        add_completion=False,
        no_args_is_help=False,
        pretty_exceptions_show_locals=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )


def run_alone(
    command: Callable[..., Any],
    help_text: str,
    *,
    args: list[str] | None = None,
    prog_name: str | None = None,
) -> None:
    """One program as a command of its own: ``python worker.py`` or ``fetchq worker``."""
    app = make_app(help_text)
    app.command(help=help_text or None)(command)
    invoke(app, args=args, prog_name=prog_name)


def invoke(
    app: typer.Typer, *, args: list[str] | None = None, prog_name: str | None = None
) -> None:
    """Run ``app`` to the end: a mistake on the command line is said in one line with
    exit 2, like every other error, rather than in typer's five-line box."""
    command = typer.main.get_command(app)
    try:
        outcome = command.main(args=args, prog_name=prog_name, standalone_mode=False)
    except typer.Abort:
        sys.exit(ExitCode.INTERRUPTED)
    except Exception as exc:
        # typer's command-line errors (click's, vendored; no public name to catch them
        # by) carry the message and the exit code to use.
        code, describe = getattr(exc, "exit_code", None), getattr(exc, "format_message", None)
        if not isinstance(code, int) or describe is None:
            raise
        context = getattr(exc, "ctx", None)
        hint = f" (see {context.command_path} -h)" if code == ExitCode.USAGE and context else ""
        error(f"{describe()}{hint}")
        sys.exit(code)
    sys.exit(outcome if isinstance(outcome, int) else ExitCode.OK)
