"""What a user sees when something is wrong: one line, a meaningful exit code, no traceback."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest
from fetchq_procs import REPO, ServerProcess, jsonl, run
from test_pipeline import closed_port

from fetchq.errors import ExitCode


def assert_clean_error(result: subprocess.CompletedProcess[str], code: int, *phrases: str) -> None:
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    for phrase in phrases:
        assert phrase in result.stderr, result.stderr


def test_wrong_authkey_is_said_as_such(server, env):
    env["FETCHQ_AUTHKEY"] = "not-the-key"
    result = run(env, "status")
    assert_clean_error(result, ExitCode.AUTH_FAILED, "rejected the authkey", server.address)
    assert "not-the-key" not in result.stderr


def test_unreachable_server_names_the_address(env):
    port = closed_port()
    env["FETCHQ_SERVER"] = f"127.0.0.1:{port}"
    result = run(env, "dispatch", "http://127.0.0.1/", "--give-up-after", "0.5")
    assert_clean_error(
        result, ExitCode.UNREACHABLE, f"127.0.0.1:{port}", "connection refused", "gave up after"
    )
    assert result.stdout == ""


def test_missing_authkey(env):
    del env["FETCHQ_AUTHKEY"]
    result = run(env, "output", "--give-up-after", "0")
    assert_clean_error(result, ExitCode.NO_AUTHKEY, "no authkey given", "FETCHQ_AUTHKEY")


def test_port_in_use(server, env):
    result = subprocess.run(
        [sys.executable, str(REPO / "queueserver.py"), "--port", str(server.port)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert_clean_error(result, ExitCode.ADDRESS_IN_USE, "already in use", str(server.port))


@pytest.mark.parametrize(
    "args",
    [
        ["worker", "--concurrency", "0"],
        ["server", "--port", "70000"],
        ["output", "--format", "xml"],
        ["dispatch", "--count", "3"],
        ["dispatch"],
        ["dispatch", "--template", "http://h/", "--count", "3"],
        ["dispatch", "--template", "ftp://h/{i}", "--count", "3"],
        ["dispatch", "http://127.0.0.1/", "--job", "has space"],
        ["status", "--server", "host:notaport"],
        ["nosuch"],
        ["job", "pause"],
        ["job", "set", "j", "--per-host", "-1"],
        ["tls"],
    ],
)
def test_invalid_options_are_usage_errors(env, args):
    result = run(env, *args)
    assert_clean_error(result, ExitCode.USAGE)
    assert len(result.stderr.splitlines()) == 1, result.stderr


def test_invalid_input_lines_are_reported_by_number_and_skipped(server, env, target, tmp_path):
    urls = tmp_path / "urls.txt"
    urls.write_bytes(
        b"# a comment\n"
        + f"{target.url}/one\n".encode()
        + b"ftp://example.invalid/file\n"
        + b"\n"
        + b"not a url\n"
        + b"http://bad\xff\xfe/utf8\n"
        + b"http://"
        + b"a" * 10_000
        + b"\n"
        + f"{target.url}/two\n".encode()
    )
    result = run(env, "dispatch", "-f", str(urls), "-j", "lines")
    assert_clean_error(
        result,
        ExitCode.SKIPPED_INPUT,
        f"{urls}:3: unsupported scheme 'ftp'",
        f"{urls}:5: ",
        f"{urls}:6: not valid UTF-8",
        f"{urls}:7: line longer than",
        "skipped 4 invalid lines",
    )
    assert result.stdout == "lines\n"
    assert run(env, "worker", "--burst").returncode == 0
    output = run(env, "output", "-j", "lines", "--until-done", "--format", "jsonl")
    assert sorted(r["url"] for r in jsonl(output.stdout)) == [
        f"{target.url}/one",
        f"{target.url}/two",
    ]


def test_missing_input_file(server, env):
    result = run(env, "dispatch", "-f", "/nonexistent/urls.txt")
    assert_clean_error(result, ExitCode.USAGE, "/nonexistent/urls.txt does not exist")


def test_server_generates_a_private_key_when_given_none(env, tmp_path):
    del env["FETCHQ_AUTHKEY"]
    server = ServerProcess(env)
    try:
        key_path = tmp_path / "config" / "fetchq" / "authkey"
        server.log.wait_for("generated a new one in")
        assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
        key = key_path.read_text().strip()
        assert len(key) >= 32
        assert key not in server.log.text
        env["FETCHQ_SERVER"] = server.address
        # A client on the same machine finds the generated key by itself.
        assert run(env, "status").returncode == 0
    finally:
        assert server.stop() == 0


def test_binding_beyond_loopback_warns(env):
    server = ServerProcess(env, "--host", "0.0.0.0")
    try:
        server.log.wait_for("not encrypted and the authkey is the only guard")
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("program", "option"),
    [
        ("queueserver.py", "--max-pending"),
        ("dispatcher.py", "--template"),
        ("worker.py", "--concurrency"),
        ("output.py", "--until-done"),
    ],
)
def test_each_program_runs_on_its_own(program, option, env):
    """Each file is its own program: its own usage line and its own options."""
    result = subprocess.run(
        [sys.executable, str(REPO / program), "--help"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert f"Usage: {program}" in result.stdout, result.stdout
    assert option in result.stdout, result.stdout


def test_version(env):
    result = run(env, "--version")
    assert result.returncode == 0 and result.stdout.startswith("fetchq ")


def test_demo_runs_to_its_summary(env):
    result = run(env, "demo", "--tasks", "400")
    assert result.returncode == 0, result.stderr
    assert "Requests:     400" in result.stdout
    assert "Status codes:" in result.stdout and "[200]" in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["status"],
        ["dispatch", "http://127.0.0.1/"],
        ["output", "--until-done"],
        ["worker", "--burst"],
        ["worker", "--burst", "--processes", "2"],
    ],
    ids=lambda args: " ".join(args[:3:2]) if "--processes" in args else args[0],
)
def test_a_server_of_another_protocol_version_is_exit_8(env, args):
    """A real server whose protocol number differs: every command says so in one
    line and exits 8, at once (another version is never waited out)."""
    other = ServerProcess(env, protocol=99)
    try:
        env["FETCHQ_SERVER"] = other.address
        result = run(env, *args, timeout=30)
    finally:
        other.stop()
    assert_clean_error(result, ExitCode.VERSION_MISMATCH, "server speaks 99")
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, result.stderr  # said once, not once per worker process


def test_steering_a_job_that_does_not_exist_is_an_error_that_creates_nothing(server, env):
    """A typo in a job name must not leave a phantom job behind (which would then keep
    output --until-done waiting for ever): one line, exit 10, the closest name."""
    assert run(env, "dispatch", "http://127.0.0.1:9/", "--job", "probes").returncode == 0
    for args in (["cancel", "probe"], ["pause", "probe"], ["set", "probe", "--rate", "5"]):
        result = run(env, "job", *args)
        assert_clean_error(
            result, ExitCode.NO_SUCH_JOB, "no job 'probe' on this server: did you mean 'probes'?"
        )
        assert len(result.stderr.splitlines()) == 1, result.stderr
    assert set(json.loads(run(env, "job", "list", "--json").stdout)) == {"probes"}
