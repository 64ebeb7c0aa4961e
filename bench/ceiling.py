"""The server's ceiling: how many tasks a second one server core gets through a
synthetic fleet, and the server's CPU per task, this checkout against a baseline
release built from the repository's history, measured in the same run.

    python bench/ceiling.py [--count 300000] [--repeat 3] [--baseline 073dcce]

The synthetic fleet (bench/synthetic_fleet.py) leases tasks and reports made-up
results with no HTTP; ``fetchq output --format none --until-done`` drains the
results.  On a machine with two cores or more the server runs on a core of its own
(CPU 0) and everything else on the others, so the server's own work is what limits
the rate.  The rate is timed from the fleet's first task to the output's exit: the
clients' own start-up (a few tenths of a second of Python imports on the fleet's
core) is not the server's work.  The server's CPU is counted over the whole run.
Each variant runs ``--repeat`` times, interleaved with the others, and the
medians are printed with their ratio to the baseline.  Also run by
``bench/run.py --cases ceiling``.

Variants: lease batches of 20, 100 and 500, with 2 processes x 8 threads and 4 x 32;
and this checkout with a job that has a rate and per-host cap so high that neither
ever holds a task back (what the scheduler's bookkeeping costs by itself).

With a store (``--store``, or the variants named "store"): the same fleet through one
server on a ``redis-server`` the bench starts (on the server's core, with no
persistence: the store's bookkeeping, not its disk), then through two servers on it,
the fleet's processes split between them; then two servers on a Redis Cluster of
three primaries, the fleet in one shard and in three.  Each server's CPU per task
and the store's (from its ``INFO``, summed over a Cluster's nodes, and its busiest
node's) are printed beside the embedded broker's of the same run.  The nodes share
the server's core here: a Cluster's ceiling on hosts of their own is its busiest
node's, which shards spread.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import (
    BENCH_DIR,
    PYTHON,
    BenchError,
    Processes,
    child_env,
    cpu_seconds,
    median,
    say,
    wait_for_log,
)

REPO = BENCH_DIR.parent
BASELINE = "073dcce"
"""The release before pace and the JSON wire: the server the issue asks to beat."""

TEMPLATE = "http://127.0.0.1:9/ceiling?q={i}"
"""Nothing fetches these: the fleet makes its results up."""

AGGREGATE_SPAN = 1_000
"""Requests a span in the aggregate variant: issue 15's figure."""

NEVER_HOLDS = ("--rate", "1000000", "--per-host", "100000")
"""A rate and a per-host cap that a synthetic fleet on one machine never reaches."""


@dataclass(frozen=True)
class Release:
    """A fetchq to run: this checkout (root None), or one unpacked from history."""

    name: str
    root: Path | None = None

    def env(self, **extra: str) -> dict[str, str]:
        env = child_env(**extra)
        if self.root is not None:  # first on sys.path: before the installed fetchq
            env["PYTHONPATH"] = str(self.root)
        return env


