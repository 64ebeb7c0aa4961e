"""Serving the broker over the manager protocol: a hardened stock ``Server``.

The server is the stdlib's manager ``Server`` with a few changes: clients
cannot shut it down or read its debug information, a peer that fails the
login (or the TLS handshake) is hung up on without a traceback, the accept
loop backs off when file descriptors run out instead of spinning, and
connections beyond a limit are turned away.  Each connection's codec is
settled by its first frame after the login: JSON, or pickle only when the
server was started with ``--allow-pickle``.  Replies never carry a server
traceback: an error is a name and a message.  The broker object is pinned,
so no client can release it from under the others.  It serves; the program
that owns the broker runs the broker's housekeeping and decides when to stop
(``run_until_stopped``).
"""

from __future__ import annotations

import contextlib
import errno
import gc
import queue
import resource
import socket
import ssl
import threading
import time
from collections.abc import Callable
from multiprocessing import AuthenticationError, managers
from typing import Any, ClassVar

from fetchq import defaults
from fetchq.config import Address
from fetchq.errors import AddressInUse, BadRequest, ConfigError, FetchqError
from fetchq.messages import plural, say, warn
from fetchq.server.classic import QUEUE_METHODS, ClassicResultQueue, ClassicTaskQueue
from fetchq.server.service import BrokerService
from fetchq.signals import StopRequest
from fetchq.wire import login
from fetchq.wire.api import METHODS
from fetchq.wire.codec import PICKLE, BadFrame, PickleRefused, Unencodable
from fetchq.wire.tls import server_failure
from fetchq.wire.transport import (
    TLS_RECORD_TYPES,
    FrameRefused,
    PlaintextPeer,
    ServerConnection,
    listener_for,
)

_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
ACCEPT_BACKOFF = 0.5
"""Seconds the server waits before accepting again when out of descriptors."""

WARNING_INTERVAL = 10.0
"""Seconds between two warnings of the same kind: a flood must not flood the log."""

PINNED_TYPES = frozenset({"broker"})
"""Objects every client shares: no client's decref may drop them."""

FALLBACKS: dict[str, Callable[[object], str]] = {"__str__": str, "__repr__": repr}
"""Methods the stock server answers for any object (a proxy's ``str()``)."""


