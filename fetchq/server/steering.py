"""Steering jobs while they run, as journal events: each change is one event, and
one function applies an event both live and when a restart replays it, so a
restart keeps every rate, limit, pause, cancel, robots.txt and hold.

- ``policy``: a job's rate, per-host cap, host delay, robots and Retry-After.
- ``pause`` / ``resume``: no task of a paused job is leased; running ones finish.
- ``cancel``: queued tasks end as ``cancelled`` results, nothing new is accepted.
- ``robots``: what a worker fetched as a host's robots.txt for a job.
- ``hold``: a site's Retry-After; no request to the host before ``until``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

from fetchq.errors import BadRequest
from fetchq.server import events, robots
from fetchq.server.jobqueue import Policy
from fetchq.server.state import BrokerState
from fetchq.units import format_duration, format_rate, write_rate
from fetchq.urls import host_key
from fetchq.wire.aggregates import NOT_WITH_AGGREGATE
from fetchq.wire.api import JobCounts
from fetchq.wire.stages import Stage


def policy_event(state: BrokerState, job: str, change: dict[str, Any]) -> events.PolicyEvent | None:
    """The event that sets ``change`` on the job's policy; None when nothing changes."""
    queue = state.scheduler.find(job)
    current = queue.policy if queue is not None else Policy()
    updated = dataclasses.replace(current, **change)
    refuse_on_aggregate(job, updated)
    if updated == current:
        return None
    return events.policy(job, updated)


def submit_policy_event(
    state: BrokerState, job: str, change: dict[str, Any]
) -> events.PolicyEvent | None:
    """The event a submit's pace and politeness make: a new job takes them.

    A submit to an existing job adds tasks that run at the job's own pace: one
    that asks for a pace or politeness the job does not have is refused
    (``BadRequest``, naming how to change it), one that asks for what it has is
    taken as it is."""
    if state.jobs.find(job) is None:
        return policy_event(state, job, change)
    queue = state.scheduler.find(job)
    current = queue.policy if queue is not None else Policy()
    for name, wanted in change.items():
        have = getattr(current, name)
        same = (
            math.isclose(have, wanted, rel_tol=1e-9)
            if isinstance(have, float) and isinstance(wanted, float)
            else have == wanted
        )
        if not same:
            raise BadRequest(not_its_pace(job, name, have, wanted))
    return None


SET_OPTIONS = {"rate": "--rate", "per_host": "--per-host", "host_delay": "--host-delay"}
"""The policy fields ``fetchq job set`` changes, and its option for each."""

FLAGS = {"obey_robots": "robots.txt", "retry_after": "Retry-After"}
"""The policy fields set once, when a job is first dispatched, and what each obeys."""


def refuse_on_aggregate(job: str, policy: Policy) -> None:
    """``BadRequest`` when ``policy`` asks an aggregate job for what it does not take."""
    if not policy.aggregate:
        return
    for name, option in NOT_WITH_AGGREGATE.items():
        if getattr(policy, name):
            raise BadRequest(f"job {job} is an aggregate job, which takes no {option} yet")


def not_its_kind(job: str, aggregate: bool) -> BadRequest:
    """Why a submit is refused that brings URLs to an aggregate job, or spans to another:
    spans go to an aggregate job and URLs to any other, never the other way."""
    if aggregate:
        return BadRequest(
            f"job {job} is an aggregate job: dispatch to it with --aggregate "
            "and --template (spans, not URLs)"
        )
    return BadRequest(f"job {job} is not an aggregate job: dispatch to it without --aggregate")


def read_stages(stages: list[list[float]] | None) -> tuple[Stage, ...] | None:
    return None if stages is None else tuple(Stage(*stage) for stage in stages)


def not_its_pace(job: str, name: str, have: Any, wanted: Any) -> str:
    """Why a submit asking for ``wanted`` is refused a job that has ``have``, and what to do."""
    if name == "stages":
        return (
            f"job {job} has {'a staged rate' if have else 'no staged rate'}, and this dispatch "
            f"asks for {('other stages' if have else 'stages') if wanted else 'none'}: "
            "dispatching to an existing job "
            f"adds tasks at its own pace; fetchq job set {job} --rate R ends its stages"
        )
    if name == "aggregate":
        kind = "an aggregate job" if have else "not an aggregate job"
        return (
            f"job {job} is {kind}, and this dispatch asks for {'no ' if have else ''}"
            "--aggregate: that is set when a job is first dispatched; dispatch to a new job name"
        )
    if name in FLAGS:
        obeys = "obeys" if have else "does not obey"
        return (
            f"job {job} {obeys} {FLAGS[name]}, and this dispatch asks it {'not ' if have else ''}"
            "to: that is set when a job is first dispatched; dispatch to a new job name"
        )
    if name == "rate":
        value = "0" if wanted is None else write_rate(wanted)
    else:
        value = f"{wanted or 0:g}"  # per_host (None: no cap) or host_delay
    return (
        f"job {job} has {_in_words(name, have)}, and this dispatch asks for "
        f"{_in_words(name, wanted)}: dispatching to an existing job adds tasks at its own "
        f"pace; to change it, run fetchq job set {job} {SET_OPTIONS[name]} {value}"
    )


