"""The Node.js worker in clients/node/, written from docs/PROTOCOL.md, against the real server.

CI installs Debian's ``nodejs`` when it is missing (``.ci/run``), so these run
everywhere the suite runs.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import time

import pytest
from faults.checker import assert_exactly_once, check_file
from fetchq_procs import (
    REPO,
    ServerProcess,
    StderrLog,
    connect_broker,
    jsonl,
    run,
    start_output,
    start_program,
    start_worker,
    stop_all,
    wait_until_leasing,
    worker_name,
)
from worker_scenarios import (
    a_burst_waits_for_the_retry_its_report_queues,
    a_followed_303_turns_a_post_into_a_get,
    assert_none_before_its_slot,
    assert_slots_apart,
    every_kind_of_failure,
    hands_back_through_a_blip,
    sends_what_was_asked,
    sigterm_drains,
)

from fetchq import __version__
from fetchq.errors import ExitCode
from fetchq.testing.target import Target
from fetchq.wire.records import RESULT_FIELDS

NODE_DIR = REPO / "clients" / "node"
NODE = shutil.which("node") or "node"


def start_node_worker(env: dict[str, str], *args: str) -> tuple[subprocess.Popen[str], StderrLog]:
    return start_program([NODE, str(NODE_DIR / "fetchq-worker.js"), *args], env)


def run_node_worker(
    env: dict[str, str], *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [NODE, str(NODE_DIR / "fetchq-worker.js"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def lines_of(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_node_is_18_or_newer_and_its_unit_tests_pass():
    assert shutil.which("node"), "Node.js is missing: .ci/run installs Debian's nodejs"
    version = subprocess.run([NODE, "--version"], capture_output=True, text=True, timeout=30)
    assert int(version.stdout.strip().lstrip("v").split(".")[0]) >= 18, version.stdout
    unit = subprocess.run(
        [NODE, "--test", "test/"], cwd=NODE_DIR, capture_output=True, text=True, timeout=120
    )
    assert unit.returncode == 0, unit.stdout[-3000:] + unit.stderr[-2000:]
    written = sum(
        len(re.findall(r"^test(?:\.\w+)?\(", path.read_text(), re.M))
        for path in (NODE_DIR / "test").glob("*.js")
    )
    passed = re.search(r"^# pass (\d+)$", unit.stdout, re.M)
    assert written > 0 and passed and int(passed.group(1)) == written, unit.stdout[-1000:]
    assert "# fail 0" in unit.stdout


def test_the_node_worker_speaks_the_same_version():
    """The package says so; the User-Agent a target sees says it on the wire (below)."""
    package = json.loads((NODE_DIR / "package.json").read_text())
    assert package["version"] == __version__


def test_a_mixed_fleet_runs_one_job_exactly_once(server, env, target, tmp_path):
    """One Python worker and one Node worker share a job: every task has exactly one
    result, and both workers did part of it, in the same record format."""
    python, python_log = start_worker(env, "--concurrency", "4")
    node, node_log = start_node_worker(env, "--concurrency", "4")
    out = tmp_path / "mixed.jsonl"
    client = connect_broker(server.address, env["FETCHQ_AUTHKEY"])
    names = {worker_name(python.pid), worker_name(node.pid)}
    try:
        wait_until_leasing(client, names)
        output = start_output(
            env, "--job", "mixed", "--until-done", "--format", "jsonl", "--out", str(out)
        )
        template = f"{target.url}/slow?s=0.003&t=mixed&i={{i}}"
        dispatched = run(env, "dispatch", "--template", template, "--count", "2000", "-j", "mixed")
        assert dispatched.returncode == 0, dispatched.stderr
        assert output.wait(120) == 0, output.stderr.read() if output.stderr else ""
        for process in (python, node):
            process.send_signal(signal.SIGTERM)
        assert python.wait(30) == 0, python_log.text
        assert node.wait(30) == 0, node_log.text
    finally:
        stop_all([python, node])
    report = check_file([template.format(i=i) for i in range(2000)], out)
    assert_exactly_once(report)
    by_worker: dict[str, int] = {}
    for result in report.all_results:
        by_worker[result["worker"]] = by_worker.get(result["worker"], 0) + 1
    assert set(by_worker) == names, by_worker
    assert min(by_worker.values()) >= 100, f"each worker should have done a share: {by_worker}"
    node_results = [r for r in report.all_results if r["worker"] == worker_name(node.pid)]
    assert all(set(RESULT_FIELDS) <= set(r) for r in node_results)
    assert all(r["ok"] and r["status"] == 200 and r["bytes"] == 3 for r in node_results)
    assert "stopped on SIGTERM" in node_log.text


def node_burst(env: dict[str, str]):
    def run_worker(*args: str) -> subprocess.CompletedProcess[str]:
        return run_node_worker(env, "--burst", "--concurrency", "4", *args)

    return run_worker


def test_the_node_worker_sends_what_each_task_asks(server, env, target, tmp_path):
    sends_what_was_asked(env, target, tmp_path, "node", node_burst(env))


def test_the_node_worker_turns_a_post_into_a_get_after_a_303(server, env, target):
    a_followed_303_turns_a_post_into_a_get(env, target, "node", node_burst(env))


def test_every_kind_of_failure_becomes_a_node_result(server, env, target):
    """The same table as the Python worker's, where undici tells the cases apart."""
    every_kind_of_failure(
        env, target, lambda: run_node_worker(env, "--burst", "--concurrency", "4")
    )
    agents = {seen.user_agent for seen in target.requests("/fine")}
    assert agents == {f"fetchq/{__version__}"}


