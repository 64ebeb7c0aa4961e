"""fetchq worker: lease URL-fetch tasks, GET them, send back timing results.

Each process runs many fetch threads, each with its own keep-alive
``requests`` session.  ``--processes N`` starts N such processes and forwards
signals to them: the first SIGINT/SIGTERM drains (unstarted tasks go back,
running ones finish, results are sent), a second stops at once.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Sequence
from typing import Annotated

import typer

from fetchq import config, defaults, tls
from fetchq.commandline import (
    AuthkeyFileOption,
    ServerOption,
    TlsCaOption,
    TlsCertOption,
    TlsKeyOption,
    reports_errors,
    run_alone,
    say,
)
from fetchq.engine import WorkerSettings, child_worker_process, run_worker_process
from fetchq.signals import StopRequest

HELP = "Fetch tasks from the queue server and send back their results."


def supervise(
    address: config.Address,
    authkey: bytes,
    settings: WorkerSettings,
    count: int,
    tls_settings: tls.ClientTLS | None,
) -> int:
    """Run ``count`` worker processes; pass signals on; exit when all have."""
    context = multiprocessing.get_context("spawn")
    children = [
        context.Process(
            target=child_worker_process,
            args=(address, authkey, settings, tls_settings),
            name=f"fetchq-worker-{n}",
        )
        for n in range(count)
    ]
    stop = StopRequest().install()
    for child in children:
        child.start()
    forwarded = 0
    try:
        while any(child.is_alive() for child in children):
            if stop.requested and not forwarded:
                forwarded = _signal_all(children)
            stop.wait(0.1)
    except KeyboardInterrupt:  # a second Ctrl-C: the children stop at once too
        _signal_all(children)
        for child in children:
            child.join(5.0)
        raise
    failed = [child for child in children if child.exitcode != 0]
    if failed:
        say(f"{len(failed)} of {count} worker processes failed")
        return 1
    return 0


def _signal_all(children: Sequence[multiprocessing.process.BaseProcess]) -> int:
    for child in children:
        if child.is_alive() and child.pid is not None:
            os.kill(child.pid, signal.SIGTERM)
    return 1


@reports_errors
def worker(
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", min=1, max=1000, help="Fetch threads per process")
    ] = defaults.CONCURRENCY,
    processes: Annotated[
        int, typer.Option("--processes", "-p", min=1, max=256, help="Worker processes")
    ] = 1,
    prefetch: Annotated[
        int, typer.Option(min=0, help="Tasks leased ahead per process (0: 2 x concurrency)")
    ] = 0,
    connect_timeout: Annotated[
        float, typer.Option(min=0.001, help="Seconds to open a connection to a URL's host")
    ] = defaults.CONNECT_TIMEOUT,
    follow_redirects: Annotated[
        bool, typer.Option(help="Follow redirects instead of reporting the 3xx")
    ] = False,
    burst: Annotated[bool, typer.Option(help="Exit once the server has no task left")] = False,
    grace: Annotated[
        float, typer.Option(min=0, help="Seconds running requests get to finish on stop")
    ] = defaults.GRACE,
    pin: Annotated[
        bool,
        typer.Option(help="Keep each process on a CPU no other worker here holds (faster)"),
    ] = True,
    call_timeout: Annotated[
        float,
        typer.Option(min=1, help="Seconds without a reply before the server link counts as cut"),
    ] = defaults.CALL_TIMEOUT,
    server: ServerOption = None,
    authkey_file: AuthkeyFileOption = None,
    tls_ca: TlsCaOption = None,
    tls_cert: TlsCertOption = None,
    tls_key: TlsKeyOption = None,
) -> None:
    """Fetch tasks until stopped (or, with --burst, until the queue is empty)."""
    address = config.server_address(server)
    key = config.client_authkey(authkey_file)
    tls_settings = tls.client_tls(tls_ca, tls_cert, tls_key)
    settings = WorkerSettings(
        concurrency=concurrency,
        prefetch=prefetch,
        connect_timeout=connect_timeout,
        follow_redirects=follow_redirects,
        burst=burst,
        grace=grace,
        call_timeout=call_timeout,
        pin=pin,
    )
    if processes == 1:
        code = run_worker_process(address, key.key, settings, tls_settings)
    else:
        code = supervise(address, key.key, settings, processes, tls_settings)
    raise typer.Exit(code)


if __name__ == "__main__":
    run_alone(worker, HELP)
