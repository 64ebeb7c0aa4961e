"""What a frame's bytes mean: JSON by default, pickle only where it was allowed.

The server reads every frame through the strict JSON codec, which refuses what
could hurt it before or while parsing (deep nesting, huge integers, a pickle
sent where JSON is expected); clients read replies through the lenient one.
Nothing here touches a socket: the transport frames, this decodes.

The messages that carry a fleet's work, one per task (a worker's ``complete``,
the server's replies to ``lease`` and ``results``), are read and written by
msgspec, in C: a ``complete`` is checked against its schema while it is decoded,
and each result's JSON text is kept as it came, so the server hands it on to an
output without building it again.  Every other message goes through the json
module, with the checks below.
"""

from __future__ import annotations

import json
import math
import operator
import pickle
import re
from multiprocessing import managers
from multiprocessing.reduction import ForkingPickler
from typing import Annotated, Any, Literal, Protocol

import msgspec

from fetchq.errors import to_wire
from fetchq.wire.aggregates import Aggregate, StoredAggregate
from fetchq.wire.api import MAX_DEPTH, MAX_INTEGER, MAX_SUBMIT
from fetchq.wire.records import ResultHead, StoredResult

PICKLE_OPCODE = 0x80
"""The first byte of every pickle since protocol 2: how a pickle frame is told apart."""


class WireError(Exception):
    """A frame this side will not read."""


class BadFrame(WireError):
    """A whole frame that is not a message this side reads: the stream can go on."""


class PickleRefused(WireError):
    """A pickle arrived and pickle is not allowed here: it was not unpickled."""


class Unencodable(WireError):
    """A reply that cannot be put on the wire as JSON."""


class Codec(Protocol):
    name: str

    def dumps(self, obj: Any) -> bytes: ...

    def loads(self, frame: bytes) -> Any: ...


# -- the JSON codec -------------------------------------------------------------


def _encode_other(obj: Any) -> Any:
    """What JSON has no type for: errors become data, a manager Token a small object."""
    if isinstance(obj, StoredResult):
        return obj.record
    if isinstance(obj, BaseException):
        return to_wire(obj)
    if isinstance(obj, managers.Token):
        address = list(obj.address) if isinstance(obj.address, tuple) else obj.address
        return {"typeid": obj.typeid, "address": address, "id": obj.id}
    if isinstance(obj, set | frozenset):
        return sorted(obj)
    raise TypeError(f"a {type(obj).__name__} cannot cross the wire")


def _bounded_int(text: str) -> int:
    value = int(text)
    if not -MAX_INTEGER <= value <= MAX_INTEGER:
        raise ValueError(f"integer {text[:20]}... out of range (at most 2**63 - 1)")
    return value


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} out of range")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


_STRUCTURE = b'[]{}"'
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in _STRUCTURE)
_EMPTY_PAIR = re.compile(rb"\[\]|\{\}")


def too_deep(frame: bytes) -> bool:
    """Whether ``frame`` nests arrays and objects deeper than MAX_DEPTH.

    Checked on the bytes before parsing, in C-speed passes: a frame with few
    brackets (a submit of 10,000 URLs has five) is never scanned.  Otherwise
    escaped backslashes and quotes are dropped (so the quotes left alternate,
    opening and closing strings) and only brackets and quotes are kept.  Where
    no string holds a bracket, dropping each ``""`` leaves just the brackets
    outside strings; where one does, a quote is left over, and splitting at
    the quotes leaves those brackets at the even places instead.  Then
    innermost ``[]`` and ``{}`` pairs are removed, one level per pass."""
    if frame.count(b"[") + frame.count(b"{") <= MAX_DEPTH:
        return False
    if b"\\" in frame:
        frame = frame.replace(b"\\\\", b"").replace(b'\\"', b"")
    shape = frame.translate(None, _NOT_STRUCTURE)
    skeleton = shape.replace(b'""', b"")  # strings with no brackets in them, the usual case
    if b'"' in skeleton:  # some string holds brackets: drop every string's inside
        skeleton = b"".join(shape.split(b'"')[::2])
    for _ in range(MAX_DEPTH):
        skeleton, removed = _EMPTY_PAIR.subn(b"", skeleton)
        if not skeleton or not removed:
            return False  # balanced within the limit, or malformed: the parser says so
    return bool(skeleton)


