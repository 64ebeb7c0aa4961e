"""``worker --processes N`` and stopping: the supervisor, its children and Ctrl-C, for real.

Every process here is a real ``fetchq worker`` (or one of its children)
against a real server; signals are real signals.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections import Counter
from pathlib import Path

from fetchq_procs import (
    PYTHON,
    REPO,
    connect_broker,
    jsonl,
    poll_until,
    run,
    start_worker,
    stop_all,
    wait_until_leasing,
)

from fetchq.errors import ExitCode


def worker_pids(client) -> set[int]:
    """Pids of the worker processes the server has seen (``host:pid`` names)."""
    return {int(seen["worker"].rsplit(":", 1)[1]) for seen in client.call("status")["workers"]}


def worker_names(client, pids: set[int] | None = None) -> set[str]:
    """The ``host:pid`` names of these worker processes (of all it has seen: None)."""
    seen = {row["worker"] for row in client.call("status")["workers"]}
    return {name for name in seen if pids is None or int(name.rsplit(":", 1)[1]) in pids}


def gone(pid: int) -> bool:
    """Exited: no such process, or a zombie nobody has reaped yet."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def catches(pid: int, signum: int) -> bool:
    """Whether ``pid`` has a handler installed for ``signum`` (/proc's SigCgt mask)."""
    status = Path(f"/proc/{pid}/status").read_text()
    mask = int(re.search(r"^SigCgt:\s*([0-9a-f]+)$", status, re.M).group(1), 16)
    return bool(mask & (1 << (signum - 1)))


def first_signal_taken(pid: int) -> None:
    """Send SIGINT once the stop handlers are in, and wait until it has been handled.

    A handled first signal puts SIGTERM back to its default: that is how a test
    knows a second signal will be the second, not merged into the first."""
    poll_until(lambda: catches(pid, signal.SIGTERM), 30, f"process {pid} to install its handlers")
    os.kill(pid, signal.SIGINT)
    poll_until(lambda: not catches(pid, signal.SIGTERM), 10, f"process {pid} to take the signal")


def test_processes_share_a_job_and_drain_on_sigterm(server, env, target):
    client = connect_broker(env["FETCHQ_SERVER"], env["FETCHQ_AUTHKEY"])
    parent, log = start_worker(env, "--processes", "2", "--concurrency", "2")
    try:
        poll_until(lambda: len(worker_pids(client)) == 2, 60, "two children")
        children = worker_pids(client)
        assert parent.pid not in children
        wait_until_leasing(client, worker_names(client))  # (else one may take the whole job)
        urls = [f"{target.url}/slow?s=0.01&procs={n}" for n in range(200)]
        assert run(env, "dispatch", *urls, "-j", "procs").returncode == 0
        output = run(env, "output", "-j", "procs", "--until-done", "--format", "jsonl")
        assert output.returncode == 0, output.stderr
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(30) == 0, log.text
    finally:
        stop_all([parent])
    results = jsonl(output.stdout)
    assert sorted(r["url"] for r in results) == sorted(urls)
    assert {int(r["worker"].rsplit(":", 1)[1]) for r in results} == children
    assert log.text.count("stopped on SIGTERM") == 2, log.text  # each child drained
    assert all(gone(pid) for pid in children)
    assert client.call("job", "procs")["leased"] == 0


def test_a_child_killed_with_sigkill_is_said_and_replaced(server, env, target):
    client = connect_broker(env["FETCHQ_SERVER"], env["FETCHQ_AUTHKEY"])
    parent, log = start_worker(env, "--processes", "2", "--concurrency", "2", "--prefetch", "1")
    try:
        poll_until(lambda: len(worker_pids(client)) == 2, 60, "two children")
        victim, survivor = sorted(worker_pids(client))
        os.kill(victim, signal.SIGKILL)
        log.wait_for(rf"worker process {victim} was killed by SIGKILL; starting another", 10)
        replacement = poll_until(
            lambda: worker_pids(client) - {victim, survivor}, 60, "a replacement child"
        )
        wait_until_leasing(client, worker_names(client, replacement | {survivor}))
        # The replacement works: it fetches part of a job done by the two live children
        # alone.  A child holds at most 3 tasks (2 running, 1 ahead), so the survivor
        # cannot take all 12 half-second requests while the replacement waits for work.
        urls = [f"{target.url}/slow?s=0.5&replaced={n}" for n in range(12)]
        assert run(env, "dispatch", *urls, "-j", "replaced").returncode == 0
        output = run(env, "output", "-j", "replaced", "--until-done", "--format", "jsonl")
        assert sorted(r["url"] for r in jsonl(output.stdout)) == sorted(urls)
        by_worker = Counter(int(r["worker"].rsplit(":", 1)[1]) for r in jsonl(output.stdout))
        assert set(by_worker) <= replacement | {survivor}, by_worker
        assert sum(by_worker[pid] for pid in replacement) > 0, by_worker
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(30) == 0, log.text
    finally:
        stop_all([parent])


