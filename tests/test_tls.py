"""Mutual TLS: a whole job over it, each misuse said in one line, and timeouts that hold."""

from __future__ import annotations

import datetime
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from fetchq_procs import ServerProcess, freeze, run
from worker_scenarios import whole_job

from fetchq.config import Authkey, ServerLink, parse_address
from fetchq.errors import ExitCode, ServerUnreachable
from fetchq.wire.client import BrokerClient
from fetchq.wire.tls import ClientTLS


def lines_of(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_init_makes_the_files_and_refuses_to_overwrite_them(env, tmp_path):
    folder = tmp_path / "tls"
    made = run(env, "tls", "init", str(folder), "--host", "127.0.0.1")
    assert made.returncode == 0, made.stderr
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["ca.pem", "server.pem", "server.key", "client.pem", "client.key"]
    )
    for key in ("server.key", "client.key"):
        assert (folder / key).stat().st_mode & 0o777 == 0o600, key
    before = (folder / "ca.pem").read_bytes()
    again = run(env, "tls", "init", str(folder))
    assert again.returncode == ExitCode.USAGE, again.stderr
    said = f"fetchq: error: {folder} already holds ca.pem, server.pem, server.key, client.pem, "
    assert lines_of(again.stderr) == [said + "client.key: choose an empty folder"]
    assert (folder / "ca.pem").read_bytes() == before


def test_a_whole_job_over_mutual_tls(env, target, tmp_path):
    """status, dispatch, worker and output all over mutual TLS, set up as the README says:
    ``fetchq tls init``, the server's three options, the clients' three variables."""
    folder = tmp_path / "tls"
    assert run(env, "tls", "init", str(folder), "--host", "127.0.0.1").returncode == 0
    server = ServerProcess(
        env,
        *("--tls-cert", str(folder / "server.pem"), "--tls-key", str(folder / "server.key")),
        *("--tls-ca", str(folder / "ca.pem")),
    )
    assert "TLS, client certificates required" in server.log.text
    env["FETCHQ_SERVER"] = server.address
    env["FETCHQ_TLS_CA"] = str(folder / "ca.pem")
    env["FETCHQ_TLS_CERT"] = str(folder / "client.pem")
    env["FETCHQ_TLS_KEY"] = str(folder / "client.key")
    try:
        _, status = whole_job(env, target, "tls", 300)
    finally:
        server.stop()
    job = status["jobs"]["tls"]
    assert job["submitted"] == job["confirmed"] == 300 and job["done"]
    assert "TLS handshake" not in server.log.text, server.log.text


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client: tuple[Path, Path]
    expired: tuple[Path, Path]
    other_ca_client: tuple[Path, Path]
    other_ca: Path


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    """A CA with a server pair for 127.0.0.1, a good client, an expired one, and a client
    (and a CA file) from a second CA."""
    ca, other = trustme.CA(), trustme.CA()
    now = datetime.datetime.now(datetime.UTC)

    def write(cert: trustme.LeafCert, name: str) -> tuple[Path, Path]:
        pem, key = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
        cert.cert_chain_pems[0].write_to_path(str(pem))
        cert.private_key_pem.write_to_path(str(key))
        return pem, key

    server = write(ca.issue_cert("127.0.0.1"), "server")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    other.cert_pem.write_to_path(str(tmp_path / "other-ca.pem"))
    return Pki(
        ca=tmp_path / "ca.pem",
        server_cert=server[0],
        server_key=server[1],
        client=write(ca.issue_cert("client.fetchq.test"), "client"),
        expired=write(
            ca.issue_cert(
                "client.fetchq.test",
                not_before=now - datetime.timedelta(days=10),
                not_after=now - datetime.timedelta(days=1),
            ),
            "expired",
        ),
        other_ca_client=write(other.issue_cert("client.fetchq.test"), "other"),
        other_ca=tmp_path / "other-ca.pem",
    )


def tls_options(ca: Path, pair: tuple[Path, Path] | None) -> list[str]:
    options = ["--tls-ca", str(ca)]
    if pair:
        options += ["--tls-cert", str(pair[0]), "--tls-key", str(pair[1])]
    return options


MISUSES = {
    "plaintext client": (None, "uses TLS: give --tls-ca"),
    "no client certificate": ("none", "requires a client certificate: give --tls-cert"),
    "client certificate from another CA": ("other", "signed by another CA"),
    "expired client certificate": ("expired", "it has expired"),
    "server certificate from another CA": ("wrong-ca", "--tls-ca does not vouch for"),
}


