"""End to end: a real server, real worker processes, dispatch and output as a user runs them."""

from __future__ import annotations

import csv
import io
import os
import resource
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from fetchq_procs import (
    ServerProcess,
    connect_broker,
    fetchq_command,
    jsonl,
    poll_until,
    run,
    start_output,
    start_worker,
    stop_all,
)
from worker_scenarios import (
    a_burst_waits_for_the_retry_its_report_queues,
    closed_port,
    every_kind_of_failure,
    hands_back_through_a_blip,
    release_port,
    sigterm_drains,
)

from fetchq.errors import ExitCode, NoSuchJob
from fetchq.wire.client import BrokerClient
from fetchq.wire.records import RESULT_FIELDS


def broker(env: dict[str, str]) -> BrokerClient:
    return connect_broker(env["FETCHQ_SERVER"], env["FETCHQ_AUTHKEY"])


def test_ten_thousand_tasks_give_exactly_one_result_each(server, env, target):
    workers = [start_worker(env, "--concurrency", "8") for _ in range(2)]
    output = start_output(env, "--job", "big", "--until-done", "--format", "jsonl")
    try:
        dispatched = run(
            env, "dispatch", "--template", f"{target.url}/?q={{i}}", "--count", "10000", "-j", "big"
        )
        assert dispatched.returncode == 0, dispatched.stderr
        assert dispatched.stdout == "big\n"
        assert "dispatched 10000 tasks" in dispatched.stderr
        stdout, stderr = output.communicate(timeout=120)
        assert output.returncode == 0, stderr
    finally:
        stop_all([output])
        for process, _ in workers:
            process.terminate()
        codes = [process.wait(30) for process, _ in workers]
    results = jsonl(stdout)
    assert len(results) == 10_000
    assert len({r["id"] for r in results}) == 10_000
    assert {r["url"] for r in results} == {f"{target.url}/?q={i}" for i in range(10_000)}
    assert all(r["ok"] and r["status"] == 200 and r["error"] is None for r in results)
    assert all(set(RESULT_FIELDS) <= set(r) for r in results)
    assert len({r["worker"] for r in results}) == 2, "both workers should have taken tasks"
    assert codes == [0, 0], "workers drain and exit 0 on SIGTERM"


def test_worker_killed_mid_job_loses_nothing(server, env, target):
    """SIGKILL one worker while it holds leases: they expire and run elsewhere."""
    count = 3000
    victim, _ = start_worker(env, "--concurrency", "4")
    survivor, _ = start_worker(env, "--concurrency", "4")
    output = start_output(env, "--job", "kill", "--until-done", "--format", "jsonl")
    try:
        dispatched = run(
            env,
            "dispatch",
            "--template",
            f"{target.url}/slow?s=0.004&i={{i}}",
            "--count",
            str(count),
            "-j",
            "kill",
        )
        assert dispatched.returncode == 0, dispatched.stderr
        client = broker(env)
        victim_name = f"{socket.gethostname()}:{victim.pid}"

        def victim_busy() -> bool:
            workers = {w["worker"]: w for w in client.call("status")["workers"]}
            seen = workers.get(victim_name)
            return bool(seen and seen["reported"] >= 100 and seen["leased"] > 0)

        poll_until(victim_busy, 60, "the victim worker to hold leases mid-job")
        os.kill(victim.pid, signal.SIGKILL)
        stdout, stderr = output.communicate(timeout=120)
        assert output.returncode == 0, stderr
    finally:
        stop_all([output, victim, survivor])
    results = jsonl(stdout)
    ids = [r["id"] for r in results]
    assert len(ids) == count and len(set(ids)) == count
    assert all(r["ok"] for r in results)
    assert any(r["attempt"] >= 2 for r in results), "the victim's leased tasks ran again"


def test_every_kind_of_failure_becomes_a_result(server, env, target):
    every_kind_of_failure(env, target, lambda: run(env, "worker", "--burst", "--concurrency", "4"))


def test_a_burst_worker_waits_for_the_retry_its_last_report_queues(env):
    a_burst_waits_for_the_retry_its_report_queues(
        env, lambda env: run(env, "worker", "--burst", "--concurrency", "4")
    )


def test_a_stopping_worker_hands_back_through_a_broken_connection(env, target):
    hands_back_through_a_blip(
        env, target, lambda env: start_worker(env, "--concurrency", "1", "--prefetch", "10")
    )


