"""Two servers on one store serve one fleet: every result exactly once, one rate and
one per-host cap for all, whichever server each worker, output and dispatcher uses.

The store is a real ``redis-server`` of the test's own; 127.0.0.2 and 127.0.0.3
stand in for other hosts, each with a target of its own.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import storekit
import trustme
from brokerkit import batch_ids, on_cluster, on_store, renew
from fetchq_procs import (
    ServerProcess,
    connect_broker,
    jsonl,
    poll_until,
    run,
    start_output,
    start_worker,
    stop_all,
    wait_until_leasing,
    worker_name,
)
from storekit import StoreCluster, StoreProcess
from test_aggregate_jobs import assert_paced_spans
from test_broker import batches_in_two_shards
from test_cli import assert_clean_error
from worker_scenarios import (
    CLOCK_SLACK,
    assert_none_before_its_slot,
    assert_rate_held,
    assert_slots_apart,
)

from fetchq.errors import ExitCode, StoreUnavailable
from fetchq.server.jobqueue import Policy
from fetchq.server.store import broker as store_broker
from fetchq.server.store.broker import StoreBroker
from fetchq.server.store.connection import IDS_KEY, TAG, shard_of, shard_tag
from fetchq.server.store.shards import home_of, shard_of_key
from fetchq.server.views import policy_view
from fetchq.testing.target import Target
from fetchq.wire.records import ROBOTS_REFUSED

COUNT = 20_000


@pytest.fixture
def servers(env: dict[str, str], store: StoreProcess) -> Iterator[list[ServerProcess]]:
    """Two ``fetchq server --store`` on the test's store."""
    running = [ServerProcess(env, "--store", store.url, "--lease-timeout", "5") for _ in "ab"]
    try:
        yield running
    finally:
        for server in running:
            server.stop()


def on(env: dict[str, str], server: ServerProcess) -> dict[str, str]:
    return {**env, "FETCHQ_SERVER": server.address}


FEW = ("--concurrency", "2", "--prefetch", "2")
"""A worker that holds at most four tasks: one worker alone cannot hold all a job
offers, so each of two takes part."""


def workers_on(
    env: dict[str, str], servers: list[ServerProcess], options: tuple[str, ...] = ()
) -> list[subprocess.Popen[str]]:
    """One worker on each server, each asking for tasks before the test goes on."""
    options = options or ("--concurrency", "8")
    workers = [start_worker(on(env, server), *options)[0] for server in servers]
    watch = connect_broker(servers[0].address, env["FETCHQ_AUTHKEY"])
    try:  # any server's status shows every worker: the store has them all
        wait_until_leasing(watch, {worker_name(worker.pid) for worker in workers})
    finally:
        watch.close()
    return workers


def through_both(
    env: dict[str, str],
    servers: list[ServerProcess],
    job: str,
    *dispatch: str,
    both: bool = True,
    workers: tuple[str, ...] = FEW,
) -> tuple[list[dict[str, Any]], str]:
    """A job dispatched through one server and read through the other, a worker on
    each, started with ``workers`` options (``both``: each took part): its records
    (JSONL) and what the output said."""
    running = workers_on(env, servers, workers)
    try:
        dispatched = run(on(env, servers[0]), "dispatch", *dispatch, "-j", job)
        assert dispatched.returncode == 0, dispatched.stderr
        output = start_output(on(env, servers[1]), "-j", job, "--until-done",
                              "--format", "jsonl", "--summary")  # fmt: skip
        out, err = output.communicate(timeout=120)
        assert output.returncode == 0, err
    finally:
        stop_all(running)
    records = jsonl(out)
    if both:
        assert len({record["worker"] for record in records}) == 2, "both workers took part"
    return records, err


