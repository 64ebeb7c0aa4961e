"""Calling the broker from a client process, and waiting for it through outages.

A client speaks the manager protocol as docs/PROTOCOL.md describes it: one
connection to ``create`` the broker's ident, then a session per thread
(``accept_connection``) that carries its calls.  Every connection it opens has
the settings of its ``ServerLink`` (address, key, TLS, call timeout), whatever
other clients in the same process use; nothing here loads server code.
"""

from __future__ import annotations

import random
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from multiprocessing import managers
from typing import Any, Protocol

from fetchq import __version__, defaults
from fetchq.config import Address, Authkey, ServerLink
from fetchq.errors import FetchqError, ServerUnavailable
from fetchq.messages import StatusLine, plural
from fetchq.wire import transport
from fetchq.wire.api import PROTOCOL
from fetchq.wire.tls import ClientTLS
from fetchq.wire.transport import TRANSPORT_ERRORS, ClientConnection, transport_error

GIVEN_KEY = "the key given"
"""The source of a key a program passed in itself (tests, scripts)."""


class BrokerClient:
    """The broker's API for one process, connected lazily and again after a failure.

    Calls are safe from several threads: each thread gets a session of its own.  A
    call that fails or is interrupted (a signal) throws its session away, so a late
    reply is never read as the answer to the next call."""

    def __init__(
        self,
        link: ServerLink | Address,
        authkey: bytes | None = None,
        tls: ClientTLS | None = None,
        *,
        introduce: dict[str, Any] | None = None,
        clock_samples: int = 1,
    ) -> None:
        if isinstance(link, Address):  # tests and scripts: an address and a key of their own
            if authkey is None:
                raise TypeError("a client given an address needs the authkey too")
            link = ServerLink(link, Authkey(authkey, GIVEN_KEY), tls)
        self.link = link
        self._addresses = link.addresses
        self.address = link.address
        """The server this client talks to now: the next of ``link``'s when it stops
        answering (servers on one store serve the same broker)."""
        self._introduce = introduce or {}
        """What this client tells the server about itself (a worker: its name and threads)."""
        self._idents: dict[Address, str] = {}
        """The broker's id on each server, from ``create`` (a restarted server has another)."""
        self._clock_samples = max(1, clock_samples)
        """Hellos timed at login for ``clock_offset`` (a worker: ``CLOCK_SAMPLES``)."""
        self._lock = threading.Lock()
        self._local = threading.local()
        self._sessions: weakref.WeakSet[ClientConnection] = weakref.WeakSet()
        self.clock_offset = 0.0
        """The server's clock minus ours, measured at the last login (within half the
        quickest round trip timed): a start time the server gives minus this is one on
        our clock."""

    def connect(self) -> dict[str, Any]:
        """Log in and check versions; returns what the server said about itself."""
        address = self.address
        try:
            conn = self._open(address)
            try:  # the server closes this connection after its one reply
                ident, _ = self._exchange(conn, None, "create", ("broker",))
            finally:
                conn.close()
        except TRANSPORT_ERRORS as exc:
            raise self._error(exc, address) from None
        with self._lock:
            self._idents[address] = ident
        hello = {"protocol": PROTOCOL, "version": __version__, **self._introduce}
        quickest = float("inf")
        info: dict[str, Any] = {}
        for _ in range(self._clock_samples):  # the quickest round trip tells best
            sent = time.time()
            info = self._call(address, ident, "hello", (hello,))
            received = time.time()
            if isinstance(info.get("time"), int | float) and received - sent < quickest:
                quickest = received - sent
                self.clock_offset = float(info["time"]) - (sent + received) / 2
        return info

    def call(self, method: str, *args: Any) -> Any:
        address = self.address
        ident = self._idents.get(address)
        if ident is None:
            self.connect()
            address = self.address
            ident = self._idents.get(address)
        return self._call(address, ident, method, args)

    def close(self) -> None:
        """Close every thread's session; a later call logs in again."""
        with self._lock:
            self._idents.clear()
            sessions = list(self._sessions)
            self._sessions.clear()
        for session in sessions:
            session.close()

    # -- sessions -----------------------------------------------------------

    def _open(self, address: Address) -> ClientConnection:
        link = self.link
        return transport.open_connection(
            address.as_tuple(),
            link.authkey.key,
            tls_context=link.tls.context() if link.tls else None,
            call_timeout=link.call_timeout,
        )

    def _call(self, address: Address, ident: str | None, method: str, args: tuple[Any, ...]) -> Any:
        session = None
        try:
            session = self._session(address)
            session.send((ident, method, args, {}))
            kind, result = session.recv()
        except BaseException as exc:
            # Failed or interrupted: the session may hold a late reply, never reuse it;
            # and the server may be another one now, with none of the old one's objects.
            if session is not None:
                self._drop(session)
            with self._lock:
                if self._idents.get(address) == ident:
                    del self._idents[address]
            if isinstance(exc, FetchqError) or not isinstance(exc, TRANSPORT_ERRORS):
                raise
            raise self._error(exc, address) from None
        return self._result(kind, result)

    def _session(self, address: Address) -> ClientConnection:
        """This thread's session with the server at ``address``, opened
        (``accept_connection``) on first use."""
        session: ClientConnection | None = getattr(self._local, "session", None)
        if session is not None and not session.closed:
            if getattr(self._local, "address", None) == address:
                return session
            self._drop(session)  # the client moved on to the next server
        session = self._open(address)
        try:
            name = threading.current_thread().name
            self._exchange(session, None, "accept_connection", (name,))
        except BaseException:
            session.close()
            raise
        self._local.session = session
        self._local.address = address
        with self._lock:
            self._sessions.add(session)
        return session

    def _drop(self, session: ClientConnection) -> None:
        session.close()
        with self._lock:
            self._sessions.discard(session)
        if getattr(self._local, "session", None) is session:
            del self._local.session

    def _exchange(self, conn: ClientConnection, ident: str | None, method: str, args: Any) -> Any:
        """One request and its reply, in the manager protocol's shapes."""
        conn.send((ident, method, args, {}))
        return self._result(*conn.recv())

    def _result(self, kind: str, result: Any) -> Any:
        """A reply's result; an error reply (a fetchq error, as data) is raised."""
        if kind == "#RETURN":
            return result
        if kind == "#ERROR" and isinstance(result, FetchqError):
            raise result
        raise transport_error(self.address, managers.RemoteError(str(result)))

    def _error(self, exc: BaseException, address: Address) -> FetchqError:
        """The error for a call to ``address`` that failed; a server that does not answer
        sends this client on to the next (servers on one store serve the same broker)."""
        error = transport_error(address, exc, key_source=self.link.authkey.source)
        if isinstance(error, ServerUnavailable) and len(self._addresses) > 1:
            with self._lock:
                if self.address == address:  # not moved on already by another thread
                    at = self._addresses.index(address)
                    self.address = self._addresses[(at + 1) % len(self._addresses)]
        return error