def _in_words(name: str, value: Any) -> str:
    """A pace field's value as a message says it: ``rate 100.0/s``, ``no host delay``."""
    if name == "rate":
        return "no rate" if value is None else f"rate {format_rate(value)}"
    if name == "per_host":
        return "no per-host cap" if value is None else f"a per-host cap of {value}"
    return f"a host delay of {format_duration(value)}" if value else "no host delay"


def apply(state: BrokerState, event: events.SteeringEvent, *, now: float, wall: float) -> None:
    """Make a steering event so (live, or replayed after a restart)."""
    job = event["job"]
    scheduler = state.scheduler
    if event["k"] == events.POLICY:
        unset = Policy()  # a journal from before a field was added lacks it
        sorted_before = scheduler.by_host(job)
        scheduler.set_policy(
            job,
            Policy(
                rate=event.get("rate", unset.rate),
                per_host=event.get("per_host", unset.per_host),
                host_delay=event.get("host_delay", unset.host_delay),
                obey_robots=event.get("obey_robots", unset.obey_robots),
                retry_after=event.get("retry_after", unset.retry_after),
                aggregate=event.get("aggregate", unset.aggregate),
                stages=read_stages(event.get("stages")),
            ),
        )
        if scheduler.by_host(job) and not sorted_before:
            # Its first host limits: what it has leased counts on its hosts from now.
            for lease in state.leases:
                if lease.task.job == job and lease.host is None and not lease.robots:
                    lease.host = scheduler.held_over(lease.task)
    elif event["k"] == events.PAUSE or event["k"] == events.RESUME:
        scheduler.pause(job, event["k"] == events.PAUSE, now)
    elif event["k"] == events.CANCEL:
        scheduler.cancel(job)
        state.jobs.get_or_create(job, wall).sealed = True
    elif event["k"] == events.ROBOTS:
        rules = robots.rules_from(dict(event), last_attempt=event.get("last", True))
        scheduler.learn_robots(job, event["host"], rules, now)
        state.steering[(events.ROBOTS, job, event["host"])] = event
    elif event["k"] == events.HOLD:
        scheduler.hold(job, event["url"], now + (event["until"] - wall))
        state.steering[(events.HOLD, job, host_key(event["url"]))] = event
    else:
        raise KeyError(event["k"])


def robots_fetched(
    state: BrokerState,
    report: dict[str, Any],
    write: Callable[..., None],
    *,
    now: float,
    wall: float,
) -> bool:
    """A worker fetched a host's robots.txt: learn it (journaled), or, when the site
    could not say, ask again.  False for a fetch whose lease had lapsed."""
    lease = state.leases.get(report["id"])
    if lease is None or not lease.robots or not lease.held_as(report.get("attempt", 1)):
        return False  # lapsed, and asked again of someone else
    assert lease.host is not None
    last = lease.task.attempt >= lease.task.attempts
    event = events.robots(lease.task.job, lease.host, report, last=last)
    if robots.rules_from(dict(event), last) is None:
        state.give_back(lease)  # asked again
        return True
    write(event)
    state.end_lease(lease.id)
    apply(state, event, now=now, wall=wall)
    return True


def snapshot(state: BrokerState, wall: float) -> list[events.SteeringEvent]:
    """The steering events a replay needs to steer every job as now."""
    written: list[events.SteeringEvent] = []
    for name, queue in state.scheduler.jobs.items():
        if queue.policy != Policy():
            written.append(events.policy(name, queue.policy))
        if queue.paused:
            written.append(events.switch(events.PAUSE, name))
        if queue.cancelled:
            written.append(events.switch(events.CANCEL, name))
    for event in state.steering.values():
        if event["k"] == events.ROBOTS or event["until"] > wall:
            written.append(event)
    return written


def job_state(state: BrokerState, job: str, counts: JobCounts) -> str:
    """open, sealed, done, paused or cancelled: what ``job list`` shows."""
    queue = state.scheduler.find(job)
    if counts["done"]:
        return "done"
    if queue is not None and queue.cancelled:
        return "cancelled"
    if queue is not None and queue.paused:
        return "paused"
    return "sealed" if counts["sealed"] else "open"
