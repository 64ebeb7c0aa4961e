"""The broker on a store: a ``BrokerService`` whose state is in Valkey or Redis.

Each call is checked here exactly as the embedded broker checks it
(``validate``), then made by one function in the store (``fetchq.lua``), atomic
there: several servers on one store are one broker.  What a call waits for
(tasks, room, results) it waits for here, woken by the store's messages and
asking again at least every ``POLL`` seconds.

Times: without a clock given, the functions read the store's own (``TIME``), so
that deadlines and schedules mean the same to every server.  Tests give a clock
of their own, passed to each call.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import msgspec
import redis

from fetchq import __version__, defaults
from fetchq.errors import (
    AuthFailed,
    BadRequest,
    NoSuchJob,
    StoreUnavailable,
    VersionMismatch,
)
from fetchq.messages import say
from fetchq.server import robots, steering, validate, views
from fetchq.server.broker import CLOCK_STEP
from fetchq.server.completion import MAX_HOLD, ended_span
from fetchq.server.jobqueue import ROBOTS_ATTEMPTS, Policy, Robots
from fetchq.server.jobs import PaceSeen, unknown_job
from fetchq.server.leasing import as_spans
from fetchq.server.store.connection import (
    CHANNELS,
    PASSWORD_VARIABLE,
    STORE_ERRORS,
    TAG,
    Store,
    connect,
    job_key,
    load_library,
    shared_key,
    shown,
)
from fetchq.server.views import BUSIEST_HOSTS
from fetchq.urls import host_key, origin
from fetchq.wire.aggregates import StoredAggregate, read_span, span_size
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
        self._failing: str | None = None
        """Why the store did not answer, said once (None: it answers)."""
        self._back_at = float("-inf")
        """When the store last answered again after an outage (``time.monotonic``)."""
        self._failed_at = float("-inf")
        """When the outage under way was said."""
        self._saying = threading.Lock()
        self._robots: dict[tuple[str, str], Robots] = {}
        """robots.txt rules read from the store, by job and host."""
        self._by_host: set[str] = set()
        """Jobs with host limits, whose submits carry each URL's host (learnt from the
        store, which asks for them)."""
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
        self._warn_of_eviction()
        self._wakeups = Wakeups(self._store)

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

    def _call(self, name: str, *args: Any) -> Any:
        """One of fetchq's functions in the store; one the store lost (it restarted
        empty) is loaded again."""

        def call() -> Any:
            try:
                return self._store.fcall(f"fq_{name}", 1, TAG, *args)
            except redis.ResponseError as exc:
                if "function not found" not in str(exc).lower():
                    raise
                load_library(self._store, again=True)
                return self._store.fcall(f"fq_{name}", 1, TAG, *args)

        return self._guarded(call)

    def _read(self, name: str, *args: Any) -> Any:
        return self._guarded(lambda: self._store.fcall_ro(f"fq_{name}", 1, TAG, *args))

    def _guarded(self, command: Callable[[], Any]) -> Any:
        """``command`` on the store.  A store that does not answer is said once an
        outage, here, and is ``StoreUnavailable`` to the client, which waits and asks
        again.  Calls run side by side, so only a call begun after the outage was said
        can end it, and only one begun after the store came back can start another."""
        began = time.monotonic()
        try:
            reply = command()
        except STORE_ERRORS as exc:
            raise self._unavailable(
                f"does not answer ({exc or type(exc).__name__})", began
            ) from None
        except redis.ResponseError as exc:
            trouble = _refusal(exc)
            if trouble is None:
                raise
            raise self._unavailable(trouble, began) from None
        if self._failing is not None:
            with self._saying:
                if self._failing is not None and began > self._failed_at:
                    self._failing, self._back_at = None, time.monotonic()
                    say(f"server: store {self.shown} answers again")
        return reply

    def _unavailable(self, trouble: str, began: float) -> StoreUnavailable:
        """``trouble``: what the store does, as ``does not answer (why)``."""
        with self._saying:
            if self._failing is None and began > self._back_at:
                self._failing, self._failed_at = trouble, time.monotonic()
                say(f"server: store {self.shown} {trouble}; clients wait for it")
        return StoreUnavailable(f"the server's store {trouble}; try again later")

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
            reply = self._call(
                "hello", self._now(), validate.worker_name(worker), threads, _json(runs)
            )
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
        sizes = ",".join(str(span_size(text)) for text in request.urls) if request.spans else ""
        attempts = request.attempts or self.max_attempts
        change = {name: _plain(value) for name, value in request.policy.items()}
        policy = views.policy_view(Policy(**request.policy))
        specs = [
            part for key, spec in request.specs.items() for part in (key, _json(spec_record(spec)))
        ]
        server_limits = bool(self.per_host or self.host_delay)
        limited = not request.spans and (server_limits or Policy(**request.policy).limits_hosts)
        deadline = self._elapsed_clock() + request.wait
        while True:
            hosted = limited or request.job in self._by_host
            reply = self._call(
                "submit",
                self._now(),
                self._wall_now(),
                request.job,
                request.batch_id or "",
                attempts,
                repr(request.timeout),
                self.max_pending,
                _json(change),
                _json(policy),
                request.spec or "",
                MAX_JOB_SPECS,
                "1" if hosted else "0",
                len(request.specs),
                *specs,
                *request.urls,
                *(map(host_key, request.urls) if hosted else ()),
                sizes,
                "1" if server_limits else "0",
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
            if kind == "mixed":
                raise steering.not_its_kind(request.job, aggregate=reply[1] == b"urls")
            if kind == "cancelled":
                raise BadRequest(f"job {request.job} was cancelled: use another job name")
            if kind == "policy":
                name = reply[1].decode()
                have = msgspec.json.decode(reply[2])[0]
                raise BadRequest(steering.not_its_pace(request.job, name, have, change[name]))
            if kind == "nospec":
                raise BadRequest(
                    f"job {request.job} has no spec {request.spec}: send it with the batch"
                )
            if kind == "specs":
                raise BadRequest(
                    f"job {request.job} would send more than {MAX_JOB_SPECS} distinct "
                    "method, header and body combinations"
                )
            assert kind == "full", kind
            remaining = deadline - self._elapsed_clock()
            if remaining <= 0:
                return {"accepted": 0, "full": True, "queued": int(reply[1])}
            self._wakeups.wait(remaining)

    def seal(self, job_name: str) -> JobCounts:
        name = validate.job_name(job_name)
        policy = views.policy_view(Policy())
        return _counts(_fields(self._call("seal", self._wall_now(), name, _json(policy))))

    def lease(self, worker: str, max_tasks: int, wait: float) -> list[dict[str, Any]]:
        worker = validate.worker_name(worker)
        count = validate.integer(max_tasks, "max_tasks", 1, MAX_LEASE)
        wait = validate.wait(wait)
        deadline = self._elapsed_clock() + wait
        while True:
            flat = self._call(
                "lease",
                self._now(),
                self._wall_now(),
                worker,
                count,
                repr(self.lease_timeout),
                self.max_results,
                self.per_host or "",
                repr(self.host_delay),
            )
            leased, checked = _task_records(flat)
            if checked:
                leased = self._obeying_robots(worker, leased, checked)
            if leased:
                return leased
            remaining = deadline - self._elapsed_clock()
            if remaining <= 0:
                return []
            self._wakeups.wait(remaining)

    def _obeying_robots(
        self, worker: str, leased: list[dict[str, Any]], checked: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """``leased`` without the tasks their host's robots.txt forbids: those end as
        results without a request (the store keeps the rules; they are read here)."""
        refused: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for task in checked:
            key = (task["job"], host_key(task["url"]))
            if not self._rules(*key).allowed(task["url"]):
                refused.setdefault(key, []).append(task)
        for (job, host), tasks in refused.items():
            why = robots.refusal(self._rules(job, host))
            self._call(
                "refuse", self._now(), self._wall_now(), worker, job, ROBOTS_REFUSED, why,
                *(task["id"] for task in tasks),
            )  # fmt: skip
        gone = {id(task) for tasks in refused.values() for task in tasks}
        return [task for task in leased if id(task) not in gone]

    def _rules(self, job: str, host: str) -> Robots:
        """A host's robots.txt for a job, as the store keeps it (read once: it does not
        change once known)."""
        key = (job, host)
        rules = self._robots.get(key)
        if rules is None:
            kept = self._guarded(lambda: self._store.hget(job_key(job, "rules"), host))
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
        heads, raws = [], []
        for result in stored:
            head = result.head
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
        reply = self._call(
            "complete",
            self._now(),
            self._wall_now(),
            worker,
            repr(self.lease_timeout),
            len(stored),
            "\n".join(heads),
            *raws,
            *(value for pair in held for value in pair),
        )
        if reply[0] == b"miscount":
            span, counted, expected = (value.decode() for value in reply[1:])
            raise BadRequest(
                f"an aggregate of {counted} requests for span {span}, which stands for {expected}"
            )
        accepted, requeued, dropped, renewed = map(int, reply)
        return {"accepted": accepted, "requeued": requeued, "dropped": dropped, "renewed": renewed}

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
        )
        return {"accepted": bool(accepted)}

    def steer(self, job_name: str, change: dict[str, Any]) -> JobView:
        name = validate.job_name(job_name)
        action, policy = validate.steering(change)
        change_json = _json({key: _plain(value) for key, value in policy.items()})
        hosts: list[str] | None = None
        for _ in range(SORT_TRIES):
            reply = self._call(
                "steer",
                self._now(),
                self._wall_now(),
                name,
                action,
                change_json,
                self.max_results,
                *(() if hosts is None else ("hosts", *hosts)),
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
            self._sort(name)
        if reply and reply[0] == b"aggregate":
            steering.refuse_on_aggregate(name, Policy(**policy, aggregate=True))
        fields = _fields(reply)
        if not fields:
            raise self._no_such_job(name)
        now = self._clock() if self._clock is not None else self._store_time()
        return _job_view(fields, now)

    def _sort(self, job: str) -> None:
        """Sort some of the job's queued tasks by host (a job given its first host
        limits while it ran), a page a call; each server's housekeeping goes on."""
        self._by_host.add(job)
        for _ in range(SORT_PAGES):
            page = self._read("unsorted", job)
            if not page or not self._call("sort", job, *_with_hosts(page)):
                return

    def release(self, worker: str, leases: list[list[int]]) -> int:
        worker = validate.worker_name(worker)
        pairs = validate.lease_pairs(leases)
        flat = [value for pair in pairs for value in pair]
        return int(
            self._call("release", self._now(), self._wall_now(), worker, self.max_results, *flat)
        )

    def results(
        self, job_name: str | None, max_results: int, wait: float, ack: str | None = None
    ) -> ResultsDelivery:
        name = None if job_name is None else validate.job_name(job_name)
        count = validate.integer(max_results, "max_results", 1, MAX_SUBMIT)
        wait = validate.wait(wait)
        token = None if ack is None else validate.token(ack)
        deadline = self._elapsed_clock() + wait
        while True:
            reply = self._call(
                "results",
                self._now(),
                self._wall_now(),
                name or "",
                count,
                repr(self.lease_timeout),
                token or "",
                uuid.uuid4().hex,
            )
            token = None  # confirmed by the first call
            kind = reply[0].decode()
            if kind == "results":
                return {
                    "results": _stored_results(reply[2:]),
                    "done": False,
                    "token": reply[1].decode(),
                }
            if kind == "done":
                return {"results": [], "done": True, "token": None}
            remaining = deadline - self._elapsed_clock()
            if remaining <= 0:
                return {"results": [], "done": False, "token": None}
            self._wakeups.wait(remaining)

    def ack(self, token: str) -> int:
        return int(self._call("ack", validate.token(token)))

    def queued(self) -> int:
        return int(self._read("queued"))

    def status(self) -> StatusReply:
        reply = self._call("status", self._now(), self._wall_now())
        now, unconfirmed, njobs = float(reply[0]), int(reply[1]), int(reply[2])
        jobs = {}
        for fields in map(_fields, reply[3 : 3 + njobs]):
            jobs[fields["job"]] = _job_view(fields, now)
        workers: list[WorkerRow] = []
        threads = 0
        for row in reply[3 + njobs :]:
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
        fields = _fields(self._call("job", self._now(), self._wall_now(), name))
        if not fields:
            raise self._no_such_job(name)
        return _counts(fields)

    def specs(self, job_name: str, keys: list[str]) -> list[dict[str, Any]]:
        name = validate.job_name(job_name)
        wanted = validate.spec_keys(keys)
        found = self._read("specs", name, *wanted)
        if not found and not self._guarded(lambda: self._store.exists(job_key(name, "meta"))):
            raise self._no_such_job(name)
        return [msgspec.json.decode(record) for record in found]

    def _no_such_job(self, name: str) -> NoSuchJob:
        """The error for a job the store has never heard of, naming those it has."""
        names: list[bytes] = self._guarded(lambda: self._store.zrange(shared_key("jobs"), 0, -1))
        known = [name.decode() for name in names]
        return NoSuchJob(unknown_job(name, known))

    # -- housekeeping -----------------------------------------------------------

    def housekeeping(self) -> None:
        with contextlib.suppress(StoreUnavailable):  # said; the next round tries again
            self.expire_leases()

    def expire_leases(self) -> int:
        """A round of housekeeping, as one call to the store does it all: lapsed leases
        and deliveries, cancelled tasks, then some tasks of jobs left to sort by host.
        Returns the leases lapsed."""
        lapsed, *unsorted = self._call(
            "housekeeping", self._now(), self._wall_now(), self.max_results
        )
        for job in unsorted:
            self._sort(job.decode())
        return int(lapsed)

    def compact(self) -> None:
        """Nothing to rewrite: the store keeps its own files (its AOF rewrites itself)."""

    def close(self) -> None:
        self._wakeups.close()
        if self._owned:
            self._store.close()


# -- shaping replies --------------------------------------------------------------


def _refusal(exc: redis.ResponseError) -> str | None:
    """What a store that refuses calls for a while does (None: the call was wrong): out
    of memory, a replica that takes no writes, a long script of another's running."""
    if isinstance(exc, redis.exceptions.OutOfMemoryError):
        return "is full: it refuses writes past its maxmemory (raise it, or make room)"
    if isinstance(exc, redis.exceptions.ReadOnlyError):
        return "takes no writes: it is a replica (is that address its primary?)"
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
