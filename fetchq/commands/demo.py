"""fetchq demo: the whole pipeline on this machine, with nothing to set up.

A local HTTP target, an embedded server on a free loopback port with a fresh
key, two real worker processes, a dispatched job and its summary; then all of
it is taken down again.  With ``--store``, two servers on that store instead,
each worker given both (the first of one is the second of the other), the job
dispatched through one and read through the other.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import threading
import time
from typing import Annotated

import typer

from fetchq import config
from fetchq.commands.collect import collect
from fetchq.commands.options import reports_errors, say
from fetchq.commands.submit import Submitter
from fetchq.errors import FetchqError
from fetchq.messages import plural
from fetchq.report.summary import Summary
from fetchq.server.broker import Broker
from fetchq.server.serve import QueueServer, run_until_stopped
from fetchq.server.service import BrokerService
from fetchq.server.store import open_store
from fetchq.signals import StopRequest
from fetchq.testing.target import Target
from fetchq.wire.client import BrokerClient
from fetchq.wire.records import worker_identity

WORKER_STOP_TIMEOUT = 15.0
WORKER_START_TIMEOUT = 30.0
"""Seconds the demo waits for its workers to log in before it dispatches anyway."""


def demo_urls(base: str, count: int) -> list[str]:
    """Mostly fast pages, with some 404s, 500s and larger bodies for the report to show."""
    urls = []
    for i in range(count):
        if i % 100 == 99:
            urls.append(f"{base}/status/404?i={i}")
        elif i % 250 == 7:
            urls.append(f"{base}/status/500?i={i}")
        elif i % 20 == 3:
            urls.append(f"{base}/bytes/20000?i={i}")
        else:
            urls.append(f"{base}/?q={i}")
    return urls


def start_workers(
    count: int, concurrency: int, addresses: list[config.Address], key: str
) -> list[subprocess.Popen[bytes]]:
    """Worker processes, each given every server, worker ``n`` starting with server ``n``."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in (config.ENV_AUTHKEY_FILE, config.ENV_SERVER, config.ENV_AUTHKEY)
    }
    env[config.ENV_AUTHKEY] = key  # through the environment: never on a command line
    command = [sys.executable, "-m", "fetchq", "worker", "--concurrency", str(concurrency)]
    workers = []
    for n in range(count):
        turn = n % len(addresses)
        order = addresses[turn:] + addresses[:turn]
        env[config.ENV_SERVER] = ",".join(map(str, order))
        workers.append(subprocess.Popen(command, env=dict(env), stdin=subprocess.DEVNULL))
    return workers


def wait_for_workers(client: BrokerClient, workers: list[subprocess.Popen[bytes]]) -> None:
    """Dispatch once every worker has logged in: on a busy machine one worker could
    otherwise run the whole job before the other has started, and the demo would
    show one worker, or one server, at work."""
    names = {worker_identity(process.pid) for process in workers}
    deadline = time.monotonic() + WORKER_START_TIMEOUT
    while time.monotonic() < deadline:
        _all_exited(workers)
        seen = {row["worker"] for row in client.call("status")["workers"]}
        if names <= seen:
            return
        time.sleep(0.1)
    say(f"demo: not every worker logged in within {WORKER_START_TIMEOUT:g} s; going on")


def stop_workers(workers: list[subprocess.Popen[bytes]]) -> None:
    for process in workers:
        if process.poll() is None:
            process.terminate()
    for process in workers:
        try:
            process.wait(WORKER_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@reports_errors
def demo(
    tasks: Annotated[
        int, typer.Option(min=1, max=1_000_000, metavar="N", help="URLs to fetch")
    ] = 3000,
    workers: Annotated[int, typer.Option(min=1, max=16, metavar="N", help="Worker processes")] = 2,
    concurrency: Annotated[
        int, typer.Option(min=1, max=256, metavar="N", help="Threads per worker")
    ] = 8,
    store: Annotated[
        str | None,
        typer.Option(
            metavar="URL",
            help="Run two servers on this Valkey or Redis store (redis://HOST:PORT/DB) "
            "instead of one embedded server",
        ),
    ] = None,
) -> None:
    """Run target, server, workers, a job and its summary, all on this machine."""
    key = secrets.token_urlsafe(32)
    brokers: list[BrokerService] = [Broker(lease_timeout=10.0)]
    kept = ""
    if store is not None:  # two servers, one fleet
        on_store = [open_store(store, "demo --store", lease_timeout=10.0) for _ in range(2)]
        brokers, kept = list(on_store), f" on {on_store[0].described}"
    job = "demo" if store is None else f"demo-{secrets.token_hex(4)}"  # a store outlives runs
    stop_server = StopRequest()
    with Target() as target:
        servers = [QueueServer(b, config.Address("127.0.0.1", 0), key.encode()) for b in brokers]
        serving = [
            threading.Thread(target=run_until_stopped, args=(b, s, stop_server), daemon=True)
            for b, s in zip(brokers, servers, strict=True)
        ]
        for thread in serving:
            thread.start()
        addresses = [server.address for server in servers]
        where = ", ".join(map(str, addresses))
        servers_at = f"{plural(len(servers), 'server')} at {where}{kept}"
        say(f"demo: HTTP target at {target.url}, {servers_at}, with a fresh key")
        processes = start_workers(workers, concurrency, addresses, key)
        try:
            client = BrokerClient(addresses[0], key.encode())
            client.connect()
            wait_for_workers(client, processes)
            submitter = Submitter(client, job, timeout=10.0)
            for url in demo_urls(target.url, tasks):
                submitter.add(url)
            submitter.finish()
            tasks_sent = plural(submitter.accepted, "task")
            say(f"demo: dispatched {tasks_sent} as job {job} to {plural(workers, 'worker')}")
            reader = BrokerClient(addresses[-1], key.encode())  # the other server, if two
            summary = Summary()
            collect(reader, job, summary=summary, until_done=True, stop=_Failing(processes))
        finally:
            stop_workers(processes)
            stop_server.request()
            for thread in serving:
                thread.join(5.0)
    print(summary.render())
    if summary.count != tasks:
        raise FetchqError(f"demo: expected {plural(tasks, 'result')}, got {summary.count}")


class _Failing:
    """Stops collecting if every worker has died, instead of waiting for ever."""

    def __init__(self, processes: list[subprocess.Popen[bytes]]) -> None:
        self.processes = processes

    @property
    def requested(self) -> bool:
        _all_exited(self.processes)
        return False


def _all_exited(processes: list[subprocess.Popen[bytes]]) -> None:
    if all(process.poll() is not None for process in processes):
        raise FetchqError("demo: every worker process exited early (see above)")
