"""Scenarios every worker implementation must pass: the Python worker and the Node one.

Each takes a way to run or start the worker under test, drives a real server
through it, and checks what a user would see.
"""

from __future__ import annotations

import itertools
import json
import signal
import socket
import statistics
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from faults.netproxy import NetProxy, holding
from fetchq_procs import (
    ServerProcess,
    StderrLog,
    connect_broker,
    fetchq_command,
    jsonl,
    poll_until,
    run,
    start_output,
    start_program,
    stop_all,
)

from fetchq.testing.target import Seen, Target

_HELD: dict[int, socket.socket] = {}


def closed_port() -> int:
    """A port of 127.0.0.1 that refuses connections: bound but never listening, and
    held so that nothing else binds it meanwhile (xdist runs four tests at once).
    ``release_port`` lets a server the test starts there have it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    _HELD[port] = sock
    return port


def release_port(port: int) -> None:
    _HELD.pop(port).close()


def every_kind_of_failure(
    env: dict[str, str], target: Target, run_worker: Callable[[], subprocess.CompletedProcess[str]]
) -> dict[str, dict[str, Any]]:
    """A job of URLs that fail in every way a fetch can: each one ends as a result with
    the right type, and connection failures use their attempts.  Returns the results."""
    refused = f"http://127.0.0.1:{closed_port()}/"
    tls = f"https://127.0.0.1:{target.port}/"
    busy = f"{target.url}/busy?after=7&w={closed_port()}"
    expected = {
        f"{target.url}/fine": (True, 200, None),
        f"{target.url}/status/404": (False, 404, None),
        f"{target.url}/status/500": (False, 500, None),
        f"{target.url}/status/302": (True, 302, None),
        f"{target.url}/bytes/2000000": (True, 200, None),
        f"{target.url}/slow?s=5": (False, None, "timeout"),
        f"{target.url}/drop": (False, None, "reset"),
        f"{target.url}/reset": (False, None, "reset"),
        refused: (False, None, "refused"),
        tls: (False, None, "tls"),
        busy: (False, 429, None),
    }
    stdin = "\n".join(expected) + "\n"
    dispatched = run(
        env, "dispatch", "-", "-j", "errors", "--timeout", "1", "--attempts", "2", stdin=stdin
    )
    assert dispatched.returncode == 0, dispatched.stderr
    worker = run_worker()
    assert worker.returncode == 0, worker.stderr
    output = run(env, "output", "-j", "errors", "--until-done", "--format", "jsonl")
    assert output.returncode == 0, output.stderr
    results = {r["url"]: r for r in jsonl(output.stdout)}
    assert set(results) == set(expected)
    for url, (ok, status, error_type) in expected.items():
        result = results[url]
        assert (result["ok"], result["status"]) == (ok, status), result
        assert (result["error"] or {}).get("type") == error_type, result
        if error_type:
            assert result["error"]["message"], result
    assert results[f"{target.url}/bytes/2000000"]["bytes"] == 2_000_000
    assert results[refused]["attempt"] == 2, "connection failures use their attempts"
    assert results[f"{target.url}/status/500"]["attempt"] == 1, "an HTTP answer is final"
    assert results[tls]["attempt"] == 1, "TLS errors are final"
    assert results[busy]["retry_after"] == 7, "a 429's Retry-After is reported"
    assert results[f"{target.url}/fine"]["retry_after"] is None
    return results


REPORT_DELAY = 3.0
"""How long a proxy holds each of a worker's reports: three of its one-second lease
waits, so that a worker that would leave too soon does so while one is held."""


def a_burst_waits_for_the_retry_its_report_queues(
    env: dict[str, str],
    run_worker: Callable[[dict[str, str]], subprocess.CompletedProcess[str]],
) -> None:
    """A failed first attempt goes back to the queue when the server applies its
    result.  While that report is on its way the worker holds nothing and the server
    has nothing queued, yet a burst worker must not leave: a proxy holds each report
    REPORT_DELAY seconds (ten times less than the lease), and the worker must still
    fetch the second attempt."""
    server = ServerProcess(env, "--lease-timeout", str(10 * REPORT_DELAY))
    env = {**env, "FETCHQ_SERVER": server.address}
    refused = f"http://127.0.0.1:{closed_port()}/"

    try:
        dispatched = run(env, "dispatch", "-j", "retried", "--attempts", "2", refused)
        assert dispatched.returncode == 0, dispatched.stderr
        with NetProxy(server.address, rewrite=holding("complete", REPORT_DELAY)) as proxy:
            worker = run_worker({**env, "FETCHQ_SERVER": proxy.address})
        assert worker.returncode == 0, worker.stderr
        client = connect_broker(server.address, env["FETCHQ_AUTHKEY"])
        try:
            counts = client.call("job", "retried")
        finally:
            client.close()
        assert (counts["queued"], counts["leased"], counts["failed"]) == (0, 0, 1), (
            f"the burst worker left work behind: {counts}"
        )
        output = run(env, "output", "-j", "retried", "--until-done", "--format", "jsonl")
    finally:
        server.stop()
    (result,) = jsonl(output.stdout)
    assert (result["attempt"], result["error"]["type"]) == (2, "refused"), result


def sigterm_drains(
    env: dict[str, str],
    target: Target,
    start_worker: Callable[[], tuple[subprocess.Popen[str], StderrLog]],
) -> None:
    """Running requests finish and report; prefetched ones go back without using an
    attempt (the worker is started with concurrency 2 and prefetch 20)."""
    worker, log = start_worker()
    client = connect_broker(env["FETCHQ_SERVER"], env["FETCHQ_AUTHKEY"])
    try:
        template = f"{target.url}/slow?s=0.5&i={{i}}"
        dispatched = run(env, "dispatch", "--template", template, "--count", "40", "-j", "drain")
        assert dispatched.returncode == 0, dispatched.stderr
        poll_until(
            lambda: client.call("job", "drain")["leased"] >= 10, 30, "the worker to prefetch"
        )
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0, log.text
        counts = client.call("job", "drain")
        assert counts["leased"] == 0, "nothing is left leased to the stopped worker"
        assert counts["succeeded"] >= 2, "requests in flight were finished and reported"
        assert counts["succeeded"] + counts["queued"] == 40
        rest = run(env, "worker", "--burst", "--concurrency", "20")
        assert rest.returncode == 0, rest.stderr
        output = run(env, "output", "-j", "drain", "--until-done", "--format", "jsonl")
        results = jsonl(output.stdout)
    finally:
        stop_all([worker])
        client.close()
    assert len({r["id"] for r in results}) == 40
    assert all(r["attempt"] == 1 for r in results), "handed-back tasks kept their attempt"


def prefetched(counts: dict[str, Any]) -> bool:
    """Every task of the job leased, and more than the one running: some to hand back.
    (Not "all leased": a box too busy to look within the first fetch would miss that.)"""
    return counts["queued"] == 0 and counts["leased"] >= 2


def hands_back_through_a_blip(
    env: dict[str, str],
    target: Target,
    start_worker: Callable[[dict[str, str]], tuple[subprocess.Popen[str], StderrLog]],
) -> None:
    """SIGTERM: the first try to hand back the prefetched tasks meets a broken
    connection (a proxy breaks it), and the worker tries again within its grace period
    rather than leave them leased until their leases lapse (30 s here).  The worker is
    started with concurrency 1 and prefetch 10."""
    server = ServerProcess(env, "--lease-timeout", "30")
    env = {**env, "FETCHQ_SERVER": server.address}
    client = connect_broker(server.address, env["FETCHQ_AUTHKEY"])
    broken = threading.Event()

    def break_first_release(frame: bytes) -> bytes | None:
        if b'"release"' in frame and not broken.is_set():
            broken.set()
            return None
        return frame

    try:
        with NetProxy(server.address, rewrite=break_first_release) as proxy:
            worker, log = start_worker({**env, "FETCHQ_SERVER": proxy.address})
            try:
                urls = [f"{target.url}/slow?s=1&blip={i}" for i in range(10)]
                dispatched = run(env, "dispatch", *urls, "-j", "blip")
                assert dispatched.returncode == 0, dispatched.stderr
                poll_until(lambda: prefetched(client.call("job", "blip")), 30, "a prefetch")
                worker.send_signal(signal.SIGTERM)
                assert worker.wait(30) == 0, log.text
            finally:
                stop_all([worker])
        counts = client.call("job", "blip")
    finally:
        client.close()
        server.stop()
    assert broken.is_set(), "no hand-back was tried"
    assert counts["leased"] == 0, (counts, log.text)
    assert counts["succeeded"] + counts["queued"] == 10, counts


def whole_job(
    env: dict[str, str], target: Target, job: str, count: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A Python worker, an output, a dispatch and a status, as a user runs them, with
    whatever settings ``env`` holds: the results (each URL once, all ok) and the status."""
    worker, worker_log = start_program(fetchq_command("worker", "--concurrency", "4"), env)
    output = start_output(env, "--job", job, "--until-done", "--format", "jsonl")
    template = f"{target.url}/{job}?i={{i}}"
    try:
        dispatched = run(env, "dispatch", "--template", template, "--count", str(count), "-j", job)
        assert dispatched.returncode == 0, dispatched.stderr
        stdout, stderr = output.communicate(timeout=120)
        assert output.returncode == 0, stderr
        status = run(env, "status", "--json")
        assert status.returncode == 0, status.stderr
        worker.terminate()
        assert worker.wait(30) == 0, worker_log.text
    finally:
        stop_all([worker, output])
    results = jsonl(stdout)
    assert sorted(r["url"] for r in results) == sorted(template.format(i=i) for i in range(count))
    assert all(r["ok"] for r in results)
    return results, json.loads(status.stdout)


