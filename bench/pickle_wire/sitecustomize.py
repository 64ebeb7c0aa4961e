"""The bench's baseline wire: put this folder on PYTHONPATH and fetchq's clients speak the
classic pickle wire through the stdlib's own ``Connection``, as fetchq did before
protocol 3 (the server must run with ``--allow-pickle``).

Python imports ``sitecustomize`` at start-up, so every process of a variant gets it,
worker processes spawned by ``--processes`` included, and nothing of the product
changes on disk.
"""

from __future__ import annotations

import socket
import struct
from multiprocessing import connection
from typing import Any

from fetchq import defaults
from fetchq.wire import transport


def _receive_timeout(conn: connection.Connection, seconds: float) -> None:
    with socket.fromfd(conn.fileno(), socket.AF_INET, socket.SOCK_STREAM) as sock:
        whole = int(seconds)
        sock.setsockopt(
            socket.SOL_SOCKET,
            socket.SO_RCVTIMEO,
            struct.pack("ll", whole, int((seconds - whole) * 1_000_000)),
        )


def open_pickle_connection(
    address: tuple[str, int],
    authkey: bytes | None = None,
    *,
    tls_context: Any = None,
    call_timeout: float = defaults.CALL_TIMEOUT,
) -> connection.Connection:
    sock = socket.create_connection(address, timeout=defaults.NET_CONNECT_TIMEOUT)
    sock.settimeout(None)
    transport.tune(sock)
    conn = connection.Connection(sock.detach())
    _receive_timeout(conn, defaults.HANDSHAKE_TIMEOUT)
    if authkey is not None:
        connection.answer_challenge(conn, authkey)
        connection.deliver_challenge(conn, authkey)
    _receive_timeout(conn, call_timeout)
    return conn


transport.open_connection = open_pickle_connection  # fetchq's clients open connections here
