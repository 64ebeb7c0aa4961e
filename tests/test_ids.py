"""The compact id set: the server's finished tasks and the results an output wrote."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from fetchq.ids import IdSet

BASE = 77 << 32


def test_behaves_like_a_set_for_server_ids() -> None:
    base = random.randrange(1, 1 << 20) << 32
    ids = random.sample(range(base + 1, base + 200_000), 5_000)
    seen = IdSet()
    reference: set[int] = set()
    for task_id in ids + ids[:100]:
        assert seen.add(task_id) == (task_id not in reference)
        reference.add(task_id)
    assert len(seen) == len(reference) == 5_000
    assert all(task_id in seen for task_id in ids)
    assert base + 200_001 not in seen and base not in seen and "x" not in seen


def test_ids_of_two_servers_do_not_collide() -> None:
    first, second = (7 << 32) + 5, (8 << 32) + 5
    seen = IdSet([first])
    assert first in seen and second not in seen
    assert seen.add(second) and len(seen) == 2


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["add", "range", "all", "run", "each", "discard"]),
            st.integers(0, 300),
            st.integers(0, 40),
        ),
        max_size=40,
    )
)
def test_ranges_and_discards_match_a_plain_set(steps: list[tuple[str, int, int]]) -> None:
    ids = IdSet()
    reference: set[int] = set()
    for action, offset, length in steps:
        task_id = BASE + offset
        if action == "add":
            assert ids.add(task_id) == (task_id not in reference)
            reference.add(task_id)
        elif action == "range":
            ids.add_range(task_id, task_id + length)
            reference.update(range(task_id, task_id + length))
        elif action == "all":  # every third id of a run, and one of them twice
            some = [*range(task_id, task_id + length, 3), task_id]
            ids.add_all(some)
            reference.update(some)
        elif action == "run":  # a whole run: added as a range
            ids.add_all(list(range(task_id, task_id + length)))
            reference.update(range(task_id, task_id + length))
        elif action == "each":  # an output's batch: runs, short and long, some seen
            batch = [*range(task_id, task_id + length), *range(BASE, BASE + 20), task_id]
            expected = []
            for one in batch:
                expected.append(one not in reference)
                reference.add(one)
            assert ids.add_each(batch) == expected
        else:
            ids.discard(task_id)
            reference.discard(task_id)
        assert len(ids) == len(reference)
    assert {BASE + n for n in range(400) if BASE + n in ids} == reference


def test_a_range_across_blocks_is_added_whole() -> None:
    """A server's ids start anywhere (at the moment it started): a run of them
    crosses the bitmaps' blocks."""
    start = 1_765_000_000_123_456
    ids = IdSet()
    ids.add_range(start, start + 3_000_000)
    assert len(ids) == 3_000_000
    assert start in ids and start + 2_999_999 in ids
    assert start - 1 not in ids and start + 3_000_000 not in ids


@given(
    st.sets(st.integers(0, 300), max_size=20),
    st.integers(0, 300),
    st.integers(1, 60),
)
def test_none_in_says_exactly_whether_a_run_holds_an_id(
    offsets: set[int], start: int, length: int
) -> None:
    ids = IdSet(BASE + offset for offset in offsets)
    first, stop = BASE + start, BASE + start + length
    assert ids.none_in(first, stop) == all(not first <= BASE + o < stop for o in offsets)


def test_none_in_looks_at_every_block_a_run_crosses() -> None:
    block = 1 << 20
    start = 1_765_000_000_000_000 // block * block + block - 10  # ten ids before a block ends
    ids = IdSet([start + 15])  # in the next block
    assert not ids.none_in(start, start + 20)
    assert ids.none_in(start, start + 10), "the run ends before the next block"
    assert IdSet().none_in(start, start + 20)
