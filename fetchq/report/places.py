"""Figures by place (worker host, target host) in bounded memory, for the busiest places.

A crawl may touch a hundred thousand hosts, so a table keeps at most
``2 * kept`` rows and folds the rest into one ``other`` row.  Which rows stay
is decided the way DataSketches' frequent-items sketch does it (a batched
Misra-Gries): each row carries a weight, its count since it entered the table;
when the table is full, the median weight is subtracted from every row and the
rows left at zero or below are folded into ``other``.  Every purge takes at
least ``kept`` times the subtracted amount out of the total weight, so in all
at most ``n / kept`` is subtracted from any row.  For ``n`` results that gives:

- a place with more than ``n / kept`` results is in the table at the end;
- a row's count is exact since the row entered the table and falls short of
  the place's true count by at most ``n / kept`` (the results from before
  are in ``other``);
- the totals over all rows and ``other`` are exact.
"""

from __future__ import annotations

from fetchq.report.tally import Tally
from fetchq.urls import host_key
from fetchq.wire.aggregates import PlacesState

PLACES_KEPT = 200
"""``kept``: a place with more than 1/200 of the results always has its own row."""

UNKNOWN_PLACE = "unknown"
"""The place of a result whose worker or URL does not say."""


def worker_host(worker: str) -> str:
    """The host part of a result's ``worker`` field (``hostname:pid``)."""
    host = worker.rpartition(":")[0] if ":" in worker else worker
    return host or UNKNOWN_PLACE


def target_host(url: str) -> str:
    """The result's target host, as per-host limits count it (``unknown`` if none)."""
    if "://" not in url:
        return UNKNOWN_PLACE
    host = host_key(url)
    return UNKNOWN_PLACE if host.startswith(":") else host


class _Row(Tally):
    """A place's tally and its weight: its results since it entered the table, less
    what purges took off (see the module's docstring)."""

    __slots__ = ("weight",)

    def __init__(self) -> None:
        super().__init__()
        self.weight = 0


class PlaceTable:
    """Rows for the busiest places, at most ``2 * kept`` of them, and ``other`` for the rest."""

    def __init__(self, kept: int = PLACES_KEPT) -> None:
        if kept < 1:
            raise ValueError("a place table keeps at least one row")
        self.kept = kept
        self._rows: dict[str, _Row] = {}
        self.other = Tally()

    def add(self, place: str, started: float, elapsed: float, ok: bool, count: int = 1) -> None:
        row = self._rows.get(place)
        if row is None:
            if len(self._rows) >= 2 * self.kept:
                self._purge()
            row = self._rows[place] = _Row()
        row.weight += count
        row.add(started, elapsed, ok, count)

    def _purge(self) -> None:
        weights = sorted(row.weight for row in self._rows.values())
        cut = weights[len(weights) // 2]
        for place in list(self._rows):
            row = self._rows[place]
            row.weight -= cut
            if row.weight <= 0:
                self.other.merge(row)
                del self._rows[place]

    def __len__(self) -> int:
        return len(self._rows)

    def top(self, limit: int) -> list[tuple[str, Tally]]:
        """The ``limit`` rows with the most results, most first (ties by name)."""
        ranked: list[tuple[str, Tally]] = sorted(
            self._rows.items(), key=lambda item: (-item[1].requests, item[0])
        )
        return ranked[:limit]

    def rest(self, limit: int) -> Tally:
        """Everything outside ``top(limit)``: the folded ``other`` row plus the rows not shown."""
        rest = Tally()
        rest.merge(self.other)
        for _, row in self.top(len(self._rows))[limit:]:
            rest.merge(row)
        return rest

    def merge(self, other: PlaceTable) -> None:
        """Add ``other``'s rows to this table's, weights and all, as if its requests had
        come here (a merge of frequent-items sketches: the error bounds add up)."""
        for place, row in other._rows.items():
            self._add_row(place, row, row.weight)
        self.other.merge(other.other)

    def _add_row(self, place: str, tally: Tally, weight: int) -> None:
        row = self._rows.get(place)
        if row is None:
            if len(self._rows) >= 2 * self.kept:
                self._purge()
            row = self._rows[place] = _Row()
        row.weight += weight
        row.merge(tally)

    def to_state(self, requests: int) -> PlacesState:
        """The table as a record's part (see ``fetchq.wire.aggregates``).  ``requests``:
        those its summary counts; a table whose one row holds them all says so
        (``whole``) instead of writing out a tally its summary's time buckets add up to."""
        if len(self._rows) == 1 and not self.other.requests:
            [(place, row)] = self._rows.items()
            if row.requests == requests == row.weight:
                return PlacesState(other=self.other.to_state(), whole=place)
        return PlacesState(
            other=self.other.to_state(),
            rows=[(place, row.weight, row.to_state()) for place, row in self._rows.items()],
        )

    @classmethod
    def from_state(
        cls, state: PlacesState, everything: Tally, kept: int = PLACES_KEPT
    ) -> PlaceTable:
        """``everything``: the requests its summary counts, for a ``whole`` table."""
        table = cls(kept)
        if state.whole is not None:
            table._add_row(state.whole, everything, everything.requests)
        for place, weight, row in state.rows:
            table._add_row(place, Tally.from_state(row), weight)
        table.other.take_state(state.other)
        return table
