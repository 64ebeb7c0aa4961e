"""The transport: logging in, error mapping, and a server that stays up for everyone."""

from __future__ import annotations

import contextlib
import io
import socket
import struct
import threading
import time
from collections.abc import Iterator
from multiprocessing.managers import BaseManager, listener_client  # type: ignore[attr-defined]
from pathlib import Path
from typing import Any

import pytest

from fetchq import defaults
from fetchq.config import Address, Authkey, ServerLink
from fetchq.errors import AuthFailed, BadRequest, ExitCode, ServerUnreachable
from fetchq.messages import StatusLine
from fetchq.server.broker import Broker
from fetchq.server.serve import QueueServer, run_until_stopped
from fetchq.signals import StopRequest
from fetchq.wire import transport
from fetchq.wire.api import METHODS, PROTOCOL
from fetchq.wire.client import BrokerClient, ResilientClient
from fetchq.wire.transport import NotFetchq

KEY = b"protocol-test-key"


def serving(broker: Broker | None = None, **options: Any) -> Iterator[QueueServer]:
    """A server in this process, on a free port, until the test ends."""
    broker = broker or Broker(lease_timeout=5)
    server = QueueServer(broker, Address("127.0.0.1", 0), KEY, **options)
    stop = StopRequest()
    thread = threading.Thread(target=run_until_stopped, args=(broker, server, stop), daemon=True)
    thread.start()
    yield server
    stop.request()
    thread.join(5)


@pytest.fixture
def served() -> Iterator[QueueServer]:
    yield from serving()


def test_round_trip_and_remote_errors(served):
    client = BrokerClient(served.address, KEY)
    info = client.connect()
    assert info["protocol"] == PROTOCOL and info["lease_timeout"] == 5
    reply = client.call("submit", {"job": "p", "urls": ["http://127.0.0.1/"]})
    assert reply["accepted"] == 1
    with pytest.raises(BadRequest, match="urls must be a list"):
        client.call("submit", {"job": "p", "urls": "http://127.0.0.1/"})
    # The bad call did not break this connection or the server.
    assert client.call("job", "p")["submitted"] == 1


def test_a_result_reaches_the_output_as_the_worker_wrote_it(served):
    """The server keeps each result's JSON text as it arrived and hands that text on:
    its numbers reach an output written as the worker wrote them (``1.50e-3``),
    where a server that decoded and encoded the record again would write ``0.0015``."""
    client = BrokerClient(served.address, KEY)
    client.connect()
    client.call("submit", {"job": "as-sent", "urls": ["http://127.0.0.1/a"]})
    (task,) = client.call("lease", "w", 1, 0)
    session, ident = client._session(client.address), client._idents[client.address]
    result = (
        f'{{"v":1,"id":{task["id"]},"job":"as-sent","url":"http://127.0.0.1/a","ok":true,'
        '"status":200,"elapsed":1.50e-3,"bytes":3,"error":null,"attempt":1,"worker":"w",'
        '"started":1765000000.25,"scheduled":null,"retry_after":null}'
    )
    session.send_bytes(f'["{ident}","complete",["w",[{result}],[]],{{}}]'.encode())
    assert session.recv() == ("#RETURN", {"accepted": 1, "requeued": 0, "dropped": 0, "renewed": 0})
    session.send_bytes(f'["{ident}","results",["as-sent",10,0,null],{{}}]'.encode())
    delivery = session.recv_bytes()
    assert result.encode() in delivery, delivery
    client.close()


class HellosKeptWaiting(Broker):
    """A server whose first and last hello replies are kept waiting after it read its
    clock, as a busy machine keeps a thread waiting."""

    hellos = 0

    def hello(self, client: dict[str, Any]) -> dict[str, Any]:
        reply = super().hello(client)
        self.hellos += 1
        if self.hellos in (1, defaults.CLOCK_SAMPLES):
            time.sleep(0.3)
        return reply


