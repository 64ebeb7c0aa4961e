"""The server's journal: an append-only log of what it acknowledged, for restarts.

Why a log of JSON lines rather than SQLite: every change the broker makes is
already a batch (a submit of 10,000 URLs, a report of 500 results), so one
appended line per batch is the cheapest durable write there is, replay is a
single sequential read, and the file can be read with ``jq`` when something
looks wrong.  What the log does not need (queries, updates in place) is
what a database would add.  Compaction rewrites the live state (tasks not yet
done, results not yet confirmed, job counters) to a new file and renames it
over the old one, so the log stays proportional to what the server holds.
While it writes, the server goes on: events from the moment the state was
captured go to a segment file beside the journal (``fetchq.journal.1``,
``.2``...); the journal's header names the last segment it holds, and a
replay reads the journal, then the segments after that one.

The broker writes a call's events before it changes anything (write-ahead):
when a write fails (a full disk, EIO, a file size limit) the bytes that did
reach the file are cut off again and the call fails with nothing changed, so
a client that retries is never told "duplicate" about a batch the disk never
got.  The server says once what is wrong, and once when writes work again.

Durability: events reach the operating system before the broker replies to
the call that caused them, so a killed server process loses nothing.
Submissions are also fsynced before their reply (an acknowledged task
survives a power cut too); everything else is fsynced by the server's
housekeeping twice a second.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import os
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import msgspec

from fetchq.errors import ConfigError, StorageFailed
from fetchq.messages import say
from fetchq.wire.records import StoredResult

FORMAT = "fetchq-journal"
FORMAT_VERSION = 3
"""2: job counters renamed (``delivered`` is now ``confirmed``).
3: the event ``finish`` is ``seal`` (as the wire call), and leases on limited hosts are
journaled (``lease``, ``release``).  Versions 1 and 2 still read; their events are listed
in ``events``."""
READABLE_VERSIONS = (1, 2, 3)
COMPACT_MIN_BYTES = 64 << 20
"""A journal smaller than this is never compacted while running."""
COMPACT_GROWTH = 4
"""Compact once the file is this many times its size after the last compaction."""


class Segment(NamedTuple):
    """The file written to before ``start_segment``: its descriptor, number and the
    journal's size then."""

    fd: int
    number: int
    size: int


