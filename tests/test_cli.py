"""What a user sees when something is wrong: one line, a meaningful exit code, no traceback."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys

import pytest
from fetchq_procs import REPO, ServerProcess, jsonl, run, worker_name
from worker_scenarios import closed_port

from fetchq.commands.demo import stop_workers, wait_for_workers
from fetchq.config import parse_address
from fetchq.errors import ExitCode, FetchqError
from fetchq.server.store.connection import job_key, shared_key
from fetchq.wire.client import BrokerClient


def assert_clean_error(result: subprocess.CompletedProcess[str], code: int, *phrases: str) -> None:
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    for phrase in phrases:
        assert phrase in result.stderr, result.stderr


@pytest.mark.parametrize("source", ["$FETCHQ_AUTHKEY", "$FETCHQ_AUTHKEY_FILE", "--authkey-file"])
@pytest.mark.parametrize(
    "command",
    [["status"], ["worker", "--burst"], ["worker", "--burst", "--processes", "2"]],
    ids=["status", "worker", "worker-p2"],
)
def test_a_wrong_key_is_said_first_naming_where_it_came_from(
    server, env, tmp_path, source, command
):
    """Logging in comes first: a worker says nothing of itself before the server has
    taken its key.  The one line names where the key came from, never the key."""
    wrong = "not-the-key"
    key_file = tmp_path / "wrong.key"
    key_file.write_text(wrong + "\n")
    key_file.chmod(0o600)
    args = list(command)
    if source == "$FETCHQ_AUTHKEY":
        env["FETCHQ_AUTHKEY"] = wrong
        named = "$FETCHQ_AUTHKEY"
    elif source == "$FETCHQ_AUTHKEY_FILE":
        del env["FETCHQ_AUTHKEY"]
        env["FETCHQ_AUTHKEY_FILE"] = str(key_file)
        named = f"file {key_file} ($FETCHQ_AUTHKEY_FILE)"
    else:
        args += ["--authkey-file", str(key_file)]
        named = f"file {key_file} (--authkey-file)"
    result = run(env, *args)
    assert_clean_error(result, ExitCode.AUTH_FAILED)
    said = f"server at {server.address} rejected the authkey from {named}"
    assert result.stderr.splitlines() == [
        f"fetchq: error: {said}: it is not the key the server uses"
    ]
    assert wrong not in result.stderr.replace(str(key_file), "")


def test_a_worker_says_its_start_up_line_once_logged_in(server, env):
    result = run(env, "worker", "--burst", "--no-pin", "--concurrency", "1")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert re.fullmatch(
        rf"fetchq: worker \S+:\d+: 1 fetch thread, server {server.address}", lines[0]
    ), lines


def test_unreachable_server_names_the_address(env):
    port = closed_port()
    env["FETCHQ_SERVER"] = f"127.0.0.1:{port}"
    result = run(env, "dispatch", "http://127.0.0.1/", "--give-up-after", "0.5")
    assert_clean_error(
        result, ExitCode.UNREACHABLE, f"127.0.0.1:{port}", "connection refused", "gave up after"
    )
    assert result.stdout == ""


def test_a_flag_beats_the_environment(server, env, tmp_path):
    """Every connection option beats its variable: here a wrong server and a wrong key in
    the environment, and the right ones as flags."""
    key = tmp_path / "right.key"
    key.write_text(env["FETCHQ_AUTHKEY"] + "\n")
    key.chmod(0o600)
    env["FETCHQ_SERVER"] = f"127.0.0.1:{closed_port()}"
    env["FETCHQ_AUTHKEY"] = "not-the-key"
    flags = ["--server", server.address, "--authkey-file", str(key)]
    assert run(env, "status", *flags).returncode == 0
    assert run(env, "job", "list", *flags).returncode == 0
    assert run(env, "status", flags[0], flags[1]).returncode == ExitCode.AUTH_FAILED
    assert run(env, "status", *flags[2:]).returncode == ExitCode.UNREACHABLE


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


@pytest.mark.parametrize(
    ("what", "args"),
    [
        ("input file", ["dispatch", "-f"]),
        ("authkey file", ["status", "--authkey-file"]),
        ("TLS CA file", ["status", "--tls-ca"]),
        ("results file", ["report"]),
    ],
)
def test_a_file_that_cannot_be_read_is_said_the_same_way_whatever_it_holds(
    server, env, tmp_path, what, args
):
    """An input file, a key, a CA or saved results: one wording, one exit code."""
    missing, folder = tmp_path / "missing", tmp_path
    for path, why in ((missing, "no such file"), (folder, "it is a directory")):
        result = run(env, *args, str(path))
        assert_clean_error(result, ExitCode.USAGE)
        assert result.stderr == f"fetchq: error: cannot read {what} {path}: {why}\n"


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


def test_demo_runs_through_two_servers_on_a_store(env, store):
    """Each worker is given both servers, the job goes in through one and out through
    the other; the store then holds the job, done, and nothing else waiting."""
    result = run(env, "demo", "--tasks", "400", "--store", store.url)
    assert result.returncode == 0, result.stderr
    assert "Requests:     400" in result.stdout
    servers = re.search(r"2 servers at (\S+), (\S+) on store", result.stderr)
    assert servers is not None, result.stderr
    started = re.findall(r"worker \S+: .*server (\S+)", result.stderr)
    assert sorted(started) == sorted(servers.groups()), "a worker starts on each server"
    job = re.search(r"as job (demo-\w+)", result.stderr)
    assert job is not None
    kept = store.client().hgetall(job_key(job[1], "meta"))
    assert (kept[b"submitted"], kept[b"confirmed"], kept[b"sealed"]) == (b"400", b"400", b"1")
    assert store.client().get(shared_key("unconfirmed")) == b"0"


def test_the_demo_dispatches_once_its_workers_have_logged_in(env, server):
    """Else, on a busy machine, one worker can run the whole job before the other
    has started.  A worker that exits instead is said in one line."""
    client = BrokerClient(parse_address(server.address), env["FETCHQ_AUTHKEY"].encode())
    client.connect()
    command = [sys.executable, "-m", "fetchq", "worker", "--concurrency", "1"]
    worker = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL)
    try:
        wait_for_workers(client, [worker])
        seen = [row["worker"] for row in client.call("status")["workers"]]
        assert seen == [worker_name(worker.pid)]
    finally:
        stop_workers([worker])
    with pytest.raises(FetchqError, match="every worker process exited early"):
        wait_for_workers(client, [worker])


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


def test_steering_says_what_was_done_in_words_a_user_expects(server, env):
    """``job resume J`` answered ``job J: sealed, ...`` read as if resuming had failed:
    each command says what it did, then what the job does now."""
    urls = ("http://127.0.0.1:9/a", "http://127.0.0.1:9/b")
    assert run(env, "dispatch", *urls, "--job", "probes").returncode == 0
    said = [
        (
            ["pause"],
            (
                "job probes paused: none of its tasks is leased until `fetchq job resume probes` "
                "(2 queued tasks waiting)"
            ),
        ),
        (
            ["set", "--rate", "5", "--per-host", "2", "--host-delay", "250ms"],
            (
                "job probes set: rate 5.0/s, at most 2 in flight per host, 250.0ms between "
                "starts on a host (it stays paused: `fetchq job resume probes` runs it)"
            ),
        ),
        (["resume"], "job probes resumed: its tasks are leased again (2 queued, 5.0/s)"),
        (
            ["set", "--rate", "0", "--per-host", "0", "--host-delay", "0"],
            "job probes set: no rate limit, no limit in flight per host",
        ),
        (["cancel"], "job probes cancelled: its queued tasks end as cancelled results"),
        (["resume"], "job probes is cancelled: resuming it runs nothing"),
    ]
    for args, line in said:
        result = run(env, "job", args[0], "probes", *args[1:])
        assert result.returncode == 0, result.stderr
        assert result.stdout == line + "\n", args


def test_a_count_of_one_is_said_in_the_singular(server, env, target, tmp_path):
    urls = tmp_path / "urls.txt"
    urls.write_text(f"{target.url}/one\nnot a url\n")
    dispatched = run(env, "dispatch", "-f", str(urls), "-j", "one")
    assert dispatched.returncode == ExitCode.SKIPPED_INPUT, dispatched.stderr
    assert dispatched.stderr.splitlines()[-1] == (
        f"fetchq: dispatched 1 task as job one to {server.address}; skipped 1 invalid line"
    )
    worked = run(env, "worker", "--burst", "--no-pin", "--concurrency", "1")
    assert worked.returncode == 0, worked.stderr
    assert ": 1 fetch thread, server" in worked.stderr, worked.stderr
    assert worked.stderr.rstrip().endswith("stopped after 1 request"), worked.stderr
    for text in (dispatched.stderr, worked.stderr):
        assert not re.search(r"\b1 \w*\s?(task|line|thread|result|attempt)s\b", text), text


def test_plural():
    from fetchq.messages import plural

    assert [plural(n, "task") for n in (0, 1, 2)] == ["0 tasks", "1 task", "2 tasks"]
    assert plural(1, "fetch thread") == "1 fetch thread"
    assert plural(2.5, "request") == "2.5 requests"
    assert plural(1.0, "request") == "1 request"
    assert plural(3, "entry", "entries") == "3 entries"
