"""The connection under the manager protocol, as both sides open it.

The manager protocol's messages keep their shapes, a request ``[ident, method,
args, kwargs]`` and a reply ``[kind, result]``, but each frame is JSON, so
nothing that arrives is ever unpickled and any language can take part
(docs/PROTOCOL.md describes every byte).  The server is the stdlib's manager
server with this module's ``Listener``; a client opens its connections with
``open_connection``, each with the settings of the client that asked for it.

A ``Connection`` carries the stdlib's frames (a 4-byte big-endian length,
or -1 and an 8-byte length for large ones) over a plain or a TLS socket;
every wait on it is a socket timeout, which bounds TLS reads too.  The
server decides each connection's codec from its first frame after the
login: JSON (``[`` or ``{``), or pickle (byte 0x80), which it reads only
when started with ``--allow-pickle``.  Failures of the transport become
fetchq's own errors here, one line each naming the address and what to check.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import socket
import ssl
import struct
from collections.abc import Iterator
from multiprocessing import AuthenticationError, managers
from typing import Any

from fetchq import defaults
from fetchq.config import Address
from fetchq.errors import (
    AuthFailed,
    FetchqError,
    ServerUnreachable,
    TLSFailed,
    VersionMismatch,
    from_wire,
)
from fetchq.wire import login, tls
from fetchq.wire.api import MAX_FRAME
from fetchq.wire.codec import (
    JSON,
    JSON_REPLIES,
    PICKLE,
    PICKLE_OPCODE,
    BadFrame,
    Codec,
    PickleRefused,
    WireError,
)

TLS_RECORD_TYPES = (0x15, 0x16)
"""First bytes of a TLS alert or handshake record: how TLS is told from a frame length."""

TLS_ALERT_NO_HELLO = b"\x15\x03\x03\x00\x02\x02\x0a"
"""A fatal TLS alert (unexpected_message): what a TLS server sends a client that
said nothing.  A plaintext fetchq client reads its first byte as a frame length
no login allows, and so knows the server wants TLS."""

TLS_HELLO_WAIT = 3.0
"""Seconds a TLS server waits for a client's hello before taking it for a
plaintext client waiting for a challenge (which would otherwise wait for ever)."""

_LARGE = -1
_SMALL_FRAME = 16384
_RECEIVE = 65536
"""Bytes asked of the socket per read: a small frame arrives, header and all, in one."""
_CHUNK = 1 << 20
"""Most bytes asked per read of a large frame: a length alone reserves nothing."""


class FrameRefused(WireError):
    """A frame refused before its body was read: the stream cannot go on."""

    def __init__(self, message: str, header: bytes = b"") -> None:
        super().__init__(message)
        self.header = header


class NoReply(TimeoutError):
    """The peer sent nothing within the connection's timeout."""


class NotFetchq(AuthFailed):
    """The peer answered, but not as a fetchq server does (exit 5, like a refused key:
    the README's "the peer is not a fetchq server")."""


class PlaintextPeer(WireError):
    """A client that does not speak TLS connected to a TLS server."""


# -- connections ----------------------------------------------------------------


def tune(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    # An idle connection to a vanished peer is noticed within about 25 seconds.
    for option, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, option):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