def test_a_worker_learns_the_servers_clock_from_its_quickest_round_trip():
    """Server and client share one clock here, so the true offset is 0.  A slow hello
    (the first or the last) alone would put the estimate 0.15 s off (the server's
    time against the middle of a 0.3 s round trip); the quickest of CLOCK_SAMPLES is
    within a few ms."""
    broker = HellosKeptWaiting(lease_timeout=5)
    with contextlib.contextmanager(serving)(broker) as server:
        client = BrokerClient(server.address, KEY, clock_samples=defaults.CLOCK_SAMPLES)
        client.connect()
        assert broker.hellos == defaults.CLOCK_SAMPLES
        assert abs(client.clock_offset) < 0.05, client.clock_offset
        client.close()


def test_wrong_key_is_reported_as_such(served):
    with pytest.raises(AuthFailed, match="rejected the authkey"):
        BrokerClient(served.address, b"wrong").connect()


def test_refused_and_gave_up(served):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = ResilientClient(Address("127.0.0.1", port), KEY, first_give_up=0.3)
    with pytest.raises(ServerUnreachable, match=r"connection refused.*gave up"):
        client.connect()


@contextlib.contextmanager
def silent_peer() -> Iterator[int]:
    """A port whose listener takes connections and never says a word (a hung server)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener.getsockname()[1]


def test_a_silent_peer_is_said_to_give_no_login(monkeypatch):
    """Silence to the end (a hung or busy server) is "unreachable", which clients retry:
    neither a refused key nor "not a fetchq server"."""
    monkeypatch.setattr(defaults, "HANDSHAKE_TIMEOUT", 2.0)
    with silent_peer() as port:
        started = time.monotonic()
        with pytest.raises(
            ServerUnreachable, match=rf"no login from 127.0.0.1:{port}: a fetchq server greets"
        ):
            BrokerClient(Address("127.0.0.1", port), KEY).connect()
        assert 1.9 < time.monotonic() - started < 5


def test_an_http_server_is_said_at_once_to_be_no_fetchq_server(target):
    """An HTTP server says nothing first; asked, it answers with a status line: that is
    said in a second or so, as such (exit 5), not waited out as silence."""
    started = time.monotonic()
    with pytest.raises(NotFetchq) as raised:
        BrokerClient(Address("127.0.0.1", target.port), KEY).connect()
    took = time.monotonic() - started
    assert raised.value.message == (
        f"127.0.0.1:{target.port} is not a fetchq server: it answered as a web server does "
        "(HTTP/1.1 501); check the address and the port"
    )
    assert raised.value.exit_code == ExitCode.AUTH_FAILED
    assert took < 2.5, took


class SlowGreeter:
    """A relay in front of a server that holds back the server's first bytes on each
    connection for ``delay`` seconds: a fetchq server slow to greet (a busy one, or one
    far away)."""

    def __init__(self, upstream: Address, delay: float) -> None:
        self.upstream, self.delay = upstream, delay
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.address = Address("127.0.0.1", self._listener.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            self.connections += 1
            server = socket.create_connection(self.upstream.as_tuple(), timeout=10)
            for args in ((client, server, 0.0), (server, client, self.delay)):
                threading.Thread(target=self._pump, args=args, daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, hold: float) -> None:
        source.settimeout(10)
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if hold:
                    self._stop.wait(hold)
                    hold = 0.0
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._listener.close()


def test_a_fetchq_server_slow_to_greet_is_logged_in_to_all_the_same(served, monkeypatch):
    """A fetchq server that was only slow to greet is asked what it is, as a silent peer
    is; it skips the question and the login goes on, on the same connection."""
    monkeypatch.setattr(transport, "SILENT_PEER_PROBE", 0.3)
    relay = SlowGreeter(served.address, delay=0.6)
    try:
        client = BrokerClient(relay.address, KEY)
        assert client.connect()["protocol"] == PROTOCOL
        assert client.call("queued") == 0
        assert relay.connections == 2  # create and a session, each asked, none again
        client.close()
    finally:
        relay.close()


@pytest.mark.parametrize(
    "greeting",
    [
        pytest.param(struct.pack("!i", 11) + b"hello there", id="framed"),
        pytest.param(b"SSH-2.0-OpenSSH_9.2\r\n", id="banner"),
    ],
)
def test_a_peer_that_speaks_first_but_not_fetchq_is_said_as_such(greeting: bytes) -> None:
    """A peer that greets with something else (an SSH banner, another protocol's
    hello) is no fetchq server: said at once, as such, and not retried."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]

        def greet() -> None:
            conn, _ = listener.accept()
            with conn, contextlib.suppress(OSError):  # a reset is how some clients hang up
                conn.sendall(greeting)
                conn.recv(1)  # until the client hangs up

        greeter = threading.Thread(target=greet, daemon=True)
        greeter.start()
        with pytest.raises(AuthFailed, match=r"answered, but not like a fetchq server"):
            BrokerClient(Address("127.0.0.1", port), KEY).connect()
        greeter.join(5)


