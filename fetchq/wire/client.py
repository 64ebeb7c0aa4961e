"""Calling the broker from a client process, and waiting for it through outages.

Clients use a stock ``BaseManager`` proxy over fetchq's transport (JSON
frames, TLS when configured); nothing here loads server code.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing import managers
from typing import Any, Protocol

from fetchq import __version__, defaults
from fetchq.config import Address
from fetchq.errors import FetchqError, ServerUnavailable
from fetchq.messages import StatusLine
from fetchq.wire.api import METHODS, PROTOCOL
from fetchq.wire.tls import ClientTLS
from fetchq.wire.transport import TRANSPORT_ERRORS, client_serializer, transport_error


class _ClientManager(managers.BaseManager):
    pass


_ClientManager.register("broker", exposed=METHODS)


class BrokerClient:
    """The broker's API for one process, connected lazily and again after a failure.

    Calls are safe from several threads: the manager machinery gives each
    thread its own connection to the server."""

    def __init__(
        self,
        address: Address,
        authkey: bytes,
        tls: ClientTLS | None = None,
        *,
        introduce: dict[str, Any] | None = None,
        clock_samples: int = 1,
    ) -> None:
        self.address = address
        self._authkey = authkey
        self.tls = tls
        self._introduce = introduce or {}
        """What this client tells the server about itself (a worker: its name and threads)."""
        self._clock_samples = max(1, clock_samples)
        """Hellos timed at login for ``clock_offset`` (a worker: ``CLOCK_SAMPLES``)."""
        self._proxy: Any = None
        self._lock = threading.Lock()
        self.clock_offset = 0.0
        """The server's clock minus ours, measured at the last login (within half the
        quickest round trip timed): a start time the server gives minus this is one on
        our clock."""

    def connect(self) -> dict[str, Any]:
        """Log in and check versions; returns what the server said about itself."""
        try:
            serializer = client_serializer(self.tls.context() if self.tls else None)
            manager: Any = _ClientManager(
                address=self.address.as_tuple(), authkey=self._authkey, serializer=serializer
            )
            manager.connect()
            proxy = manager.broker()
            hello = {"protocol": PROTOCOL, "version": __version__, **self._introduce}
            quickest = float("inf")
            offset: float | None = None
            for _ in range(self._clock_samples):  # the quickest round trip tells best
                sent = time.time()
                info: dict[str, Any] = proxy.hello(hello)
                received = time.time()
                if isinstance(info.get("time"), int | float) and received - sent < quickest:
                    quickest = received - sent
                    offset = float(info["time"]) - (sent + received) / 2
        except TRANSPORT_ERRORS as exc:
            raise transport_error(self.address, exc) from None
        with self._lock:
            self._proxy = proxy
            if offset is not None:
                self.clock_offset = offset
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
        except TRANSPORT_ERRORS as exc:
            self._forget_thread_connection(proxy)
            with self._lock:  # a server that restarted has none of the old one's objects
                if self._proxy is proxy:
                    self._proxy = None
                    _no_decref(proxy)
            raise transport_error(self.address, exc) from None

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
            _no_decref(proxy)
            self._forget_thread_connection(proxy)


def _no_decref(proxy: Any) -> None:
    """A dropped proxy would tell the server it let go, over a new connection of its
    own: a wait of seconds when the server hangs, and for nothing, since the server
    pins its broker (no client's decref can release it)."""
    finalizer = getattr(proxy, "_close", None)
    if finalizer is not None:
        finalizer.cancel()


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
        address: Address,
        authkey: bytes,
        tls: ClientTLS | None = None,
        *,
        give_up_after: float | None = defaults.GIVE_UP_AFTER,
        first_give_up: float | None = defaults.FIRST_CONNECT_GIVE_UP,
        stop: Stopper | None = None,
        notice: StatusLine | None = None,
        introduce: dict[str, Any] | None = None,
        clock_samples: int = 1,
    ) -> None:
        super().__init__(address, authkey, tls, introduce=introduce, clock_samples=clock_samples)
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
            try:
                result = action()
            except ServerUnavailable as exc:
                attempt += 1
                waited = time.monotonic() - started
                limit = self._limit()
                if limit is not None and waited >= limit:
                    self._notice.clear()
                    raise type(exc)(
                        f"{exc} (gave up after {waited:.0f}s and {attempt} attempts)"
                    ) from None
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
                self._notice.show(
                    f"server at {self.address} is back after {waited:.0f}s and {attempt} attempts",
                    final=True,
                )
            return result
