"""A running fetchq cluster for one fault test: server, clients, target and checks.

``Cluster`` starts a real ``fetchq server`` subprocess with the given options,
points the test's environment at it, connects an in-process ``BrokerClient``
to watch its status, and records the server's threads and fds before any of
the test's clients start (the baseline :func:`checker.assert_quiet` compares
against).  Workers, dispatch and output are started through the ``launch``
fixture, so teardown kills every one of them.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from checker import process_baseline
from fetchq_procs import (
    KillableServer,
    StderrLog,
    connect_broker,
    poll_until,
    wait_until_leasing,
    worker_name,
)

from fetchq.errors import NoSuchJob
from fetchq.testing.target import Target

Launch = Callable[..., tuple[subprocess.Popen[str], StderrLog]]


@dataclass
class Job:
    """A job of URLs unique per task: ``{base}/{tag}?i={i}`` on the test target."""

    name: str
    template: str
    count: int
    urls: list[str]
    paths: list[str]
    """The request path and query the target records for each URL (``Target.hits()`` keys)."""


@dataclass
class Cluster:
    env: dict[str, str]
    server: KillableServer
    server_args: tuple[str, ...]
    start_server: Callable[..., KillableServer]
    launch: Launch
    target: Target
    tmp: Path
    client: Any = None
    baseline: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.env["FETCHQ_SERVER"] = self.server.address
        self.client = connect_broker(self.server.address, self.env["FETCHQ_AUTHKEY"])
        self.baseline = process_baseline(self.client)

    # -- jobs -------------------------------------------------------------

    def job(self, count: int, *, slow: float | None = None) -> Job:
        """A fresh job name and ``count`` URLs that no other test uses.

        With ``slow`` each URL is ``/slow?s=SLOW``: the target answers after that long."""
        tag = f"f{uuid.uuid4().hex[:10]}"
        if slow is None:
            template = f"{self.target.url}/{tag}?i={{i}}"
        else:
            template = f"{self.target.url}/slow?s={slow}&t={tag}&i={{i}}"
        urls = [template.format(i=i) for i in range(count)]
        base = len(self.target.url)
        return Job(tag, template, count, urls, [url[base:] for url in urls])

    # -- processes --------------------------------------------------------

    def worker(self, *args: str, env: dict[str, str] | None = None) -> tuple[Any, StderrLog]:
        return self.launch(env or self.env, "worker", *args)

    def output(
        self, job: Job, out: Path, *args: str, env: dict[str, str] | None = None, **kwargs: Any
    ) -> tuple[Any, StderrLog]:
        return self.launch(
            env or self.env,
            "output",
            "--job",
            job.name,
            "--format",
            "jsonl",
            "--out",
            str(out),
            *args,
            **kwargs,
        )

    def dispatch(self, job: Job, *args: str) -> tuple[Any, StderrLog]:
        return self.launch(
            self.env,
            "dispatch",
            "--template",
            job.template,
            "--count",
            str(job.count),
            "--job",
            job.name,
            *args,
        )

    def restart_server(self) -> KillableServer:
        """A new server on the same port with the same options (journal, key)."""
        self.server = self.start_server(*self.server_args, port=self.server.port)
        self.client.close()
        self.client = connect_broker(self.server.address, self.env["FETCHQ_AUTHKEY"])
        return self.server

    # -- the server's view ------------------------------------------------

    def status(self) -> dict[str, Any]:
        return self.client.call("status")

    def counts(self, job: Job) -> dict[str, Any]:
        return self.client.call("job", job.name)

    def counts_once_dispatched(self, job: Job) -> dict[str, Any] | None:
        """The job's counts, or None while its first batch has not reached the server."""
        try:
            return self.counts(job)
        except NoSuchJob:
            return None

    def worker_seen(self, pid: int) -> dict[str, Any]:
        """The server's status entry for a single-process worker (empty if unseen)."""
        name = worker_name(pid)
        for seen in self.status()["workers"]:
            if seen["worker"] == name:
                return dict(seen)
        return {}

    def wait_workers(self, *pids: int, timeout: float = 60.0) -> None:
        """Until the server has heard every one of these workers ask for tasks (a
        worker reconnecting to a restarted server may first sit out a backoff of up
        to 10 s).

        Dispatch only after this when a test needs a given worker to take part:
        a worker still importing its modules would leave the job to the others."""
        wait_until_leasing(self.client, {worker_name(pid) for pid in pids}, timeout)

    def wait_busy(self, pid: int, *, reported: int = 1, timeout: float = 30.0) -> dict[str, Any]:
        """Until the worker has reported ``reported`` results and holds leases now."""

        def busy() -> dict[str, Any] | None:
            seen = self.worker_seen(pid)
            if seen and seen["reported"] >= reported and seen["leased"] > 0:
                return seen
            return None

        return poll_until(busy, timeout, f"worker {pid} to hold leases mid-job")


def exit_code(process: Any, log: StderrLog, timeout: float) -> int:
    """Wait for ``process`` to exit, with its stderr in the failure message if it does not."""
    try:
        code = process.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"process {process.args} still running: {log.text}") from None
    log.closed()
    return code
