"""fetchq demo: the whole pipeline on this machine, with nothing to set up.

A local HTTP target, an embedded server on a free loopback port with a fresh
key, two real worker processes, a dispatched job and its summary; then all of
it is taken down again.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import threading
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
from fetchq.signals import StopRequest
from fetchq.testing.target import Target
from fetchq.wire.client import BrokerClient

WORKER_STOP_TIMEOUT = 15.0


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


def start_workers(count: int, concurrency: int, address: config.Address, key: str) -> list:
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in (config.ENV_AUTHKEY_FILE, config.ENV_SERVER, config.ENV_AUTHKEY)
    }
    env[config.ENV_SERVER] = str(address)
    env[config.ENV_AUTHKEY] = key  # through the environment: never on a command line
    command = [sys.executable, "-m", "fetchq", "worker", "--concurrency", str(concurrency)]
    return [subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL) for _ in range(count)]


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
) -> None:
    """Run target, server, workers, a job and its summary, all on this machine."""
    key = secrets.token_urlsafe(32)
    stop_server = StopRequest()
    with Target() as target:
        broker = Broker(lease_timeout=10.0)
        server = QueueServer(broker, config.Address("127.0.0.1", 0), key.encode())
        serving = threading.Thread(
            target=run_until_stopped, args=(broker, server, stop_server), daemon=True
        )
        serving.start()
        say(f"demo: HTTP target at {target.url}, server at {server.address} (fresh key)")
        processes = start_workers(workers, concurrency, server.address, key)
        try:
            client = BrokerClient(server.address, key.encode())
            client.connect()
            submitter = Submitter(client, "demo", timeout=10.0)
            for url in demo_urls(target.url, tasks):
                submitter.add(url)
            submitter.finish()
            tasks_sent = plural(submitter.accepted, "task")
            say(f"demo: dispatched {tasks_sent} to {plural(workers, 'worker')}")
            summary = Summary()
            collect(client, "demo", summary=summary, until_done=True, stop=_Failing(processes))
        finally:
            stop_workers(processes)
            stop_server.request()
            serving.join(5.0)
    print(summary.render())
    if summary.count != tasks:
        raise FetchqError(f"demo: expected {plural(tasks, 'result')}, got {summary.count}")


class _Failing:
    """Stops collecting if every worker has died, instead of waiting for ever."""

    def __init__(self, processes: list[subprocess.Popen[bytes]]) -> None:
        self.processes = processes

    @property
    def requested(self) -> bool:
        if all(process.poll() is not None for process in self.processes):
            raise FetchqError("demo: every worker process exited early (see above)")
        return False