def test_a_job_through_two_servers_gives_every_result_exactly_once(env, servers, target, tmp_path):
    """20,000 URLs dispatched to one server, fetched by a worker on each, read by an
    output on each: every URL is one result in exactly one of the two outputs."""
    workers = workers_on(env, servers)
    files = [tmp_path / f"results-{n}.jsonl" for n in range(len(servers))]
    outputs = [  # each writes a file: an output that stalled on a full pipe would see
        # its delivery lapse to the other, written twice (docs/delivery.md)
        start_output(on(env, server), "-j", "fleet", "--until-done", "--format", "jsonl",
                     "--out", str(path))
        for server, path in zip(servers, files, strict=True)
    ]  # fmt: skip
    try:
        template = f"{target.url}/fleet?i={{i}}"
        dispatched = run(on(env, servers[0]), "dispatch", "--template", template, "--count",
                         str(COUNT), "-j", "fleet")  # fmt: skip
        assert dispatched.returncode == 0, dispatched.stderr
        for output in outputs:
            _, err = output.communicate(timeout=120)
            assert output.returncode == 0, err
        views = [run(on(env, server), "job", "list", "--json") for server in servers]
    finally:
        stop_all([*workers, *outputs])
    first_view, second_view = (json.loads(view.stdout)["fleet"] for view in views)
    stable = [name for name in first_view if name != "pace"]  # (measured at the moment)
    assert [first_view[name] for name in stable] == [second_view[name] for name in stable]
    assert (first_view["succeeded"], first_view["state"]) == (COUNT, "done")
    written = [jsonl(path.read_text()) for path in files]
    results = [result for part in written for result in part]
    urls = Counter(result["url"] for result in results)
    assert set(urls) == {template.format(i=i) for i in range(COUNT)}
    assert max(urls.values()) == 1, urls.most_common(3)
    assert len({result["id"] for result in results}) == COUNT
    assert all(result["ok"] for result in results)
    assert all(written), "each output had its share"
    assert len({result["worker"] for result in results}) == 2, "both workers took part"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreCluster]:
    """A Redis Cluster of three primaries."""
    running = StoreCluster(tmp_path_factory.mktemp("cluster")).start()
    try:
        yield running
    finally:
        running.stop()


def emptied(cluster: StoreCluster) -> StoreCluster:
    """``cluster`` with no keys: what the module's other tests left is gone."""
    for node in cluster.nodes:
        node.client().flushall()
    return cluster


def test_two_servers_on_a_redis_cluster_in_shards_spread_a_job_over_its_nodes(env, cluster, target):
    """The store a Redis Cluster of three primaries, its fleet in three shards, each
    on a node of its own: each server is given one of the two nodes that do not hold
    the first shard, finds the cluster, and sends each call to its shard's node.  A
    job's batches spread over the shards, and so over the nodes; every result comes
    once."""
    nodes = {cluster.node_of(shard_tag(shard)).port for shard in range(3)}
    assert len(nodes) == 3, "the shards' slots are on three nodes"
    servers = []
    try:
        holder = cluster.node_of(TAG)
        first, second = [node for node in cluster.nodes if node is not holder]
        servers.append(ServerProcess(env, "--store", first.url, "--shards", "3",
                                     "--lease-timeout", "5"))  # fmt: skip
        servers[-1].log.wait_for(r"\(a Redis Cluster\) in 3 shards: 0 tasks queued")
        servers.append(ServerProcess(env, "--store", second.url, "--lease-timeout", "5"))
        servers[-1].log.wait_for(r"\(a Redis Cluster\) in 3 shards: 0 tasks queued")
        count = 2_000
        template = f"{target.url}/cluster?i={{i}}"
        results, _ = through_both(env, servers, "spread", "--template", template,
                                  "--count", str(count), "--batch-size", "50")  # fmt: skip
    finally:
        for server in servers:
            server.stop()
    urls = Counter(result["url"] for result in results)
    assert set(urls) == {template.format(i=i) for i in range(count)}
    assert max(urls.values()) == 1, urls.most_common(3)
    # 40 batches over three shards: the chance that one got none is below 1e-6.
    assert {shard_of(result["id"]) for result in results} == {0, 1, 2}


def test_a_store_keeps_its_shard_count_and_says_so_in_one_line(env, cluster):
    """A server given another shard count than the store's is refused, as is --shards
    without a store, and server-wide host limits on a store of several shards."""
    node = cluster.nodes[0]
    started = ServerProcess(env, "--store", node.url, "--shards", "3")
    started.log.wait_for(r"\(a Redis Cluster\) in 3 shards: 0 tasks queued")
    started.stop()
    refused = run(env, "server", "--store", node.url, "--shards", "2", "--port", "0")
    assert_clean_error(refused, ExitCode.USAGE, "keeps its fleet in 3 shards (give --shards 3")
    alone = run(env, "server", "--shards", "2", "--port", "0")
    assert_clean_error(alone, ExitCode.USAGE, "only a store keeps its state in shards")
    capped = run(env, "server", "--store", node.url, "--per-host", "2", "--port", "0")
    assert_clean_error(capped, ExitCode.USAGE, "only on a store of one shard")