class Warnings:
    """One line per kind at most every WARNING_INTERVAL, counting what it held back."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def say(self, kind: str, message: str) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(kind, -WARNING_INTERVAL) < WARNING_INTERVAL:
                self._held[kind] = self._held.get(kind, 0) + 1
                return
            self._last[kind] = now
            held = self._held.pop(kind, 0)
        more = f" ({held} more like it since the last such line)" if held else ""
        say(f"server: {message}{more}")


class ConnectionThreads:
    """One thread per connection, started ahead of need and kept a moment after it.

    The accept loop hands each connection to a thread that waits for one
    (``serve``: a put on a queue, never a thread start, which costs the loop a
    wait for the new thread to run while a storm of logins holds the GIL).  A
    spawner thread starts threads whenever connections outnumber the waiting
    ones; a thread whose connection ends waits ``THREAD_LINGER`` seconds for
    the next one before it ends, so a login's short first connection hands
    its thread to the session after it, and once the clients have gone the
    threads are back to what they were."""

    def __init__(
        self, handle: Callable[[Any], None], warnings: Warnings, linger: float | None = None
    ) -> None:
        self._handle = handle
        self._warnings = warnings
        self._linger = defaults.THREAD_LINGER if linger is None else linger
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._queued = 0
        """Connections handed over and not yet taken by a thread."""
        self._waiting = 0
        """Threads waiting for a connection, or started to."""
        self._short = threading.Event()
        self._closed = False
        self._spawner = threading.Thread(target=self._spawn, name="spawner", daemon=True)

    def start(self) -> None:
        self._spawner.start()

    def close(self) -> None:
        """Stop starting threads; those serving a connection finish it."""
        self._closed = True
        self._short.set()

    def serve(self, conn: Any) -> None:
        """Give ``conn`` to a thread of its own (one is started if none waits)."""
        with self._lock:
            self._queued += 1
            short = self._queued > self._waiting
        self._queue.put(conn)
        if short:
            self._short.set()

    def _spawn(self) -> None:
        while not self._closed:
            self._short.wait()
            self._short.clear()
            while not self._closed:
                with self._lock:
                    if self._queued <= self._waiting:
                        break
                    self._waiting += 1
                try:
                    threading.Thread(target=self._run, name="connection", daemon=True).start()
                except RuntimeError as exc:  # out of threads: the connections wait, and so do we
                    with self._lock:
                        self._waiting -= 1
                    self._warnings.say("threads", f"cannot start a thread: {exc}; retrying")
                    time.sleep(ACCEPT_BACKOFF)

    def _run(self) -> None:
        while True:
            try:
                conn = self._queue.get(timeout=self._linger)
            except queue.Empty:
                with self._lock:
                    if self._queued == 0:  # else a connection is on its way: take it
                        self._waiting -= 1
                        return
                continue
            with self._lock:
                self._queued -= 1
                self._waiting -= 1
            self._handle(conn)  # (should it raise, this thread ends: nothing counts it)
            with self._lock:
                self._waiting += 1


def _request(message: Any) -> tuple[Any, str, list[Any] | tuple[Any, ...], dict[str, Any]]:
    """``[ident, method, args, kwargs]``, checked before anything looks it up."""
    if not (isinstance(message, list | tuple) and len(message) == 4):
        raise BadRequest("a request is [ident, method, args, kwargs]")
    ident, method, args, kwds = message
    if not isinstance(method, str):
        raise BadRequest("a request's method is a string")
    if not isinstance(args, list | tuple) or not isinstance(kwds, dict):
        raise BadRequest("a request's args are an array and its kwargs an object")
    return ident, method, args, kwds


class _Server(managers.Server):
    """A manager server that clients cannot shut down or inspect."""

    stop_event: threading.Event
    listener: Any
    authkey: bytes
    registry: dict[str, Any]
    id_to_obj: dict[str, Any]
    id_to_refcount: dict[str, int]
    public: ClassVar[list[str]] = [  # type: ignore[misc]
        name for name in managers.Server.public if name not in ("shutdown", "debug_info")
    ]

    max_connections = defaults.MAX_CONNECTIONS
    _active = 0
    _active_lock = threading.Lock()

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.warnings = Warnings()
        self.pinned: set[str] = set()
        self.pool = ConnectionThreads(self._handle_counted, self.warnings)

    def accepter(self) -> None:
        """The stock loop retries every OSError at once: a closed listener or a
        lack of file descriptors would spin it at full speed.  This one stops
        when the server stops, backs off while descriptors are short, and
        turns away connections beyond ``max_connections``.  It does little
        else: it sends a plaintext connection its login challenge, and the
        connection goes to a waiting thread of the pool, so a fleet connecting
        at once is taken off the listen queue, and greeted, as fast as it comes."""
        self.pool.start()
        try:
            self._accept_until_stopped()
        finally:
            self.pool.close()

    def _accept_until_stopped(self) -> None:
        while not self.stop_event.is_set():
            try:
                conn = self.listener.accept()
            except OSError as exc:
                if self.stop_event.is_set():
                    return
                if exc.errno in _OUT_OF_RESOURCES:
                    self.warnings.say("fds", f"cannot accept connections: {exc.strerror}; retrying")
                    self.stop_event.wait(ACCEPT_BACKOFF)
                continue
            with self._active_lock:
                full = self._active >= self.max_connections
                if not full:
                    self._active += 1
            if full:
                conn.close()
                self.warnings.say(
                    "full",
                    f"{plural(self.max_connections, 'connection')} open, turning new ones away",
                )
                continue
            if conn.plaintext:
                # Greeted at once, before a thread takes it: a client that hears
                # nothing for a second asks whether this is a web server.
                try:
                    conn.greeted = login.greet(conn)
                except OSError:
                    conn.close()
                    with self._active_lock:
                        self._active -= 1
                    continue
            self.pool.serve(conn)

    def _handle_counted(self, conn: ServerConnection) -> None:
        try:
            self.handle_request(conn)
        finally:
            with self._active_lock:
                self._active -= 1

    def handle_request(self, conn: ServerConnection) -> None:  # type: ignore[override]
        """TLS, log in, answer one request (``accept_connection``: a whole session),
        then close.  Unlike the stock version, a peer that fails the handshake is hung
        up on without a word, and no reply carries a traceback of the server's internals."""
        try:
            self._answer(conn)
        finally:
            conn.close()

    def _answer(self, c: ServerConnection) -> None:
        if not self._log_in(c):
            return
        try:
            request = c.recv()
        except PickleRefused as exc:
            self.warnings.say("pickle", f"refused a pickle from {c.peer}: {exc}")
            self._send(c, ("#ERROR", BadRequest(str(exc))))
            return
        except (BadFrame, FrameRefused) as exc:
            self._send(c, ("#ERROR", BadRequest(f"unreadable request: {exc}")))
            return
        except (EOFError, OSError):
            return
        try:
            _, name, args, kwds = _request(request)
            if name not in self.public:
                raise BadRequest(f"{name!r} unrecognized")
            result = getattr(self, name)(c, *args, **kwds)
        except Exception as exc:
            self._send(c, ("#ERROR", exc))
            return
        if name != "accept_connection":  # it replied itself, then served the session
            self._send(c, ("#RETURN", result))

    def _log_in(self, c: ServerConnection) -> bool:
        try:
            c.start_tls()
        except PlaintextPeer:
            self.warnings.say(
                "tls plaintext",
                f"a client from {c.peer} does not speak TLS; this server requires it",
            )
            return False
        except ssl.SSLError as exc:
            why = server_failure(exc)
            self.warnings.say(f"tls {why}", f"TLS handshake with {c.peer} failed: {why}")
            return False
        except (EOFError, OSError, ValueError):
            return False
        try:
            greeted = c.greeted if c.greeted is not None else login.greet(c)
            if c.plaintext:
                c.skip_probe()
            login.deliver_challenge(c, self.authkey, greeted)
            login.answer_challenge(c, self.authkey)
        except FrameRefused as exc:
            if exc.header[:1] and exc.header[0] in TLS_RECORD_TYPES:
                self.warnings.say(
                    "tls client", f"a TLS client from {c.peer}: this server was started without TLS"
                )
            return False
        except (AuthenticationError, AssertionError, EOFError, OSError, ValueError, BadFrame):
            return False
        return True

    @staticmethod
    def _send(c: ServerConnection, reply: tuple[str, Any]) -> bool:
        """Send a reply; one that cannot be encoded becomes an error reply."""
        kind, value = reply
        if kind == "#ERROR" and c.codec is PICKLE and isinstance(value, FetchqError):
            reply = kind, _builtin_error(value)
        try:
            try:
                c.send(reply)
            except Unencodable as exc:
                c.send(("#ERROR", FetchqError(str(exc))))
        except Exception:
            return False
        return True

    def serve_client(self, conn: Any) -> None:
        """Answer a logged-in client's calls until it leaves.

        A frame that cannot be read as a request gets an error reply and the
        connection goes on; a frame refused unread (too large), or a first
        frame that is a pickle where none is allowed, ends the connection
        after the error reply."""
        conn.settimeout(None)  # logged in: a client may stay quiet as long as it likes
        while not self.stop_event.is_set():
            try:
                request = conn.recv()
            except (EOFError, OSError):
                return
            except (FrameRefused, PickleRefused) as exc:
                self._send(conn, ("#ERROR", BadRequest(f"unreadable request: {exc}")))
                return
            except BadFrame as exc:
                reply: tuple[str, Any] = ("#ERROR", BadRequest(f"unreadable request: {exc}"))
            else:
                reply = self._call(request)
            if not self._send(conn, reply):
                return

    def _call(self, message: Any) -> tuple[str, Any]:
        try:
            ident, method, args, kwds = _request(message)
            entry = self.id_to_obj.get(ident) if isinstance(ident, str) else None
            if entry is None or entry[0] is None:
                raise BadRequest(f"no object {str(ident)[:40]!r} here: create it first")
            obj, exposed, _ = entry
            if method not in exposed:
                fallback = FALLBACKS.get(method)
                if fallback is None:
                    raise BadRequest(f"{method[:80]!r} is not a method of this object")
                return "#RETURN", fallback(obj)
            function = getattr(obj, method)
        except BadRequest as exc:
            return "#ERROR", exc
        try:
            return "#RETURN", function(*args, **kwds)
        except Exception as exc:
            return "#ERROR", exc

    # -- the manager's own calls, as clients reach them --------------------

    def create(self, c: Any, typeid: Any, /, *args: Any, **kwds: Any) -> tuple[str, Any]:
        if not isinstance(typeid, str) or typeid not in self.registry:
            raise BadRequest(f"no type {str(typeid)[:40]!r} is served here")
        ident, exposed = super().create(c, typeid, *args, **kwds)
        if typeid in PINNED_TYPES:
            self.pinned.add(ident)
        return ident, exposed

    def incref(self, c: Any, ident: Any) -> None:
        if not isinstance(ident, str) or ident not in self.id_to_refcount:
            raise BadRequest(f"no object {str(ident)[:40]!r} here")
        if ident not in self.pinned:
            super().incref(c, ident)

    def decref(self, c: Any, ident: Any) -> None:
        if not isinstance(ident, str) or self.id_to_refcount.get(ident, 0) <= 0:
            raise BadRequest(f"no object {str(ident)[:40]!r} here")
        if ident not in self.pinned:
            super().decref(c, ident)

    def get_methods(self, c: Any, token: Any) -> Any:
        ident = token.get("id") if isinstance(token, dict) else getattr(token, "id", None)
        entry = self.id_to_obj.get(ident) if isinstance(ident, str) else None
        if entry is None:
            raise BadRequest(f"no object {str(ident)[:40]!r} here")
        return tuple(sorted(entry[1]))