def test_children_stop_by_themselves_when_their_parent_is_killed(server, env):
    client = connect_broker(env["FETCHQ_SERVER"], env["FETCHQ_AUTHKEY"])
    parent, _ = start_worker(env, "--processes", "2", "--concurrency", "2")
    children: set[int] = set()
    try:
        poll_until(lambda: len(worker_pids(client)) == 2, 60, "two children")
        children = worker_pids(client)
        os.kill(parent.pid, signal.SIGKILL)
        assert parent.wait(10) == -signal.SIGKILL
        poll_until(lambda: all(gone(pid) for pid in children), 30, "the orphans to exit")
    finally:
        stop_all([parent])
        for pid in children:  # still running only if the product is broken
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_second_ctrl_c_stops_a_draining_worker_at_once(server, env, target):
    """The first Ctrl-C lets a 20 s request finish (grace 30 s); the second ends
    the worker now, with exit code 130."""
    client = connect_broker(env["FETCHQ_SERVER"], env["FETCHQ_AUTHKEY"])
    worker, log = start_worker(env, "--concurrency", "1", "--grace", "30")
    try:
        assert run(env, "dispatch", f"{target.url}/slow?s=20&ctrl=1", "-j", "ctrl").returncode == 0
        poll_until(lambda: client.call("job", "ctrl")["leased"] == 1, 30, "the slow URL to start")
        first_signal_taken(worker.pid)
        assert worker.poll() is None, "the first Ctrl-C should drain, not stop"
        worker.send_signal(signal.SIGINT)
        assert worker.wait(10) == ExitCode.INTERRUPTED, log.text  # not the request's 20 s
    finally:
        stop_all([worker])
    assert "interrupted" in log.text and "Traceback" not in log.text, log.text


def test_a_second_ctrl_c_stops_every_process_at_once(server, env, target):
    """The same with --processes 2: the supervisor passes the first on as a
    drain, the second as a stop now, and exits 130 once its children are gone."""
    client = connect_broker(env["FETCHQ_SERVER"], env["FETCHQ_AUTHKEY"])
    parent, log = start_worker(env, "--processes", "2", "--concurrency", "1", "--grace", "30")
    try:
        poll_until(lambda: len(worker_pids(client)) == 2, 60, "two children")
        children = worker_pids(client)
        urls = [f"{target.url}/slow?s=20&ctrl2={n}" for n in range(2)]
        assert run(env, "dispatch", *urls, "-j", "ctrl2").returncode == 0
        poll_until(lambda: client.call("job", "ctrl2")["leased"] == 2, 30, "both slow URLs")
        first_signal_taken(parent.pid)
        poll_until(
            lambda: all(not catches(pid, signal.SIGTERM) for pid in children),
            10,
            "the children to take the drain request",
        )
        parent.send_signal(signal.SIGINT)
        assert parent.wait(10) == ExitCode.INTERRUPTED, log.text
        assert all(gone(pid) for pid in children), "children outlived a second Ctrl-C"
    finally:
        stop_all([parent])
    assert "Traceback" not in log.text, log.text


def test_worker_py_alone_starts_its_processes_too(server, env, target):
    """``python worker.py --processes 2``: the children are spawned from that file."""
    urls = [f"{target.url}/?alone={n}" for n in range(50)]
    assert run(env, "dispatch", *urls, "-j", "alone").returncode == 0
    result = subprocess.run(
        [PYTHON, str(REPO / "worker.py"), "--processes", "2", "--burst"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("stopped after") == 2, result.stderr
    output = run(env, "output", "-j", "alone", "--until-done", "--format", "jsonl")
    assert sorted(r["url"] for r in jsonl(output.stdout)) == sorted(urls)