class Connection:
    """The stdlib's frames over a socket, plain or TLS, with one codec for messages.

    It offers what the manager machinery uses of ``connection.Connection``:
    ``send``/``recv`` for messages, ``send_bytes``/``recv_bytes`` for the
    login, ``fileno`` and ``close``.  Reads are buffered, so a small frame
    costs one read.  Every wait has a limit (``settimeout``): on a TLS socket
    a socket timeout, since a kernel receive timeout does not bound an SSL
    read; on a plain one the kernel's own send and receive timeouts, which
    spare a poll() before every read and write."""

    def __init__(self, sock: socket.socket, codec: Codec | None, peer: str = "") -> None:
        self._sock = sock
        self.codec = codec
        """None until a server has seen the first frame after the login."""
        self.peer = peer
        self._buffer = bytearray()

    def fileno(self) -> int:
        return self._sock.fileno()

    @property
    def closed(self) -> bool:
        return self._sock.fileno() < 0

    def settimeout(self, seconds: float | None) -> None:
        if isinstance(self._sock, ssl.SSLSocket):
            self._sock.settimeout(seconds)
            return
        self._sock.settimeout(None)
        whole = int(seconds or 0)
        limit = struct.pack("ll", whole, int(((seconds or 0) - whole) * 1_000_000))
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, limit)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, limit)

    def close(self) -> None:
        self._sock.close()

    def send_bytes(self, data: bytes) -> None:
        size = len(data)
        header = struct.pack("!iQ", _LARGE, size) if size > 0x7FFFFFFF else struct.pack("!i", size)
        sock = self._sock
        try:
            if size <= _SMALL_FRAME:  # one write, so Nagle's algorithm never holds it back
                sock.sendall(header + data)
            elif isinstance(sock, ssl.SSLSocket):  # no gathering write: the header first
                sock.sendall(header)
                sock.sendall(data)
            else:
                # Header and frame in one system call, neither copied: two writes would
                # wake the peer twice, once for the header alone.
                sent = sock.sendmsg([header, data])
                if sent < len(header):
                    sock.sendall(header[sent:])
                    sock.sendall(data)
                elif sent < len(header) + size:
                    with memoryview(data) as view:
                        sock.sendall(view[sent - len(header) :])
        except (TimeoutError, BlockingIOError):
            raise NoReply("the peer took nothing within the connection's timeout") from None

    def recv_bytes(self, maxlength: int | None = None) -> bytes:
        header = self._read(4)
        (size,) = struct.unpack("!i", header)
        if size == _LARGE:
            (size,) = struct.unpack("!Q", self._read(8))
        limit = MAX_FRAME if maxlength is None else min(maxlength, MAX_FRAME)
        if size < 0 or size > limit:
            raise FrameRefused(f"a frame of {size} bytes, more than the {limit} allowed", header)
        return self._read(size)

    def _read(self, size: int) -> bytes:
        """``size`` bytes; the buffer grows only as bytes arrive."""
        buffer = self._buffer
        try:
            while len(buffer) < size:
                chunk = self._sock.recv(min(max(_RECEIVE, size - len(buffer)), _CHUNK))
                if not chunk:
                    raise EOFError
                buffer += chunk
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
            raise EOFError from None
        except (TimeoutError, BlockingIOError):
            raise NoReply("no reply within the connection's timeout") from None
        if len(buffer) == size:
            data = bytes(buffer)
            buffer.clear()
            return data
        with memoryview(buffer) as view:
            data = bytes(view[:size])
        del buffer[:size]
        return data

    def send(self, obj: Any) -> None:
        self.send_bytes((self.codec or JSON).dumps(obj))

    def recv(self) -> Any:
        frame = self.recv_bytes()
        return (self.codec or JSON).loads(frame)


class ServerConnection(Connection):
    """A connection as the server accepted it: TLS and codec still to settle."""

    def __init__(
        self,
        sock: socket.socket,
        peer: str,
        tls_context: ssl.SSLContext | None,
        allow_pickle: bool,
    ) -> None:
        super().__init__(sock, None, peer)
        self._tls_context = tls_context
        self.allow_pickle = allow_pickle
        self.greeted: bytes | None = None
        """The login challenge the accept loop already sent (plaintext only)."""

    @property
    def plaintext(self) -> bool:
        return self._tls_context is None

    def skip_probe(self) -> None:
        """Drop the ``PROBE`` a client sent before the login challenge reached it (a
        server slow to greet): its answer follows, on the same connection.  No frame
        starts with the probe's first byte (it would be over a gigabyte long)."""
        sock = self._sock
        if sock.recv(1, socket.MSG_PEEK) != PROBE[:1]:
            return
        left = len(PROBE)
        while left:  # what follows, if it is no probe, fails the login as it would have
            got = sock.recv(left)
            if not got:
                return
            left -= len(got)

    def start_tls(self) -> None:
        """The TLS handshake, run in the connection's own thread (never the accept loop).

        A TLS client speaks first; a plaintext fetchq client waits for the
        login challenge.  Silence for TLS_HELLO_WAIT seconds, or a first byte
        that starts no TLS record, is answered with a TLS alert that such a
        client can recognise, and the connection ends (PlaintextPeer)."""
        if self._tls_context is None:
            return
        raw = self._sock
        raw.settimeout(TLS_HELLO_WAIT)
        try:
            first = raw.recv(1, socket.MSG_PEEK)
        except TimeoutError:
            first = b""
            silent = True
        else:
            silent = False
            if not first:
                raise EOFError
        if silent or first[0] != TLS_RECORD_TYPES[1]:
            with contextlib.suppress(OSError):
                raw.sendall(TLS_ALERT_NO_HELLO)
            raise PlaintextPeer("a client that does not speak TLS")
        raw.settimeout(defaults.HANDSHAKE_TIMEOUT)
        self._sock = self._tls_context.wrap_socket(raw, server_side=True)

    def recv(self) -> Any:
        frame = self.recv_bytes()
        if self.codec is None:
            self.codec = self._choose_codec(frame)
        return self.codec.loads(frame)

    def _choose_codec(self, frame: bytes) -> Codec:
        if frame[:1] != bytes([PICKLE_OPCODE]):
            return JSON
        if not self.allow_pickle:
            raise PickleRefused(
                "this fetchq server reads JSON and refuses pickle (a classic BaseManager "
                "client needs a server started with --allow-pickle)"
            )
        return PICKLE


