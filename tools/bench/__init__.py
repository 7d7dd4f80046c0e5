"""`attobus bench`: benchmarks measured side by side in one run.

Each module in this package exposes ``run(quick: bool) -> list[Row]``. A row
is one figure; ratios against a reference implementation are measured in the
same process, on the same data, one after the other, never against a stored
number. ``quick`` shrinks the workloads (used by the test that checks the
bench runs end to end, never to judge speed).
"""
from __future__ import annotations

from dataclasses import dataclass, asdict
import time


@dataclass
class Row:
    group: str       # e.g. "unwrap", "tick", "tdev"
    name: str        # what was measured
    value: float     # the figure
    unit: str        # its unit, e.g. "Msamples/s", "x", "ms"
    note: str = ""   # what it is compared with, the target

    def as_dict(self) -> dict:
        return asdict(self)


def best_time(fn, repeat: int = 5, number: int = 1) -> float:
    """Best wall time of `number` calls of fn over `repeat` tries (s per call)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - t0) / number)
    return best
