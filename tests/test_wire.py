"""The wire: every frame of a job is JSON, the login in both hash forms, the codec's limits."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import socket
import struct
import threading
from collections.abc import Iterator
from multiprocessing import connection as stdlib_connection
from multiprocessing.managers import BaseManager
from typing import Any

import pytest
from faults.netproxy import NetProxy
from fetchq_procs import ServerProcess, run
from hypothesis import given, settings
from hypothesis import strategies as st
from worker_scenarios import whole_job

from fetchq.config import Address, parse_address
from fetchq.errors import BadRequest, ExitCode, FetchqError, StorageFailed, VersionMismatch
from fetchq.server import validate
from fetchq.wire import transport
from fetchq.wire.api import MAX_DEPTH, MAX_INTEGER
from fetchq.wire.client import BrokerClient
from fetchq.wire.codec import JSON, BadFrame, JsonCodec, Unencodable, too_deep
from fetchq.wire.records import StoredResult

INF = float("inf")
LOGIN_FRAMES = 3
"""Frames each side sends to log in: a challenge, an answer, and a welcome."""


def frames(data: bytes) -> Iterator[bytes]:
    """Split a recorded byte stream into frames, as docs/PROTOCOL.md defines them."""
    at = 0
    while at < len(data):
        (size,) = struct.unpack_from("!i", data, at)
        at += 4
        if size == -1:
            (size,) = struct.unpack_from("!Q", data, at)
            at += 8
        assert at + size <= len(data), "a torn frame: the stream ended inside it"
        yield bytes(data[at : at + size])
        at += size


def test_every_frame_of_a_whole_job_after_login_is_json(server, env, target):
    """dispatch, worker, output and status all talk through a recording proxy; after each
    connection's login, every frame either way must be a JSON array."""
    with NetProxy(server.address, record=True) as proxy:
        env["FETCHQ_SERVER"] = proxy.address
        whole_job(env, target, "wire", 500)
        recordings = list(proxy.recordings)
    methods: set[str] = set()
    counted = 0
    for recording in recordings:
        up, down = list(frames(recording.up)), list(frames(recording.down))
        if not up and not down:
            continue
        assert down[0].startswith(b"#CHALLENGE#{sha256}"), down[0][:20]
        assert up[1].startswith(b"#CHALLENGE#{sha256}"), up[1][:20]
        assert down[1] == up[2] == b"#WELCOME#"
        for frames_, parts in ((up[LOGIN_FRAMES:], 4), (down[LOGIN_FRAMES:], 2)):
            for frame in frames_:
                assert frame[:1] == b"[", frame[:40]
                message = json.loads(frame.decode("utf-8"))
                assert isinstance(message, list) and len(message) == parts, message
                counted += 1
        for frame in up[LOGIN_FRAMES:]:
            methods.add(json.loads(frame)[1])
    wanted = {"create", "accept_connection", "hello"}
    wanted |= {"submit", "seal", "lease", "complete", "results", "status"}
    assert wanted <= methods, sorted(wanted - methods)
    assert counted > 50, counted


# -- the login, in both hash forms ---------------------------------------------------