def test_a_burst_node_worker_waits_for_the_retry_its_last_report_queues(env):
    a_burst_waits_for_the_retry_its_report_queues(
        env, lambda env: run_node_worker(env, "--burst", "--concurrency", "4")
    )


def test_a_node_worker_renews_a_lease_it_holds_longer_than_the_lease(env, target):
    """A URL that takes over two lease timeouts: the worker's reports renew the lease
    (every third of it), so the task is not handed out again.  The lease is long
    enough that a pause of a second on a loaded box cannot lapse it."""
    server = ServerProcess(env, "--lease-timeout", "3")
    env["FETCHQ_SERVER"] = server.address
    try:
        url = f"{target.url}/slow?s=7&t=renew"
        assert run(env, "dispatch", url, "-j", "renew", "--timeout", "15").returncode == 0
        worker = run_node_worker(env, "--burst")
        assert worker.returncode == 0, worker.stderr
        output = run(env, "output", "-j", "renew", "--until-done", "--format", "jsonl")
        [result] = jsonl(output.stdout)
        assert (result["ok"], result["attempt"]) == (True, 1), result
        assert len(target.requests("/slow?s=7&t=renew")) == 1
        counts = connect_broker(server.address, env["FETCHQ_AUTHKEY"]).call("job", "renew")
        assert counts["expired"] == 0, counts
    finally:
        server.stop()


def test_a_node_worker_keeps_the_pace_and_obeys_robots_txt(env, tmp_path):
    """A job with a rate gives each task a scheduled start: the Node worker never starts
    one early (on its own clock, via the hello offset) and reports when it was due.
    With --obey-robots it fetches robots.txt first, as a task of kind robots."""
    with Target() as site:
        site.robots = "User-agent: *\nDisallow: /private\n"
        server = ServerProcess(env)
        env["FETCHQ_SERVER"] = server.address
        node, node_log = start_node_worker(env, "--concurrency", "4")
        try:
            urls = [f"{site.url}/page?n={n}" for n in range(30)]
            urls += [f"{site.url}/private?n={n}" for n in range(5)]
            dispatched = run(
                env, "dispatch", "-", "-j", "polite", "--rate", "20", "--obey-robots",
                stdin="\n".join(urls) + "\n",
            )  # fmt: skip
            assert dispatched.returncode == 0, dispatched.stderr
            output = run(env, "output", "-j", "polite", "--until-done", "--format", "jsonl")
            assert output.returncode == 0, output.stderr
            node.send_signal(signal.SIGTERM)
            assert node.wait(30) == 0, node_log.text
        finally:
            stop_all([node])
            server.stop()
        robots_fetches = site.requests("/robots.txt")
        pages = site.requests("/page")
    results = {r["url"]: r for r in jsonl(output.stdout)}
    assert len(results) == 35
    fetched = [results[url] for url in urls[:30]]
    assert all(r["ok"] for r in fetched)
    assert_slots_apart(fetched, 1 / 20)
    assert_none_before_its_slot(fetched, pages)
    forbidden = [results[url] for url in urls[30:]]
    assert all((r["error"] or {}).get("type") == "robots" for r in forbidden), forbidden
    assert not site.requests("/private"), "a disallowed URL was requested"
    assert len(robots_fetches) == 1
    assert robots_fetches[0].user_agent == f"fetchq/{__version__}"


