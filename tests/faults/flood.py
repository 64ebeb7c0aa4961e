"""Many clients connecting at once, from several processes as a fleet's are.

All the clients in one process would share its GIL: with hundreds of threads
runnable at once, one of them can wait so long for its turn that the server's
login guard hangs up on it, a stall of the test and not of the server.
Spread over processes, each thread waits behind a few dozen others at most.
"""

from __future__ import annotations

import multiprocessing
import queue
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

SPAWN = multiprocessing.get_context("spawn")
"""Never fork the test process: its threads (log readers, watchers) would be copied
half-way through whatever they hold."""


@dataclass
class Flood:
    """``clients`` clients in ``processes`` processes: each connects when all are
    ready, calls ``queued``, holds its connection until every other one is
    connected too and the test has looked (``hold``), then closes."""

    address: str
    key: bytes = field(repr=False)
    clients: int
    processes: int
    hang: float
    """Seconds after which a client that has not connected counts as hung."""
    answers: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    """One line each: the error, what caused it, and the seconds since the start."""

    def __post_init__(self) -> None:
        self._start = SPAWN.Barrier(self.clients, timeout=self.hang)
        self._connected = SPAWN.Barrier(self.clients + 1, timeout=self.hang)
        self._may_close = SPAWN.Event()
        self._reports: Any = SPAWN.Queue()
        shares = [self.clients // self.processes] * self.processes
        for extra in range(self.clients % self.processes):
            shares[extra] += 1
        self._children = [
            SPAWN.Process(
                target=_clients,
                args=(
                    self.address,
                    self.key,
                    share,
                    self.hang,
                    self._start,
                    self._connected,
                    self._may_close,
                    self._reports,
                ),
                daemon=True,
            )
            for share in shares
        ]

    def start(self) -> None:
        for child in self._children:
            child.start()

    def all_connected(self) -> bool:
        """Wait until every client holds its connection; False if one failed or hung."""
        try:
            self._connected.wait()
        except threading.BrokenBarrierError:
            return False
        return True

    def close(self) -> int:
        """Let the clients close and collect what each said; the number still running
        after the deadline."""
        self._may_close.set()
        deadline = time.monotonic() + self.hang
        for _ in range(self.clients):
            try:
                kind, value = self._reports.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:  # a client never reported
                break
            (self.answers if kind == "answer" else self.errors).append(value)
        hung = self.clients - len(self.answers) - len(self.errors)
        for child in self._children:
            child.join(max(0.0, deadline - time.monotonic()))
            if child.is_alive():
                child.kill()
        return hung


def _clients(
    address: str,
    key: bytes,
    count: int,
    hang: float,
    start: Any,
    connected: Any,
    may_close: Any,
    reports: Any,
) -> None:
    from fetchq.config import parse_address
    from fetchq.wire.client import BrokerClient

    began = time.monotonic()

    def client() -> None:
        try:
            start.wait()
            broker = BrokerClient(parse_address(address), key)
            try:
                broker.connect()
                queued = broker.call("queued")
                connected.wait()
                may_close.wait(hang)
            finally:
                broker.close()
        except BaseException as exc:  # reported to the test, with the others
            # The cause, and where it arose: a fetchq error hides both ("from None").
            cause = exc.__cause__ or exc.__context__ or exc
            where = traceback.extract_tb(cause.__traceback__)[-1]
            said = f"{exc!r}, from {cause!r} in {where.name}:{where.lineno}"
            reports.put(("error", f"{said}, {time.monotonic() - began:.1f} s in"))
            connected.abort()  # (after the report: the first error is the cause)
            return
        reports.put(("answer", queued))

    threads = [threading.Thread(target=client) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
