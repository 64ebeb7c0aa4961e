"""Fetcher against a real local Target: every result type, on 127.0.0.1 only."""

from __future__ import annotations

import http.client
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import urllib3.exceptions

import fetchq
from fetchq.fetch import Fetcher, classify
from fetchq.testing.target import Target
from fetchq.wire import records

BAD_HOST = "no-such-host.invalid"


@pytest.fixture(scope="module")
def target() -> Iterator[Target]:
    with Target("127.0.0.1", 0) as t:
        yield t


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """requests honours proxy variables: these fetches must go straight to 127.0.0.1."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.fixture
def fetcher() -> Iterator[Fetcher]:
    f = Fetcher("test-host:1")
    yield f
    f.close()


def task(url: Any, timeout: float = 5.0) -> dict[str, Any]:
    return records.make_task(7, "job-a", url, 2, timeout, time.time())


def error_type(result: dict[str, Any]) -> str | None:
    return result["error"]["type"] if result["error"] else None


def test_ok_result_has_every_field(target: Target, fetcher: Fetcher) -> None:
    before = time.time()
    t = task(target.url + "/")
    r = fetcher.fetch(t)
    assert r["ok"] is True
    assert r["status"] == 200
    assert r["bytes"] == len(b"ok\n")
    assert r["error"] is None
    assert (r["id"], r["job"], r["url"], r["attempt"]) == (7, "job-a", t["url"], 2)
    assert r["worker"] == "test-host:1"
    assert before <= r["started"] <= time.time()
    assert 0 <= r["elapsed"] < 5
    assert set(r) == set(records.RESULT_FIELDS)


def test_query_strings_are_ignored(target: Target, fetcher: Fetcher) -> None:
    r = fetcher.fetch(task(target.url + "/?q=123"))
    assert (r["ok"], r["status"], r["bytes"]) == (True, 200, 3)


@pytest.mark.parametrize("code", [404, 500])
def test_error_status_is_a_result_not_an_error(target: Target, fetcher: Fetcher, code: int) -> None:
    r = fetcher.fetch(task(f"{target.url}/status/{code}"))
    assert r["ok"] is False
    assert r["status"] == code
    assert r["error"] is None
    assert r["bytes"] > 0


def test_redirect_is_not_followed_and_its_body_counted(target: Target, fetcher: Fetcher) -> None:
    r = fetcher.fetch(task(target.url + "/status/302"))
    assert (r["ok"], r["status"], r["error"]) == (True, 302, None)
    assert r["bytes"] == len(b"redirect\n")


def test_redirect_followed_when_asked(target: Target) -> None:
    f = Fetcher("w", follow_redirects=True)
    try:
        r = f.fetch(task(target.url + "/status/302"))
    finally:
        f.close()
    assert (r["ok"], r["status"], r["bytes"]) == (True, 200, 3)


def test_large_body_counts_every_byte(target: Target, fetcher: Fetcher) -> None:
    r = fetcher.fetch(task(target.url + "/bytes/1000000"))
    assert (r["ok"], r["status"], r["bytes"]) == (True, 200, 1_000_000)


def test_slow_answer_times_out_within_the_task_timeout(target: Target, fetcher: Fetcher) -> None:
    timeout = 0.5
    t0 = time.perf_counter()
    r = fetcher.fetch(task(target.url + "/slow?s=10", timeout=timeout))
    assert time.perf_counter() - t0 < timeout + 2
    assert error_type(r) == "timeout"
    assert r["ok"] is False
    assert r["status"] is None
    assert timeout * 0.9 <= r["elapsed"] < timeout + 2


def test_trickled_body_is_cut_at_the_total_deadline(target: Target, fetcher: Fetcher) -> None:
    # One byte every 0.2 s never trips a per-read timeout; the total one must.
    timeout = 0.5
    r = fetcher.fetch(task(target.url + "/drip?bytes=50&s=10", timeout=timeout))
    assert error_type(r) == "timeout"
    assert r["status"] == 200
    assert r["ok"] is False
    assert 0 <= r["bytes"] < 50
    assert r["elapsed"] < timeout + 2


@pytest.mark.parametrize("path", ["/drop", "/reset"])
def test_dropped_connection_is_reset(target: Target, fetcher: Fetcher, path: str) -> None:
    r = fetcher.fetch(task(target.url + path))
    assert error_type(r) == "reset"
    assert r["ok"] is False
    assert r["status"] is None
    # The same fetcher still works afterwards.
    assert fetcher.fetch(task(target.url + "/"))["ok"] is True


def test_connection_refused(fetcher: Fetcher) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = fetcher.fetch(task(f"http://127.0.0.1:{port}/"))
    assert error_type(r) == "refused"
    assert r["status"] is None


def test_tls_to_a_plain_http_server(target: Target, fetcher: Fetcher) -> None:
    r = fetcher.fetch(task(f"https://127.0.0.1:{target.port}/"))
    assert error_type(r) == "tls"
    assert r["elapsed"] < 5


def test_dns_failure(monkeypatch: pytest.MonkeyPatch, fetcher: Fetcher) -> None:
    real = socket.getaddrinfo
    asked: list[str] = []

    def fake(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == BAD_HOST:
            asked.append(host)
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    r = fetcher.fetch(task(f"http://{BAD_HOST}/"))
    assert asked == [BAD_HOST]
    assert error_type(r) == "dns"
    assert "Name or service not known" in r["error"]["message"]


def test_malformed_answer_is_protocol(fetcher: Fetcher) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]

        def serve() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(b"HELLO THERE\r\n\r\n")

        server = threading.Thread(target=serve, daemon=True)
        server.start()
        r = fetcher.fetch(task(f"http://127.0.0.1:{port}/"))
        server.join(5)
    assert error_type(r) == "protocol"


@pytest.mark.parametrize(
    "url",
    ["http://", "not a url", "ftp://127.0.0.1/", "http://[::1", "http://127.0.0.1:99999/"],
)
def test_invalid_url(fetcher: Fetcher, url: str) -> None:
    r = fetcher.fetch(task(url))
    assert error_type(r) == "invalid_url"
    assert r["url"] == url
    assert len(r["error"]["message"]) <= 200


@pytest.mark.parametrize("bad", [None, 12345, b"\xff\xfe", "", "http://127.0.0.1:0/"])
def test_garbage_urls_never_raise(fetcher: Fetcher, bad: Any) -> None:
    r = fetcher.fetch(task(bad))
    assert r["ok"] is False
    assert r["error"] is not None


@pytest.mark.parametrize("bad_task", [{}, {"id": 1}, None, "http://127.0.0.1/", 3])
def test_malformed_tasks_never_raise(fetcher: Fetcher, bad_task: Any) -> None:
    r = fetcher.fetch(bad_task)
    assert r["ok"] is False
    assert error_type(r) == "internal"
    assert r["attempt"] == 1


@pytest.mark.parametrize("timeout", [None, "x", 0, -1, float("nan"), float("inf")])
def test_unusable_timeouts_fall_back_to_the_default(target: Target, timeout: Any) -> None:
    """A 3 s answer against a default of 0.3 s: the fetch ends by timeout after the
    default, not at once (0 or a negative value passed on) and not after 3 s or never
    (None or infinity passed on)."""
    t = task(target.url + "/slow?s=3")
    t["timeout"] = timeout
    f = Fetcher("test-host:1", default_timeout=0.3)
    try:
        r = f.fetch(t)
    finally:
        f.close()
    assert error_type(r) == "timeout", r["error"]
    assert "(task timeout 0.3s)" in r["error"]["message"], r["error"]
    assert 0.3 <= r["elapsed"] < 3.0, r["elapsed"]


def test_user_agent_and_keep_alive(target: Target) -> None:
    """The target sees our User-Agent on every request, and all twenty requests
    to one origin on one TCP connection (one client port)."""
    tag = f"/ua-{uuid.uuid4().hex[:8]}"
    f = Fetcher("w", user_agent="probe/1")
    try:
        results = [f.fetch(task(f"{target.url}{tag}?i={i}")) for i in range(20)]
    finally:
        f.close()
    assert all(r["ok"] for r in results)
    seen = target.requests(tag)
    assert sorted(s.path for s in seen) == sorted(f"{tag}?i={i}" for i in range(20))
    assert {s.user_agent for s in seen} == {"probe/1"}
    assert len({s.client_port for s in seen}) == 1, "each request opened its own connection"


def test_default_user_agent_names_fetchq_and_its_version(target: Target) -> None:
    tag = f"/ua-{uuid.uuid4().hex[:8]}"
    f = Fetcher("w")
    try:
        assert f.fetch(task(f"{target.url}{tag}"))["ok"]
    finally:
        f.close()
    assert [s.user_agent for s in target.requests(tag)] == [f"fetchq/{fetchq.__version__}"]


# classify on exceptions built the way requests and urllib3 raise them, for
# the failures a loopback target cannot produce on demand.


def _max_retry(reason: Exception) -> urllib3.exceptions.MaxRetryError:
    try:
        raise urllib3.exceptions.MaxRetryError(None, "/", reason) from reason  # type: ignore[arg-type]
    except urllib3.exceptions.MaxRetryError as e:
        return e


def test_classify_connect_timeout() -> None:
    reason = urllib3.exceptions.ConnectTimeoutError(None, "timed out")
    exc = requests.ConnectTimeout(_max_retry(reason))
    assert classify(exc)[0] == "connect_timeout"


def test_classify_new_connection_error_is_not_a_connect_timeout() -> None:
    # urllib3's NewConnectionError subclasses ConnectTimeoutError.
    reason = urllib3.exceptions.NewConnectionError(None, "no route")  # type: ignore[arg-type]
    reason.__cause__ = OSError(113, "No route to host")
    kind, message = classify(requests.ConnectionError(_max_retry(reason)))
    assert kind == "connection"
    assert "No route to host" in message


def test_classify_read_timeout_and_protocol() -> None:
    assert classify(requests.ReadTimeout("Read timed out."))[0] == "timeout"
    bad = urllib3.exceptions.ProtocolError("Connection aborted.", http.client.BadStatusLine("x"))
    assert classify(requests.ConnectionError(bad))[0] == "protocol"
    gone = urllib3.exceptions.ProtocolError(
        "Connection aborted.", http.client.RemoteDisconnected("closed")
    )
    assert classify(requests.ConnectionError(gone))[0] == "reset"
    assert classify(requests.exceptions.ChunkedEncodingError("bad chunk"))[0] == "protocol"


def test_classify_redirects_and_internal() -> None:
    assert classify(requests.TooManyRedirects("Exceeded 30 redirects."))[0] == (
        "too_many_redirects"
    )
    kind, message = classify(ZeroDivisionError("x" * 1000))
    assert kind == "internal"
    assert len(message) <= 200


def test_proxy_variables_are_honoured(target: Target, monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment is read once per Fetcher, but http_proxy still routes requests."""
    monkeypatch.setenv("http_proxy", target.url)
    fetcher = Fetcher("test-host:1")
    try:
        # The name never resolves: only the proxy (our target on 127.0.0.1) is contacted.
        result = fetcher.fetch(task("http://through-proxy.invalid/proxied?x=1"))
    finally:
        fetcher.close()
    assert result["status"] == 200, result
    assert target.hits()["http://through-proxy.invalid/proxied?x=1"] == 1