def test_a_lease_hands_out_what_one_shard_gave_when_another_refuses(cluster, capsys):
    """A lease asks the shards in turn: one that refuses (its node full, say) does not
    take from the worker what another gave, which would stay leased and lapse
    unfetched; the refusing shard's tasks wait for it, said once."""
    first, second, *_ = batches_in_two_shards()
    broker = StoreBroker(emptied(cluster).client(), shards=3)
    full = cluster.node_of(shard_tag(shard_of_key(second, 3))).client()
    try:
        broker.submit({"job": "part", "urls": ["http://a.test/1"], "batch_id": first})
        broker.submit({"job": "part", "urls": ["http://a.test/2"], "batch_id": second})
        full.config_set("maxmemory", 1)  # far below what it holds: every write refused
        try:
            (task,) = broker.lease("w1", 2, 0)
            with pytest.raises(StoreUnavailable, match="is full"):
                broker.lease("w1", 2, 0)  # only the full shard has tasks left
        finally:
            full.config_set("maxmemory", 0)
        assert task["url"] == "http://a.test/1"
        assert renew(broker, "w1", [[task["id"], 1]]) == 1, "still the worker's"
        assert [t["url"] for t in broker.lease("w1", 2, 0)] == ["http://a.test/2"]
    finally:
        broker.close()
    said = capsys.readouterr().err
    assert (said.count("is full"), said.count("answers again")) == (1, 1), said


def test_two_servers_making_one_job_at_once_place_its_tasks_alike(cluster):
    """A paced job's tasks all go to its home shard, so that its schedule is one: also
    when another server's first batch, which names no rate, comes while the first
    server is still making the job in the shards (it has made it in the first)."""
    emptied(cluster)
    first, second = (StoreBroker(cluster.client(), shards=3) for _ in "ab")
    try:
        paced = json.dumps(policy_view(Policy(rate=5.0)))
        first._call("create", first._wall_now(), "race", '{"rate":5.0}', paced, "0")
        ids = []
        for n in range(12):  # batches that, spread, would go to every shard
            batch = {"job": "race", "urls": [f"http://a.test/{n}"], "batch_id": f"race:{n}"}
            ids += batch_ids(second.submit(batch), 1)
        ids += batch_ids(first.submit({"job": "race", "urls": ["http://a.test/x"], "rate": 5}), 1)
        assert second.job("race")["submitted"] == 13
    finally:
        first.close()
        second.close()
    assert {shard_of(task_id) for task_id in ids} == {home_of("race", 3)}


def test_a_store_a_fetchq_before_shards_has_used_keeps_its_fleet_in_one(env, store):
    """Its jobs are all in the first shard: more shards would leave them there unseen.
    An empty store takes the count it is given."""
    store.client().set(IDS_KEY, 41)  # tasks were submitted, and no count was kept
    refused = run(env, "server", "--store", store.url, "--shards", "3", "--port", "0")
    assert_clean_error(refused, ExitCode.USAGE, "keeps its fleet in 1 shard (give --shards 1")
    store.client().flushall()
    broker = StoreBroker(store.client(), shards=3)
    assert broker.shards == 3
    broker.close()


def test_a_redis_cluster_database_other_than_0_is_refused_in_one_line(env, cluster):
    url = cluster.nodes[0].url.removesuffix("/0") + "/3"
    refused = run(env, "server", "--store", url, "--port", "0")
    assert_clean_error(refused, ExitCode.USAGE, "a Redis Cluster has database 0 alone: give /0")


@pytest.fixture(scope="module")
def hosts() -> Iterator[list[Target]]:
    with Target("127.0.0.1") as one, Target("127.0.0.2") as two, Target("127.0.0.3") as three:
        yield [one, two, three]


def test_one_rate_holds_across_two_servers(env, servers, target):
    """A paced job, with a worker on each server: one schedule for both, its starts
    reach the target at the rate asked, within 1%."""
    rate, count = 200, 1200
    results, _ = through_both(env, servers, "paced", "--template", f"{target.url}/paced?i={{i}}",
                              "--count", str(count), "--rate", f"{rate}/s",
                              workers=("--concurrency", "8"))  # fmt: skip
    assert len(results) == count and all(result["ok"] for result in results)
    seen = sorted(
        (request for request in target.requests() if "/paced?" in request.path),
        key=lambda request: request.arrived,
    )
    assert len(seen) == count
    assert_none_before_its_slot(results, seen)
    first = min(result["scheduled"] for result in results)
    assert_rate_held(
        [request.arrived for request in seen], [first + k / rate for k in range(count)]
    )


