"""A client process loads no server code: checked in real runs of each client program."""

from __future__ import annotations

import re
import subprocess

from fetchq_procs import PYTHON

SERVER_ONLY = re.compile(r"\bfetchq\.server\b")
"""The broker, its parts, the journal, the classic queues and serving all live here."""


def imported_modules(
    env: dict[str, str], *args: str
) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run ``fetchq ARGS`` with ``-X importtime``: every module it imports, as it ran."""
    result = subprocess.run(
        [PYTHON, "-X", "importtime", "-m", "fetchq", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    modules = {
        line.rsplit("|", 1)[1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    return result, modules


def test_worker_dispatch_and_output_load_no_server_code(server, env, target):
    runs = {
        "dispatch": ("dispatch", f"{target.url}/?imports=1", "-j", "imports"),
        "worker": ("worker", "--burst", "--concurrency", "2"),
        "output": ("output", "-j", "imports", "--until-done", "--format", "jsonl"),
    }
    for name, args in runs.items():
        result, modules = imported_modules(env, *args)
        assert result.returncode == 0, (name, result.stderr[-2000:])
        assert {"fetchq.wire.client", "fetchq.wire.api", "fetchq.wire.transport"} <= modules, name
        assert not {m for m in modules if SERVER_ONLY.search(m)}, (name, sorted(modules))
    assert '"imports"' in result.stdout  # the output really read the job's result
