"""Real fetchq processes for tests: a server, workers and one-shot commands.

Everything runs as a subprocess of the installed code, the way a user runs
it, and every wait has a deadline.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from fetchq.wire.records import worker_identity

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
COMMAND_TIMEOUT = 120.0


def fetchq_command(*args: str) -> list[str]:
    return [PYTHON, "-m", "fetchq", *args]


class StderrLog:
    """Collects a process's stderr lines on a thread, so waits can poll it."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self._process = process
        self.lines: list[str] = []
        self.arrived: list[float] = []
        """When each line was read (``time.monotonic()``), for timings that leave out
        how long the program took to start."""
        self.ended: float | None = None
        """When the stream ended (the process exited, or closed its stderr)."""
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stderr is not None
        for line in process.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self.arrived.append(time.monotonic())
                self._changed.notify_all()
        with self._changed:
            self.ended = time.monotonic()
            self._changed.notify_all()

    def arrival(self, pattern: str) -> float:
        """When the first line matching ``pattern`` was read (it must have been)."""
        regex = re.compile(pattern)
        with self._changed:
            for line, when in zip(self.lines, self.arrived, strict=True):
                if regex.search(line):
                    return when
        raise AssertionError(f"no stderr line matched {pattern!r}: {self.lines}")

    def lines_since(self, moment: float) -> list[str]:
        """The lines read at ``moment`` (``time.monotonic()``) or later."""
        with self._changed:
            timed = zip(self.lines, self.arrived, strict=True)
            return [line for line, when in timed if when >= moment]

    def wait_for(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    match = regex.search(line)
                    if match:
                        return match
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._thread.is_alive():
                    raise AssertionError(f"no stderr line matched {pattern!r}: {self.lines}")
                self._changed.wait(min(remaining, 0.5))

    def closed(self, timeout: float = 10.0) -> None:
        """Wait until the process's stderr is read to its end: after the process has
        exited, its last lines may still be on their way to ``lines``."""
        self._thread.join(timeout)

    @property
    def text(self) -> str:
        """What the process said so far; all of it once the process has exited."""
        if self._process.poll() is not None:
            self.closed()
        with self._changed:
            return "\n".join(self.lines)


def server_command(protocol: int | None = None) -> list[str]:
    """The server program; with ``protocol``, one that speaks that protocol version.

    The version is patched into the real server before it starts, so every
    other part is the product as shipped.  This is the one place that knows
    where the protocol constant lives."""
    if protocol is None:
        return [PYTHON, str(REPO / "queueserver.py")]
    code = (
        "import runpy, sys\n"
        "import fetchq.wire.api as api\n"
        "api.PROTOCOL = int(sys.argv.pop(1))\n"
        f"runpy.run_path({str(REPO / 'queueserver.py')!r}, run_name='__main__')\n"
    )
    return [PYTHON, "-c", code, str(protocol)]


class ServerProcess:
    def __init__(self, env: dict[str, str], *args: str, protocol: int | None = None) -> None:
        self.process = subprocess.Popen(
            [*server_command(protocol), "--port", "0", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.log = StderrLog(self.process)
        match = self.log.wait_for(r"listening on (\S+):(\d+)")
        self.address = f"{match.group(1)}:{match.group(2)}"
        self.port = int(match.group(2))

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        return self.process.wait(15)


def start_program(
    command: list[str], env: dict[str, str]
) -> tuple[subprocess.Popen[str], StderrLog]:
    """Any program in the background, its stderr collected (stdout discarded)."""
    process = subprocess.Popen(
        command,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    return process, StderrLog(process)


def start_worker(env: dict[str, str], *args: str) -> tuple[subprocess.Popen[str], StderrLog]:
    return start_program(fetchq_command("worker", *args), env)


def start_output(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    """``fetchq output`` with its stdout piped back to the test."""
    return subprocess.Popen(
        fetchq_command("output", *args),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run(
    env: dict[str, str], *args: str, stdin: str | None = None, timeout: float = COMMAND_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        fetchq_command(*args),
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=None if stdin is not None else subprocess.DEVNULL,
    )


def jsonl(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def stop_all(processes: list[subprocess.Popen[str]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.kill()
    for process in processes:
        process.wait(15)


def clean_env(tmp_path: Path, authkey: str) -> dict[str, str]:
    """A clean environment: our key, a private config dir, no proxies."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("FETCHQ_") and "proxy" not in name.lower()
    }
    env["FETCHQ_AUTHKEY"] = authkey
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    env["PYTHONUNBUFFERED"] = "1"
    guard = str(Path(__file__).resolve().parent / "childguard")  # the DNS guard, in children
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [guard, env.get("PYTHONPATH")]))
    return env


# -- helpers for fault-injection tests (tests/faults) -------------------------
#
# Everything below only adds to what is above: a registry that kills every
# process a test started, a server that can be SIGKILLed and restarted on the
# same port, a launcher for any fetchq command with its stderr collected, a
# connected in-process BrokerClient, and a bounded poll.


class Processes:
    """Every process a test starts, so teardown can kill whatever is left."""

    def __init__(self) -> None:
        self._all: list[subprocess.Popen[str]] = []

    def add(self, process: subprocess.Popen[str]) -> subprocess.Popen[str]:
        self._all.append(process)
        return process

    def kill_all(self) -> None:
        stop_all(self._all)


class KillableServer(ServerProcess):
    """A ``fetchq server`` that can be started on a given port and SIGKILLed.

    Unlike ``ServerProcess`` it hands its process to ``on_start`` before it
    waits for the ``listening on`` line, so a server that never gets that far
    is still killed at teardown."""

    def __init__(
        self,
        env: dict[str, str],
        *args: str,
        port: int = 0,
        on_start: Any = None,
    ) -> None:
        self.process = subprocess.Popen(
            [*server_command(), "--port", str(port), *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        if on_start is not None:
            on_start(self.process)
        self.log = StderrLog(self.process)
        match = self.log.wait_for(r"listening on (\S+):(\d+)")
        self.address = f"{match.group(1)}:{match.group(2)}"
        self.port = int(match.group(2))

    def kill(self) -> int:
        """SIGKILL: no handler runs, nothing is flushed or closed by the server itself."""
        if self.process.poll() is None:
            self.process.kill()
        return self.process.wait(15)


def start_fetchq(
    env: dict[str, str], *args: str, stdout: Any = subprocess.DEVNULL
) -> tuple[subprocess.Popen[str], StderrLog]:
    """Any ``fetchq`` subcommand as a background process, its stderr collected."""
    process = subprocess.Popen(
        fetchq_command(*args),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
    )
    return process, StderrLog(process)


def connect_broker(address: str, authkey: str) -> Any:
    """A connected in-process ``BrokerClient``: how tests watch the server's status."""
    from fetchq.config import parse_address
    from fetchq.wire.client import BrokerClient

    client = BrokerClient(parse_address(address), authkey.encode())
    client.connect()
    return client


def wait_until_leasing(client: Any, names: set[str], timeout: float = 30.0) -> None:
    """Until each of these workers (``host:pid`` names) is asking the server for tasks.

    Seen by the server is not enough: a worker says hello before its lease loop
    starts, and on a loaded box the loop may start seconds later.  Its first call
    after the hello is a lease.  The server's ``last_seen_ago`` for a worker only
    grows between two of its calls, so when it shrinks from one look to the next,
    the worker has called in between: from then on it is leasing."""
    previous: dict[str, float] = {}
    heard: set[str] = set()

    def all_heard() -> bool:
        rows = {row["worker"]: row["last_seen_ago"] for row in client.call("status")["workers"]}
        for name in names & rows.keys():
            if name in previous and rows[name] < previous[name]:
                heard.add(name)
            previous[name] = rows[name]
        return heard >= names

    poll_until(all_heard, timeout, f"workers {sorted(names - heard)} to ask for tasks")


def poll_until(condition: Any, timeout: float, what: str, interval: float = 0.05) -> Any:
    """Call ``condition`` until it returns something true, or fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def thread_states(pid: int) -> set[str]:
    """The scheduler states (``R``, ``S``, ``T``...) of every thread of ``pid``."""
    states = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            states.add((task / "stat").read_text().rsplit(")", 1)[1].split()[0])
        except FileNotFoundError:
            continue  # a thread that just ended
    return states


def freeze(pid: int) -> None:
    """SIGSTOP ``pid`` and wait until every one of its threads has stopped.

    A stop signal is not instant for a process of many threads: one thread takes
    it and then stops the others, and on a loaded machine the others may run (and
    answer a request) meanwhile.  Resume with SIGCONT."""
    os.kill(pid, signal.SIGSTOP)
    poll_until(lambda: thread_states(pid) <= {"T"}, 30, f"every thread of {pid} to stop", 0.001)


def worker_name(pid: int) -> str:
    """How the server names a single-process worker: ``hostname:pid``."""
    return worker_identity(pid)


def start_workers(env: dict[str, str], *settings: tuple[str, ...]) -> list[subprocess.Popen[str]]:
    """Workers, one for each of ``settings`` (its options), all asking the server for
    tasks: each can take part from the start."""
    workers = [start_worker(env, *args)[0] for args in settings]
    client = connect_broker(env["FETCHQ_SERVER"], env["FETCHQ_AUTHKEY"])
    try:
        wait_until_leasing(client, {worker_name(worker.pid) for worker in workers})
    finally:
        client.close()
    return workers
