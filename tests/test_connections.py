"""What a fleet costs the server in connections: a burst of them at once, what one
worker process holds, and the descriptors they need.

The connect-storm figures themselves (3,000 clients at once) are a benchmark,
``bench/connect_storm.py``; these tests prove the mechanisms behind them on a
real server: the kernel holds a burst the accept loop has not reached yet, the
server greets every one of them once it gets to them, and its threads come back
afterwards; a worker process holds two connections, whatever its threads; and
the server raises its descriptor limit to what its connections need, or says
that it cannot.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import selectors
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

from fetchq_procs import (
    ServerProcess,
    StderrLog,
    connect_broker,
    freeze,
    poll_until,
    run,
    server_command,
    start_worker,
    stop_all,
)

from fetchq.server.serve import SPARE_DESCRIPTORS

BURST = 1500
"""Connections at once: more than the 1,024 the server's listen queue held before."""


@contextlib.contextmanager
def descriptors(count: int) -> Iterator[None]:
    """Room in this process for ``count`` more sockets (the soft limit raised, then put back)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = count + 256
    assert hard == resource.RLIM_INFINITY or hard >= need, f"ulimit -Hn {hard} < {need}"
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, need), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_burst_the_server_cannot_accept_yet_waits_in_the_kernel_and_is_served(env):
    """1,500 connections arrive while the server is frozen (a server busy with a storm
    of logins, at its worst): the kernel completes every one of them and holds it
    for the server, none is dropped.  Once the server runs again it greets each
    one with its login challenge, and when they have gone its threads are back to
    what they were before."""
    server = ServerProcess(env)
    client = connect_broker(server.address, env["FETCHQ_AUTHKEY"])
    sockets: list[socket.socket] = []
    try:
        baseline = client.call("status")["process"]["threads"]
        with descriptors(BURST), selectors.DefaultSelector() as selector:
            freeze(server.process.pid)
            try:
                for _ in range(BURST):
                    sock = socket.socket()
                    sock.setblocking(False)
                    sockets.append(sock)
                    code = sock.connect_ex(("127.0.0.1", server.port))
                    assert code in (0, errno.EINPROGRESS), os.strerror(code)
                    selector.register(sock, selectors.EVENT_WRITE)
                connected: set[socket.socket] = set()

                def all_connected() -> bool:
                    for key, _ in selector.select(0.05):
                        sock = key.fileobj
                        assert isinstance(sock, socket.socket)
                        error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                        assert not error, os.strerror(error)
                        selector.unregister(sock)
                        connected.add(sock)
                    return len(connected) == BURST

                # A SYN the kernel had no room for is retried by the client after 1 s,
                # then 3 s: none of them may need that (the server is frozen all along).
                try:
                    poll_until(all_connected, 0.9, "every connection to complete", 0.0)
                except AssertionError:
                    raise AssertionError(
                        f"only {len(connected)} of {BURST} connections completed while the "
                        "server could not accept: the rest were dropped"
                    ) from None
            finally:
                os.kill(server.process.pid, signal.SIGCONT)
            greeted: dict[socket.socket, bytes] = {}
            for sock in sockets:
                selector.register(sock, selectors.EVENT_READ)

            def all_greeted() -> bool:
                for key, _ in selector.select(0.05):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    got = greeted.get(sock, b"") + sock.recv(64)
                    greeted[sock] = got
                    if len(got) >= 15:
                        selector.unregister(sock)
                return len(greeted) == BURST and all(len(g) >= 15 for g in greeted.values())

            poll_until(all_greeted, 60, "every connection's login challenge", 0.0)
            assert {got[4:15] for got in greeted.values()} == {b"#CHALLENGE#"}
            for sock in sockets:
                sock.close()
            sockets.clear()
        poll_until(
            lambda: client.call("status")["process"]["threads"] <= baseline,
            30,
            f"the server's threads to come back to {baseline}",
        )
    finally:
        client.close()
        for sock in sockets:
            sock.close()
        with contextlib.suppress(ProcessLookupError):
            os.kill(server.process.pid, signal.SIGCONT)
        server.stop()


# -- what one worker process holds -------------------------------------------------


def _sockets_of(pid: int) -> set[int]:
    """Inodes of the sockets process ``pid`` has open."""
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            link = os.readlink(fd)
            if link.startswith("socket:["):
                found.add(int(link[8:-1]))
    return found


def _established_to(port: int) -> set[int]:
    """Inodes of this machine's established TCP connections to 127.0.0.1:``port``."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote, state, inode = fields[2], fields[3], int(fields[9])
        if state == "01" and remote == f"0100007F:{port:04X}":
            found.add(inode)
    return found


