"""Methods, headers and bodies, end to end: a real server, the dispatcher's options and
targets files, a real Python worker, a target that records what it was sent.

The Node worker runs the same scenarios (test_node_worker)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from fetchq_procs import ServerProcess, run, start_worker, stop_all
from worker_scenarios import a_followed_303_turns_a_post_into_a_get, sends_what_was_asked

from fetchq.errors import ExitCode
from fetchq.testing.target import Target
from fetchq.wire.specs import MAX_BODY


def python_worker(env: dict[str, str]):
    def run_worker(*args: str) -> subprocess.CompletedProcess[str]:
        return run(env, "worker", "--burst", "--concurrency", "4", *args)

    return run_worker


def test_the_python_worker_sends_what_each_task_asks(server, env, target, tmp_path):
    sends_what_was_asked(env, target, tmp_path, "py", python_worker(env))


def test_the_python_worker_turns_a_post_into_a_get_after_a_303(server, env, target):
    a_followed_303_turns_a_post_into_a_get(env, target, "py", python_worker(env))


SECRET = "s3cr3t-t0k3n-do-not-show"
FROM_ENV = "another-s3cr3t-from-env"


def test_no_header_value_shows_anywhere_but_the_request(env, target: Target, tmp_path: Path):
    """Status, job list (plain and JSON), the server's log, the worker's, the
    dispatcher's, and the results never show a header value; the journal keeps them,
    readable by its owner alone."""
    journal = tmp_path / "fetchq.journal"
    server = ServerProcess(env, "--journal", str(journal), "--lease-timeout", "3")
    env["FETCHQ_SERVER"] = server.address
    worker, worker_log = start_worker(env, "--concurrency", "2")
    try:
        dispatched = run(
            {**env, "API_TOKEN": FROM_ENV},
            *("dispatch", "-j", "secret", "--method", "PUT", "--body", "x"),
            *("-H", f"Authorization: Bearer {SECRET}", "--header-env", "X-Key: API_TOKEN"),
            *(f"{target.url}/secret/{n}" for n in range(5)),
        )
        assert dispatched.returncode == 0, dispatched.stderr
        output = run(env, "output", "-j", "secret", "--until-done", "--format", "jsonl")
        assert output.returncode == 0, output.stderr
        shown = [
            dispatched.stdout + dispatched.stderr,
            output.stdout + output.stderr,
            *(
                run(env, *command).stdout
                for command in (
                    ("status",),
                    ("status", "--json"),
                    ("job", "list"),
                    ("job", "list", "--json"),
                )
            ),
        ]
        sent = {value for seen in target.requests("/secret/") for _, value in seen.headers}
        assert {f"Bearer {SECRET}", FROM_ENV} <= sent
        assert output.stdout.count('"status": 200') + output.stdout.count('"status":200') == 5
    finally:
        stop_all([worker])
        server.stop()
    shown += [server.log.text, worker_log.text]
    for text in shown:
        assert SECRET not in text and FROM_ENV not in text
    assert journal.stat().st_mode & 0o077 == 0
    assert SECRET.encode() in journal.read_bytes(), "the journal keeps what a restart needs"


def test_mistakes_in_what_to_send_are_one_line_each_before_anything_connects(env, tmp_path):
    """No server runs here: each is refused before the dispatcher connects."""
    env["FETCHQ_SERVER"] = "127.0.0.1:9"
    big = tmp_path / "big"
    big.write_bytes(b"x" * (MAX_BODY + 1))
    cases = {
        ("--method", "BREW"): "--method 'BREW': use one of GET, HEAD",
        ("-H", "no colon"): "--header takes 'Name: value'",
        ("--header-env", "Authorization: NOT_SET_ANYWHERE"): "NOT_SET_ANYWHERE is not set",
        ("--method", "POST", "--body", f"@{big}"): f"over the server's limit of {MAX_BODY}",
        ("--body", "x"): "a GET sends no body",
        ("--targets", str(big), "http://127.0.0.1/"): "give it without URLs",
        ("--targets", str(big), "--targets-format", "yaml"): "--targets-format: use one of",
    }
    for args, message in cases.items():
        result = run(env, "dispatch", *(args if "--targets" in args else (*args, "http://h/")))
        assert result.returncode == ExitCode.USAGE, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "Traceback" not in result.stderr


def test_a_malformed_targets_block_is_skipped_with_its_line_and_the_rest_is_sent(
    server, env, target, tmp_path
):
    targets = tmp_path / "t.txt"
    targets.write_text(
        f"GET {target.url}/tb/1\n\nBREW {target.url}/tb/pot\n\nPOST {target.url}/tb/2\n@nope\n\n"
        f"DELETE {target.url}/tb/3\n"
    )
    result = run(env, "dispatch", "-j", "tb", "--targets", str(targets))
    assert result.returncode == ExitCode.SKIPPED_INPUT, result.stderr
    assert f"skipped {targets}:3: 'BREW' is not one of" in result.stderr
    assert f"skipped {targets}:6: cannot read body file" in result.stderr
    assert "dispatched 2 tasks" in result.stderr
    worker = python_worker(env)()
    assert worker.returncode == 0, worker.stderr
    assert sorted(s.method for s in target.requests("/tb/")) == ["DELETE", "GET"]
