"""The journal as the broker uses it: each call's events written before the change
they describe, or nothing at all when the server keeps no journal."""

from __future__ import annotations

import contextlib
from typing import Any

from fetchq.errors import BadRequest, StorageFailed
from fetchq.server import events, recovery
from fetchq.server.journal import Journal, encode_event
from fetchq.server.state import BrokerState


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

    def encode(self, event: events.Event) -> bytes | None:
        return encode_event(event) if self.journal is not None else None

    def result_lines(self, results: list[dict[str, Any]]) -> list[bytes | None]:
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

    def compact(self, state: BrokerState, wall: float) -> None:
        if self.journal is not None:
            self.journal.rewrite(
                recovery.snapshot(state, wall), recovery.header(state.ledger, wall)
            )

    def wants_compaction(self) -> bool:
        return self.journal is not None and self.journal.wants_compaction()

    def sync_quietly(self) -> None:
        """Housekeeping's fsync: a failure was said by the journal; the next round retries."""
        with contextlib.suppress(StorageFailed):
            self.sync()

    def close(self) -> None:
        if self.journal is not None:
            self.journal.close()