def test_one_per_host_cap_holds_across_two_servers(env, servers, hosts):
    """--per-host 2 over three hosts, with a worker on each server: no host ever has
    more than two requests in flight, and each reaches two."""
    urls = [f"{host.url}/slow?s=0.2&cap={n}" for host in hosts for n in range(12)]
    results, _ = through_both(env, servers, "capped", *urls, "--per-host", "2")
    assert len(results) == len(urls) and all(result["ok"] for result in results)
    for host in hosts:
        in_flight = [r.in_flight for r in host.requests() if "cap=" in r.path]
        assert len(in_flight) == 12
        assert max(in_flight) == 2, (host.host, Counter(in_flight))  # the cap, and reached


def test_first_host_limits_set_through_one_server_hold_on_the_other(env, servers, hosts):
    """A job dispatched without limits, given ``--per-host 2`` through the second
    server, then given more tasks through the first (which learns then that the job
    sorts its tasks by host): no host ever has more than two requests in flight."""
    urls = [f"{host.url}/slow?s=0.2&late={n}" for host in hosts for n in range(12)]
    first, second = on(env, servers[0]), on(env, servers[1])
    assert run(first, "dispatch", *urls[::2], "-j", "late").returncode == 0
    limited = run(second, "job", "set", "late", "--per-host", "2")
    assert limited.returncode == 0, limited.stderr
    assert "at most 2 in flight per host" in limited.stdout
    assert run(first, "dispatch", *urls[1::2], "-j", "late").returncode == 0
    workers = workers_on(env, servers, FEW)
    try:
        output = start_output(second, "-j", "late", "--until-done", "--format", "jsonl")
        out, err = output.communicate(timeout=120)
        assert output.returncode == 0, err
    finally:
        stop_all(workers)
    assert sorted(result["url"] for result in jsonl(out)) == sorted(urls)
    for host in hosts:
        in_flight = [r.in_flight for r in host.requests() if "late=" in r.path]
        assert len(in_flight) == 12
        assert max(in_flight) == 2, (host.host, Counter(in_flight))  # the cap, and reached


def test_a_big_job_is_sorted_by_host_a_page_at_a_time(monkeypatch):
    """A job's first host limits on a store: ``job set`` sorts some of its tasks by
    host, and each round of a server's housekeeping some more, never holding the store
    for long; until then, the rest wait."""
    monkeypatch.setattr(store_broker, "SORT_PAGES", 1)  # a thousand tasks a go
    broker = on_store()
    try:
        broker.submit({"job": "big", "urls": [f"http://h{i % 3}.test/{i}" for i in range(2500)]})
        broker.steer("big", {"action": "set", "per_host": 2500})
        taken = [len(broker.lease("w1", 5000, 0))]
        for _ in range(3):
            broker.expire_leases()
            taken.append(len(broker.lease("w1", 5000, 0)))
    finally:
        broker.close()
    assert taken == [1000, 1000, 500, 0]


def test_a_job_leases_nothing_while_the_hosts_of_its_leases_are_asked():
    """Giving a job its first host limits takes two calls to the store, the hosts of
    its leased tasks found in between: no lease slips in between uncounted."""
    broker = on_store()
    try:
        broker.submit({"job": "j", "urls": [f"http://h.test/{i}" for i in range(3)]})
        (leased,) = broker.lease("w1", 1, 0)
        change = b'{"per_host":1}'
        asked = broker._call("steer", "", "", "j", "set", change, broker.max_results, "-")
        assert asked == [b"by_host", str(leased["id"]).encode(), leased["url"].encode()]
        assert broker.lease("w1", 5, 0) == []
        broker.steer("j", {"action": "set", "per_host": 1})
        assert broker.lease("w1", 5, 0) == []  # h.test has its one in flight
    finally:
        broker.close()


def test_an_aggregate_job_through_two_servers_counts_what_the_target_received(env, servers, target):
    """Spans leased through both servers, aggregates read through one: each request
    counted once, as the target received it, and the job's counts in requests."""
    count, span = 6_000, 500
    template = f"{target.url}/agg2?i={{i}}"
    records, said = through_both(env, servers, "agg2", "--template", template, "--count",
                                 str(count), "--aggregate", "--span", str(span))  # fmt: skip
    listed = run(on(env, servers[1]), "job", "list", "--json")
    assert sorted(record["first"] for record in records) == list(range(0, count, span))
    hits = {path: n for path, n in target.hits().items() if path.startswith("/agg2?")}
    assert len(hits) == count and set(hits.values()) == {1}
    assert f"Requests:     {count}" in said
    job = json.loads(listed.stdout)["agg2"]
    assert (job["submitted"], job["succeeded"], job["failed"], job["state"]) == (
        count, count, 0, "done",
    )  # fmt: skip


