"""Batched, idempotent submission with backpressure: the dispatcher's engine."""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from fetchq import defaults
from fetchq.wire.api import MAX_SUBMIT_BYTES
from fetchq.wire.client import BrokerClient
from fetchq.wire.specs import Spec, spec_key, spec_record

SIZE_CHECK_EVERY = 256
"""URLs added between two looks at a batch's size: a look per URL would cost the
dispatcher a tenth of its time, and 256 URLs of at most 8,192 characters stay
far inside the gap between MAX_SUBMIT_BYTES and the frame limit."""


def new_job_name() -> str:
    return time.strftime("job-%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


class _Sender(threading.Thread):
    """Sends one batch at a time on a thread of its own, so that the dispatcher builds
    the next batch (reading, checking, encoding URLs) while the server takes this one."""

    def __init__(self, send: Callable[[dict[str, Any]], None]) -> None:
        super().__init__(name="fetchq-submit", daemon=True)
        self._send = send
        self._requests: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        self._idle = threading.Event()
        self._idle.set()
        self._failure: BaseException | None = None

    def run(self) -> None:
        while (request := self._requests.get()) is not None:
            try:
                self._send(request)
            except BaseException as exc:  # handed to the caller at its next wait
                self._failure = exc
            finally:
                self._idle.set()

    def send(self, request: dict[str, Any]) -> None:
        self.wait()
        self._idle.clear()
        self._requests.put(request)

    def wait(self) -> None:
        """Until the batch in flight is taken; its failure, if any, is raised here."""
        while not self._idle.wait(0.1):  # short waits: a Ctrl-C is seen at once
            pass
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure

    def close(self) -> None:
        self._requests.put(None)


class Submitter:
    """Collects URLs into batches and submits each exactly once.

    Every batch carries an id made of a per-run random part and a sequence
    number, so a batch re-sent after a lost reply is recognised by the server.
    One batch is in flight while the next is built (``_Sender``); the caller
    hears of a batch's failure when it hands over the next one, or at
    ``finish``.  A full server queue makes the sending wait (calling
    ``on_full``) instead of growing the server without bound; ``on_accepted``
    hears of each batch the server took, so a progress display moves once a
    batch, not once a URL.  A batch is also sent early once its URLs reach
    MAX_SUBMIT_BYTES, so that long URLs never make a frame the server
    refuses."""

    def __init__(
        self,
        client: BrokerClient,
        job: str,
        *,
        timeout: float = defaults.TASK_TIMEOUT,
        attempts: int | None = None,
        batch_size: int = defaults.SUBMIT_BATCH,
        on_full: Callable[[int], None] | None = None,
        on_accepted: Callable[[int], None] | None = None,
        policy: dict[str, Any] | None = None,
        spec: Spec | None = None,
    ) -> None:
        """``spec``: what every task sends (None: a GET), until ``use`` says otherwise."""
        self.client = client
        self.job = job
        self.timeout = timeout
        self.attempts = attempts
        self.batch_size = batch_size
        self.on_full = on_full
        self.on_accepted = on_accepted
        """Called with the running total after each batch the server accepts."""
        self.accepted = 0
        """Tasks the server took: URLs, or an aggregate job's spans."""
        self.requests = 0
        """The requests those tasks stand for."""
        self.reopened = False
        """The job was done, and a batch of this run reopened it."""
        self._policy = dict(policy or {})
        """The job's pace and politeness (rate, per_host, ...): sent with the first batch
        only, so that a later ``fetchq job set`` is not undone by this run.  A new job
        takes them; the server refuses them to an existing job that has others."""
        self._batch: list[str] = []
        self._size = 0
        """Characters in the batch's URLs, up to ``self._measured`` of them."""
        self._measured = 0
        self._next_look = min(batch_size, SIZE_CHECK_EVERY)
        self._run_id = uuid.uuid4().hex
        self._sequence = 0
        self._sender: _Sender | None = None
        self._given: Spec | None = None
        self._spec: Spec | None = None
        self._spec_key: str | None = None
        self._sent_specs: set[str] = set()
        """Keys of the specs this run sent: each goes to the server once."""
        self.use(spec)

    @property
    def spec(self) -> Spec | None:
        return self._given

    def use(self, spec: Spec | None) -> None:
        """The URLs added from now on send ``spec`` (None or a plain one: a GET)."""
        if spec is self._given:
            return
        self._given = spec
        if spec is not None and spec.plain:
            spec = None
        key = None if spec is None else spec_key(spec)
        if key != self._spec_key and self._batch:
            self.flush()  # a batch's tasks send one spec
        self._spec, self._spec_key = spec, key

    def add(self, url: str) -> None:
        batch = self._batch
        batch.append(url)
        if len(batch) >= self._next_look:
            self._size += sum(map(len, batch[self._measured :]))
            self._measured = len(batch)
            if len(batch) >= self.batch_size or self._size >= MAX_SUBMIT_BYTES:
                self.flush()
            else:
                self._next_look = min(self.batch_size, len(batch) + SIZE_CHECK_EVERY)

    def add_many(self, urls: list[str]) -> None:
        """``add`` for each URL, a piece of up to SIZE_CHECK_EVERY at a time."""
        step = SIZE_CHECK_EVERY
        for start in range(0, len(urls), step):
            piece = urls[start : start + step]
            room = self.batch_size - len(self._batch)
            if len(piece) > room:  # the batch fills mid-piece: the rest starts the next
                self.add_many(piece[:room])
                self.add_many(piece[room:])
                continue
            self._batch.extend(piece)
            self._size += sum(map(len, piece))
            self._measured = len(self._batch)
            if len(self._batch) >= self.batch_size or self._size >= MAX_SUBMIT_BYTES:
                self.flush()
            else:
                self._next_look = min(self.batch_size, len(self._batch) + SIZE_CHECK_EVERY)

    def add_spans(self, spans: list[dict[str, Any]]) -> None:
        """Spans of an aggregate job (``{"template", "first", "count"}``), ``batch_size``
        a submit; each stands for ``count`` requests (``requests`` counts them)."""
        if self._batch:
            self.flush()
        for start in range(0, len(spans), self.batch_size):
            self._submit({"spans": spans[start : start + self.batch_size]})

    def flush(self) -> None:
        if not self._batch and not self._policy:
            return
        if not self._batch and self._policy.get("aggregate"):  # an aggregate job of no span
            self._submit({"spans": []})
            return
        self._submit({"urls": self._batch})

    def _submit(self, tasks: dict[str, Any]) -> None:
        """Hand one submit (``tasks``: its ``urls`` or ``spans``) to the sender."""
        self._sequence += 1
        request: dict[str, Any] = {
            "job": self.job,
            **tasks,
            "timeout": self.timeout,
            "attempts": self.attempts,
            "batch_id": f"{self._run_id}:{self._sequence}",
            "wait": defaults.POLL_WAIT,
            **self._policy,
        }
        if self._spec is not None and self._spec_key is not None:
            request["spec"] = self._spec_key
            if self._spec_key not in self._sent_specs:
                request["specs"] = [spec_record(self._spec)]
                self._sent_specs.add(self._spec_key)
        self._policy = {}
        self._batch = []
        self._size = self._measured = 0
        self._next_look = min(self.batch_size, SIZE_CHECK_EVERY)
        if self._sender is None:
            self._sender = _Sender(self._send)
            self._sender.start()
        self._sender.send(request)

    def _send(self, request: dict[str, Any]) -> None:
        while True:
            reply = self.client.call("submit", request)
            if reply.get("accepted") or not reply.get("full"):
                break
            if self.on_full is not None:
                self.on_full(int(reply.get("queued", 0)))
        self.accepted += int(reply.get("accepted", 0))
        if reply.get("accepted"):
            spans = request.get("spans")
            self.requests += sum(span["count"] for span in spans) if spans else reply["accepted"]
        self.reopened = self.reopened or bool(reply.get("reopened"))
        if self.on_accepted is not None:
            self.on_accepted(self.requests)

    def finish(self) -> None:
        """Send what is left (the policy too, for a job with no URLs) and tell the server
        the job is complete."""
        self.flush()
        if self._sender is not None:
            self._sender.wait()
            self._sender.close()
            self._sender = None
        self.client.call("seal", self.job)


class UrlSpans:
    """An aggregate job's URLs, from arguments or files, cut into spans of ``size``
    (``{"first", "count", "urls"}``) and sent a batch's worth of URLs a submit.

    A span is cut short when its URLs reach MAX_SUBMIT_BYTES: it travels in one
    submit, which must stay a frame the server takes."""

    def __init__(self, submitter: Submitter, size: int) -> None:
        self.submitter = submitter
        self.size = size
        self._urls: list[str] = []
        self._span_bytes = 0
        self._spans: list[dict[str, Any]] = []
        self._pending = 0
        """URLs in ``_spans``, not sent yet."""
        self._pending_bytes = 0
        self._first = 0

    def use(self, spec: Spec | None) -> None:
        """As ``Submitter.use``: a span's requests send one spec, so a change cuts it."""
        if spec is not self.submitter.spec:
            if self._urls:
                self._cut()
            self._send()
            self.submitter.use(spec)

    def add(self, url: str) -> None:
        self._urls.append(url)
        self._span_bytes += len(url)
        if len(self._urls) >= self.size or self._span_bytes >= MAX_SUBMIT_BYTES:
            self._cut()

    def finish(self) -> None:
        """Cut and send what is left (``Submitter.finish`` still ends the job)."""
        if self._urls:
            self._cut()
        self._send()

    def _cut(self) -> None:
        count = len(self._urls)
        self._spans.append({"first": self._first, "count": count, "urls": self._urls})
        self._first += count
        self._pending += count
        self._pending_bytes += self._span_bytes
        self._urls, self._span_bytes = [], 0
        if self._pending >= self.submitter.batch_size or self._pending_bytes >= MAX_SUBMIT_BYTES:
            self._send()

    def _send(self) -> None:
        if self._spans:
            self.submitter.add_spans(self._spans)
        self._spans, self._pending, self._pending_bytes = [], 0, 0