def test_sigterm_drains_a_worker_and_hands_back_unstarted_tasks(server, env, target):
    """Running requests finish and report; prefetched ones go back without using an attempt."""
    sigterm_drains(env, target, lambda: start_worker(env, "--concurrency", "2", "--prefetch", "20"))


def test_a_worker_that_prefetches_one_task_does_the_job(server, env, target):
    """``--prefetch 1``: one task waits ahead of the fetch thread, never zero asked for."""
    urls = [f"{target.url}/?prefetch={n}" for n in range(5)]
    assert run(env, "dispatch", *urls, "-j", "prefetch").returncode == 0
    worker = run(env, "worker", "--burst", "--concurrency", "1", "--prefetch", "1")
    assert worker.returncode == 0, worker.stderr
    assert "stopped after 5 requests" in worker.stderr, worker.stderr


def test_output_formats_summary_and_status(server, env, target):
    urls = [f"{target.url}/?n={i}" for i in range(50)] + [f"{target.url}/status/404"] * 5
    dispatched = run(env, "dispatch", *urls, "-j", "report")
    assert dispatched.returncode == 0, dispatched.stderr
    assert run(env, "worker", "--burst").returncode == 0
    status = run(env, "status")
    assert status.returncode == 0, status.stderr
    assert "report" in status.stdout and "complete" not in status.stdout
    output = run(env, "output", "-j", "report", "--until-done", "--format", "csv", "--summary")
    assert output.returncode == 0, output.stderr
    rows = output.stdout.splitlines()
    assert rows[0].startswith("id,job,url,ok,status")
    assert len(rows) == 56
    assert "Requests:     55" in output.stderr
    assert "[404]  5" in output.stderr
    status = run(env, "status", "--json")
    job = __import__("json").loads(status.stdout)["jobs"]["report"]
    assert job["submitted"] == job["confirmed"] == 55 and job["done"]


def test_worker_started_before_its_server_waits_for_it(env, target, tmp_path):

    port = closed_port()
    env["FETCHQ_SERVER"] = f"127.0.0.1:{port}"
    worker, log = start_worker(env, "--concurrency", "2")
    try:
        log.wait_for(rf"waiting for server at 127\.0\.0\.1:{port} \(attempt 1\)")
        release_port(port)
        server = ServerProcess(env, "--port", str(port))
        try:
            dispatched = run(env, "dispatch", f"{target.url}/late", "-j", "late")
            assert dispatched.returncode == 0, dispatched.stderr
            output = run(env, "output", "-j", "late", "--until-done", "--format", "jsonl")
            assert [r["url"] for r in jsonl(output.stdout)] == [f"{target.url}/late"]
            worker.terminate()
            assert worker.wait(30) == 0
        finally:
            server.stop()
    finally:
        stop_all([worker])


CLASSIC_CONNECT = """
import sys
from multiprocessing.managers import BaseManager

sys.modules["fetchq"] = None  # a tutorial client runs where fetchq is not installed

class QueueManager(BaseManager):
    pass

QueueManager.register("get_task_queue")
QueueManager.register("get_result_queue")
host, port, key, base = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode(), sys.argv[4]
manager = QueueManager(address=(host, port), authkey=key)
manager.connect()
task, result = manager.get_task_queue(), manager.get_result_queue()
"""
"""The classic tutorial's client: connect, then use ``task`` and ``result`` (URLs from ``base``)."""

CLASSIC_CLIENT = (
    CLASSIC_CONNECT
    + """
for n in range(20):
    task.put(f"{base}/classic?n={n}")
for _ in range(20):
    r = result.get(timeout=30)
    print(r["url"], r["status"])
"""
)


CLASSIC_PUTS = (
    CLASSIC_CONNECT
    + """
print("connected", flush=True)
for n in range(5):
    task.put(f"{base}/classic?put={n}")
print("queued", flush=True)
"""
)
"""The classic client's first half: it queues five URLs and leaves."""