class RawLink:
    """Frames over a bare socket, written from docs/PROTOCOL.md alone."""

    def __init__(self, address: str) -> None:
        self.sock = socket.create_connection(parse_address(address).as_tuple(), timeout=10)

    def send_bytes(self, data: bytes) -> None:
        self.sock.sendall(struct.pack("!i", len(data)) + data)

    def recv_bytes(self, maxlength: int | None = None) -> bytes:
        (size,) = struct.unpack("!i", self._exactly(4))
        return self._exactly(size)

    def _exactly(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data


def sha256_login(link: RawLink, key: bytes, digest: str = "sha256") -> bytes:
    """Python 3.12's form: answer with ``{digest}`` + HMAC, challenge with ``{sha256}``."""
    challenge = link.recv_bytes()
    assert challenge.startswith(b"#CHALLENGE#{sha256}") and len(challenge) == 11 + 8 + 40
    message = challenge[len(b"#CHALLENGE#") :]
    link.send_bytes(b"{%s}" % digest.encode() + hmac.new(key, message, digest).digest())
    verdict = link.recv_bytes()
    if verdict != b"#WELCOME#":
        return verdict
    ours = b"{sha256}" + os.urandom(40)
    link.send_bytes(b"#CHALLENGE#" + ours)
    answer = link.recv_bytes()
    assert answer == b"{sha256}" + hmac.new(key, ours, hashlib.sha256).digest()
    link.send_bytes(b"#WELCOME#")
    return verdict


def test_the_server_accepts_the_sha256_form_of_python_3_12(server, env):
    key = env["FETCHQ_AUTHKEY"].encode()
    for digest in ("sha256", "sha384", "md5"):
        link = RawLink(server.address)
        assert sha256_login(link, key, digest) == b"#WELCOME#", digest
        link.send_bytes(b'[null,"dummy",[],{}]')
        assert json.loads(link.recv_bytes()) == ["#RETURN", None]
    refused = RawLink(server.address)
    assert sha256_login(refused, b"not the key") == b"#FAILURE#"
    unknown = RawLink(server.address)
    assert sha256_login(unknown, key, "sha1") == b"#FAILURE#", "sha1 is not on the list"


def test_the_server_accepts_the_md5_form_of_python_3_11(server, env):
    """The stdlib of Python 3.11 (this one) logs in with bare HMAC-MD5 both ways."""
    key = env["FETCHQ_AUTHKEY"].encode()
    sock = socket.create_connection(parse_address(server.address).as_tuple(), timeout=10)
    sock.settimeout(None)  # the stdlib's Connection reads the bare descriptor
    conn = stdlib_connection.Connection(sock.detach())
    try:
        stdlib_connection.answer_challenge(conn, key)
        stdlib_connection.deliver_challenge(conn, key)
        conn.send_bytes(b'[null,"dummy",[],{}]')
        assert json.loads(conn.recv_bytes()) == ["#RETURN", None]
    finally:
        conn.close()


def test_an_older_pickle_server_is_a_version_mismatch(env):
    """A stock BaseManager server (as fetchq before protocol 3 was) answers in pickle: the
    client says so and never unpickles it."""

    class Plain(BaseManager):
        pass

    key = b"older-server-key"
    manager_server = Plain(address=("127.0.0.1", 0), authkey=key).get_server()
    threading.Thread(target=manager_server.serve_forever, daemon=True).start()
    host, port = manager_server.address
    with pytest.raises(VersionMismatch, match="speaks pickle, not JSON"):
        BrokerClient(Address(host, port), key).connect()
    env["FETCHQ_AUTHKEY"] = key.decode()
    result = run(env, "status", "--server", f"{host}:{port}")
    assert result.returncode == ExitCode.VERSION_MISMATCH, result.stderr
    assert result.stderr.count("\n") == 1 and "speaks pickle" in result.stderr


def test_a_server_started_with_allow_pickle_still_speaks_json_to_fetchq(env):
    server = ServerProcess(env, "--allow-pickle")
    try:
        with NetProxy(server.address, record=True) as proxy:
            client = BrokerClient(parse_address(proxy.address), env["FETCHQ_AUTHKEY"].encode())
            client.connect()
            assert client.call("queued") == 0
            client.close()
            after_login = [
                frame
                for r in proxy.recordings
                for frame in [*frames(r.up)][LOGIN_FRAMES:] + [*frames(r.down)][LOGIN_FRAMES:]
            ]
        assert len(after_login) > 5
        assert all(frame[:1] == b"[" for frame in after_login), after_login
    finally:
        server.stop()


# -- the codec -----------------------------------------------------------------------


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def test_nesting_is_bounded_and_brackets_in_strings_do_not_count():
    assert not too_deep(nested(MAX_DEPTH))
    assert too_deep(nested(MAX_DEPTH + 1))
    assert JSON.loads(nested(MAX_DEPTH)) is not None
    with pytest.raises(BadFrame, match="nested deeper"):
        JSON.loads(nested(MAX_DEPTH + 1))
    deep_with_text = b"[" * MAX_DEPTH + b'{"k": "v"}' + b"]" * MAX_DEPTH
    assert too_deep(deep_with_text), "strings inside must not hide the depth"
    assert not too_deep(b"[" * (MAX_DEPTH - 1) + b'{"k": "v"}' + b"]" * (MAX_DEPTH - 1))
    text = json.dumps(["[" * 500 + '\\"{' * 300, {"k": "]]]}}}" * 100}]).encode()
    assert JSON.loads(text)[0].startswith("[[[")
    many = json.dumps([{"id": n, "error": {"type": "x"}} for n in range(2000)]).encode()
    assert len(JSON.loads(many)) == 2000, "wide is fine: only depth is bounded"


NUMBERS = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.builds("{}e{}".format, st.integers(1, 99), st.integers(-400, 400)),
)
"""Numbers as JSON text: integers past 2**63 and exponents past a double included."""