class ClientConnection(Connection):
    """A client's connection: JSON, and error replies turned into fetchq's own errors."""

    def __init__(self, sock: socket.socket, peer: str) -> None:
        super().__init__(sock, JSON, peer)

    def recv(self) -> Any:
        frame = self.recv_bytes()
        if frame[:1] == bytes([PICKLE_OPCODE]):
            raise VersionMismatch(
                f"the server at {self.peer} speaks pickle, not JSON: it is an older fetchq "
                "(protocol 2 or before) or not fetchq at all; install the same fetchq version "
                "on both sides"
            )
        reply = JSON_REPLIES.loads(frame)
        if not (isinstance(reply, list) and len(reply) == 2 and isinstance(reply[0], str)):
            raise BadFrame("a reply is [kind, result]")
        kind, result = reply
        if kind == "#ERROR":
            return kind, from_wire(result)
        if kind == "#PROXY" and isinstance(result, list) and len(result) == 2:
            exposed, token = result
            if isinstance(token, dict):
                address = token.get("address")
                token = managers.Token(
                    token.get("typeid"),
                    tuple(address) if isinstance(address, list) else address,
                    token.get("id"),
                )
            return kind, (exposed, token)
        return kind, result


# -- the server's listener --------------------------------------------------------


class Listener:
    """Accepts connections for the manager server; logging in is left to its threads.

    The backlog is big enough for a fleet connecting at once (the stock
    server asks for 16), and nothing slow happens here: the TLS handshake and
    the login run in each connection's own thread."""

    def __init__(
        self,
        address: tuple[str, int],
        family: Any = None,
        backlog: int = 1,
        authkey: bytes | None = None,
        *,
        tls_context: ssl.SSLContext | None = None,
        allow_pickle: bool = False,
    ) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._socket.bind(address)
            self._socket.listen(max(backlog, defaults.BACKLOG))
        except OSError:
            self._socket.close()
            raise
        bound = self._socket.getsockname()
        self.address = (str(bound[0]), int(bound[1]))
        self._tls_context = tls_context
        self._allow_pickle = allow_pickle

    def accept(self) -> ServerConnection:
        sock, peer = self._socket.accept()
        with contextlib.suppress(OSError):  # a peer already gone fails its login on its own
            tune(sock)
            sock.settimeout(defaults.HANDSHAKE_TIMEOUT)
        return ServerConnection(sock, f"{peer[0]}:{peer[1]}", self._tls_context, self._allow_pickle)

    def close(self) -> None:
        """Stop listening; also wakes an ``accept`` blocked in another thread."""
        with contextlib.suppress(OSError):
            self._socket.shutdown(socket.SHUT_RDWR)
        self._socket.close()


_server_names = itertools.count(1)


@contextlib.contextmanager
def listener_for(tls_context: ssl.SSLContext | None, allow_pickle: bool) -> Iterator[str]:
    """A serializer name that gives one manager server a Listener with these settings;
    the name lasts only while the server is built (its Listener is all it looks up)."""
    name = f"fetchq-server-{next(_server_names)}"
    listener = functools.partial(Listener, tls_context=tls_context, allow_pickle=allow_pickle)
    # Forced by the stdlib: managers.Server is given no listener, only a serializer name
    # it looks up in the module-level dict managers.listener_client; hence a name per server.
    managers.listener_client[name] = (listener, open_connection)  # type: ignore[attr-defined]
    try:
        yield name
    finally:
        managers.listener_client.pop(name, None)  # type: ignore[attr-defined]


# -- the client's side ------------------------------------------------------------

SILENT_PEER_PROBE = 1.0
"""Seconds a client waits for the login challenge, which a fetchq server sends at
once, before it asks the silent peer what it is (``PROBE``)."""

PROBE = b"FETCHQ / HTTP/1.0\r\n\r\n"
"""What a client sends a peer that says nothing: an HTTP server answers it with a
status line, a TLS server with an alert, and a fetchq server that was only slow
skips it and goes on with the login (one before 2026-12-06 refused the login, and
the client then logs in afresh, without it)."""


def open_connection(
    address: tuple[str, int],
    authkey: bytes | None = None,
    *,
    tls_context: ssl.SSLContext | None = None,
    call_timeout: float = defaults.CALL_TIMEOUT,
) -> ClientConnection:
    """Connect, (TLS,) log in: every step has a timeout, and after the login every
    reply is waited for ``call_timeout`` seconds at most."""
    conn = _open(address, authkey, tls_context, call_timeout, probe=True)
    if conn is None:  # a slow fetchq server of before, whose login the probe spoilt
        conn = _open(address, authkey, tls_context, call_timeout, probe=False)
    assert conn is not None
    return conn


