"""The journal as the broker uses it: each call's events written before the change
they describe, or nothing at all when the server keeps no journal."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import NamedTuple

from fetchq.errors import BadRequest, StorageFailed
from fetchq.server import events, recovery
from fetchq.server.journal import Journal, Segment, encode_event
from fetchq.server.state import BrokerState
from fetchq.wire.records import StoredResult


class Compaction(NamedTuple):
    snapshot: recovery.Snapshot
    previous: Segment


class Recorder:
    def __init__(self, journal: Journal | None) -> None:
        self.journal = journal

    def write(self, *written: events.Event) -> None:
        """Raises StorageFailed, with nothing written, when the journal cannot take them."""
        if self.journal is not None:
            self.journal.write([encode_event(event) for event in written])

    def write_lines(self, lines: list[bytes]) -> None:
        if self.journal is not None:
            self.journal.write(lines)

    def encoder(self) -> Callable[[events.Event], bytes] | None:
        """What encodes an event for the journal; None when there is none to write."""
        return encode_event if self.journal is not None else None

    def result_lines(self, results: list[StoredResult]) -> list[bytes | None]:
        """Results' events, encoded before the lock is taken: a result the journal cannot
        hold is a bad request, refused before anything changes."""
        if self.journal is None:
            return [None] * len(results)
        try:
            return [encode_event(events.result(result)) for result in results]
        except (TypeError, ValueError, UnicodeEncodeError) as exc:
            raise BadRequest(f"results must hold JSON values only: {exc}") from None

    def sync(self) -> None:
        """Acknowledged submissions survive a power cut: fsync before the reply (outside
        the broker's lock, so other calls go on meanwhile)."""
        if self.journal is not None:
            self.journal.sync()

    def compact(self, state: BrokerState, wall: float, now: float) -> None:
        """Rewrite the journal as ``state`` at once: nothing else may run meanwhile.
        ``wall`` and ``now``: the same moment in Unix time and on the broker's clock."""
        if self.journal is not None:
            snapshot = recovery.Snapshot(state, wall, now)
            self.journal.rewrite(snapshot.events(), snapshot.header)

    def prepare_compaction(self) -> int | None:
        """Before the broker's lock: the file later events will go to."""
        return None if self.journal is None else self.journal.prepare_segment()

    def start_compaction(
        self, state: BrokerState, wall: float, now: float, prepared: int
    ) -> Compaction:
        """Capture ``state`` and write later events to the prepared segment: cheap, done
        under the broker's lock; ``finish_compaction`` then writes, the lock let go."""
        assert self.journal is not None
        snapshot = recovery.Snapshot(state, wall, now)
        return Compaction(snapshot, self.journal.start_segment(prepared))

    def finish_compaction(self, compaction: Compaction) -> None:
        assert self.journal is not None
        snapshot = compaction.snapshot
        self.journal.finish_segment(compaction.previous, snapshot.events(), snapshot.header)

    def wants_compaction(self) -> bool:
        return self.journal is not None and self.journal.wants_compaction()

    def sync_quietly(self) -> None:
        """Housekeeping's fsync: a failure was said by the journal; the next round retries."""
        with contextlib.suppress(StorageFailed):
            self.sync()

    def close(self) -> None:
        if self.journal is not None:
            self.journal.close()
