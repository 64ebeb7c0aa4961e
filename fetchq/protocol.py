"""The wire: manager classes, connecting, and transport failures as fetchq errors.

This is the only module that touches ``multiprocessing.managers`` and
``multiprocessing.connection``.  The server is a stock manager ``Server`` with
a few hardening changes: a large listen backlog, TCP_NODELAY and keepalive on
every connection, a timeout on the authkey handshake, and no ``shutdown`` or
``debug_info`` for clients.  Clients are stock ``BaseManager`` proxies whose
connections get the same socket options and timeouts.
"""

from __future__ import annotations

import contextlib
import errno
import random
import socket
import struct
import threading
import time
import traceback
from collections.abc import Callable
from multiprocessing import AuthenticationError, connection, managers
from typing import Any, ClassVar, Protocol

from fetchq import __version__, defaults
from fetchq.broker import BROKER_METHODS, PROTOCOL, Broker
from fetchq.classic import QUEUE_METHODS, ClassicResultQueue, ClassicTaskQueue
from fetchq.config import Address
from fetchq.errors import (
    AddressInUse,
    AuthFailed,
    ConfigError,
    FetchqError,
    ServerUnreachable,
)
from fetchq.messages import say
from fetchq.signals import StopRequest

SERIALIZER = "fetchq"
"""Our name for the stock pickle wire with tuned sockets: the bytes are the same,
so classic BaseManager clients still talk to a fetchq server."""


def _set_recv_timeout(sock: socket.socket, seconds: float | None) -> None:
    """A kernel-level receive timeout: the fd stays blocking, as Connection expects."""
    whole = int(seconds or 0)
    micro = int(((seconds or 0) - whole) * 1_000_000)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", whole, micro))


def _tune(sock: socket.socket, recv_timeout: float | None) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    # An idle connection to a vanished peer is noticed within about 25 seconds.
    for option, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, option):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
    _set_recv_timeout(sock, recv_timeout)


def _tune_connection(conn: connection.Connection, recv_timeout: float | None) -> None:
    # fromfd() duplicates the descriptor; options set on it apply to the shared socket.
    with socket.fromfd(conn.fileno(), socket.AF_INET, socket.SOCK_STREAM) as sock:
        _tune(sock, recv_timeout)


class _Listener(connection.Listener):
    """The stock listener with a backlog big enough for a fleet connecting at once."""

    def __init__(
        self,
        address: Any = None,
        family: Any = None,
        backlog: int = 1,
        authkey: bytes | None = None,
    ) -> None:
        super().__init__(address, family, defaults.BACKLOG, authkey)

    def accept(self) -> connection.Connection:
        conn = super().accept()
        # A peer already gone fails the handshake on its own.
        with contextlib.suppress(OSError):
            _tune_connection(conn, defaults.HANDSHAKE_TIMEOUT)
        return conn


_call_timeout = defaults.CALL_TIMEOUT


def set_call_timeout(seconds: float) -> None:
    """How long this process waits for any reply before it treats the connection as dead."""
    global _call_timeout
    _call_timeout = seconds


def _client(
    address: tuple[str, int], family: Any = None, authkey: bytes | None = None
) -> connection.Connection:
    """Like ``connection.Client``, but every step has a timeout."""
    sock = socket.create_connection(address, timeout=defaults.NET_CONNECT_TIMEOUT)
    sock.settimeout(None)
    _tune(sock, defaults.HANDSHAKE_TIMEOUT)
    conn = connection.Connection(sock.detach())
    try:
        if authkey is not None:
            connection.answer_challenge(conn, authkey)
            connection.deliver_challenge(conn, authkey)
        _tune_connection(conn, _call_timeout)
    except BaseException:
        conn.close()
        raise
    return conn


managers.listener_client[SERIALIZER] = (_Listener, _client)  # type: ignore[attr-defined]


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
        _tune_connection(conn, None)
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


class _ClientManager(managers.BaseManager):
    pass


