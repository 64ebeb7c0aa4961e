"""What every command shares: connection options, error reporting, messages.

Commands print one line per problem on stderr and exit with the code of the
fetchq error that ended them; a user's mistake never shows a traceback.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer

from fetchq import config, defaults
from fetchq.errors import ExitCode, FetchqError
from fetchq.messages import error, say
from fetchq.units import parse_duration
from fetchq.wire import tls
from fetchq.wire.api import MAX_HOST_DELAY, MAX_PER_HOST

__all__ = [
    "AuthkeyFileOption",
    "CheckOption",
    "GiveUpOption",
    "HostDelayOption",
    "PerHostOption",
    "connects",
    "host_delay_seconds",
    "make_app",
    "reports_errors",
    "run_alone",
    "say",
]

F = TypeVar("F", bound=Callable[..., Any])

AuthkeyFileOption = Annotated[
    str | None,
    typer.Option(
        "--authkey-file",
        metavar="FILE",
        # The key itself is never an option: config looks for it in this order.
        help=(
            f"File holding the server's key; without it, the key in ${config.ENV_AUTHKEY}, "
            f"else the file ${config.ENV_AUTHKEY_FILE} names, else {config.default_key_path()}"
        ),
    ),
]


def _client_tls_option(flag: str, variable: str, help_text: str) -> Any:
    return Annotated[
        str | None,
        typer.Option(flag, metavar="FILE", envvar=variable, show_envvar=True, help=help_text),
    ]


CONNECTION_OPTIONS: dict[str, Any] = {
    "server": Annotated[
        str | None,
        typer.Option(
            "--server",
            "-s",
            metavar="HOST:PORT",
            envvar=config.ENV_SERVER,
            show_envvar=True,
            help=f"The server's address (else {defaults.HOST}:{defaults.PORT})",
        ),
    ],
    "authkey_file": AuthkeyFileOption,
    "tls_ca": _client_tls_option(
        "--tls-ca", tls.ENV_TLS_CA, "Use TLS, trusting a server certificate this CA signed"
    ),
    "tls_cert": _client_tls_option(
        "--tls-cert", tls.ENV_TLS_CERT, "Client certificate, for a server that asks for one"
    ),
    "tls_key": _client_tls_option(
        "--tls-key", tls.ENV_TLS_KEY, "The client certificate's private key"
    ),
}
"""The options every connecting command takes, by parameter name: declared here once,
added to each command by ``connects``.  Where an option has an environment variable,
typer reads it (a flag beats it) and the help shows it."""

CheckOption = Annotated[
    list[str] | None,
    typer.Option(
        "--check",
        metavar="EXPR",
        help="A threshold, e.g. 'p99<250ms', 'success>=99.5%', 'rate>=990/s'; "
        f"repeatable; any that fails makes the exit code {ExitCode.CHECK_FAILED}",
    ),
]
"""``--check`` of ``fetchq output`` and ``fetchq report`` (``fetchq.report.checks``)."""

GiveUpOption = Annotated[
    float,
    typer.Option(
        "--give-up-after",
        min=0,
        metavar="SECONDS",
        help="Seconds to keep trying to reach the server before failing",
    ),
]

PerHostOption = Annotated[
    int | None,
    typer.Option(
        min=0,
        max=MAX_PER_HOST,
        metavar="N",
        help="Requests in flight to one host at once, across all workers (0: no limit)",
    ),
]
HostDelayOption = Annotated[
    str | None,
    typer.Option(
        metavar="DURATION",
        help="Time between two request starts on one host: 0.5, 500ms (0: none)",
    ),
]


def host_delay_seconds(text: str | None) -> float | None:
    """``--host-delay`` in seconds: None when not given, 0.0 for none."""
    return None if text is None else parse_duration(text, MAX_HOST_DELAY, allow_zero=True)


def connects(command: Callable[..., Any]) -> Callable[..., Any]:
    """Give ``command`` the connection options (``CONNECTION_OPTIONS``).

    The command declares ``link: ServerLink`` instead, and is called with the link those
    options describe (``config.server_link``: the options, then the environment).  Put
    it under ``reports_errors``, which says a bad address or a missing key."""
    signature = inspect.signature(command, eval_str=True)
    own = [param for name, param in signature.parameters.items() if name != "link"]
    added = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=option)
        for name, option in CONNECTION_OPTIONS.items()
    ]

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        options = {name: kwargs.pop(name, None) for name in CONNECTION_OPTIONS}
        return command(*args, link=config.server_link(**options), **kwargs)

    wrapper.__signature__ = signature.replace(parameters=[*own, *added])  # type: ignore[attr-defined]
    return wrapper


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
    """A Typer app with settings every fetchq command wants: no locals in tracebacks,
    and a plain help (click's layout) that gives every option its whole name and a
    value's placeholder only to options that take one, at any terminal width."""
    return typer.Typer(
        help=help_text,
        add_completion=False,
        no_args_is_help=False,
        pretty_exceptions_show_locals=False,
        rich_markup_mode=None,
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
    _quiet_flag_defaults(command)
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


def _quiet_flag_defaults(command: Any) -> None:
    """A flag that is off unless given does not say ``[default: no-burst]``: its help
    row is the flag and what it does."""
    for param in getattr(command, "params", []):
        if getattr(param, "is_flag", False) and param.default is False:
            param.show_default = False
    for sub in getattr(command, "commands", {}).values():
        _quiet_flag_defaults(sub)