def test_each_misuse_gets_one_line_a_non_zero_exit_and_the_server_carries_on(env, pki, target):
    server = ServerProcess(
        env,
        *("--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)),
        *("--tls-ca", str(pki.ca)),
    )
    env["FETCHQ_SERVER"] = server.address
    choices = {
        None: [],
        "none": tls_options(pki.ca, None),
        "other": tls_options(pki.ca, pki.other_ca_client),
        "expired": tls_options(pki.ca, pki.expired),
        "wrong-ca": tls_options(pki.other_ca, pki.client),
    }
    try:
        for misuse, (choice, phrase) in MISUSES.items():
            for command in (["status"], ["worker", "--burst", "--no-pin"]):
                started = time.monotonic()
                result = run(env, *command, *choices[choice], timeout=60)
                took = time.monotonic() - started
                assert result.returncode == ExitCode.TLS_FAILED, (misuse, command, result.stderr)
                assert "Traceback" not in result.stderr, (misuse, result.stderr)
                last = lines_of(result.stderr)[-1]
                assert last.startswith("fetchq: error: ") and phrase in last, (misuse, last)
                assert server.address in last, (misuse, last)
                assert took < 15, (misuse, command, took)
            # The server carries on: a client with the right files is served at once.
            good = run(env, "status", *tls_options(pki.ca, pki.client))
            assert good.returncode == 0, (misuse, good.stderr)
        for said in (
            "does not speak TLS; this server requires it",
            "failed: it sent no client certificate",
            "failed: its certificate is not signed by the server's --tls-ca",
            "failed: its certificate was refused: certificate has expired",
            "failed: it does not trust this server's certificate",
        ):
            server.log.wait_for(said, timeout=5)
        assert server.process.poll() is None
    finally:
        server.stop()


def test_a_tls_client_against_a_plaintext_server(env, server, pki):
    for command in (["status"], ["dispatch", "http://127.0.0.1/", "--give-up-after", "20"]):
        result = run(env, *command, *tls_options(pki.ca, pki.client), timeout=60)
        assert result.returncode == ExitCode.TLS_FAILED, result.stderr
        said = f"fetchq: error: the server at {server.address} does not speak TLS (start it "
        assert lines_of(result.stderr) == [
            said + "with --tls-cert and --tls-key, or leave out --tls-ca here)"
        ]
    server.log.wait_for("a TLS client from 127.0.0.1:\\d+: this server was started without TLS")
    assert run(env, "status").returncode == 0


def test_call_timeouts_hold_on_tls_sockets(env, pki):
    """A server that stops answering mid-session is noticed within the call timeout,
    though the socket is TLS (a kernel receive timeout would not bound an SSL read)."""
    server = ServerProcess(
        env, *("--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key))
    )
    key = Authkey(env["FETCHQ_AUTHKEY"].encode(), "test")
    link = ServerLink(parse_address(server.address), key, ClientTLS(str(pki.ca)), call_timeout=1.5)
    client = BrokerClient(link)
    try:
        client.connect()
        assert client.call("queued") == 0
        freeze(server.process.pid)  # every thread: one left running may still answer
        started = time.monotonic()
        with pytest.raises(ServerUnreachable, match="stopped answering"):
            client.call("queued")
        assert 1.0 < time.monotonic() - started < 5.0
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
        client.close()
        server.stop()


def test_one_process_holds_a_tls_and_a_plaintext_client_each_with_its_own_settings(env, pki):
    """Connection settings belong to each client, not to the process: a TLS client and a
    plaintext one, to two servers, called in turn from two threads at once, both work;
    and each gives up on a server that stops answering after its own call timeout."""
    tls_server = ServerProcess(
        env, *("--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key))
    )
    plain_server = ServerProcess(env)
    key = Authkey(env["FETCHQ_AUTHKEY"].encode(), "test")
    tls_link = ServerLink(
        parse_address(tls_server.address), key, ClientTLS(str(pki.ca)), call_timeout=1.0
    )
    plain_link = ServerLink(parse_address(plain_server.address), key, None, call_timeout=3.0)
    clients = {"tls": BrokerClient(tls_link), "plain": BrokerClient(plain_link)}
    rounds = 40
    submitted = threading.Barrier(3)
    stopped = threading.Event()
    failures: list[BaseException] = []
    waits: dict[str, tuple[float, str]] = {}

    def interleave(thread: int, then: str) -> None:
        """Submit to both servers in turn; once they are stopped, call ``then``'s."""
        try:
            for n in range(rounds):
                for name, client in clients.items():
                    url = f"http://127.0.0.1/{name}/{thread}/{n}"
                    client.call("submit", {"job": f"{name}-{thread}", "urls": [url]})
        except BaseException as exc:
            failures.append(exc)
        submitted.wait(60)
        if not stopped.wait(60):
            return
        began = time.monotonic()
        try:
            clients[then].call("queued")
            waits[then] = (time.monotonic() - began, "answered")
        except ServerUnreachable as exc:
            waits[then] = (time.monotonic() - began, exc.message)

    threads = [
        threading.Thread(target=interleave, args=(n, then))
        for n, then in enumerate(("tls", "plain"))
    ]
    try:
        for thread in threads:
            thread.start()
        submitted.wait(60)
        assert not failures, failures
        for name, client in clients.items():
            jobs = client.call("status")["jobs"]
            assert {job: jobs[job]["submitted"] for job in jobs} == {
                f"{name}-0": rounds,
                f"{name}-1": rounds,
            }
        for server in (tls_server, plain_server):
            freeze(server.process.pid)
        stopped.set()
        for thread in threads:
            thread.join(30)
        assert "stopped answering" in waits["tls"][1], waits
        assert "stopped answering" in waits["plain"][1], waits
        assert 0.9 <= waits["tls"][0] < 2.5, waits
        assert 2.9 <= waits["plain"][0] < 5.0, waits
    finally:
        stopped.set()
        for server in (tls_server, plain_server):
            os.kill(server.process.pid, signal.SIGCONT)
            server.stop()
        for client in clients.values():
            client.close()