def run_classic_client(
    server: ServerProcess, env: dict[str, str], base: str, tmp_path, source: str = CLASSIC_CLIENT
):
    script = tmp_path / "classic_client.py"
    script.write_text(source)
    host, port = server.address.split(":")
    return subprocess.run(
        [sys.executable, str(script), host, port, env["FETCHQ_AUTHKEY"], base],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_classic_tutorial_client_works_against_allow_pickle(env, target, tmp_path):
    """put() URL strings on get_task_queue(), get() results from get_result_queue(),
    against ``fetchq server --allow-pickle``, which warns about it at start."""
    server = ServerProcess(env, "--allow-pickle")
    env["FETCHQ_SERVER"] = server.address
    worker, _ = start_worker(env, "--concurrency", "4")
    try:
        assert "--allow-pickle" in server.log.text and "run code" in server.log.text
        client = run_classic_client(server, env, target.url, tmp_path)
        assert client.returncode == 0, client.stderr
        lines = sorted(client.stdout.split("\n")[:-1])
        assert lines == sorted(f"{target.url}/classic?n={n} 200" for n in range(20))
    finally:
        stop_all([worker])
        server.stop()


def test_without_allow_pickle_a_classic_client_is_refused_and_the_server_says_so(
    server, env, target, tmp_path
):
    """Refused at its first frame, before any call ran: the client dies in ``connect()``,
    the server says why, and no job exists.  The control: the same client against
    ``--allow-pickle`` gets past ``connect()`` and queues its URLs."""
    client = run_classic_client(server, env, target.url, tmp_path, CLASSIC_PUTS)
    # No pickle crosses the wire by default, not even a refusal: the client cannot read
    # the JSON one (its error is an UnpicklingError), and the server's log says why.
    assert client.returncode == 1 and "UnpicklingError" in client.stderr, client.stderr[-600:]
    assert "manager.connect()" in client.stderr and client.stdout == "", client.stderr[-600:]
    server.log.wait_for(r"refused a pickle from 127\.0\.0\.1:\d+: .*--allow-pickle")
    assert "allow-pickle" not in server.log.lines[0], "no warning without the flag"
    with pytest.raises(NoSuchJob):
        broker(env).call("job", "classic")

    allowing = ServerProcess(env, "--allow-pickle")
    try:
        control = run_classic_client(allowing, env, target.url, tmp_path, CLASSIC_PUTS)
        assert control.returncode == 0, control.stderr[-600:]
        assert control.stdout == "connected\nqueued\n"
        watcher = connect_broker(allowing.address, env["FETCHQ_AUTHKEY"])
        assert watcher.call("job", "classic")["submitted"] == 5
        watcher.close()
    finally:
        allowing.stop()


def file_size_limit(limit: int) -> Callable[[], None]:
    """For ``preexec_fn``: the child may write no file past ``limit`` bytes, as on a
    full disk.  Python ignores SIGXFSZ, so the write that crosses it fails with
    EFBIG after the kernel has written up to the limit: a torn last line."""

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def complete_lines(path: Path) -> list[str]:
    data = path.read_text()
    return data.splitlines()[: data.count("\n")]


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_output_append_skips_results_the_file_already_holds(server, env, target, tmp_path, fmt):
    """An output that fails mid-batch (the disk is full) never confirmed that batch,
    so the server hands all of it out again; the resumed output meets the results
    the file already holds, cuts the torn line, and writes each of the rest once."""
    count, job = 30, f"resume-{fmt}"
    out = tmp_path / f"results.{fmt}"
    urls = [f"{target.url}/resume?f={fmt}&n={n}" for n in range(count)]
    assert run(env, "dispatch", *urls, "-j", job).returncode == 0
    assert run(env, "worker", "--burst").returncode == 0
    args = ["output", "-j", job, "--until-done", "--format", fmt, "--out", str(out)]
    first = subprocess.run(
        fetchq_command(*args),
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=file_size_limit(2000),
    )
    assert first.returncode == ExitCode.FAILURE, first.stderr
    assert f"cannot write {out}: File too large" in first.stderr, first.stderr
    assert "Traceback" not in first.stderr, first.stderr
    assert out.stat().st_size == 2000, "the first output should have been cut off mid-line"
    kept = complete_lines(out)
    header = 1 if fmt == "csv" else 0
    assert 0 < len(kept) - header < count, kept
    counts = broker(env).call("job", job)
    assert counts["confirmed"] == 0, f"the cut-off batch must not have been confirmed: {counts}"

    second = run(env, *args, "--append")
    assert second.returncode == 0, second.stderr
    already = len(kept) - header
    assert f"skipped {already} results handed out again" in second.stderr, second.stderr
    lines = complete_lines(out)
    assert lines[: len(kept)] == kept, "the resumed output rewrote what was there"
    if fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(out.read_text())))
        assert lines[0].startswith("id,job,url,")
        ids, got = [int(row["id"]) for row in rows], [row["url"] for row in rows]
    else:
        records = jsonl(out.read_text())
        ids, got = [r["id"] for r in records], [r["url"] for r in records]
    assert len(ids) == count and len(set(ids)) == count, "a result was written twice"
    assert sorted(got) == sorted(urls)
    assert broker(env).call("job", job)["done"]


