"""A store's fleet in shards: which shard a job's tasks go to, and one answer made of
the shards' answers.

A shard is a whole broker state under one hash tag (``{fq}``, ``{fq:1}``, ...): a
Redis Cluster keeps each in one slot, so that shards on different nodes spread the
fleet's calls over the nodes.  What must be counted in one place stays in one shard:
a paced job's tasks all go to its home shard (one schedule for the fleet), and a job
with host limits sends each host's tasks to that host's shard (one count in flight,
one last start, per host).  Other jobs' batches go to the shard of their batch id
(where a batch sent again finds its first copy), or home for a batch with none.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import msgspec

HOME = "home"
"""A paced job (a rate, or stages): its tasks in one shard."""
HOSTS = "hosts"
"""A job with host limits: each host's tasks in the shard of that host."""
SPREAD = "spread"
"""Any other job: each batch in a shard of its own."""


class Placement(NamedTuple):
    """Where a job's tasks go: ``kind`` (HOME, HOSTS or SPREAD), and its home shard."""

    kind: str
    home: int

    @classmethod
    def choose(cls, job: str, shards: int, *, paced: bool, limited: bool) -> Placement:
        """The placement of a new job, from how it was dispatched."""
        kind = HOME if paced else HOSTS if limited else SPREAD
        return cls(kind, home_of(job, shards))

    @classmethod
    def read(cls, job: str, shards: int, kept: bytes) -> Placement:
        """A placement as the store keeps it (its kind)."""
        return cls(kept.decode(), home_of(job, shards))


def home_of(job: str, shards: int) -> int:
    return zlib.crc32(job.encode()) % shards


def shard_of_key(key: str, shards: int) -> int:
    """The shard of a host's tasks (a job with host limits), or of a batch (by its id)."""
    return zlib.crc32(key.encode()) % shards


def delivery_token(key: str, shards: Sequence[int]) -> str:
    """A delivery's token, which names the shards it took results from."""
    return f"{key}:{'.'.join(map(str, shards))}"


def token_shards(token: str) -> list[int]:
    """The shards a delivery's token names (a token of one shard names none: the
    first).  A token made up by a client names whatever it says; an ack of it in a
    shard that never heard of it confirms nothing there."""
    _, _, shards = token.rpartition(":")
    if not _ or not shards:
        return [0]
    try:
        return sorted({int(shard) for shard in shards.split(".")})
    except ValueError:
        return [0]


SUMMED = (
    "submitted", "queued", "succeeded", "failed", "expired", "handed_out", "confirmed",
    "late", "req_submitted", "req_succeeded", "req_failed", "req_leased", "leased",
    "waiting",
)  # fmt: skip


def merged_fields(parts: Iterable[dict[str, str]]) -> dict[str, str]:
    """A job's counters over the shards that have it (each shard's as ``_fields``
    reads them): counts summed; sealed when sealed in every shard; cancelled or
    paused when so anywhere (steering reaches every shard); its pace and hosts added
    up; what only its home shard keeps (the stages' anchor), from there."""
    have = [part for part in parts if part]
    if not have:
        return {}
    if len(have) == 1:
        return have[0]
    home = max(have, key=lambda part: int(part["submitted"] or 0))
    merged = dict(home)
    for name in SUMMED:
        merged[name] = str(sum(int(part[name] or 0) for part in have))
    merged["worst_late"] = repr(max(float(part["worst_late"] or 0) for part in have))
    merged["sealed"] = "1" if all(part["sealed"] == "1" for part in have) else "0"
    states = {part["state"] for part in have}
    merged["state"] = next((s for s in ("cancelled", "paused") if s in states), "")
    merged["aggregate"] = "1" if any(part["aggregate"] == "1" for part in have) else "0"
    firsts = [float(part["first_result"]) for part in have if part["first_result"]]
    merged["first_result"] = repr(min(firsts)) if firsts else ""
    merged["created"] = repr(min(float(part["created"]) for part in have if part["created"]))
    merged["seconds"] = _merged_seconds(part["seconds"] for part in have)
    merged["hosts"] = _merged_hosts(part["hosts"] for part in have)
    return merged


def _merged_seconds(texts: Iterable[str]) -> str:
    """Results and elapsed time by the second (flat field, value lists), added up."""
    total: dict[str, float] = {}
    for text in texts:
        kept = msgspec.json.decode(text) or []  # (Lua's empty table is "{}")
        for name, value in zip(kept[::2], kept[1::2], strict=True):
            total[name] = total.get(name, 0) + (int(value) if name[0] == "n" else float(value))
    flat: list[Any] = []
    for name, value in total.items():
        flat += [name, str(value)]
    return msgspec.json.encode(flat).decode()


def _merged_hosts(texts: Iterable[str]) -> str:
    """``host queued in_flight`` lines, added up by host."""
    total: dict[str, list[int]] = {}
    for text in texts:
        for line in text.splitlines():
            host, queued, in_flight = line.rsplit(" ", 2)
            row = total.setdefault(host, [0, 0])
            row[0] += int(queued)
            row[1] += int(in_flight)
    return "\n".join(f"{host} {queued} {flight}" for host, (queued, flight) in total.items())


def merged_workers(rows: Iterable[Sequence[bytes]]) -> list[list[bytes]]:
    """The workers as every shard saw them (``name first last reported threads recent
    leased`` rows), one row a worker: seen first and last over all, its reports and
    leases added up."""
    by_name: dict[bytes, list[Any]] = {}
    for name, first, last, reported, threads, recent, leased in rows:
        row = by_name.get(name)
        if row is None:
            by_name[name] = [name, float(first), float(last), int(reported), threads,
                             int(recent), int(leased)]  # fmt: skip
            continue
        row[1], row[2] = min(row[1], float(first)), max(row[2], float(last))
        row[3] += int(reported)
        row[5] += int(recent)
        row[6] += int(leased)
    return [[str(value).encode() if not isinstance(value, bytes) else value for value in row]
            for row in by_name.values()]  # fmt: skip
