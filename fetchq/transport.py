"""The connection under the manager protocol, as both sides open it.

The stdlib's ``multiprocessing.managers`` picks its listener and client by
serializer name; fetchq registers its own under ``SERIALIZER``: the stock
pickle frames over sockets with TCP_NODELAY, keepalive, a timeout on every
step of opening a connection, and a listen backlog big enough for a fleet
connecting at once.  Failures of the transport become fetchq's own errors
here, one line each naming the address and what to check.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from multiprocessing import AuthenticationError, connection, managers
from typing import Any

from fetchq import defaults
from fetchq.config import Address
from fetchq.errors import AuthFailed, FetchqError, ServerUnreachable

SERIALIZER = "fetchq"
"""Our name for the stock pickle wire with tuned sockets: the bytes are the same,
so classic BaseManager clients still talk to a fetchq server."""

TRANSPORT_ERRORS = (
    OSError,
    EOFError,
    AssertionError,
    AuthenticationError,
    managers.RemoteError,
)
"""What the manager machinery raises when the connection, not the call, went wrong."""


def set_recv_timeout(sock: socket.socket, seconds: float | None) -> None:
    """A kernel-level receive timeout: the fd stays blocking, as Connection expects."""
    whole = int(seconds or 0)
    micro = int(((seconds or 0) - whole) * 1_000_000)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", whole, micro))


def tune(sock: socket.socket, recv_timeout: float | None) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    # An idle connection to a vanished peer is noticed within about 25 seconds.
    for option, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, option):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
    set_recv_timeout(sock, recv_timeout)


def tune_connection(conn: connection.Connection, recv_timeout: float | None) -> None:
    # fromfd() duplicates the descriptor; options set on it apply to the shared socket.
    with socket.fromfd(conn.fileno(), socket.AF_INET, socket.SOCK_STREAM) as sock:
        tune(sock, recv_timeout)


class Listener(connection.Listener):
    """The stock listener with a backlog big enough for a fleet connecting at once."""

    def __init__(
        self,
        address: Any = None,
        family: Any = None,
        backlog: int = 1,
        authkey: bytes | None = None,
    ) -> None:
        # The stock manager server asks for 16: a fleet connecting at once needs more.
        super().__init__(address, family, max(backlog, defaults.BACKLOG), authkey)

    def accept(self) -> connection.Connection:
        conn = super().accept()
        # A peer already gone fails the handshake on its own.
        with contextlib.suppress(OSError):
            tune_connection(conn, defaults.HANDSHAKE_TIMEOUT)
        return conn


_call_timeout = defaults.CALL_TIMEOUT


def set_call_timeout(seconds: float) -> None:
    """How long this process waits for any reply before it treats the connection as dead."""
    global _call_timeout
    _call_timeout = seconds


def open_connection(
    address: tuple[str, int], family: Any = None, authkey: bytes | None = None
) -> connection.Connection:
    """Like ``connection.Client``, but every step has a timeout."""
    sock = socket.create_connection(address, timeout=defaults.NET_CONNECT_TIMEOUT)
    sock.settimeout(None)
    tune(sock, defaults.HANDSHAKE_TIMEOUT)
    conn = connection.Connection(sock.detach())
    try:
        if authkey is not None:
            connection.answer_challenge(conn, authkey)
            connection.deliver_challenge(conn, authkey)
        tune_connection(conn, _call_timeout)
    except BaseException:
        conn.close()
        raise
    return conn


managers.listener_client[SERIALIZER] = (Listener, open_connection)  # type: ignore[attr-defined]


def _not_a_frame(exc: BaseException) -> bool:
    """The login reads a short message; a peer that greets with something else (an SSH
    banner, say) reads as a length far too large, which the stdlib reports this way."""
    return isinstance(exc, OSError) and exc.args == ("bad message length",)


def transport_error(address: Address, exc: BaseException) -> FetchqError:
    """One line that names the address and what to check."""
    if isinstance(exc, FetchqError):
        return exc
    if isinstance(exc, AuthenticationError):
        return AuthFailed(
            f"server at {address} rejected the authkey: check FETCHQ_AUTHKEY / "
            "FETCHQ_AUTHKEY_FILE match the server's key"
        )
    if isinstance(exc, AssertionError) or _not_a_frame(exc):
        return AuthFailed(f"{address} answered, but not like a fetchq server (wrong port?)")
    if isinstance(exc, socket.gaierror):
        return ServerUnreachable(f"cannot resolve server host {address.host!r}")
    if isinstance(exc, ConnectionRefusedError):
        return ServerUnreachable(
            f"cannot reach fetchq server at {address}: connection refused "
            "(is `fetchq server` running there, on that port?)"
        )
    if isinstance(exc, TimeoutError):
        return ServerUnreachable(
            f"cannot reach fetchq server at {address}: timed out "
            "(check the host, the port and any firewall)"
        )
    if isinstance(exc, BlockingIOError):
        return ServerUnreachable(
            f"server at {address} stopped answering (is it a fetchq server, and is it alive?)"
        )
    if isinstance(exc, EOFError | ConnectionError):
        return ServerUnreachable(f"lost the connection to the server at {address}")
    if isinstance(exc, OSError):
        return ServerUnreachable(
            f"cannot talk to the server at {address}: {exc.strerror or exc.__class__.__name__}"
        )
    if isinstance(exc, managers.RemoteError):
        lines = [line for line in str(exc).strip().splitlines() if line.strip("- ")]
        return FetchqError(f"server at {address} failed: {lines[-1] if lines else 'unknown error'}")
    return FetchqError(f"unexpected reply from the server at {address}: {exc!r}")
