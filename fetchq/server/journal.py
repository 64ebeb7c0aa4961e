"""The server's journal: an append-only log of what it acknowledged, for restarts.

Why a log of JSON lines rather than SQLite: every change the broker makes is
already a batch (a submit of 10,000 URLs, a report of 500 results), so one
appended line per batch is the cheapest durable write there is, replay is a
single sequential read, and the file can be read with ``jq`` when something
looks wrong.  What the log does not need (queries, updates in place) is
what a database would add.  Compaction rewrites the live state (tasks not yet
done, results not yet confirmed, job counters) to a new file and renames it
over the old one, so the log stays proportional to what the server holds.

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
import json
import os
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from fetchq.errors import ConfigError, StorageFailed
from fetchq.messages import say

FORMAT = "fetchq-journal"
FORMAT_VERSION = 3
"""2: job counters renamed (``delivered`` is now ``confirmed``).
3: the event ``finish`` is ``seal`` (as the wire call).  Versions 1 and 2 still read;
their events are listed in ``events``."""
READABLE_VERSIONS = (1, 2, 3)
COMPACT_MIN_BYTES = 64 << 20
"""A journal smaller than this is never compacted while running."""
COMPACT_GROWTH = 4
"""Compact once the file is this many times its size after the last compaction."""


class Journal:
    """``write`` hands events to the OS (all or none of them), ``sync`` to the disk."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._guard = _lock_exclusively(self.path.with_name(self.path.name + ".lock"))
        self._fd: int | None = None
        self._size = 0
        """Bytes of whole events in the file: where a failed write is cut back to."""
        self._torn = False
        """A failed write left bytes that could not be cut off yet."""
        self._lock = threading.Lock()
        self._dirty = False
        self._compacted_size = 0
        self._failing: str | None = None
        self.syncs = 0

    # -- reading ------------------------------------------------------------

    def read(self) -> Iterator[dict[str, Any]]:
        """Every complete event in the file; a torn last line (a crash mid-write) is cut off."""
        if not self.path.exists():
            return
        good_end = 0
        try:
            with open(self.path, "rb") as handle:
                for number, line in enumerate(handle, 1):
                    if not line.endswith(b"\n"):
                        if number == 1:  # journals start with a whole header line, always
                            raise ConfigError(f"{self.path} is not a fetchq journal")
                        break
                    try:
                        event = json.loads(line)
                    except ValueError:
                        raise ConfigError(
                            f"journal {self.path} is damaged at line {number}: not JSON"
                        ) from None
                    if number == 1:
                        self._check_header(event)
                    good_end += len(line)
                    yield event
        except OSError as exc:
            raise ConfigError(f"cannot read journal {self.path}: {exc.strerror}") from None
        if good_end < self.path.stat().st_size:
            with open(self.path, "r+b") as handle:
                handle.truncate(good_end)

    def _check_header(self, event: Any) -> None:
        if not isinstance(event, dict) or event.get("k") != FORMAT:
            raise ConfigError(f"{self.path} is not a fetchq journal")
        if event.get("v") not in READABLE_VERSIONS:
            raise ConfigError(
                f"journal {self.path} has format version {event.get('v')}, "
                f"this server reads versions {', '.join(map(str, READABLE_VERSIONS))}"
            )

    # -- writing ------------------------------------------------------------

    def rewrite(self, events: Iterable[Mapping[str, object]], header: dict[str, Any]) -> None:
        """Replace the journal by ``events`` atomically: a crash or a failure leaves the
        old file or the new one, never a mix."""
        temporary = self.path.with_name(self.path.name + ".compacting")
        with self._lock:
            try:
                fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as handle:
                    handle.write(encode_event({"k": FORMAT, "v": FORMAT_VERSION, **header}))
                    for event in events:
                        handle.write(encode_event(event))
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(temporary, self.path)
                _sync_directory(self.path.parent)
            except OSError as exc:
                _remove_quietly(temporary)
                raise self._failure("rewrite", exc) from None
            if self._fd is not None:
                os.close(self._fd)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
            self._size = self._compacted_size = os.fstat(self._fd).st_size
            self._torn = False
            self._dirty = False
            self._recovered()

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
                    os.ftruncate(self._fd, self._size)
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
            self._size += len(data)
            self._dirty = not sync
            self._recovered()

    def _cut_back(self) -> None:
        """Remove what a failed write left: a torn event would end the journal there."""
        assert self._fd is not None
        try:
            os.ftruncate(self._fd, self._size)
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


def encode_event(event: Mapping[str, object]) -> bytes:
    """One journal line; raises TypeError, ValueError or UnicodeEncodeError for non-JSON."""
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode("utf-8") + b"\n"


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
