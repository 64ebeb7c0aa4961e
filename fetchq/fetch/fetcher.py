"""One request with its deadline, its body counted, its failure named: a result, always.

A ``Fetcher`` sends its requests through the urllib3 connection pools that
requests' own transport adapter holds (one pool per origin, found once), with
the headers, timeout and retry policy built once, and maps urllib3's
exceptions to requests' own on the error path only, as the adapter does.  The
Python a request costs on top of the pool's own is what a worker spends per
request besides the network itself, so it is kept to a few dict look-ups.
"""

from __future__ import annotations

import email.utils
import math
import os
import re
import time
import urllib.request
from collections.abc import Mapping
from typing import Any, NamedTuple

import requests
import requests.adapters
import requests.exceptions
import requests.structures
import requests.utils
import urllib3
import urllib3.exceptions as u3

from fetchq import defaults
from fetchq.fetch.failures import DeadlineExceeded, PartialAnswer, classify, shorten
from fetchq.wire import api, records
from fetchq.wire.specs import Spec

CHUNK = 65536
"""Bytes asked of the socket per body read."""


class Outgoing(NamedTuple):
    """A spec as a fetch thread sends it, made once per spec (``outgoing``)."""

    method: str
    headers: dict[str, str]
    """Every header the request carries, the fetcher's own (User-Agent, Accept...) under
    the spec's."""
    own_headers: dict[str, str]
    """The spec's alone: what a ``requests.Session`` adds its own to."""
    body: bytes | None


def base_headers(user_agent: str = api.USER_AGENT) -> dict[str, str]:
    """What every request says of itself unless its spec says otherwise."""
    headers = {str(k): str(v) for k, v in requests.utils.default_headers().items()}
    headers["User-Agent"] = user_agent
    return headers


def outgoing(spec: Spec, user_agent: str = api.USER_AGENT) -> Outgoing:
    """``spec`` ready to send: a name given twice is sent once, its values joined by
    commas (RFC 9110, section 5.3)."""
    own: dict[str, str] = {}
    for name, value in spec.headers:
        own[name] = f"{own[name]}, {value}" if name in own else value
    mine = {name.lower() for name in own}
    headers = {k: v for k, v in base_headers(user_agent).items() if k.lower() not in mine}
    headers.update(own)
    return Outgoing(spec.method, headers, own, spec.body or None)


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
    if type(value) is float and 0 < value < math.inf:  # the usual case, checked first
        return value
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
    cookies over to the next.  (``Fetcher`` finds its pools through the first
    hook; the second serves ``--follow-redirects``, which goes through a
    ``requests.Session``.)
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


_PLAIN_URL = re.compile(r"(https?://[^/?#\\]+)(/[A-Za-z0-9\-._~!$&'()*+,;=:@/?]*)")
"""An http(s) URL whose path and query requests would send exactly as written.

requests prepares a URL by parsing it, putting its host in IDNA form,
percent-encoding what may not stand in a request line, normalising existing
escapes and removing dot segments.  A path and query made only of these
characters (unreserved, sub-delims, ``:@/?``), with no ``%``, no ``/.`` and
not ending in ``?``, come out of all that unchanged, so the request line is the URL's own text
after its origin.  Any other URL is prepared by requests, as before;
tests/test_fetch.py checks the two agree."""


def _plain_target(url: str) -> tuple[str, str] | None:
    """``(origin, path and query)`` of a URL requests would send as written, else None."""
    match = _PLAIN_URL.fullmatch(url)
    if match is None:
        return None
    origin, target = match.groups()
    if "/." in target or target[-1] == "?":  # dot segments; an empty query is dropped
        return None
    return origin, target


