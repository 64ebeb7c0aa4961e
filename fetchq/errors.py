"""fetchq's own errors, each with the exit code a script can rely on.

Everything a user can cause ends as one of these; the command line prints the
message on one line and exits with ``exit_code``.  On the wire an error is data,
a name and a message (``to_wire``); the receiving side turns a known name back
into its class and any other into a plain ``FetchqError`` (``from_wire``).
"""

from __future__ import annotations


class ExitCode:
    """Exit codes shared by every command (documented in docs/fleet.md, "Exit codes")."""

    OK = 0
    FAILURE = 1
    USAGE = 2
    SKIPPED_INPUT = 3
    UNREACHABLE = 4
    AUTH_FAILED = 5
    NO_AUTHKEY = 6
    ADDRESS_IN_USE = 7
    VERSION_MISMATCH = 8
    TLS_FAILED = 9
    NO_SUCH_JOB = 10
    CHECK_FAILED = 99
    """A ``--check`` threshold failed (k6's code)."""
    INTERRUPTED = 130


class FetchqError(Exception):
    """Base of every error fetchq reports to a user."""

    exit_code = ExitCode.FAILURE

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __reduce__(self) -> tuple[type, tuple[str]]:
        return (type(self), (self.message,))

    def __str__(self) -> str:
        return self.message


class UsageError(FetchqError):
    """An option value or an input that cannot be used as given."""

    exit_code = ExitCode.USAGE


class ConfigError(UsageError):
    """A setting (address, key file, ...) that is malformed or unreadable."""


class ExtraMissing(UsageError):
    """A command needs an optional extra (``tls``, ``report``) that is not installed."""


class NoAuthkey(FetchqError):
    """No key was given and none could be found."""

    exit_code = ExitCode.NO_AUTHKEY


class ServerUnavailable(FetchqError):
    """The server cannot serve the call now; the call changed nothing, and clients wait
    and try again (up to their limit)."""

    exit_code = ExitCode.UNREACHABLE


class ServerUnreachable(ServerUnavailable):
    """The server could not be reached, or the connection to it broke."""


class StorageFailed(ServerUnavailable):
    """The server is up but cannot write its journal (a full disk, say)."""


class StoreUnavailable(ServerUnavailable):
    """The server is up but its store (Valkey or Redis) does not answer."""


class AuthFailed(FetchqError):
    """The server refused our key, or the peer is not a fetchq server."""

    exit_code = ExitCode.AUTH_FAILED


class VersionMismatch(FetchqError):
    """Client and server speak different protocol versions."""

    exit_code = ExitCode.VERSION_MISMATCH


class AddressInUse(FetchqError):
    """The server's port is taken by another program."""

    exit_code = ExitCode.ADDRESS_IN_USE


class NoSuchJob(FetchqError):
    """A job name the server has never heard of (a typo, or another server's job)."""

    exit_code = ExitCode.NO_SUCH_JOB


class BadRequest(FetchqError):
    """A broker call with malformed arguments; the server keeps serving."""


class TLSFailed(FetchqError):
    """TLS on one side only, or a certificate the other side does not accept."""

    exit_code = ExitCode.TLS_FAILED


MAX_WIRE_MESSAGE = 1000
"""Characters of an error message sent over the wire: a reply stays small."""


def to_wire(exc: BaseException) -> dict[str, str]:
    """An error as it crosses the wire: ``{"name": ..., "message": ...}``."""
    message = exc.message if isinstance(exc, FetchqError) else str(exc)
    if len(message) > MAX_WIRE_MESSAGE:
        message = message[: MAX_WIRE_MESSAGE - 3] + "..."
    return {"name": type(exc).__name__, "message": message}


def _known() -> dict[str, type[FetchqError]]:
    found: dict[str, type[FetchqError]] = {}
    todo: list[type[FetchqError]] = [FetchqError]
    while todo:
        cls = todo.pop()
        found[cls.__name__] = cls
        todo.extend(cls.__subclasses__())
    return found


def from_wire(data: object) -> FetchqError:
    """The error a reply carried: fetchq's own class for a name it knows, else FetchqError."""
    if not isinstance(data, dict):
        return FetchqError(f"the server failed without saying why: {str(data)[:200]}")
    name, message = str(data.get("name", "")), str(data.get("message", ""))
    cls = _known().get(name)
    if cls is None:
        return FetchqError(f"the server failed: {name}: {message}" if name else message)
    return cls(message)


def cannot_read(what: str, path: object, exc: OSError) -> ConfigError:
    """A file that could not be opened, said the same way for every kind of file (an
    input file, a key, a CA, saved results): ``cannot read WHAT PATH: why``."""
    if isinstance(exc, FileNotFoundError):
        why = "no such file"
    elif isinstance(exc, IsADirectoryError):
        why = "it is a directory"
    elif isinstance(exc, PermissionError):
        why = "permission denied"
    else:
        why = (exc.strerror or exc.__class__.__name__).lower()
    return ConfigError(f"cannot read {what} {path}: {why}")
