"""Fetcher against a real local Target: every result type, on 127.0.0.1 only."""

from __future__ import annotations

import http.client
import socket
import string
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import urllib3.exceptions
from hypothesis import given, settings
from hypothesis import strategies as st

import fetchq
from fetchq.fetch import Fetcher, classify
from fetchq.fetch.fetcher import _plain_target
from fetchq.testing.target import Target
from fetchq.wire import api, records

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


# How the Fetcher drives the pool: the request line requests would send, the
# record make_result would build, the failures requests would report.


def test_result_is_the_record_make_result_builds(target: Target, fetcher: Fetcher) -> None:
    """The Fetcher builds its result dict itself, for speed: field for field and in
    order, it is the record ``records.make_result`` builds."""
    t = task(target.url + "/?q=record")
    r = fetcher.fetch(t, scheduled=123.5)
    expected = records.make_result(
        t,
        worker="test-host:1",
        started=r["started"],
        elapsed=r["elapsed"],
        status=200,
        nbytes=3,
        scheduled=123.5,
    )
    assert list(r.items()) == list(expected.items())


PLAIN_ALPHABET = string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@/?%#[] é\\\""


@given(rest=st.text(alphabet=PLAIN_ALPHABET, max_size=30))
@settings(max_examples=500, deadline=None)
def test_plain_urls_are_sent_as_requests_prepares_them(rest: str) -> None:
    """A URL the Fetcher sends as written (no preparing) has the request target
    requests would give it: any other goes through requests' own preparing."""
    url = "http://127.0.0.1:8080/" + rest
    plain = _plain_target(url)
    if plain is None:
        return
    prepared = requests.PreparedRequest()
    prepared.prepare_url(url, None)
    assert plain == ("http://127.0.0.1:8080", prepared.path_url), url


@pytest.mark.parametrize(
    "rest",
    ["a/./b", "a/../b", "a/..", "x?", "p%7ex", "p%2fx", "é", "a b", "a#frag", "a?b?c", "[x]"],
)
def test_urls_needing_preparation_are_not_sent_as_written(rest: str) -> None:
    url = "http://127.0.0.1:8080/" + rest
    prepared = requests.PreparedRequest()
    prepared.prepare_url(url, None)
    plain = _plain_target(url)
    assert plain is None or plain[1] == prepared.path_url, url


def test_request_lines_match_what_requests_sends(target: Target, fetcher: Fetcher) -> None:
    """Plain URLs and URLs requests rewrites alike (dot segments, escapes, non-ASCII,
    an empty query): the target sees the Fetcher ask for what requests asks for."""
    tag = f"/line-{uuid.uuid4().hex[:8]}"
    rests = ["/a?x=1", "/a/./b/../c", "/p%7ex%41?q=%7e", "/caf\u00e9?s=a b", "/e?", "/f#frag", ""]
    session = requests.Session()
    session.trust_env = False
    try:
        for rest in rests:
            assert session.get(f"{target.url}{tag}/r{rest}").status_code == 200
            for _ in range(2):  # the second time the origin is known: the quick route
                assert fetcher.fetch(task(f"{target.url}{tag}/f{rest}"))["ok"]
    finally:
        session.close()
    seen = [s.path for s in target.requests(tag)]
    by_requests = [path.replace(f"{tag}/r", "", 1) for path in seen if path.startswith(tag + "/r")]
    by_fetcher = [path.replace(f"{tag}/f", "", 1) for path in seen if path.startswith(tag + "/f")]
    assert by_fetcher == [line for line in by_requests for _ in range(2)]


def test_an_answer_without_a_body_keeps_the_connection(target: Target) -> None:
    """A 204 has no body to read: its connection still goes back for the next GET."""
    tag = f"/nobody-{uuid.uuid4().hex[:8]}"
    f = Fetcher("w")
    try:
        first = f.fetch(task(f"{target.url}/status/204?{tag}"))
        second = f.fetch(task(f"{target.url}{tag}"))
    finally:
        f.close()
    assert (first["status"], first["bytes"], second["status"]) == (204, 0, 200)
    ports = {s.client_port for s in target.requests(f"/status/204?{tag}")}
    ports |= {s.client_port for s in target.requests(tag)}
    assert len(ports) == 1, "the 204 cost its connection"


