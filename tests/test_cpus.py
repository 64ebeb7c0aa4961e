"""Separate worker commands on one host keep to separate CPUs."""

from __future__ import annotations

import os

from fetchq_procs import start_worker, stop_all


def test_two_worker_commands_do_not_share_a_cpu(server, env, tmp_path):
    assert len(os.sched_getaffinity(0)) >= 2, "this test needs two CPUs to spread over"
    env["TMPDIR"] = str(tmp_path)  # CPU claims of this test's workers only
    first, first_log = start_worker(env, "--concurrency", "2")
    try:
        one = first_log.wait_for(r"on CPU (\d+)")
        assert os.sched_getaffinity(first.pid) == {int(one.group(1))}, "said, and done"
        second, second_log = start_worker(env, "--concurrency", "2")
        try:
            other = second_log.wait_for(r"on CPU (\d+)")
            assert os.sched_getaffinity(second.pid) == {int(other.group(1))}
        finally:
            stop_all([second])
    finally:
        stop_all([first])
    assert one.group(1) != other.group(1)
