"""The compact id set outputs use to never write a result twice."""

from __future__ import annotations

import random

from fetchq.idset import IdSet


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
