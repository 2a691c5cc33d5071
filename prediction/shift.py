"""A distributional-shift view of one feature: is the last window of values drawn from its usual distribution?

The onset detector's prediction (`prediction.onset.SeasonalLevel`) follows a
level shift within tens of samples, so a change of *regime* — a series that
flattens to zero, a rate that doubles and stays noisy, a variance that
collapses — leaves prediction errors that look normal again soon after the
change. `DistributionShift` looks at the values themselves: it keeps online
estimates of the long-run quintiles of the feature, the long-run share of
values in each of the five bins they delimit, and the bins of the last
``window`` values, and returns the G statistic (twice the window's relative
entropy to the long-run shares, times the window's length) of the window with
a new value in it. The detector turns the statistic into a likelihood against
its own long-run distribution, as it does the prediction errors.

Five bins and a 52-sample window are those of NAB's "relativeEntropy"
detector (Wang et al. 2011); unlike it, the bins follow the long-run
quantiles (stochastic approximation) rather than the range seen so far, so a
single wild value does not squash every other value into one bin. Each update
is O(bins): the window keeps bin indices and their counts.

>>> import random
>>> rng = random.Random(1)
>>> shift = DistributionShift()
>>> for _ in range(2000):
...     shift.learn_one(rng.gauss(0.0, 1.0))
>>> usual = max(shift.statistic(rng.gauss(0.0, 1.0)) for _ in range(50))
>>> for _ in range(52):                                  # the rate doubles
...     shift.learn_one(rng.gauss(2.0, 1.0))
>>> usual < 30.0 < shift.statistic(2.0)
True

References
----------
Wang, C., Viswanathan, K., Choudur, L., Talwar, V., Satterfield, W. and Schwan, K. (2011).
Statistical techniques for online anomaly detection in data centers. IFIP/IEEE IM
(the relative-entropy test NAB's "relativeEntropy" detector implements).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import deque
from dataclasses import dataclass, field
from typing import Optional

from schemas.state import Versioned

#: The long-run quantiles that delimit the bins (five equally likely bins).
QUANTILES = (0.2, 0.4, 0.6, 0.8)
#: The standard deviation of the G statistic of independent samples under no change: that of a χ² with
#: bins - 1 degrees of freedom. Autocorrelated series vary more; none is scored as if it varied less.
NULL_SD = math.sqrt(2.0 * len(QUANTILES))
#: Values that set the first bin edges (their empirical quintiles).
_SEED = 20
#: Each quantile moves by this fraction of the values' spread per value (stochastic approximation).
_STEP = 0.05
_LN2 = math.log(2.0)


def ew_weight(half_life: float) -> float:
    """The weight of a new sample in an exponentially weighted mean with this half-life (in samples)."""
    return 1.0 - math.exp(-_LN2 / half_life)


@dataclass
class DistributionShift(Versioned):
    """G statistic of the last ``window`` values' bin counts against the long-run bin shares.

    Parameters
    ----------
    window
        Values in the recent window (52, as NAB's relative-entropy detector).
    half_life
        Half-life, in values, of the long-run quantiles' spread and bin shares.
    """

    STATE_VERSION = 1
    window: int = 52
    half_life: float = 2000.0
    edges: list = field(default_factory=list)
    shares: list = field(default_factory=lambda: [1.0 / (len(QUANTILES) + 1)] * (len(QUANTILES) + 1))
    counts: list = field(default_factory=lambda: [0] * (len(QUANTILES) + 1))
    recent: deque = field(default_factory=deque)
    seed: list = field(default_factory=list)
    spread: float = 0.0
    n: int = 0
    version: int = STATE_VERSION

    def statistic(self, value: float) -> Optional[float]:
        """The G statistic of the window with ``value`` in it (None until two windows have been learned)."""
        if not self.edges or self.n < 2 * self.window:
            return None
        counts = list(self.counts)
        counts[self._bin(value)] += 1
        if len(self.recent) >= self.window:
            counts[self.recent[0]] -= 1
        total = sum(counts)
        g = 0.0
        for c, share in zip(counts, self.shares):
            if c:
                g += c * math.log(c / (total * max(share, 1e-3)))
        return 2.0 * g

    def learn_one(self, value: float) -> None:
        self.n += 1
        if not self.edges:
            self.seed.append(value)
            if len(self.seed) >= _SEED:
                ordered = sorted(self.seed)
                self.edges = [ordered[int(q * len(ordered))] for q in QUANTILES]
                self.spread = (ordered[-1] - ordered[0]) / len(QUANTILES)
                self.seed = []
            return
        a = ew_weight(self.half_life)
        if 1.0 / self.n > a:
            a = 1.0 / self.n
        k = self._bin(value)
        edges = self.edges
        middle = edges[len(edges) // 2]
        self.spread += a * ((value - middle if value >= middle else middle - value) - self.spread)
        step = _STEP * self.spread
        for i, q in enumerate(QUANTILES):
            edges[i] += step * (q - (value <= edges[i]))
        for i in range(1, len(edges)):
            if edges[i] < edges[i - 1]:
                edges[i] = edges[i - 1]
        shares = self.shares
        for i in range(len(shares)):
            shares[i] += a * ((i == k) - shares[i])
        self.recent.append(k)
        self.counts[k] += 1
        if len(self.recent) > self.window:
            self.counts[self.recent.popleft()] -= 1

    def _bin(self, value: float) -> int:
        """The bin of ``value``: the number of edges below it (a value on an edge is in the lower bin)."""
        return bisect_left(self.edges, value)
