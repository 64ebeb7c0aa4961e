"""Checks on every argument that arrives from the wire, before anything changes.

A bad call is answered with ``BadRequest`` and changes nothing; the server
keeps serving everyone else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fetchq import defaults
from fetchq.api import MAX_SUBMIT, MAX_WAIT, job_name_problem
from fetchq.errors import BadRequest

MAX_ATTEMPTS = 100


def require(condition: object, message: str) -> None:
    if not condition:
        raise BadRequest(message)


def number(value: Any, name: str, low: float, high: float) -> float:
    require(
        isinstance(value, int | float) and not isinstance(value, bool),
        f"{name} must be a number",
    )
    require(low <= value <= high, f"{name} must be between {low} and {high}")
    return float(value)


def integer(value: Any, name: str, low: int, high: int) -> int:
    require(isinstance(value, int) and not isinstance(value, bool), f"{name} must be an integer")
    require(low <= value <= high, f"{name} must be between {low} and {high}")
    return int(value)


def wait(value: Any) -> float:
    return number(value, "wait", 0, MAX_WAIT)


def job_name(value: Any) -> str:
    problem = job_name_problem(value)
    if problem:
        raise BadRequest(problem)
    return str(value)


def worker_name(value: Any) -> str:
    require(isinstance(value, str) and 0 < len(value) <= 300, "worker must be a name")
    return str(value)


def token(value: Any) -> str:
    require(isinstance(value, str), "expected a delivery token")
    return str(value)


def _encodable(url: str) -> bool:
    """Valid Unicode text: no lone surrogates (ASCII, the usual case, costs no copy)."""
    if url.isascii():
        return True
    try:
        url.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True)
class SubmitRequest:
    job: str
    urls: list[str]
    timeout: float
    attempts: int | None
    """None: the server's default."""
    wait: float
    batch_id: str | None


def submit_request(batch: Any) -> SubmitRequest:
    require(isinstance(batch, dict), "submit takes a dict")
    name = job_name(batch.get("job"))
    urls = batch.get("urls")
    require(isinstance(urls, list), "urls must be a list")
    require(len(urls) <= MAX_SUBMIT, f"at most {MAX_SUBMIT} urls per submit")
    require(all(isinstance(url, str) for url in urls), "urls must be strings")
    require(
        all(_encodable(url) for url in urls),
        "urls must be valid Unicode text (no lone surrogates)",
    )
    attempts = batch.get("attempts")
    batch_id = batch.get("batch_id")
    require(batch_id is None or isinstance(batch_id, str), "batch_id must be a string")
    return SubmitRequest(
        job=name,
        urls=urls,
        timeout=number(batch.get("timeout", defaults.TASK_TIMEOUT), "timeout", 0.001, 86400),
        attempts=None if attempts is None else integer(attempts, "attempts", 1, MAX_ATTEMPTS),
        wait=wait(batch.get("wait", 0.0)),
        batch_id=batch_id,
    )


def results_list(results: Any) -> list[dict[str, Any]]:
    """Every result is checked before any is applied: a bad call changes nothing."""
    require(isinstance(results, list), "results must be a list")
    require(len(results) <= MAX_SUBMIT, f"at most {MAX_SUBMIT} results per call")
    for result in results:
        require(isinstance(result, dict), "each result must be a dict")
        require(type(result.get("id")) is int, "each result needs an integer id")
        require(type(result.get("attempt", 1)) is int, "attempt must be an integer")
    return results


def lease_pairs(leases: Any) -> list[tuple[int, int]]:
    """``[[id, attempt], ...]``: how a worker names the leases it holds."""
    require(isinstance(leases, list), "leases must be a list of [id, attempt]")
    require(len(leases) <= MAX_SUBMIT, f"at most {MAX_SUBMIT} leases per call")
    pairs = []
    for item in leases:
        require(
            isinstance(item, list | tuple)
            and len(item) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) for x in item),
            "each lease must be [id, attempt]",
        )
        pairs.append((int(item[0]), int(item[1])))
    return pairs