def _builtin_error(exc: FetchqError) -> Exception:
    """A fetchq error as a pickle client can read it where fetchq is not installed:
    a tutorial-style client unpickles only what its standard library knows."""
    kind = ValueError if isinstance(exc, BadRequest) else RuntimeError
    return kind(f"{type(exc).__name__}: {exc}")


def _registry(broker: BrokerService) -> dict[str, tuple[Any, ...]]:
    """What one server serves, by type id, in the shape ``BaseManager.register`` gives
    each entry: (callable, exposed, method_to_typeid, proxytype).

    Built per server, so two servers in one process serve their own brokers.  The
    callables may be closures: this registry never crosses to another process."""
    return {
        "broker": (lambda: broker, METHODS, None, None),
        "get_task_queue": (lambda: ClassicTaskQueue(broker), QUEUE_METHODS, None, None),
        "get_result_queue": (lambda: ClassicResultQueue(broker), QUEUE_METHODS, None, None),
    }


class QueueServer:
    """A bound manager server for one broker: ``start`` accepting, ``close`` to stop."""

    def __init__(
        self,
        broker: BrokerService,
        address: Address,
        authkey: bytes,
        max_connections: int = defaults.MAX_CONNECTIONS,
        *,
        tls_context: ssl.SSLContext | None = None,
        allow_pickle: bool = False,
    ) -> None:
        try:
            with listener_for(tls_context, allow_pickle) as serializer:
                self._server: Any = _Server(
                    _registry(broker), address.as_tuple(), authkey, serializer
                )
        except OSError as exc:
            raise _bind_error(address, exc) from None
        self._server.max_connections = max_connections
        for warning in make_room(max_connections):
            warn(warning)
        self._server.stop_event = threading.Event()
        bound: Any = self._server.address
        self.address = Address(str(bound[0]), int(bound[1]))

    def start(self) -> None:
        """Accept clients on a thread of their own; each client gets a thread too."""
        accepter = threading.Thread(target=self._server.accepter, name="accepter", daemon=True)
        accepter.start()

    def close(self) -> None:
        """Stop listening; closing the listener wakes an accept() blocked in another thread."""
        self._server.stop_event.set()
        with contextlib.suppress(OSError):
            self._server.listener.close()


