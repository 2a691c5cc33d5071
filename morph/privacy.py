"""Differential privacy for shared experience: clipping, the Laplace mechanism, a budget.

A node shares the mean reward of ``count`` of its decisions that fell in the
same coarse context bucket and arm. Each reward is clipped to
``[low, high]``, so one decision moves the mean by at most
(high − low) / count: the sensitivity. Laplace noise of scale
sensitivity / ε makes one release ε-differentially private with respect to
any single decision's reward. The per-node `PrivacyBudget` adds up the ε of
every release (sequential composition, the conservative bound) and refuses
once the total is spent, after which the node stops sharing.

>>> import random
>>> mech = LaplaceMechanism(epsilon=1.0, low=-1.0, high=1.0)
>>> mech.scale(count=10)
0.2
>>> budget = PrivacyBudget(total=2.5)
>>> [budget.spend(1.0) for _ in range(3)], budget.spent
([True, True, False], 2.0)

References
----------
Dwork, Roth (2014). The algorithmic foundations of differential privacy, §3.3
(the Laplace mechanism) and §3.5 (composition).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import ClassVar

from schemas.state import Versioned


@dataclass(frozen=True)
class LaplaceMechanism:
    """ε-DP release of a mean of clipped values."""

    epsilon: float
    low: float = -1.0
    high: float = 1.0

    def __post_init__(self):
        if self.epsilon <= 0 or self.high <= self.low:
            raise ValueError("need epsilon > 0 and high > low")

    def clip(self, value: float) -> float:
        return min(max(value, self.low), self.high)

    def scale(self, count: int = 1) -> float:
        """Laplace scale b for a mean of ``count`` clipped values."""
        return (self.high - self.low) / max(count, 1) / self.epsilon

    def release_mean(self, values: list[float], rng: random.Random) -> float:
        """The noised mean of ``values`` (each clipped)."""
        mean = sum(self.clip(v) for v in values) / len(values)
        return mean + laplace(rng, self.scale(len(values)))


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
