"""Servers on a store: one of two killed, the store killed, cut off or full, a Cluster
failing over.

The store is a real ``redis-server`` of the test's own (``store`` fixture), with
its AOF fsynced before each reply; the servers, workers, dispatcher and output are
real processes, and the checker reads what the output wrote.
"""

from __future__ import annotations

import re
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from checker import assert_exactly_once, check_file, wait_for_job
from faultkit import exit_code
from fetchq_procs import connect_broker, poll_until, worker_name
from netproxy import NetProxy
from storekit import StoreCluster

from fetchq.errors import StoreUnavailable
from fetchq.server.store.connection import job_key, shard_tag
from fetchq.testing.target import Target

LEASE = "3"


@dataclass
class Run:
    """A job of URLs unique per task on the test target, and the processes running it."""

    job: str
    template: str
    urls: list[str]
    out: Path


def new_run(target: Target, tmp_path: Path, count: int, slow: float) -> Run:
    tag = f"s{uuid.uuid4().hex[:10]}"
    template = f"{target.url}/slow?s={slow}&t={tag}&i={{i}}"
    urls = [template.format(i=i) for i in range(count)]
    return Run(tag, template, urls, tmp_path / "results.jsonl")


def start_clients(launch, env, run: Run, *, workers: list[str], output: str, dispatch: str):
    """Workers, an output and a dispatcher, each given its own ``FETCHQ_SERVER``."""
    started = [
        launch({**env, "FETCHQ_SERVER": servers}, "worker", "--concurrency", "4")
        for servers in workers
    ]
    out = launch(
        {**env, "FETCHQ_SERVER": output},
        "output", "--job", run.job, "--format", "jsonl", "--out", str(run.out), "--until-done",
    )  # fmt: skip
    sent = launch(
        {**env, "FETCHQ_SERVER": dispatch},
        "dispatch", "--template", run.template, "--count", str(len(run.urls)), "--job", run.job,
        "--batch-size", "200",
    )  # fmt: skip
    return started, out, sent


@dataclass
class OneServer:
    """A job through one server: two workers, an output and a dispatcher on it, and a
    client watching it."""

    server: Any
    run: Run
    workers: list[Any]
    output: Any
    dispatch: Any
    watch: Any

    def finish(self, fault_at: float) -> None:
        finish(self.watch, self.run, self.workers, self.output, self.dispatch, fault_at)
        self.watch.close()


def through_one_server(start_server, launch, env, target, tmp_path, store_url: str, *,
                       lease: str = LEASE, slow: float = 0.002,
                       shards: int = 1) -> OneServer:  # fmt: skip
    """2,000 URLs, in 10 batches, through a server on the store at ``store_url``."""
    server = start_server("--store", store_url, "--lease-timeout", lease, "--shards", str(shards))
    run = new_run(target, tmp_path, 2000, slow=slow)
    workers, output, dispatch = start_clients(
        launch, env, run, workers=[server.address] * 2, output=server.address,
        dispatch=server.address,
    )  # fmt: skip
    watch = connect_broker(server.address, env["FETCHQ_AUTHKEY"])
    return OneServer(server, run, workers, output, dispatch, watch)


def finish(watch, run: Run, workers, output, dispatch, fault_at: float) -> None:
    """Everything completes, each URL exactly once, some of it after the fault."""
    assert exit_code(*dispatch, 60) == 0, dispatch[1].text
    wait_for_job(watch, run.job, timeout=90)
    assert exit_code(*output, 60) == 0, output[1].text
    for process, log in workers:
        process.terminate()
        assert exit_code(process, log, 30) == 0, log.text
    report = check_file(run.urls, run.out, fault_at=fault_at)
    assert_exactly_once(report)
    assert report.recovered, "results should have come after the fault too"


def running(watch, run: Run, at_least: int):
    def mid_job() -> bool:
        try:
            counts = watch.call("job", run.job)
        except Exception:  # not dispatched yet
            return False
        return at_least <= counts["succeeded"] <= len(run.urls) - 500

    poll_until(mid_job, 60, "the job to be running")