class Journal:
    """``write`` hands events to the OS (all or none of them), ``sync`` to the disk."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._guard = _lock_exclusively(self.path.with_name(self.path.name + ".lock"))
        self._fd: int | None = None
        self._offset = 0
        """Bytes of whole events in the file written to: where a failed write is cut
        back to."""
        self._size = 0
        """Bytes of the journal and its segments, for ``wants_compaction``."""
        self._torn = False
        """A failed write left bytes that could not be cut off yet."""
        self._lock = threading.Lock()
        self._dirty = False
        self._compacted_size = 0
        self._failing: str | None = None
        self.syncs = 0
        self._gen = 0
        """The journal file holds the events of its segments up to this number."""
        self._number = 0
        """The file written to: the journal itself while this is ``_gen``, else the
        segment of this number."""

    # -- reading ------------------------------------------------------------

    def read(self) -> Iterator[dict[str, Any]]:
        """Every complete event: the file's, then its segments' (see ``start_segment``);
        a torn last line of a file (a crash mid-write) is cut off."""
        if not self.path.exists():
            return
        yield from self._read_file(self.path, header=True)
        for number, segment in self._segments():
            if number > self._gen:
                yield from self._read_file(segment, header=False)
            self._number = max(self._number, number)

    def _read_file(self, path: Path, *, header: bool) -> Iterator[dict[str, Any]]:
        good_end = 0
        try:
            with open(path, "rb") as handle:
                for number, line in enumerate(handle, 1):
                    if not line.endswith(b"\n"):
                        if header and number == 1:  # journals start with a whole header line
                            raise ConfigError(f"{path} is not a fetchq journal")
                        break
                    try:
                        event = json.loads(line)
                    except ValueError:
                        raise ConfigError(
                            f"journal {path} is damaged at line {number}: not JSON"
                        ) from None
                    if header and number == 1:
                        self._check_header(event)
                        self._gen = self._number = int(event.get("segment", 0))
                    good_end += len(line)
                    yield event
            if good_end < path.stat().st_size:
                with open(path, "r+b") as handle:
                    handle.truncate(good_end)
        except OSError as exc:
            raise ConfigError(f"cannot read journal {path}: {exc.strerror}") from None

    def _check_header(self, event: Any) -> None:
        if not isinstance(event, dict) or event.get("k") != FORMAT:
            raise ConfigError(f"{self.path} is not a fetchq journal")
        if event.get("v") not in READABLE_VERSIONS:
            raise ConfigError(
                f"journal {self.path} has format version {event.get('v')}, "
                f"this server reads versions {', '.join(map(str, READABLE_VERSIONS))}"
            )

    def _segment(self, number: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{number}")

    def _segments(self) -> list[tuple[int, Path]]:
        """The segment files next to the journal, by number."""
        prefix = self.path.name + "."
        found = []
        for candidate in self.path.parent.glob(glob.escape(prefix) + "*"):
            suffix = candidate.name[len(prefix) :]
            if suffix.isdigit():
                found.append((int(suffix), candidate))
        return sorted(found)

    # -- writing ------------------------------------------------------------

    def rewrite(self, events: Iterable[Mapping[str, object]], header: dict[str, Any]) -> None:
        """Replace the journal and its segments by ``events`` atomically: a crash or a
        failure leaves the old journal or the new one, never a mix."""
        with self._lock:
            size = self._write_snapshot(events, header, self._number)
            for _, segment in self._segments():
                _remove_quietly(segment)
            if self._fd is not None:
                os.close(self._fd)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
            self._gen = self._number
            self._offset = self._size = self._compacted_size = size
            self._torn = False
            self._dirty = False
            self._recovered()

    def prepare_segment(self) -> int:
        """Create the next segment file (see ``start_segment``), its name made durable:
        done before the broker's lock is taken, as a directory fsync may take a while."""
        path = self._segment(self._number + 1)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
            _sync_directory(self.path.parent)
        except OSError as exc:
            raise self._failure("start a segment of", exc) from None
        return fd

    def start_segment(self, prepared: int) -> Segment:
        """From now on write to the segment ``prepare_segment`` made: the journal so far
        stays as it is, to be compacted (``finish_segment``) while new events go on
        being written.  Cheap, so that the broker can call it under its lock, at the
        moment its state is captured for the compaction."""
        with self._lock:
            assert self._fd is not None, "journal not opened: call rewrite() first"
            if self._torn:
                try:
                    os.ftruncate(self._fd, self._offset)
                except OSError as exc:
                    os.close(prepared)
                    raise self._failure("write", exc) from None
                self._torn = False
            previous = Segment(self._fd, self._number, self._size)
            self._fd, self._number, self._offset = prepared, self._number + 1, 0
            return previous

    def finish_segment(
        self, previous: Segment, events: Iterable[Mapping[str, object]], header: dict[str, Any]
    ) -> None:
        """Replace the journal and its segments up to ``previous`` by ``events`` (the state
        when the segment was started), leaving the segments written since.  Takes the
        journal's own lock only to note the sizes: writes go on meanwhile."""
        with contextlib.suppress(OSError):  # in the OS: the compaction makes them durable
            os.fsync(previous.fd)
        os.close(previous.fd)
        size = self._write_snapshot(events, header, previous.number)
        for number, segment in self._segments():
            if number <= previous.number:
                _remove_quietly(segment)
        with self._lock:
            self._gen = previous.number
            self._size = size + (self._size - previous.size)
            self._compacted_size = size

    def _write_snapshot(
        self, events: Iterable[Mapping[str, object]], header: dict[str, Any], covers: int
    ) -> int:
        """Write the journal anew (its header says it ``covers`` the segments up to that
        number); returns its size."""
        temporary = self.path.with_name(self.path.name + ".compacting")
        first = {"k": FORMAT, "v": FORMAT_VERSION, **header, "segment": covers}
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb", buffering=1 << 20) as handle:
                handle.write(encode_event(first))
                for event in events:
                    handle.write(encode_event(event))
                handle.flush()
                os.fsync(handle.fileno())
                size = handle.tell()
            os.replace(temporary, self.path)
            _sync_directory(self.path.parent)
        except OSError as exc:
            _remove_quietly(temporary)
            raise self._failure("rewrite", exc) from None
        return size

    def write(self, lines: list[bytes], *, sync: bool = False) -> None:
        """Append whole events made by ``encode_event``, and fsync them if asked.

        All or nothing: on failure the file is cut back to where it was and
        ``StorageFailed`` is raised, so the caller can fail its call unchanged."""
        if not lines:
            return
        data = lines[0] if len(lines) == 1 else b"".join(lines)
        with self._lock:
            assert self._fd is not None, "journal not opened: call rewrite() first"
            try:
                if self._torn:
                    os.ftruncate(self._fd, self._offset)
                    self._torn = False
                view = memoryview(data)
                while view:
                    view = view[os.write(self._fd, view) :]
                if sync:
                    os.fsync(self._fd)
                    self.syncs += 1
            except OSError as exc:
                self._cut_back()
                raise self._failure("write", exc) from None
            self._offset += len(data)
            self._size += len(data)
            self._dirty = not sync
            self._recovered()

    def _cut_back(self) -> None:
        """Remove what a failed write left: a torn event would end the journal there."""
        assert self._fd is not None
        try:
            os.ftruncate(self._fd, self._offset)
        except OSError:
            self._torn = True  # tried again before the next write

    def sync(self) -> None:
        """fsync what was written: from here a power cut loses nothing either."""
        with self._lock:
            if self._fd is None or not self._dirty:
                return
            try:
                os.fsync(self._fd)
            except OSError as exc:
                raise self._failure("sync", exc) from None
            self._dirty = False
            self.syncs += 1

    def _failure(self, action: str, exc: OSError) -> StorageFailed:
        reason = exc.strerror or type(exc).__name__
        message = f"cannot {action} journal {self.path}: {reason}"
        if self._failing != message:
            self._failing = message
            say(f"server: {message}; calls that need the journal fail until it works again")
        return StorageFailed(f"the server cannot write its journal ({reason}); try again later")

    def _recovered(self) -> None:
        if self._failing is not None:
            self._failing = None
            say(f"server: journal {self.path} is being written again")

    def wants_compaction(self) -> bool:
        size = self._size
        return size > COMPACT_MIN_BYTES and size > COMPACT_GROWTH * self._compacted_size

    def close(self) -> None:
        with contextlib.suppress(StorageFailed):  # said already; the OS may still write it
            self.sync()
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
        os.close(self._guard)


def _lock_exclusively(path: Path) -> int:
    """One server per journal: a second one would interleave and corrupt it."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot use journal {path.with_suffix('')}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise ConfigError(
            f"journal {path.with_suffix('')} is in use by another fetchq server"
        ) from None
    return fd


def _stored_text(obj: Any) -> Any:
    if isinstance(obj, StoredResult):
        return msgspec.Raw(obj.raw)  # a result's text, as it arrived: not built again
    raise TypeError(f"a {type(obj).__name__} is not a JSON value")


_encoder = msgspec.json.Encoder(enc_hook=_stored_text)


def encode_event(event: Mapping[str, object]) -> bytes:
    """One journal line; raises TypeError, ValueError or UnicodeEncodeError for non-JSON."""
    try:
        return _encoder.encode(event) + b"\n"
    except msgspec.EncodeError as exc:
        raise ValueError(str(exc)) from None


def _sync_directory(path: Path) -> None:
    """A rename is durable only once the directory itself is synced."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
