"""The specs a worker has met: each asked of the server once, and kept ready to send."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from fetchq.errors import NoSuchJob
from fetchq.fetch.fetcher import Outgoing, outgoing
from fetchq.wire.api import USER_AGENT
from fetchq.wire.records import make_error, make_result
from fetchq.wire.specs import MAX_SUBMIT_SPECS, read_spec

KEPT = 256
"""Specs a worker keeps (the least recently met goes first): a job has a few, and a
spec of a job that has moved on is asked for again, should it come back."""


class SpecBook:
    """Puts each leased task's spec in place of its key, asking the server for those it
    has not met (``ask``: the ``specs`` call, as ``ask(job, keys)``)."""

    def __init__(
        self, ask: Callable[[str, list[str]], list[Any]], user_agent: str = USER_AGENT
    ) -> None:
        self._ask = ask
        self._user_agent = user_agent
        self._kept: OrderedDict[str, Outgoing] = OrderedDict()

    def fill(self, tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Give every task of ``tasks`` that names a spec the spec itself; returns those
        whose spec the server no longer has (they cannot be sent as asked)."""
        missing: dict[str, set[str]] = {}
        for task in tasks:
            key = task.get("spec")
            if type(key) is str and key not in self._kept:
                missing.setdefault(str(task.get("job")), set()).add(key)
        for job, keys in missing.items():
            wanted = sorted(keys)
            for start in range(0, len(wanted), MAX_SUBMIT_SPECS):
                try:
                    records = self._ask(job, wanted[start : start + MAX_SUBMIT_SPECS])
                except NoSuchJob:
                    break  # its tasks are lost, below: the server forgot the job
                for record in records:
                    try:
                        key, spec = read_spec(record)
                    except ValueError:
                        continue  # its tasks are lost, below: no server of ours sends this
                    self._kept[key] = outgoing(spec, self._user_agent)
        lost: list[dict[str, Any]] = []
        for task in tasks:
            key = task.get("spec")
            if type(key) is str:
                found = self._kept.get(key)
                if found is None:
                    lost.append(task)
                else:
                    self._kept.move_to_end(key)
                    task["spec"] = found
        while len(self._kept) > KEPT:
            self._kept.popitem(last=False)
        return lost


def unsendable(task: dict[str, Any], worker: str) -> dict[str, Any]:
    """The result of a task whose spec the server no longer has: a failure, at once."""
    return make_result(
        task,
        worker=worker,
        started=time.time(),
        elapsed=0.0,
        error=make_error("spec", f"the server has no spec {task.get('spec')} for this job"),
    )