def test_a_peer_that_never_logs_in_is_dropped(served, monkeypatch):
    monkeypatch.setattr(defaults, "HANDSHAKE_TIMEOUT", 0.5)
    with socket.create_connection(served.address.as_tuple(), timeout=10) as sock:
        started = time.monotonic()
        while sock.recv(4096):  # the challenge, then nothing until the server hangs up
            pass
        assert time.monotonic() - started < 5
    assert BrokerClient(served.address, KEY).connect()["protocol"] == PROTOCOL


def test_clients_cannot_shut_the_server_down(served):
    from multiprocessing.managers import dispatch

    from fetchq.wire.transport import open_connection

    for method in ("shutdown", "debug_info"):
        conn = open_connection(served.address.as_tuple(), authkey=KEY)
        with pytest.raises(BadRequest, match=f"'{method}' unrecognized"):
            dispatch(conn, None, method)
        conn.close()
    assert BrokerClient(served.address, KEY).connect()["protocol"] == PROTOCOL


@pytest.fixture
def served_with_pickle() -> Iterator[QueueServer]:
    yield from serving(allow_pickle=True)


def test_a_classic_manager_client_speaks_to_the_broker(served_with_pickle):
    """With --allow-pickle a stock BaseManager (pickle serializer, no fetchq code) can use
    the API, and a JSON client of the same server still gets JSON."""

    class Classic(BaseManager):
        pass

    Classic.register("broker", exposed=METHODS)
    manager = Classic(address=served_with_pickle.address.as_tuple(), authkey=KEY)
    manager.connect()
    broker = manager.broker()
    assert broker.submit({"job": "classic", "urls": ["http://127.0.0.1/x"]})["accepted"] == 1
    assert broker.lease("classic-worker", 10, 0.0)[0]["url"] == "http://127.0.0.1/x"
    client = BrokerClient(served_with_pickle.address, KEY)
    client.connect()
    assert client.call("job", "classic")["submitted"] == 1


def test_connections_beyond_the_cap_are_turned_away_and_the_server_recovers():
    broker = Broker()
    server = QueueServer(broker, Address("127.0.0.1", 0), KEY, max_connections=3)
    stop = StopRequest()
    thread = threading.Thread(target=run_until_stopped, args=(broker, server, stop), daemon=True)
    thread.start()
    held = []
    try:
        for _ in range(3):  # each holds one server connection open
            raw = socket.create_connection(server.address.as_tuple(), timeout=5)
            held.append(raw)
            raw.recv(64)  # the challenge: the server counted this connection
        with pytest.raises(ServerUnreachable):
            BrokerClient(server.address, KEY).connect()
        for raw in held:
            raw.close()
        quiet = StatusLine(io.StringIO())
        client = ResilientClient(server.address, KEY, first_give_up=10, notice=quiet)
        assert client.connect()["protocol"] == PROTOCOL
    finally:
        stop.request()
        thread.join(5)


