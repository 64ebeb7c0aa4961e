"""A Jepsen-style checker for fault tests: what was dispatched against what came out.

A test dispatches URLs that are unique per task (a template with ``{i}``), runs
its fault, reads the results ``fetchq output`` wrote (JSONL), and hands both
to :func:`check`.  Every URL and every result lands in one class:

- **ok**: dispatched, exactly one result;
- **lost**: dispatched, no result;
- **duplicated**: more than one result for the same URL, or for the same id;
- **unexpected**: a result for a URL that was never dispatched;
- **malformed**: a line of the output file that is not a JSON object with an id and a url;
- **failed**: a result with ``ok`` false (the tests fetch only good URLs, so by
  default this is a bad class too);
- **recovered**: a result that needed a retry (``attempt`` > 1) or whose
  request started after the fault; not bad, and reported so a test can
  assert that its fault really was survived rather than dodged.

:func:`assert_exactly_once` fails with a message that counts every class and
shows a few examples of each bad one.  :func:`assert_quiet` waits until the
server says the job is finished and delivered and the server's threads and
descriptors are back where they were before the test's clients started.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EXAMPLES = 5
"""Examples shown per bad class in a failure message."""

QUIET_SLACK = 2
"""Server threads and fds allowed above the baseline once every client is gone.

Each connection to the server costs one thread and one descriptor, and
clients open short-lived side connections (the manager's create/incref/decref
round trips, and a decref when a proxy is garbage-collected).  A sample can
catch one or two of those in flight.  Every fault test runs at least three
client processes, each holding two or more connections, so a client that
leaks even one connection per process shows as more than this slack."""


@dataclass
class Report:
    dispatched: int
    results: int
    lost: list[str] = field(default_factory=list)
    duplicated_urls: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    duplicated_ids: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    unexpected: list[dict[str, Any]] = field(default_factory=list)
    malformed: list[str] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    recovered: list[dict[str, Any]] = field(default_factory=list)
    by_url: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    all_results: list[dict[str, Any]] = field(default_factory=list)

    def bad_classes(self, allow_failed: bool = False) -> dict[str, list[Any]]:
        classes: dict[str, list[Any]] = {
            "lost": self.lost,
            "duplicated (same url)": list(self.duplicated_urls.items()),
            "duplicated (same id)": list(self.duplicated_ids.items()),
            "unexpected": self.unexpected,
            "malformed": self.malformed,
        }
        if not allow_failed:
            classes["failed"] = self.failed
        return {name: items for name, items in classes.items() if items}

    def summary(self) -> str:
        return (
            f"dispatched {self.dispatched}, results {self.results}: "
            f"lost {len(self.lost)}, duplicated {len(self.duplicated_urls)} urls / "
            f"{len(self.duplicated_ids)} ids, unexpected {len(self.unexpected)}, "
            f"malformed {len(self.malformed)}, failed {len(self.failed)}, "
            f"recovered {len(self.recovered)}"
        )


def read_results(path: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The results in a JSONL file, and the lines that are not results at all."""
    results: list[dict[str, Any]] = []
    malformed: list[str] = []
    with open(path, "rb") as handle:
        for raw in handle:
            if not raw.endswith(b"\n"):
                malformed.append(f"torn last line: {raw[:80]!r}")
                continue
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except ValueError:
                malformed.append(f"not JSON: {raw[:80]!r}")
                continue
            if not isinstance(record, dict) or "id" not in record or "url" not in record:
                malformed.append(f"not a result: {raw[:80]!r}")
                continue
            results.append(record)
    return results, malformed


def check(
    dispatched: Iterable[str],
    results: Iterable[dict[str, Any]],
    *,
    fault_at: float | None = None,
    malformed: Iterable[str] = (),
) -> Report:
    """Classify every dispatched URL and every result.

    ``fault_at`` (Unix time) marks results whose request started after the
    fault as recovered, alongside those with ``attempt`` > 1."""
    wanted = set(dispatched)
    by_url: dict[str, list[dict[str, Any]]] = defaultdict(list)
    by_id: dict[int, list[dict[str, Any]]] = defaultdict(list)
    report = Report(dispatched=len(wanted), results=0, malformed=list(malformed))
    for result in results:
        report.results += 1
        report.all_results.append(result)
        by_url[result["url"]].append(result)
        by_id[result["id"]].append(result)
        if result["url"] not in wanted:
            report.unexpected.append(result)
        if not result.get("ok"):
            report.failed.append(result)
        started = result.get("started") or 0.0
        if result.get("attempt", 1) > 1 or (fault_at is not None and started >= fault_at):
            report.recovered.append(result)
    report.lost = sorted(url for url in wanted if url not in by_url)
    report.duplicated_urls = {url: rs for url, rs in by_url.items() if len(rs) > 1}
    report.duplicated_ids = {i: rs for i, rs in by_id.items() if len(rs) > 1}
    report.by_url = dict(by_url)
    return report


