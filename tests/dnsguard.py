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
    if name in LOCAL_NAMES or str(name).startswith("127."):
        return _real_getaddrinfo(host, *args, **kwargs)
    if _under_localhost(str(name)):
        return _real_getaddrinfo("localhost", *args, **kwargs)
    raise socket.gaierror(socket.EAI_NONAME, f"test guard: no DNS lookups ({name})")


def _under_localhost(name: str) -> bool:
    """``localhost.`` and every name under it (``b\u00fccher.localhost``, in its IDNA
    form) are loopback, as RFC 6761 asks of resolvers: tests spell one local host
    several ways without a name server or an /etc/hosts of their own."""
    name = name.lower().rstrip(".")
    return name == "localhost" or name.endswith(".localhost")


def install() -> None:
    socket.getaddrinfo = loopback_only_getaddrinfo