@settings(max_examples=300, deadline=None)
@given(number=NUMBERS, text=st.text(alphabet="0123456789.eE-", max_size=30))
def test_numbers_are_refused_exactly_when_out_of_range(number, text):
    """Beside a result's usual fields, and a string that looks like a number."""
    fields = json.dumps({"id": 2**52, "elapsed": 0.0011479129989311332, "url": text})
    frame = f"[{fields}, {number}]".encode()
    value = json.loads(number)
    if (isinstance(value, int) and abs(value) > MAX_INTEGER) or value in (INF, -INF):
        with pytest.raises(BadFrame, match="out of range"):
            JSON.loads(frame)
    else:
        assert JSON.loads(frame)[1] == value


@pytest.mark.parametrize(
    ("value", "ok"),
    [(MAX_INTEGER, True), (-MAX_INTEGER, True), (MAX_INTEGER + 1, False), (10**30, False)],
)
def test_integers_are_bounded(value, ok):
    frame = f"[{value}]".encode()
    if ok:
        assert JSON.loads(frame) == [value]
    else:
        with pytest.raises(BadFrame, match="out of range"):
            JSON.loads(frame)


def test_numbers_json_has_no_words_for_are_refused_both_ways():
    for frame in (b"[1e400]", b"[-1e400]", b"[NaN]", b"[Infinity]"):
        with pytest.raises(BadFrame):
            JSON.loads(frame)
    with pytest.raises(Unencodable):
        JSON.dumps([float("nan")])


def test_errors_cross_as_a_name_and_a_message():
    from fetchq.errors import from_wire

    wire: Any = json.loads(JSON.dumps(["#ERROR", BadRequest("urls must be a list")]))
    assert wire == ["#ERROR", {"name": "BadRequest", "message": "urls must be a list"}]
    assert type(from_wire(wire[1])) is BadRequest
    assert type(from_wire({"name": "StorageFailed", "message": "disk full"})) is StorageFailed
    unknown = from_wire({"name": "KeyError", "message": "'x'"})
    assert type(unknown) is FetchqError and "KeyError" in str(unknown)


