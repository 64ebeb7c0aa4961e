"""One worker process: lease tasks, fetch them on threads, report results in batches.

The main thread leases (keeping a small prefetch queue full so fetch threads
never wait on the broker), fetch threads each own a ``Fetcher`` and its
keep-alive session, and a reporter thread sends finished results in batches
and renews the leases of everything this process still holds.  Nothing
between the broker and the fetch threads is on a request's critical path.
"""

from __future__ import annotations

import collections
import contextlib
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from fetchq import defaults
from fetchq.commands.cpus import claim_a_cpu
from fetchq.config import ServerLink
from fetchq.errors import FetchqError, ServerUnavailable
from fetchq.fetch import Fetcher
from fetchq.fetch.spans import PacedFeed, SpanRun
from fetchq.fetch.specbook import SpecBook, unsendable
from fetchq.messages import plural, say
from fetchq.signals import StopRequest
from fetchq.wire.aggregates import SPAN
from fetchq.wire.client import BrokerClient, ResilientClient, Stopper
from fetchq.wire.records import ROBOTS, worker_identity

Work = dict[str, Any] | tuple[SpanRun, dict[str, Any]]
"""What a fetch thread takes: a task, or one request of a span being run."""


@dataclass(frozen=True)
class WorkerSettings:
    concurrency: int = defaults.CONCURRENCY
    prefetch: int = 0
    """Tasks leased ahead of the fetch threads (0: twice the concurrency)."""
    connect_timeout: float = defaults.CONNECT_TIMEOUT
    follow_redirects: bool = False
    burst: bool = False
    """Exit once the server has no task left to lease."""
    grace: float = defaults.GRACE
    """Seconds in-flight requests may take to finish after a stop request."""
    pin: bool = True
    """Keep each worker process on a CPU of its own (see ``claim_a_cpu``)."""

    @property
    def queue_size(self) -> int:
        return self.prefetch or 2 * self.concurrency


