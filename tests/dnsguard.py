"""No test asks a real DNS server anything: names other than loopback fail at once.

Installed in the test process by conftest.py, and in every Python process a test
starts through ``childguard/sitecustomize.py`` (``clean_env`` puts it on PYTHONPATH),
so a server, worker or output that tried a real lookup would fail the test too."""

from __future__ import annotations

import socket
from typing import Any

LOCAL_NAMES = {"127.0.0.1", "localhost", "::1", None, ""}
_real_getaddrinfo = socket.getaddrinfo


def loopback_only_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
    name = host.decode() if isinstance(host, bytes) else host
    if name not in LOCAL_NAMES and not str(name).startswith("127."):
        raise socket.gaierror(socket.EAI_NONAME, f"test guard: no DNS lookups ({name})")
    return _real_getaddrinfo(host, *args, **kwargs)


def install() -> None:
    socket.getaddrinfo = loopback_only_getaddrinfo
