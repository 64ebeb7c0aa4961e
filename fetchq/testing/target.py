"""A local HTTP target: something known to fetch, for the demo, tests and benchmarks.

It answers on loopback with keep-alive, and has endpoints for each way a real
server can behave (slow, large, error statuses, dropped or reset connections)
so that every result type can be produced without touching the internet.

Endpoints (any method, each request's method, headers and body remembered; a HEAD
gets the headers a GET would; query strings are ignored unless named):

- ``/status/<code>``: that status (200-599); 3xx ones point ``Location`` at ``/``
- ``/slow?s=<seconds>``: waits that long (at most 30 s), then 200
- ``/bytes/<n>``: 200 with ``n`` zero bytes (at most 100 MB)
- ``/drip?bytes=<n>&s=<seconds>``: 200 whose ``n`` body bytes (at most 1 MB) trickle
  out over that many seconds (at most 30): a body slower than any read timeout
- ``/drop``: closes the connection without an answer
- ``/reset``: sends half a status line, then resets the connection (TCP RST)
- ``/busy?after=<seconds>``: the first request for this exact path and query gets
  429 with ``Retry-After: <seconds>``; later ones get 200
- ``/robots.txt``: the target's ``robots`` text when it has one, else 404; after
  ``robots_after`` seconds (at most 30)
- anything else (``/``, ``/?q=1``, ``/any/path``): 200 with ``ok``
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import http.server
import socket
import socketserver
import struct
import threading
import time
from http import HTTPStatus
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit

MAX_SLOW = 30.0
"""Longest wait /slow and /drip accept, in seconds: every test stops by itself."""

MAX_BYTES = 100 * 1024 * 1024
"""Largest /bytes body."""

MAX_DRIP = 1024 * 1024
"""Largest /drip body: it is written a piece at a time."""

SEEN_KEPT = 10_000
"""Requests whose details the target remembers (the latest ones): enough for a
test, bounded for a benchmark that sends millions."""

CHUNK = 65536
_ZEROS = memoryview(bytes(CHUNK))
_OK_BODY = b"ok\n"


def _reason(code: int) -> str:
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return "Unknown"


def _number(text: str | None, cap: float) -> float | None:
    """A non-negative number from a path part or query value, capped; None if bad."""
    try:
        value = float(text) if text is not None else 0.0
    except ValueError:
        return None
    if value != value or value < 0:  # NaN or negative
        return None
    return min(value, cap)


class Seen(NamedTuple):
    """One request as the target saw it on the wire."""

    path: str
    """Path and query, as in :meth:`Target.hits`."""
    user_agent: str | None
    client_port: int
    """The client's end of the TCP connection: one port, one connection."""
    arrived: float = 0.0
    """Unix time the request line was read."""
    host: str | None = None
    """The Host header."""
    in_flight: int = 0
    """Requests this target was answering at that moment, this one included (a
    request stops counting just before the last bytes of its answer are sent)."""
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    """Every header as sent, in order."""
    body: bytes = b""


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    # Threads are not tracked or joined: stop() closes their connections instead.
    block_on_close = False
    request_queue_size = 512

    def __init__(self, address: tuple[str, int], family: socket.AddressFamily) -> None:
        self.address_family = family
        self.stopping = threading.Event()
        self.connections: set[socket.socket] = set()
        self.hits: collections.Counter[str] = collections.Counter()
        self.seen: collections.deque[Seen] = collections.deque(maxlen=SEEN_KEPT)
        self.in_flight = 0
        self.robots: str | None = None
        self.robots_after = 0.0
        self.lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn) of the
        # address; a test target has no business asking a name server.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet: clients that go away mid-answer are normal here."""


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    _counted = False
    """This request is in the server's ``in_flight``."""

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.server.lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.lock:
            self.server.connections.discard(self.connection)
        super().finish()

    def handle(self) -> None:
        # A TLS client would wait for a ServerHello while the HTTP parser waits
        # for a line end that may never come: answer in plain HTTP instead, which
        # the client reports as a TLS error at once.
        try:
            first = self.connection.recv(1, socket.MSG_PEEK)
        except OSError:
            return
        if first == b"\x16":
            self._send(400, b"this is a plain HTTP server\n", close=True)
            return
        super().handle()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: no line per request."""

    def _send(
        self,
        code: int,
        body: bytes = b"",
        *,
        length: int | None = None,
        headers: tuple[tuple[str, str], ...] = (),
        close: bool = False,
    ) -> None:
        """Write status line, headers and body in one send."""
        if close:
            self.close_connection = True
        lines = [f"HTTP/1.1 {code} {_reason(code)}"]
        if code not in (204, 304):
            lines.append(f"Content-Length: {len(body) if length is None else length}")
        lines.extend(f"{name}: {value}" for name, value in headers)
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        head_only = getattr(self, "command", None) == "HEAD"  # (unset before a request line)
        if head_only or length is None or length == 0:  # the whole answer in this write
            self._answered()
        self.wfile.write(head if head_only else head + body)

    def _answered(self) -> None:
        """Stop counting this request as in flight, just before its answer's last
        bytes go: a client with its whole answer may send its next request before
        this thread runs again, and a cap measured here must not count both."""
        if self._counted:
            self._counted = False
            with self.server.lock:
                self.server.in_flight -= 1

    def _request_body(self) -> bytes:
        """The body the request carries (by its Content-Length; at most MAX_DRIP)."""
        length = _number(self.headers.get("Content-Length"), MAX_DRIP)
        return self.rfile.read(int(length)) if length else b""

    def do_GET(self) -> None:
        arrived = time.time()
        body = self._request_body()
        with self.server.lock:
            self.server.in_flight += 1
            self._counted = True
            self.server.hits[self.path] += 1
            self.server.seen.append(
                Seen(
                    self.path,
                    self.headers.get("User-Agent"),
                    int(self.client_address[1]),
                    arrived,
                    self.headers.get("Host"),
                    self.server.in_flight,
                    self.command,
                    tuple(self.headers.items()),
                    body,
                )
            )
        try:
            self._answer()
        finally:
            self._answered()  # (an answer cut short, or none)

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_GET

    def _answer(self) -> None:
        parts = urlsplit(self.path)
        path = parts.path
        if path.startswith("/status/"):
            self._status(path[len("/status/") :])
        elif path == "/slow":
            self._slow(parse_qs(parts.query))
        elif path.startswith("/bytes/"):
            self._bytes(path[len("/bytes/") :])
        elif path == "/drip":
            self._drip(parse_qs(parts.query))
        elif path == "/drop":
            self.close_connection = True
        elif path == "/reset":
            self._reset()
        elif path == "/busy":
            self._busy(parse_qs(parts.query))
        elif path == "/robots.txt":
            self._robots()
        else:
            self._send(200, _OK_BODY)

    def _robots(self) -> None:
        if self.server.robots_after > 0:
            self.server.stopping.wait(min(self.server.robots_after, MAX_SLOW))
        robots = self.server.robots
        if robots is None:
            self._send(404, b"no robots.txt here\n")
        else:
            self._send(200, robots.encode(), headers=(("Content-Type", "text/plain"),))

    def _busy(self, query: dict[str, list[str]]) -> None:
        with self.server.lock:
            first = self.server.hits[self.path] == 1
        if first:
            after = query.get("after", ["1"])[0]
            self._send(429, b"slow down\n", headers=(("Retry-After", after),))
        else:
            self._send(200, _OK_BODY)

    def _status(self, text: str) -> None:
        try:
            code = int(text)
        except ValueError:
            code = 0
        if not 200 <= code <= 599:
            self._send(400, b"status must be 200-599\n")
        elif code in (204, 304):
            self._send(code)
        elif 300 <= code < 400:
            self._send(code, b"redirect\n", headers=(("Location", "/"),))
        else:
            self._send(code, f"{code} {_reason(code)}\n".encode())

    def _slow(self, query: dict[str, list[str]]) -> None:
        seconds = _number(query.get("s", ["1"])[0], MAX_SLOW)
        if seconds is None:
            self._send(400, b"s must be a number of seconds\n")
            return
        # Waiting on the stop event lets stop() end the wait at once.
        self.server.stopping.wait(seconds)
        self._send(200, _OK_BODY)

    def _bytes(self, text: str) -> None:
        n = _number(text, MAX_BYTES)
        if n is None or n != int(n):
            self._send(400, b"n must be a whole number of bytes\n")
            return
        left = int(n)
        self._send(200, length=left)
        while left > 0 and self.command != "HEAD":
            k = min(left, CHUNK)
            left -= k
            if not left:
                self._answered()
            self.wfile.write(_ZEROS[:k])

    def _drip(self, query: dict[str, list[str]]) -> None:
        n = _number(query.get("bytes", ["10"])[0], MAX_DRIP)
        seconds = _number(query.get("s", ["1"])[0], MAX_SLOW)
        if n is None or seconds is None or n != int(n):
            self._send(400, b"bytes and s must be numbers\n")
            return
        count = int(n) if self.command != "HEAD" else 0
        self._send(200, length=count)
        pause = seconds / count if count else 0.0
        for left in range(count - 1, -1, -1):
            if self.server.stopping.wait(pause):
                self.close_connection = True
                return
            if not left:
                self._answered()
            self.wfile.write(b"\0")

    def _reset(self) -> None:
        self.wfile.write(b"HTTP/1.1 200 O")
        # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.rfile.close()
        self.connection.close()


class Target:
    """A local HTTP server in a background thread; use as a context manager."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self._robots: str | None = None
        self._robots_after = 0.0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def hits(self) -> collections.Counter[str]:
        """Requests seen per path and query: how tests tell a task was fetched once."""
        if self._server is None:
            return collections.Counter()
        with self._server.lock:
            return collections.Counter(self._server.hits)

    @property
    def robots_after(self) -> float:
        """Seconds the target waits before it answers /robots.txt."""
        return self._robots_after

    @robots_after.setter
    def robots_after(self, seconds: float) -> None:
        self._robots_after = seconds
        if self._server is not None:
            self._server.robots_after = seconds

    @property
    def robots(self) -> str | None:
        """The robots.txt this target serves (None: 404)."""
        return self._robots

    @robots.setter
    def robots(self, text: str | None) -> None:
        self._robots = text
        if self._server is not None:
            self._server.robots = text

    def requests(self, path_prefix: str = "/") -> list[Seen]:
        """The latest requests (at most ``SEEN_KEPT``) whose path starts with ``path_prefix``."""
        if self._server is None:
            return []
        with self._server.lock:
            return [seen for seen in self._server.seen if seen.path.startswith(path_prefix)]

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:PORT`` (port known once started)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> Target:
        """Bind and serve in a daemon thread; returns self."""
        if self._server is not None:
            return self
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        server = _Server((self.host, self.port), family)
        server.robots, server.robots_after = self._robots, self._robots_after
        self.port = int(server.server_address[1])
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"fetchq-target-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close every open connection."""
        server, self._server = self._server, None
        if server is None:
            return
        server.stopping.set()
        server.shutdown()
        server.server_close()
        with server.lock:
            conns = list(server.connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> Target:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """``python -m fetchq.testing.target``: serve in the foreground until Ctrl-C."""
    parser = argparse.ArgumentParser(prog="python -m fetchq.testing.target", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=0, help="port (0: any free port)")
    args = parser.parse_args(argv)
    try:
        target = Target(args.host, args.port).start()
    except OSError as exc:
        parser.exit(1, f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}\n")
    print(target.url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        target.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