def _number_shape(byte: int) -> int:
    if 0x30 <= byte <= 0x39:
        return 0x30  # every digit as 0
    if byte in b".eE":
        return byte | 0x20  # "." stays, the exponent's E as e
    return 0x20  # everything else as a space


_NUMBER_SHAPES = bytes(_number_shape(byte) for byte in range(256))
_LONG_INTEGER = b" " + b"0" * len(str(MAX_INTEGER))
"""A run of digits as long as 2**63 that is not a fraction: an integer to check."""
_EXPONENT = b"0e"
"""A digit before an exponent: a float that may overflow to infinity."""


def _needs_number_checks(frame: bytes) -> bool:
    """Whether ``frame`` may hold an integer past MAX_INTEGER or a float past a double.

    Found in C, on the frame's digits: a result's floats (whose fractions run to
    19 digits) and 16-digit ids need no check, and the hooks that do the check
    cost more than the rest of the decoding.  A string that merely looks like
    such a number only costs the slower, checked decoding."""
    shapes = frame.translate(_NUMBER_SHAPES)
    return _LONG_INTEGER in shapes or _EXPONENT in shapes


# -- the messages of every task, in C ----------------------------------------------------


def _encode_fast(obj: Any) -> Any:
    """A stored result is its JSON text; the rest as ``_encode_other`` says."""
    if isinstance(obj, StoredResult):
        return msgspec.Raw(obj.raw)
    return _encode_other(obj)


_FAST = msgspec.json.Encoder(enc_hook=_encode_fast)
"""msgspec writes a NaN as null where the json module refuses it: it writes only the
messages whose numbers are finite by construction (clocks, counts, and numbers that
were checked when they arrived)."""


_raw_of = operator.attrgetter("raw")


def _with_texts(obj: Any) -> Any:
    """A delivery reply whose results are all stored ones, with the results' texts
    joined into one array in C rather than handed to ``_encode_fast`` one by one."""
    if type(obj) is tuple and type(obj[1]) is dict:
        results = obj[1].get("results")
        if type(results) is list and set(map(type, results)) <= {StoredResult}:
            joined = b"[" + b",".join(map(_raw_of, results)) + b"]"
            return (obj[0], {**obj[1], "results": msgspec.Raw(joined)})
    return obj


def _fast_message(obj: Any) -> bool:
    """A task's messages: the server's reply to ``lease`` (a list of tasks) or to
    ``results`` (a delivery), and a worker's ``complete``."""
    kind = type(obj)
    if kind is tuple and len(obj) == 2 and obj[0] == "#RETURN":
        value = obj[1]
        return type(value) is list or (type(value) is dict and "results" in value)
    # A client sends its calls as tuples (``BrokerClient``), a test may send lists.
    return (kind is tuple or kind is list) and len(obj) == 4 and obj[1] == "complete"


