"""The login both sides run on a new connection: the stdlib's HMAC challenge, both forms.

Each side proves it holds the authkey without sending it: the server sends a
challenge, the client answers with an HMAC of it, then the roles swap.  Python
3.11 and older answer with a bare HMAC-MD5; Python 3.12 and newer send and
accept a ``{digest}`` prefix naming the hash (``{sha256}`` by default).  fetchq
sends the prefixed form and accepts both, so stock managers of either age can
log in, and so can fetchq clients in other languages (docs/PROTOCOL.md).
"""

from __future__ import annotations

import hmac
import os
from multiprocessing import AuthenticationError
from typing import Protocol

CHALLENGE = b"#CHALLENGE#"
WELCOME = b"#WELCOME#"
FAILURE = b"#FAILURE#"

DIGEST = "sha256"
"""The hash fetchq asks for in the challenges it sends."""

ALLOWED_DIGESTS = frozenset({"md5", "sha256", "sha384", "sha3_256", "sha3_384"})
"""Hashes a peer may name in a ``{digest}`` prefix: the set Python 3.12 accepts."""

NONCE_BYTES = 40
"""Random bytes after the ``{sha256}`` prefix (Python 3.12 sends as many)."""

LEGACY_CHALLENGE = 20
"""Length of an unprefixed challenge (Python 3.11 and older): answered with bare MD5."""

LEGACY_RESPONSE = 16
"""Length of a bare HMAC-MD5 answer."""

MAX_LOGIN_FRAME = 256
"""Largest frame either side reads during the login."""


class FrameLink(Protocol):
    def send_bytes(self, data: bytes) -> None: ...

    def recv_bytes(self, maxlength: int | None = None) -> bytes: ...


def _split(message: bytes) -> tuple[str, bytes]:
    """``(digest name, mac)`` of an answer; a bare 16-byte answer is MD5."""
    if len(message) in (LEGACY_CHALLENGE, LEGACY_RESPONSE):
        return "", message
    if message.startswith(b"{"):
        end = message.find(b"}", 1, 12)
        name = message[1:end].decode("ascii", "replace") if end > 0 else ""
        if name in ALLOWED_DIGESTS:
            return name, message[end + 1 :]
    raise AuthenticationError("the peer's login message names no hash fetchq accepts")


def response_to(challenge: bytes, authkey: bytes) -> bytes:
    """The answer to a challenge (``#CHALLENGE#`` already stripped).

    The HMAC covers the whole challenge, its ``{digest}`` prefix included,
    so a peer cannot be talked down to a weaker hash."""
    name, _ = _split(challenge)
    if not name:
        return hmac.new(authkey, challenge, "md5").digest()
    mac = hmac.new(authkey, challenge, name).digest()
    return b"{" + name.encode("ascii") + b"}" + mac


def is_valid_response(challenge: bytes, response: bytes, authkey: bytes) -> bool:
    """Whether ``response`` answers our ``challenge``: bare MD5 or any allowed ``{digest}``."""
    try:
        name, mac = _split(response)
    except AuthenticationError:
        return False
    expected = hmac.new(authkey, challenge, name or "md5").digest()
    return hmac.compare_digest(expected, mac)


def greet(link: FrameLink) -> bytes:
    """Send the peer a fresh challenge; returns it, for ``deliver_challenge``."""
    challenge = b"{" + DIGEST.encode("ascii") + b"}" + os.urandom(NONCE_BYTES)
    link.send_bytes(CHALLENGE + challenge)
    return challenge


def deliver_challenge(link: FrameLink, authkey: bytes, greeted: bytes | None = None) -> None:
    """Challenge the peer (``greeted``: the challenge ``greet`` already sent it); raises
    AuthenticationError (after telling it) if it fails."""
    challenge = greet(link) if greeted is None else greeted
    response = link.recv_bytes(MAX_LOGIN_FRAME)
    if not is_valid_response(challenge, response, authkey):
        link.send_bytes(FAILURE)
        raise AuthenticationError("the peer's answer to our challenge was wrong")
    link.send_bytes(WELCOME)


def answer_challenge(link: FrameLink, authkey: bytes) -> None:
    """Answer the peer's challenge; raises AuthenticationError if it refuses the answer."""
    message = link.recv_bytes(MAX_LOGIN_FRAME)
    if not message.startswith(CHALLENGE) or len(message) < len(CHALLENGE) + LEGACY_CHALLENGE:
        raise AssertionError("the peer did not start with a login challenge")
    link.send_bytes(response_to(message[len(CHALLENGE) :], authkey))
    if link.recv_bytes(MAX_LOGIN_FRAME) != WELCOME:
        raise AuthenticationError("the peer rejected our answer to its challenge")