def test_out_of_descriptors_the_server_backs_off_and_recovers(env, tmp_path):
    """With a tiny descriptor limit the accept loop waits instead of spinning."""
    import resource
    import subprocess
    import sys

    from fetchq_procs import REPO, StderrLog

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (40, 40))

    process = subprocess.Popen(
        [sys.executable, str(REPO / "queueserver.py"), "--port", "0"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=low_limit,
    )
    log = StderrLog(process)
    sockets = []
    try:
        match = log.wait_for(r"listening on (\S+):(\d+)")
        address = (match.group(1), int(match.group(2)))
        for _ in range(60):
            sockets.append(socket.create_connection(address, timeout=5))
        log.wait_for("cannot accept connections: Too many open files")
        # The logins it took may keep a busy machine's run queue full for a while; a
        # loop that spins is runnable in every second, one that waits soon is not.
        spent = []
        for _ in range(10):
            before = _runnable_seconds(process.pid)
            time.sleep(1.0)  # measuring the idle cost of waiting: nothing to poll for
            after = _runnable_seconds(process.pid)
            spent.append(sum(after[tid] - before[tid] for tid in before.keys() & after.keys()))
            if spent[-1] < 0.5:
                break
        else:
            raise AssertionError(f"the accept loop spun: runnable {spent} s in each second")
        for sock in sockets:
            sock.close()
        sockets.clear()
        client = ResilientClient(
            Address(*address), env["FETCHQ_AUTHKEY"].encode(), first_give_up=20
        )
        assert client.connect()["protocol"] == PROTOCOL
    finally:
        for sock in sockets:
            sock.close()
        process.terminate()
        process.wait(10)


def _runnable_seconds(pid: int) -> dict[str, float]:
    """Seconds each thread of ``pid`` has been runnable: on a CPU, or waiting for one.

    CPU time alone would let a spinning loop pass on a loaded machine, where it
    gets little CPU; a spinning loop is runnable all the time however busy the
    machine is, while a loop that waits sleeps (neither counts)."""
    runnable = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            on_cpu, waiting, _ = (task / "schedstat").read_text().split()
        except FileNotFoundError:
            continue  # a thread that just ended
        runnable[task.name] = (int(on_cpu) + int(waiting)) / 1e9
    return runnable


def test_long_urls_are_sent_in_batches_the_server_reads(served, monkeypatch):
    """The dispatcher cuts a batch by bytes as well as by count, so no submit makes a
    frame larger than the server reads (here both limits made small)."""
    from fetchq.commands import submit
    from fetchq.wire import transport

    monkeypatch.setattr(transport, "MAX_FRAME", 1 << 20)
    monkeypatch.setattr(submit, "MAX_SUBMIT_BYTES", 256 << 10)
    client = BrokerClient(served.address, KEY)
    client.connect()
    submitter = submit.Submitter(client, "long", batch_size=10_000)
    long_url = "http://127.0.0.1/" + "x" * 4000
    for n in range(1000):  # 4 MB of URLs: four times what one frame may hold
        submitter.add(f"{long_url}?{n}")
    submitter.finish()
    assert submitter.accepted == 1000
    assert client.call("job", "long")["submitted"] == 1000


def test_a_call_that_timed_out_leaves_no_late_reply_for_the_next_one(served):
    """A call given up on (here: a lease that waits longer than the client's call timeout)
    throws its session away: the next call gets its own answer, not the late one."""
    link = ServerLink(served.address, Authkey(KEY, "test"), call_timeout=1.0)
    client = BrokerClient(link)
    client.connect()
    started = time.monotonic()
    # The server answers [] after 3 s: the 2 s between leave room for a client that a
    # busy machine runs late (its 1 s starts when it reads, not when it sent).
    with pytest.raises(ServerUnreachable, match="stopped answering"):
        client.call("lease", "patient", 1, 3.0)
    assert time.monotonic() - started < 2.9
    # On the old session this would wait for the lease's late [] and time out as well.
    assert client.call("queued") == 0
    client.close()


def test_two_servers_in_one_process_serve_their_own_brokers():
    """Nothing of a server is the process's: a second one does not take the first one's
    place (the demo and tests run servers in-process), and the name the stdlib needed
    to find its listener is gone once it is built."""
    first, second = serving(), serving()
    a, b = next(first), next(second)
    try:
        assert not [name for name in listener_client if name.startswith("fetchq")]
        BrokerClient(a.address, KEY).call("submit", {"job": "on-a", "urls": ["http://h/"]})
        assert set(BrokerClient(b.address, KEY).call("status")["jobs"]) == set()
        assert set(BrokerClient(a.address, KEY).call("status")["jobs"]) == {"on-a"}
    finally:
        for running in (first, second):
            next(running, None)
