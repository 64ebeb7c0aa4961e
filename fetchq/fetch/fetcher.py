"""One GET with its deadline, its body counted, its failure named: a result, always.

A ``Fetcher`` drives requests' own transport adapter directly (one pool per
origin, no cookie jars, the environment read once), which is most of what a
worker spends per request besides the network itself.
"""

from __future__ import annotations

import email.utils
import math
import os
import time
import urllib.request
from collections.abc import Mapping
from typing import Any, NamedTuple

import requests
import requests.adapters
import requests.structures
import requests.utils

from fetchq import defaults
from fetchq.fetch.failures import DeadlineExceeded, PartialAnswer, classify, shorten
from fetchq.wire import api, records

CHUNK = 65536
"""Bytes asked of the socket per body read."""


class _Answer(NamedTuple):
    status: int | None = None
    nbytes: int = 0
    retry_after: float | None = None
    body: bytes = b""


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """Seconds a Retry-After header asks for: delta-seconds or an HTTP date (RFC 9110);
    None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


def _task_timeout(task: Mapping[str, Any], default: float) -> float:
    """The task's total seconds, or ``default`` when it is missing or unusable."""
    value = task.get("timeout")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        return default
    return value


def _result(task: Any, **fields: Any) -> dict[str, Any]:
    """``records.make_result``, even for a task that lacks fields or is no dict."""
    try:
        return records.make_result(task, **fields)
    except Exception:
        get = task.get if isinstance(task, Mapping) else (lambda _key, default=None: default)
        safe = {
            "id": get("id"),
            "job": get("job"),
            "url": get("url"),
            "attempt": get("attempt", 1),
        }
        return records.make_result(safe, **fields)


POOLS = 16
"""Hosts a fetch thread keeps connections to (each with up to two kept alive)."""