@dataclass(frozen=True)
class Shape:
    processes: int
    threads: int
    batch: int
    policy: tuple[str, ...] = ()
    span: int = 0
    """Requests a span: an aggregate job, its fleet reporting an aggregate a span."""
    servers: int = 0
    """Servers on a store (0: the embedded broker)."""
    nodes: int = 1
    """The store's primaries: more than one, a Redis Cluster."""
    shards: int = 1
    """The shards the store keeps the fleet in (``fetchq server --shards``)."""

    @property
    def label(self) -> str:
        on = ""
        if self.servers:
            on = ", one server" if self.servers == 1 else f", {self.servers} servers"
            on += " on a store"
            if self.nodes > 1:
                on += f" (Cluster of {self.nodes}, {self.shards} shard{'s' * (self.shards > 1)})"
        if self.span:
            each = max(1, self.batch // self.span)
            shape = f"{self.processes}x{self.threads}"
            return f"{shape}, aggregate, spans of {self.span}, {each} a lease{on}"
        if self.servers:
            return f"{self.processes}x{self.threads}, batch {self.batch}{on}"
        paced = ", rate + per-host" if self.policy else ""
        return f"{self.processes}x{self.threads}, batch {self.batch}{paced}"


SHAPES = (
    Shape(2, 8, 20),
    Shape(2, 8, 100),
    Shape(2, 8, 500),
    Shape(4, 32, 20),
)


def unpack(commit: str, folder: Path) -> Release:
    """``commit``'s tree, unpacked into ``folder`` (``git archive``: the repository is
    not touched)."""
    target = folder / f"fetchq-{commit}"
    target.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", commit],
        capture_output=True,
        timeout=120,
    )
    if archive.returncode:
        raise BenchError(f"git archive {commit} failed: {archive.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return Release(commit, target)


def pinned(command: list[str], cpus: str | None) -> list[str]:
    return ["taskset", "-c", cpus, *command] if cpus else command


def cpu_plan() -> tuple[str | None, str | None]:
    """(the server's CPUs, everyone else's): apart when there are two cores or more."""
    count = os.cpu_count() or 1
    if count < 2:
        return None, None
    return "0", f"1-{count - 1}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_store(
    procs: Processes, cpus: str | None, nodes: int = 1
) -> tuple[list[Any], str, list[Any]]:
    """A ``redis-server`` on a free port of 127.0.0.1, no persistence, or a Redis Cluster
    of ``nodes`` such, the slots split evenly: (the children, the URL, a client of each
    for its ``INFO``)."""
    import redis

    children, clients, ports = [], [], []
    for n in range(nodes):
        port = free_port()
        ports.append(port)
        command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                   "--appendonly", "no", "--dir", str(procs.folder)]  # fmt: skip
        if nodes > 1:
            command += ["--cluster-enabled", "yes", "--cluster-port", str(free_port()),
                        "--cluster-config-file", f"nodes-{port}.conf"]  # fmt: skip
        child = procs.start(f"store-{n}", pinned(command, cpus))
        client = redis.Redis(port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise BenchError(f"redis-server did not answer:\n{child.tail()}") from None
                time.sleep(0.05)
        children.append(child)
        clients.append(client)
    if nodes > 1:
        form_cluster(clients, ports)
    return children, f"redis://127.0.0.1:{ports[0]}/0", clients


def form_cluster(clients: list[Any], ports: list[int]) -> None:
    """The nodes made one cluster, each holding an even part of the slots."""
    slots = 16384
    for n, client in enumerate(clients):
        client.execute_command("CLUSTER ADDSLOTSRANGE", n * slots // len(clients),
                               (n + 1) * slots // len(clients) - 1)  # fmt: skip
    first = clients[0]
    for client, port in zip(clients[1:], ports[1:], strict=True):
        bus = int(client.config_get("cluster-port")["cluster-port"])
        first.execute_command("CLUSTER MEET", "127.0.0.1", port, bus)
    deadline = time.monotonic() + 30
    for client in clients:
        while client.cluster("info")["cluster_state"] != "ok" or len(client.cluster("nodes")) < len(
            clients
        ):
            if time.monotonic() > deadline:
                raise BenchError("the cluster did not form")
            time.sleep(0.05)


def store_cpu(clients: list[Any]) -> list[float]:
    """Each node's CPU seconds so far."""
    used = []
    for client in clients:
        cpu = client.info("cpu")
        used.append(float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]))
    return used


