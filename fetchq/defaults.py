"""Every default in one place, each with the reason for its value."""

from __future__ import annotations

HOST = "127.0.0.1"
"""Loopback: a server is reachable from other hosts only when asked to be."""

PORT = 7439
"""The server's TCP port when none is given."""

LEASE_TIMEOUT = 30.0
"""Seconds a worker holds a task before it goes back to the queue.

Workers renew the leases of tasks they still hold, so this only bounds how
long a dead worker's tasks wait before someone else runs them."""

MAX_ATTEMPTS = 3
"""Tries per task (lost leases and connection-level failures) before it ends
as a failed result."""

MAX_PENDING = 2_000_000
"""Queued tasks the server holds before submits wait for room."""

MAX_RESULTS = 1_000_000
"""Unconfirmed results the server holds before it stops leasing new tasks."""

TASK_TIMEOUT = 30.0
"""Seconds one fetch may take in all, connect and body included."""

CLOCK_SAMPLES = 5
"""Round trips a worker times at login to learn the server's clock; it keeps the
quickest.  One alone can be off by tens of milliseconds on a busy machine (a
thread kept waiting on either side), which at 100 requests a second moves a
worker's starts by several slots; the quickest of five is within a few ms."""

CONNECT_TIMEOUT = 5.0
"""Seconds to open a TCP connection to a fetched URL (capped by the task's)."""

SPAN = 1_000
"""Requests in one span of an aggregate job: the server's cost is per span, a worker's
summary per span is a few tens of kilobytes, and a lapsed span costs this many again."""
SUBMIT_BATCH = 10_000
"""URLs per submit call: large enough that the round trip is noise."""

RESULT_BATCH = 500
"""Results a worker sends per call (also sent when they are FLUSH_INTERVAL old)."""

FLUSH_INTERVAL = 0.05
"""Seconds a finished result may wait in a worker before it is sent."""

READ_BATCH = 5_000
"""Results an output takes per call."""

POLL_WAIT = 1.0
"""Seconds a blocking broker call waits on the server before returning empty.

Short enough that clients notice signals and shutdowns promptly."""

CONCURRENCY = 16
"""Fetch threads per worker process."""

GIVE_UP_AFTER = 30.0
"""Seconds dispatch and output keep trying to reach a server they were connected to."""

FIRST_CONNECT_GIVE_UP = 10.0
"""Seconds dispatch and output try to reach a server they never reached: a mistyped
address or a server not started yet should fail fast."""

HOUSEKEEPING_INTERVAL = 0.5
"""Seconds between the server's rounds of lease expiry and journal fsync."""

GRACE = 30.0
"""Seconds running requests get to finish when a worker is asked to stop."""

NET_CONNECT_TIMEOUT = 5.0
"""Seconds to open the TCP connection to the fetchq server."""

HANDSHAKE_TIMEOUT = 10.0
"""Seconds either side waits for the authkey handshake before hanging up."""

CALL_TIMEOUT = 35.0
"""Seconds a client waits for any reply before it treats the connection as dead.

Longer than any wait the server makes on a client's behalf (30 s at most), so
only a dead server or a cut network trips it."""

BACKLOG = 4096
"""Connections the kernel may hold for the server until it accepts them: as many as
the default MAX_CONNECTIONS, so a whole fleet connecting at once waits there instead
of being dropped (the stdlib asks for 16; 1,024 dropped part of 3,000 clients).  The
kernel caps it at net.core.somaxconn, 4,096 by default since Linux 5.4."""

BACKOFF_START = 0.2
"""First pause, in seconds, between reconnect attempts."""

BACKOFF_MAX = 10.0
"""Longest pause between reconnect attempts."""

THREAD_LINGER = 2.0
"""Seconds a server thread whose connection ended waits for another one before it
ends: long enough to serve the next connection of a login (or of a storm of them)
without starting a thread, short enough that an idle server is back to its few
threads in a moment."""

MAX_CONNECTIONS = 4096
"""Client connections the server holds at once (each costs a thread)."""
