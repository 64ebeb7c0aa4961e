"""A fleet that connects at once: N clients released together, each logs in and calls.

    python bench/connect_storm.py [--clients 1000,3000] [--per-process 100]
                                  [--repeat 1] [--baseline 9d74176] [--json PATH]

For each N, a fresh ``fetchq server`` on a free loopback port, and N client
threads spread over processes of ``--per-process`` threads each (100: so that
neither one client process's GIL nor its descriptors are what gives way, and
the clients are released within milliseconds of each other).
Every thread builds a ``BrokerClient`` and waits; once all N are ready they are
released together, and each one logs in (``connect``: the connection that
finds the broker, its session, a ``hello``) and makes one call (``queued``).
A client counts as:

- ok: answered, and of those, "again": answered only after a second login (the
  server greeted it so late that the client's probe for a web server spoilt
  its first one);
- dropped: its login or call failed (refused, reset, timed out; the kinds are
  counted apart);
- hung: neither after ``--hang`` seconds.

"slowest" is the longest time from the release to an answer among the ok ones.
The clients hold their sessions until all have answered (as a fleet of workers
does), then close them; the server's thread count is then watched until it is
back to what it was before the storm.

``--baseline COMMIT`` runs the same storm, back to back, against ``COMMIT``'s
fetchq (server and clients alike), unpacked from the repository's history (the
checkout is untouched); ``''`` for none.  Also run by ``bench/run.py --cases storm``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from ceiling import Release, unpack
from harness import PYTHON, BenchError, Child, Processes, cpu_seconds, say, wait_for_log

BASELINE = "9d74176"
"""The commit before the server took a storm: 3,000 clients at once then lost some."""

HANG = 60.0
"""Seconds after the release a client may take before it counts as hung: longer than
a login's own limits (5 s to connect, 10 s to log in) with room to spare."""

PER_PROCESS = 100
"""Client threads per client process: enough processes that the clients are released
within milliseconds of each other, and that no client process's GIL is the bottleneck."""

SETTLE = 30.0
"""Seconds the server's threads get to come back to their baseline after the close."""


# -- one client process ------------------------------------------------------------


def _kind(exc: BaseException) -> str:
    """What went wrong, from fetchq's message and the transport's own exception under
    it (which a client raises ``from None``, keeping it as the context)."""
    text = str(exc)
    if text.startswith("no login from"):
        return "no login in time"
    if "stopped answering" in text:
        return "no reply in time"
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            break
        if isinstance(seen, ConnectionRefusedError):
            return "refused"
        if isinstance(seen, ConnectionResetError | BrokenPipeError | EOFError):
            return "reset"
        if isinstance(seen, TimeoutError):
            return "connect timed out"
        if seen.__context__ is None:
            return type(seen).__name__
        seen = seen.__context__
    return type(exc).__name__


def clients(address: str, count: int, hang: float) -> None:
    """``count`` client threads in this process, told what to do by signals: it prints
    ``ready``; SIGUSR1 releases the clients, and once they have all answered (or
    ``hang`` seconds have passed) it prints one JSON line of outcomes; SIGUSR2 closes
    their sessions and ends the process."""
    from fetchq.config import parse_address
    from fetchq.wire import transport
    from fetchq.wire.client import BrokerClient

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:  # the clients' descriptors must never be what fails
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGUSR2})
    threading.stack_size(512 * 1024)
    where, key = parse_address(address), os.environ["FETCHQ_AUTHKEY"].encode()
    ready = threading.Barrier(count + 1)
    go, close = threading.Event(), threading.Event()
    lock = threading.Lock()
    answered: list[float] = []
    dropped: Counter[str] = Counter()
    samples: dict[str, str] = {}
    released = [0.0]
    connects = [0]
    again = [0]
    mine = threading.local()
    """Connections this client thread opened: 2 for a login on the first try."""
    create_connection = transport.socket.create_connection

    def counted(*args: Any, **kwargs: Any) -> Any:
        with lock:
            connects[0] += 1
        mine.opened = getattr(mine, "opened", 0) + 1
        return create_connection(*args, **kwargs)

    transport.socket.create_connection = counted  # type: ignore[assignment]

    def client() -> None:
        broker = BrokerClient(where, key)
        ready.wait()
        go.wait()
        try:
            broker.connect()
            broker.call("queued")
            took = time.monotonic() - released[0]
            with lock:
                answered.append(took)
                if mine.opened > 2:
                    again[0] += 1
        except Exception as exc:  # counted, with one message of each kind
            kind = _kind(exc)
            with lock:
                dropped[kind] += 1
                samples.setdefault(kind, str(exc)[:200])
        close.wait()
        broker.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    ready.wait()
    print("ready", flush=True)
    signal.sigwait({signal.SIGUSR1})
    released[0] = time.monotonic()
    go.set()
    deadline = released[0] + hang
    while time.monotonic() < deadline:
        with lock:
            if len(answered) + sum(dropped.values()) >= count:
                break
        time.sleep(0.01)
    with lock:
        outcome = {
            "ok": len(answered),
            "dropped": dict(dropped),
            "hung": count - len(answered) - sum(dropped.values()),
            "slowest": max(answered, default=0.0),
            "answered": sorted(answered),
            "connections": connects[0],
            "again": again[0],
            "samples": samples,
        }
    print(json.dumps(outcome), flush=True)
    signal.sigwait({signal.SIGUSR2})
    close.set()
    deadline = time.monotonic() + 10.0
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))


