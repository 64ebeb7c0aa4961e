"""The HTTP target every case fetches: nginx with the bench's own config, else fetchq's.

nginx (one worker process, keep-alive, a 3-byte body, no access log) is fast
enough that it is not what limits a Python client on this box.  Without it,
``python -m fetchq.testing.target`` runs in a process of its own: slower, so the
figures then say more about the target than about the clients.
"""

from __future__ import annotations

import os
import shutil
import urllib.request
from dataclasses import dataclass

from harness import (
    PYTHON,
    BenchError,
    Processes,
    free_port,
    tool_version,
    wait_for_log,
    wait_for_port,
)

BODY = "ok\n"

NGINX_CONF = """\
worker_processes 1;
daemon off;
master_process on;
pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    client_body_temp_path {folder}/body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
    keepalive_timeout 75s;
    keepalive_requests 100000000;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            default_type text/plain;
            return 200 "{body}";
        }}
    }}
}}
"""


def find_nginx() -> str | None:
    """nginx lives in /usr/sbin, which is not on every user's PATH."""
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin" + os.pathsep + "/sbin"
    return shutil.which("nginx", path=path)


@dataclass
class HttpTarget:
    name: str
    version: str | None
    url: str
    """Base URL without a trailing slash, e.g. http://127.0.0.1:PORT"""
    pid: int


def start_target(procs: Processes, prefer_nginx: bool = True) -> HttpTarget:
    nginx = find_nginx() if prefer_nginx else None
    target = _start_nginx(procs, nginx) if nginx else _start_fetchq_target(procs)
    _check(target.url)
    return target


def _start_nginx(procs: Processes, nginx: str) -> HttpTarget:
    folder = procs.folder / "nginx"
    folder.mkdir(exist_ok=True)
    port = free_port()
    conf = folder / "nginx.conf"
    conf.write_text(NGINX_CONF.format(folder=folder, port=port, body=BODY.replace("\n", "\\n")))
    command = [nginx, "-p", str(folder), "-c", str(conf), "-e", str(folder / "error.log")]
    child = procs.start("nginx", command)
    wait_for_port(port, child.proc)
    version = tool_version([nginx, "-v"], r"nginx/(\S+)")
    return HttpTarget("nginx", version, f"http://127.0.0.1:{port}", child.pid)


def _start_fetchq_target(procs: Processes) -> HttpTarget:
    child = procs.start(
        "fetchq-target", [PYTHON, "-u", "-m", "fetchq.testing.target", "--port", "0"]
    )
    url = wait_for_log(child, r"(http://127\.0\.0\.1:\d+)").group(1)
    return HttpTarget("fetchq.testing.target (Python, threads)", None, url, child.pid)


def _check(url: str) -> None:
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with direct.open(url + "/?q=check", timeout=5) as reply:
        body = reply.read().decode()
    if reply.status != 200 or body != BODY:
        raise BenchError(f"target at {url} answered {reply.status} {body!r}")
