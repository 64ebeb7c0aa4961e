"""Checks on every argument that arrives from the wire, before anything changes.

A bad call is answered with ``BadRequest`` and changes nothing; the server
keeps serving everyone else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from fetchq import defaults
from fetchq.errors import BadRequest
from fetchq.urls import PLACEHOLDER
from fetchq.wire.aggregates import AGGREGATE, StoredAggregate, span_text, spans_of
from fetchq.wire.api import (
    MAX_HOST_DELAY,
    MAX_PER_HOST,
    MAX_RATE,
    MAX_SUBMIT,
    MAX_TASK_TIMEOUT,
    MAX_WAIT,
    ROBOTS_MAX_BYTES,
    job_name_problem,
)
from fetchq.wire.records import StoredResult
from fetchq.wire.specs import MAX_SUBMIT_SPECS, Spec, is_key, read_spec
from fetchq.wire.stages import Stage, Stages, stages_problem

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
    require(_encodable(value), "worker must be valid Unicode text (no lone surrogates)")
    return str(value)


def token(value: Any) -> str:
    require(isinstance(value, str), "expected a delivery token")
    return str(value)


def _not_all_text(urls: list[Any]) -> str | None:
    """Why ``urls`` are not all strings of valid Unicode, or None.  All ASCII, the usual
    case, is one pass in C (a non-string makes ``str.isascii`` raise)."""
    try:
        if all(map(str.isascii, urls)):
            return None
    except TypeError:
        return "urls must be strings"
    if not all(_encodable(url) for url in urls):
        return "urls must be valid Unicode text (no lone surrogates)"
    return None


def _encodable(url: str) -> bool:
    """Valid Unicode text: no lone surrogates (ASCII, the usual case, costs no copy)."""
    if url.isascii():
        return True
    try:
        url.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


POLICY_FIELDS = ("rate", "per_host", "host_delay", "obey_robots", "retry_after")
"""How a job is paced and how polite it is (see ``fetchq.server.scheduler.Policy``)."""


def policy_change(fields: dict[str, Any]) -> dict[str, Any]:
    """The policy fields present in ``fields``, checked (rate and per_host may be None:
    no limit)."""
    change: dict[str, Any] = {}
    if fields.get("stages") is not None:
        problem = stages_problem(fields["stages"]) if isinstance(fields["stages"], list) else ""
        require(problem is None, f"stages: {problem or 'a list of [seconds, start, end]'}")
        stages = tuple(Stage(*map(float, stage)) for stage in fields["stages"])
        change["stages"] = stages
        change["rate"] = Stages(stages).tail_rate
    elif fields.get("rate") is not None:
        change["rate"] = number(fields["rate"], "rate", 1e-6, MAX_RATE)
    elif "rate" in fields:
        change["rate"] = None
    if "rate" in fields and "stages" not in change:
        change = {"stages": None, **change}  # one rate for the rest: the stages end
    if fields.get("per_host") is not None:
        change["per_host"] = integer(fields["per_host"], "per_host", 1, MAX_PER_HOST)
    elif "per_host" in fields:
        change["per_host"] = None
    if "host_delay" in fields:
        change["host_delay"] = number(fields["host_delay"] or 0, "host_delay", 0, MAX_HOST_DELAY)
    for flag in ("obey_robots", "retry_after", "aggregate"):
        if flag in fields:
            require(isinstance(fields[flag], bool), f"{flag} must be true or false")
            change[flag] = fields[flag]
    return change


@dataclass(frozen=True)
class SubmitRequest:
    job: str
    urls: list[str]
    timeout: float
    attempts: int | None
    """None: the server's default."""
    wait: float
    batch_id: str | None
    policy: dict[str, Any]
    """Pacing and politeness the batch sets for its job (empty: unchanged)."""
    requests: int
    """The requests its tasks stand for: one a URL, ``count`` a span."""
    spans: bool
    """Its tasks are spans (``urls`` holds each span's text)."""
    spec: str | None
    """The key of the spec its tasks send (None: a bare GET)."""
    specs: dict[str, Spec]
    """Specs it brings, by key (each job's are sent once)."""


