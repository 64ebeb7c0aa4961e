"""fetchq status --watch, as a person sees it: a real terminal (tmux), a real server."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from fetchq_procs import PYTHON, REPO, poll_until, run, start_worker, stop_all
from rich.console import Console
from test_cli import assert_clean_error

from fetchq.commands.watch import render_watch, watch
from fetchq.config import Address
from fetchq.errors import ExitCode, ServerUnreachable

JOB_ROW = re.compile(r"│ watched\s+│.*│\s+(\d+)/(\d+) │")


class Tmux:
    """A private tmux server (its own socket, no user config) holding one pane."""

    def __init__(self, name: str) -> None:
        assert shutil.which("tmux"), "tmux is missing: apt-get install -y tmux"
        self.base = ["tmux", "-L", name, "-f", "/dev/null"]

    def start(self, command: str, env: dict[str, str], columns: int = 160) -> None:
        """Run ``command`` in a pane ``columns`` wide and 40 high, in ``env`` less any
        inherited terminal size."""
        pane_env = {k: v for k, v in env.items() if k not in ("COLUMNS", "LINES")}
        size = ["-x", str(columns), "-y", "40"]
        subprocess.run(
            [*self.base, "new-session", "-d", "-s", "watch", *size, command],
            env=pane_env,
            check=True,
            timeout=10,
        )

    def screen(self) -> str:
        return subprocess.run(
            [*self.base, "capture-pane", "-p", "-t", "watch"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout

    def keys(self, *keys: str) -> None:
        subprocess.run([*self.base, "send-keys", "-t", "watch", *keys], check=True, timeout=10)

    def stop(self) -> None:
        subprocess.run([*self.base, "kill-server"], capture_output=True, timeout=10)


@pytest.fixture
def tmux() -> Iterator[Tmux]:
    # A socket of its own: another test run on this machine may be using tmux too.
    terminal = Tmux(f"fetchq-test-{os.getpid()}-{secrets.token_hex(4)}")
    yield terminal
    terminal.stop()


def finished_on_screen(screen: str) -> tuple[int, int] | None:
    match = JOB_ROW.search(screen)
    return (int(match.group(1)), int(match.group(2))) if match else None


def test_watch_redraws_a_running_job_and_quits_on_ctrl_c(server, env, target, tmux) -> None:
    dispatched = run(
        env,
        "dispatch",
        "--template",
        f"{target.url}/slow?s=0.02&i={{i}}",
        "--count",
        "300",
        "--rate",
        "40/s",
        "-j",
        "watched",
    )
    assert dispatched.returncode == 0, dispatched.stderr
    worker, _ = start_worker(env, "--concurrency", "2")
    try:
        tmux.start(
            f"cd {REPO} && {PYTHON} -m fetchq status --watch; echo watch exited with $?; sleep 60",
            env,
        )
        first = poll_until(lambda: finished_on_screen(tmux.screen()), 30, "the job's row")
        # 40 results at 40/s took the job a second: its rate is measured, so an ETA shows
        # (before half a second of results there is no rate, and the ETA is "?").
        enough = max(40, first[0] + 1)
        later = poll_until(
            lambda: (seen := finished_on_screen(tmux.screen())) and seen[0] >= enough and seen,
            30,
            f"the row to be redrawn with {enough} tasks finished",
        )
        assert later[1] == 300
        screen = tmux.screen()
        assert "Ctrl-C quits" in screen
        row = next(line for line in screen.splitlines() if "│ watched" in line)
        assert "━" in row, "a progress bar"
        cells = [cell.strip() for cell in row.split("│")[1:-1]]
        # job, progress, finished, ETA, achieved, target, late, failed, leased, state
        assert re.fullmatch(r"\d+s", cells[3]), cells
        assert re.fullmatch(r"\d+\.\d/s", cells[4]), cells
        assert cells[5] == "40.0/s" and cells[7] == "0" and cells[9] == "sealed", cells
        worker_row = re.search(rf"│ \S+:{worker.pid} +│ +\d+\.\d/s │ +\d+s ago │", screen)
        assert worker_row, screen
        tmux.keys("C-c")
        poll_until(lambda: "watch exited with 0" in tmux.screen(), 15, "the watch to quit")
        assert "Traceback" not in tmux.screen()
    finally:
        stop_all([worker])


@pytest.mark.parametrize("columns", [80, 120])
def test_a_narrow_terminal_leaves_columns_out_and_never_cuts_a_job_name(
    server, env, target, tmux, columns
) -> None:
    """The generated job name is what a user copies from this view: whole at any width.
    What does not fit is left out, the least wanted first, rather than cut short."""
    dispatched = run(env, "dispatch", "--template", f"{target.url}/?i={{i}}", "--count", "50")
    assert dispatched.returncode == 0, dispatched.stderr
    job = dispatched.stdout.strip()
    assert re.fullmatch(r"job-\d{8}-\d{6}-[0-9a-f]{6}", job), job
    tmux.start(f"cd {REPO} && {PYTHON} -m fetchq status --watch; sleep 60", env, columns)
    screen = poll_until(lambda: (text := tmux.screen()) and job in text and text, 30, "the job")
    assert "…" not in screen, screen
    head = next(line for line in screen.splitlines() if "┃ job" in line)
    shown = [cell.strip() for cell in head.split("┃")[1:-1]]
    row = next(line for line in screen.splitlines() if f"│ {job} " in line)
    cells = dict(zip(shown, (cell.strip() for cell in row.split("│")[1:-1]), strict=True))
    assert cells["job"] == job and cells["finished"] == "0/50" and cells["state"] == "sealed"
    assert len(head) <= columns, head
    wanted = ["job", "finished", "ETA", "achieved", "failed", "state"]
    if columns >= 120:
        wanted[1:1] = ["progress"]
        wanted[-1:-1] = ["leased"]
    assert shown == wanted, (columns, shown)


def test_watch_and_json_do_not_mix(env) -> None:
    result = run(env, "status", "--watch", "--json")
    assert_clean_error(result, ExitCode.USAGE, "--watch", "--json")


def counts(
    submitted: int, succeeded: int, failed: int = 0, *, achieved: float = 0.0, **pace: Any
) -> dict[str, Any]:
    return {
        "submitted": submitted,
        "queued": submitted - succeeded - failed,
        "leased": 3,
        "succeeded": succeeded,
        "failed": failed,
        "expired": 0,
        "waiting": 0,
        "handed_out": 0,
        "confirmed": succeeded + failed,
        "sealed": True,
        "done": False,
        "state": "sealed",
        "pace": {"target": None, "achieved": achieved, "late": 0, **pace},
    }


def status_with(job: dict[str, Any], seen_ago: float = 0.4) -> dict[str, Any]:
    return {
        "version": "test",
        "queued": job["queued"],
        "leased": job["leased"],
        "unconfirmed": 0,
        "threads": 16,
        "jobs": {"watched": job},
        "workers": [
            {"worker": "box:7", "last_seen_ago": seen_ago, "reported": 9, "rate": 12.5, "leased": 3}
        ],
    }


def drawn(renderable: Any) -> str:
    console = Console(record=True, width=160, color_system=None)
    console.print(renderable)
    return console.export_text()


def test_a_job_row_shows_progress_eta_and_pace() -> None:
    address = Address("127.0.0.1", 7439)
    stalled = drawn(render_watch(status_with(counts(100, 18, 2)), address))
    assert re.search(
        r"│ watched .*│ +20/100 │ +\? │ +0\.0/s │ +n/a │ +0 │ +2 │ +3 │ sealed", stalled
    )
    view = drawn(
        render_watch(
            status_with(counts(100, 55, 5, achieved=20.0, target=25.0, late=7), 75.0), address
        )
    )
    # 40 left at 20/s take 2 s
    assert re.search(
        r"│ watched .*│ +60/100 │ +2s │ +20\.0/s │ +25\.0/s │ +7 │ +5 │ +3 │ sealed", view
    )
    assert re.search(r"│ box:7 +│ +12\.5/s │ +gone │ +3 │ +9 │", view), view
    assert "16 fetch threads" in view


def test_the_view_survives_a_server_that_goes_away_and_redraws_each_second() -> None:
    replies: list[Any] = [
        status_with(counts(10, 2)),
        ServerUnreachable("server 127.0.0.1:7439 unreachable (connection refused)"),
        status_with(counts(10, 6)),
    ]

    class Client:
        def call(self, method: str) -> Any:
            assert method == "status"
            reply = replies.pop(0)
            if isinstance(reply, Exception):
                raise reply
            return reply

    now = [100.0]
    pauses: list[float] = []

    def sleep(seconds: float) -> None:
        pauses.append(seconds)
        if not replies:
            raise KeyboardInterrupt  # Ctrl-C after the third frame
        now[0] += seconds

    def clock() -> float:
        now[0] += 0.25  # each snapshot takes a quarter of a second
        return now[0]

    console = Console(record=True, width=160, force_terminal=True, color_system=None)
    watch(Client(), Address("127.0.0.1", 7439), console=console, clock=clock, sleep=sleep)  # type: ignore[arg-type]
    frames = console.export_text()
    assert "unreachable (connection refused); asking again every second" in frames
    assert frames.index("2/10") < frames.index("unreachable") < frames.index("6/10")
    assert pauses == [0.75, 0.75, 0.75], "one snapshot a second, whatever a snapshot costs"