def test_follow_redirects_from_the_command_line(server, env, target):
    """A 302 is the answer by default; with --follow-redirects it is followed."""
    redirect = f"{target.url}/status/302"
    results = {}
    for job, flags in (("plain", []), ("follow", ["--follow-redirects"])):
        assert run(env, "dispatch", redirect, "-j", job).returncode == 0
        assert run(env, "worker", "--burst", *flags).returncode == 0
        output = run(env, "output", "-j", job, "--until-done", "--format", "jsonl")
        [results[job]] = jsonl(output.stdout)
    assert (results["plain"]["status"], results["plain"]["ok"]) == (302, True)
    assert (results["follow"]["status"], results["follow"]["ok"]) == (200, True)
    assert results["follow"]["url"] == redirect, "the result names the URL asked for"


CLASSIC_LIMITS_CLIENT = (
    CLASSIC_CONNECT
    + """
import queue

print("tasks", task.qsize(), task.empty(), task.full())
for n in range(5):
    task.put(f"{base}/limits?n={n}")
print("tasks", task.qsize(), task.empty(), task.full())
for attempt in (lambda: task.put_nowait(f"{base}/limits?n=5"),
                lambda: task.put(f"{base}/limits?n=5", timeout=0.2)):
    try:
        attempt()
        print("put past the limit")
    except queue.Full:
        print("full")
for attempt in (result.get_nowait, lambda: result.get(timeout=0.2)):
    try:
        attempt()
        print("got a result from nowhere")
    except queue.Empty:
        print("empty")
print("results", result.qsize(), result.empty())
try:
    task._callmethod("shutdown")
except ValueError as exc:
    print("refused", exc)
sys.stdout.flush()
sys.stdin.readline()  # the test runs a worker here
print("results", result.qsize(), result.empty())
print("tasks", task.qsize(), task.empty(), task.full())
print(sorted(result.get(timeout=10)["url"] for _ in range(5)))
try:
    result.get(timeout=0.2)
except queue.Empty:
    print("empty")
"""
)


def test_classic_queues_full_empty_and_qsize(env, target, tmp_path):
    """A tutorial-style client sees a Queue: qsize and empty; full() true, and Full
    raised, when the server's --max-pending is reached, and full() false again once
    workers took the tasks; Empty when no result comes in time; and a refused call
    as a ValueError it can unpickle without fetchq installed."""
    from fetchq_procs import ServerProcess

    limited = ServerProcess(env, "--max-pending", "5", "--allow-pickle")
    env["FETCHQ_SERVER"] = limited.address
    script = tmp_path / "classic_limits.py"
    script.write_text(CLASSIC_LIMITS_CLIENT)
    host, port = limited.address.split(":")
    client = subprocess.Popen(
        [sys.executable, str(script), host, port, env["FETCHQ_AUTHKEY"], target.url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert client.stdout is not None and client.stdin is not None
        before = [client.stdout.readline().strip() for _ in range(8)]
        assert before == [
            "tasks 0 True False",
            "tasks 5 False True",
            "full",
            "full",
            "empty",
            "empty",
            "results 0 True",
            "refused BadRequest: 'shutdown' is not a method of this object",
        ], before
        assert run(env, "worker", "--burst").returncode == 0
        stdout, stderr = client.communicate("go\n", timeout=60)
        assert client.returncode == 0, stderr
    finally:
        stop_all([client])
        limited.stop()
    urls = sorted(f"{target.url}/limits?n={n}" for n in range(5))
    assert stdout.splitlines() == [
        "results 5 False",
        "tasks 0 True False",
        repr(urls),
        "empty",
    ]
