"""Breakdowns by place stay bounded for a crawl of many hosts, and keep the busy ones."""

from __future__ import annotations

import random

import pytest

from fetchq.report.places import PlaceTable, target_host, worker_host


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("http://127.0.0.2:8080/a?b=c", "127.0.0.2:8080"),
        ("http://127.0.0.2/a", "127.0.0.2:80"),
        ("https://Example.TEST?q=1", "example.test:443"),
        ("http://user:pw@h.test:81#frag", "h.test:81"),
        ("http://[::1]:9000/", "[::1]:9000"),
        ("http://[::1]/", "[::1]:80"),
        ("http://u:p@Bücher.Example.:80/x", "xn--bcher-kva.example:80"),
        ("http:///x", "unknown"),
        ("not a url", "unknown"),
    ],
)
def test_target_host_is_host_and_port(url: str, host: str) -> None:
    assert target_host(url) == host


@pytest.mark.parametrize(
    ("worker", "host"),
    [
        ("box-a:1234", "box-a"),
        ("10.0.0.5:77", "10.0.0.5"),
        ("fe80::1:4242", "fe80::1"),
        ("lonely", "lonely"),
        ("", "unknown"),
    ],
)
def test_worker_host_is_before_the_last_colon(worker: str, host: str) -> None:
    assert worker_host(worker) == host


def test_a_crawl_of_many_hosts_keeps_the_busy_ones_in_bounded_rows() -> None:
    kept = 50
    table = PlaceTable(kept=kept)
    rng = random.Random(3)
    heavy = {f"big{i}.test:80": 0 for i in range(5)}
    n = 0
    for i in range(60_000):
        if rng.random() < 0.25:  # a quarter of the results go to five big hosts
            place = f"big{rng.randrange(5)}.test:80"
            heavy[place] += 1
        else:
            place = f"h{i}.test:80"  # the rest each to a host of its own
        table.add(place, 1000.0 + i, 0.01, ok=True)
        n += 1
        assert len(table) <= 2 * kept
    top = dict((name, row.requests) for name, row in table.top(5))
    assert set(top) == set(heavy)
    for name, count in top.items():
        assert heavy[name] - n / kept <= count <= heavy[name]
    assert sum(row.requests for _, row in table.top(len(table))) + table.other.requests == n
    assert table.rest(5).requests == n - sum(top.values())


def test_a_late_busy_host_still_gets_its_row() -> None:
    table = PlaceTable(kept=10)
    for i in range(5000):  # many one-off hosts first
        table.add(f"once{i}", float(i), 0.01, ok=True)
    for i in range(500):  # then one host with a tenth of all results
        table.add("late-busy", 5000.0 + i, 0.01, ok=False)
        table.add(f"after{i}", 5000.0 + i, 0.01, ok=True)
    (name, row), *_ = table.top(1)
    assert name == "late-busy"
    assert 450 <= row.requests <= 500  # it has lost at most the first few of its results to other
    assert row.ok == 0
