"""Calls per second through one client: ``python bench/call_rate.py ADDRESS SECONDS``.

Logs in and out (``connect`` then ``close``) as often as it can for SECONDS, then
makes ``queued()`` calls one after another for SECONDS, and prints one JSON line:
the logins/s (two connections each since 2026-12: one to create, one session;
five before; TLS handshakes included when TLS is on) and
the calls/s (one session, one round trip each).  The wire and TLS come from the
environment, as for any fetchq client.
"""

from __future__ import annotations

import json
import os
import sys
import time

from fetchq.config import parse_address
from fetchq.wire.client import BrokerClient
from fetchq.wire.tls import client_tls


def main() -> None:
    address, seconds = parse_address(sys.argv[1]), float(sys.argv[2])
    key = os.environ["FETCHQ_AUTHKEY"].encode()
    tls = client_tls(None, None, None)
    logins = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        client = BrokerClient(address, key, tls)
        client.connect()
        client.close()
        logins += 1
    login_seconds = time.perf_counter() - started
    client = BrokerClient(address, key, tls)
    client.connect()
    calls = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        client.call("queued")
        calls += 1
    call_seconds = time.perf_counter() - started
    print(json.dumps({"logins_per_s": logins / login_seconds, "calls_per_s": calls / call_seconds}))


if __name__ == "__main__":
    main()