def check_file(
    dispatched: Iterable[str], path: str | Path, *, fault_at: float | None = None
) -> Report:
    results, malformed = read_results(path)
    return check(dispatched, results, fault_at=fault_at, malformed=malformed)


def _brief(item: Any) -> str:
    if isinstance(item, tuple):  # (url or id, [results])
        key, results = item
        return f"{key}: " + "; ".join(_brief(r) for r in results)
    if isinstance(item, dict):
        error = (item.get("error") or {}).get("type")
        return (
            f"id={item.get('id')} url={item.get('url')} attempt={item.get('attempt')} "
            f"ok={item.get('ok')} status={item.get('status')} error={error} "
            f"worker={item.get('worker')}"
        )
    return str(item)


def assert_exactly_once(report: Report, *, allow_failed: bool = False) -> None:
    """Every dispatched URL has exactly one result, and nothing else came out."""
    bad = report.bad_classes(allow_failed)
    if not bad:
        return
    lines = [f"not exactly once: {report.summary()}"]
    for name, items in bad.items():
        lines.append(f"  {name}: {len(items)}, e.g.")
        lines.extend(f"    {_brief(item)}" for item in items[:EXAMPLES])
    raise AssertionError("\n".join(lines))


def miscounted(counts: dict[str, Any]) -> int:
    """Tasks of a job the counts do not place exactly once: positive when some
    are in no state at all (lost), negative when some are counted twice.

    The broker updates a job's counts under one lock and a task is in exactly
    one state, so every snapshot must read queued + leased + succeeded + failed
    == submitted."""
    held = counts["queued"] + counts["leased"] + counts["succeeded"] + counts["failed"]
    return int(counts["submitted"] - held)


def wait_for_job(client: Any, job: str, *, timeout: float = 60.0) -> dict[str, Any]:
    """Poll until every submitted task of ``job`` is finished (sealed, done + failed
    == submitted); fail at once if any task is in no state at all."""
    deadline = time.monotonic() + timeout
    while True:
        counts = client.call("job", job)
        off = miscounted(counts)
        if off > 0:
            raise AssertionError(
                f"{off} acknowledged tasks of job {job} are in no state (not queued, "
                f"leased or finished): {counts}"
            )
        if off < 0:
            raise AssertionError(
                f"job {job} counts {-off} tasks more than were submitted "
                f"(queued + leased + succeeded + failed > submitted): {counts}"
            )
        if counts["sealed"] and counts["succeeded"] + counts["failed"] == counts["submitted"]:
            return counts
        if time.monotonic() >= deadline:
            raise AssertionError(f"job {job} not finished after {timeout:g}s: {counts}")
        time.sleep(0.05)


def process_baseline(client: Any) -> dict[str, int]:
    """The server's threads and fds now: take it before the test's clients start."""
    usage = client.call("status")["process"]
    assert usage["fds"] >= 0, "the server cannot count its descriptors here"
    return dict(usage)


def wait_for_baseline(
    client: Any, baseline: dict[str, int], *, timeout: float = 20.0, slack: int = QUIET_SLACK
) -> dict[str, Any]:
    """Poll until the server's threads and fds are back within ``slack`` of ``baseline``."""
    deadline = time.monotonic() + timeout
    while True:
        status = client.call("status")
        usage = status["process"]
        if all(usage[k] <= baseline[k] + slack for k in ("threads", "fds")):
            return status
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"server resources did not come back within {timeout:g}s: "
                f"now {usage}, baseline {baseline} (+{slack} allowed)"
            )
        time.sleep(0.1)


def assert_quiet(
    client: Any,
    job: str,
    accepted: int,
    baseline: dict[str, int],
    *,
    timeout: float = 20.0,
    slack: int = QUIET_SLACK,
) -> dict[str, Any]:
    """Poll the server until ``job`` is finished and delivered and the clients left no trace.

    The job's counts must read queued + leased == 0, done + failed ==
    submitted == ``accepted`` and delivered == submitted (nothing handed out
    and unconfirmed, nothing waiting); the server's threads and fds must be
    back within ``slack`` of ``baseline`` (see :data:`QUIET_SLACK`)."""
    deadline = time.monotonic() + timeout
    while True:
        status = client.call("status")
        counts = status["jobs"].get(job, {})
        usage = status["process"]
        settled = (
            counts
            and counts["queued"] + counts["leased"] == 0
            and counts["succeeded"] + counts["failed"] == counts["submitted"] == accepted
            and counts["confirmed"] == counts["submitted"]
            and counts["waiting"] == counts["handed_out"] == 0
        )
        if settled and all(usage[k] <= baseline[k] + slack for k in ("threads", "fds")):
            return status
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"server not quiet after {timeout:g}s: job {job} counts {counts} "
                f"(expected {accepted} submitted, done and delivered); "
                f"process {usage}, baseline {baseline} (+{slack} allowed)"
            )
        time.sleep(0.1)
