"""Fixtures for the fault-injection suite: real processes, each one killed at teardown.

The suite is marked ``faults`` (``pytest -m faults`` runs only it, ``-m 'not
faults'`` skips it); it runs by default with the rest of the tests.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from faultkit import Cluster
from fetchq_procs import KillableServer, Processes, StderrLog, start_fetchq

from fetchq.testing.target import Target

HERE = Path(__file__).resolve().parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "faults: fault-injection tests (kill -9, SIGTERM, network cuts, restarts)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.faults)


@pytest.fixture
def procs() -> Iterator[Processes]:
    """Every process the test starts; whatever is still running at teardown is SIGKILLed."""
    registry = Processes()
    try:
        yield registry
    finally:
        registry.kill_all()


@pytest.fixture
def start_server(env: dict[str, str], procs: Processes) -> Callable[..., KillableServer]:
    """Start a ``fetchq server`` (``port=`` to reuse one); it is killed at teardown."""

    def start(*args: str, port: int = 0) -> KillableServer:
        return KillableServer(env, *args, port=port, on_start=procs.add)

    return start


@pytest.fixture
def launch(procs: Processes) -> Callable[..., tuple[subprocess.Popen[str], StderrLog]]:
    """Start ``fetchq ARGS`` with the given environment; it is killed at teardown."""

    def start(
        env: dict[str, str], *args: str, stdout: Any = subprocess.DEVNULL
    ) -> tuple[subprocess.Popen[str], StderrLog]:
        process, log = start_fetchq(env, *args, stdout=stdout)
        procs.add(process)
        return process, log

    return start


@pytest.fixture
def cluster(
    env: dict[str, str],
    start_server: Callable[..., KillableServer],
    launch: Callable[..., tuple[subprocess.Popen[str], StderrLog]],
    target: Target,
    tmp_path: Path,
) -> Iterator[Callable[..., Cluster]]:
    """``cluster(*server_args)``: a server with those options and a client watching it."""
    made: list[Cluster] = []

    def make(*server_args: str) -> Cluster:
        server = start_server(*server_args)
        made.append(Cluster(env, server, server_args, start_server, launch, target, tmp_path))
        return made[-1]

    yield make
    for running in made:
        running.client.close()
