"""Hostile peers that hold the key: whatever they send, nothing runs and nobody else notices.

Each test logs in with the right key, as a peer on the path or a rogue client
could, and sends frames no fetchq client sends.  Every one is refused with a
JSON error reply (a name and a message), the server runs nothing, keeps
serving everyone else, and ends with the threads and descriptors it started
with.
"""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path
from typing import Any

import pytest
from checker import wait_for_baseline

from fetchq.config import parse_address
from fetchq.wire.api import MAX_DEPTH, MAX_FRAME
from fetchq.wire.transport import NoReply, open_connection


class FileMaker:
    """Unpickling this creates a file: the classic proof that a pickle runs code."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


class Peer:
    """A logged-in connection that sends raw frames and reads raw replies."""

    def __init__(self, address: str, key: str) -> None:
        self.conn = open_connection(parse_address(address).as_tuple(), authkey=key.encode())

    def send(self, frame: bytes) -> None:
        self.conn.send_bytes(frame)

    def call(self, message: Any) -> list[Any]:
        self.send(json.dumps(message).encode())
        return self.reply()

    def reply(self) -> list[Any]:
        frame = self.conn.recv_bytes()
        assert frame[:1] in (b"[", b"{"), f"a reply that is not JSON: {frame[:40]!r}"
        reply = json.loads(frame)
        assert isinstance(reply, list) and len(reply) == 2, reply
        return reply

    def refused(self, frame: bytes) -> str:
        """Send ``frame``; the reply must be an error with a name and a message."""
        self.send(frame)
        kind, error = self.reply()
        assert kind == "#ERROR", (frame[:60], kind, error)
        assert set(error) == {"name", "message"} and error["message"], error
        return str(error["message"])

    def is_closed(self) -> bool:
        """The server hung up (a frame or silence within 5 s means it did not)."""
        self.conn.settimeout(5)
        try:
            self.conn.recv_bytes()
        except NoReply:
            return False
        except (EOFError, ConnectionError):
            return True
        return False

    def close(self) -> None:
        self.conn.close()


def broker_ident(address: str, key: str) -> str:
    peer = Peer(address, key)
    kind, (ident, exposed) = peer.call([None, "create", ["broker"], {}])
    peer.close()
    assert kind == "#RETURN" and "lease" in exposed
    return str(ident)


def session(address: str, key: str) -> Peer:
    """A connection past accept_connection: the server's serve loop reads it from now on."""
    peer = Peer(address, key)
    assert peer.call([None, "accept_connection", ["hostile"], {}]) == ["#RETURN", None]
    return peer


def test_a_pickle_that_would_create_a_file_runs_nothing(cluster, tmp_path):
    fq = cluster()
    key, address = fq.env["FETCHQ_AUTHKEY"], fq.server.address
    proof = tmp_path / "pickle-ran"
    payload = pickle.dumps(FileMaker(proof))
    assert payload[0] == 0x80

    # As the first frame after the login: refused, said once, and the connection ends.
    first = Peer(address, key)
    assert "refuses pickle" in first.refused(payload)
    assert first.is_closed()
    fq.server.log.wait_for(r"refused a pickle from 127\.0\.0\.1:\d+")

    # Inside a session that began in JSON: refused, and the session goes on.
    ident = broker_ident(address, key)
    peer = session(address, key)
    assert "nothing is unpickled" in peer.refused(payload)
    assert peer.call([ident, "queued", [], {}]) == ["#RETURN", 0]
    peer.close()

    assert not proof.exists(), "the server unpickled the payload"
    assert fq.client.call("queued") == 0
    wait_for_baseline(fq.client, fq.baseline)


DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize(
    ("what", "frame", "phrase"),
    [
        ("garbage bytes", bytes([1, 250, 7, 0, 33, 254]) * 50, "not UTF-8"),
        ("not JSON", b"hello, server", "not JSON"),
        ("truncated JSON", b'["abc", "lease", [', "not JSON"),
        ("not UTF-8", b'["\xff\xfe", "lease", [], {}]', "not UTF-8"),
        ("very deep nesting", DEEP, f"nested deeper than {MAX_DEPTH}"),
        ("just too deep", b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), "nested deeper"),
        ("a huge integer", b'["x", "lease", ["w", ' + b"9" * 5000 + b", 1], {}]", "not JSON"),
        ("an integer past 64 bits", b'["x", "lease", ["w", 18446744073709551616, 1], {}]', "range"),
        ("a number past a double", b'["x", "lease", ["w", 1, 1e999], {}]', "range"),
        ("NaN", b'["x", "lease", ["w", 1, NaN], {}]', "not a JSON value"),
        ("a request that is no array", b'{"method": "lease"}', "a request is [ident"),
        ("a request of three parts", b'["x", "lease", []]', "a request is [ident"),
    ],
)
def test_unreadable_frames_are_refused_and_the_session_goes_on(cluster, what, frame, phrase):
    fq = cluster()
    key, address = fq.env["FETCHQ_AUTHKEY"], fq.server.address
    ident = broker_ident(address, key)
    peer = session(address, key)
    for _ in range(3):  # again and again, on the same connection
        assert phrase in peer.refused(frame), what
        assert peer.call([ident, "queued", [], {}]) == ["#RETURN", 0], what
    peer.close()
    # The same frame as the first one after a login: refused, then the connection ends.
    first = Peer(address, key)
    first.refused(frame)
    assert first.is_closed(), what
    assert fq.client.call("queued") == 0
    wait_for_baseline(fq.client, fq.baseline)