def connections_held(pids: list[int], port: int) -> dict[int, int]:
    """How many connections to the server on ``port`` each process holds right now."""
    open_ones = _established_to(port)
    return {pid: len(_sockets_of(pid) & open_ones) for pid in pids}


def test_a_worker_process_holds_two_connections_whatever_its_threads(env, server, target):
    """With 8 fetch threads and 2 processes, while they lease and report: each worker
    process holds 2 connections to the server (one for leasing, one for reporting),
    and the command that started them none."""
    job = run(
        env,
        "dispatch",
        "--job",
        "held",
        "--template",
        f"{target.url}/slow?s=0.02&q={{i}}",
        "--count",
        "10000",  # 12 s of work: still running for the looks, however late they come
    )
    assert job.returncode == 0, job.stderr
    worker, log = start_worker(env, "--concurrency", "8", "--processes", "2")
    client = connect_broker(server.address, env["FETCHQ_AUTHKEY"])
    try:

        def working() -> list[int]:
            """The worker processes' pids, once each has reported results (so each has
            logged in both of its sessions)."""
            rows = client.call("status")["workers"]
            if len(rows) == 2 and all(row["reported"] > 0 for row in rows):
                return [int(row["worker"].rsplit(":", 1)[1]) for row in rows]
            return []

        pids = poll_until(working, 60, "both worker processes to report results")
        assert worker.pid not in pids
        looks: list[dict[int, int]] = []

        def look() -> bool:
            """One look while the job runs; five of them, a tenth of a second apart."""
            assert client.call("job", "held")["queued"] > 0, "the job ended before the looks"
            looks.append(connections_held([worker.pid, *pids], server.port))
            return len(looks) == 5

        poll_until(look, 30, "five looks at the worker's connections", 0.1)
        assert looks == [{worker.pid: 0, **dict.fromkeys(pids, 2)}] * 5, looks
    finally:
        client.close()
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(60)
        finally:
            stop_all([worker])
    assert worker.returncode == 0, log.lines


# -- descriptors ---------------------------------------------------------------------


def _start_limited(env: dict[str, str], soft: int, hard: int, *args: str) -> ServerProcess:
    """A server started with the descriptor limit ``soft``/``hard`` (``ulimit -n``)."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    server = ServerProcess.__new__(ServerProcess)
    server.process = subprocess.Popen(
        [*server_command(), "--port", "0", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=limit,
    )
    server.log = StderrLog(server.process)
    match = server.log.wait_for(r"listening on (\S+):(\d+)")
    server.address, server.port = f"{match.group(1)}:{match.group(2)}", int(match.group(2))
    return server


def _open_files(pid: int) -> int:
    """The soft limit on open files of process ``pid``."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError(f"no open files limit for {pid}")


def test_the_server_raises_its_descriptor_limit_to_what_its_connections_need(env):
    """A soft limit of 256 (below the usual 1,024) would stop a fleet at a few hundred
    connections: the server raises it to --max-connections and a margin, unasked."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard == resource.RLIM_INFINITY or hard >= 2100, f"ulimit -Hn {hard}"
    server = _start_limited(env, 256, hard, "--max-connections", "2000")
    try:
        assert _open_files(server.process.pid) == 2000 + SPARE_DESCRIPTORS
        assert not [line for line in server.log.lines if "warning" in line], server.log.lines
    finally:
        server.stop()


def test_a_hard_limit_too_low_for_the_connections_is_said_at_start(env):
    server = _start_limited(env, 256, 300)
    try:
        assert _open_files(server.process.pid) == 300
        assert server.log.lines[0] == (
            "fetchq: warning: this process may open 300 files (ulimit -n), too few for "
            "--max-connections 4096: new connections will wait once about 236 are open "
            "(raise ulimit -n to 4160, or lower --max-connections)"
        )
    finally:
        server.stop()