def _open(
    address: tuple[str, int],
    authkey: bytes | None,
    tls_context: ssl.SSLContext | None,
    call_timeout: float,
    *,
    probe: bool,
) -> ClientConnection | None:
    where = f"{address[0]}:{address[1]}"
    sock = socket.create_connection(address, timeout=defaults.NET_CONNECT_TIMEOUT)
    probed = False
    try:
        tune(sock)
        sock.settimeout(defaults.HANDSHAKE_TIMEOUT)
        if tls_context is not None:
            sock = tls_context.wrap_socket(sock, server_hostname=address[0])
        elif probe:
            probed = _probed(sock, where)
        conn = ClientConnection(sock, where)
        if authkey is not None:
            try:
                login.answer_challenge(conn, authkey)
            except (EOFError, ConnectionError, AuthenticationError):
                if not probed:
                    raise
                sock.close()
                return None
            login.deliver_challenge(conn, authkey)
        conn.settimeout(call_timeout)
    except ssl.SSLError as exc:
        sock.close()
        raise tls.client_failure(where, exc) from None
    except TimeoutError:  # NoReply too
        sock.close()
        raise ServerUnreachable(
            f"no login from {where}: a fetchq server greets a client at once "
            "(is one running there, and is it alive?)"
        ) from None
    except FrameRefused as exc:
        sock.close()
        if exc.header[:1] and exc.header[0] in TLS_RECORD_TYPES:
            raise TLSFailed(
                f"the server at {where} uses TLS: give --tls-ca (or FETCHQ_TLS_CA), and "
                "--tls-cert/--tls-key if it asks for a client certificate"
            ) from None
        raise NotFetchq(f"{where} answered, but not like a fetchq server (wrong port?)") from None
    except AssertionError:  # its first frame was no login challenge
        sock.close()
        raise NotFetchq(f"{where} answered, but not like a fetchq server (wrong port?)") from None
    except BaseException:
        sock.close()
        raise
    return conn


def _probed(sock: socket.socket, where: str) -> bool:
    """Whether the peer had to be asked what it is: a fetchq server speaks first, and
    a peer silent for SILENT_PEER_PROBE seconds is sent PROBE, to which an HTTP
    server answers with a status line, said at once.  A fetchq server that was only
    slow to greet skips the probe, and the login goes on.  A peer silent to the end
    is left to the login's timeout."""
    wait = defaults.HANDSHAKE_TIMEOUT
    if wait <= SILENT_PEER_PROBE:
        return False
    sock.settimeout(SILENT_PEER_PROBE)
    try:
        if sock.recv(1, socket.MSG_PEEK):
            return False
        raise EOFError
    except TimeoutError:
        sock.sendall(PROBE)
    sock.settimeout(wait - SILENT_PEER_PROBE)
    head = sock.recv(256, socket.MSG_PEEK)
    if head.startswith(b"HTTP/"):
        status = " ".join(head.split(b"\n", 1)[0].decode("latin-1").split()[:2])
        raise NotFetchq(
            f"{where} is not a fetchq server: it answered as a web server does "
            f"({status[:40]}); check the address and the port"
        )
    sock.settimeout(wait)
    return True


TRANSPORT_ERRORS = (
    OSError,
    EOFError,
    AssertionError,
    AuthenticationError,
    WireError,
    managers.RemoteError,
)
"""What the manager machinery raises when the connection, not the call, went wrong."""


def transport_error(
    address: Address, exc: BaseException, *, key_source: str | None = None
) -> FetchqError:
    """One line that names the address and what to check (for a refused key: where the
    key came from, never the key)."""
    if isinstance(exc, FetchqError):
        return exc
    if isinstance(exc, AuthenticationError):
        source = f"the authkey from {key_source}" if key_source else "our authkey"
        return AuthFailed(
            f"server at {address} rejected {source}: it is not the key the server uses"
        )
    if isinstance(exc, AssertionError):
        return NotFetchq(f"{address} answered, but not like a fetchq server (wrong port?)")
    if isinstance(exc, WireError):
        return ServerUnreachable(f"the server at {address} sent a frame fetchq cannot read: {exc}")
    if isinstance(exc, socket.gaierror):
        return ServerUnreachable(f"cannot resolve server host {address.host!r}")
    if isinstance(exc, ConnectionRefusedError):
        return ServerUnreachable(
            f"cannot reach fetchq server at {address}: connection refused "
            "(is `fetchq server` running there, on that port?)"
        )
    if isinstance(exc, NoReply):
        return ServerUnreachable(
            f"server at {address} stopped answering (no reply within the call timeout: "
            "is it alive, and the network between us?)"
        )
    if isinstance(exc, TimeoutError):
        return ServerUnreachable(
            f"cannot reach fetchq server at {address}: timed out "
            "(check the host, the port and any firewall)"
        )
    if isinstance(exc, ssl.SSLError):
        return ServerUnreachable(f"lost the TLS connection to the server at {address}: {exc}")
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
