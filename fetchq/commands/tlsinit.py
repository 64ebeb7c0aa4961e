"""fetchq tls init: a CA, a server certificate and a client certificate, in one command.

Why a command rather than ``openssl`` lines: making a CA and two leaf
certificates that a strict TLS stack accepts (subject alternative names for
the server's addresses, CA basic constraints, key usages, client and server
roles) takes a dozen ``openssl`` options whose spelling differs between
OpenSSL, LibreSSL (macOS) and versions, and a mistake shows only as a failed
handshake later.  This command gets those details right once, writes the
private keys with mode 0600, never overwrites a file, and keeps no CA key
behind (there is nothing left to guard but the three files it says to copy).
It needs the well-kept ``cryptography`` package, an optional extra:
``pip install 'fetchq[tls]'``.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from fetchq.commands.options import make_app, reports_errors, say
from fetchq.errors import ConfigError
from fetchq.extras import extra_missing

FILES = ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")

HELP = "Make the files for mutual TLS between a server and its clients."
app = make_app(HELP)


@app.callback()
def tls() -> None:
    """Make the files for mutual TLS between a server and its clients."""


def _crypto() -> Any:
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError:
        raise extra_missing("tls", "fetchq tls init", "the cryptography package") from None
    return x509, hashes, serialization, ec, ExtendedKeyUsageOID, NameOID


def _names(hosts: list[str]) -> list[Any]:
    x509 = _crypto()[0]
    names: list[Any] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def make_files(folder: Path, hosts: list[str], days: int) -> dict[str, bytes]:
    """The PEM files by name: a CA, a server pair valid for ``hosts``, a client pair."""
    x509, hashes, serialization, ec, usage, oid = _crypto()
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)

    def name(text: str) -> Any:
        return x509.Name([x509.NameAttribute(oid.COMMON_NAME, text)])

    def pem_key(key: Any) -> bytes:
        return bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = name(f"fetchq CA {folder.name}")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(common_name: str, role: Any, alt_names: list[Any]) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(common_name))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([role]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
        )
        if alt_names:
            builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), False)
        cert = builder.sign(ca_key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), pem_key(key)

    server_pem, server_key = leaf("fetchq server", usage.SERVER_AUTH, _names(hosts))
    client_pem, client_key = leaf("fetchq client", usage.CLIENT_AUTH, [])
    return {
        "ca.pem": ca.public_bytes(serialization.Encoding.PEM),
        "server.pem": server_pem,
        "server.key": server_key,
        "client.pem": client_pem,
        "client.key": client_key,
    }


def write_files(folder: Path, files: dict[str, bytes]) -> None:
    """Every file or none: an existing one is never overwritten; keys get mode 0600."""
    taken = [n for n in files if (folder / n).exists()]
    if taken:
        raise ConfigError(f"{folder} already holds {', '.join(taken)}: choose an empty folder")
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        for filename, data in files.items():
            mode = 0o600 if filename.endswith(".key") else 0o644
            fd = os.open(folder / filename, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
    except OSError as exc:
        raise ConfigError(f"cannot write TLS files to {folder}: {exc.strerror}") from None


@app.command("init")
@reports_errors
def init(
    folder: Annotated[
        Path, typer.Argument(metavar="FOLDER", help="Folder for the files (made if missing)")
    ],
    host: Annotated[
        list[str] | None,
        typer.Option(
            "--host",
            metavar="HOST",
            help="Name or IP address clients use to reach the server; repeatable "
            "(else localhost and 127.0.0.1)",
        ),
    ] = None,
    days: Annotated[
        int, typer.Option(min=1, max=3650, metavar="N", help="Days the certificates last")
    ] = 365,
) -> None:
    """Write ca.pem, server.pem/.key and client.pem/.key for mutual TLS."""
    hosts = host or ["localhost", "127.0.0.1"]
    write_files(folder, make_files(folder, hosts, days))
    say(f"wrote {', '.join(FILES)} to {folder} (server valid for {', '.join(hosts)})")
    say(
        f"server: fetchq server --tls-cert {folder / 'server.pem'} "
        f"--tls-key {folder / 'server.key'} --tls-ca {folder / 'ca.pem'}"
    )
    say(
        "clients: copy ca.pem, client.pem and client.key to each host, then "
        "FETCHQ_TLS_CA=ca.pem FETCHQ_TLS_CERT=client.pem FETCHQ_TLS_KEY=client.key"
    )