class _EitherStop:
    """Stops reconnect waits on a stop request or once the grace period is over."""

    def __init__(self, request: StopRequest, abandon: threading.Event) -> None:
        self.request = request
        self.abandon = abandon

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not (self.request.requested or self.abandon.is_set()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.abandon.wait(min(remaining, 0.1))
        return True


class WorkerEngine:
    def __init__(
        self,
        make_client: Callable[[Stopper], BrokerClient],
        settings: WorkerSettings,
        stop: StopRequest,
        identity: str,
    ) -> None:
        self.settings = settings
        self.stop = stop
        self.identity = identity
        self._abandon = threading.Event()
        """Set when the grace period is over: calls stop waiting for the server."""
        # Leasing gives up waiting for the server as soon as a stop is asked for;
        # reporting keeps trying through the grace period, so results get home.
        self._lease_client = make_client(_EitherStop(stop, self._abandon))
        self._report_client = make_client(self._abandon)
        # Hand-offs cost no thread wake-up per task: fetch threads block on a C
        # SimpleQueue only when it is empty, wake the leaser only when it runs low,
        # and append results to a deque the reporter empties on a timer.
        self._inbox: queue.SimpleQueue[Work | None] = queue.SimpleQueue()
        self._outbox: collections.deque[dict[str, Any]] = collections.deque()
        self._low_water = max(1, settings.queue_size // 2)
        self._hungry = threading.Event()
        self._held: dict[int, int] = {}
        """Task id -> attempt of every task leased and not yet reported."""
        self._held_lock = threading.Lock()
        self._sending = 0
        """Reports on their way (under ``_held_lock``): a failed attempt's result or a
        robots.txt report queues work when the server applies it."""
        self._robots_reports: collections.deque[dict[str, Any]] = collections.deque()
        self._returned: list[dict[str, Any]] = []
        """Tasks a fetch thread was waiting to start when a stop came: they go back."""
        self._reporting_done = threading.Event()
        self._specs = SpecBook(lambda job, keys: self._lease_client.call("specs", job, keys))
        self._paced: PacedFeed | None = None
        """Hands paced spans' requests to the fetch threads as they come due (made at the
        first such span)."""
        self.fetched = 0
        """Results the server took."""
        self.failure: FetchqError | None = None
        """An error that stopped this worker: the server refused what it reported."""

    def run(self, logged_in: Callable[[], None] = lambda: None) -> int:
        """Work until stopped (or, in burst mode, until no work is left); ``logged_in``
        is called once the server has taken this worker's key and version."""
        try:
            info = self._lease_client.connect()
        except ServerUnavailable:
            if self.stop.requested:
                return 0  # asked to stop while still waiting for the server
            raise
        logged_in()
        lease_timeout = float(info.get("lease_timeout", defaults.LEASE_TIMEOUT))
        fetchers = [
            threading.Thread(target=self._fetch_loop, name=f"fetch-{n}", daemon=True)
            for n in range(self.settings.concurrency)
        ]
        reporter = threading.Thread(
            target=self._report_or_stop, args=(lease_timeout,), name="reporter", daemon=True
        )
        for thread in [*fetchers, reporter]:
            thread.start()
        # A second signal raises KeyboardInterrupt out of here: no draining then,
        # the leases of whatever was held simply expire on the server.
        try:
            self._lease_loop()
        except ServerUnavailable:
            if not self.stop.requested:
                raise
            # Asked to stop while the server was away: still drain, and keep trying
            # to report what was fetched for as long as the grace period lasts.
        self._shut_down(fetchers, reporter)
        if self.failure is not None:
            raise self.failure
        return self.fetched

    # -- main thread: leasing ---------------------------------------------

    def _lease_loop(self) -> None:
        size = self.settings.queue_size
        while not self.stop.requested:
            waiting = self._inbox.qsize()
            if waiting > self._low_water or waiting >= size:  # (a queue of 1 is both at 1)
                self._hungry.wait(0.1)  # set by a fetch thread once the queue runs low
                self._hungry.clear()
                continue
            if self._paced is not None and not self._paced.has_room():
                self._paced.room.wait(0.05)  # set when a paced span is done
                self._paced.room.clear()
                continue
            want = size - waiting
            tasks = self._lease_client.call("lease", self.identity, want, defaults.POLL_WAIT)
            if not tasks:
                if self.settings.burst and self._idle() and self._nothing_queued():
                    return
                continue
            with self._held_lock:
                for task in tasks:
                    self._held[task["id"]] = task["attempt"]
            for task in self._specs.fill(tasks):
                self._outbox.append(unsendable(task, self.identity))
                tasks.remove(task)
            for task in tasks:
                if task.get("kind") == SPAN:
                    self._run_span(task)
                else:
                    self._inbox.put(task)

    def _run_span(self, task: dict[str, Any]) -> None:
        """Queue a span's requests; one the server sent unreadable goes back at once."""
        try:
            run = SpanRun(task, self.identity)
        except ValueError as exc:
            say(f"worker {self.identity}: a span it cannot run ({exc}): handed back")
            self._release([task])
            return
        if run.paced:
            if self._paced is None:
                self._paced = PacedFeed(
                    self._inbox.put,
                    lambda: self._lease_client.clock_offset,
                    self.settings.concurrency,
                )
            self._paced.add(run)
            return
        for request in run.requests():
            self._inbox.put(request)

    def _nothing_queued(self) -> bool:
        """An empty lease can also mean "paused": too many results wait for an output."""
        return int(self._lease_client.call("queued")) == 0

    def _idle(self) -> bool:
        with self._held_lock:
            return not self._held and not self._sending

    @contextlib.contextmanager
    def _sending_report(self, ids: list[int]) -> Iterator[None]:
        """While a report is on its way, its tasks are no longer held (nor renewed),
        but the worker is not idle: the server has yet to queue what it brings."""
        with self._held_lock:
            for task_id in ids:
                self._held.pop(task_id, None)
            self._sending += 1
        try:
            yield
        finally:
            with self._held_lock:
                self._sending -= 1

    # -- fetch threads ----------------------------------------------------

    def _fetch_loop(self) -> None:
        fetcher = Fetcher(
            self.identity,
            connect_timeout=self.settings.connect_timeout,
            follow_redirects=self.settings.follow_redirects,
        )
        try:
            while True:
                task = self._inbox.get()
                if task is None:
                    return
                if not self._hungry.is_set() and self._inbox.qsize() <= self._low_water:
                    self._hungry.set()
                if isinstance(task, tuple):  # one request of a span
                    self._fetch_span_request(fetcher, *task)
                    continue
                if task.get("kind") == ROBOTS:
                    self._robots_reports.append(fetcher.fetch_robots(task))
                    continue
                due = self._when_due(task)
                if due is not None and self._wait_until(due):
                    self._returned.append(task)  # asked to stop before it was due
                    continue
                self._outbox.append(fetcher.fetch(task, scheduled=due))
        finally:
            fetcher.close()

    def _fetch_span_request(self, fetcher: Fetcher, run: SpanRun, request: dict[str, Any]) -> None:
        if not run.paced:
            record = run.add(fetcher.fetch(request))
        else:
            due = self._when_due(request)
            if run.abandoned or (due is not None and self._wait_until(due)):
                self._give_up(run)  # stopping: the span's lease lapses, and it runs again
                return
            result = fetcher.fetch(request, scheduled=due)
            assert self._paced is not None
            self._paced.timed(result["elapsed"])
            record = run.add(result)
            if record is not None:
                self._paced.done(run)
        if record is not None:
            self._outbox.append(record)

    def _give_up(self, run: SpanRun) -> None:
        """A paced span begun when a stop came: it cannot finish on schedule in the
        grace period, so it is left to lapse (counted as leased again when it reruns:
        some of its requests went out unmeasured)."""
        if run.abandoned:
            return
        run.abandoned = True
        with self._held_lock:
            self._held.pop(run.id, None)  # no longer renewed
        if self._paced is not None:
            self._paced.done(run)

    def _when_due(self, task: dict[str, Any]) -> float | None:
        """A task's scheduled start on this machine's clock (None: start at once)."""
        scheduled = task.get("scheduled")
        if not isinstance(scheduled, int | float):
            return None
        return float(scheduled) - self._lease_client.clock_offset

    def _wait_until(self, due: float) -> bool:
        """Sleep until ``due``, never past it on purpose; True if asked to stop first."""
        delay = due - time.time()
        return delay > 0 and self.stop.event.wait(delay)

    # -- reporter thread --------------------------------------------------

    def _report_or_stop(self, lease_timeout: float) -> None:
        """A reporter that fails for a reason of its own stops the worker, loudly:
        fetching on without reporting would only let every lease lapse."""
        try:
            self._report_loop(lease_timeout)
        except Exception as exc:
            self.failure = FetchqError(f"worker {self.identity}: reporting failed: {exc!r}")
            self.stop.request()

    def _report_loop(self, lease_timeout: float) -> None:
        """Send results in batches every FLUSH_INTERVAL (at once when a batch is full);
        every third of the lease timeout the same call renews the leases still held."""
        renew_every = max(lease_timeout / 3, 0.2)
        next_renewal = time.monotonic() + renew_every
        while True:
            batch: list[dict[str, Any]] = []
            while self._outbox and len(batch) < defaults.RESULT_BATCH:
                batch.append(self._outbox.popleft())
            while self._robots_reports:
                self._report_robots(self._robots_reports.popleft())
            renewal_due = time.monotonic() >= next_renewal
            if batch or renewal_due:
                self._report(batch, renew=renewal_due)
                if renewal_due:
                    next_renewal = time.monotonic() + renew_every
            if len(batch) < defaults.RESULT_BATCH:  # caught up: let results gather
                if self._reporting_done.is_set() and not self._outbox and not self._robots_reports:
                    return  # (a fetch may have ended while the last report was on its way)
                self._reporting_done.wait(defaults.FLUSH_INTERVAL)

    def _report_robots(self, report: dict[str, Any]) -> None:
        try:
            with self._sending_report([report["id"]]):
                self._report_client.call("robots", self.identity, report)
        except FetchqError as exc:
            if not self._abandon.is_set():
                say(f"worker {self.identity}: could not report a robots.txt: {exc}")

    def _report(self, batch: list[dict[str, Any]], *, renew: bool) -> None:
        """Report ``batch`` (with the leases still held, when ``renew``); the reporter
        retries through outages, so only a refusal or giving up lands here."""
        with self._sending_report([result["id"] for result in batch]):
            with self._held_lock:
                held = [[task, attempt] for task, attempt in self._held.items()] if renew else []
            if not batch and not held:
                return
            try:
                self._report_client.call("complete", self.identity, batch, held)
            except FetchqError as exc:
                if self._abandon.is_set():
                    return  # shutting down past the grace period; the leases will expire
                # Refused (another key or version after a server restart, say): these
                # tasks were not recorded; their leases lapse and they run again.
                refused = plural(len(batch), "result")
                say(f"worker {self.identity}: the server refused {refused}: {exc}")
                if self.failure is None and not isinstance(exc, ServerUnavailable):
                    self.failure = exc
                    self.stop.request()
                return
        self.fetched += sum(result.get("requests", 1) for result in batch)

    # -- stopping ---------------------------------------------------------

    def _shut_down(self, fetchers: list[threading.Thread], reporter: threading.Thread) -> None:
        """Hand back what has not started, let what has finish, report it all."""
        give_up = threading.Timer(self.settings.grace, self._abandon.set)
        give_up.daemon = True
        give_up.start()
        unstarted: list[dict[str, Any]] = []
        spans: dict[int, list[tuple[SpanRun, dict[str, Any]]]] = {}
        """The unstarted requests of each span run (by ``id`` of the run: a span leased
        again may have a second run here)."""
        for run in self._paced.close() if self._paced is not None else []:
            if run.begun:
                self._give_up(run)
            else:  # none of it started: it goes back whole
                run.abandoned = True
                unstarted.append(run.task)
        while True:
            try:
                task = self._inbox.get_nowait()
            except queue.Empty:
                break
            if isinstance(task, tuple):
                spans.setdefault(id(task[0]), []).append(task)
            elif task is not None:
                unstarted.append(task)
        for requests in spans.values():
            run = requests[0][0]
            if run.abandoned:
                continue
            if len(requests) == run.span.count:  # none of it started: it goes back whole
                run.abandoned = True
                unstarted.append(run.task)
            else:  # begun: it finishes in the grace period, or its lease lapses
                for request in requests:
                    self._inbox.put(request)
        for _ in fetchers:
            self._inbox.put(None)
        if unstarted:
            self._release(unstarted)
        deadline = time.monotonic() + self.settings.grace
        for thread in fetchers:
            thread.join(max(0.0, deadline - time.monotonic()))
        if self._returned:
            self._release(self._returned)
        if any(thread.is_alive() for thread in fetchers):
            say(f"worker {self.identity}: requests still running after the grace period")
        self._reporting_done.set()
        reporter.join(max(0.0, deadline - time.monotonic()))
        self._abandon.set()
        give_up.cancel()
        reporter.join(5.0)

    def _release(self, tasks: list[dict[str, Any]]) -> None:
        """Hand ``tasks`` back, on the report client: at a stop, that one still waits
        out a broken connection for the grace period, where leasing gives up at once."""
        pairs = [[task["id"], task["attempt"]] for task in tasks]
        try:
            self._report_client.call("release", self.identity, pairs)
        except FetchqError as exc:
            back = plural(len(tasks), "task")
            say(
                f"worker {self.identity}: could not hand back {back} ({exc}); "
                "their leases will expire"
            )
        with self._held_lock:
            for task in tasks:
                self._held.pop(task["id"], None)


def run_worker_process(link: ServerLink, settings: WorkerSettings) -> int:
    """One worker process from start to exit: connect, work, drain, report."""
    stop = StopRequest().install()
    identity = worker_identity()
    cpu = claim_a_cpu() if settings.pin else None

    def make_client(stopper: Stopper) -> BrokerClient:
        # A worker waits for its server for ever, whether it was ever reached or not.
        return ResilientClient(
            link,
            give_up_after=None,
            first_give_up=None,
            stop=stopper,
            introduce={"worker": identity, "threads": settings.concurrency, "runs": [SPAN]},
            clock_samples=defaults.CLOCK_SAMPLES,
        )

    engine = WorkerEngine(make_client, settings, stop, identity)
    where = f", on CPU {cpu}" if cpu is not None else ""
    threads = plural(settings.concurrency, "fetch thread")
    fetched = engine.run(
        logged_in=lambda: say(f"worker {identity}: {threads}{where}, server {link.address}")
    )
    reason = f" on {stop.signal_name}" if stop.signal_name else ""
    say(f"worker {identity}: stopped{reason} after {plural(fetched, 'request')}")
    return 0


def child_worker_process(link: ServerLink, settings: WorkerSettings) -> None:
    """Entry point of a worker started by ``--processes``: a spawned child.

    It leaves the terminal's process group (the parent forwards signals, so a
    Ctrl-C is counted once) and stops by itself if the parent disappears."""
    os.setpgrp()
    parent = os.getppid()
    watcher = threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True)
    watcher.start()
    sys.exit(run_worker_process(link, settings))


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)