# -- pace: what a paced job promises, checked the same way for every worker --

CLOCK_SLACK = 0.010
"""Seconds two workers' ideas of the server's clock may differ by (one host here).

Each worker keeps the quickest of ``CLOCK_SAMPLES`` timed round trips: within 4 ms of
the truth with CPU hogs on every core of the 2-core test box (one round trip alone
was off by up to 45 ms), so two workers are within twice that."""


def assert_none_before_its_slot(results: list[dict], seen: list[Seen]) -> None:
    """No worker started a request before its scheduled start, and no request reached
    its host before then: the schedule is the server's, the starts the fleet's."""
    assert all(r["scheduled"] is not None for r in results)
    early = [r for r in results if r["started"] < r["scheduled"] - CLOCK_SLACK]
    assert not early, f"{len(early)} started before their slot, e.g. {early[0]}"
    due = {r["url"].split("/", 3)[3]: r["scheduled"] for r in results}
    arrived_early = [s for s in seen if s.arrived < due[s.path.lstrip("/")] - CLOCK_SLACK]
    assert not arrived_early, f"{len(arrived_early)} reached the host before their slot"


KEPT_UP = 0.03
"""Seconds the median request may start (or arrive) after its slot: a fleet that keeps
up, on a busy box too (the median there stays within a few ms)."""