def depth_of(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((depth_of(item) for item in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth_of(item) for item in value.values()), default=0)
    return 0


TRICKY_TEXT = st.text(alphabet=st.sampled_from(["[", "]", "{", "}", '"', "\\", "\n", "a", "é"]))


@settings(max_examples=300, deadline=None)
@given(
    value=st.recursive(
        TRICKY_TEXT | st.integers() | st.none(),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TRICKY_TEXT, inner, max_size=3),
        max_leaves=60,
    ),
    ascii_only=st.booleans(),
    keys=st.lists(TRICKY_TEXT | st.none(), min_size=MAX_DEPTH + 2, max_size=MAX_DEPTH + 2),
    offset=st.integers(-2, 2),
)
def test_the_depth_check_agrees_with_the_parsed_depth(value, ascii_only, keys, offset):
    """Brackets, quotes and backslashes inside strings never fool the byte-level check.

    The value is nested further to a depth right around the limit: in an array for
    each None in ``keys``, else in an object under that (tricky) key."""
    for key in keys[: max(0, MAX_DEPTH - depth_of(value) + offset)]:
        value = [value] if key is None else {key: value}
    frame = json.dumps(value, ensure_ascii=ascii_only).encode()
    assert too_deep(frame) == (depth_of(value) > MAX_DEPTH)


# -- results kept as their text: what the server keeps is bounded and one line ----------


def _complete_frame(result: str) -> bytes:
    return f'["i","complete",["w",[{result}],[]],{{}}]'.encode()


def _stored(frame: bytes) -> StoredResult:
    (stored,) = validate.results_list(JSON.loads(frame)[2][1])
    return stored


def test_a_result_with_a_newline_between_its_tokens_is_kept_on_one_line() -> None:
    """The journal holds one event a line: a result is not kept as it came when that
    text spans lines (JSON allows a newline between tokens)."""
    stored = _stored(_complete_frame('{"id":5,\n"job":"j","ok":true}'))
    assert b"\n" not in stored.raw and stored.record == {"id": 5, "job": "j", "ok": True}


def test_a_result_padded_past_its_text_limit_is_kept_compact() -> None:
    """Spaces or digits a worker pads a result with are not what the server keeps: the
    text limit bounds what it stores."""
    padded = _stored(_complete_frame('{"id":5,"job":"j","ok":true' + " " * 100_000 + "}"))
    digits = _stored(_complete_frame('{"id":5,"elapsed":1.' + "0" * 100_000 + "1}"))
    assert padded.raw == b'{"id":5,"job":"j","ok":true}'
    assert len(digits.raw) < 40 and digits.record["elapsed"] == 1.0


def test_an_integer_past_the_limit_in_a_number_field_is_refused() -> None:
    """The fast path reads ``elapsed`` as a float, which would take any integer: one
    past 2**63 - 1 goes the checked way and is refused, as everywhere else."""
    with pytest.raises(BadFrame, match="out of range"):
        JSON.loads(_complete_frame('{"id":5,"elapsed":' + "9" * 300 + "}"))


def test_a_result_holding_a_lone_surrogate_is_still_sent() -> None:
    """A worker's report is written by msgspec, which cannot write a lone surrogate (an
    exception's message may hold one): that report is written as the json module
    writes it, with an escape, rather than refused on the worker's side."""
    result = {"id": 5, "job": "j", "ok": False, "error": {"type": "other", "message": "a \ud800"}}
    frame = JsonCodec(strict=False).dumps(("ident", "complete", ("w", [result], []), {}))
    assert b"\\ud800" in frame
    assert JSON.loads(frame)[2][1] == [result]


class _Trickle:
    """A socket that takes a gathering write only in part, as the kernel may when its
    buffer fills: what is written must still be the frame, whole and in order."""

    def __init__(self, takes: int) -> None:
        self.takes = takes
        self.written = bytearray()

    def sendmsg(self, buffers: list[bytes]) -> int:
        taken = b"".join(buffers)[: self.takes]
        self.written += taken
        return len(taken)

    def sendall(self, data: bytes) -> None:
        self.written += data


@pytest.mark.parametrize("takes", [2, 4 + 10, 4 + 40_000], ids=["header", "some", "nearly all"])
def test_a_large_frame_written_in_part_is_finished_in_order(takes: int) -> None:
    frame = os.urandom(40_001)
    sock = _Trickle(takes)
    transport.Connection(sock, None).send_bytes(frame)  # type: ignore[arg-type]
    assert bytes(sock.written) == struct.pack("!i", len(frame)) + frame