_ServerManager.register("broker", callable=_get_broker, exposed=BROKER_METHODS)
_ServerManager.register("get_task_queue", callable=_get_task_queue, exposed=QUEUE_METHODS)
_ServerManager.register("get_result_queue", callable=_get_result_queue, exposed=QUEUE_METHODS)
_ClientManager.register("broker", exposed=BROKER_METHODS)


class QueueServer:
    """A bound manager server that serves one broker until told to stop."""

    def __init__(
        self,
        broker: Broker,
        address: Address,
        authkey: bytes,
        max_connections: int = defaults.MAX_CONNECTIONS,
    ) -> None:
        global _served_broker
        _served_broker = broker
        self.broker = broker
        try:
            registry = _ServerManager._registry  # type: ignore[attr-defined]
            self._server: Any = _Server(registry, address.as_tuple(), authkey, SERIALIZER)
        except OSError as exc:
            raise _bind_error(address, exc) from None
        self._server.max_connections = max_connections
        bound: Any = self._server.address
        self.address = Address(str(bound[0]), int(bound[1]))

    def serve(self, stop: StopRequest, housekeeping_interval: float = 0.5) -> None:
        """Accept clients in the background and expire leases until asked to stop."""
        self._server.stop_event = threading.Event()
        accepter = threading.Thread(target=self._server.accepter, name="accepter", daemon=True)
        accepter.start()
        while not stop.wait(housekeeping_interval):
            self.broker.expire_leases()
            self.broker.maintain_journal()
        self._server.stop_event.set()
        self.close()
        self.broker.close()

    def close(self) -> None:
        """Stop listening; shutdown() wakes an accept() blocked in another thread."""
        sock = getattr(getattr(self._server.listener, "_listener", None), "_socket", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._server.listener.close()


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


def _transport_error(address: Address, exc: BaseException) -> FetchqError:
    """One line that names the address and what to check."""
    if isinstance(exc, FetchqError):
        return exc
    if isinstance(exc, AuthenticationError):
        return AuthFailed(
            f"server at {address} rejected the authkey: check FETCHQ_AUTHKEY / "
            "FETCHQ_AUTHKEY_FILE match the server's key"
        )
    if isinstance(exc, AssertionError):
        return AuthFailed(f"{address} answered, but not like a fetchq server (wrong port?)")
    if isinstance(exc, socket.gaierror):
        return ServerUnreachable(f"cannot resolve server host {address.host!r}")
    if isinstance(exc, ConnectionRefusedError):
        return ServerUnreachable(
            f"cannot reach fetchq server at {address}: connection refused "
            "(is `fetchq server` running there, on that port?)"
        )
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return ServerUnreachable(
            f"cannot reach fetchq server at {address}: timed out "
            "(check the host, the port and any firewall)"
        )
    if isinstance(exc, BlockingIOError):
        return ServerUnreachable(
            f"server at {address} stopped answering (is it a fetchq server, and is it alive?)"
        )
    if isinstance(exc, (EOFError, ConnectionError)):
        return ServerUnreachable(f"lost the connection to the server at {address}")
    if isinstance(exc, OSError):
        return ServerUnreachable(
            f"cannot talk to the server at {address}: {exc.strerror or exc.__class__.__name__}"
        )
    if isinstance(exc, managers.RemoteError):
        lines = [line for line in str(exc).strip().splitlines() if line.strip("- ")]
        return FetchqError(f"server at {address} failed: {lines[-1] if lines else 'unknown error'}")
    return FetchqError(f"unexpected reply from the server at {address}: {exc!r}")


_TRANSPORT_ERRORS = (
    OSError,
    EOFError,
    AssertionError,
    AuthenticationError,
    managers.RemoteError,
)


class BrokerClient:
    """The broker's API for one process, connected lazily and again after a failure.

    Calls are safe from several threads: the manager machinery gives each
    thread its own connection to the server."""

    def __init__(self, address: Address, authkey: bytes) -> None:
        self.address = address
        self._authkey = authkey
        self._proxy: Any = None
        self.server_info: dict[str, Any] = {}
        self._lock = threading.Lock()

    def connect(self) -> dict[str, Any]:
        """Log in and check versions; returns what the server said about itself."""
        try:
            manager: Any = _ClientManager(
                address=self.address.as_tuple(), authkey=self._authkey, serializer=SERIALIZER
            )
            manager.connect()
            proxy = manager.broker()
            info = proxy.hello({"protocol": PROTOCOL, "version": __version__})
        except _TRANSPORT_ERRORS as exc:
            raise _transport_error(self.address, exc) from None
        with self._lock:
            self._proxy = proxy
            self.server_info = info
        return info

    def call(self, method: str, *args: Any) -> Any:
        proxy = self._proxy
        if proxy is None:
            self.connect()
            proxy = self._proxy
        try:
            return getattr(proxy, method)(*args)
        except FetchqError:
            raise
        except _TRANSPORT_ERRORS as exc:
            self._forget_thread_connection(proxy)
            raise _transport_error(self.address, exc) from None

    @staticmethod
    def _forget_thread_connection(proxy: Any) -> None:
        """After a failed call the connection may hold a stale reply: never reuse it."""
        tls = getattr(proxy, "_tls", None)
        conn = getattr(tls, "connection", None)
        if tls is not None and conn is not None:
            with contextlib.suppress(OSError):
                conn.close()
            del tls.connection

    def close(self) -> None:
        with self._lock:
            proxy, self._proxy = self._proxy, None
        if proxy is not None:
            self._forget_thread_connection(proxy)


def backoff_delays(start: float = defaults.BACKOFF_START, cap: float = defaults.BACKOFF_MAX) -> Any:
    """Exponential pauses with full jitter, so a fleet does not reconnect in step."""
    delay = start
    while True:
        yield random.uniform(delay / 2, delay)
        delay = min(cap, delay * 2)


class Stopper(Protocol):
    """Anything with ``wait(timeout) -> bool`` that returns True once we should give up."""

    def wait(self, timeout: float) -> bool: ...


class ResilientClient(BrokerClient):
    """A client that waits for the server through restarts and network cuts.

    ``give_up_after`` bounds each outage (None: wait for ever, as workers
    do); a wrong key or version is never retried.  Re-sending a call after a
    reconnect is safe for the broker's API: submits carry batch ids,
    completions are deduplicated, renew and release are idempotent."""

    def __init__(
        self,
        address: Address,
        authkey: bytes,
        *,
        give_up_after: float | None = defaults.GIVE_UP_AFTER,
        stop: Stopper | None = None,
        notify: Callable[[str], None] = say,
    ) -> None:
        super().__init__(address, authkey)
        self.give_up_after = give_up_after
        self.stop: Stopper = stop or threading.Event()
        self._notify = notify

    def connect(self) -> dict[str, Any]:
        return self._retrying(super().connect)

    def call(self, method: str, *args: Any) -> Any:
        return self._retrying(lambda: BrokerClient.call(self, method, *args))

    def _retrying(self, action: Callable[[], Any]) -> Any:
        started = time.monotonic()
        delays = backoff_delays()
        attempt = 0
        while True:
            try:
                return action()
            except ServerUnreachable as exc:
                attempt += 1
                waited = time.monotonic() - started
                if self.give_up_after is not None and waited >= self.give_up_after:
                    raise ServerUnreachable(
                        f"{exc} (gave up after {waited:.0f}s and {attempt} attempts)"
                    ) from None
                self._notify(f"waiting for server at {self.address} (attempt {attempt}): {exc}")
                pause = next(delays)
                if self.give_up_after is not None:
                    pause = min(pause, max(0.0, self.give_up_after - waited))
                if self.stop.wait(pause):
                    raise
                with self._lock:
                    self._proxy = None
