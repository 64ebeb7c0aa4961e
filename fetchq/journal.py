"""The server's journal: an append-only log of what it acknowledged, for restarts.

Why a log of JSON lines rather than SQLite: every change the broker makes is
already a batch (a submit of 10,000 URLs, a report of 500 results), so one
appended line per batch is the cheapest durable write there is, replay is a
single sequential read, and the file can be read with ``jq`` when something
looks wrong.  What the log does not need — queries, updates in place — is
what a database would add.  Compaction rewrites the live state (tasks not yet
done, results not yet confirmed, job counters) to a new file and renames it
over the old one, so the log stays proportional to what the server holds.

Durability: every event is written to the operating system before the broker
replies to the call that caused it, so a killed server process loses nothing.
Submissions are also fsynced before their reply (an acknowledged task
survives a power cut too); everything else is fsynced by the server's housekeeping
twice a second.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from fetchq.errors import ConfigError

FORMAT = "fetchq-journal"
FORMAT_VERSION = 1
COMPACT_MIN_BYTES = 64 << 20
"""A journal smaller than this is never compacted while running."""
COMPACT_GROWTH = 4
"""Compact once the file is this many times its size after the last compaction."""


class Journal:
    """Appends events; ``flush`` hands them to the OS, ``sync`` to the disk."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._guard = _lock_exclusively(self.path.with_name(self.path.name + ".lock"))
        self._file: BinaryIO | None = None
        self._pending: list[bytes] = []
        self._lock = threading.Lock()
        self._dirty = False
        self._compacted_size = 0
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
        if event.get("v") != FORMAT_VERSION:
            raise ConfigError(
                f"journal {self.path} has format version {event.get('v')}, "
                f"this server reads version {FORMAT_VERSION}"
            )

    # -- writing ------------------------------------------------------------

    def rewrite(self, events: Iterator[dict[str, Any]], header: dict[str, Any]) -> None:
        """Replace the journal by ``events`` atomically: a crash leaves the old or the new."""
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
                raise ConfigError(f"cannot write journal {self.path}: {exc.strerror}") from None
            if self._file is not None:
                self._file.close()
            self._file = open(self.path, "ab")  # noqa: SIM115 - kept open for appends
            self._compacted_size = self.path.stat().st_size
            self._pending.clear()
            self._dirty = False

    def append(self, event: dict[str, Any]) -> None:
        """Queue an event; the broker calls ``flush`` before it replies."""
        self._pending.append(encode_event(event))

    def append_encoded(self, line: bytes) -> None:
        """Queue a line made by ``encode_event`` (the broker encodes results up front)."""
        self._pending.append(line)

    def flush(self) -> None:
        """Write queued events to the OS: from here a killed process loses nothing."""
        if not self._pending:
            return
        assert self._file is not None, "journal not opened: call rewrite() first"
        data = b"".join(self._pending)
        self._pending.clear()
        self._file.write(data)
        self._file.flush()
        self._dirty = True

    def sync(self) -> None:
        """fsync what was flushed: from here a power cut loses nothing either."""
        with self._lock:
            if self._file is None or not self._dirty:
                return
            self._dirty = False
            os.fsync(self._file.fileno())
            self.syncs += 1

    def wants_compaction(self) -> bool:
        size = self.size()
        return size > COMPACT_MIN_BYTES and size > COMPACT_GROWTH * self._compacted_size

    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except OSError:
            return 0

    def close(self) -> None:
        self.flush()
        self.sync()
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
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


def encode_event(event: dict[str, Any]) -> bytes:
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
