"""What every benchmark case shares: child processes, fetchq servers, timing and CPU.

Every process the bench starts goes through ``Processes``, which puts it in a
session of its own (so a Ctrl-C reaches only the bench) and stops it, and all
it started, when the bench leaves its ``with`` block, whatever happened.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
PYTHON = sys.executable
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def child_env(**extra: str) -> dict[str, str]:
    """This environment, minus fetchq settings, with loopback kept off any proxy."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("FETCHQ_")}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env.update(extra)
    return env


class BenchError(Exception):
    """A case could not run; the message says why."""


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[Any], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{proc.args[0]} exited ({proc.returncode}) before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise BenchError(f"nothing listening on 127.0.0.1:{port} after {timeout:g}s")


def cpu_seconds(pid: int) -> float:
    """User + system CPU a live process has used so far (from /proc)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        match = re.search(r"VmRSS:\s+(\d+) kB", status.read())
    if not match:
        raise BenchError(f"no VmRSS for process {pid}")
    return int(match.group(1)) * 1024


@dataclass
class Finished:
    """How a child process ended: exit code, wall time and CPU of it and its children."""

    code: int
    seconds: float
    cpu: float


@dataclass
class Child:
    proc: subprocess.Popen[Any]
    name: str
    log: Path
    started: float = field(default_factory=time.perf_counter)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def poll(self) -> Finished | None:
        """Reap the child if it has ended: with the CPU it and every child it reaped used."""
        pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
        if not pid:
            return None
        ended = time.perf_counter()
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        cpu = usage.ru_utime + usage.ru_stime
        return Finished(self.proc.returncode, ended - self.started, cpu)

    def wait(self, timeout: float) -> Finished:
        deadline = time.monotonic() + timeout
        while True:
            finished = self.poll()
            if finished is not None:
                return finished
            if time.monotonic() >= deadline:
                raise BenchError(f"{self.name} still running after {timeout:g}s\n{self.tail()}")
            time.sleep(0.005)

    def wait_ok(self, timeout: float) -> Finished:
        return self.check(self.wait(timeout))

    def check(self, done: Finished) -> Finished:
        if done.code != 0:
            raise BenchError(f"{self.name} exited with {done.code}:\n{self.tail()}")
        return done


class Processes:
    """Starts child processes and stops every one of them on the way out."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.children: list[Child] = []
        self._count = 0

    def start(
        self,
        name: str,
        command: Sequence[str],
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Child:
        self._count += 1
        safe = re.sub(r"[^\w.-]", "_", name)
        log = self.folder / f"{self._count:03d}-{safe}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                list(command),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=child_env() if env is None else env,
                cwd=cwd,
                start_new_session=True,
            )
        child = Child(proc, name, log)
        self.children.append(child)
        return child

    def stop(self, child: Child, grace: float = 10.0) -> None:
        """SIGTERM its process group, then SIGKILL what is left after ``grace``."""
        if child.proc.returncode is None and child.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(grace)
        # Whatever the leader left behind in its group goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.proc.pid, signal.SIGKILL)
        if child.proc.returncode is None:
            with contextlib.suppress(subprocess.TimeoutExpired, ChildProcessError):
                child.proc.wait(5)
        if child in self.children:
            self.children.remove(child)

    def stop_all(self) -> None:
        for child in reversed(list(self.children)):
            self.stop(child, grace=5.0)

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


def wait_for_log(child: Child, pattern: str, timeout: float = 20.0) -> re.Match[str]:
    """The first match of ``pattern`` in the child's output, waiting for it."""
    deadline = time.monotonic() + timeout
    regex = re.compile(pattern)
    while time.monotonic() < deadline:
        match = regex.search(child.log.read_text(errors="replace"))
        if match:
            return match
        if child.proc.poll() is not None:
            break
        time.sleep(0.02)
    raise BenchError(f"{child.name}: no {pattern!r} in its output\n{child.tail()}")


WIRES = ("json", "pickle", "tls")
"""How a variant's clients talk to its server: fetchq's JSON wire; the classic pickle
wire through the stdlib's own Connection, as before protocol 3 (the baseline); or
JSON inside mutual TLS."""


class Fetchq:
    """Runs fetchq's programs as a user would: ``python -m fetchq ...`` with a fresh key,
    over the given ``wire``."""

    def __init__(self, procs: Processes, wire: str = "json") -> None:
        assert wire in WIRES, wire
        self.procs = procs
        self.wire = wire
        config_home = procs.folder / "config"
        config_home.mkdir(exist_ok=True)
        self.env = child_env(
            FETCHQ_AUTHKEY=secrets.token_urlsafe(24), XDG_CONFIG_HOME=str(config_home)
        )
        self.server_args: list[str] = []
        if wire == "pickle":
            self.env["PYTHONPATH"] = str(BENCH_DIR / "pickle_wire")
            self.server_args = ["--allow-pickle"]
        elif wire == "tls":
            folder = procs.folder / "tls"
            if not folder.exists():
                init = subprocess.run(
                    [PYTHON, "-m", "fetchq", "tls", "init", str(folder), "--host", "127.0.0.1"],
                    capture_output=True,
                    text=True,
                    timeout=60,
                    env=self.env,
                )
                if init.returncode:
                    raise BenchError(f"fetchq tls init failed: {init.stderr.strip()}")
            self.env.update(
                FETCHQ_TLS_CA=str(folder / "ca.pem"),
                FETCHQ_TLS_CERT=str(folder / "client.pem"),
                FETCHQ_TLS_KEY=str(folder / "client.key"),
            )
            self.server_args = [
                *(
                    "--tls-cert",
                    str(folder / "server.pem"),
                    "--tls-key",
                    str(folder / "server.key"),
                ),
                *("--tls-ca", str(folder / "ca.pem")),
            ]

    def command(self, *args: str) -> list[str]:
        return [PYTHON, "-m", "fetchq", *args]

    def start(self, name: str, *args: str, server: str | None = None) -> Child:
        env = dict(self.env)
        if server is not None:
            env["FETCHQ_SERVER"] = server
        return self.procs.start(name, self.command(*args), env=env)

    @contextlib.contextmanager
    def server(self, *args: str) -> Iterator[tuple[str, Child]]:
        """A running ``fetchq server`` on a free loopback port: (address, process)."""
        child = self.start("fetchq-server", "server", "--port", "0", *self.server_args, *args)
        try:
            address = wait_for_log(child, r"listening on (\S+)").group(1)
            yield address, child
        finally:
            self.procs.stop(child)

    def run(self, server: str, *args: str, timeout: float = 600.0) -> Finished:
        """Run one fetchq command to its end; raises if it fails."""
        child = self.start(f"fetchq-{args[0]}", *args, server=server)
        try:
            return child.wait_ok(timeout)
        finally:
            self.procs.stop(child)

    def client_tls(self) -> Any:
        """The TLS settings for an in-process client of this variant's server."""
        from fetchq.wire.tls import ClientTLS

        if self.wire != "tls":
            return None
        return ClientTLS(
            self.env["FETCHQ_TLS_CA"], self.env["FETCHQ_TLS_CERT"], self.env["FETCHQ_TLS_KEY"]
        )


def tool_version(command: Sequence[str], pattern: str = r"(\d+(?:\.\d+)+)") -> str | None:
    try:
        out = subprocess.run(
            list(command), capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(pattern, out.stdout + out.stderr)
    return match.group(1) if match else None
