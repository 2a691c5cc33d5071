"""A streaming multivariate anomaly detector cheap enough for every telemetry sample.

`AnomalyDetector` takes a dict of named numbers per sample (any names: the
telemetry wrapper in `prediction.telemetry_models` derives them from a
Telemetry record, ``liquid evaluate anomaly`` from CSV columns) and returns a
score in [0, 1] with the features that drove it. It costs a few µs per sample
in plain Python; River's HalfSpaceTrees costs ~130 µs, and even River's
``stats`` objects cost more in method calls than these inline updates (they
also have no notion of irregular time).

How a sample is scored
----------------------
Per feature, two tests:

* **level** — the robust standardised deviation ``z = (x - m) / s`` from a slow
  exponentially weighted location ``m`` and scale ``s`` (mean absolute
  deviation × √(π/2), so ``s`` is σ for Gaussian noise). ``s`` is floored by the
  feature's resolution (the smallest non-zero change seen), so a quantised
  sensor that sat on one value does not turn its next step into a 20σ event.
* **stuck** — a run of ``r`` exact repeats where the feature normally changes
  every sample: under "repeats happen independently with the feature's learned
  repeat rate ``q``" its tail probability is ``q**r``. Features that repeat
  more often than not (quantised or idle readings) are not tested.

The score is the Šidák-combined evidence of the most extreme test::

    p     = min over tests of the test's two-sided tail probability
    score = (1 - p) ** m            (m = number of tests this sample: one level
                                     test per warm feature, plus a stuck test
                                     per feature with a repeat run under way)

so, when the standardised deviations are Gaussian and independent,
``P(score > t) = 1 - t`` exactly: a threshold means the same false-alarm rate
on every node, whatever its baseline and noise level, because each node is
standardised by its own estimates. We take the most extreme test rather than
a χ² sum on purpose: telemetry features are strongly correlated under normal
load changes (temperature, power and throughput move together), and a sum
counts one event once per feature, inflating the false-alarm rate, while the
Šidák bound stays conservative under positive dependence; faults are also
mostly sparse (one sensor spikes, sticks or shifts). The price is less power
for diffuse anomalies where many features move a little.

Learning, and what it refuses to learn
--------------------------------------
Test-then-train: `score_then_learn_one` scores a sample with the state *before* it, then
learns. A feature whose level test is beyond ``learn_clip`` σ (≈ the default
threshold's per-feature level) does not update its location and scale, and a
flagged stuck run does not update the repeat rate: the detector does not learn
from what it flags, so a spike or an outage does not widen its own notion of
normal. That alone would flag a genuine level shift forever, so each feature
also keeps fast estimates (half-life ``adopt_after / 4``) that always learn;
once a feature has spent ``adopt_after`` samples beyond the clip (a leaky count:
samples inside pay it back), it adopts the fast estimates as its new normal.
The trade-off is explicit: a shift is flagged for about ``adopt_after`` samples
(one episode), then accepted; a slow drift is flagged, adopted, and flagged
again while it keeps drifting. A stuck run is different: repeating is not a new
normal worth learning, so it is reported for ``adopt_after`` samples, then muted
until the sensor moves again, and nothing (level, scale, repeat rate) is learned
from it meanwhile.

Time
----
All durations (``half_life``, ``adopt_after``, ``warmup``, ``max_gap``) are in
*typical sampling intervals*, learned from the timestamps (a robust running
mean of the spacing), so one detector fits 1 Hz telemetry and five-minute
business metrics alike. An irregular spacing weighs a sample by the time it
covers; a gap counts as at most ``max_gap`` intervals, so one sample after an
outage cannot wipe out the history. A sample at or before the last learned
time (a replay, a duplicate) is scored but not learned.

Warm-up
-------
A feature takes part in the score after ``warmup`` samples (30 by default);
until then its estimates are plain running averages and its tests do not
count. While no feature is warm the score is 0, ``warming_up`` is True and
nothing is flagged. Missing, NaN or infinite values are gaps: that feature is
neither scored nor learned for that sample. Calibration also needs the node's
slow variability: until the detector has seen a few minutes of it (say ten at
1 Hz), its scales reflect mostly sample noise and a normal excursion can be
flagged once before it is adopted.

>>> import random
>>> rng = random.Random(1)
>>> detector = AnomalyDetector()
>>> for t in range(300):
...     result = detector.score_then_learn_one({"temp": 60 + rng.gauss(0, 0.5), "latency": 5 + rng.gauss(0, 0.2)}, t)
>>> result.is_anomaly, 0.0 <= result.score < detector.threshold
(False, True)
>>> result = detector.score_then_learn_one({"temp": 66.0, "latency": 5.0}, 300)   # a 12σ spike
>>> result.is_anomaly, result.top_features()
(True, ['temp'])
>>> result.contributions["temp"] > 10
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Mapping, Optional

from schemas.state import Versioned

_LN2 = math.log(2.0)
_SQRT2 = math.sqrt(2.0)
_MAD_TO_SIGMA = math.sqrt(math.pi / 2.0)  # E|X - μ| = σ √(2/π) for Gaussian X
_MIN_REPEAT_RATE = 0.02  # a feature that changes every sample still repeats now and then
_MAX_REPEAT_RATE = 0.5   # above this a repeat is no evidence of a stuck sensor
_NORMAL = NormalDist()
_INF = math.inf
_LN10 = math.log(10.0)
_SQRT_PI = math.sqrt(math.pi)
#: Combined tail probability down to which the score is exactly 1 - q (calibrated); see `combined_score`.
EXACT_TAIL = 1e-6
#: Decades of tail probability beyond EXACT_TAIL the graded score can still express.
GRADED_DECADES = 6.0


def _sigma_of_tail(p: float) -> float:
    """The |z| whose two-sided Gaussian tail probability is ``p`` (for reporting only)."""
    if p <= 1e-300:
        return 37.0
    return -_NORMAL.inv_cdf(min(p, 1.0) / 2.0)


def _log10_tail(z: float) -> float:
    """log10 of the two-sided Gaussian tail P(|Z| >= z), also where ``erfc`` underflows (z > 37)."""
    x = z / _SQRT2
    if x < 26.0:
        return math.log10(math.erfc(x))
    # erfc(x) = e^(-x²) / (x √π) · (1 - 1/(2x²) + ...)
    return (-x * x - math.log(x * _SQRT_PI) + math.log1p(-0.5 / (x * x))) / _LN10


def combined_score(zmax: float, p_stuck: float, tests: int) -> float:
    """The Šidák-combined score ``(1 - p) ** tests`` of the most extreme test, graded at the top.

    ``p`` is the smaller of the level tests' tail at ``zmax`` and ``p_stuck``.
    Where the combined tail ``q = 1 - (1 - p) ** tests`` is at least
    `EXACT_TAIL` the score is exactly ``1 - q`` (so ``P(score >= t) = 1 - t``
    for any threshold up to ``1 - EXACT_TAIL``). Further out ``1 - q`` would
    round to 1.0 in floating point from about 8σ on, and every stronger
    anomaly would score the same; there the decades of ``q`` beyond
    `EXACT_TAIL` are compressed smoothly (``d ↦ D·d / (d + D)``, D =
    `GRADED_DECADES`) so the score keeps rising with the evidence and stays
    below ``1 - EXACT_TAIL · 10^-D``.

    >>> [round(1.0 - combined_score(z, 1.0, 6), 14) for z in (3.0, 8.0, 20.0, 60.0)] == sorted(
    ...     [round(1.0 - combined_score(z, 1.0, 6), 14) for z in (3.0, 8.0, 20.0, 60.0)], reverse=True)
    True
    >>> combined_score(60.0, 1.0, 6) < combined_score(80.0, 1.0, 6) < 1.0
    True
    """
    if tests == 0:
        return 0.0
    if zmax < 4.8 and p_stuck >= EXACT_TAIL:  # the common case: q >= p >= EXACT_TAIL
        p = math.erfc(zmax / _SQRT2)
        if p_stuck < p:
            p = p_stuck
        return math.exp(tests * math.log1p(-p)) if p < 1.0 else 0.0
    log_p = _log10_tail(zmax)
    if p_stuck < 1.0:
        log_p = min(log_p, math.log10(p_stuck) if p_stuck > 0.0 else -math.inf)
    p = 10.0 ** log_p
    q = -math.expm1(tests * math.log1p(-p)) if p > 1e-12 else tests * p   # q ~ tests·p for tiny p
    if q >= EXACT_TAIL:
        return 1.0 - q
    decades = math.log10(EXACT_TAIL) - (math.log10(tests) + log_p if q == 0.0 else math.log10(q))
    if decades == math.inf:
        return 1.0 - EXACT_TAIL * 10.0 ** -GRADED_DECADES
    return 1.0 - EXACT_TAIL * 10.0 ** (-GRADED_DECADES * decades / (decades + GRADED_DECADES))


@dataclass(slots=True)
class AnomalyResult:
    """The verdict on one sample.

    ``contributions`` maps each warm feature to its signed standardised
    deviation in σ; a stuck feature appears as ``"name:stuck"`` with the σ of
    the same tail probability. ``warming_up`` is True while no feature is warm
    (the score is then 0 and means nothing).
    """

    score: float
    is_anomaly: bool
    contributions: dict = field(default_factory=dict)
    warming_up: bool = False

    def top_features(self, n: int = 3, min_sigma: float = 2.0) -> list[str]:
        """The ``n`` features with the largest |σ| at or above ``min_sigma``, largest first;
        the single largest one when none reaches ``min_sigma``."""
        ranked = sorted(self.contributions.items(), key=lambda kv: -abs(kv[1]))
        top = [name for name, sigma in ranked[:n] if abs(sigma) >= min_sigma]
        return top or [name for name, _ in ranked[:1]]


class _Feature:
    """Running estimates of one feature (plain slots: cheap to touch, cheap to pickle)."""

    __slots__ = ("mean", "scale", "fast_mean", "fast_scale", "repeat", "resolution",
                 "floor", "prev", "run", "k", "warm_after", "out", "stuck_out", "excursion", "excursion_n")

    def __init__(self, value: float, floor: float):
        self.mean = value
        self.scale = 0.0
        self.fast_mean = value
        self.fast_scale = 0.0
        self.repeat = 0.0           # learned probability that a sample repeats the previous one
        self.resolution = math.inf  # smallest non-zero change seen
        self.floor = floor          # user-given lower bound of the scale
        self.prev = value
        self.run = 0                # exact repeats in a row
        self.k = 1                  # samples learned since (re)start: early estimates are plain means
        self.warm_after = 0         # set by the detector
        self.out = 0.0              # leaky count of intervals spent beyond the clip
        self.stuck_out = 0.0        # intervals spent in a flagged stuck run
        self.excursion = math.nan   # level of the excursion under way beyond the clip (NaN: none)
        self.excursion_n = 0        # its samples reported so far (onset mode)

    def learn(self, value: float, r: float, z: float, repeated: bool, run: int, warm: bool, stuck_run: bool,
              steps: float, a_slow: float, a_fast: float, clip: float, adopt_after: float) -> None:
        """Fold in ``value`` (its residual ``r`` and deviation ``z`` as just scored), ``steps`` intervals on."""
        k = self.k = self.k + 1
        inv = 1.0 / k
        a = a_slow if a_slow > inv else inv
        af = a_fast if a_fast > inv else inv
        if not repeated:
            d = value - self.prev
            if d < 0.0:
                d = -d
            if d < self.resolution:
                self.resolution = d
        fr = value - self.fast_mean
        self.fast_mean += af * fr
        self.fast_scale += af * ((fr if fr >= 0.0 else -fr) * _MAD_TO_SIGMA - self.fast_scale)
        if warm and (z > clip or z < -clip):
            if self.excursion != self.excursion:  # NaN: none under way, this sample starts one
                self.excursion = value
            else:  # the excursion's own level, as fast as the fast estimates
                self.excursion += af * (value - self.excursion)
            self.out += steps
            if self.out >= adopt_after:  # a sustained shift: the recent level is the new normal
                self.excursion, self.excursion_n = math.nan, 0
                self.mean = self.fast_mean
                if self.fast_scale > self.scale:
                    self.scale = self.fast_scale
                self.out = 0.0
        else:
            excursion = self.excursion
            if excursion == excursion:  # one under way (not NaN)
                d = value - excursion
                if (d if d >= 0.0 else -d) < (r if r >= 0.0 else -r):
                    # nearer the excursion's level than the normal: a dip of the noise, not its end
                    self.excursion = excursion + af * d
                else:
                    self.excursion, self.excursion_n = math.nan, 0
            if self.out > 0.0:
                self.out = self.out - steps if self.out > steps else 0.0
            if not stuck_run:
                self.mean += a * r
                if k > 2 or self.scale > 0.0:  # k == 2: r is the first spread we can see
                    self.scale += a * ((r if r >= 0.0 else -r) * _MAD_TO_SIGMA - self.scale)
                else:
                    self.scale = (r if r >= 0.0 else -r) * _MAD_TO_SIGMA
        if stuck_run:  # learn nothing from a stuck sensor: not its level, not its repeat rate
            self.stuck_out += steps
        else:
            self.stuck_out = 0.0
            self.repeat += a * (repeated - self.repeat)
        self.prev = value
        self.run = run

    def onset_evidence(self, value: float, s: float, az: float, onset: int, report_z: float, clip: float,
                       learn: bool) -> float:
        """|z| that counts for a sample ``az`` σ from the normal (beyond the clip), in onset mode.

        During the onset (its first ``onset`` reported samples) the deviation from
        the normal counts, and reported samples are counted; past it, only the
        departure from the excursion's own level, and a departure beyond the clip
        starts a new onset.
        """
        if self.excursion_n < onset:
            if learn and az >= report_z:
                self.excursion_n += 1
            return az
        ze = (value - self.excursion) / s
        ze = ze if ze >= 0.0 else -ze
        if ze > clip and learn:  # worse than the excursion so far: a new onset
            self.excursion, self.excursion_n = math.nan, 0
        return ze if ze < az else az

    def __getstate__(self):
        return {name: getattr(self, name) for name in self.__slots__}

    def __setstate__(self, state):
        self.excursion, self.excursion_n = math.nan, 0   # absent before state version 2
        for name, value in state.items():
            setattr(self, name, value)


class AnomalyDetector(Versioned):
    """Per-feature robust deviations and stuck-sensor runs, Šidák-combined into a calibrated score.

    Parameters
    ----------
    threshold
        Score at or above which a sample is anomalous. Under the null (Gaussian,
        independent deviations) the per-sample false-alarm rate is ``1 - threshold``:
        0.9999 is about one flagged sample in 10⁴, ≈ 0.36 per hour at 1 Hz.
    half_life
        Half-life of the location, scale and repeat-rate estimates, in sampling intervals.
    adopt_after
        Intervals a feature may spend beyond ``learn_clip`` before its recent level is
        adopted as the new normal (see the module docstring).
    warmup
        Samples a feature needs before it takes part in the score.
    learn_clip
        |σ| beyond which a sample does not update the feature's normal.
    max_gap
        A gap counts as at most this many intervals.
    min_scale
        Lower bound of each feature's scale in its own units (a float for all, or a dict
        by name); the resolution learned from the data bounds it too.
    stuck
        Test for stuck sensors (runs of exact repeats).
    onset_samples
        Report the *onset* of an excursion rather than its duration: after a feature
        has been beyond ``learn_clip`` for this many samples in a row, its level test
        measures the departure from the excursion's own running level instead (the
        smaller of the two deviations counts), so a persisting shift stops scoring
        high until it is adopted or returns, while a further jump is a new onset.
        ``None`` (the default): a sample is scored against the normal for the whole
        excursion. ``contributions`` report the deviation from the normal either way.

    Examples
    --------
    >>> detector = AnomalyDetector(warmup=5)
    >>> for t in range(50):
    ...     _ = detector.score_then_learn_one({"x": 10.0 + 0.1 * (t % 3)}, float(t))
    >>> detector.score_one({"x": 10.1}, 50.0).is_anomaly, detector.score_one({"x": 15.0}, 50.0).is_anomaly
    (False, True)
    """

    # 2: onset_samples, and each feature's excursion level (a version-1 snapshot scored whole excursions).
    STATE_VERSION = 2
    _rates: tuple = (None, 0.0, 0.0)   # (steps, a_slow, a_fast) of the last sample: derived, recomputed
    MIGRATIONS = {1: lambda state: {**state, "onset_samples": None}}

    def __init__(self, threshold: float = 0.9999, half_life: float = 300.0, adopt_after: float = 60.0,
                 warmup: int = 30, learn_clip: float = 4.0, max_gap: float = 5.0,
                 min_scale: float | Mapping[str, float] = 1e-9, stuck: bool = True,
                 onset_samples: Optional[int] = None):
        if not 0.0 < threshold < 1.0:
            raise ValueError("threshold must be in (0, 1)")
        if half_life <= 0 or adopt_after <= 0 or warmup < 1 or learn_clip <= 0 or max_gap < 1:
            raise ValueError("half_life, adopt_after, learn_clip > 0; warmup, max_gap >= 1")
        if onset_samples is not None and onset_samples < 1:
            raise ValueError("onset_samples must be >= 1 (or None)")
        self.threshold = threshold
        self.half_life = half_life
        self.adopt_after = adopt_after
        self.warmup = warmup
        self.learn_clip = learn_clip
        self.max_gap = max_gap
        self.min_scale = min_scale
        self.stuck = stuck
        self.onset_samples = onset_samples
        self.version = self.STATE_VERSION
        self._features: dict[str, _Feature] = {}
        self._t: Optional[float] = None   # time of the last learned sample
        self._spacing = 0.0                # robust running mean of the sampling interval
        self._spacings = 0
        # A stuck run is "flagged" (not learned from) at the same tail probability as learn_clip.
        self._stuck_gate = math.erfc(learn_clip / _SQRT2)

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_rates", None)        # derived caches: recomputed, and no part of what was learned
        state.pop("_report_zs", None)
        return state

    # -- the River-style protocol ---------------------------------------------------------

    def score_then_learn_one(self, x: Mapping[str, float], t: Optional[float] = None) -> AnomalyResult:
        """Score ``x`` (at time ``t``, any unit) with the state before it, then learn it."""
        return self._step(x, t, True)

    def score_one(self, x: Mapping[str, float], t: Optional[float] = None) -> AnomalyResult:
        """Score without learning."""
        return self._step(x, t, False)

    def learn_one(self, x: Mapping[str, float], t: Optional[float] = None) -> None:
        """Learn without keeping the score (same cost as `score_then_learn_one`)."""
        self._step(x, t, True)

    def rebase(self, names) -> None:
        """Forget the level of these features: a known intervention (a model swap) moved them.

        Their next value becomes the new location and they re-warm over a third of
        ``warmup`` samples; their scale, resolution and repeat rate are kept, since
        the noise of a sensor does not change with what is served.
        """
        for name in names:
            f = self._features.get(name)
            if f is not None:
                f.k = 0
                f.warm_after = max(1, self.warmup // 3)
                f.out = f.stuck_out = 0.0
                f.run = 0
                f.excursion, f.excursion_n = math.nan, 0

    @property
    def features(self) -> tuple[str, ...]:
        return tuple(self._features)

    # -- the work ---------------------------------------------------------------------------

    def _report_z(self, tests: int) -> float:
        """|z| at which one level test alone reaches the threshold among ``tests`` (an excursion's
        samples at or beyond it count toward its onset)."""
        cache = self.__dict__.setdefault("_report_zs", {})
        z = cache.get(tests)
        if z is None:
            p = -math.expm1(math.log(self.threshold) / max(tests, 1))
            z = cache[tests] = -_NORMAL.inv_cdf(p / 2.0)
        return z

    def _floor(self, name: str) -> float:
        m = self.min_scale
        return float(m.get(name, 1e-9)) if isinstance(m, Mapping) else float(m)

    def _advance(self, t: Optional[float], learn: bool) -> tuple[float, float, bool]:
        """``(t, steps, learn)``: how many typical intervals this sample covers (weights every update).

        A sample at or before the last learned time is a duplicate or a replay: it is
        scored, never learned twice.
        """
        last = self._t
        if t is None:
            t = 0.0 if last is None else last + (self._spacing or 1.0)
        if last is None:
            steps = 1.0
        else:
            dt = t - last
            if dt <= 0.0:
                return t, 0.0, False
            spacing = self._spacing
            if learn:
                n = self._spacings = self._spacings + 1
                if spacing <= 0.0:
                    spacing = dt
                else:  # gaps are clipped so they do not inflate the typical interval
                    spacing += max(1.0 / n, 0.01) * (min(dt, 4.0 * spacing) - spacing)
                self._spacing = spacing
            steps = dt / spacing if spacing > 0.0 else 1.0
            if steps > self.max_gap:
                steps = self.max_gap
        if learn:
            self._t = t
        return t, steps, learn

    def _step(self, x: Mapping[str, float], t: Optional[float], learn: bool) -> AnomalyResult:
        t, steps, learn = self._advance(t, learn)
        rates = self._rates
        if rates[0] != steps:  # evenly spaced samples repeat the same two exponentials
            rates = self._rates = (steps, 1.0 - math.exp(-steps * _LN2 / self.half_life),
                                   1.0 - math.exp(-steps * 4.0 * _LN2 / self.adopt_after))
        _, a_slow, a_fast = rates

        clip = self.learn_clip
        adopt_after = self.adopt_after
        onset = self.onset_samples or 0
        report_z = self._report_z(len(self._features)) if onset else 0.0
        stuck = self.stuck
        stuck_gate = self._stuck_gate
        features = self._features
        contributions = {}
        zmax = 0.0
        p_stuck = 1.0
        stuck_names = None
        tests = 0
        for name, value in x.items():
            if value is None or not -_INF < value < _INF:  # missing, NaN or ±inf: a gap for this feature
                continue
            f = features.get(name)
            if f is None:
                if learn:
                    f = features[name] = _Feature(value, self._floor(name))
                    f.warm_after = self.warmup
                continue
            if f.k == 0:  # re-based: this value is the new location
                if learn:
                    f.mean = f.fast_mean = f.prev = value
                    f.k = 1
                continue

            # ---- score
            r = value - f.mean
            s = f.scale
            if s < f.resolution and f.resolution != math.inf:
                s = f.resolution
            if s < f.floor:
                s = f.floor
            z = r / s
            repeated = value == f.prev
            run = f.run + 1 if repeated else 0
            warm = f.k >= f.warm_after
            p_run = 1.0
            if warm:
                tests += 1
                contributions[name] = z
                az = z if z >= 0.0 else -z
                if onset and az > clip:
                    az = f.onset_evidence(value, s, az, onset, report_z, clip, learn)
                if az > zmax:
                    zmax = az
                if stuck and repeated and f.repeat < _MAX_REPEAT_RATE:
                    p_run = (f.repeat if f.repeat > _MIN_REPEAT_RATE else _MIN_REPEAT_RATE) ** run
                    # A run reported for adopt_after intervals is muted until the sensor moves again.
                    if f.stuck_out < adopt_after:
                        tests += 1  # the stuck test only exists while a run is under way
                        if p_run < p_stuck:
                            p_stuck = p_run
                        if p_run < 0.01:
                            if stuck_names is None:
                                stuck_names = []
                            stuck_names.append((name, p_run))
            if not learn:
                continue

            f.learn(value, r, z, repeated, run, warm, p_run < stuck_gate, steps, a_slow, a_fast, clip, adopt_after)

        if tests == 0:
            return AnomalyResult(0.0, False, contributions, True)
        score = combined_score(zmax, p_stuck, tests)
        if stuck_names:
            for name, p_run in stuck_names:
                contributions[name + ":stuck"] = _sigma_of_tail(p_run)
        return AnomalyResult(score, score >= self.threshold, contributions, False)

    def __repr__(self) -> str:
        return (f"AnomalyDetector(threshold={self.threshold}, half_life={self.half_life}, "
                f"adopt_after={self.adopt_after}, warmup={self.warmup}, features={list(self._features)})")
