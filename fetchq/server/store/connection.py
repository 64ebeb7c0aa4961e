"""Reaching the store: its URL, its password, and fetchq's functions loaded in it.

A password comes from the URL or from ``FETCHQ_STORE_PASSWORD``; it never reaches a
message, which names the store by ``shown`` (the URL without it)."""

from __future__ import annotations

import hashlib
import os
import urllib.parse
from importlib import resources
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from fetchq.errors import UsageError

PASSWORD_VARIABLE = "FETCHQ_STORE_PASSWORD"
SCHEMES = ("redis", "rediss", "unix")
TAG = "{fq}"
"""What every key of fetchq's in the first shard starts with, here and in fetchq.lua: a
hash tag, so that a Redis Cluster keeps the shard in one slot.  Each call names its
shard's tag as its key, by which a Cluster client sends the call to that slot's node."""

ID_SPAN = 2**40
"""Shard K numbers its tasks from K * ID_SPAN (robots.txt fetches, down from
-K * ID_SPAN), so that an id tells its shard; 16 shards of ids stay within the 14
digits Lua writes a number with."""


def shard_tag(shard: int) -> str:
    """The hash tag of a shard's keys: ``{fq}`` for the first, ``{fq:K}`` for others."""
    return TAG if shard == 0 else f"{{fq:{shard}}}"


def shard_of(task_id: int) -> int:
    """The shard that numbered a task (or a robots.txt fetch)."""
    return abs(task_id) // ID_SPAN


def shared_key(name: str, shard: int = 0) -> str:
    """A key of a shard's shared by its jobs, as fetchq.lua names it."""
    return f"{shard_tag(shard)}:{name}"


def job_key(job: str, part: str, shard: int = 0) -> str:
    """A key of one job's in a shard, as fetchq.lua names it (a job name has no '/')."""
    return f"{shard_tag(shard)}:job/{job}/{part}"


LIBRARY_KEY = shared_key("library")
"""Where the store keeps the digest of the fetchq functions it has loaded."""

CHANNELS = (shared_key("tasks"), shared_key("results"))
"""What the functions of every shard publish on when tasks or results move."""

SHARDS_KEY = shared_key("shards")
"""How many shards the store's fleet has: fixed once a server has started on it."""

IDS_KEY = shared_key("ids")
"""The first shard's id allocator: there once a task was ever submitted."""

PLACES_KEY = shared_key("placement")
"""Where each job's tasks go, on a store of several shards (see ``Placement``)."""

STORE_ERRORS: tuple[type[Exception], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.ClusterError,  # a Cluster that fails over, or lost a slot's node
    redis.exceptions.SlotNotCoveredError,
    redis.exceptions.TryAgainError,
    OSError,  # (a pub/sub connection cut under its reader)
)
"""What a store that does not answer raises: a wait, not a broken call."""

Store = redis.Redis | redis.RedisCluster
"""A client of one store, or of a Redis Cluster (found out when connecting)."""


def library_code() -> str:
    return resources.files(__package__).joinpath("fetchq.lua").read_text("utf-8")


def library_digest(code: str) -> str:
    """What the loaded library is known by in the store (``LIBRARY_KEY``): its code's
    own digest, so that any change to it is loaded."""
    return hashlib.sha256(code.encode()).hexdigest()[:16]


def shown(url: str) -> str:
    """The URL as messages may show it: no password."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "unix":
        return f"unix://{parts.path}"
    host = parts.hostname or "localhost"
    netloc = f"[{host}]" if ":" in host else host
    if parts.port:
        netloc += f":{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def check_url(url: str) -> str:
    """``url`` if it names a store fetchq can use, else a ``UsageError`` saying why."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise UsageError(
            f"--store {shown(url)!r}: give redis://HOST:PORT/DB, rediss://HOST:PORT/DB "
            "or unix://PATH"
        )
    if parts.scheme == "unix":
        if not parts.path:
            raise UsageError("--store unix://PATH: give the path of the store's socket")
        return url
    try:
        parts.port  # noqa: B018 - raises on a port that is no number
    except ValueError:
        raise UsageError(f"--store {shown(url)}: the port is not a number") from None
    database = parts.path.strip("/") or "0"
    if not database.isdigit():
        raise UsageError(f"--store {shown(url)}: the database is a number, as /0")
    return url


CALL_TIMEOUT = 10.0
"""Seconds a call to the store may take before it counts as not answering: every
function returns at once (waits are the server's, between calls), but a submit of
100,000 URLs on a busy store takes a while."""


def connect(url: str, **options: Any) -> Store:
    """A client for the store at ``url``; for a Redis Cluster, if the store says it is
    a node of one, a client of the whole cluster (raises what an unreachable store
    raises, as the store is asked).

    The client never re-sends a call by itself: a call whose reply was lost may have
    run, and it is the fetchq client that sends it again, to a broker whose every call
    is safe to re-send (batch ids, first result wins, tokens).  A Cluster's client
    still follows a slot that moved (a call the old node refused has not run).
    Options in the URL (``?socket_timeout=2``) win over these."""
    check_url(url)
    password = os.environ.get(PASSWORD_VARIABLE) or None
    kwargs: dict[str, Any] = {
        "socket_timeout": CALL_TIMEOUT,
        "socket_connect_timeout": 5.0,
        "health_check_interval": 30,
        "retry": Retry(NoBackoff(), 0),
        **options,
    }
    if password is not None:
        kwargs["password"] = password
    client = redis.Redis.from_url(url, **kwargs)
    if urllib.parse.urlsplit(url).scheme == "unix":
        return client
    try:
        if not client.info("cluster").get("cluster_enabled"):
            return client
    except redis.ResponseError as exc:
        if "cluster mode" not in str(exc):  # (the SELECT of a database but 0)
            raise
        client.close()
        raise UsageError(
            f"--store {shown(url)}: a Redis Cluster has database 0 alone: give /0"
        ) from None
    client.close()
    kwargs.pop("health_check_interval")  # (its nodes' connections check themselves)
    return redis.RedisCluster.from_url(url, **kwargs)


def load_library(client: Store, *, again: bool = False) -> bool:
    """Load fetchq's functions unless the store has this very code already (``again``:
    it said it has none); returns whether it had another version's (every server of
    one store must run the same fetchq)."""
    code = library_code()
    digest = library_digest(code)
    stored = client.get(LIBRARY_KEY)
    loaded = None if stored is None else bytes(stored).decode()  # type: ignore[arg-type]
    if loaded == digest and not again:
        return False
    client.function_load(code, replace=True)
    client.set(LIBRARY_KEY, digest)
    return loaded is not None and loaded != digest
