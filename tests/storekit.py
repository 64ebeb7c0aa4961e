"""Stores for tests: ``redis-server`` processes of their own, in a directory of their
own, stopped when the test (or the test run) ends.

The contract tests share one store per test process on a unix socket (each broker
empties it first); tests of several servers and of faults start their own, on a
TCP port of 127.0.0.1, with the persistence they need.  Debian's ``redis-server``
is the store: ``./run-tests`` installs it when missing.
"""

from __future__ import annotations

import atexit
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis

START_TIMEOUT = 10.0
PORT_TRIES = 5
"""Starts on fresh ports before giving up: another process may bind a port between
``free_port()`` and redis-server's own bind (it did once, with four xdist workers)."""


def redis_server() -> str:
    found = shutil.which("redis-server")
    assert found is not None, "no redis-server on PATH: ./run-tests installs Debian's"
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class StoreProcess:
    """One ``redis-server``: on a unix socket, and on ``port`` of 127.0.0.1 when given
    (0: a free one, as for ``cluster_port``; picked again if taken at the first start,
    then kept for restarts).

    ``appendfsync``: None for no persistence at all (the contract tests), else the
    AOF's fsync policy (``always``, ``everysec``)."""

    def __init__(
        self,
        directory: Path,
        *,
        port: int | None = None,
        appendfsync: str | None = None,
        password: str | None = None,
        cluster_port: int | None = None,
        tls: tuple[Path, Path, Path] | None = None,
    ) -> None:
        self.directory = directory
        self.port = port
        self.appendfsync = appendfsync
        self.password = password
        self.cluster_port = cluster_port
        """The port of its cluster bus, for a node of a Redis Cluster (None: none)."""
        self.tls = tls
        """Its certificate, key and CA files: ``port`` then takes TLS alone."""
        self.socket = directory / "store.sock"
        self.process: subprocess.Popen[bytes] | None = None
        self._free = [name for name in ("port", "cluster_port") if getattr(self, name) == 0]
        """The ports to pick before the first start."""

    @property
    def url(self) -> str:
        if self.tls is not None:
            return f"rediss://127.0.0.1:{self.port}/0"
        if self.port is not None:
            return f"redis://127.0.0.1:{self.port}/0"
        return f"unix://{self.socket}"

    def start(self) -> StoreProcess:
        self.directory.mkdir(parents=True, exist_ok=True)
        picking, self._free = self._free, []
        tries = PORT_TRIES if picking else 1
        while True:
            for name in picking:
                setattr(self, name, free_port())
            self.process = subprocess.Popen(self._command(), stdin=subprocess.DEVNULL)
            if self._answers():
                return self
            log = self.directory / "store.log"
            said, tries = log.read_text(), tries - 1
            if not (tries and "Address already in use" in said):
                raise AssertionError(f"redis-server did not start: {said}")
            log.unlink()  # (the next try's log on its own)

    def _command(self) -> list[str]:
        persistence = (
            ["--appendonly", "no"]
            if self.appendfsync is None
            else ["--appendonly", "yes", "--appendfsync", self.appendfsync]
        )
        ports = ["--port", str(self.port or 0)]
        if self.tls is not None:
            cert, key, ca = self.tls
            ports = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(cert),
                     "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca),
                     "--tls-auth-clients", "no"]  # fmt: skip
        return [
            redis_server(),
            *ports,
            "--bind", "127.0.0.1",
            "--unixsocket", str(self.socket),
            "--unixsocketperm", "700",
            "--dir", str(self.directory),
            "--save", "",
            *persistence,
            *(["--requirepass", self.password] if self.password else []),
            *(
                ["--cluster-enabled", "yes", "--cluster-port", str(self.cluster_port),
                 "--cluster-config-file", str(self.directory / "nodes.conf"),
                 "--cluster-node-timeout", "2000"]
                if self.cluster_port else []
            ),
            "--daemonize", "no",
            "--loglevel", "warning",
            "--logfile", str(self.directory / "store.log"),
        ]  # fmt: skip

    def _answers(self) -> bool:
        """Wait until it answers; False if it exited first."""
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT
        client = self.client()
        try:
            while True:
                try:
                    client.ping()
                    return True
                except (redis.ConnectionError, FileNotFoundError):
                    if self.process.poll() is not None:
                        return False
                    assert time.monotonic() < deadline, "redis-server did not answer"
                    time.sleep(0.02)
        finally:
            client.close()

    def restart(self) -> StoreProcess:
        """Start again, on the same files and port, after ``kill``: this object stays
        the one that ``stop`` stops."""
        return self.start()

    def client(self) -> redis.Redis:
        return redis.Redis(
            unix_socket_path=str(self.socket), socket_timeout=10, password=self.password
        )

    def kill(self) -> None:
        """What kill -9 leaves: the AOF as far as it was written (and, with
        ``appendfsync always``, fsynced before each reply)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        self.socket.unlink(missing_ok=True)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


class StoreCluster:
    """A Redis Cluster of ``size`` primaries on free ports of 127.0.0.1, the hash slots
    split evenly among them: what a store is on a managed Cluster service."""

    SLOTS = 16384

    def __init__(self, directory: Path, size: int = 3, appendfsync: str | None = None) -> None:
        self.directory = directory
        self.nodes = [
            StoreProcess(
                directory / f"node-{n}",
                port=0,
                cluster_port=0,
                appendfsync=appendfsync,
            )
            for n in range(size)
        ]
        """Its primaries, in the order of the slots they hold."""
        self.replicas: list[StoreProcess] = []

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self) -> StoreCluster:
        for node in self.nodes:
            node.start()
        clients = [node.client() for node in self.nodes]
        size = len(self.nodes)
        for n, client in enumerate(clients):
            first, last = n * self.SLOTS // size, (n + 1) * self.SLOTS // size - 1
            client.execute_command("CLUSTER ADDSLOTSRANGE", first, last)
        for node in self.nodes[1:]:
            clients[0].execute_command("CLUSTER MEET", "127.0.0.1", node.port, node.cluster_port)
        deadline = time.monotonic() + START_TIMEOUT
        for client in clients:  # every node knows every other, and serves every slot
            while client.cluster("info")["cluster_state"] != "ok" or (
                len(client.cluster("nodes")) < size
            ):
                assert time.monotonic() < deadline, "the cluster did not form"
                time.sleep(0.05)
            client.close()
        return self

    def client(self) -> redis.RedisCluster:
        return redis.RedisCluster(host="127.0.0.1", port=self.nodes[0].port, socket_timeout=10)

    def node_of(self, key: str) -> StoreProcess:
        """The node that holds ``key``'s slot."""
        slot = self.client().keyslot(key)
        return self.nodes[slot * len(self.nodes) // self.SLOTS]

    def add_replica(self, primary: StoreProcess) -> StoreProcess:
        """A replica of ``primary``, in sync with it when this returns: the node the
        cluster promotes in its place when it fails."""
        replica = StoreProcess(
            self.directory / f"replica-{len(self.replicas)}",
            port=0,
            cluster_port=0,
        ).start()
        self.replicas.append(replica)
        client, known = replica.client(), primary.client()
        known.execute_command("CLUSTER MEET", "127.0.0.1", replica.port, replica.cluster_port)
        primary_id = known.execute_command("CLUSTER MYID")
        primary_id = primary_id.decode() if isinstance(primary_id, bytes) else primary_id
        deadline = time.monotonic() + START_TIMEOUT
        while all(seen["node_id"] != primary_id for seen in client.cluster("nodes").values()):
            assert time.monotonic() < deadline, "the replica did not meet the cluster"
            time.sleep(0.05)
        client.execute_command("CLUSTER REPLICATE", primary_id)
        self.wait_in_sync(primary, replica)
        client.close()
        known.close()
        return replica

    @staticmethod
    def wait_in_sync(primary: StoreProcess, replica: StoreProcess) -> None:
        """Until ``replica`` has every write ``primary`` made so far."""
        client, source = replica.client(), primary.client()
        offset = source.info("replication")["master_repl_offset"]
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            found = client.info("replication")
            if found.get("master_link_status") == "up" and found["slave_repl_offset"] >= offset:
                break
            assert time.monotonic() < deadline, f"the replica did not catch up: {found}"
            time.sleep(0.05)
        client.close()
        source.close()

    def stop(self) -> None:
        for node in [*self.nodes, *self.replicas]:
            node.stop()


_shared: dict[str, StoreProcess | StoreCluster] = {}


def shared_store() -> StoreProcess:
    """The store this test process's contract tests share, started on first use."""
    store = _shared_one("store", lambda directory: StoreProcess(directory).start())
    assert isinstance(store, StoreProcess)
    return store


def shared_cluster() -> StoreCluster:
    """The Cluster this test process's contract tests share, started on first use."""
    cluster = _shared_one("cluster", lambda directory: StoreCluster(directory).start())
    assert isinstance(cluster, StoreCluster)
    return cluster


def _shared_one(
    kind: str, start: Callable[[Path], StoreProcess | StoreCluster]
) -> StoreProcess | StoreCluster:
    if kind not in _shared:
        directory = Path(tempfile.mkdtemp(prefix=f"fetchq-{kind}-"))
        _shared[kind] = start(directory)
        atexit.register(_stop_shared, kind, directory)
    return _shared[kind]


def _stop_shared(kind: str, directory: Path) -> None:
    _shared.pop(kind).stop()
    shutil.rmtree(directory, ignore_errors=True)
