"""Optional mutual TLS with the stdlib's ``ssl``: settings, contexts, and what a failure means.

A client turns TLS on with a CA file (``--tls-ca`` or ``FETCHQ_TLS_CA``), the
CA that signed the server's certificate, and adds its own certificate and
key when the server asks for one.  A server serves TLS with ``--tls-cert``
and ``--tls-key``; with ``--tls-ca`` it also requires every client to show
a certificate signed by that CA.  The authkey login still runs inside TLS.
Every way a handshake can fail is said here in one line that names what to
change.
"""

from __future__ import annotations

import functools
import os
import ssl
from dataclasses import dataclass

from fetchq.errors import (
    ConfigError,
    FetchqError,
    ServerUnreachable,
    TLSFailed,
    UsageError,
    cannot_read,
)

ENV_TLS_CA = "FETCHQ_TLS_CA"
ENV_TLS_CERT = "FETCHQ_TLS_CERT"
ENV_TLS_KEY = "FETCHQ_TLS_KEY"


def _load_verify(context: ssl.SSLContext, ca: str) -> None:
    _check_readable(ca, "TLS CA file")
    try:
        context.load_verify_locations(cafile=ca)
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise ConfigError(f"cannot use {ca} as a TLS CA file: {_reason(exc)}") from None


def _load_chain(context: ssl.SSLContext, cert: str, key: str) -> None:
    _check_readable(cert, "TLS certificate file")
    _check_readable(key, "TLS key file")
    try:
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise ConfigError(
            f"cannot use TLS certificate {cert} with key {key}: {_reason(exc)}"
        ) from None


def _check_readable(path: str, what: str) -> None:
    """A file ssl would fail to open is said as every unreadable file is; ssl's own
    errors are kept for files it can read but not use."""
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise cannot_read(what, path, exc) from None


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    if reason:
        return str(reason).lower().replace("_", " ")
    return getattr(exc, "strerror", None) or str(exc)


@dataclass(frozen=True)
class ClientTLS:
    """A client's TLS files: the CA that signed the server's certificate, and its own pair."""

    ca: str
    cert: str | None = None
    key: str | None = None

    def context(self) -> ssl.SSLContext:
        return _client_context(self)


@functools.cache
def _client_context(settings: ClientTLS) -> ssl.SSLContext:
    """One context per settings: the manager machinery opens many connections with it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the certificate and host name
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_verify(context, settings.ca)
    if settings.cert and settings.key:
        _load_chain(context, settings.cert, settings.key)
    return context


@dataclass(frozen=True)
class ServerTLS:
    """A server's certificate and key, and the CA its clients' certificates must come from."""

    cert: str
    key: str
    ca: str | None = None

    def context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        _load_chain(context, self.cert, self.key)
        if self.ca:
            _load_verify(context, self.ca)
            context.verify_mode = ssl.CERT_REQUIRED
        return context


def client_tls(ca: str | None, cert: str | None, key: str | None) -> ClientTLS | None:
    """The options, else the environment (each setting on its own); None: no TLS."""
    ca = ca or os.environ.get(ENV_TLS_CA) or None
    cert = cert or os.environ.get(ENV_TLS_CERT) or None
    key = key or os.environ.get(ENV_TLS_KEY) or None
    if bool(cert) != bool(key):
        raise UsageError("--tls-cert and --tls-key go together (or FETCHQ_TLS_CERT and _KEY)")
    if ca is None:
        if cert:
            raise UsageError("a client certificate needs --tls-ca (or FETCHQ_TLS_CA) too")
        return None
    settings = ClientTLS(ca, cert, key)
    settings.context()  # a missing or unusable file is said now, not at the first connect
    return settings


def server_tls(cert: str | None, key: str | None, ca: str | None) -> ServerTLS | None:
    if bool(cert) != bool(key):
        raise UsageError("--tls-cert and --tls-key go together")
    if not cert or not key:
        if ca:
            raise UsageError("--tls-ca on a server needs --tls-cert and --tls-key")
        return None
    settings = ServerTLS(cert, key, ca)
    settings.context()
    return settings


_NOT_TLS = {
    "WRONG_VERSION_NUMBER",
    "RECORD_LAYER_FAILURE",
    "PACKET_LENGTH_TOO_LONG",
    "UNKNOWN_PROTOCOL",
    "HTTP_REQUEST",
}
"""What OpenSSL says when the peer's bytes are no TLS records at all."""

_CLIENT_CERT_REFUSED = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "it requires a client certificate: give --tls-cert "
    "and --tls-key (or FETCHQ_TLS_CERT and FETCHQ_TLS_KEY)",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "the handshake failed: it may require a client "
    "certificate (--tls-cert and --tls-key)",
    "TLSV1_ALERT_UNKNOWN_CA": "it does not trust our client certificate, which is signed "
    "by another CA than the server's --tls-ca",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "it refused our client certificate: it has expired",
    "SSLV3_ALERT_BAD_CERTIFICATE": "it refused our client certificate as bad",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "it refused our client certificate",
    "TLSV1_ALERT_DECRYPT_ERROR": "it could not verify our client certificate's signature",
}


def client_failure(where: str, exc: ssl.SSLError) -> FetchqError:
    """A failed TLS handshake (or a refusal right after it), as a client sees it."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return TLSFailed(
            f"the server at {where} showed a certificate that --tls-ca does not vouch for: "
            f"{exc.verify_message}"
        )
    reason = str(exc.reason or "")
    if reason in _NOT_TLS:
        return TLSFailed(
            f"the server at {where} does not speak TLS (start it with --tls-cert and "
            "--tls-key, or leave out --tls-ca here)"
        )
    if reason == "SSLV3_ALERT_UNEXPECTED_MESSAGE":
        return ServerUnreachable(f"the server at {where} gave up waiting for our TLS hello")
    if reason in _CLIENT_CERT_REFUSED:
        return TLSFailed(f"the server at {where} refused us: {_CLIENT_CERT_REFUSED[reason]}")
    if isinstance(exc, ssl.SSLEOFError) or reason == "UNEXPECTED_EOF_WHILE_READING":
        return ServerUnreachable(f"the server at {where} hung up during the TLS handshake")
    return TLSFailed(f"TLS with the server at {where} failed: {_reason(exc)}")


def server_failure(exc: ssl.SSLError) -> str:
    """A failed handshake, as the server logs it."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        message = str(exc.verify_message)
        if "issuer" in message:
            return "its certificate is not signed by the server's --tls-ca"
        return f"its certificate was refused: {message}"
    reason = str(exc.reason or "")
    if reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
        return "it sent no client certificate"
    if reason in _NOT_TLS:
        return "it does not speak TLS"
    if reason == "TLSV1_ALERT_UNKNOWN_CA":
        return "it does not trust this server's certificate (its --tls-ca is another CA)"
    if reason in ("SSLV3_ALERT_BAD_CERTIFICATE", "SSLV3_ALERT_CERTIFICATE_UNKNOWN"):
        return "it refused this server's certificate (does it name the host clients use?)"
    return _reason(exc)
