"""What the server's checked JSON costs per result, against plain json and pickle.

Decodes a worker's ``complete`` call of 500 results (as the server reads it:
depth and number checks included) and encodes an output's batch of them,
and prints microseconds per result with the ratio to the stdlib's plain
``json`` and to pickle, all measured in the same run.

    python bench/codec.py [--results 500]
"""

from __future__ import annotations

import argparse
import json
import pickle
import time
from collections.abc import Callable
from typing import Any

from fetchq.wire.codec import JSON, too_deep


def results(count: int) -> list[dict[str, Any]]:
    """Results as a worker reports them: 16-digit ids, floats with long fractions."""
    return [
        {
            "v": 1,
            "id": 2497549252427778 + n,
            "job": "bench",
            "url": f"http://127.0.0.1:8080/?q={n}",
            "ok": True,
            "status": 200,
            "elapsed": 0.0002 + (n % 97) / 9700,
            "bytes": 3,
            "error": None,
            "attempt": 1,
            "worker": "host:4242",
            "started": 1796025873.7670083 + n / 1000,
            "scheduled": None,
            "retry_after": None,
        }
        for n in range(count)
    ]


def per_item(call: Callable[[], object], items: int) -> float:
    """Best of 15 rounds of 20 calls, in microseconds per item."""
    best = float("inf")
    for _ in range(15):
        started = time.perf_counter()
        for _ in range(20):
            call()
        best = min(best, (time.perf_counter() - started) / 20)
    return best / items * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=int, default=500)
    count = parser.parse_args().results
    batch = results(count)
    request = ["ident", "complete", ["host:4242", batch, []], {}]
    frame, pickled = JSON.dumps(request), pickle.dumps(request)
    plain = json.JSONDecoder()
    rows = [
        ("decode, checked (server)", per_item(lambda: JSON.loads(frame), count)),
        ("decode, plain json", per_item(lambda: plain.decode(frame.decode()), count)),
        ("decode, pickle", per_item(lambda: pickle.loads(pickled), count)),
        ("  of which the depth check", per_item(lambda: too_deep(frame), count)),
        ("encode, for an output", per_item(lambda: JSON.dumps(batch), count)),
        ("encode, pickle", per_item(lambda: pickle.dumps(batch), count)),
    ]
    checked, plain_json = rows[0][1], rows[1][1]
    print(f"{count} results a frame, {len(frame) / count:.0f} bytes a result as JSON")
    print(f"{'':28s}{'us/result':>10s}")
    for name, micros in rows:
        print(f"{name:28s}{micros:10.2f}")
    print(f"checked decode vs plain json: {checked / plain_json:.2f}x")


if __name__ == "__main__":
    main()