def submit_request(batch: Any) -> SubmitRequest:
    require(isinstance(batch, dict), "submit takes a dict")
    name = job_name(batch.get("job"))
    spans = batch.get("spans")
    if spans is not None:
        require("urls" not in batch, "a submit carries urls or spans, not both")
        urls, requests = _span_texts(spans)
    else:
        urls = batch.get("urls")
        require(isinstance(urls, list), "urls must be a list")
        require(len(urls) <= MAX_SUBMIT, f"at most {MAX_SUBMIT} urls per submit")
        problem = _not_all_text(urls)
        require(problem is None, str(problem))
        requests = len(urls)
    attempts = batch.get("attempts")
    batch_id = batch.get("batch_id")
    require(batch_id is None or isinstance(batch_id, str), "batch_id must be a string")
    spec = batch.get("spec")
    require(spec is None or is_key(spec), "spec must be a spec's key")
    return SubmitRequest(
        job=name,
        urls=urls,
        timeout=number(
            batch.get("timeout", defaults.TASK_TIMEOUT), "timeout", 0.001, MAX_TASK_TIMEOUT
        ),
        attempts=None if attempts is None else integer(attempts, "attempts", 1, MAX_ATTEMPTS),
        wait=wait(batch.get("wait", 0.0)),
        batch_id=batch_id,
        policy=policy_change(batch),
        requests=requests,
        spans=spans is not None,
        spec=spec,
        specs=spec_table(batch.get("specs", [])),
    )


def spec_table(records: Any) -> dict[str, Spec]:
    """A submit's specs, each checked against its key."""
    require(isinstance(records, list), "specs must be a list")
    require(len(records) <= MAX_SUBMIT_SPECS, f"at most {MAX_SUBMIT_SPECS} specs per submit")
    table: dict[str, Spec] = {}
    for record in records:
        try:
            key, spec = read_spec(record)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        table[key] = spec
    return table


def spec_keys(keys: Any) -> list[str]:
    """The keys a worker asks ``specs`` for."""
    require(isinstance(keys, list) and all(map(is_key, keys)), "keys must be a list of keys")
    require(len(keys) <= MAX_SUBMIT_SPECS, f"at most {MAX_SUBMIT_SPECS} keys per call")
    return keys


def capabilities(runs: Any) -> frozenset[str]:
    """A worker's ``runs`` in ``hello``: the kinds of task it runs beyond a URL's.  Kinds
    this server does not know are let be: a newer worker may run more."""
    require(isinstance(runs, list) and len(runs) <= 16, "runs must be a list of names")
    require(all(isinstance(kind, str) and len(kind) <= 40 for kind in runs), "runs: names")
    return frozenset(runs)


def _span_texts(spans: Any) -> tuple[list[str], int]:
    """A submit's spans as the texts the server keeps in place of URLs, and the
    requests they stand for."""
    require(isinstance(spans, list), "spans must be a list")
    require(len(spans) <= MAX_SUBMIT, f"at most {MAX_SUBMIT} spans per submit")
    try:
        checked = spans_of(spans)
    except ValueError as exc:
        raise BadRequest(f"spans: {exc}") from None
    for span in checked:
        if span.urls is not None:
            problem = _not_all_text(span.urls)
            require(problem is None, f"a span's {problem}")
            continue
        require(PLACEHOLDER in span.template, f"a span's template needs {PLACEHOLDER}")
        require(_encodable(span.template), "templates must be valid Unicode text")
    return [span_text(span) for span in checked], sum(span.count for span in checked)


STEERING_ACTIONS = ("pause", "resume", "cancel", "set")


def steering(change: Any) -> tuple[Literal["pause", "resume", "cancel", "set"], dict[str, Any]]:
    """``{"action": ..., and for "set" the policy fields}``."""
    require(isinstance(change, dict), "steer takes a dict")
    action = change.get("action")
    require(action in STEERING_ACTIONS, f"action must be one of {', '.join(STEERING_ACTIONS)}")
    policy = policy_change(change) if action == "set" else {}
    require("aggregate" not in policy, "a job is aggregate or not from its first dispatch")
    require(action != "set" or policy, "set needs at least one of " + ", ".join(POLICY_FIELDS))
    return action, policy  # type: ignore[return-value]  # one of STEERING_ACTIONS