def _as_requests_error(exc: Exception) -> Exception:
    """What requests' ``HTTPAdapter.send`` raises for urllib3's ``exc``: its own table,
    in its order, so that ``classify`` names a failure as it did through requests."""
    if isinstance(exc, u3.ProtocolError | OSError):
        return requests.exceptions.ConnectionError(exc)
    if isinstance(exc, u3.MaxRetryError):
        reason = exc.reason
        if isinstance(reason, u3.ConnectTimeoutError) and not isinstance(
            reason, u3.NewConnectionError
        ):
            return requests.exceptions.ConnectTimeout(exc)
        if isinstance(reason, u3.ResponseError):
            return requests.exceptions.RetryError(exc)
        if isinstance(reason, u3.ProxyError):
            return requests.exceptions.ProxyError(exc)
        if isinstance(reason, u3.SSLError):
            return requests.exceptions.SSLError(exc)
        return requests.exceptions.ConnectionError(exc)
    if isinstance(exc, u3.ClosedPoolError):
        return requests.exceptions.ConnectionError(exc)
    if isinstance(exc, u3.ProxyError):
        return requests.exceptions.ProxyError(exc)
    if isinstance(exc, u3.SSLError):
        return requests.exceptions.SSLError(exc)
    if isinstance(exc, u3.ReadTimeoutError):
        return requests.exceptions.ReadTimeout(exc)
    if isinstance(exc, u3.InvalidHeader):
        return requests.exceptions.InvalidHeader(exc)
    return exc


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
        # requests' own default headers and ours, as a plain dict: urllib3 copies
        # the mapping it is given once per request, and a dict copies fastest.
        self._headers = base_headers(user_agent)
        # One thread uses this session, so small pools suffice; no retries:
        # attempts are counted and retried by the queue, not hidden in here.
        adapter = _FetchAdapter(pool_connections=POOLS, pool_maxsize=2, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self._adapter = adapter
        self._retries = adapter.max_retries
        """requests' policy (no retry, read errors raised as they are), built once."""
        # requests reads the environment (proxy variables, no_proxy, ~/.netrc, CA
        # bundle) again on every call, which costs more CPU than the request
        # itself; it is read once here instead.  Cookies are not carried from one
        # task to the next: each task is a fetch of its own.
        self.session.trust_env = False
        self._verify: bool | str = (
            os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        )
        self._uses_proxies = bool(urllib.request.getproxies())
        self._routes: dict[str, Any] = {}
        """The connection pool of each origin (as the task's URL spells it) met without
        a proxy, its CA settings applied once."""
        self._timeouts: dict[float, urllib3.Timeout] = {}
        """urllib3's timeout for each task timeout met (urllib3 copies it per request)."""

    def _proxies_for(self, url: str) -> dict[str, str]:
        """Proxy variables are honoured; looked up per URL only when any is set."""
        if not self._uses_proxies:
            return {}
        return dict(requests.utils.get_environ_proxies(url))

    def fetch(self, task: dict[str, Any], scheduled: float | None = None) -> dict[str, Any]:
        """Fetch ``task['url']`` and return its result; never raises.

        ``scheduled``: when the request was due, on this machine's clock.  A task whose
        ``spec`` is an ``Outgoing`` is sent with its method, headers and body; any other
        is a GET."""
        started = time.time()
        t0 = time.perf_counter()
        status: int | None = None
        nbytes = 0
        retry_after: float | None = None
        error: dict[str, str] | None = None
        timeout = self.default_timeout
        try:
            timeout = _task_timeout(task, self.default_timeout)
            spec = task.get("spec")
            status, nbytes, retry_after, _ = self._get(
                task["url"], timeout, t0, spec if type(spec) is Outgoing else None
            )
        except PartialAnswer as part:
            status, nbytes = part.status, part.nbytes
            error = self._error(part.cause, timeout)
        except Exception as exc:
            error = self._error(exc, timeout)
        elapsed = time.perf_counter() - t0
        if type(task) is dict and error is None:
            try:  # records.make_result's record, built here: one dict, no call
                return {
                    "v": records.RECORD_VERSION,
                    "id": task["id"],
                    "job": task["job"],
                    "url": task["url"],
                    "ok": status is not None and 200 <= status < 400,
                    "status": status,
                    "elapsed": elapsed,
                    "bytes": nbytes,
                    "error": None,
                    "attempt": task.get("attempt", 1),
                    "worker": self.worker,
                    "started": started,
                    "scheduled": scheduled,
                    "retry_after": retry_after,
                }
            except KeyError:
                pass
        return _result(
            task,
            worker=self.worker,
            started=started,
            elapsed=elapsed,
            status=status,
            nbytes=nbytes,
            error=error,
            scheduled=scheduled,
            retry_after=retry_after,
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

    def _timeout(self, timeout: float) -> urllib3.Timeout:
        """urllib3's timeout for a task's total seconds: the connect timeout capped by
        it, and the wait for the headers by what connecting left of it."""
        found = self._timeouts.get(timeout)
        if found is None:
            if len(self._timeouts) >= 64:
                self._timeouts.clear()
            found = urllib3.Timeout(
                connect=min(self.connect_timeout, timeout), read=timeout, total=timeout
            )
            self._timeouts[timeout] = found
        return found

    def _route(self, url: Any) -> tuple[Any, str]:
        """The connection pool for ``url`` and the request target to send it.

        A URL requests would send as written, to an origin met before, costs a
        regex and a dict look-up; any other is prepared by requests and its pool
        found by the adapter, as ``HTTPAdapter.send`` does."""
        plain = _plain_target(url) if type(url) is str and not self._uses_proxies else None
        if plain is not None:
            pool = self._routes.get(plain[0])
            if pool is not None and pool.pool is not None:  # (None: closed by the manager)
                return pool, plain[1]
        prepared = requests.PreparedRequest()
        prepared.method = "GET"
        prepared.prepare_url(url, None)
        full = prepared.url or ""
        proxies = self._proxies_for(full)
        # A CA bundle path costs a stat() inside requests: only https needs it.
        verify = self._verify if full[:6].lower() == "https:" else True
        try:
            pool = self._adapter.get_connection_with_tls_context(prepared, verify, proxies)
        except u3.LocationValueError as exc:
            raise requests.exceptions.InvalidURL(exc, request=prepared) from exc
        self._adapter.cert_verify(pool, full, verify, None)
        target = self._adapter.request_url(prepared, proxies)
        if plain is not None:
            if len(self._routes) >= POOLS:
                self._routes.clear()
            self._routes[plain[0]] = pool
        return pool, target

    def _open(self, url: Any, timeout: float, spec: Outgoing | None) -> Any:
        """Send the request; return urllib3's response once its headers are in, the body
        unread (and its connection still held by it).

        Redirects followed are requests' own: a 303, and a 301 or 302 to a POST, turn
        it into a GET without a body, as browsers do."""
        if self.follow_redirects:
            return self.session.request(
                spec.method if spec else "GET",
                url,
                headers=spec.own_headers if spec else None,
                data=spec.body if spec else None,
                stream=True,
                timeout=(min(self.connect_timeout, timeout), timeout),
                allow_redirects=True,
                proxies=self._proxies_for(url) if isinstance(url, str) else {},
                verify=self._verify,
            ).raw
        # Session.send reads the whole body of a 3xx answer even when told not
        # to follow it (to offer Response.next), outside any deadline and with
        # the body decoded: the pool leaves the body to us.
        pool, target = self._route(url)
        try:
            return pool.urlopen(
                spec.method if spec else "GET",
                target,
                body=spec.body if spec else None,
                headers=spec.headers if spec else self._headers,
                retries=self._retries,
                redirect=False,
                assert_same_host=False,
                timeout=self._timeout(timeout),
                preload_content=False,
                decode_content=False,
                release_conn=False,
            )
        except Exception as exc:
            mapped = _as_requests_error(exc)
            if mapped is exc:
                raise
            raise mapped from exc

    def _get(
        self, url: Any, timeout: float, t0: float, spec: Outgoing | None = None, keep: int = 0
    ) -> _Answer:
        """Send the request and read the body within the deadline (keeping the first
        ``keep`` bytes of it, decoded, only when asked: a robots.txt)."""
        deadline = t0 + timeout
        resp = self._open(url, timeout, spec)
        status: int = resp.status
        nbytes = 0
        kept = bytearray()
        done = False
        try:
            conn = resp.connection
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
                data = resp.read1(CHUNK, decode_content=bool(keep))
                if not data:
                    break
                nbytes += len(data)
                if keep:
                    if len(kept) < keep:
                        kept += data[: keep - len(kept)]
                elif resp.length_remaining == 0:
                    # All Content-Length bytes are in, and urllib3 has put the
                    # connection back in its pool: no read to learn the body ended.
                    break
            done = True
        except Exception as exc:
            raise PartialAnswer(status, nbytes, exc) from exc
        finally:
            if not done:  # the rest of the body is not read: the connection goes
                resp.close()
            resp.release_conn()
        wait = None
        if status in api.RETRY_AFTER_STATUSES:
            wait = retry_after_seconds(resp.headers.get("Retry-After"), time.time())
        return _Answer(status, nbytes, wait, bytes(kept))

    def close(self) -> None:
        """Close the session's pooled connections."""
        self.session.close()
