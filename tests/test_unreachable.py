"""A server that is not there: an answer in seconds, in one line; waiting, quietly."""

from __future__ import annotations

import os
import pty
import subprocess
import time

import pytest
from fetchq_procs import (
    ServerProcess,
    StderrLog,
    connect_broker,
    fetchq_command,
    run,
    start_worker,
    stop_all,
)
from worker_scenarios import closed_port, release_port

from fetchq.errors import ExitCode, ServerUnreachable


def lines_of(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_status_says_at_once_that_the_server_is_not_there(env):
    """At once: within two seconds of what the same program takes to start and
    print its help on this box, timed before and after (a client that waited for
    the server would take the FIRST_CONNECT_GIVE_UP of 10 s)."""
    port = closed_port()

    def timed(*args: str) -> tuple[float, subprocess.CompletedProcess[str]]:
        started = time.monotonic()
        result = run(env, *args)
        return time.monotonic() - started, result

    before, _ = timed("status", "--help")
    took, result = timed("status", "--server", f"127.0.0.1:{port}")
    after, _ = timed("status", "--help")
    starting = max(before, after)  # (a busy box slows one start more than another)
    assert result.returncode == ExitCode.UNREACHABLE, result.stderr
    assert lines_of(result.stderr) == [
        (
            f"fetchq: error: cannot reach fetchq server at 127.0.0.1:{port}: connection refused "
            "(is `fetchq server` running there, on that port?)"
        )
    ]
    assert took < starting + 2.0, f"status {took:.1f}s, its --help {before:.1f}s, {after:.1f}s"


@pytest.mark.parametrize(
    "command", [["status"], ["dispatch", "http://127.0.0.1/"], ["worker", "--burst"]]
)
def test_a_port_that_is_not_a_fetchq_server_is_said_at_once(env, target, command):
    """An HTTP server where the fetchq server was expected: exit 5 ("not a fetchq
    server") in one line naming the address, never retried, and not after the 10 s a
    silent peer gets (the client's own second or so is timed in test_protocol; here
    the programs' start-up on a busy machine is counted too)."""
    where = f"127.0.0.1:{target.port}"
    started = time.monotonic()
    result = run(env, *command, "--server", where)
    took = time.monotonic() - started
    assert result.returncode == ExitCode.AUTH_FAILED, result.stderr
    said = f"{where} is not a fetchq server: it answered as a web server does (HTTP/1.1 501)"
    assert lines_of(result.stderr) == [f"fetchq: error: {said}; check the address and the port"]
    assert took < 7.0, f"{command[0]} took {took:.1f}s"


def test_dispatch_and_output_give_up_but_a_worker_waits_on(env):
    """By default dispatch and output give up on a server never reached within about
    10 seconds, in at most three lines each; a worker waits for ever, as quietly.

    The 10 s are timed from each program's first "waiting for server" line (said at
    its first failed attempt) to its exit, so how long a loaded box takes to start
    Python is not part of them."""
    port = closed_port()
    env["FETCHQ_SERVER"] = f"127.0.0.1:{port}"
    worker, worker_log = start_worker(env, "--concurrency", "2")
    commands = {
        "dispatch": fetchq_command("dispatch", "http://127.0.0.1/"),
        "output": fetchq_command("output", "--until-done"),
    }
    running = {
        name: subprocess.Popen(
            command,
            env=env,
            text=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for name, command in commands.items()
    }
    logs = {name: StderrLog(process) for name, process in running.items()}
    try:
        for name, process in running.items():
            log = logs[name]
            process.wait(30)  # stderr is the log's to read; stdout stays empty
            assert process.stdout is not None
            out = process.stdout.read()
            log.closed()
            err = log.text
            assert process.returncode == ExitCode.UNREACHABLE, (name, err)
            assert log.ended is not None
            took = log.ended - log.arrival("waiting for server")
            assert 9.0 <= took <= 12.0, (name, took)
            assert 2 <= len(lines_of(err)) <= 3, (name, err)
            assert "gave up after 10s" in lines_of(err)[-1], (name, err)
            assert "Traceback" not in err and out == ""
        assert worker.poll() is None, worker_log.text  # still waiting, past 10 seconds
        release_port(port)
        server = ServerProcess(env, "--port", str(port))
        try:
            back = worker_log.wait_for(r"answered after (\d+)s and (\d+) attempts")
            assert int(back.group(1)) >= 10 and int(back.group(2)) >= 5, worker_log.text
            assert worker_log.text.count("waiting for server") <= 2, worker_log.text
            worker.terminate()
            assert worker.wait(30) == 0
        finally:
            server.stop()
    finally:
        stop_all([*running.values(), worker])


def test_on_a_terminal_the_waiting_line_is_rewritten_in_place(env):
    port = closed_port()
    env["FETCHQ_SERVER"] = f"127.0.0.1:{port}"
    primary, secondary = pty.openpty()
    process = subprocess.Popen(
        fetchq_command("dispatch", "http://127.0.0.1/", "--give-up-after", "3"),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=secondary,
    )
    os.close(secondary)
    seen = b""
    try:
        while True:
            try:
                chunk = os.read(primary, 4096)
            except OSError:  # the terminal closed: the command has exited
                break
            if not chunk:
                break
            seen += chunk
        assert process.wait(30) == ExitCode.UNREACHABLE
    finally:
        os.close(primary)
        stop_all([process])
    text = seen.decode()
    rewrites = text.count("\r\x1b[K")
    assert rewrites >= 3, text  # one line, rewritten at each attempt
    assert f"waiting for server at 127.0.0.1:{port} (attempt 3)" in text
    finished_lines = [line for line in text.replace("\r\n", "\n").split("\n") if line.strip()]
    assert len(finished_lines) == 1, text  # what stays on screen: the final error only
    assert "gave up after" in finished_lines[0]


def test_a_client_finds_a_restarted_server_again(env):
    """A plain client (status --watch, job steering) that met a server going away
    logs in afresh once one is back: the old server's objects are gone with it."""
    first = ServerProcess(env)
    client = connect_broker(first.address, env["FETCHQ_AUTHKEY"])
    try:
        assert client.call("queued") == 0
        first.stop()
        with pytest.raises(ServerUnreachable):
            client.call("queued")
        second = ServerProcess(env, "--port", str(first.port))
        try:
            assert client.call("queued") == 0
        finally:
            second.stop()
    finally:
        client.close()
        first.stop()