def test_one_of_two_servers_killed_mid_job(env, store, start_server, launch, target, tmp_path):
    """kill -9 one of two servers on a store while workers, an output and a dispatcher
    talk to both: those on it move to the other, and nothing is lost or doubled."""
    first = start_server("--store", store.url, "--lease-timeout", LEASE)
    second = start_server("--store", store.url, "--lease-timeout", LEASE)
    both, back = f"{first.address},{second.address}", f"{second.address},{first.address}"
    run = new_run(target, tmp_path, 3000, slow=0.002)
    workers, output, dispatch = start_clients(
        launch, env, run, workers=[both, back], output=both, dispatch=both
    )
    watch = connect_broker(second.address, env["FETCHQ_AUTHKEY"])
    running(watch, run, 300)
    fault_at = time.time()
    first.kill()
    moved = rf"moving on to server at {second.address}"
    for _, log in (workers[0], output):
        log.wait_for(moved, 20)  # those on the dead server say where they go
    finish(watch, run, workers, output, dispatch, fault_at)
    assert not any("moving on" in line for line in workers[1][1].lines), (
        "a worker on the live server stays there"
    )
    watch.close()


def test_the_store_killed_with_appendfsync_always_and_restarted(
    env, store, start_server, launch, target, tmp_path
):
    """kill -9 the store mid-job and start it again from its AOF: the server says once
    that it does not answer and once that it is back, clients wait saying why, and
    every acknowledged task ends as exactly one result."""
    job = through_one_server(start_server, launch, env, target, tmp_path, store.url)
    running(job.watch, job.run, 300)
    fault_at = time.time()
    store.kill()
    job.server.log.wait_for(r"store .* does not answer", 20)
    job.output[1].wait_for(r"waiting for server at .*store does not answer", 20)
    store.restart()  # from its AOF; the fixture stops it
    job.server.log.wait_for(r"store .* answers again", 20)
    job.finish(fault_at)
    said = [line for line in job.server.log.lines if "does not answer" in line]
    assert len(said) == 1, said


def test_a_node_of_a_cluster_in_shards_killed_with_appendfsync_always_and_restarted(
    env, start_server, launch, target, tmp_path
):
    """kill -9 the node of one shard of three, its AOF fsynced before each reply, and
    start it again: with no replica to take its place the cluster serves no shard
    meanwhile, each shard's outage is said once, clients wait, and every acknowledged
    task ends as exactly one result."""
    cluster = StoreCluster(tmp_path / "cluster", appendfsync="always").start()
    try:
        job = through_one_server(start_server, launch, env, target, tmp_path, cluster.url,
                                 shards=3)  # fmt: skip
        running(job.watch, job.run, 300)
        victim = cluster.node_of(shard_tag(1))
        fault_at = time.time()
        victim.kill()
        job.server.log.wait_for(r"store .*, shard \d, does not answer", 20)
        job.output[1].wait_for(r"waiting for server at .*store does not answer", 20)
        victim.restart()  # from its AOF and its nodes.conf, on its port
        job.server.log.wait_for(r"store .*, shard \d, answers again", 30)
        job.finish(fault_at)
    finally:
        cluster.stop()
    said = Counter(re.findall(r"shard (\d), does not answer", "\n".join(job.server.log.lines)))
    assert said and max(said.values()) == 1, said
    again = Counter(re.findall(r"shard (\d), answers again", "\n".join(job.server.log.lines)))
    assert again == said, job.server.log.text


def test_the_store_cut_off_for_a_while(env, store, start_server, launch, target, tmp_path):
    """The path to the store drops every packet for a while (a proxy black-holes it):
    the server says so once, clients wait and say why, and all resumes by itself."""
    with NetProxy(f"127.0.0.1:{store.port}") as proxy:
        # 3 s, not the default 10, to keep the test short; not 1, which a busy machine's
        # stall of a store fsyncing every write can reach before the cut.
        url = f"redis://{proxy.address}/0?socket_timeout=3&socket_connect_timeout=3"
        job = through_one_server(start_server, launch, env, target, tmp_path, url, lease="5")
        running(job.watch, job.run, 300)
        fault_at, cut_at = time.time(), time.monotonic()
        proxy.cut()
        job.server.log.wait_for(r"store .* does not answer", 20)
        job.workers[0][1].wait_for(r"waiting for server at .*store does not answer", 20)
        proxy.heal()
        job.server.log.wait_for(r"store .* answers again", 20)
        job.finish(fault_at)
        said = [line for line in job.server.log.lines_since(cut_at) if "does not answer" in line]
        assert len(said) == 1, said