def assert_rate_held(
    arrived: list[float], slots: list[float], *, within: float = 0.01, late: float = 0.25
) -> None:
    """Requests reached the host at the rate of their slots, to within ``within``, and
    kept up: the median within ``KEPT_UP`` of its slot, nineteen in twenty within
    ``late``.

    The rate is judged by how far arrivals lag behind their slots (the k-th arrival
    against the k-th slot): the typical lag (a median over a tenth of the requests)
    may change by at most ``within`` of the time between the second tenth and the
    ninth, the fleet starting and finishing left out.  Not by counting arrivals in a
    window, whose edges a busy machine moves: one thread woken late at either edge
    moves a request out of it."""
    arrived, slots = sorted(arrived), sorted(slots)
    assert len(arrived) == len(slots) >= 20, (len(arrived), len(slots))
    lags = [at - slot for at, slot in zip(arrived, slots, strict=True)]
    tenth = len(lags) // 10
    start, end = (
        statistics.median(lags[tenth : 2 * tenth]),
        statistics.median(lags[-2 * tenth : -tenth]),
    )
    between = slots[-2 * tenth + tenth // 2] - slots[tenth + tenth // 2]
    assert abs(end - start) <= within * between, (
        f"the lag behind the slots went from {start:.3f}s to {end:.3f}s in {between:.1f}s: "
        f"the rate was off by {abs(end - start) / between:.1%}"
    )
    typical = statistics.median(lags)
    assert typical <= KEPT_UP, f"the median request reached the host {typical:.3f}s late"
    behind = sorted(lags)[len(lags) * 19 // 20]
    assert behind <= late, f"one in twenty reached the host {behind:.3f}s or more after its slot"


def slot_gaps(results: list[dict]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(sorted(r["scheduled"] for r in results))]


def assert_slots_apart(results: list[dict], seconds: float) -> None:
    """Scheduled starts at least ``seconds`` apart: exactly, on each worker's clock (a
    result's ``scheduled`` is on its worker's clock), and across workers to within
    how well each worker knows the server's clock."""
    for worker in {r["worker"] for r in results}:
        mine = [r for r in results if r["worker"] == worker]
        assert min(slot_gaps(mine), default=seconds) >= seconds - 1e-6, worker
    assert min(slot_gaps(results)) >= seconds - CLOCK_SLACK


def sends_what_was_asked(
    env: dict[str, str],
    target: Target,
    tmp_path: Path,
    tag: str,
    run_worker: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    """``--method/--header/--header-env/--body`` and a targets file of several blocks:
    the target sees exactly what each asked for; a HEAD's result counts no bytes; a
    followed 303 turns a POST into a GET without its body.  (``tag`` keeps one
    worker's requests apart from another's on the shared target.)"""
    base = f"{target.url}/{tag}"
    body = tmp_path / "body.json"
    body.write_bytes(b'{"name": "fetchq", "n": 1}')
    asked = run(
        {**env, "TEST_TOKEN": "Bearer tok-123"},
        *("dispatch", "-j", f"{tag}-asked", "--method", "post", f"{base}/p1", f"{base}/p2"),
        *("-H", "Content-Type: application/json", "-H", "X-Twice: 1", "-H", "X-Twice: 2"),
        *("--header-env", "Authorization: TEST_TOKEN", "--body", f"@{body}"),
    )
    assert asked.returncode == 0, asked.stderr
    (tmp_path / "put.txt").write_bytes(b"put body")
    targets = tmp_path / "targets.txt"
    targets.write_text(
        f"GET {base}/t-get\nX-Account: 8675309\n\n"
        f"DELETE {base}/t-delete\n"
        f"PUT {base}/t-put\nContent-Type: text/plain\n@put.txt\n\n"
        f"HEAD {target.url}/bytes/1000?{tag}\n\n"
        f"POST {target.url}/status/303?{tag}\n@put.txt\n"
    )
    listed = run(env, "dispatch", "-j", f"{tag}-targets", "--targets", str(targets))
    assert listed.returncode == 0, listed.stderr
    worker = run_worker()
    assert worker.returncode == 0, worker.stderr
    results = {}
    for job in (f"{tag}-asked", f"{tag}-targets"):
        output = run(env, "output", "-j", job, "--until-done", "--format", "jsonl")
        assert output.returncode == 0, output.stderr
        results.update({r["url"]: r for r in jsonl(output.stdout)})
    assert all(r["error"] is None for r in results.values()), results

    seen = {s.path.split("?")[0]: s for s in target.requests(f"/{tag}/")}
    for path in ("p1", "p2"):
        request = seen[f"/{tag}/{path}"]
        headers = {name.lower(): value for name, value in request.headers}
        assert request.method == "POST"
        assert request.body == body.read_bytes()
        assert headers["content-type"] == "application/json"
        assert headers["authorization"] == "Bearer tok-123"
        assert headers["x-twice"] == "1, 2"
        assert headers["content-length"] == str(len(body.read_bytes()))
    get, delete, put = seen[f"/{tag}/t-get"], seen[f"/{tag}/t-delete"], seen[f"/{tag}/t-put"]
    assert (get.method, get.body, dict(get.headers)["X-Account"]) == ("GET", b"", "8675309")
    assert (delete.method, delete.body) == ("DELETE", b"")
    assert "X-Account" not in dict(delete.headers)
    assert (put.method, put.body, dict(put.headers)["Content-Type"]) == (
        "PUT",
        b"put body",
        "text/plain",
    )
    (head,) = target.requests(f"/bytes/1000?{tag}")
    assert head.method == "HEAD"
    assert results[f"{target.url}/bytes/1000?{tag}"]["bytes"] == 0
    assert results[f"{target.url}/bytes/1000?{tag}"]["status"] == 200
    assert results[f"{target.url}/status/303?{tag}"]["status"] == 303, "not followed"


def a_followed_303_turns_a_post_into_a_get(
    env: dict[str, str],
    target: Target,
    tag: str,
    run_worker: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    """As browsers do: the request after a 303 is a GET, without the POST's body."""
    url = f"{target.url}/status/303?{tag}-follow"
    asked = run(env, "dispatch", "-j", f"{tag}-follow", "--method", "POST", "--body", "b", url)
    assert asked.returncode == 0, asked.stderr
    worker = run_worker("--follow-redirects")
    assert worker.returncode == 0, worker.stderr
    output = run(env, "output", "-j", f"{tag}-follow", "--until-done", "--format", "jsonl")
    (result,) = jsonl(output.stdout)
    assert result["status"] == 200, result
    (first,) = target.requests(f"/status/303?{tag}-follow")
    assert (first.method, first.body) == ("POST", b"b")
    redirected = [s for s in target.requests("/") if s.path == "/" and s.arrived >= first.arrived]
    assert [(s.method, s.body) for s in redirected] == [("GET", b"")]