class _CompleteArgs(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    """``complete(worker, results, renew)`` with results as fetchq's workers send them."""

    worker: str
    results: Annotated[list[ResultHead], msgspec.Meta(max_length=MAX_SUBMIT)]
    renew: Annotated[list[tuple[int, int]], msgspec.Meta(max_length=MAX_SUBMIT)] = msgspec.field(
        default_factory=list
    )


class _CompleteTexts(msgspec.Struct, array_like=True):
    """The same arguments, each result kept as its JSON text."""

    worker: msgspec.Raw
    results: list[msgspec.Raw]
    renew: msgspec.Raw = msgspec.Raw(b"[]")


class _CompleteCall(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    """``[ident, "complete", args, {}]``: a worker's complete call, as its client sends it."""

    ident: str | None
    method: Literal["complete"]
    args: _CompleteArgs
    kwds: Annotated[dict[str, Any], msgspec.Meta(max_length=0)]


class _CompleteCallTexts(msgspec.Struct, array_like=True):
    """The same call, its results as their JSON text."""

    ident: msgspec.Raw
    method: msgspec.Raw
    args: _CompleteTexts
    kwds: msgspec.Raw


_complete_call = msgspec.json.Decoder(_CompleteCall)
_complete_texts = msgspec.json.Decoder(_CompleteCallTexts)
_COMPLETE = b',"complete",'
_COMPLETE_WINDOW = 80
"""Where a complete call names its method: after an ident of a few dozen characters."""
_AGGREGATE_KIND = b'"kind":"aggregate"'
_FIRST_RESULT_WINDOW = 400
"""Where the first result of a complete call says its kind, when it has one: after the
call's method, the worker's name and the result's version."""


def _read_complete(frame: bytes) -> list[Any] | None:
    """A ``complete`` request decoded against its schema, each result as its JSON text
    and its fields; None when the frame is no such request or its results are not as
    fetchq's workers send them (the general reading then takes it, and says what is
    wrong if anything is).  Two passes in C: one checks and reads the fields, the
    other cuts out each result's text."""
    if _COMPLETE not in frame[:_COMPLETE_WINDOW]:
        return None
    if _AGGREGATE_KIND in frame[:_FIRST_RESULT_WINDOW]:  # aggregates: ``_read_aggregates``
        return None
    if b"\n" in frame:  # a result's text is kept as it came, and a journal line holds one
        return None
    try:
        call = _complete_call.decode(frame)
        texts = _complete_texts.decode(frame).args.results
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None
    args = call.args
    results = [
        StoredResult(bytes(text), head) for text, head in zip(texts, args.results, strict=True)
    ]
    renew = [list(pair) for pair in args.renew]
    return [call.ident, "complete", [args.worker, results, renew], {}]


class _AggregateArgs(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    """``complete(worker, aggregates, renew)``: a worker's call that reports spans."""

    worker: str
    results: Annotated[list[Aggregate], msgspec.Meta(max_length=MAX_SUBMIT)]
    renew: Annotated[list[tuple[int, int]], msgspec.Meta(max_length=MAX_SUBMIT)] = msgspec.field(
        default_factory=list
    )


class _AggregateCall(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    ident: str | None
    method: Literal["complete"]
    args: _AggregateArgs
    kwds: Annotated[dict[str, Any], msgspec.Meta(max_length=0)]


_aggregate_call = msgspec.json.Decoder(_AggregateCall)


def _read_aggregates(frame: bytes) -> list[Any] | None:
    """A ``complete`` that reports aggregates only, decoded against their schema in C,
    each kept as its JSON text with its fields (as ``_read_complete`` keeps results);
    None when the frame is no such call, and the general reading says what is wrong."""
    if _AGGREGATE_KIND not in frame or _COMPLETE not in frame[:_COMPLETE_WINDOW]:
        return None
    if b"\n" in frame:  # as in ``_read_complete``
        return None
    try:
        call = _aggregate_call.decode(frame)
        texts = _complete_texts.decode(frame).args.results
        results = [
            StoredAggregate.checked(bytes(text), record)
            for text, record in zip(texts, call.args.results, strict=True)
        ]
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError, RecursionError):
        return None
    renew = [list(pair) for pair in call.args.renew]
    return [call.ident, "complete", [call.args.worker, results, renew], {}]


class JsonCodec:
    """JSON in UTF-8 (the task messages as it is, others as ASCII), compact, no NaN;
    when ``strict``, as the server reads what clients send, numbers bounded and
    nesting at most MAX_DEPTH.

    A client reads the server's replies without those checks: the server sends
    back only what it accepted, and the checks cost an output reading a
    million results more than the decoding itself.  Deep nesting still ends
    in RecursionError, refused like any unreadable frame.

    Both directions call the json module's C encoder and scanner directly: a
    broker call is a few dozen bytes, and building a Python encoder (or
    matching whitespace) for each one would cost more than the encoding."""

    name = "json"

    def __init__(self, *, strict: bool = True) -> None:
        self.strict = strict
        # ASCII out (other characters as \u escapes): any string can be sent, even one
        # holding a lone surrogate that arrived as an escape, so no reply is unsendable.
        encoder = json.JSONEncoder(
            ensure_ascii=True, allow_nan=False, separators=(",", ":"), default=_encode_other
        )
        self._decoder = json.JSONDecoder(parse_constant=_no_constant)
        self._checked = json.JSONDecoder(
            parse_int=_bounded_int, parse_float=_finite_float, parse_constant=_no_constant
        )
        make = getattr(json.encoder, "c_make_encoder", None)
        self._encode_chunks: Any = None
        if make is not None:  # the arguments of iterencode(_one_shot=True), made once
            self._encode_chunks = make(
                {},
                _encode_other,
                json.encoder.c_encode_basestring_ascii,  # type: ignore[attr-defined]
                None,
                ":",
                ",",
                False,
                False,
                False,
            )
        self._encoder = encoder

    def dumps(self, obj: Any) -> bytes:
        try:
            if _fast_message(obj):
                try:
                    return _FAST.encode(_with_texts(obj))
                except UnicodeEncodeError:
                    pass  # a lone surrogate: the json module below writes it as an escape
            if self._encode_chunks is None:
                return self._encoder.encode(obj).encode("ascii")
            return "".join(self._encode_chunks(obj, 0)).encode("ascii")
        except (TypeError, ValueError, RecursionError, msgspec.EncodeError) as exc:
            raise Unencodable(f"cannot send as JSON: {exc}") from None

    def loads(self, frame: bytes) -> Any:
        if frame[:1] == bytes([PICKLE_OPCODE]):
            raise BadFrame("a pickle: this connection reads JSON only, and nothing is unpickled")
        if not self.strict:
            try:
                return _LENIENT.decode(frame)
            except (msgspec.DecodeError, RecursionError) as exc:
                raise BadFrame(f"not JSON: {str(exc)[:200]}") from None
        complete = _read_complete(frame)
        if complete is not None:
            return complete
        reported = _read_aggregates(frame)
        if reported is not None:
            return reported
        if too_deep(frame):
            raise BadFrame(f"nested deeper than {MAX_DEPTH} levels")
        try:
            text = frame.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadFrame(f"not UTF-8 text (byte {exc.start})") from None
        # Numbers are checked by a hook per number, so the hooks run only on a frame
        # that may hold a number out of range.
        checked = self.strict and _needs_number_checks(frame)
        decoder = self._checked if checked else self._decoder
        try:
            try:
                value, end = decoder.scan_once(text, 0)  # type: ignore[attr-defined]
            except StopIteration:  # not a value at its first byte (leading space?)
                return decoder.decode(text)
            if end != len(text) and text[end:].strip():
                raise ValueError(f"extra data at character {end}")
            return value
        except (ValueError, RecursionError) as exc:
            raise BadFrame(f"not JSON: {str(exc)[:200]}") from None


class PickleCodec:
    """The stock manager wire, for classic clients of a server run with ``--allow-pickle``."""

    name = "pickle"

    def dumps(self, obj: Any) -> bytes:
        try:
            return bytes(ForkingPickler.dumps(obj))
        except Exception as exc:
            raise Unencodable(f"cannot pickle the reply: {exc}") from None

    def loads(self, frame: bytes) -> Any:
        try:
            return pickle.loads(frame)
        except Exception as exc:
            raise BadFrame(f"not a pickle: {str(exc)[:200]}") from None


_LENIENT = msgspec.json.Decoder()

JSON = JsonCodec()
"""What the server reads (and what every side writes)."""
JSON_REPLIES = JsonCodec(strict=False)
"""How a client reads the server's replies."""
PICKLE = PickleCodec()