def backoff_delays(
    start: float = defaults.BACKOFF_START, cap: float = defaults.BACKOFF_MAX
) -> Iterator[float]:
    """Exponential pauses with full jitter, so a fleet does not reconnect in step."""
    delay = start
    while True:
        yield random.uniform(delay / 2, delay)
        delay = min(cap, delay * 2)


class Stopper(Protocol):
    """Anything with ``wait(timeout) -> bool`` that returns True once we should give up."""

    def wait(self, timeout: float) -> bool: ...


class ResilientClient(BrokerClient):
    """A client that waits for the server through restarts, network cuts and a server
    that cannot write its journal.

    A server never reached is given ``first_give_up`` seconds (a mistyped
    address should fail fast); once connected, each outage is given
    ``give_up_after`` (None: wait for ever, as workers do).  A wrong key or
    version is never retried.  Re-sending a call after a reconnect is safe
    for the broker's API: submits carry batch ids, completions are
    deduplicated, release is idempotent."""

    def __init__(
        self,
        link: ServerLink | Address,
        authkey: bytes | None = None,
        tls: ClientTLS | None = None,
        *,
        give_up_after: float | None = defaults.GIVE_UP_AFTER,
        first_give_up: float | None = defaults.FIRST_CONNECT_GIVE_UP,
        stop: Stopper | None = None,
        notice: StatusLine | None = None,
        introduce: dict[str, Any] | None = None,
        clock_samples: int = 1,
    ) -> None:
        super().__init__(link, authkey, tls, introduce=introduce, clock_samples=clock_samples)
        self.give_up_after = give_up_after
        self.first_give_up = first_give_up
        self.stop: Stopper = stop or threading.Event()
        self._notice = notice or StatusLine()
        self._reached = False

    def connect(self) -> dict[str, Any]:
        info: dict[str, Any] = self._retrying(super().connect)
        self._reached = True
        return info

    def call(self, method: str, *args: Any) -> Any:
        return self._retrying(lambda: BrokerClient.call(self, method, *args))

    def _limit(self) -> float | None:
        """How long this outage may last: a server never reached gets the shorter while."""
        if self._reached or self.first_give_up is None:
            return self.give_up_after
        if self.give_up_after is None:
            return self.first_give_up
        return min(self.first_give_up, self.give_up_after)

    def _retrying(self, action: Callable[[], Any]) -> Any:
        started = time.monotonic()
        delays = backoff_delays()
        attempt = 0
        while True:
            address = self.address
            try:
                result = action()
            except ServerUnavailable as exc:
                attempt += 1
                if self.stop.wait(0):  # stopping: no wait, so none to speak of
                    self._notice.clear()
                    raise
                waited = time.monotonic() - started
                limit = self._limit()
                if limit is not None and waited >= limit:
                    self._notice.clear()
                    raise type(exc)(
                        f"{exc} (gave up after {waited:.0f}s and {plural(attempt, 'attempt')})"
                    ) from None
                if self.address != address:  # one of several servers: on to the next
                    self._notice.show(
                        f"moving on to server at {self.address} (attempt {attempt}): {exc}"
                    )
                else:
                    self._notice.show(
                        f"waiting for server at {self.address} (attempt {attempt}): {exc}"
                    )
                pause = next(delays)
                if limit is not None:
                    pause = min(pause, max(0.0, limit - waited))
                if self.stop.wait(pause):
                    self._notice.clear()
                    raise
                continue
            if attempt:
                waited = time.monotonic() - started
                came = "is back" if self._reached else "answered"  # the first time, it is new
                self._notice.show(
                    f"server at {self.address} {came} after {waited:.{0 if waited >= 10 else 1}f}s "
                    f"and {plural(attempt, 'attempt')}",
                    final=True,
                )
            return result
