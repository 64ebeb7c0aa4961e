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