def test_a_stopping_node_worker_hands_back_through_a_broken_connection(env, target):
    hands_back_through_a_blip(
        env, target, lambda env: start_node_worker(env, "--concurrency", "1", "--prefetch", "10")
    )


def test_sigterm_drains_a_node_worker_and_hands_back_unstarted_tasks(server, env, target):
    sigterm_drains(
        env, target, lambda: start_node_worker(env, "--concurrency", "2", "--prefetch", "20")
    )


def test_a_node_worker_over_mutual_tls_and_each_mistake_in_one_line(env, target, tmp_path):
    folder = tmp_path / "tls"
    assert run(env, "tls", "init", str(folder), "--host", "127.0.0.1").returncode == 0
    files = {name: str(folder / name) for name in ("ca.pem", "client.pem", "client.key")}
    server = ServerProcess(
        env,
        *("--tls-cert", str(folder / "server.pem"), "--tls-key", str(folder / "server.key")),
        *("--tls-ca", files["ca.pem"]),
    )
    env["FETCHQ_SERVER"] = server.address
    try:
        mistakes = {
            "plaintext": ([], "uses TLS: give --tls-ca"),
            "no certificate": (["--tls-ca", files["ca.pem"]], "requires a client certificate"),
        }
        for what, (args, phrase) in mistakes.items():
            started = time.monotonic()
            result = run_node_worker(env, "--burst", *args, timeout=60)
            assert result.returncode == ExitCode.TLS_FAILED, (what, result.stderr)
            last = lines_of(result.stderr)[-1]
            assert last.startswith("fetchq: error: ") and phrase in last, (what, last)
            assert time.monotonic() - started < 15, what
        tls_env = dict(
            env,
            FETCHQ_TLS_CA=files["ca.pem"],
            FETCHQ_TLS_CERT=files["client.pem"],
            FETCHQ_TLS_KEY=files["client.key"],
        )
        template = f"{target.url}/?t=nodetls&i={{i}}"
        dispatched = run(tls_env, "dispatch", "--template", template, "--count", "50", "-j", "nt")
        assert dispatched.returncode == 0, dispatched.stderr
        worker = run_node_worker(tls_env, "--burst")
        assert worker.returncode == 0, worker.stderr
        assert "over TLS" in worker.stderr
        output = run(tls_env, "output", "-j", "nt", "--until-done", "--format", "jsonl")
        assert len(jsonl(output.stdout)) == 50
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("setting", "code", "phrase"),
    [
        ({"FETCHQ_AUTHKEY": "not-the-key"}, ExitCode.AUTH_FAILED, "rejected the authkey"),
        ({"FETCHQ_AUTHKEY": ""}, ExitCode.NO_AUTHKEY, "no authkey given"),
    ],
)
def test_a_node_worker_says_a_wrong_or_missing_key_in_one_line(server, env, setting, code, phrase):
    env.update(setting)
    if not env["FETCHQ_AUTHKEY"]:
        del env["FETCHQ_AUTHKEY"]
    result = run_node_worker(env, "--burst", timeout=60)
    assert result.returncode == code, result.stderr
    assert phrase in lines_of(result.stderr)[-1]
    assert "not-the-key" not in result.stderr
