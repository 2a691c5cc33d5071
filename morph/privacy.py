"""Differential privacy for shared experience: clipping, the Laplace mechanism, a budget.

A node releases, once per window of its decisions, the sufficient statistics
of its rewards per coarse (context bucket, arm) cell: the sum of the clipped
rewards and their count (`morph.peers.ExperienceSharer`). Each reward is
clipped to ``[low, high]``, so replacing one decision's reward moves one
cell's sum by at most ``high − low``: the sensitivity. Laplace noise of scale
sensitivity / ε on every cell's sum makes the whole window's release ε-DP
with respect to any single decision's reward, whatever the number of cells:
the cells hold disjoint decisions (parallel composition). Released as a mean,
a cell of ``count`` decisions carries noise of scale (high − low) / (count·ε).

The per-node `PrivacyBudget` adds up the ε of every window (sequential
composition over windows, the conservative bound) and refuses once the
total is spent, after which the node stops sharing.

The privacy unit is one decision's reward: the coarse bucket and the arm a
node chose are released as they are (a coarse, per-window count), as are
the counts.

>>> import random
>>> mech = LaplaceMechanism(epsilon=1.0, low=-1.0, high=1.0)
>>> mech.scale(count=10)
0.2
>>> total, scale = mech.release_sum(sum(mech.clip(v) for v in [0.5, 0.7]), random.Random(0))
>>> scale
2.0
>>> budget = PrivacyBudget(total=2.5)
>>> [budget.spend(1.0) for _ in range(3)], budget.spent
([True, True, False], 2.0)

References
----------
Dwork, Roth (2014). The algorithmic foundations of differential privacy, §3.3
(the Laplace mechanism) and §3.5 (composition). McSherry (2009). Privacy
integrated queries, §4.2 (parallel composition over disjoint partitions).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import ClassVar

from schemas.state import Versioned


@dataclass(frozen=True)
class LaplaceMechanism:
    """ε-DP release of sums (and means) of clipped values."""

    epsilon: float
    low: float = -1.0
    high: float = 1.0

    def __post_init__(self):
        if self.epsilon <= 0 or self.high <= self.low:
            raise ValueError("need epsilon > 0 and high > low")

    @property
    def sensitivity(self) -> float:
        """How far one clipped value can move a sum."""
        return self.high - self.low

    def clip(self, value: float) -> float:
        return min(max(value, self.low), self.high)

    def scale(self, count: int = 1) -> float:
        """Laplace scale b for a mean of ``count`` clipped values."""
        return self.sensitivity / max(count, 1) / self.epsilon

    def release_sum(self, clipped_sum: float, rng: random.Random) -> tuple[float, float]:
        """(the noised sum, the Laplace scale of its noise) for a sum of clipped values."""
        b = self.sensitivity / self.epsilon
        return clipped_sum + laplace(rng, b), b

    def release_mean(self, values: list[float], rng: random.Random) -> float:
        """The noised mean of ``values`` (each clipped)."""
        total, _ = self.release_sum(sum(self.clip(v) for v in values), rng)
        return total / len(values)


def laplace(rng: random.Random, scale: float) -> float:
    """One draw from Laplace(0, scale), by inverting its distribution function."""
    u = rng.random() - 0.5
    return -scale * math.copysign(1.0, u) * math.log(1.0 - 2.0 * abs(u) + 1e-300)


@dataclass
class PrivacyBudget(Versioned):
    """The ε a node has spent on releases; ``spend`` refuses once ``total`` would be exceeded."""

    STATE_VERSION: ClassVar[int] = 1

    total: float
    spent: float = 0.0
    releases: int = 0
    version: int = STATE_VERSION

    def spend(self, epsilon: float) -> bool:
        if self.spent + epsilon > self.total + 1e-12:
            return False
        self.spent += epsilon
        self.releases += 1
        return True

    @property
    def exhausted(self) -> bool:
        return self.spent >= self.total - 1e-12
