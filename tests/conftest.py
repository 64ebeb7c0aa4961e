"""Shared fixtures: a local HTTP target, a clean environment and a real server."""

from __future__ import annotations

import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from brokerkit import IMPLEMENTATIONS, Factory
from dnsguard import loopback_only_getaddrinfo
from fakeclock import FakeClock
from fetchq_procs import ServerProcess, clean_env
from storekit import StoreProcess

from fetchq.testing.target import Target


@pytest.fixture(autouse=True)
def _no_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", loopback_only_getaddrinfo)


@pytest.fixture
def clock() -> FakeClock:
    """A broker clock that moves only when a test advances it."""
    return FakeClock()


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def implementation(request: pytest.FixtureRequest) -> Factory:
    """Each broker implementation in turn (see brokerkit): the contract tests run on all."""
    return IMPLEMENTATIONS[request.param]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A contract test marked ``embedded_only`` runs against the embedded broker alone,
    one marked ``one_shard`` against every broker but a store of several shards: the
    mark says why not."""
    kept, dropped = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        implementation = callspec.params.get("implementation") if callspec else None
        if _runs_on(item, implementation):
            kept.append(item)
        else:
            dropped.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def _runs_on(item: pytest.Item, implementation: str | None) -> bool:
    for name, not_on in (
        ("embedded_only", ("store", "shards")),
        ("one_shard", ("shards",)),
    ):
        mark = item.get_closest_marker(name)
        if mark is not None:
            assert mark.args and mark.args[0], f"{item.nodeid}: {name} needs its reason"
            if implementation in not_on:
                return False
    return True


@pytest.fixture(scope="session")
def target() -> Iterator[Target]:
    with Target() as running:
        yield running


@pytest.fixture
def authkey() -> str:
    return secrets.token_urlsafe(24)


@pytest.fixture
def env(tmp_path: Path, authkey: str) -> dict[str, str]:
    return clean_env(tmp_path, authkey)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StoreProcess]:
    """A ``redis-server`` of the test's own on a free port of 127.0.0.1, its AOF fsynced
    before every reply (``appendfsync always``); stopped at teardown."""
    running = StoreProcess(tmp_path / "store", port=0, appendfsync="always").start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def server(env: dict[str, str]) -> Iterator[ServerProcess]:
    """A real ``fetchq server`` on a free loopback port with a short lease."""
    running = ServerProcess(env, "--lease-timeout", "3")
    env["FETCHQ_SERVER"] = running.address
    yield running
    running.stop()