def robots_report(report: Any) -> dict[str, Any]:
    """A worker's robots.txt fetch: ``{id, attempt, job, host, status, body, error}``."""
    require(isinstance(report, dict), "robots takes a dict")
    require(type(report.get("id")) is int, "robots needs the probe's integer id")
    require(type(report.get("attempt", 1)) is int, "attempt must be an integer")
    status = report.get("status")
    require(status is None or type(status) is int, "status must be an integer or null")
    body = report.get("body")
    require(body is None or isinstance(body, str), "body must be text or null")
    require(body is None or len(body) <= 4 * ROBOTS_MAX_BYTES, "robots.txt body too large")
    error = report.get("error")
    require(error is None or isinstance(error, dict), "error must be an object or null")
    texts = [body, *(error.values() if error else ())]
    require(
        all(_encodable(text) for text in texts if isinstance(text, str)),
        "robots reports must be valid Unicode text (no lone surrogates)",
    )
    return report


MAX_RESULT_FIELDS = 32
MAX_RESULT_TEXT = 12_288
"""Characters of text one result may carry in all: a URL of the longest kind fetchq takes
(8 KiB) and its error message fit, and an output's read of 5,000 results stays well
inside a frame."""

_PLAIN = frozenset({str, int, float, bool, type(None)})


def results_list(results: Any) -> list[StoredResult]:
    """Every result is checked before any is applied: a bad call changes nothing.

    Results are stored and handed out as they come, so their size is bounded here:
    plain values only (``error`` an object of them), a few dozen fields, and a bounded
    amount of text.  A result read off the wire as fetchq's workers send it (a
    ``StoredResult``) had its fields checked while it was decoded; its text is counted,
    and written again compactly, only when it is long enough to matter."""
    require(isinstance(results, list), "results must be a list")
    require(len(results) <= MAX_SUBMIT, f"at most {MAX_SUBMIT} results per call")
    stored: list[StoredResult] = []
    for result in results:
        if type(result) is StoredAggregate:  # checked while decoded (``codec``)
            stored.append(result)
            continue
        if type(result) is StoredResult:
            if len(result.raw) > MAX_RESULT_TEXT:
                # Its text counted; and written again compactly, so that what a
                # worker pads (spaces, digits) is not what the server keeps.
                record = result.record
                check_result(record)
                result = StoredResult.of(record)
            stored.append(result)
            continue
        require(type(result) is dict, "each result must be a dict")
        if result.get("kind") == AGGREGATE:
            try:
                stored.append(StoredAggregate.of_record(result))
            except (TypeError, ValueError) as exc:
                raise BadRequest(f"not an aggregate: {exc}") from None
            continue
        check_result(result)
        try:
            stored.append(StoredResult.of(result))
        except (TypeError, ValueError) as exc:  # a lone surrogate, say: no JSON text
            raise BadRequest(f"results must hold JSON values only: {exc}") from None
    return stored


def check_result(result: dict[str, Any]) -> None:
    """One result within the bounds: plain values, a few dozen fields, bounded text."""
    require(type(result.get("id")) is int, "each result needs an integer id")
    require(type(result.get("attempt", 1)) is int, "attempt must be an integer")
    require(len(result) <= MAX_RESULT_FIELDS, f"at most {MAX_RESULT_FIELDS} fields a result")
    require(
        _text_in(result) <= MAX_RESULT_TEXT,
        f"a result may carry {MAX_RESULT_TEXT} "
        "characters of text, in plain values (error an object of them)",
    )


def _text_in(result: dict[str, Any]) -> int:
    """Characters of text in a result's values; more than any limit if a value is not
    plain (or ``error`` not an object of plain values)."""
    text = 0
    for key, value in result.items():
        kind = type(value)
        if kind is str:
            text += len(value)
        elif kind not in _PLAIN:
            if key != "error" or kind is not dict:
                return MAX_RESULT_TEXT + 1
            for inner in value.values():
                if type(inner) is str:
                    text += len(inner)
                elif type(inner) not in _PLAIN:
                    return MAX_RESULT_TEXT + 1
    return text


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