SPARE_DESCRIPTORS = 64
"""Descriptors the server needs besides its connections: the listener, the journal and
its segments, the standard streams, the files the runtime opens."""


def make_room(max_connections: int) -> list[str]:
    """Raise this process's descriptor limit to what ``max_connections`` needs (within the
    hard limit); one warning per limit that still leaves a fleet short.

    The soft limit is often 1,024, which a fleet of a thousand connecting at once
    would exhaust; the kernel's listen queue (net.core.somaxconn) caps how many
    connections wait to be accepted, and a fuller one drops the rest."""
    found: list[str] = []
    need = max_connections + SPARE_DESCRIPTORS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    room = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if soft != resource.RLIM_INFINITY and soft < room:
        # Process-wide by nature: the limit is the process's, and so are the connections.
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (room, hard))
            soft = room
    if soft != resource.RLIM_INFINITY and soft < need:
        found.append(
            f"this process may open {soft} files (ulimit -n), too few for "
            f"--max-connections {max_connections}: new connections will wait once about "
            f"{max(0, soft - SPARE_DESCRIPTORS)} are open (raise ulimit -n to {need}, or "
            "lower --max-connections)"
        )
    try:
        with open("/proc/sys/net/core/somaxconn") as limit:
            queue_limit = int(limit.read())
    except (OSError, ValueError):
        return found
    if queue_limit < min(defaults.BACKLOG, max_connections):
        found.append(
            f"the kernel lets {queue_limit} connections wait to be accepted "
            f"(net.core.somaxconn): of more clients connecting at once, some will wait "
            f"for the kernel to retry and some time out "
            f"(sysctl -w net.core.somaxconn={defaults.BACKLOG})"
        )
    return found


COLLECT_AFTER = 50_000
"""Allocations (net) between two runs of the cycle collector's youngest generation,
where Python's default is 700."""


def collect_rarely() -> None:
    """Tune the cycle collector for a process whose heap is mostly long-lived records.

    A server holds a record per queued task, lease and waiting result, and makes
    and drops several per task it serves; none of them forms a cycle.  With
    Python's defaults the collector runs every 700 allocations and now and then
    walks the whole heap: a third of what a lease costs.  What exists when the
    server starts (modules, a journal's recovered state) is set aside for good
    (``gc.freeze``); cycles are still collected, the youngest generation 70 times
    less often (the oldest some 300 times)."""
    gc.freeze()
    gc.set_threshold(COLLECT_AFTER, 20, 20)


def run_until_stopped(broker: BrokerService, server: QueueServer, stop: StopRequest) -> None:
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
