"""A TCP proxy on 127.0.0.1 that can black-hole its traffic: a network cut for one client.

Put it between one client and the server (point the client's FETCHQ_SERVER at
``proxy.address``).  ``cut()`` stops forwarding in both directions without
closing anything, like a network path that silently drops packets: bytes
already sent wait in the proxy (as unacknowledged segments would wait in the
sender's retransmit queue), new connections are accepted but not connected
upstream, and nobody sees a reset or an EOF.  ``hold_requests()`` cuts one
direction only, what clients send; ``answered()`` then says when every request
that got through before it has reached the server and been answered, so the
server's state is what those clients left it.  ``heal()`` resumes forwarding,
delivering what waited, connecting what was accepted, and passing on any
close that happened during the cut, as TCP would once the path is back.

Why a proxy rather than a real cut: as root, network namespaces joined by a
veth pair with an nftables ``drop`` rule would cut a real path, but that
needs privileges and a Linux kernel.  This proxy needs neither, runs on any
machine the tests run on, and cuts exactly one client's traffic while the
others talk to the server directly.

With ``record=True`` it also keeps every byte of every connection, each
direction apart (``recordings``): what a wire test reads frame by frame.
With ``rewrite`` each frame a client sends passes through that function
first: a server that answers one kind of call with an error, for real.  A
rewrite that returns None breaks that connection instead (a network blip
that one kind of call meets).

Bounded: at most ``max_connections`` connections at a time (more are closed
at once), two threads per connection plus one accepting; every blocking
wait has a short timeout so each thread notices ``close()`` within about
0.2 s, and ``close()`` joins them all against a deadline.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
from collections.abc import Callable

TICK = 0.2
"""Seconds between checks of the cut and stop flags in every loop."""

UPSTREAM_CONNECT_TIMEOUT = 5.0


class NetProxy:
    def __init__(
        self,
        upstream: str,
        *,
        max_connections: int = 64,
        record: bool = False,
        rewrite: Callable[[bytes], bytes | None] | None = None,
    ) -> None:
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.max_connections = max_connections
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self._listener.settimeout(TICK)
        self.port = self._listener.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self._forwarding = threading.Event()
        self._forwarding.set()
        self._requests_flow = threading.Event()
        self._requests_flow.set()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._awaiting: set[int] = set()
        """Connections whose last bytes forwarded were a request, not yet a reply."""
        self._threads: list[threading.Thread] = []
        self._open = 0
        self.accepted = 0
        self.refused = 0
        self.record = record
        self.rewrite = rewrite
        self.recordings: list[Recording] = []
        """Per connection, in the order accepted: the bytes each way (``record=True``)."""
        self._accepter = threading.Thread(target=self._accept_loop, name="netproxy-accept")
        self._accepter.daemon = True
        self._accepter.start()

    # -- control ----------------------------------------------------------

    def cut(self) -> None:
        """Black-hole both directions of every connection, old and new."""
        self._forwarding.clear()

    def hold_requests(self) -> None:
        """Hold what clients send, while the server's replies still flow: a client
        gets the answer to a call already made, and its next call (and any
        confirmation it carries) never reaches the server."""
        with self._lock:  # a request past the gate is already marked awaiting
            self._requests_flow.clear()

    def answered(self) -> bool:
        """No request forwarded is still waiting for its reply: the server has
        handled every call that got through (a reply is sent once handled).  A
        connection that has only just logged in reads as waiting until its first
        call's reply (the login's last word, the client's, gets none)."""
        with self._lock:
            return not self._awaiting

    def heal(self) -> None:
        """Forward again: what waited is delivered, what was accepted is connected."""
        self._forwarding.set()
        self._requests_flow.set()

    @property
    def is_cut(self) -> bool:
        return not self._forwarding.is_set()

    def close(self, timeout: float = 5.0) -> None:
        """Close every connection and join every thread (bounded by ``timeout``)."""
        self._closed.set()
        self._forwarding.set()  # wake anything waiting for a heal
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
            threads = [self._accepter, *self._threads]
        for sock in sockets:
            _shut(sock)
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [thread.name for thread in threads if thread.is_alive()]
        assert not alive, f"netproxy threads still running after close: {alive}"

    def __enter__(self) -> NetProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- threads ----------------------------------------------------------

    def _wait_forwarding(self, gate: threading.Event | None = None) -> bool:
        """Block while cut (or while ``gate`` is closed); False once the proxy is closing."""
        for event in (self._forwarding, gate):
            while event is not None and not event.wait(TICK):
                if self._closed.is_set():
                    return False
        return not self._closed.is_set()

    def _let_through(self, gate: threading.Event | None, forwarding: Callable[[], None]) -> bool:
        """Wait for the gate, then note the bytes going through before it can close."""
        while self._wait_forwarding(gate):
            with self._lock:
                if gate is None or gate.is_set():
                    forwarding()
                    return True
        return False

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                full = self._open >= self.max_connections
                if not full:
                    self._open += 1
                    self.accepted += 1
                    self._sockets.add(client)
                    self._threads = [t for t in self._threads if t.is_alive()]
                    handler = threading.Thread(
                        target=self._connection, args=(client,), name="netproxy-conn"
                    )
                    handler.daemon = True
                    self._threads.append(handler)
            if full:
                self.refused += 1
                client.close()
                continue
            handler.start()

    def _connection(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        try:
            # Accepted during a cut: the SYN "got through" to us, but nothing goes on.
            if not self._wait_forwarding():
                return
            try:
                upstream = socket.create_connection(self.upstream, UPSTREAM_CONNECT_TIMEOUT)
            except OSError:
                return
            with self._lock:
                self._sockets.add(upstream)
            recording = Recording()
            if self.record:
                with self._lock:
                    self.recordings.append(recording)
            key = id(client)
            back = threading.Thread(
                target=self._pump,
                args=(upstream, client, recording.down),
                kwargs={"forwarding": lambda: self._awaiting.discard(key)},
                name="netproxy-back",
            )
            back.daemon = True
            back.start()
            self._pump(
                client,
                upstream,
                recording.up,
                self._requests_flow,
                self.rewrite,
                forwarding=lambda: self._awaiting.add(key),
            )
            back.join()
        finally:
            for sock in (client, upstream):
                if sock is not None:
                    _shut(sock)
                    sock.close()
                    with self._lock:
                        self._sockets.discard(sock)
            with self._lock:
                self._open -= 1
                self._awaiting.discard(id(client))

    def _pump(
        self,
        source: socket.socket,
        sink: socket.socket,
        tape: bytearray,
        gate: threading.Event | None = None,
        rewrite: Callable[[bytes], bytes | None] | None = None,
        *,
        forwarding: Callable[[], None],
    ) -> None:
        """Copy source to sink while forwarding; hold bytes (and EOF) during a cut.
        With ``rewrite``, whole frames only, each rewritten on its way.
        ``forwarding`` runs under the lock, just as bytes are let through the gate."""
        frames = Frames(rewrite) if rewrite is not None else None
        while self._wait_forwarding(gate):
            try:
                readable, _, _ = select.select([source], [], [], TICK)
            except (OSError, ValueError):
                break
            if not readable:
                continue
            try:
                data = source.recv(65536)
            except OSError:
                break
            if not self._let_through(gate, forwarding):  # read just before a cut: held
                break
            if not data:
                with contextlib.suppress(OSError):
                    sink.shutdown(socket.SHUT_WR)
                return
            if self.record:
                tape += data
            if frames is not None:
                rewritten = frames.feed(data)
                if rewritten is None:  # broken on purpose
                    break
                data = rewritten
            try:
                sink.sendall(data)
            except OSError:
                break
        # An error or close on one side ends both directions.
        _shut(source)
        _shut(sink)


def holding(method: str, seconds: float) -> Callable[[bytes], bytes]:
    """A ``rewrite`` that holds each call of ``method`` ``seconds`` before passing it
    on: a slow path for one kind of call (a worker's reports, say), the rest as fast."""
    name = f'"{method}"'.encode()

    def hold(frame: bytes) -> bytes:
        if name in frame:
            time.sleep(seconds)
        return frame

    return hold


class Frames:
    """Cuts a byte stream into the manager protocol's frames (a 4-byte big-endian
    length, or -1 and an 8-byte length) and rewrites each whole one (None: the
    connection is to be broken)."""

    def __init__(self, rewrite: Callable[[bytes], bytes | None]) -> None:
        self.rewrite = rewrite
        self.pending = b""

    def feed(self, data: bytes) -> bytes | None:
        self.pending += data
        out = []
        while len(self.pending) >= 4:
            (size,) = struct.unpack_from("!i", self.pending)
            header = 4
            if size == -1:
                if len(self.pending) < 12:
                    break
                (size,) = struct.unpack_from("!Q", self.pending, 4)
                header = 12
            if len(self.pending) < header + size:
                break
            frame = self.rewrite(self.pending[header : header + size])
            if frame is None:
                return None
            large = header == 12
            head = struct.pack("!iQ", -1, len(frame)) if large else struct.pack("!i", len(frame))
            out.append(head + frame)
            self.pending = self.pending[header + size :]
        return b"".join(out)


class Recording:
    """One connection's bytes: ``up`` from the client, ``down`` from the server."""

    def __init__(self) -> None:
        self.up = bytearray()
        self.down = bytearray()


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
