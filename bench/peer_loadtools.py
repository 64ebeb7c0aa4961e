"""The ceiling of the box: ``wrk`` and ``hey`` (compiled load tools) on the same target."""

from __future__ import annotations

import re
import shutil
from typing import Any

from harness import BenchError, Processes, tool_version

TOOLS = ("wrk", "hey")


def available(tool: str) -> str | None:
    return None if shutil.which(tool) else f"{tool} is not on PATH (Debian package {tool})"


def version(tool: str) -> str | None:
    if tool == "wrk":
        return tool_version(["wrk", "-v"], r"wrk (?:debian/)?([\d.]+)")
    return "installed"  # hey has no version option


def run(
    procs: Processes, tool: str, url: str, *, connections: int, seconds: float
) -> dict[str, Any]:
    duration = f"{max(1, round(seconds))}s"
    if tool == "wrk":
        command = ["wrk", "-t", "2", "-c", str(connections), "-d", duration, url + "/"]
    else:
        command = ["hey", "-c", str(connections), "-z", duration, url + "/"]
    child = procs.start(tool, command)
    try:
        finished = child.wait(seconds + 60)
        output = child.log.read_text(errors="replace")
    finally:
        procs.stop(child)
    match = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if finished.code != 0 or not match:
        raise BenchError(f"{tool} failed ({finished.code}):\n{output[-1500:]}")
    if tool == "hey" and re.search(r"Error distribution", output):
        raise BenchError(f"hey saw errors:\n{output[-1500:]}")
    return {"rate": float(match.group(1))}