@pytest.mark.parametrize(
    ("what", "header"),
    [
        ("a length just past the limit", struct.pack("!i", MAX_FRAME + 1)),
        ("the largest 4-byte length", struct.pack("!i", 0x7FFFFFFF)),
        ("a large-form length of a terabyte", struct.pack("!iQ", -1, 1 << 40)),
        ("a negative length", struct.pack("!i", -5)),
    ],
)
def test_oversized_frames_are_refused_unread(cluster, what, header):
    """The length alone is refused: the server reads (and reserves) nothing of the body.

    (Only the header is sent: a server that hangs up on unread bytes resets the
    connection, and the reset can overtake its error reply.)"""
    fq = cluster()
    key, address = fq.env["FETCHQ_AUTHKEY"], fq.server.address
    for peer in (Peer(address, key), session(address, key)):
        peer.conn._sock.sendall(header)
        kind, error = peer.reply()
        assert kind == "#ERROR" and "frame of" in error["message"], (what, error)
        assert peer.is_closed(), what
    assert fq.client.call("queued") == 0
    wait_for_baseline(fq.client, fq.baseline)


def test_unknown_methods_and_wrong_arguments_get_errors(cluster):
    fq = cluster()
    key, address = fq.env["FETCHQ_AUTHKEY"], fq.server.address
    ident = broker_ident(address, key)
    # The manager's own calls: only the public ones, never shutdown or debug_info.
    for first in (
        [None, "shutdown", [], {}],
        [None, "debug_info", [], {}],
        [None, "_handle_request", [], {}],
        [None, "create", ["no-such-type"], {}],
        [None, "create", [["broker"]], {}],
        [None, "decref", ["not-an-object"], {}],
        [None, "incref", [{"a": 1}], {}],
        [None, "accept_connection", [], {}],
        ["x", 7, [], {}],
    ):
        peer = Peer(address, key)
        kind, error = peer.call(first)
        assert kind == "#ERROR" and error["message"], (first, error)
        peer.close()
    # No client can take the broker away from the others by releasing it.
    for _ in range(5):
        peer = Peer(address, key)
        assert peer.call([None, "decref", [ident], {}]) == ["#RETURN", None]
        peer.close()

    peer = session(address, key)
    bad_calls = {
        "an unknown method": ([ident, "no_such_method", [], {}], "not a method"),
        "a private method": ([ident, "_lease_locked", ["w", 1], {}], "not a method"),
        "a dunder": ([ident, "__init__", [], {}], "not a method"),
        "an unknown object": (["deadbeef", "lease", ["w", 1, 0], {}], "no object"),
        "a non-string method": ([ident, ["lease"], [], {}], "method is a string"),
        "args not an array": ([ident, "lease", "w", {}], "args are an array"),
        "a string count": ([ident, "lease", ["w", "ten", 0], {}], "must be an integer"),
        "a boolean count": ([ident, "lease", ["w", True, 0], {}], "must be an integer"),
        "a count out of range": ([ident, "lease", ["w", 10**12, 0], {}], "between"),
        "a wait out of range": ([ident, "lease", ["w", 1, 1e300], {}], "between"),
        "a submit of a list": ([ident, "submit", [["http://127.0.0.1/"]], {}], "takes a dict"),
        "urls not strings": ([ident, "submit", [{"job": "j", "urls": [1, 2]}], {}], "strings"),
        "a bad job name": ([ident, "job", [{"$ne": 1}], {}], "invalid job name"),
        "too many arguments": ([ident, "queued", [1, 2, 3], {}], "argument"),
        "an unknown keyword": ([ident, "queued", [], {"evil": 1}], "argument"),
        "results of the wrong shape": ([ident, "complete", ["w", [[1]], []], {}], "dict"),
        "a renewal of the wrong shape": ([ident, "complete", ["w", [], [["a", 1]]], {}], "lease"),
    }
    for what, (message, phrase) in bad_calls.items():
        kind, error = peer.call(message)
        assert kind == "#ERROR", (what, error)
        assert phrase in error["message"], (what, error)
        assert peer.call([ident, "queued", [], {}]) == ["#RETURN", 0], what
    names = {peer.call(message)[1]["name"] for message, _ in bad_calls.values()}
    assert "BadRequest" in names and "TypeError" in names
    peer.close()
    assert fq.client.call("queued") == 0
    wait_for_baseline(fq.client, fq.baseline)