def test_a_dead_workers_leases_lapse_through_the_other_server(
    env, store, start_server, launch, target, tmp_path
):
    """kill -9 a worker and then its server, while the other server and its worker go
    on: the dead worker's leases lapse through the other server's calls, its tasks run
    there, and nothing is lost or doubled."""
    first = start_server("--store", store.url, "--lease-timeout", LEASE)
    second = start_server("--store", store.url, "--lease-timeout", LEASE)
    run = new_run(target, tmp_path, 2000, slow=0.01)
    workers, output, dispatch = start_clients(
        launch, env, run, workers=[first.address, second.address], output=second.address,
        dispatch=second.address,
    )  # fmt: skip
    watch = connect_broker(second.address, env["FETCHQ_AUTHKEY"])
    running(watch, run, 200)
    (victim, _), survivor = workers
    name = worker_name(victim.pid)

    def holding() -> bool:
        rows = watch.call("status")["workers"]
        return any(row["worker"] == name and row["leased"] > 0 for row in rows)

    poll_until(holding, 30, "the worker on the first server to hold leases")
    fault_at = time.time()
    victim.kill()
    victim.wait(10)
    first.kill()  # from now on, only the second server's calls can expire its leases
    poll_until(lambda: watch.call("job", run.job)["expired"] > 0, 30, "its leases to lapse")
    assert exit_code(*dispatch, 60) == 0, dispatch[1].text
    wait_for_job(watch, run.job, timeout=90)
    assert exit_code(*output, 60) == 0, output[1].text
    survivor[0].terminate()
    assert exit_code(*survivor, 30) == 0, survivor[1].text
    report = check_file(run.urls, run.out, fault_at=fault_at)
    assert_exactly_once(report)
    assert any(result["attempt"] > 1 for result in report.recovered), "a lapsed task ran again"
    watch.close()


OUTAGE = re.compile("is full|answers again")


def test_the_store_full_for_a_while(env, store, start_server, launch, target, tmp_path):
    """The store reaches its maxmemory (and evicts nothing): it refuses every write, the
    server says once that it is full, clients wait and say why, and when room is made
    all goes on, nothing lost or doubled."""
    job = through_one_server(start_server, launch, env, target, tmp_path, store.url)
    running(job.watch, job.run, 300)
    fault_at = time.time()
    admin = store.client()
    admin.config_set("maxmemory", 1)  # far below what it holds: every write refused
    job.server.log.wait_for(r"store .* is full: .* maxmemory \(raise it, or make room\)", 20)
    job.workers[0][1].wait_for(r"waiting for server at .*store is full", 20)
    late = connect_broker(job.server.address, env["FETCHQ_AUTHKEY"])  # its hello only reads
    with pytest.raises(StoreUnavailable, match="store is full"):
        late.call("job", job.run.job)  # (and the job's counts write: refused)
    late.close()
    admin.config_set("maxmemory", 0)
    job.server.log.wait_for(r"store .* answers again", 20)
    job.finish(fault_at)
    said = [found[0] for line in job.server.log.lines if (found := OUTAGE.search(line))]
    # a read the full store answers does not end the outage: it refuses writes
    assert said == ["is full", "answers again"], job.server.log.text
    admin.close()


def test_a_cluster_in_shards_fails_over_to_the_replica_of_a_shards_node(
    env, start_server, launch, target, tmp_path
):
    """kill -9 the primary of the shard with most of a job's tasks, the fleet in three
    shards on a Redis Cluster of three, once the tasks have reached its replica: the
    cluster promotes the replica, the server finds it, clients wait saying why, and
    every URL ends as exactly one result."""
    cluster = StoreCluster(tmp_path / "cluster").start()
    try:
        replicas = {node.port: cluster.add_replica(node) for node in list(cluster.nodes)}
        job = through_one_server(start_server, launch, env, target, tmp_path, cluster.url,
                                 slow=0.02, shards=3)  # fmt: skip
        assert exit_code(*job.dispatch, 60) == 0, job.dispatch[1].text  # all acknowledged
        client = cluster.client()
        submitted = {
            shard: int(client.hget(job_key(job.run.job, "meta", shard), "submitted") or 0)
            for shard in range(3)
        }
        client.close()
        assert sum(submitted.values()) == len(job.run.urls), submitted
        shard = max(submitted, key=submitted.__getitem__)
        primary = cluster.node_of(shard_tag(shard))
        replica = replicas[primary.port]
        running(job.watch, job.run, 300)
        cluster.wait_in_sync(primary, replica)  # (a write it had not copied would be lost)
        fault_at = time.time()
        primary.kill()
        job.server.log.wait_for(rf"store .*, shard {shard}, does not answer", 20)
        job.workers[0][1].wait_for(r"waiting for server at .*store does not answer", 20)
        job.server.log.wait_for(rf"store .*, shard {shard}, answers again", 30)
        job.finish(fault_at)
    finally:
        cluster.stop()