def test_a_store_password_is_asked_for_and_never_shown(env, tmp_path):
    """A store that wants a password: without it, one line and exit code 5 before
    anything listens; with it from FETCHQ_STORE_PASSWORD, the server serves, and says
    nothing of it."""
    secret = "s3cret-store-pass"
    store = StoreProcess(tmp_path / "locked", port=0, password=secret).start()
    try:
        refused = run(env, "server", "--store", store.url, "--port", "0", timeout=30)
        assert_clean_error(
            refused, ExitCode.AUTH_FAILED, f"the store at {store.url} refused us",
            "FETCHQ_STORE_PASSWORD",
        )  # fmt: skip
        assert "listening" not in refused.stderr
        server = ServerProcess({**env, "FETCHQ_STORE_PASSWORD": secret}, "--store", store.url)
        try:
            client = connect_broker(server.address, env["FETCHQ_AUTHKEY"])
            client.call("submit", {"job": "locked", "urls": ["http://127.0.0.1:9/"]})
            client.close()
        finally:
            server.stop()
        assert secret not in "\n".join(server.log.lines)
    finally:
        store.stop()


def test_a_store_over_tls_is_served_and_a_wrong_ca_refused_in_one_line(env, target, tmp_path):
    """``rediss://``: the store's certificate checked against the CA given in the URL
    (``?ssl_ca_certs=``); a job runs through it; a CA that did not sign the store's
    certificate is one line and exit code 4, before anything listens."""
    ca, other = trustme.CA(), trustme.CA()
    files = {name: tmp_path / f"{name}.pem" for name in ("cert", "key", "ca", "other")}
    leaf = ca.issue_cert("127.0.0.1")
    leaf.cert_chain_pems[0].write_to_path(files["cert"])
    leaf.private_key_pem.write_to_path(files["key"])
    ca.cert_pem.write_to_path(files["ca"])
    other.cert_pem.write_to_path(files["other"])
    tls = (files["cert"], files["key"], files["ca"])
    store = StoreProcess(tmp_path / "tls", port=0, tls=tls).start()
    try:
        wrong = run(env, "server", "--store", f"{store.url}?ssl_ca_certs={files['other']}")
        assert_clean_error(
            wrong, ExitCode.UNREACHABLE, "cannot reach the store at rediss://",
            "certificate verify failed", "does ?ssl_ca_certs= in the URL name",
        )  # fmt: skip
        server = ServerProcess(env, "--store", f"{store.url}?ssl_ca_certs={files['ca']}")
        try:
            results, _ = through_both(env, [server, server], "tls", "--template",
                                      f"{target.url}/tls?i={{i}}", "--count", "200",
                                      both=False)  # fmt: skip
        finally:
            server.stop()
    finally:
        store.stop()
    assert sorted(result["url"] for result in results) == sorted(
        f"{target.url}/tls?i={i}" for i in range(200)
    )


def test_robots_txt_through_two_servers_is_fetched_once_and_obeyed(env, servers, hosts):
    """A job that obeys robots.txt, with a worker on each server: the host's robots.txt
    is fetched once, what it forbids is never requested, and its Crawl-delay spaces
    the rest, from the fetch on."""
    site = hosts[1]
    site.robots = "User-agent: *\nDisallow: /private\nCrawl-delay: 0.3\n"
    allowed = [f"{site.url}/public/{n}?polite2" for n in range(4)]
    forbidden = [f"{site.url}/private/{n}?polite2" for n in range(2)]
    try:
        records, _ = through_both(env, servers, "polite2", *allowed, *forbidden, "--obey-robots",
                                  both=False)  # fmt: skip
    finally:
        site.robots = None
    results = {result["url"]: result for result in records}
    fetches = site.requests("/robots.txt")
    assert len(fetches) == 1
    assert all(results[url]["ok"] for url in allowed)
    assert {results[url]["error"]["type"] for url in forbidden} == {ROBOTS_REFUSED}
    assert not any("/private/" in seen.path for seen in site.requests())
    fetched = [results[url] for url in allowed]  # on the clocks of workers on two servers
    assert min(r["scheduled"] for r in fetched) >= fetches[0].arrived + 0.3 - CLOCK_SLACK
    assert_slots_apart(fetched, 0.3)  # Crawl-delay between the pages


