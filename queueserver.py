"""fetchq server: hold the task and result queues and serve them to workers.

Binds (loopback unless told otherwise), resolves or generates the authkey,
and serves the broker until SIGINT or SIGTERM.
"""

from __future__ import annotations

import signal
from typing import Annotated, Any

import typer

from fetchq import config, defaults
from fetchq.commands.options import (
    AuthkeyFileOption,
    HostDelayOption,
    PerHostOption,
    host_delay_seconds,
    reports_errors,
    run_alone,
    say,
)
from fetchq.errors import UsageError
from fetchq.messages import plural
from fetchq.server.broker import Broker
from fetchq.server.journal import Journal
from fetchq.server.serve import QueueServer, collect_rarely, run_until_stopped
from fetchq.server.service import BrokerService
from fetchq.server.store import MAX_SHARDS, open_store
from fetchq.signals import StopRequest
from fetchq.wire import tls

HELP = "Run the queue server that dispatchers, workers and outputs connect to."


def resolve_server_key(key_file: str | None) -> config.Authkey:
    """The configured key, else the one in the default file, else a new one there."""
    found = config.find_authkey(key_file)
    if found is not None:
        return found
    path = config.default_key_path()
    key = config.generate_key_file(path)
    say(f"no authkey given: generated a new one in {path} (mode 0600)")
    say(f"give it to workers and dispatchers: FETCHQ_AUTHKEY_FILE={path}")
    return key


@reports_errors
def server(
    host: Annotated[
        str,
        typer.Option(
            metavar="HOST",
            help="Address to listen on; anything but loopback is reachable by others",
        ),
    ] = defaults.HOST,
    port: Annotated[
        int, typer.Option(min=0, max=65535, metavar="PORT", help="TCP port (0: any free port)")
    ] = defaults.PORT,
    authkey_file: AuthkeyFileOption = None,
    lease_timeout: Annotated[
        float,
        typer.Option(
            min=0.1, metavar="SECONDS", help="Seconds before an unrenewed lease returns its task"
        ),
    ] = defaults.LEASE_TIMEOUT,
    max_attempts: Annotated[
        int,
        typer.Option(min=1, max=100, metavar="N", help="Default tries per task before it fails"),
    ] = defaults.MAX_ATTEMPTS,
    max_pending: Annotated[
        int, typer.Option(min=1, metavar="N", help="Queued tasks before submits wait for room")
    ] = defaults.MAX_PENDING,
    max_results: Annotated[
        int,
        typer.Option(min=1, metavar="N", help="Unconfirmed results before workers are paused"),
    ] = defaults.MAX_RESULTS,
    max_connections: Annotated[
        int,
        typer.Option(min=1, metavar="N", help="Client connections held at once (one thread each)"),
    ] = defaults.MAX_CONNECTIONS,
    journal: Annotated[
        str | None,
        typer.Option(
            metavar="FILE", help="Keep the queues in this file, so a restart loses nothing"
        ),
    ] = None,
    store: Annotated[
        str | None,
        typer.Option(
            metavar="URL",
            help="Keep the broker's state in Valkey or Redis (redis://HOST:PORT/DB, "
            "rediss://, unix://PATH): servers on one store serve one fleet together; "
            "a password from FETCHQ_STORE_PASSWORD or the URL",
        ),
    ] = None,
    shards: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=MAX_SHARDS,
            metavar="N",
            help="With --store: keep the fleet's state in N shards, so that a Redis Cluster "
            "spreads it over its nodes (a few per primary); the first server on a store sets "
            "it [default: the store's, else 1]",
        ),
    ] = None,
    per_host: PerHostOption = None,
    host_delay: HostDelayOption = None,
    tls_cert: Annotated[
        str | None, typer.Option(metavar="FILE", help="Serve TLS with this certificate (PEM)")
    ] = None,
    tls_key: Annotated[
        str | None, typer.Option(metavar="FILE", help="The certificate's private key (PEM)")
    ] = None,
    tls_ca: Annotated[
        str | None,
        typer.Option(
            metavar="FILE", help="Require every client to show a certificate signed by this CA"
        ),
    ] = None,
    allow_pickle: Annotated[
        bool,
        typer.Option(
            help="Also serve classic BaseManager clients, which speak pickle: anyone with the "
            "key can then run code on this machine"
        ),
    ] = False,
) -> None:
    """Run the queue server until SIGINT or SIGTERM.

    --per-host and --host-delay given here hold for every job together."""
    delay = host_delay_seconds(host_delay) or 0.0
    tls_settings = tls.server_tls(tls_cert, tls_key, tls_ca)
    key = resolve_server_key(authkey_file)
    # A file size limit must fail a journal write (EFBIG), not kill the server.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    settings: dict[str, Any] = {
        "lease_timeout": lease_timeout,
        "max_attempts": max_attempts,
        "max_pending": max_pending,
        "max_results": max_results,
        "per_host": per_host or None,
        "host_delay": delay,
    }
    broker: BrokerService
    if shards is not None and store is None:
        raise UsageError("--shards: only a store keeps its state in shards (give --store)")
    if store is not None:
        if journal is not None:
            raise UsageError("--journal and --store: a server on a store keeps no journal")
        broker = open_store(store, shards=shards, **settings)
        kept_in = broker.described
    else:
        broker = Broker(journal=Journal(journal) if journal else None, **settings)
        kept_in = f"journal {journal}" if journal else ""
    if kept_in:
        state = broker.status()
        say(
            f"{kept_in}: {plural(state['queued'], 'task')} queued, "
            f"{plural(state['unconfirmed'], 'result')} not yet confirmed by an output"
        )
    queue_server = QueueServer(
        broker,
        config.Address(host, port),
        key.key,
        max_connections,
        tls_context=tls_settings.context() if tls_settings else None,
        allow_pickle=allow_pickle,
    )
    if allow_pickle:
        say(
            "warning: --allow-pickle: classic clients are served with pickle, and unpickling "
            "runs code. Anyone holding the authkey (or able to inject bytes into a plaintext "
            "connection) can run code on this machine"
        )
    if not config.is_loopback(host) and tls_settings is None:
        say(
            f"warning: listening on {host}, reachable from other hosts, without TLS: traffic "
            "is not encrypted and the authkey is the only guard (see --tls-cert)"
        )
    wire = "plaintext"
    if tls_settings is not None:
        wire = "TLS, client certificates required" if tls_settings.ca else "TLS"
    # Before the line that says it listens: a SIGTERM sent as soon as a supervisor (or
    # a test) reads it must stop the server the orderly way.
    stop = StopRequest().install()
    collect_rarely()
    say(f"server listening on {queue_server.address} ({wire}); authkey from {key.source}")
    run_until_stopped(broker, queue_server, stop)
    say(f"server stopped ({stop.signal_name or 'asked to'})")


if __name__ == "__main__":
    run_alone(server, HELP)
