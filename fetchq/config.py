"""Where the server is and which key to use: options, environment, files.

A flag beats the environment; the key is never a built-in default and never
printed.  Keys are bytes on the wire; in files and variables they are text
(UTF-8), so any BaseManager client given the same text can log in.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from fetchq import defaults
from fetchq.errors import ConfigError, NoAuthkey, cannot_read
from fetchq.messages import warn
from fetchq.wire.tls import ClientTLS, client_tls

ENV_SERVER = "FETCHQ_SERVER"
ENV_AUTHKEY = "FETCHQ_AUTHKEY"
ENV_AUTHKEY_FILE = "FETCHQ_AUTHKEY_FILE"


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"

    def as_tuple(self) -> tuple[str, int]:
        return (self.host, self.port)


def parse_port(text: str | int) -> int:
    """A port from ``0`` to ``65535``, written in ASCII digits only.

    ``int()`` alone would also take ``+80``, ``8_0``, `` 80`` and non-ASCII
    digits: forms no other tool accepts in an address, so neither do we."""
    if isinstance(text, str):
        if not (text.isascii() and text.isdigit()):
            raise ConfigError(f"invalid port {text!r}: expected a number from 0 to 65535")
        port = int(text)
    else:
        port = text
    if not 0 <= port <= 65535:
        raise ConfigError(f"invalid port {port}: expected a number from 0 to 65535")
    return port


def parse_address(text: str) -> Address:
    """``HOST:PORT``, ``HOST`` (default port) or ``:PORT`` (loopback)."""
    text = text.strip()
    if not text:
        raise ConfigError("empty server address: expected HOST:PORT")
    if text.startswith("[") or text.count(":") > 1:
        raise ConfigError(
            f"invalid server address {text!r}: IPv6 is not supported yet, use an IPv4 address "
            "or a host name"
        )
    host, sep, port_text = text.partition(":")
    port = parse_port(port_text) if sep else defaults.PORT
    return Address(host or defaults.HOST, port)


def server_address(option: str | None) -> Address:
    """The address a client connects to: ``--server``, then FETCHQ_SERVER, then loopback."""
    return server_addresses(option)[0]


def server_addresses(option: str | None) -> tuple[Address, ...]:
    """The addresses a client may connect to, in order: ``--server`` or FETCHQ_SERVER
    (``a:7439,b:7439``: servers on one store), else loopback."""
    text = option or os.environ.get(ENV_SERVER)
    if not text:
        return (Address(defaults.HOST, defaults.PORT),)
    return tuple(parse_address(part) for part in text.split(","))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_key_path() -> Path:
    """Where a server that was given no key keeps the one it generated."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "fetchq" / "authkey"


def read_key_file(path: str | os.PathLike[str]) -> bytes:
    """A key file's content as bytes, one trailing newline stripped."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise cannot_read("authkey file", path, exc) from None
    if data.endswith(b"\r\n"):
        data = data[:-2]
    elif data.endswith(b"\n"):
        data = data[:-1]
    if not data:
        raise ConfigError(f"authkey file {path} is empty")
    warn_if_readable_by_others(path)
    return data


def warn_if_readable_by_others(path: str | os.PathLike[str]) -> None:
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        warn(f"authkey file {path} is readable by other users (chmod 600 {path})")


@dataclass(frozen=True)
class Authkey:
    key: bytes
    source: str
    """Where the key came from, for messages: never the key itself."""

    def __repr__(self) -> str:
        return f"Authkey(source={self.source!r})"


def find_authkey(key_file: str | None) -> Authkey | None:
    """``--authkey-file``, then FETCHQ_AUTHKEY, then FETCHQ_AUTHKEY_FILE, then the default file."""
    if key_file:
        return Authkey(read_key_file(key_file), f"file {key_file} (--authkey-file)")
    env_key = os.environ.get(ENV_AUTHKEY)
    if env_key:
        return Authkey(env_key.encode("utf-8"), f"${ENV_AUTHKEY}")
    env_file = os.environ.get(ENV_AUTHKEY_FILE)
    if env_file:
        return Authkey(read_key_file(env_file), f"file {env_file} (${ENV_AUTHKEY_FILE})")
    path = default_key_path()
    if path.exists():
        return Authkey(read_key_file(path), f"file {path}")
    return None


def client_authkey(key_file: str | None) -> Authkey:
    found = find_authkey(key_file)
    if found is None:
        raise NoAuthkey(
            f"no authkey given: set {ENV_AUTHKEY} or {ENV_AUTHKEY_FILE}, or pass --authkey-file "
            f"(a server started without a key writes one to {default_key_path()})"
        )
    return found


def generate_key_file(path: Path) -> Authkey:
    """A fresh random key written to ``path`` with mode 0600, never overwriting."""
    key = secrets.token_urlsafe(32)
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise ConfigError(
            f"cannot create {path.parent} for a new authkey: {exc.strerror}"
        ) from None
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return Authkey(read_key_file(path), f"file {path}")
    except OSError as exc:
        raise ConfigError(f"cannot write a new authkey to {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    return Authkey(key.encode("ascii"), f"file {path} (generated)")


@dataclass(frozen=True)
class ServerLink:
    """How a client reaches the server: where it is, the key (and where that came from),
    TLS, and how long a call waits for its reply before the connection counts as cut.

    Built once per command from its options and the environment (``server_link``),
    and handed to every client the command opens: each connection those clients make
    has these settings, whatever other clients in the same process use."""

    address: Address
    authkey: Authkey
    tls: ClientTLS | None = None
    call_timeout: float = defaults.CALL_TIMEOUT
    others: tuple[Address, ...] = ()
    """Further servers of the same store, tried in turn when one stops answering."""

    @property
    def addresses(self) -> tuple[Address, ...]:
        return (self.address, *self.others)

    def __str__(self) -> str:
        return ",".join(map(str, self.addresses))


def server_link(
    server: str | None = None,
    authkey_file: str | None = None,
    tls_ca: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    *,
    call_timeout: float = defaults.CALL_TIMEOUT,
) -> ServerLink:
    """The link the connection options describe; what they leave out comes from the
    environment (a flag beats the environment), then from the defaults.

    Each setting is checked here, before anything connects: a malformed address, a
    missing key or an unusable TLS file is said at once."""
    first, *others = server_addresses(server)
    return ServerLink(
        first,
        client_authkey(authkey_file),
        client_tls(tls_ca, tls_cert, tls_key),
        call_timeout,
        tuple(others),
    )
