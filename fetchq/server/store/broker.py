"""The broker on a store: a ``BrokerService`` whose state is in Valkey or Redis.

Each call is checked here exactly as the embedded broker checks it
(``validate``), then made by one function in the store (``fetchq.lua``), atomic
there: several servers on one store are one broker.  On a store of several
shards, a call is made in each shard it concerns, and their answers merged into
one (see shards.py).  What a call waits for
(tasks, room, results) it waits for here, woken by the store's messages and
asking again at least every ``POLL`` seconds.

Times: without a clock given, the functions read the store's own (``TIME``), so
that deadlines and schedules mean the same to every server.  Tests give a clock
of their own, passed to each call.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import msgspec
import redis

from fetchq import __version__, defaults
from fetchq.errors import (
    AuthFailed,
    BadRequest,
    NoSuchJob,
    StoreUnavailable,
    UsageError,
    VersionMismatch,
)
from fetchq.messages import plural, say
from fetchq.server import robots, steering, validate, views
from fetchq.server.broker import CLOCK_STEP
from fetchq.server.completion import MAX_HOLD, ended_span
from fetchq.server.jobqueue import ROBOTS_ATTEMPTS, Policy, Robots
from fetchq.server.jobs import PaceSeen, unknown_job
from fetchq.server.leasing import as_spans
from fetchq.server.store import MAX_SHARDS
from fetchq.server.store.connection import (
    CHANNELS,
    IDS_KEY,
    PASSWORD_VARIABLE,
    PLACES_KEY,
    SHARDS_KEY,
    STORE_ERRORS,
    TAG,
    Store,
    connect,
    job_key,
    load_library,
    shard_of,
    shard_tag,
    shared_key,
    shown,
)
from fetchq.server.store.shards import (
    HOME,
    SPREAD,
    Placement,
    delivery_token,
    merged_fields,
    merged_workers,
    shard_of_key,
    token_shards,
)
from fetchq.server.views import BUSIEST_HOSTS
from fetchq.urls import host_key, origin
from fetchq.wire.aggregates import SPAN, StoredAggregate, read_span, span_size
from fetchq.wire.api import (
    MAX_LEASE,
    MAX_SUBMIT,
    PROTOCOL,
    RETRY_AFTER_STATUSES,
    WORKER_GONE_AFTER,
    CompleteTally,
    HelloReply,
    JobCounts,
    JobView,
    Record,
    ResultsDelivery,
    RobotsReply,
    StatusReply,
    SubmitReply,
    WorkerRow,
)
from fetchq.wire.records import (
    RECORD_VERSION,
    ROBOTS,
    ROBOTS_REFUSED,
    StoredResult,
    late_by,
    make_error,
    make_result,
    make_task,
)
from fetchq.wire.specs import MAX_BODY, MAX_JOB_SPECS, spec_record
from fetchq.wire.stages import Stages

POLL = 0.25
"""Longest a waiting call goes without asking the store again, woken or not."""

MAX_RULES_KEPT = 100_000
"""Hosts' robots.txt rules a server keeps read (all are forgotten past this, and read
again as needed)."""

RATE_WINDOW = 10.0

SORT_PAGES = 20
"""Pages of a job's tasks (a thousand each) sorted by host in one go: a ``job set``
returns, and a round of housekeeping goes on, within a second or so."""

SORT_TRIES = 3
"""Times ``job set`` sends a job's first host limits with the hosts of its leased tasks
(the job leases nothing meanwhile, for ``HOSTS_WAIT`` seconds in fetchq.lua)."""

LISTEN_TICK = 0.5
"""Seconds the listener waits for a message before it looks whether to stop."""


class Wakeups:
    """Waiting calls, woken when the store says tasks or results moved (on ``CHANNELS``,
    published by every server's calls).  Listening starts with the first wait: a broker
    whose calls never wait needs no listener."""

    def __init__(self, client: Store) -> None:
        self._changed = threading.Condition()
        self._client = client
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def wait(self, seconds: float) -> None:
        with self._changed:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._listen, name="store-wakeups", daemon=True
                )
                self._thread.start()
            self._changed.wait(max(0.0, min(seconds, POLL)))

    def _listen(self) -> None:
        while not self._stop.is_set():
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(*CHANNELS)
                while not self._stop.is_set():
                    if pubsub.get_message(timeout=LISTEN_TICK) is not None:
                        with self._changed:
                            self._changed.notify_all()
            except STORE_ERRORS:
                self._stop.wait(POLL)  # the calls say the store is away; polling goes on
            except Exception:
                if not self._stop.is_set():
                    raise
            finally:
                with contextlib.suppress(Exception):  # closed under it, when stopping
                    pubsub.close()

    def close(self) -> None:
        """Stop listening; the listener ends by itself within ``LISTEN_TICK``."""
        self._stop.set()


class StoreBroker:
    """The broker whose state is in a store: any number of these, on any hosts, given
    the same store, serve one fleet together."""

    def __init__(
        self,
        store: str | Store,
        *,
        lease_timeout: float = defaults.LEASE_TIMEOUT,
        max_attempts: int = defaults.MAX_ATTEMPTS,
        max_pending: int = defaults.MAX_PENDING,
        max_results: int = defaults.MAX_RESULTS,
        clock: Callable[[], float] | None = None,
        wall_clock: Callable[[], float] | None = None,
        per_host: int | None = None,
        host_delay: float = 0.0,
        shards: int | None = None,
    ) -> None:
        self.lease_timeout = lease_timeout
        self.max_attempts = max_attempts
        self.max_pending = max_pending
        self.max_results = max_results
        self.per_host = per_host
        """Requests in flight to one host, over every job (None: no cap); servers on one
        store are given the same."""
        self.host_delay = host_delay
        self._clock = clock
        self._wall = wall_clock if wall_clock is not None else clock
        self._wall_offset = 0.0 if clock is None or self._wall is None else self._wall() - clock()
        self.shown = shown(store) if isinstance(store, str) else "given"
        """The store as messages name it: its URL without a password."""
        self._owned = isinstance(store, str)
        """Whether the client is this broker's to close (one given is the giver's)."""
        self._failing: dict[int | None, str] = {}
        """Why the store did not answer, said once, by shard (None: calls of every
        shard's); a shard that answers is not in it."""
        self._back_at: dict[int | None, float] = {}
        """When each last answered again after an outage (``time.monotonic``)."""
        self._failed_at: dict[int | None, float] = {}
        """When each outage under way was said."""
        self._saying = threading.Lock()
        self._robots: dict[tuple[str, str], Robots] = {}
        """robots.txt rules read from the store, by job and host."""
        self._by_host: set[str] = set()
        """Jobs with host limits, whose submits carry each URL's host (learnt from the
        store, which asks for them)."""
        self._places: dict[str, Placement] = {}
        """Where jobs' tasks go, as the store keeps it (on a store of several shards)."""
        self._turns = itertools.count()
        """Which shard a call of several begins with, in turn."""
        try:
            self._store: Store = connect(store) if isinstance(store, str) else store
            if isinstance(self._store, redis.RedisCluster):
                self.shown += " (a Redis Cluster)"
            if load_library(self._store):
                say(
                    f"server: store {self.shown} had the functions of another fetchq: "
                    "replaced (every server on one store must run the same version)"
                )
        except redis.AuthenticationError as exc:
            raise AuthFailed(
                f"the store at {self.shown} refused us ({exc}): give its password in "
                f"{PASSWORD_VARIABLE} or the URL (redis://:PASSWORD@HOST:PORT/DB)"
            ) from None
        except redis.ResponseError as exc:
            trouble = _refusal(exc)
            if trouble is None:
                raise
            raise StoreUnavailable(f"the store at {self.shown} {trouble}") from None
        except STORE_ERRORS as exc:
            check = "is it running, and is that its address?"
            if "CERTIFICATE_VERIFY_FAILED" in str(exc):
                check = "does ?ssl_ca_certs= in the URL name the CA of its certificate?"
            reason = f"cannot reach the store at {self.shown}: {exc} ({check})"
            raise StoreUnavailable(reason) from None
        self.shards = self._shard_count(shards)
        """How many shards the fleet's state is in (see shards.py): fixed for the store
        by the first server to start on it."""
        if self.shards > 1 and (per_host or host_delay):
            raise UsageError(
                f"--per-host and --host-delay on the server hold across every job only on "
                f"a store of one shard: {self.shown} has {self.shards}"
            )
        self._warn_of_eviction()
        self._wakeups = Wakeups(self._store)

    @property
    def described(self) -> str:
        """The store as the start line names it, with its shards when several."""
        return f"store {self.shown}" + (f" in {self.shards} shards" if self.shards > 1 else "")

    def _shard_holding(self, task_id: int) -> int | None:
        """The shard that gave out ``task_id``; None for an id no shard of this store
        gave out (a stale one of another server's, say), which changes nothing."""
        shard = shard_of(task_id)
        return shard if shard < self.shards else None

    def _shard_count(self, wanted: int | None) -> int:
        """The store's shard count, set by the first server (``wanted``, or 1)."""
        if wanted is not None and not 1 <= wanted <= MAX_SHARDS:
            raise UsageError(f"--shards {wanted}: give 1 to {MAX_SHARDS}")
        try:
            # A store a fetchq before shards has used holds its fleet in one, unsaid.
            used = self._store.exists(SHARDS_KEY) == 0 and self._store.exists(IDS_KEY) == 1
            self._store.set(SHARDS_KEY, 1 if used else wanted or 1, nx=True)
            kept = int(self._store.get(SHARDS_KEY) or 1)  # type: ignore[arg-type]
        except STORE_ERRORS as exc:
            raise StoreUnavailable(f"cannot reach the store at {self.shown}: {exc}") from None
        if wanted is not None and wanted != kept:
            raise UsageError(
                f"--shards {wanted}: the store at {self.shown} keeps its fleet in "
                f"{plural(kept, 'shard')} (give --shards {kept}, or none; a store's shards "
                "change only when it is emptied)"
            )
        return kept

    def _warn_of_eviction(self) -> None:
        """A store that evicts keys when full would drop tasks and results."""
        try:
            if isinstance(self._store, redis.RedisCluster):  # the node with fetchq's keys
                node = self._store.get_node_from_key(TAG)
                config = self._store.config_get("maxmemory-policy", target_nodes=node)
            else:
                config = self._store.config_get("maxmemory-policy")
        except redis.RedisError:  # a managed store may not let us read its config
            return
        policy = config.get("maxmemory-policy", "noeviction")
        if policy != "noeviction":
            say(
                f"warning: store {self.shown} has maxmemory-policy {policy}: when full, it "
                "drops keys, and so tasks and results; set it to noeviction"
            )

    # -- time ---------------------------------------------------------------

    def _now(self) -> str:
        """The time to pass a call: empty for the store's own clock."""
        return "" if self._clock is None else repr(self._clock())

    def _wall_now(self) -> str:
        """Unix time for a call, as the clock given plus an offset kept while the wall
        clock moves less than ``CLOCK_STEP`` against it (see the embedded broker)."""
        if self._clock is None or self._wall is None:
            return ""
        now = self._clock()
        offset = self._wall() - now
        if abs(offset - self._wall_offset) > CLOCK_STEP:
            self._wall_offset = offset
        return repr(now + self._wall_offset)

    def _elapsed_clock(self) -> float:
        """What a call's own wait is measured on."""
        return time.monotonic() if self._clock is None else self._clock()

    def _call(self, name: str, *args: Any, shard: int = 0) -> Any:
        """One of fetchq's functions in the store, in one shard; one the store lost (it
        restarted empty) is loaded again."""
        tag = shard_tag(shard)

        def call() -> Any:
            try:
                return self._store.fcall(f"fq_{name}", 1, tag, *args)
            except redis.ResponseError as exc:
                if "function not found" not in str(exc).lower():
                    raise
                load_library(self._store, again=True)
                return self._store.fcall(f"fq_{name}", 1, tag, *args)

        return self._guarded(call, shard)

    def _read(self, name: str, *args: Any, shard: int = 0) -> Any:
        tag = shard_tag(shard)
        return self._guarded(
            lambda: self._store.fcall_ro(f"fq_{name}", 1, tag, *args), shard, writes=False
        )

    def _tallies(self, *names: str) -> dict[str, list[int]]:
        """Counters every shard keeps (``queued``, ``unconfirmed``), by shard: the
        bounds hold for them all together."""
        keys = [shared_key(name, shard) for name in names for shard in range(self.shards)]
        store = self._store
        if isinstance(store, redis.RedisCluster):  # (a node at a time)
            values = self._guarded(lambda: store.mget_nonatomic(keys), None, writes=False)
        else:
            values = self._guarded(lambda: store.mget(keys), None, writes=False)
        counts = [int(value or 0) for value in values]
        return {
            name: counts[i * self.shards : (i + 1) * self.shards] for i, name in enumerate(names)
        }

    def _in_turn(self) -> list[int]:
        """The shards, from the one whose turn it is to be asked first."""
        first = next(self._turns) % self.shards
        return [(first + k) % self.shards for k in range(self.shards)]

    def _guarded(
        self, command: Callable[[], Any], shard: int | None = 0, *, writes: bool = True
    ) -> Any:
        """``command`` on the store, in ``shard`` (None: in every shard).  A store that
        does not answer is said once an outage, here, and is ``StoreUnavailable`` to
        the client, which waits and asks again.  Calls run side by side, so only a call
        begun after the outage was said can end it, and only one begun after the store
        came back can start another.  A store that refuses writes (full, a replica)
        still answers reads, so only a ``command`` that ``writes`` ends that outage.
        Each shard's outage is its own (one node of a Cluster may be down, or full,
        while the others answer)."""
        began = time.monotonic()
        try:
            reply = command()
        except STORE_ERRORS as exc:
            raise self._unavailable(
                f"does not answer ({exc or type(exc).__name__})", began, shard
            ) from None
        except redis.ResponseError as exc:
            trouble = _refusal(exc)
            if trouble is None:
                raise
            raise self._unavailable(trouble, began, shard) from None
        if shard in self._failing and (writes or self._failing[shard] not in WRITES_REFUSED):
            with self._saying:
                if shard in self._failing and began > self._failed_at[shard]:
                    del self._failing[shard]
                    self._back_at[shard] = time.monotonic()
                    say(f"server: {self._store_named(shard)} answers again")
        return reply

    def _unavailable(self, trouble: str, began: float, shard: int | None) -> StoreUnavailable:
        """``trouble``: what the store does, as ``does not answer (why)``."""
        with self._saying:
            if shard not in self._failing and began > self._back_at.get(shard, float("-inf")):
                self._failing[shard], self._failed_at[shard] = trouble, time.monotonic()
                say(f"server: {self._store_named(shard)} {trouble}; clients wait for it")
        return StoreUnavailable(f"the server's store {trouble}; try again later")

    def _store_named(self, shard: int | None) -> str:
        if self.shards == 1 or shard is None:
            return f"store {self.shown}"
        return f"store {self.shown}, shard {shard},"

    # -- the wire API -----------------------------------------------------------

    def hello(self, client: dict[str, Any]) -> HelloReply:
        validate.require(isinstance(client, dict), "hello takes a dict")
        theirs = client.get("protocol")
        worker, threads = client.get("worker"), client.get("threads")
        if theirs != PROTOCOL:
            raise VersionMismatch(
                f"client speaks fetchq protocol {theirs}, server speaks {PROTOCOL} "
                f"(server version {__version__}): install the same fetchq version on both"
            )
        if worker is not None:
            threads = validate.integer(threads, "threads", 0, 100_000)
            runs = sorted(validate.capabilities(client.get("runs", [])))
            name = validate.worker_name(worker)
            for shard in range(self.shards):  # (each leases, and so must know it)
                reply = self._call("hello", self._now(), name, threads, _json(runs), shard=shard)
            now = float(reply)
        else:
            now = self._store_time()
        return {
            "protocol": PROTOCOL,
            "version": __version__,
            "lease_timeout": self.lease_timeout,
            "max_attempts": self.max_attempts,
            "max_body": MAX_BODY,
            "time": now if self._wall is None else self._wall(),
        }

    def _store_time(self) -> float:
        if self._wall is not None:
            return self._wall()
        return float(self._read("clock"))

    def submit(self, batch: dict[str, Any]) -> SubmitReply:
        request = validate.submit_request(batch)
        steering.refuse_on_aggregate(request.job, Policy(**request.policy))
        change = {name: _plain(value) for name, value in request.policy.items()}
        server_limits = bool(self.per_host or self.host_delay)
        limited = not request.spans and (server_limits or Policy(**request.policy).limits_hosts)
        specs = [
            part for key, spec in request.specs.items() for part in (key, _json(spec_record(spec)))
        ]
        submission = _Submission(
            request, change, self._elapsed_clock() + request.wait, limited, server_limits
        )
        if self.shards == 1:
            return self._submit_part(submission, 0, request.urls, request.batch_id or "", specs)
        place = self._placement(submission)
        if specs:  # kept in every shard: later batches may name them and go anywhere
            for shard in range(self.shards):
                kept = self._call("add_specs", request.job, MAX_JOB_SPECS, *specs, shard=shard)
                if kept != b"ok":
                    raise _too_many_specs(request.job)
        parts = self._parts(request.job, place, request.urls, request.batch_id)
        if len(parts) > 1:
            no_room = self._room_for(submission, parts)
            if no_room is not None:
                return no_room
        replies = [
            self._submit_part(submission, shard, [request.urls[i] for i in indexes], batch_id, [])
            for shard, indexes, batch_id in parts
        ]
        full = [reply for reply in replies if reply.get("full")]
        if full:  # (one part or, racing other dispatchers, a later one)
            return full[0]
        if len(replies) == 1:
            merged = replies[0].copy()
        else:
            ids = [0] * len(request.urls)  # a run of ids in each shard, the URLs' in order
            for (_, indexes, _), reply in zip(parts, replies, strict=True):
                for n, i in enumerate(indexes):
                    ids[i] = reply["first_id"] + n
            merged = {"accepted": sum(reply["accepted"] for reply in replies), "ids": ids}
            if all(reply.get("duplicate") for reply in replies):
                merged["duplicate"] = True
        if merged.get("duplicate"):
            return merged  # (its first reply, as the shards keep it: see below)
        merged.pop("reopened", None)
        reopened = all(reply.get("reopened") for reply in replies) and self._done_elsewhere(
            request.job, {shard for shard, _, _ in parts}
        )
        if reopened:
            merged["reopened"] = True
        for (shard, _, batch_id), reply in zip(parts, replies, strict=True):
            if batch_id and bool(reply.get("reopened")) != reopened:  # kept as the job's
                kept = reply.copy()
                kept.pop("reopened", None)
                kept.pop("duplicate", None)
                if reopened:
                    kept["reopened"] = True
                self._keep_reply(shard, batch_id, _json(kept))
        return merged

    def _room_for(
        self, submission: _Submission, parts: list[tuple[int, list[int], str]]
    ) -> SubmitReply | None:
        """A batch split over shards waits for room for all its parts not queued yet,
        so that a full queue takes none of it, where each part on its own would take
        the first parts and refuse the rest (a client that sends no batch id would then
        queue those twice).  The full reply, or None once there is room."""
        new = sum(
            len(indexes)
            for shard, indexes, batch_id in parts
            if not batch_id or not self._sent_before(shard, batch_id)
        )
        if new == 0:  # (sent before, whole: each shard answers as it did)
            return None
        while True:
            queued = sum(self._tallies("queued")["queued"])
            if queued == 0 or queued + new <= self.max_pending:
                return None
            remaining = submission.deadline - self._elapsed_clock()
            if remaining <= 0:
                return {"accepted": 0, "full": True, "queued": queued}
            self._wakeups.wait(remaining)

    def _sent_before(self, shard: int, batch_id: str) -> bool:
        key = shared_key(f"batch:{batch_id}", shard)
        return bool(self._guarded(lambda: self._store.exists(key), shard, writes=False))

    def _keep_reply(self, shard: int, batch_id: str, reply: bytes) -> None:
        """What a shard answers a batch sent again."""
        key = shared_key(f"batch:{batch_id}", shard)
        self._guarded(lambda: self._store.set(key, reply, keepttl=True), shard)

    def _done_elsewhere(self, job: str, shards: set[int]) -> bool:
        """Whether a job is done in every shard but ``shards``: a shard's part of it
        reopened there was the whole job reopened only if so."""
        for shard in range(self.shards):
            if shard not in shards:
                fields = _fields(self._call("job", self._now(), self._wall_now(), job, shard=shard))
                if fields and not _counts(fields)["done"]:
                    return False
        return True

    def _parts(
        self, job: str, place: Placement, urls: list[str], batch_id: str | None
    ) -> list[tuple[int, list[int], str]]:
        """A batch as the shards take it: the shard and the indexes of its URLs (or
        spans), and its id (a batch re-sent goes where it went, each part to a shard
        of its own)."""
        every = list(range(len(urls)))
        if place.kind == HOME:
            return [(place.home, every, batch_id or "")]
        if place.kind == SPREAD or not urls:  # (a batch with no id: home)
            shard = shard_of_key(batch_id, self.shards) if batch_id else place.home
            return [(shard, every, batch_id or "")]
        by_shard: dict[int, list[int]] = {}
        for i, url in enumerate(urls):
            by_shard.setdefault(shard_of_key(host_key(url), self.shards), []).append(i)
        return [(shard, indexes, batch_id or "") for shard, indexes in sorted(by_shard.items())]

    def _placement(self, submission: _Submission) -> Placement:
        """Where the job's tasks go, as the first dispatch to it made it: the job is
        made in the first shard, then in the others as it is there (another server's
        first dispatch may have made it), so that each checks later dispatches alike
        and every server places its tasks alike."""
        job = submission.request.job
        place = self._places.get(job)
        if place is not None:
            return place
        kept = self._guarded(lambda: self._store.hget(PLACES_KEY, job), writes=False)
        if kept is None:
            policy = _json(views.policy_view(Policy(**submission.request.policy)))
            for shard in range(self.shards):
                reply = self._call(
                    "create",
                    self._wall_now(),
                    job,
                    _json(submission.change),
                    policy,
                    "1" if submission.server_limits else "0",
                    shard=shard,
                )
                if reply[0] != b"ok":
                    raise _refused(job, reply, submission.change)
                if shard == 0:
                    policy = reply[1]  # the job's, as the first shard has it
            made = Policy(**msgspec.json.decode(policy))
            chosen = Placement.choose(
                job,
                self.shards,
                paced=made.rate is not None or bool(made.stages),
                limited=not made.aggregate and (submission.server_limits or made.limits_hosts),
            )
            self._guarded(lambda: self._store.hsetnx(PLACES_KEY, job, chosen.kind))
            kept = self._guarded(lambda: self._store.hget(PLACES_KEY, job), writes=False)
        place = Placement.read(job, self.shards, kept)
        self._places[job] = place
        return place

    def _place_of(self, job: str) -> Placement | None:
        """Where a job's tasks went, or None for a job never dispatched to."""
        if self.shards == 1:
            return Placement(HOME, 0)
        place = self._places.get(job)
        if place is None:
            kept = self._guarded(lambda: self._store.hget(PLACES_KEY, job), writes=False)
            if kept is None:
                return None
            place = self._places[job] = Placement.read(job, self.shards, kept)
        return place

    def _submit_part(
        self,
        submission: _Submission,
        shard: int,
        urls: list[str],
        batch_id: str,
        specs: list[Any],
    ) -> SubmitReply:
        """A batch, or a shard's part of one, into that shard; waits for room there."""
        request = submission.request
        sizes = ",".join(str(span_size(text)) for text in urls) if request.spans else ""
        attempts = request.attempts or self.max_attempts
        policy = views.policy_view(Policy(**request.policy))
        while True:
            hosted = submission.limited or request.job in self._by_host
            elsewhere = 0
            if self.shards > 1:
                queued = self._tallies("queued")["queued"]
                elsewhere = sum(queued) - queued[shard]
            reply = self._call(
                "submit",
                self._now(),
                self._wall_now(),
                request.job,
                batch_id,
                attempts,
                repr(request.timeout),
                self.max_pending,
                _json(submission.change),
                _json(policy),
                request.spec or "",
                MAX_JOB_SPECS,
                "1" if hosted else "0",
                len(specs) // 2,
                *specs,
                *urls,
                *(map(host_key, urls) if hosted else ()),
                sizes,
                "1" if submission.server_limits else "0",
                elsewhere,
                shard=shard,
            )
            kind = reply[0].decode()
            if kind == "hosts":  # the job has host limits: its tasks go with their hosts
                self._by_host.add(request.job)
                continue
            if kind == "ok":
                answer: SubmitReply = msgspec.json.decode(reply[1])
                return answer
            if kind == "seen":
                seen: SubmitReply = msgspec.json.decode(reply[1])
                return {**seen, "duplicate": True}
            if kind != "full":
                raise _refused(request.job, reply, submission.change, request.spec)
            remaining = submission.deadline - self._elapsed_clock()
            if remaining <= 0:
                return {"accepted": 0, "full": True, "queued": int(reply[1])}
            self._wakeups.wait(remaining)

    def seal(self, job_name: str) -> JobCounts:
        name = validate.job_name(job_name)
        policy = _json(views.policy_view(Policy()))
        return _counts(
            merged_fields(
                _fields(self._call("seal", self._wall_now(), name, policy, shard=shard))
                for shard in range(self.shards)
            )
        )

    def lease(self, worker: str, max_tasks: int, wait: float) -> list[dict[str, Any]]:
        worker = validate.worker_name(worker)
        count = validate.integer(max_tasks, "max_tasks", 1, MAX_LEASE)
        wait = validate.wait(wait)
        deadline = self._elapsed_clock() + wait
        first = True
        while True:
            leased, checked = self._lease_once(worker, count, every_shard=first)
            first = False
            if checked:
                leased = self._obeying_robots(worker, leased, checked)
            if leased:
                return leased
            remaining = deadline - self._elapsed_clock()
            if remaining <= 0:
                return []
            self._wakeups.wait(remaining)

    def _lease_once(
        self, worker: str, count: int, *, every_shard: bool
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Up to ``count`` tasks, and those to check against robots.txt.  Shards with
        tasks queued take turns to be asked first, each for all that is left (so that
        a call costs one shard's call when it can); spans of one aggregate job at
        most.  With none queued, a call still asks every shard the first time (each
        expires its overdue leases), then one a time while it waits."""
        shards, room = [0], [self.max_results]
        if self.shards > 1:
            tallies = self._tallies("queued", "unconfirmed")
            in_turn = self._in_turn()
            shards = [shard for shard in in_turn if tallies["queued"][shard] > 0]
            if not shards:
                shards = in_turn if every_shard else in_turn[:1]
            room = self._results_rooms(tallies["unconfirmed"])
        leased: list[dict[str, Any]] = []
        checked: list[dict[str, Any]] = []
        spans = False  # (one aggregate job's a call, as in one shard)
        failed: StoreUnavailable | None = None
        for shard in shards:  # each asked for what the ones before did not give
            try:
                flat = self._call(
                    "lease",
                    self._now(),
                    self._wall_now(),
                    worker,
                    count - len(leased),
                    repr(self.lease_timeout),
                    room[shard],
                    self.per_host or "",
                    repr(self.host_delay),
                    "0" if spans else "1",
                    shard=shard,
                )
            except StoreUnavailable as exc:
                # What the shards before gave is leased to this worker: it is handed
                # out, not left to lapse unfetched; this shard's tasks wait for it.
                failed = failed or exc
                continue
            records, to_check = _task_records(flat)
            leased += records
            checked += to_check
            spans = spans or any(record.get("kind") == SPAN for record in records)
            if len(leased) >= count:
                break
        if failed is not None and not leased and not checked:
            raise failed
        return leased, checked

    def _obeying_robots(
        self, worker: str, leased: list[dict[str, Any]], checked: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """``leased`` without the tasks their host's robots.txt forbids: those end as
        results without a request (the store keeps the rules; they are read here)."""
        refused: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
        for task in checked:  # (a job's tasks of one host are in one shard)
            key = (task["job"], host_key(task["url"]), shard_of(task["id"]))
            if not self._rules(*key).allowed(task["url"]):
                refused.setdefault(key, []).append(task)
        for (job, host, shard), tasks in refused.items():
            why = robots.refusal(self._rules(job, host, shard))
            self._call(
                "refuse", self._now(), self._wall_now(), worker, job, ROBOTS_REFUSED, why,
                *(task["id"] for task in tasks), shard=shard,
            )  # fmt: skip
        gone = {id(task) for tasks in refused.values() for task in tasks}
        return [task for task in leased if id(task) not in gone]

    def _rules(self, job: str, host: str, shard: int) -> Robots:
        """A host's robots.txt for a job, as the store keeps it in the shard of the
        job's tasks of that host (read once: it does not change once known)."""
        key = (job, host)
        rules = self._robots.get(key)
        if rules is None:
            kept = self._guarded(
                lambda: self._store.hget(job_key(job, "rules", shard), host), shard, writes=False
            )
            report = msgspec.json.decode(kept) if kept else {}
            rules = robots.rules_from(report, last_attempt=report.get("last", True))
            assert rules is not None  # the store keeps only rules that say something
            if len(self._robots) >= MAX_RULES_KEPT:
                self._robots.clear()
            self._robots[key] = rules
        return rules

    def complete(
        self, worker: str, results: list[Record], renew: list[list[int]] | None = None
    ) -> CompleteTally:
        worker = validate.worker_name(worker)
        stored = validate.results_list(results)
        held = validate.lease_pairs(renew or [])
        parts: dict[int, tuple[list[str], list[bytes], list[int]]] = {}
        sharded = self.shards > 1  # (else no shard to look up, result by result)
        strays = 0
        for result in stored:
            head = result.head
            shard = self._shard_holding(head.id) if sharded else 0
            if shard is None:
                strays += 1  # dropped
                continue
            heads, raws, _ = parts.setdefault(shard, ([], [], []))
            late = "-"
            if head.scheduled is not None:
                lateness = late_by(head.scheduled, head.started)
                if lateness is not None and lateness.late:
                    late = repr(lateness.seconds)
            flags = (
                ("1" if result.retryable else "0")
                + ("1" if head.status in RETRY_AFTER_STATUSES else "0")
                + ("1" if head.ok else "0")
            )
            elapsed = "-" if head.elapsed is None else repr(head.elapsed)
            hold = "-"
            if head.status in RETRY_AFTER_STATUSES and head.retry_after is not None:
                hold = repr(min(max(head.retry_after, 0.001), MAX_HOLD))
            if isinstance(result, StoredAggregate):
                good, bad = result.counts
                counted = f" {good} {bad} {result.late} {result.worst_lateness!r}"
                heads.append(f"{head.id} {head.attempt} {flags}1 - {elapsed} -{counted}")
            else:
                heads.append(f"{head.id} {head.attempt} {flags}0 {late} {elapsed} {hold}")
            raws.append(result.raw)
        for task_id, attempt in held:
            shard = self._shard_holding(task_id)
            if shard is not None:
                parts.setdefault(shard, ([], [], []))[2].extend((task_id, attempt))
        if not parts:  # (a worker that only says it is there)
            parts[0] = ([], [], [])
        if len(parts) > 1 and any(isinstance(result, StoredAggregate) for result in stored):
            for shard, (heads, _, _) in parts.items():  # so that nothing changes anywhere
                _miscounted(self._read("counted", "\n".join(heads), shard=shard))
        tally = {"accepted": 0, "requeued": 0, "dropped": strays, "renewed": 0}
        for shard, (heads, raws, renewing) in parts.items():
            reply = self._call(
                "complete",
                self._now(),
                self._wall_now(),
                worker,
                repr(self.lease_timeout),
                len(heads),
                "\n".join(heads),
                *raws,
                *renewing,
                shard=shard,
            )
            _miscounted(reply)
            for name, value in zip(tally, reply, strict=True):
                tally[name] += int(value)
        return {
            "accepted": tally["accepted"],
            "requeued": tally["requeued"],
            "dropped": tally["dropped"],
            "renewed": tally["renewed"],
        }

    def robots(self, worker: str, report: dict[str, Any]) -> RobotsReply:
        """A worker's fetch of a host's robots.txt: its rules kept, or, when the site
        could not say (before the last attempt), asked again."""
        worker = validate.worker_name(worker)
        report = validate.robots_report(report)
        attempt = report.get("attempt", 1)
        last = attempt >= ROBOTS_ATTEMPTS
        rules = robots.rules_from(report, last)
        kept = {name: report.get(name) for name in ("status", "body", "error")}
        delay = getattr(rules, "crawl_delay", None)
        shard = self._shard_holding(report["id"])
        if shard is None:
            return {"accepted": False}
        accepted = self._call(
            "robots",
            self._now(),
            self._wall_now(),
            worker,
            report["id"],
            attempt,
            "again" if rules is None else "learn",
            _json({**kept, "last": last}),
            "" if delay is None else repr(float(delay)),
            shard=shard,
        )
        return {"accepted": bool(accepted)}

    def steer(self, job_name: str, change: dict[str, Any]) -> JobView:
        name = validate.job_name(job_name)
        action, policy = validate.steering(change)
        if self.shards > 1 and action == "set":
            self._refuse_spread(name, policy)
        change_json = _json({key: _plain(value) for key, value in policy.items()})
        done = "-"  # (one shard: its part is the job)
        if self.shards > 1 and action != "set":
            done = "1" if self.job(name)["done"] else "0"
        rooms = self._results_rooms()
        replies = [
            self._steer_shard(name, action, change_json, done, shard, rooms[shard])
            for shard in range(self.shards)
        ]
        for reply in replies:
            if reply and reply[0] == b"aggregate":
                steering.refuse_on_aggregate(name, Policy(**policy, aggregate=True))
        fields = merged_fields(map(_fields, replies))
        if not fields:
            raise self._no_such_job(name)
        now = self._clock() if self._clock is not None else self._store_time()
        return _job_view(fields, now)

    def _steer_shard(
        self, name: str, action: str, change_json: bytes, done: str, shard: int, room: int
    ) -> Any:
        hosts: list[str] | None = None
        for _ in range(SORT_TRIES):
            reply = self._call(
                "steer",
                self._now(),
                self._wall_now(),
                name,
                action,
                change_json,
                room,
                done,
                *(() if hosts is None else ("hosts", *hosts)),
                shard=shard,
            )
            if not reply or reply[0] != b"by_host":
                break
            # Its first host limits: its leased tasks count in flight on their hosts,
            # which the store cannot tell from a URL (host keys are Python's); its
            # queued tasks are sorted after.
            hosts = _with_hosts(reply[1:])
        else:
            raise StoreUnavailable(f"the store was too slow to give job {name} host limits")
        if hosts is not None:
            self._sort(name, shard)
        return reply

    def _refuse_spread(self, name: str, policy: dict[str, Any]) -> None:
        """A rate, or first host limits, for a job whose tasks are in several shards:
        each shard would hold them on its own (see shards.py)."""
        place = self._place_of(name)
        if place is None or place.kind == HOME:
            return
        paces = policy.get("rate") is not None or bool(policy.get("stages"))
        limits = place.kind == SPREAD and any(
            policy.get(field) for field in ("per_host", "host_delay", "retry_after", "obey_robots")
        )
        if paces or limits:
            kept = _fields(self._call("job", self._now(), self._wall_now(), name))
            if kept and kept["aggregate"] == "1":  # (what it takes at all, said first)
                steering.refuse_on_aggregate(name, Policy(**policy, aggregate=True))
            given = "a rate" if paces else "host limits"
            raise BadRequest(
                f"job {name} has its tasks in the store's {self.shards} shards, each of which "
                f"would hold {given} on its own: on a store of several shards, a job gets "
                f"{given} when dispatched"
            )

    def _results_rooms(self, unconfirmed: list[int] | None = None) -> list[int]:
        """``max_results`` as each shard is to hold it: less what the others hold (their
        ``unconfirmed`` counts, read here unless given)."""
        if self.shards == 1:
            return [self.max_results]
        if unconfirmed is None:
            unconfirmed = self._tallies("unconfirmed")["unconfirmed"]
        total = sum(unconfirmed)
        return [self.max_results - total + held for held in unconfirmed]

    def _sort(self, job: str, shard: int) -> None:
        """Sort some of the job's queued tasks in a shard by host (a job given its first
        host limits while it ran), a page a call; each server's housekeeping goes on."""
        self._by_host.add(job)
        for _ in range(SORT_PAGES):
            page = self._read("unsorted", job, shard=shard)
            if not page or not self._call("sort", job, *_with_hosts(page), shard=shard):
                return

    def release(self, worker: str, leases: list[list[int]]) -> int:
        worker = validate.worker_name(worker)
        pairs = validate.lease_pairs(leases)
        by_shard: dict[int, list[int]] = {}
        for task_id, attempt in pairs:
            shard = self._shard_holding(task_id)
            if shard is not None:
                by_shard.setdefault(shard, []).extend((task_id, attempt))
        released = 0
        rooms = self._results_rooms()
        for shard, flat in sorted(by_shard.items()) or [(0, [])]:
            released += int(
                self._call(
                    "release",
                    self._now(),
                    self._wall_now(),
                    worker,
                    rooms[shard],
                    *flat,
                    shard=shard,
                )
            )
        return released

    def results(
        self, job_name: str | None, max_results: int, wait: float, ack: str | None = None
    ) -> ResultsDelivery:
        name = None if job_name is None else validate.job_name(job_name)
        count = validate.integer(max_results, "max_results", 1, MAX_SUBMIT)
        wait = validate.wait(wait)
        token = None if ack is None else validate.token(ack)
        deadline = self._elapsed_clock() + wait
        if token is not None and self.shards > 1:
            self.ack(token)
            token = None
        while True:
            key = uuid.uuid4().hex
            delivered: list[StoredResult | StoredAggregate] = []
            took: list[int] = []
            done = True
            for shard in self._in_turn():
                reply = self._call(
                    "results",
                    self._now(),
                    self._wall_now(),
                    name or "",
                    count - len(delivered),
                    repr(self.lease_timeout),
                    token or "",
                    key,
                    shard=shard,
                )
                token = None  # confirmed by the first call
                kind = reply[0].decode()
                if kind == "results":
                    delivered += _stored_results(reply[2:])
                    took.append(shard)
                    if len(delivered) >= count:
                        break
                done = done and kind == "done"
            if delivered:
                return {
                    "results": delivered,
                    "done": False,
                    "token": key if self.shards == 1 else delivery_token(key, took),
                }
            if done:
                return {"results": [], "done": True, "token": None}
            remaining = deadline - self._elapsed_clock()
            if remaining <= 0:
                return {"results": [], "done": False, "token": None}
            self._wakeups.wait(remaining)

    def ack(self, token: str) -> int:
        token = validate.token(token)
        if self.shards == 1:
            return int(self._call("ack", token))
        key = token.rpartition(":")[0] or token  # (a token of one shard's: the first)
        return sum(
            int(self._call("ack", key, shard=shard))
            for shard in token_shards(token)
            if shard < self.shards
        )

    def queued(self) -> int:
        if self.shards == 1:
            return int(self._read("queued"))
        return sum(self._tallies("queued")["queued"])

    def status(self) -> StatusReply:
        now, unconfirmed = 0.0, 0
        by_job: dict[str, list[dict[str, str]]] = {}
        rows: list[Any] = []
        for shard in range(self.shards):
            reply = self._call("status", self._now(), self._wall_now(), shard=shard)
            njobs = int(reply[2])
            if shard == 0:
                now = float(reply[0])
            unconfirmed += int(reply[1])
            for fields in map(_fields, reply[3 : 3 + njobs]):
                by_job.setdefault(fields["job"], []).append(fields)
            rows += reply[3 + njobs :]
        jobs = {name: _job_view(merged_fields(parts), now) for name, parts in by_job.items()}
        if self.shards > 1:
            rows = merged_workers(rows)
        workers: list[WorkerRow] = []
        threads = 0
        for row in rows:
            name, first, last, reported, fetch_threads, recent, leased = row
            first_seen, last_seen = float(first), float(last)
            if now - last_seen <= WORKER_GONE_AFTER:
                threads += int(fetch_threads)
            span = min(RATE_WINDOW, max(now - first_seen, 1e-9))
            workers.append(
                {
                    "worker": name.decode(),
                    "last_seen_ago": round(now - last_seen, 3),
                    "reported": int(reported),
                    "threads": int(fetch_threads),
                    "rate": round(int(recent) / span, 1),
                    "leased": int(leased),
                }
            )
        workers.sort(key=lambda row: row["worker"])
        return {
            "version": __version__,
            "queued": sum(view["queued"] for view in jobs.values()),
            "leased": sum(view["leased"] for view in jobs.values()),
            "unconfirmed": unconfirmed,
            "threads": threads,
            "jobs": jobs,
            "workers": workers,
            "process": views.process_usage(),
        }

    def job(self, job_name: str) -> JobCounts:
        name = validate.job_name(job_name)
        fields = merged_fields(
            _fields(self._call("job", self._now(), self._wall_now(), name, shard=shard))
            for shard in range(self.shards)
        )
        if not fields:
            raise self._no_such_job(name)
        return _counts(fields)

    def specs(self, job_name: str, keys: list[str]) -> list[dict[str, Any]]:
        """(A job of several shards has its specs in each, the first's read here.)"""
        name = validate.job_name(job_name)
        wanted = validate.spec_keys(keys)
        found = self._read("specs", name, *wanted)
        meta = job_key(name, "meta")
        if not found and not self._guarded(lambda: self._store.exists(meta), writes=False):
            raise self._no_such_job(name)
        return [msgspec.json.decode(record) for record in found]

    def _no_such_job(self, name: str) -> NoSuchJob:
        """The error for a job the store has never heard of, naming those it has (every
        job is made in the first shard)."""
        names: list[bytes] = self._guarded(
            lambda: self._store.zrange(shared_key("jobs"), 0, -1), writes=False
        )
        known = [name.decode() for name in names]
        return NoSuchJob(unknown_job(name, known))

    # -- housekeeping -----------------------------------------------------------

    def housekeeping(self) -> None:
        with contextlib.suppress(StoreUnavailable):  # said; the next round tries again
            self.expire_leases()

    def expire_leases(self) -> int:
        """A round of housekeeping, as one call to each shard does it all: lapsed leases
        and deliveries, cancelled tasks, then some tasks of jobs left to sort by host.
        Returns the leases lapsed."""
        lapsed = 0
        rooms = self._results_rooms()
        for shard in range(self.shards):
            count, *unsorted = self._call(
                "housekeeping", self._now(), self._wall_now(), rooms[shard], shard=shard
            )
            lapsed += int(count)
            for job in unsorted:
                self._sort(job.decode(), shard)
        return lapsed

    def compact(self) -> None:
        """Nothing to rewrite: the store keeps its own files (its AOF rewrites itself)."""

    def close(self) -> None:
        self._wakeups.close()
        if self._owned:
            self._store.close()


# -- shaping replies --------------------------------------------------------------


class _Submission(NamedTuple):
    """A submit as each shard it reaches is asked to take it."""

    request: validate.SubmitRequest
    change: dict[str, Any]
    """The dispatch's policy as JSON has it: what the job must have already."""
    deadline: float
    limited: bool
    """Whether the job would have host limits, made by this batch."""
    server_limits: bool


def _refused(
    job: str, reply: list[bytes], change: dict[str, Any], spec: str | None = None
) -> Exception:
    """The error for a submit (or a job's making) the store refused."""
    kind = reply[0].decode()
    if kind == "mixed":
        return steering.not_its_kind(job, aggregate=reply[1] == b"urls")
    if kind == "cancelled":
        return BadRequest(f"job {job} was cancelled: use another job name")
    if kind == "policy":
        name = reply[1].decode()
        have = msgspec.json.decode(reply[2])[0]
        return BadRequest(steering.not_its_pace(job, name, have, change[name]))
    if kind == "nospec":
        return BadRequest(f"job {job} has no spec {spec}: send it with the batch")
    assert kind == "specs", kind
    return _too_many_specs(job)


def _miscounted(reply: list[bytes]) -> None:
    """An aggregate that does not count its span's requests is refused."""
    if reply and reply[0] == b"miscount":
        span, counted, expected = (value.decode() for value in reply[1:])
        raise BadRequest(
            f"an aggregate of {counted} requests for span {span}, which stands for {expected}"
        )


def _too_many_specs(job: str) -> BadRequest:
    return BadRequest(
        f"job {job} would send more than {MAX_JOB_SPECS} distinct method, header and "
        "body combinations"
    )


FULL = "is full: it refuses writes past its maxmemory (raise it, or make room)"
REPLICA = "takes no writes: it is a replica (is that address its primary?)"
WRITES_REFUSED = (FULL, REPLICA)


def _refusal(exc: redis.ResponseError) -> str | None:
    """What a store that refuses calls for a while does (None: the call was wrong): out
    of memory, a replica that takes no writes, a long script of another's running."""
    if isinstance(exc, redis.exceptions.OutOfMemoryError):
        return FULL
    if isinstance(exc, redis.exceptions.ReadOnlyError):
        return REPLICA
    if str(exc).startswith("BUSY"):
        return "is busy running a script"
    return None


def _with_hosts(pairs: list[bytes]) -> list[str]:
    """Flat id, URL pairs as id, host pairs."""
    return [
        text
        for i in range(0, len(pairs), 2)
        for text in (pairs[i].decode(), host_key(pairs[i + 1].decode()))
    ]


def _json(value: Any) -> bytes:
    return msgspec.json.encode(value)


def _plain(value: Any) -> Any:
    """A policy value as JSON has it (stages are a tuple of tuples here)."""
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    return value


def _fields(reply: list[bytes]) -> dict[str, str]:
    """A job's counters from the store: its name, then field and value pairs."""
    if not reply:
        return {}
    values = [item.decode() for item in reply]
    fields = dict(zip(values[1::2], values[2::2], strict=True))
    fields["job"] = values[0]
    return fields


def _counts(fields: dict[str, str]) -> JobCounts:
    """A job's counts; an aggregate job's tasks (not its results) counted in requests."""
    submitted, confirmed = int(fields["submitted"]), int(fields["confirmed"])
    sealed = fields["sealed"] == "1"
    tasks = (submitted, int(fields["queued"]), int(fields["leased"]))
    finished = (int(fields["succeeded"]), int(fields["failed"]))
    if fields["aggregate"] == "1":
        requests = int(fields["req_submitted"])
        leased = int(fields["req_leased"])
        finished = (int(fields["req_succeeded"]), int(fields["req_failed"]))
        tasks = (requests, requests - sum(finished) - leased, leased)
    return {
        "submitted": tasks[0],
        "queued": tasks[1],
        "leased": tasks[2],
        "succeeded": finished[0],
        "failed": finished[1],
        "expired": int(fields["expired"]),
        "waiting": int(fields["waiting"]),
        "handed_out": int(fields["handed_out"]),
        "confirmed": confirmed,
        "sealed": sealed,
        "done": sealed and confirmed == submitted,  # in tasks, spans or not
    }


def _job_view(fields: dict[str, str], now: float) -> JobView:
    """A job as ``status`` lists it; a staged job's target is the rate its stages ask
    for at ``now`` (the store's time)."""
    counts = _counts(fields)
    policy = msgspec.json.decode(fields["policy"])
    state = fields["state"]
    if counts["done"]:
        shown = "done"
    elif state in ("cancelled", "paused"):
        shown = state
    else:
        shown = "sealed" if counts["sealed"] else "open"
    seen = _pace_seen(fields)
    mean = seen.mean_elapsed(now)
    target = policy["rate"]
    if policy.get("stages"):
        anchor = float(fields["anchor"]) if fields["anchor"] else now
        target = Stages(policy["stages"]).rate_at(now - anchor)
    return {
        **counts,
        "state": shown,
        "policy": policy,
        "pace": {
            "target": target,
            "achieved": round(seen.rate(now), 1),
            "achieved_over": round(seen.measured_over(now), 1),
            "late": int(fields["late"]),
            "worst_lateness": round(float(fields["worst_late"]), 4),
            "mean_elapsed": mean,
            "needed_in_flight": round(target * mean, 1) if target and mean is not None else None,
        },
        "hosts": [
            {"host": host, "queued": queued, "in_flight": in_flight}
            for host, queued, in_flight in _busiest_hosts(fields["hosts"])
        ],
    }


def _pace_seen(fields: dict[str, str]) -> PaceSeen:
    """A job's pace lately, from what the store kept of it by the second."""
    kept = msgspec.json.decode(fields["seconds"]) or []  # Lua's empty table is "{}"
    by_second: dict[int, list[Any]] = {}
    for name, value in zip(kept[::2], kept[1::2], strict=True):
        entry = by_second.setdefault(int(name[1:]), [int(name[1:]), 0, 0.0])
        if name[0] == "n":
            entry[1] = int(value)
        else:
            entry[2] = float(value)
    first = float(fields["first_result"]) if fields["first_result"] else None
    return PaceSeen.of_seconds(first, [by_second[second] for second in sorted(by_second)])


def _busiest_hosts(text: str) -> list[tuple[str, int, int]]:
    """The hosts with the longest queues, as the embedded broker lists them."""
    rows = []
    for line in text.splitlines():
        host, queued, in_flight = line.rsplit(" ", 2)
        if int(queued) or int(in_flight):
            rows.append((host, int(queued), int(in_flight)))
    return sorted(rows, key=lambda row: (-row[1], row[0]))[:BUSIEST_HOSTS]


TASK_FIELDS = 9


def _task_records(flat: list[bytes]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The leased tasks as a worker receives them (an aggregate job's spans as spans, a
    robots.txt fetch as one), and those to check against their host's robots.txt."""
    records = []
    checked = []
    span_jobs: set[str] = set()
    spacings: dict[int, float] = {}
    for at in range(0, len(flat), TASK_FIELDS):
        task_id, job, url, attempt, timeout, submitted, start, spec, kind = flat[
            at : at + TASK_FIELDS
        ]
        record = {
            "v": RECORD_VERSION,
            "id": int(task_id),
            "job": job.decode(),
            "url": url.decode(),
            "attempt": int(attempt),
            "timeout": float(timeout),
            "submitted": float(submitted),
            "scheduled": float(start) if start else None,
        }
        if spec:
            record["spec"] = spec.decode()
        if kind.startswith(b"span"):
            span_jobs.add(job.decode())
            if kind != b"span":  # a paced span: its requests' spacing
                spacings[int(task_id)] = float(kind[5:])
        elif kind == b"check":
            checked.append(record)
        elif kind.startswith(b"robots "):
            record.update(url=origin(url.decode()) + "/robots.txt", kind=ROBOTS)
            record["host"] = kind[7:].decode()
        records.append(record)
    if span_jobs:
        as_spans(records, list(span_jobs), spacings)
    return records, checked


def _stored_results(flat: Iterable[bytes]) -> list[StoredResult]:
    """Results as the store keeps them: a worker's text, or what the server ended a task
    with (``!`` and its reason), each under the job of its task."""
    items = list(flat)
    results = []
    for at in range(0, len(items), 3):
        job, task_id, value = items[at].decode(), int(items[at + 1]), items[at + 2]
        if value.startswith(b"!"):
            kind, message, worker, attempt, wall, url, timeout, submitted, span = (
                msgspec.json.decode(value[1:])
            )
            first_url = read_span(url).urls_from(0, 1)[0] if span else url
            task = make_task(task_id, job, first_url, attempt, float(timeout), float(submitted))
            record = make_result(
                task,
                worker=worker,
                started=float(wall),
                elapsed=0.0,
                error=make_error(kind, message),
            )
            results.append(ended_span(record, read_span(url)) if span else StoredResult.of(record))
            continue
        if value.startswith(b"@"):  # an aggregate
            aggregate = StoredAggregate.read(value[1:])
            results.append(aggregate if aggregate.job == job else aggregate.with_job(job))
            continue
        result = StoredResult.read(value)
        results.append(result if result.job == job else result.with_job(job))
    return results