class _FetchAdapter(requests.adapters.HTTPAdapter):
    """requests' own transport adapter, minus work a fetch queue does not need.

    Both overrides are the hooks requests documents for subclassing adapters:
    a connection pool is found once per origin instead of parsing every URL
    again, and responses get no cookies extracted, since no task carries
    cookies over to the next.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._pools: dict[tuple[str, Any, Any], Any] = {}

    def get_connection_with_tls_context(
        self,
        request: requests.PreparedRequest,
        verify: Any,
        proxies: Any = None,
        cert: Any = None,
    ) -> Any:
        if proxies or not isinstance(request.url, str):
            return super().get_connection_with_tls_context(request, verify, proxies, cert)
        key = (_origin(request.url), verify, cert)
        pool = self._pools.get(key)
        if pool is None or pool.pool is None:  # never seen, or closed by the pool manager
            pool = super().get_connection_with_tls_context(request, verify, proxies, cert)
            if len(self._pools) >= POOLS:
                self._pools.clear()
            self._pools[key] = pool
        return pool

    def build_response(self, req: requests.PreparedRequest, resp: Any) -> requests.Response:
        response = requests.Response()
        response.status_code = resp.status
        response.headers = requests.structures.CaseInsensitiveDict(resp.headers)
        response.raw = resp
        response.reason = resp.reason
        response.url = req.url or ""
        response.request = req
        response.connection = self
        return response


def _origin(url: str) -> str:
    """``scheme://[user@]host[:port]`` of a prepared URL: everything before its path.

    Not ``fetchq.urls.host_key``, which politeness counts by: this only finds
    the pool again, and urllib3 picks that pool itself, by scheme, host and port.
    requests has already lower-cased the host and put it in IDNA form, so the
    spellings left (user info, an explicit default port) take a second entry here
    for the same pool, and a trailing dot keeps a pool of its own, as it does in
    requests.  A slice costs 0.2 us a request where host_key would cost 1 us more."""
    slash = url.find("/", url.find("//") + 2)
    return url if slash < 0 else url[:slash]


class Fetcher:
    """One per fetch thread: owns its own requests.Session (keep-alive).

    A session is not safe to share between threads, and one per thread lets
    each thread keep its own connections alive across tasks.
    """

    def __init__(
        self,
        worker: str,
        *,
        connect_timeout: float = defaults.CONNECT_TIMEOUT,
        follow_redirects: bool = False,
        user_agent: str = api.USER_AGENT,
        default_timeout: float = defaults.TASK_TIMEOUT,
    ) -> None:
        """``default_timeout``: the total seconds of a task whose own timeout is missing
        or unusable (none, zero, negative, not a number, infinite)."""
        self.worker = worker
        self.connect_timeout = connect_timeout
        self.default_timeout = default_timeout
        self.follow_redirects = follow_redirects
        self.session = requests.Session()
        self.session.headers["User-Agent"] = user_agent
        self._headers: Any = requests.structures.CaseInsensitiveDict(self.session.headers)
        # One thread uses this session, so small pools suffice; no retries:
        # attempts are counted and retried by the queue, not hidden in here.
        adapter = _FetchAdapter(pool_connections=POOLS, pool_maxsize=2, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self._adapter = adapter
        # requests reads the environment (proxy variables, no_proxy, ~/.netrc, CA
        # bundle) again on every call, which costs more CPU than the request
        # itself; it is read once here instead.  Cookies are not carried from one
        # task to the next: each task is a fetch of its own.
        self.session.trust_env = False
        self._verify: bool | str = (
            os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        )
        self._uses_proxies = bool(urllib.request.getproxies())

    def _proxies_for(self, url: str) -> dict[str, str]:
        """Proxy variables are honoured; looked up per URL only when any is set."""
        if not self._uses_proxies:
            return {}
        return dict(requests.utils.get_environ_proxies(url))

    def fetch(self, task: dict[str, Any], scheduled: float | None = None) -> dict[str, Any]:
        """GET ``task['url']`` and return its result; never raises.

        ``scheduled``: when the request was due, on this machine's clock."""
        started = time.time()
        t0 = time.perf_counter()
        answer = _Answer()
        error: dict[str, str] | None = None
        timeout = self.default_timeout
        try:
            timeout = _task_timeout(task, self.default_timeout)
            answer = self._get(task["url"], timeout, t0)
        except PartialAnswer as part:
            answer = _Answer(part.status, part.nbytes)
            error = self._error(part.cause, timeout)
        except Exception as exc:
            error = self._error(exc, timeout)
        return _result(
            task,
            worker=self.worker,
            started=started,
            elapsed=time.perf_counter() - t0,
            status=answer.status,
            nbytes=answer.nbytes,
            error=error,
            scheduled=scheduled,
            retry_after=answer.retry_after,
        )

    def fetch_robots(self, task: dict[str, Any]) -> dict[str, Any]:
        """GET a robots.txt for a task of kind ``robots``: what ``robots`` reports."""
        t0 = time.perf_counter()
        report: dict[str, Any] = {
            "id": task.get("id"),
            "attempt": task.get("attempt", 1),
            "job": task.get("job"),
            "host": task.get("host"),
            "status": None,
            "body": None,
            "error": None,
        }
        timeout = _task_timeout(task, self.default_timeout)
        try:
            answer = self._get(task["url"], timeout, t0, keep=api.ROBOTS_MAX_BYTES)
            report["status"] = answer.status
            report["body"] = answer.body.decode("utf-8", errors="replace")
        except PartialAnswer as part:
            report["status"] = part.status
            report["error"] = self._error(part.cause, timeout)
        except Exception as exc:
            report["error"] = self._error(exc, timeout)
        return report

    def _error(self, exc: BaseException, timeout: float) -> dict[str, str]:
        try:
            kind, message = classify(exc)
            if kind == "timeout" and not isinstance(exc, DeadlineExceeded):
                message = f"{message} (task timeout {timeout:g}s)"
            elif kind == "connect_timeout":
                limit = min(self.connect_timeout, timeout)
                message = f"{message} after {limit:g}s"
        except Exception as bug:  # classify must not turn a result into a crash
            kind, message = "internal", shorten(f"{type(bug).__name__}: {bug}")
        return records.make_error(kind, message)

    def _send(self, url: Any, timeout: tuple[float, float]) -> requests.Response:
        """Send the GET and return once the headers are in (the body is left unread)."""
        proxies = self._proxies_for(url) if isinstance(url, str) else {}
        if self.follow_redirects:
            return self.session.get(
                url,
                stream=True,
                timeout=timeout,
                allow_redirects=True,
                proxies=proxies,
                verify=self._verify,
            )
        # Session.send reads the whole body of a 3xx answer even when told not
        # to follow it (to offer Response.next), outside any deadline and with
        # the body decoded; sending through the adapter leaves the body to us.
        # A GET with no body, auth or cookies needs only its URL and headers
        # prepared; PreparedRequest.prepare would do all the rest, every time.
        prepared = requests.PreparedRequest()
        prepared.method = "GET"
        prepared.prepare_url(url, None)
        prepared.headers = self._headers.copy()
        # A CA bundle path costs a stat() per request inside requests: only https needs it.
        verify = self._verify if prepared.url and prepared.url[:6].lower() == "https:" else True
        return self._adapter.send(
            prepared, stream=True, timeout=timeout, verify=verify, proxies=proxies
        )

    def _get(self, url: Any, timeout: float, t0: float, keep: int = 0) -> _Answer:
        """Send the GET and read the body within the deadline (keeping the first
        ``keep`` bytes of it, decoded, only when asked: a robots.txt)."""
        deadline = t0 + timeout
        resp = self._send(url, (min(self.connect_timeout, timeout), timeout))
        nbytes = 0
        kept = bytearray()
        try:
            raw = resp.raw
            conn = getattr(raw, "connection", None)
            sock = getattr(conn, "sock", None)
            while True:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    raise DeadlineExceeded(
                        f"total timeout of {timeout:g}s exceeded after {nbytes} body bytes"
                    )
                # read1 makes at most one socket read, so a server that trickles
                # its body cannot stretch one read past the deadline.
                if sock is not None:
                    sock.settimeout(remaining)
                data = raw.read1(CHUNK, decode_content=bool(keep))
                if not data:
                    break
                nbytes += len(data)
                if len(kept) < keep:
                    kept += data[: keep - len(kept)]
        except Exception as exc:
            raise PartialAnswer(resp.status_code, nbytes, exc) from exc
        finally:
            resp.close()
        wait = None
        if resp.status_code in api.RETRY_AFTER_STATUSES:
            wait = retry_after_seconds(resp.headers.get("Retry-After"), time.time())
        return _Answer(resp.status_code, nbytes, wait, bytes(kept))

    def close(self) -> None:
        """Close the session's pooled connections."""
        self.session.close()
