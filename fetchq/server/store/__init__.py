"""The broker on a store: its state in Valkey or Redis, so that several servers serve
one fleet and the loss of one loses nothing (docs/store.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fetchq.extras import extra_missing

if TYPE_CHECKING:
    from fetchq.server.store.broker import StoreBroker

MAX_SHARDS = 16
"""Shards a store's fleet may be kept in (see shards.py)."""


def open_store(url: str, needed_by: str = "--store", **settings: Any) -> StoreBroker:
    """The broker on the store at ``url``; the store extra brings its client."""
    try:
        from fetchq.server.store.broker import StoreBroker
    except ImportError as exc:
        if exc.name != "redis":
            raise
        raise extra_missing("store", needed_by, "redis") from None
    return StoreBroker(url, **settings)