def fleet_run(procs: Processes, release: Release, shape: Shape, count: int) -> dict[str, Any]:
    """One run: ``count`` tasks dispatched, then the fleet and an output let go at once;
    the rate from the fleet's first task until output has every result, and the server's
    CPU from the moment they are let go (the servers' and the store's, on a store)."""
    server_cpus, other_cpus = cpu_plan()
    key = os.urandom(18).hex()
    config_home = procs.folder / "config"
    config_home.mkdir(exist_ok=True)
    env = release.env(FETCHQ_AUTHKEY=key, XDG_CONFIG_HOME=str(config_home))
    cwd = release.root
    fetchq = [PYTHON, "-m", "fetchq"]
    serve = [*fetchq, "server", "--port", "0", "--max-pending", str(count + 1)]
    store = None
    if shape.servers:
        store = start_store(procs, server_cpus, shape.nodes)
        serve = [*serve, "--store", store[1]]
        if shape.shards > 1:
            serve += ["--shards", str(shape.shards)]
    servers = [
        procs.start(f"server-{release.name}-{n}", pinned(serve, server_cpus), env=env, cwd=cwd)
        for n in range(max(1, shape.servers))
    ]
    started: list[Any] = []
    try:
        addresses = [wait_for_log(s, r"listening on (\S+)").group(1) for s in servers]
        address = addresses[0]
        env["FETCHQ_SERVER"] = address
        job = ("--template", TEMPLATE, "--count", str(count), "--job", "ceiling", *shape.policy)
        if shape.shards > 1:  # batches enough to land in every shard
            job = (*job, "--batch-size", str(max(1, count // 100)))
        if shape.span:
            job = (*job, "--aggregate", "--span", str(shape.span))
        dispatch = procs.start(
            "dispatch", pinned([*fetchq, "dispatch", *job], other_cpus), env=env, cwd=cwd
        )
        started.append(dispatch)
        dispatch.wait_ok(300)
        output_command = [*fetchq, "output", "--job", "ceiling", "--until-done", "--format", "none"]
        cpu_before = [cpu_seconds(server.pid) for server in servers]
        store_before = store_cpu(store[2]) if store else []
        began = time.perf_counter()
        output = procs.start("output", pinned(output_command, other_cpus), env=env, cwd=cwd)
        started.append(output)
        sizes = ("--threads", str(shape.threads), "--batch", str(shape.batch))
        if shape.span:
            sizes = (*sizes, "--spans", str(shape.span))
        member = [PYTHON, str(BENCH_DIR / "synthetic_fleet.py")]
        fleet = [  # split between the servers
            procs.start(
                f"fleet-{n}",
                pinned([*member, addresses[n % len(addresses)], *sizes], other_cpus),
                env=env,
                cwd=cwd,
            )
            for n in range(shape.processes)
        ]
        started.extend(fleet)
        output.wait_ok(600)
        ended = time.time()
        seconds = time.perf_counter() - began
        each_server = [
            cpu_seconds(server.pid) - before
            for server, before in zip(servers, cpu_before, strict=True)
        ]
        server_cpu = sum(each_server)
        store_after = store_cpu(store[2]) if store else []
        on_nodes = [after - before for after, before in zip(store_after, store_before, strict=True)]
        reported = 0
        firsts = []
        for member in fleet:
            member.wait_ok(60)
            said = json.loads(member.log.read_text().strip().splitlines()[-1])
            reported += said["reported"]
            if said.get("first_task") is not None:
                firsts.append(said["first_task"])
        if reported < count:
            raise BenchError(f"the fleet reported {reported} of {count} tasks")
        working = ended - min(firsts)
    finally:
        for child in [*started, *servers, *(store[0] if store else [])]:
            procs.stop(child)
    return {
        "each_server_us_per_task": [cpu / count * 1e6 for cpu in each_server],
        "store_us_per_task": sum(on_nodes) / count * 1e6,
        "busiest_node_us_per_task": max(on_nodes, default=0.0) / count * 1e6,
        "count": count,
        "seconds": seconds,
        "working_seconds": working,
        "rate": count / working,
        "rate_with_start_up": count / seconds,
        "server_cpu_s": server_cpu,
        "server_us_per_task": server_cpu / count * 1e6,
        "server_busy": server_cpu / seconds,
    }


def variants(
    procs: Processes, main: Release, baseline: Release | None, count: int, requests: int
) -> list[tuple[str, Any]]:
    """(name, run) for each shape, baseline first, the never-holding policy, and an
    aggregate job of ``requests`` in spans of AGGREGATE_SPAN (this checkout only)."""
    found: list[tuple[str, Any]] = []
    for shape in SHAPES:
        for release in (baseline, main):
            if release is not None:
                found.append(
                    (
                        f"ceiling {shape.label}: {release.name}",
                        lambda r=release, s=shape: fleet_run(procs, r, s, count),
                    )
                )
    for batch in (100, 500):
        shape = Shape(2, 8, batch, NEVER_HOLDS)
        found.append(
            (
                f"ceiling {shape.label}: {main.name}",
                lambda s=shape: fleet_run(procs, main, s, count),
            )
        )
    stores = [Shape(2, 8, 100, servers=servers) for servers in (1, 2)]
    stores += [Shape(2, 8, 100, servers=2, nodes=3, shards=shards) for shards in (1, 3)]
    for shape in stores:
        found.append(
            (
                f"ceiling {shape.label}: {main.name}",
                lambda s=shape: fleet_run(procs, main, s, count),
            )
        )
    for batch in (100, 4 * AGGREGATE_SPAN) if requests else ():
        for servers in (0, 1, 2):
            spans = Shape(2, 8, batch, span=AGGREGATE_SPAN, servers=servers)
            found.append(
                (
                    f"ceiling {spans.label}: {main.name}",
                    lambda s=spans: fleet_run(procs, main, s, requests),
                )
            )
    return found


def summarise(runs: dict[str, list[dict[str, Any]]], baseline: str) -> list[str]:
    """One line per variant: median rate and server CPU per task, and the ratios against
    the baseline (or, for the policy variant, against the plain one of the same batch)."""
    lines = []
    medians = {
        name: (median([r["rate"] for r in got]), median([r["server_us_per_task"] for r in got]))
        for name, got in runs.items()
        if got
    }
    for name, (rate, micros) in medians.items():
        label, _, release = name.rpartition(": ")
        if release == baseline:
            compare = None
        elif ", rate + per-host" in label:
            compare = medians.get(f"{label.replace(', rate + per-host', '')}: {release}")
        else:
            compare = medians.get(f"{label}: {baseline}")
        ratio = ""
        if compare:
            what = "plain" if ", rate + per-host" in label else baseline
            ratio = f"   x{rate / compare[0]:.2f} rate, x{micros / compare[1]:.2f} CPU vs {what}"
        unit = "request" if "aggregate" in label else "task"
        if "on a store" in label:
            got = runs[name]
            each = [median([r["each_server_us_per_task"][n] for r in got])
                    for n in range(len(got[0]["each_server_us_per_task"]))]  # fmt: skip
            on_store = median([r["store_us_per_task"] for r in got])
            busiest = median([r["busiest_node_us_per_task"] for r in got])
            embedded = label.split(", one server")[0].split(", 2 servers")[0]
            plain = medians.get(f"{embedded}: {release}")
            ratio = f"   x{rate / plain[0]:.2f} rate vs embedded" if plain else ""
            digits = 3 if unit == "request" else 1
            servers_cpu = " + ".join(f"{u:.{digits}f}" for u in each)
            nodes = ""
            if "Cluster" in label:
                nodes = f" (busiest node {busiest:.{digits}f})"
            lines.append(
                f"{name:<52} {rate:>10,.0f} {unit}s/s servers {servers_cpu} us/{unit}, "
                f"store {on_store:.{digits}f} us/{unit}{nodes}{ratio}"
            )
            continue
        if unit == "request":
            lines.append(f"{name:<52} {rate:>10,.0f} requests/s {micros:>7.3f} us/request")
            continue
        lines.append(f"{name:<52} {rate:>10,.0f} tasks/s {micros:>7.1f} us/task{ratio}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=300_000)
    parser.add_argument(
        "--requests", type=int, default=20_000_000, help="of the aggregate job (0: none)"
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--baseline", default=BASELINE, help="a commit ('' for none)")
    parser.add_argument("--json", type=Path, help="also write the runs here")
    parser.add_argument("--only", default="", help="run the variants whose name holds this")
    args = parser.parse_args(argv)
    runs: dict[str, list[dict[str, Any]]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="fetchq-ceiling-") as folder,
        Processes(Path(folder)) as procs,
    ):
        baseline = unpack(args.baseline, Path(folder)) if args.baseline else None
        current = Release("main")
        chosen = [
            (name, run)
            for name, run in variants(procs, current, baseline, args.count, args.requests)
            if args.only in name
        ]
        for n in range(args.repeat):
            for name, run in chosen:
                say(f"{name} (run {n + 1} of {args.repeat})")
                result = run()
                runs.setdefault(name, []).append(result)
                say(f"  {result['rate']:,.0f} tasks/s, {result['server_us_per_task']:.1f} us/task")
    print("\n".join(summarise(runs, args.baseline)))
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
