"""Serving the broker over the manager protocol: a hardened stock ``Server``.

The server is the stdlib's manager ``Server`` with a few changes: clients
cannot shut it down or read its debug information, a peer that fails the
login is hung up on without a traceback, the accept loop backs off when file
descriptors run out instead of spinning, and connections beyond a limit are
turned away.  It serves; the program that owns the broker runs the broker's
housekeeping and decides when to stop (``run_until_stopped``).
"""

from __future__ import annotations

import contextlib
import errno
import socket
import threading
import time
import traceback
from multiprocessing import AuthenticationError, connection, managers
from typing import Any, ClassVar

from fetchq import defaults
from fetchq.api import METHODS
from fetchq.config import Address
from fetchq.errors import AddressInUse, ConfigError, FetchqError
from fetchq.messages import say
from fetchq.server.broker import Broker
from fetchq.server.classic import QUEUE_METHODS, ClassicResultQueue, ClassicTaskQueue
from fetchq.signals import StopRequest
from fetchq.transport import SERIALIZER, tune_connection

_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
ACCEPT_BACKOFF = 0.5
"""Seconds the server waits before accepting again when out of descriptors."""


class _Server(managers.Server):
    """A manager server that clients cannot shut down or inspect."""

    stop_event: threading.Event
    listener: Any
    authkey: bytes
    public: ClassVar[list[str]] = [  # type: ignore[misc]
        name for name in managers.Server.public if name not in ("shutdown", "debug_info")
    ]

    max_connections = defaults.MAX_CONNECTIONS
    _active = 0
    _active_lock = threading.Lock()
    _last_warning = -10.0

    def accepter(self) -> None:
        """The stock loop retries every OSError at once: a closed listener or a
        lack of file descriptors would spin it at full speed.  This one stops
        when the server stops, backs off while descriptors are short, and
        turns away connections beyond ``max_connections``."""
        while not self.stop_event.is_set():
            try:
                conn = self.listener.accept()
            except OSError as exc:
                if self.stop_event.is_set():
                    return
                if exc.errno in _OUT_OF_RESOURCES:
                    self._warn(f"cannot accept connections: {exc.strerror}; retrying")
                    self.stop_event.wait(ACCEPT_BACKOFF)
                continue
            with self._active_lock:
                full = self._active >= self.max_connections
                if not full:
                    self._active += 1
            if full:
                conn.close()
                self._warn(f"{self.max_connections} connections open, turning new ones away")
                continue
            threading.Thread(target=self._handle_counted, args=(conn,), daemon=True).start()

    def _handle_counted(self, conn: connection.Connection) -> None:
        try:
            self.handle_request(conn)
        finally:
            with self._active_lock:
                self._active -= 1

    def _warn(self, message: str) -> None:
        """At most one line every ten seconds: a flood of refusals must not flood the log."""
        now = time.monotonic()
        if now - self._last_warning > 10:
            self._last_warning = now
            say(f"server: {message}")

    def _handle_request(self, c: connection.Connection) -> None:
        """Log in, then answer one request.  Unlike the stock version, a peer
        that fails the handshake is hung up on without a word: it gets no
        traceback of the server's internals."""
        try:
            connection.deliver_challenge(c, self.authkey)
            connection.answer_challenge(c, self.authkey)
        except (AuthenticationError, AssertionError, EOFError, OSError, ValueError):
            return
        try:
            _, name, args, kwds = c.recv()
            if name not in self.public:
                raise ValueError(f"{name!r} unrecognized")
            reply = ("#RETURN", getattr(self, name)(c, *args, **kwds))
        except Exception:
            reply = ("#TRACEBACK", traceback.format_exc())
        with contextlib.suppress(Exception):
            c.send(reply)

    def serve_client(self, conn: connection.Connection) -> None:
        # Logged in: from now on a client may stay quiet as long as it likes.
        tune_connection(conn, None)
        super().serve_client(conn)


_served_broker: Broker | None = None


def _get_broker() -> Broker:
    """Module-level, so the registration survives the spawn start method."""
    assert _served_broker is not None, "no broker is being served"
    return _served_broker


def _get_task_queue() -> ClassicTaskQueue:
    return ClassicTaskQueue(_get_broker())


def _get_result_queue() -> ClassicResultQueue:
    return ClassicResultQueue(_get_broker())


class _ServerManager(managers.BaseManager):
    pass


_ServerManager.register("broker", callable=_get_broker, exposed=METHODS)
_ServerManager.register("get_task_queue", callable=_get_task_queue, exposed=QUEUE_METHODS)
_ServerManager.register("get_result_queue", callable=_get_result_queue, exposed=QUEUE_METHODS)


class QueueServer:
    """A bound manager server for one broker: ``start`` accepting, ``close`` to stop."""

    def __init__(
        self,
        broker: Broker,
        address: Address,
        authkey: bytes,
        max_connections: int = defaults.MAX_CONNECTIONS,
    ) -> None:
        global _served_broker
        _served_broker = broker
        try:
            registry = _ServerManager._registry  # type: ignore[attr-defined]
            self._server: Any = _Server(registry, address.as_tuple(), authkey, SERIALIZER)
        except OSError as exc:
            raise _bind_error(address, exc) from None
        self._server.max_connections = max_connections
        self._server.stop_event = threading.Event()
        bound: Any = self._server.address
        self.address = Address(str(bound[0]), int(bound[1]))

    def start(self) -> None:
        """Accept clients on a thread of their own; each client gets a thread too."""
        accepter = threading.Thread(target=self._server.accepter, name="accepter", daemon=True)
        accepter.start()

    def close(self) -> None:
        """Stop listening; shutdown() wakes an accept() blocked in another thread."""
        self._server.stop_event.set()
        sock = getattr(getattr(self._server.listener, "_listener", None), "_socket", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._server.listener.close()


def run_until_stopped(broker: Broker, server: QueueServer, stop: StopRequest) -> None:
    """Serve, and keep the broker's house (expiry, journal fsync) until asked to stop."""
    server.start()
    try:
        while not stop.wait(defaults.HOUSEKEEPING_INTERVAL):
            broker.housekeeping()
    finally:
        server.close()
        broker.close()


def _bind_error(address: Address, exc: OSError) -> FetchqError:
    if exc.errno == errno.EADDRINUSE:
        return AddressInUse(
            f"cannot listen on {address}: the port is already in use "
            "(another fetchq server? pick another --port)"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return ConfigError(f"cannot listen on {address}: {address.host} is not an address here")
    if exc.errno == errno.EACCES:
        return ConfigError(f"cannot listen on {address}: permission denied (ports below 1024?)")
    if isinstance(exc, socket.gaierror):
        return ConfigError(f"cannot listen on {address}: unknown host {address.host!r}")
    return ConfigError(f"cannot listen on {address}: {exc.strerror or exc}")
