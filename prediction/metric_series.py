"""Generated metric series with the character of real business and infrastructure metrics.

For tests of `prediction.onset.OnsetDetector` on what NAB's real series look
like, without shipping NAB: five-minute samples with jittered timestamps and
dropped rows (irregular sampling), a daily cycle with two harmonics, quieter
weekends, Gaussian noise or Poisson counts, and one labelled anomaly:

* ``spike`` — one sample far off (a request storm, a bad reading);
* ``level_shift`` — the level moves for good (a deploy, a new customer): the
  new level is the new normal;
* ``flatline`` — the metric repeats its last value for six hours (a stuck
  collector);
* ``burst`` — counts several times their normal rate for an hour;
* ``normal`` — no anomaly.

>>> s = metric_series("spike", seed=1)
>>> len(s.times_s) > 3500, s.onset_s is not None, s.window_s[0] < s.onset_s < s.window_s[1]
(True, True, True)
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Optional

KINDS = ("normal", "spike", "level_shift", "flatline", "burst")
START_S = 1_700_000_000.0
STEP_S = 300.0
DAY_S = 86400.0


@dataclass
class MetricSeries:
    kind: str
    times_s: list
    values: list
    onset_s: Optional[float]               # when the anomaly starts (None for "normal")
    window_s: Optional[tuple]              # the labelled window around it


def _expected(t: float, level: float, amplitude: float) -> float:
    day = 2.0 * math.pi * ((t % DAY_S) / DAY_S)
    weekend = 0.7 if (int(t // DAY_S) + 3) % 7 >= 5 else 1.0   # Saturday, Sunday (epoch day 0: Thursday)
    return (level + amplitude * (math.sin(day - 1.0) + 0.3 * math.sin(2.0 * day))) * weekend


def metric_series(kind: str, seed: int = 0, days: float = 14.0, counts: Optional[bool] = None,
                  anomaly_day: float = 8.6) -> MetricSeries:
    """One series of ``days`` days with the ``kind`` of anomaly on ``anomaly_day`` (counts: Poisson)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    rng = random.Random(seed * 7919 + KINDS.index(kind))
    counts = kind == "burst" if counts is None else counts
    level, amplitude, noise = (40.0, 25.0, 0.0) if counts else (100.0, 30.0, 3.0)
    onset = None if kind == "normal" else START_S + anomaly_day * DAY_S
    times, values = [], []
    t = START_S
    stuck_value = None
    while t < START_S + days * DAY_S:
        t += STEP_S * rng.uniform(0.7, 1.3)
        if rng.random() < 0.02:          # a dropped row
            continue
        mean = _expected(t, level, amplitude)
        after = onset is not None and t >= onset
        if kind == "level_shift" and after:
            mean += 0.8 * amplitude
        if kind == "burst" and after and t < onset + 3600.0:
            mean *= 4.0
        value = float(_poisson(rng, mean)) if counts else rng.gauss(mean, noise)
        if kind == "spike" and after and (not values or times[-1] < onset):
            value = mean + 2.5 * amplitude
        if kind == "flatline" and after and t < onset + 6 * 3600.0:
            stuck_value = values[-1] if stuck_value is None else stuck_value
            value = stuck_value
        times.append(t)
        values.append(value)
    window = None if onset is None else (onset - 6 * 3600.0, onset + 6 * 3600.0)
    return MetricSeries(kind, times, values, onset, window)


def _poisson(rng: random.Random, mean: float) -> int:
    if mean > 30.0:  # normal approximation, rounded: exact enough and far cheaper
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, k, p = math.exp(-mean), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k
