"""fetchq's own errors, each with the exit code a script can rely on.

Everything a user can cause ends as one of these; the command line prints the
message on one line and exits with ``exit_code``.  They pickle cleanly, so the
broker may raise them across the wire.
"""

from __future__ import annotations


class ExitCode:
    """Exit codes shared by every command (documented in the README)."""

    OK = 0
    FAILURE = 1
    USAGE = 2
    SKIPPED_INPUT = 3
    UNREACHABLE = 4
    AUTH_FAILED = 5
    NO_AUTHKEY = 6
    ADDRESS_IN_USE = 7
    VERSION_MISMATCH = 8
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


class NoAuthkey(FetchqError):
    """No key was given and none could be found."""

    exit_code = ExitCode.NO_AUTHKEY


class ServerUnreachable(FetchqError):
    """The server could not be reached, or the connection to it broke."""

    exit_code = ExitCode.UNREACHABLE


class StorageFailed(ServerUnreachable):
    """The server is up but cannot write its journal (a full disk, say).

    The call changed nothing; clients wait and retry as they do for a server
    that cannot be reached."""


class AuthFailed(FetchqError):
    """The server refused our key, or the peer is not a fetchq server."""

    exit_code = ExitCode.AUTH_FAILED


class VersionMismatch(FetchqError):
    """Client and server speak different protocol versions."""

    exit_code = ExitCode.VERSION_MISMATCH


class AddressInUse(FetchqError):
    """The server's port is taken by another program."""

    exit_code = ExitCode.ADDRESS_IN_USE


class BadRequest(FetchqError):
    """A broker call with malformed arguments; the server keeps serving."""
