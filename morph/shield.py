"""The safety shield: which arms the learned agent may choose on a node right now.

The node is taken as one lumped thermal mass (as in `edge.thermal`):
T approaches T_ss = T_amb + R·P with time constant τ. From telemetry the
shield estimates, per node, the steady state the current configuration heads
for (T + τ·dT/dt) and fits T_ss = a + R·P by discounted least squares (with
a prior R), so ambient drift, a failing fan or a degrading heatsink show up in
a few samples. An arm's power follows from the measured power of the current
configuration scaled by the arms' relative dynamic cost and utilisation; both
forecasts are computed for every arm with its features
(`morph.context.Featurizer.factors`).

An arm is masked when its predicted temperature within the horizon reaches
``hot_c − margin_c``, or its accuracy is below ``min_accuracy``. At or above
``hot_c`` only arms lighter than the current one stay; at or above
``critical_c`` the fallback (the lightest variant) is forced, as the rules do.
The fallback is never masked, so there is always an arm to choose.

>>> est = ThermalEstimate()
>>> for _ in range(20):
...     est.observe(temp_c=75.0, slope_c_per_s=0.0, power_w=300.0)
>>> round(est.predict(temp_c=75.0, power_w=200.0, horizon_s=60.0, current_power_w=300.0), 1)  # R·100 W cooler
60.0
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from schemas.state import Versioned


@dataclass(frozen=True)
class ShieldConfig:
    hot_c: float = 85.0
    critical_c: float = 90.0
    horizon_s: float = 30.0
    margin_c: float = 1.5
    tau_s: float = 4.0            # the die's thermal time constant (edge.thermal: R·C)
    prior_r_c_per_w: float = 0.15
    prior_weight: float = 5.0     # how many samples the prior R is worth
    gamma: float = 0.97           # per-sample discount of the fit: memory ~ 30 samples
    idle_w: float = 60.0          # power the accelerator draws serving nothing


@dataclass
class ThermalEstimate(Versioned):
    """Discounted least-squares slope R of T_ss on P for one node, shrunk toward a prior R."""

    STATE_VERSION: ClassVar[int] = 1

    config: ShieldConfig = ShieldConfig()
    sums: tuple = (0.0, 0.0, 0.0, 0.0, 0.0)   # discounted n, ΣP, ΣT, ΣP², ΣPT
    version: int = STATE_VERSION

    def observe(self, temp_c: float, slope_c_per_s: float, power_w: float) -> None:
        g = self.config.gamma
        t = temp_c + self.config.tau_s * slope_c_per_s
        n, sp, st, spp, spt = self.sums
        self.sums = (g * n + 1, g * sp + power_w, g * st + t, g * spp + power_w ** 2, g * spt + power_w * t)

    def r_c_per_w(self) -> float:
        """R: the fit's slope, weighted against the prior by how much power varied (a prior
        worth ``prior_weight`` samples spread over 20 W)."""
        c = self.config
        n, sp, st, spp, spt = self.sums
        if n <= 0:
            return c.prior_r_c_per_w
        sxx = spp - sp * sp / n
        sxy = spt - sp * st / n
        v0 = c.prior_weight * 20.0 ** 2
        r = (sxy + v0 * c.prior_r_c_per_w) / (sxx + v0)
        return 0.02 if 0.02 > r else r   # max(r, 0.02), what the builtin returns, without its call (per decision)

    def predict(self, temp_c: float, power_w: float, horizon_s: float, current_power_w: float | None = None,
                slope_c_per_s: float = 0.0) -> float:
        """Temperature after ``horizon_s`` at ``power_w``, from the present ``temp_c``."""
        c = self.config
        now_power = power_w if current_power_w is None else current_power_w
        r = self.r_c_per_w()
        t_ss_now = temp_c + c.tau_s * slope_c_per_s
        t_ss = t_ss_now + r * (power_w - now_power)
        return t_ss + (temp_c - t_ss) * math.exp(-horizon_s / c.tau_s)


def critical_run(temps: Sequence[float], critical_c: float, samples: int = 3) -> bool:
    """The last ``samples`` temperatures all at or above ``critical_c`` (no copy of the window)."""
    n = len(temps)
    if n < samples:
        return False
    for i in range(n - samples, n):
        if not temps[i] >= critical_c:
            return False
    return True


def safe_mask(predicted_c: np.ndarray, arm_power_w: np.ndarray, accuracy: np.ndarray, fallback: int,
              temp_c: float, recent_temps: Sequence[float], current_power_w: float, min_accuracy: float,
              config: ShieldConfig, critical_samples: int = 3, accurate: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask of the arms the agent may choose (see the module docstring).

    ``recent_temps``: the node's latest temperatures, oldest first (any indexable sequence: the
    agent passes its window as it keeps it, without a copy per decision). ``accurate``:
    ``accuracy >= min_accuracy`` when the caller keeps it (an arm set's accuracy does not change).
    """
    k = len(predicted_c)
    if critical_run(recent_temps, config.critical_c, critical_samples):
        mask = np.zeros(k, dtype=bool)
        mask[fallback] = True
        return mask
    mask = predicted_c < config.hot_c - config.margin_c
    mask &= accuracy >= min_accuracy if accurate is None else accurate
    if temp_c >= config.hot_c:
        mask &= arm_power_w < current_power_w - 1e-6
    mask[fallback] = True
    return mask