# -- the bench ---------------------------------------------------------------------


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def listen_overflows() -> int:
    """Connections this machine's listeners had no room for so far (all of them, not only
    the server's: a figure to read beside the bench's own, not in place of it)."""
    with open("/proc/net/netstat") as netstat:
        rows = [row.split() for row in netstat]
    for names, values in zip(rows[::2], rows[1::2], strict=False):
        if names[0] == "TcpExt:" and "ListenOverflows" in names:
            return int(values[names.index("ListenOverflows")])
    return 0


def _wait_for(child: Child, prefix: str, timeout: float) -> str:
    """The first line of the child's output that starts with ``prefix``."""
    deadline = time.monotonic() + timeout
    while True:
        for line in child.log.read_text(errors="replace").splitlines():
            if line.startswith(prefix):
                return line
        if child.proc.poll() is not None:
            raise BenchError(f"{child.name} exited ({child.proc.returncode})\n{child.tail()}")
        if time.monotonic() >= deadline:
            raise BenchError(f"{child.name}: no {prefix!r} after {timeout:g}s\n{child.tail()}")
        time.sleep(0.02)


def storm(
    procs: Processes, release: Release, count: int, per_process: int, hang: float
) -> dict[str, Any]:
    """One storm of ``count`` clients against a fresh server of ``release``."""
    config_home = procs.folder / "config"
    config_home.mkdir(exist_ok=True)
    env = release.env(FETCHQ_AUTHKEY=secrets.token_urlsafe(24), XDG_CONFIG_HOME=str(config_home))
    server = procs.start(
        f"server-{release.name}",
        [PYTHON, "-m", "fetchq", "server", "--port", "0"],
        env=env,
        cwd=release.root,
    )
    members: list[Child] = []
    try:
        address = wait_for_log(server, r"listening on (\S+)").group(1)
        sizes = [per_process] * (count // per_process) + [count % per_process]
        for n, size in enumerate(size for size in sizes if size):
            command = [PYTHON, __file__, "--clients-of", address, str(size), "--hang", str(hang)]
            members.append(procs.start(f"clients-{n}", command, env=env, cwd=release.root))
        for child in members:
            _wait_for(child, "ready", 120.0)
        time.sleep(1.0)  # the server settles after the processes' start-up
        baseline = _threads(server.pid)
        cpu_before = cpu_seconds(server.pid)
        overflows = listen_overflows()
        for child in members:
            os.kill(child.pid, signal.SIGUSR1)
        outcomes = [json.loads(_wait_for(child, "{", hang + 60.0)) for child in members]
        peak = _threads(server.pid)
        server_cpu = cpu_seconds(server.pid) - cpu_before
        overflows = listen_overflows() - overflows
        for child in members:
            os.kill(child.pid, signal.SIGUSR2)
        for child in members:
            child.wait_ok(60.0)
        closed = time.monotonic()
        while (after := _threads(server.pid)) > baseline and time.monotonic() - closed < SETTLE:
            time.sleep(0.05)
        settled = time.monotonic() - closed
    finally:
        for child in [*members, server]:
            procs.stop(child)
    dropped: Counter[str] = Counter()
    samples: dict[str, str] = {}
    for outcome in outcomes:
        dropped.update(outcome["dropped"])
        for kind, text in outcome["samples"].items():
            samples.setdefault(kind, text)
    answered = sorted(took for outcome in outcomes for took in outcome["answered"])
    ok = len(answered)
    return {
        "clients": count,
        "ok": ok,
        "dropped": sum(dropped.values()),
        "dropped_kinds": dict(dropped),
        "samples": samples,
        "hung": sum(outcome["hung"] for outcome in outcomes),
        "slowest": answered[-1] if answered else 0.0,
        "p50": answered[ok // 2] if answered else 0.0,
        "p99": answered[min(ok - 1, ok * 99 // 100)] if answered else 0.0,
        "connections": sum(outcome["connections"] for outcome in outcomes),
        "again": sum(outcome["again"] for outcome in outcomes),
        "server_threads_before": baseline,
        "server_threads_peak": peak,
        "server_threads_after": after,
        "settled_s": settled,
        "server_cpu_s": server_cpu,
        "listen_overflows": overflows,
        "rate": ok,
    }


def line(name: str, result: dict[str, Any]) -> str:
    kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(result["dropped_kinds"].items()))
    back = (
        f"back to {result['server_threads_after']} in {result['settled_s']:.1f}s"
        if result["server_threads_after"] <= result["server_threads_before"]
        else f"still {result['server_threads_after']} after {SETTLE:g}s"
    )
    return (
        f"{name:<22} {result['clients']:>5} clients: ok {result['ok']:>5} "
        f"({result['again']} after a second login), "
        f"dropped {result['dropped']:>4}{f' ({kinds})' if kinds else ''}, hung {result['hung']}; "
        f"slowest {result['slowest']:.2f}s (p50 {result['p50']:.2f}s, p99 {result['p99']:.2f}s); "
        f"{result['connections']} connections opened, "
        f"{result['listen_overflows']} listen overflows; server CPU {result['server_cpu_s']:.2f}s; "
        f"server threads "
        f"{result['server_threads_before']} -> {result['server_threads_peak']}, {back}"
    )


def variants(
    procs: Processes,
    current: Release,
    baseline: Release | None,
    counts: list[int],
    per_process: int,
    hang: float = HANG,
) -> list[tuple[str, Any]]:
    """(name, run) for each N, the baseline's storm right before this checkout's."""
    found: list[tuple[str, Any]] = []
    for count in counts:
        for release in (baseline, current):
            if release is not None:
                found.append(
                    (
                        f"storm {count}: {release.name}",
                        lambda r=release, n=count: storm(procs, r, n, per_process, hang),
                    )
                )
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="1000,3000", help="storm sizes, comma-separated")
    parser.add_argument(
        "--per-process", type=int, default=PER_PROCESS, help="client threads a process"
    )
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--baseline", default=BASELINE, help="a commit ('' for none)")
    parser.add_argument("--hang", type=float, default=HANG, help="seconds before hung")
    parser.add_argument("--json", type=Path, help="also write the runs here")
    parser.add_argument("--clients-of", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.clients_of:
        clients(args.clients_of[0], int(args.clients_of[1]), args.hang)
        return 0
    counts = [int(n) for n in args.clients.split(",") if n.strip()]
    runs: dict[str, list[dict[str, Any]]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="fetchq-storm-") as folder,
        Processes(Path(folder)) as procs,
    ):
        baseline = unpack(args.baseline, Path(folder)) if args.baseline else None
        chosen = variants(procs, Release("main"), baseline, counts, args.per_process, args.hang)
        for n in range(args.repeat):
            for name, run in chosen:
                say(f"{name} (run {n + 1} of {args.repeat}), load {os.getloadavg()[0]:.1f}")
                result = run()
                runs.setdefault(name, []).append(result)
                say("  " + line(name, result))
                for kind, text in result["samples"].items():
                    say(f"    {kind}: {text}")
    print()
    for name, results in runs.items():
        for result in results:
            print(line(name, result))
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