def test_robots_body_is_kept_up_to_its_limit(target: Target) -> None:
    """A robots.txt is read whole, but only its first ROBOTS_MAX_BYTES are kept."""
    text = "User-agent: *\nDisallow: /private\n" + "#" * (api.ROBOTS_MAX_BYTES + 1000)
    target.robots = text
    f = Fetcher("w")
    try:
        report = f.fetch_robots(
            {"id": 3, "job": "j", "host": "h", "url": target.url + "/robots.txt"}
        )
    finally:
        f.close()
        target.robots = None
    assert (report["status"], report["error"]) == (200, None)
    assert report["body"] == text[: api.ROBOTS_MAX_BYTES]


def test_slow_name_resolution_counts_against_the_total_timeout(
    monkeypatch: pytest.MonkeyPatch, target: Target, fetcher: Fetcher
) -> None:
    """Connecting (name resolution included) and waiting for the headers share one
    deadline: 1.5 s spent resolving leaves the headers half a second, not two (the
    fetch ends near 2 s, where separate timeouts would end it near 3.5 s)."""
    real = socket.getaddrinfo

    def slow(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "slow-dns.test":
            time.sleep(1.5)  # the resolver being slow, not a wait for a condition
            host = "127.0.0.1"
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", slow)
    r = fetcher.fetch(task(f"http://slow-dns.test:{target.port}/slow?s=10", timeout=2.0))
    assert error_type(r) == "timeout", r["error"]
    assert 2.0 * 0.9 <= r["elapsed"] < 3.0, r["elapsed"]


def _by_requests(url: str, timeout: float) -> tuple[str, str]:
    """How ``classify`` names the failure of a GET sent through requests' own session."""
    session = requests.Session()
    session.trust_env = False
    try:
        session.get(url, timeout=(min(5.0, timeout), timeout), stream=True).close()
    except requests.RequestException as exc:
        return classify(exc)
    finally:
        session.close()
    raise AssertionError(f"{url} did not fail through requests")


@pytest.mark.parametrize("path", ["/drop", "/reset", "/slow?s=10", "malformed", "refused", "tls"])
def test_failures_read_as_they_do_through_requests(
    target: Target, fetcher: Fetcher, path: str
) -> None:
    """urllib3's exceptions are mapped to requests' own as its adapter maps them, so
    a failure gets the type and message it gets through ``requests.get``."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        url = {
            "malformed": f"http://127.0.0.1:{port}/",
            "refused": f"http://127.0.0.1:{port}/",
            "tls": f"https://127.0.0.1:{target.port}/",
        }.get(path, target.url + path)
        if path == "malformed":
            listener.listen(2)
            server = threading.Thread(target=_answer_garbage, args=(listener, 2), daemon=True)
            server.start()
        else:
            listener.close()
        r = fetcher.fetch(task(url, timeout=0.5))
        expected = _by_requests(url, 0.5)
    kind, message = r["error"]["type"], r["error"]["message"]
    if kind == "timeout":
        message = message.replace(" (task timeout 0.5s)", "")
    assert (kind, message) == expected


def _answer_garbage(listener: socket.socket, times: int) -> None:
    for _ in range(times):
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HELLO THERE\r\n\r\n")


def test_proxied_requests_keep_the_full_url(
    target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through a proxy the request line carries the whole URL, every time, not only
    the first time an origin is met."""
    monkeypatch.setenv("http_proxy", target.url)
    f = Fetcher("test-host:1")
    try:
        results = [f.fetch(task(f"http://proxied.invalid/again?i={i}")) for i in range(3)]
    finally:
        f.close()
    assert [r["status"] for r in results] == [200, 200, 200], results
    assert [target.hits()[f"http://proxied.invalid/again?i={i}"] for i in range(3)] == [1, 1, 1]
