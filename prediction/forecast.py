"""Short-horizon forecasts with prediction intervals, for irregularly sampled telemetry.

`TrendForecaster` is Holt's damped-trend exponential smoothing written in
continuous time: every update decays by the real time elapsed, so jittered
sampling and gaps need no resampling. Between samples the state follows::

    level(t + h) = level(t) + trend(t) · τ · (1 - e^(-h/τ))      (τ = damping_time_s)
    trend(t + h) = trend(t) · e^(-h/τ)

which is the exact trajectory of a first-order (RC) thermal system approaching
its steady state with time constant τ: a GPU whose power steps up heats along
``T∞ - A e^(-t/τ)``, whose slope decays exactly like the damped trend. So for
temperature the damping time is the node's thermal time constant (R·C, 20–45 s
for `edge.thermal`), `TemperatureForecaster` defaults to it, and the forecast
levels off where the heating does instead of running away linearly.

The interval is empirical, not a model formula: every ``record_every_s``
the forecaster files its own forecasts for a few fixed horizons, and when each
one's target time arrives it keeps the absolute error actually made (the last
``error_window`` of them). The half-width at a tracked horizon is their
split-conformal quantile (the ⌈(n+1)·c⌉-th smallest of n errors covers a new
one with probability ≥ c when errors are exchangeable); other horizons
interpolate linearly, and past the longest it grows like a random walk.
Forecast errors are far from Gaussian here (tiny on a plateau, large when the
load steps), so a variance-based interval would be wrong at every coverage but
one. Until ten errors have matured it widens the one-step error like a random
walk, which errs on the wide side. The window (60 errors filed every 5 s: five
minutes) trades adaptivity for coverage: after a thermal event the interval
stays wide for up to five minutes; one minute of memory under-covers (≈ 0.82
at 90 % nominal on `prediction.synthetic.thermal_ramp`, against ≈ 0.91 now).

Cost: a few exponentials and a deque check per sample (≈ 1–2 µs), plus
≈ 0.5 µs per `forecast` call. River's ``time_series.HoltWinters`` is ≈ 4 µs
per learn + forecast and assumes evenly spaced samples.

>>> import math
>>> f = TemperatureForecaster()
>>> truth = lambda t: 80.0 - 30.0 * math.exp(-t / 30.0)   # heating to 80 °C, τ = 30 s
>>> for t in range(0, 41):
...     f.learn_one(truth(t), float(t))
>>> value, lower, upper = f.forecast(30.0)
>>> round(truth(40), 1), round(value, 1), round(truth(70), 1)   # now, forecast, what happens
(72.1, 77.1, 77.1)
>>> lower < value < upper and f.prob_above(85.0, 30.0) < 0.5
True
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from statistics import NormalDist
from typing import NamedTuple, Optional, Sequence

from schemas.state import Versioned

MIN_ERRORS = 10  # matured errors a horizon needs before its interval is used


class Forecast(NamedTuple):
    """A point forecast and its prediction interval."""

    value: float
    lower: float
    upper: float


class TrendForecaster(Versioned):
    """Damped-trend smoothing in continuous time with an empirical prediction interval.

    Parameters
    ----------
    level_time_s, trend_time_s
        Time constants of the level and trend corrections (larger: smoother, slower).
    damping_time_s
        How long a trend persists (see the module docstring); ``math.inf`` for Holt's linear trend.
    coverage
        Nominal share of observations the interval should hold.
    horizons_s
        Horizons whose errors are tracked for the interval.
    error_window
        Matured forecasts whose errors each horizon keeps for its interval.
    record_every_s
        How often forecasts are filed for error tracking (a cost/variance trade-off).
    max_step_s
        An update after a gap weighs at most this much time, so a sample after an
        outage corrects the state but does not replace it.

    Examples
    --------
    >>> f = TrendForecaster(damping_time_s=math.inf)
    >>> for t in range(200):                      # a line, 2 units per second
    ...     f.learn_one(2.0 * t, float(t))
    >>> round(f.forecast(10.0).value, 3)          # 2 * 209
    418.0
    """

    STATE_VERSION = 1
    # The last update's coefficients (derived, so class defaults: snapshots without them just recompute).
    _coef_dt: Optional[float] = None
    _coef: tuple = ()

    def __init__(self, level_time_s: float = 3.0, trend_time_s: float = 8.0, damping_time_s: float = 30.0,
                 coverage: float = 0.9, horizons_s: Sequence[float] = (10.0, 30.0, 60.0),
                 error_window: int = 60, record_every_s: float = 5.0, max_step_s: float = 10.0):
        if not 0.0 < coverage < 1.0:
            raise ValueError("coverage must be in (0, 1)")
        if min(level_time_s, trend_time_s, damping_time_s, record_every_s, max_step_s) <= 0:
            raise ValueError("time constants must be > 0")
        self.level_time_s = level_time_s
        self.trend_time_s = trend_time_s
        self.damping_time_s = damping_time_s
        self.coverage = coverage
        self.horizons_s = tuple(sorted(float(h) for h in horizons_s))
        if error_window < 10:
            raise ValueError("error_window must be >= 10")
        self.error_window = int(error_window)
        self.record_every_s = record_every_s
        self.max_step_s = max_step_s
        self.version = self.STATE_VERSION
        self._z = NormalDist().inv_cdf(0.5 + coverage / 2.0)
        self.level: Optional[float] = None
        self.trend = 0.0              # units per second
        self.t: Optional[float] = None
        self._var1 = 0.0              # one-step error variance
        self._n = 0
        self._spacing = 1.0
        self._pending = [deque() for _ in self.horizons_s]   # (target time, forecast value)
        self._errors = [deque() for _ in self.horizons_s]    # recent |errors|, oldest first
        self._sorted = [[] for _ in self.horizons_s]          # the same, sorted
        self._quantile = [math.nan] * len(self.horizons_s)    # conformal quantile of each
        self._next_record = -math.inf
        self._next_due = math.inf       # earliest target time among the filed forecasts
        self._growth = [self._growth_of(h) for h in self.horizons_s]
        self._last_horizon, self._last_growth = 0.0, 0.0
        # A forecast is scored on the first sample at or after its target time, if close enough.
        self._tolerance = [max(1.5, 0.1 * h) for h in self.horizons_s]

    def rebase(self) -> None:
        """Restart the level at the next sample with no trend (a known step: a model swap).

        The error statistics are kept, and forecasts filed before the step are dropped.
        """
        self.level = None
        self.trend = 0.0
        for q in self._pending:
            q.clear()
        self._next_due = math.inf

    def learn_one(self, y: float, t: float) -> None:
        """Learn the value ``y`` observed at time ``t`` (seconds). NaN/None is a gap."""
        if y is None or y != y:
            return
        last = self.t
        if self.level is None:
            self.level, self.t = y, t
            self._n += 1
            return
        dt = t - last
        if dt <= 0.0:
            return  # a duplicate or out-of-order sample: never learn it twice

        if t >= self._next_due:
            self._learn_errors(y, t)

        if dt != self._coef_dt:  # telemetry is mostly evenly spaced: the three exponentials repeat
            self._coef_dt, self._coef = dt, self._coefficients(dt)
        carry, decay, a, b = self._coef
        level = self.level + self.trend * carry
        trend = self.trend * decay
        e = y - level
        self.level = level + a * e
        # The level correction spread over the real elapsed time is the slope it implies.
        self.trend = trend + b * e
        self.t = t
        n = self._n = self._n + 1
        w = 1.0 / n if n < 100 else 0.01
        self._var1 += w * (e * e - self._var1)
        spacing = self._spacing
        self._spacing = spacing + w * ((dt if dt < 4.0 * spacing else 4.0 * spacing) - spacing)

        if t >= self._next_record and n > 3:
            self._file_forecasts(t)

    def _coefficients(self, dt: float) -> tuple[float, float, float, float]:
        """(how far the trend carries the level, trend decay, level gain, trend gain per error) over ``dt``."""
        tau = self.damping_time_s
        if tau == math.inf:  # Holt's linear trend
            carry, decay = dt, 1.0
        else:
            decay = math.exp(-dt / tau)
            carry = tau * (1.0 - decay)
        step = dt if dt < self.max_step_s else self.max_step_s
        a = 1.0 - math.exp(-step / self.level_time_s)
        return carry, decay, a, (1.0 - math.exp(-step / self.trend_time_s)) * a / dt

    def _file_forecasts(self, t: float) -> None:
        self._next_record = t + self.record_every_s
        level, trend = self.level, self.trend
        due = math.inf
        for h, growth, pending in zip(self.horizons_s, self._growth, self._pending):
            pending.append((t + h, level + trend * growth))
            if pending[0][0] < due:
                due = pending[0][0]
        self._next_due = due

    def _learn_errors(self, y: float, t: float) -> None:
        """Score the filed forecasts whose target time has come: the interval learns its real errors."""
        due = math.inf
        for i, pending in enumerate(self._pending):
            while pending and pending[0][0] <= t:
                target, predicted = pending.popleft()
                if t - target <= self._tolerance[i]:   # observed close enough to the target time
                    self._add_error(i, y - predicted if y >= predicted else predicted - y)
            if pending and pending[0][0] < due:
                due = pending[0][0]
        self._next_due = due

    def _add_error(self, i: int, error: float) -> None:
        errors, ordered = self._errors[i], self._sorted[i]
        errors.append(error)
        bisect.insort(ordered, error)
        if len(errors) > self.error_window:
            del ordered[bisect.bisect_left(ordered, errors.popleft())]
            n = self.error_window
        else:
            n = len(ordered)
            if n < MIN_ERRORS:
                return
        # Split-conformal: the ceil((n+1)c)-th smallest of n exchangeable errors covers a new one
        # with probability >= c.
        self._quantile[i] = ordered[min(n, math.ceil((n + 1) * self.coverage)) - 1]

    def _growth_of(self, horizon_s: float) -> float:
        """How far a unit trend carries the level in ``horizon_s`` seconds."""
        tau = self.damping_time_s
        return horizon_s if tau == math.inf else tau * (1.0 - math.exp(-horizon_s / tau))

    def _point(self, horizon_s: float) -> float:
        return self.level + self.trend * self._growth_of(horizon_s)

    def half_width(self, horizon_s: float) -> float:
        """Half the interval at ``horizon_s``: the tracked horizons' conformal error quantiles,
        interpolated linearly in the horizon; from the one-step error below the first, growing
        like a random walk past the last."""
        h0, q0 = self._spacing, self._z * math.sqrt(self._var1)
        if horizon_s <= h0:
            return q0
        for h, q in zip(self.horizons_s, self._quantile):
            if q != q:  # not enough errors yet
                continue
            if horizon_s <= h:
                return q0 + (q - q0) * (horizon_s - h0) / (h - h0) if h > h0 else q
            h0, q0 = h, q
        return q0 * math.sqrt(horizon_s / h0)

    def forecast(self, horizon_s: float) -> Forecast:
        """The value expected ``horizon_s`` seconds after the last sample, with its interval."""
        if self.level is None:
            nan = math.nan
            return Forecast(nan, nan, nan)
        if horizon_s != self._last_horizon:  # the caller usually asks for the same horizon every time
            self._last_horizon, self._last_growth = horizon_s, self._growth_of(horizon_s)
        value = self.level + self.trend * self._last_growth
        half = self.half_width(horizon_s)
        return Forecast(value, value - half, value + half)

    def prob_above(self, threshold: float, horizon_s: float) -> float:
        """Probability that the value ``horizon_s`` ahead is above ``threshold``.

        From the empirical errors of the tracked horizons around ``horizon_s``
        (assumed symmetric), interpolated in the horizon like `half_width`.
        """
        if self.level is None:
            return math.nan
        d = threshold - self._point(horizon_s)
        h0, p0 = self._spacing, _gaussian_above(d, math.sqrt(self._var1))
        if horizon_s <= h0:
            return p0
        last = None
        for h, ordered in zip(self.horizons_s, self._sorted):
            if len(ordered) < MIN_ERRORS:
                continue
            p = _empirical_above(d, ordered)
            if horizon_s <= h:
                return p0 + (p - p0) * (horizon_s - h0) / (h - h0) if h > h0 else p
            h0, p0, last = h, p, ordered
        if last is None:  # no horizon tracked yet: widen the one-step error like a random walk
            return _gaussian_above(d, math.sqrt(self._var1 * horizon_s / h0))
        return _empirical_above(d * math.sqrt(h0 / horizon_s), last)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(level={self.level}, trend={self.trend:.4g}/s, "
                f"damping_time_s={self.damping_time_s})")


def _gaussian_above(d: float, sd: float) -> float:
    """P(e > d) for e ~ N(0, sd²)."""
    if sd <= 0.0:
        return 0.0 if d >= 0.0 else 1.0
    return 0.5 * math.erfc(d / (sd * math.sqrt(2.0)))


def _empirical_above(d: float, ordered: list) -> float:
    """P(e > d) for a symmetric error whose |e| has the sorted sample ``ordered``."""
    n = len(ordered)
    beyond = (n - bisect.bisect_right(ordered, abs(d))) / n
    return 0.5 * beyond if d >= 0.0 else 1.0 - 0.5 * beyond


class TemperatureForecaster(TrendForecaster):
    """`TrendForecaster` with defaults for accelerator temperature.

    The damping time is the thermal time constant R·C (≈ 20 s with a healthy fan
    in `edge.thermal`, ≈ 45 s with a failing one): 30 s errs by a few percent of
    the remaining rise either way.
    """

    def __init__(self, level_time_s: float = 3.0, trend_time_s: float = 8.0, damping_time_s: float = 30.0,
                 **kwargs):
        super().__init__(level_time_s=level_time_s, trend_time_s=trend_time_s,
                         damping_time_s=damping_time_s, **kwargs)
