"""fetchq worker: lease URL-fetch tasks, GET them, send back timing results.

Each process runs many fetch threads, each with its own keep-alive
``requests`` session.  ``--processes N`` starts N such processes and forwards
signals to them: the first SIGINT/SIGTERM drains (unstarted tasks go back,
running ones finish, results are sent), a second stops at once.  A process
that is killed or crashes is replaced (within a limit), with a line on stderr.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import Annotated

import typer

from fetchq import config, defaults
from fetchq.commands.options import connects, reports_errors, run_alone, say
from fetchq.commands.work import WorkerSettings, child_worker_process, run_worker_process
from fetchq.errors import ExitCode, FetchqError, ServerUnavailable
from fetchq.messages import error
from fetchq.signals import StopRequest
from fetchq.wire.client import ResilientClient

HELP = "Fetch tasks from the queue server and send back their results."


RESTARTS_ALLOWED = 5
"""Worker processes ``--processes`` replaces within RESTART_WINDOW before it gives up."""

RESTART_WINDOW = 60.0
"""Seconds over which replacements are counted: a child that dies at once every
time (a broken host, a crash on start) stops the command instead of looping."""

_CHILD_ERRORS = (ExitCode.FAILURE, ExitCode.INTERRUPTED)
"""Exit codes of a child that crashed or was interrupted, rather than one that
stopped on a fetchq error (a wrong key, another version) no restart would fix."""


class Supervisor:
    """``--processes N``: N worker processes, signals passed on, the dead replaced.

    The first SIGINT/SIGTERM is passed to every child as SIGTERM (drain); a
    second one stops them at once.  A child that dies by a signal it was not
    sent (kill -9, the OOM killer) or crashes is replaced, at most
    RESTARTS_ALLOWED times in RESTART_WINDOW seconds; one that exits on a fetchq
    error is not.  Children stop by themselves if this process dies."""

    def __init__(self, link: config.ServerLink, settings: WorkerSettings, count: int) -> None:
        self.link = link
        self.settings = settings
        self.count = count
        self._context = multiprocessing.get_context("spawn")
        self._restarts: collections.deque[float] = collections.deque()

    def run(self) -> int:
        stop = StopRequest().install()
        children = [self._start(slot) for slot in range(self.count)]
        forwarded = False
        try:
            while True:
                if stop.requested and not forwarded:
                    forwarded = _signal_all(children)
                if not forwarded:
                    for slot, child in enumerate(children):
                        if self._needs_replacing(child):
                            if not self._may_restart():
                                say(
                                    f"worker processes keep dying ({len(self._restarts)} "
                                    f"replaced in {RESTART_WINDOW:.0f} s): stopping them all"
                                )
                                forwarded = _signal_all(children)
                                self._wait_all(children)
                                return ExitCode.FAILURE
                            say(f"worker process {child.pid} {_death(child)}; starting another")
                            children[slot] = self._start(slot)
                if not any(child.is_alive() for child in children):
                    break
                stop.wait(0.1)
        except KeyboardInterrupt:  # a second Ctrl-C: the children stop at once too
            _signal_all(children)
            self._wait_all(children)
            raise
        return self._exit_code(children)

    def _start(self, slot: int) -> multiprocessing.process.BaseProcess:
        child = self._context.Process(
            target=_child_main,
            args=(self.link, self.settings),
            name=f"fetchq-worker-{slot}",
        )
        child.start()
        return child

    @staticmethod
    def _needs_replacing(child: multiprocessing.process.BaseProcess) -> bool:
        code = child.exitcode
        return code is not None and (code < 0 or code in _CHILD_ERRORS)

    def _may_restart(self) -> bool:
        now = time.monotonic()
        while self._restarts and self._restarts[0] < now - RESTART_WINDOW:
            self._restarts.popleft()
        if len(self._restarts) >= RESTARTS_ALLOWED:
            return False
        self._restarts.append(now)
        return True

    @staticmethod
    def _wait_all(children: Sequence[multiprocessing.process.BaseProcess]) -> None:
        for child in children:
            child.join(5.0)

    def _exit_code(self, children: Sequence[multiprocessing.process.BaseProcess]) -> int:
        """0 when every child stopped cleanly; else the code they failed with."""
        codes = {child.exitcode for child in children if child.exitcode != 0}
        if not codes:
            return 0
        failed = sum(child.exitcode != 0 for child in children)
        say(f"{failed} of {self.count} worker processes failed")
        if len(codes) == 1:
            code = codes.pop()
            return code if code is not None and code > 0 else ExitCode.FAILURE
        return ExitCode.FAILURE


def _death(child: multiprocessing.process.BaseProcess) -> str:
    code = child.exitcode or 0
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _child_main(link: config.ServerLink, settings: WorkerSettings) -> None:
    """A child's entry point: a fetchq error is one line and its exit code, as in
    a lone worker, not the traceback multiprocessing would print."""
    try:
        child_worker_process(link, settings)
    except FetchqError as exc:
        error(exc.message)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(ExitCode.INTERRUPTED)


def _signal_all(children: Sequence[multiprocessing.process.BaseProcess]) -> bool:
    for child in children:
        if child.is_alive() and child.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGTERM)
    return True


def check_server(link: config.ServerLink) -> None:
    """Log in once before starting children: a wrong key or another version is
    said once, not once per process.  Waits for a server that is not up yet."""
    stop = StopRequest().install()
    client = ResilientClient(link, give_up_after=None, first_give_up=None, stop=stop)
    try:
        client.connect()
    except ServerUnavailable:
        if not stop.requested:
            raise
        raise KeyboardInterrupt from None
    finally:
        client.close()


@reports_errors
@connects
def worker(
    concurrency: Annotated[
        int,
        typer.Option(
            "--concurrency", "-c", min=1, max=1000, metavar="N", help="Fetch threads per process"
        ),
    ] = defaults.CONCURRENCY,
    processes: Annotated[
        int,
        typer.Option("--processes", "-p", min=1, max=256, metavar="N", help="Worker processes"),
    ] = 1,
    prefetch: Annotated[
        int,
        typer.Option(
            min=0, metavar="N", help="Tasks leased ahead per process (0: 2 x concurrency)"
        ),
    ] = 0,
    connect_timeout: Annotated[
        float,
        typer.Option(
            min=0.001, metavar="SECONDS", help="Seconds to open a connection to a URL's host"
        ),
    ] = defaults.CONNECT_TIMEOUT,
    follow_redirects: Annotated[
        bool, typer.Option(help="Follow redirects instead of reporting the 3xx")
    ] = False,
    burst: Annotated[bool, typer.Option(help="Exit once the server has no task left")] = False,
    grace: Annotated[
        float,
        typer.Option(
            min=0, metavar="SECONDS", help="Seconds running requests get to finish on stop"
        ),
    ] = defaults.GRACE,
    pin: Annotated[
        bool,
        typer.Option(help="Keep each process on a CPU no other worker here holds (faster)"),
    ] = True,
    call_timeout: Annotated[
        float,
        typer.Option(
            min=1,
            metavar="SECONDS",
            help="Seconds without a reply before the server link counts as cut",
        ),
    ] = defaults.CALL_TIMEOUT,
    *,
    link: config.ServerLink,
) -> None:
    """Fetch tasks until stopped (or, with --burst, until the queue is empty)."""
    link = dataclasses.replace(link, call_timeout=call_timeout)
    settings = WorkerSettings(
        concurrency=concurrency,
        prefetch=prefetch,
        connect_timeout=connect_timeout,
        follow_redirects=follow_redirects,
        burst=burst,
        grace=grace,
        pin=pin,
    )
    if processes == 1:
        code = run_worker_process(link, settings)
    else:
        check_server(link)
        code = Supervisor(link, settings, processes).run()
    raise typer.Exit(code)


if __name__ == "__main__":
    run_alone(worker, HELP)
