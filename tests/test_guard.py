"""The tests' own guard: a process a test starts cannot ask a real DNS server either."""

from __future__ import annotations

import subprocess
import sys


def test_a_process_a_test_starts_cannot_ask_dns(env):
    """A numeric address the guard refuses like any name: should the guard be missing,
    the lookup needs no DNS server, so even this test asks none."""
    lookup = "import socket; socket.getaddrinfo('10.255.255.1', 80)"
    done = subprocess.run(
        [sys.executable, "-c", lookup], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 1
    assert "test guard: no DNS lookups (10.255.255.1)" in done.stderr, done.stderr


def test_names_under_localhost_are_loopback_and_no_others(env):
    """RFC 6761: what lets a test spell one local host several ways without DNS."""
    lookup = (
        "import ipaddress, socket\n"
        "for name in ('xn--bcher-kva.localhost', 'LocalHost.', 'a.localhost.'):\n"
        "    found = {ipaddress.ip_address(a[4][0]) for a in socket.getaddrinfo(name, 80)}\n"
        "    assert found and all(a.is_loopback for a in found), name\n"
        "socket.getaddrinfo('localhost.example', 80)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", lookup], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 1
    assert "test guard: no DNS lookups (localhost.example)" in done.stderr, done.stderr