def test_a_paced_aggregate_job_through_two_servers_holds_its_rate(env, servers, target):
    """200/s for 6 s in spans of 100, a worker on each server: spans side by side, one
    schedule, none early, the rate within 1% at the target."""
    rate, seconds, path = 200, 6, "/paced-agg2?i="
    records, _ = through_both(env, servers, "pagg", "--template", f"{target.url}{path}{{i}}",
                              "--rate", f"{rate}/s", "--duration", f"{seconds}s", "--aggregate",
                              "--span", "100",
                              workers=("--concurrency", "8", "--prefetch", "1"))  # fmt: skip
    assert_paced_spans(records, target, path, rate, rate * seconds)


@pytest.mark.parametrize("store_of", [on_store, on_cluster], ids=["store", "cluster"])
def test_a_store_that_evicts_keys_is_warned_of(store_of, capsys):
    """A store that drops keys when full would drop tasks and results: said at start."""
    broker = store_of()
    if isinstance(broker._store, redis.RedisCluster):
        client = broker._store.get_node_from_key(TAG).redis_connection
    else:
        client = broker._store
    broker.close()
    client.config_set("maxmemory-policy", "allkeys-lru")
    try:
        store_of().close()
    finally:
        client.config_set("maxmemory-policy", "noeviction")
    said = capsys.readouterr().err
    assert "has maxmemory-policy allkeys-lru: when full, it drops keys" in said, said
    store_of().close()
    assert "maxmemory-policy" not in capsys.readouterr().err


def test_a_replica_given_as_the_store_is_refused_in_one_line(env, store, tmp_path):
    """A store that takes no writes (a replica: after a failover, or the wrong address)
    is said as such, exit code 4, before anything listens."""
    replica = StoreProcess(tmp_path / "replica", port=0).start()
    try:
        replica.client().replicaof("127.0.0.1", store.port)
        refused = run(env, "server", "--store", replica.url, "--port", "0")
    finally:
        replica.stop()
    assert_clean_error(refused, ExitCode.UNREACHABLE, "takes no writes: it is a replica")


def test_a_store_busy_with_a_long_script_is_waited_for(capsys):
    """Another program's script that runs long makes the store answer BUSY: calls wait
    (said once), and go on when it ends."""
    broker = on_store()
    client = storekit.shared_store().client()
    client.config_set("busy-reply-threshold", 50)  # ms before others are told BUSY

    def loop() -> None:
        with contextlib.suppress(redis.ResponseError):  # (ended by SCRIPT KILL)
            client.eval("while true do end", 0)

    looping = threading.Thread(target=loop, daemon=True)
    try:
        looping.start()
        poll_until(lambda: _busy(broker), 10, "the store to answer BUSY")
        storekit.shared_store().client().script_kill()
        looping.join(10)
        assert broker.queued() == 0
    finally:
        storekit.shared_store().client().config_set("busy-reply-threshold", 5000)
        broker.close()
    said = capsys.readouterr().err
    assert (said.count("is busy running a script"), said.count("answers again")) == (1, 1)


def _busy(broker: StoreBroker) -> bool:
    try:
        broker.queued()
    except StoreUnavailable as exc:
        assert "the server's store is busy running a script" in str(exc)
        return True
    return False


def test_an_outage_is_said_once_though_calls_run_side_by_side(capsys):
    """A call begun before the store went away, which still got its answer, does not
    end the outage; a call begun after it was said does."""
    broker = on_store()
    began, answer = threading.Event(), threading.Event()

    def slow() -> str:
        began.set()
        answer.wait(10)
        return "ok"

    def gone() -> None:
        raise redis.ConnectionError("Connection refused")

    early = threading.Thread(target=broker._guarded, args=(slow,))
    early.start()
    assert began.wait(10)
    with pytest.raises(StoreUnavailable):
        broker._guarded(gone)  # said
    answer.set()
    early.join(10)  # its answer came, but it began before the outage was said
    with pytest.raises(StoreUnavailable):
        broker._guarded(gone)  # the same outage: not said again
    assert broker._guarded(lambda: "ok") == "ok"  # the store answers again
    said = capsys.readouterr().err
    assert (said.count("does not answer"), said.count("answers again")) == (1, 1), said
    broker.close()
