"""Small distributions the fingerprint keeps: running moments that can also forget, and quantiles.

`RunningStats` keeps count, sum and sum of squares, so a value added when a run
entered the window can be subtracted again when the run ages out; that is what
keeps the per-workflow state bounded without recomputing from scratch.

>>> s = RunningStats()
>>> for x in (1.0, 2.0, 3.0, 10.0):
...     s.add(x)
>>> s.remove(10.0)
>>> s.count, s.mean, round(s.std, 3)
(3, 2.0, 0.816)
>>> describe([4.0, 1.0, 3.0, 2.0])["p50"]
2.5
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(slots=True)
class RunningStats:
    """Count, mean and (population) standard deviation of a stream, with removal."""

    count: int = 0
    total: float = 0.0
    total_sq: float = 0.0

    def add(self, x: float) -> None:
        self.count += 1
        self.total += x
        self.total_sq += x * x

    def remove(self, x: float) -> None:
        self.count -= 1
        if self.count <= 0:  # reset exactly so float residue cannot build up
            self.count, self.total, self.total_sq = 0, 0.0, 0.0
            return
        self.total -= x
        self.total_sq -= x * x

    def merge(self, other: RunningStats) -> None:
        self.count += other.count
        self.total += other.total
        self.total_sq += other.total_sq

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    @property
    def std(self) -> float | None:
        if not self.count:
            return None
        mean = self.total / self.count
        return math.sqrt(max(self.total_sq / self.count - mean * mean, 0.0))


def quantile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated quantile of an already sorted, non-empty list."""
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def describe(values: list[float]) -> dict[str, float | int | None]:
    """count, mean, std, min, p50, p90, p99, max of ``values`` (``None`` figures when empty)."""
    if not values:
        return {"count": 0, "mean": None, "std": None, "min": None, "p50": None, "p90": None,
                "p99": None, "max": None}
    xs = sorted(values)
    n = len(xs)
    mean = sum(xs) / n
    var = sum((x - mean) ** 2 for x in xs) / n
    return {"count": n, "mean": mean, "std": math.sqrt(var), "min": xs[0],
            "p50": quantile(xs, 0.5), "p90": quantile(xs, 0.9), "p99": quantile(xs, 0.99), "max": xs[-1]}
