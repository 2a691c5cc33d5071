"""The onset detector on real-like metric series: detection delay, false alarms, one report per incident."""

from __future__ import annotations

import math
import pickle
import random

import pytest

from prediction.metric_series import STEP_S, metric_series
from prediction.onset import Evidence, OnsetDetector, SeasonalLevel
from schemas.state import StateVersionError

SEEDS = range(4)
#: Worst detection delay per kind, in samples after the onset.
MAX_DELAY = {"spike": 1, "level_shift": 3, "flatline": 6, "burst": 2}
DAY_S = 86400.0


def _onsets(series, **kwargs):
    detector = OnsetDetector(**kwargs)
    return [t for t, v in zip(series.times_s, series.values)
            if detector.score_then_learn_one({"value": v}, t).is_anomaly]


@pytest.mark.parametrize("kind", sorted(MAX_DELAY))
def test_each_kind_is_reported_at_its_onset_and_once(kind):
    for seed in SEEDS:
        s = metric_series(kind, seed)
        onsets = _onsets(s)
        inside = [t for t in onsets if s.window_s[0] <= t <= s.window_s[1]]
        assert len(inside) == 1, (kind, seed, [(t - s.onset_s) / STEP_S for t in onsets])
        delay = (inside[0] - s.onset_s) / STEP_S
        assert -1.0 <= delay <= MAX_DELAY[kind] + 0.5, (kind, seed, delay)


@pytest.mark.parametrize("kind", ["normal", "spike", "level_shift", "flatline", "burst"])
def test_false_onsets_are_rare(kind):
    """Outside the labelled window: at most the first weekend (weekly seasonality is not learned
    before a weekend has been seen) and about one more a week."""
    false = days = 0.0
    for seed in SEEDS:
        s = metric_series(kind, seed)
        window = s.window_s or (0.0, 0.0)
        false += sum(not window[0] <= t <= window[1] for t in _onsets(s))
        days += (s.times_s[-1] - s.times_s[0]) / DAY_S
    assert false / days * 7 <= 2.5, f"{kind}: {false} false onsets in {days:.0f} days"


def test_a_level_shift_becomes_the_new_normal():
    for seed in SEEDS:
        s = metric_series("level_shift", seed)
        late = [t for t in _onsets(s) if t > s.onset_s + DAY_S]
        # Days after the shift it is not reported again (the weekend is the only other onset allowed).
        assert len(late) <= 1, [(t - s.onset_s) / DAY_S for t in late]


def test_scores_stay_graded_at_the_top():
    s = metric_series("burst", 0)
    detector = OnsetDetector(quiet_s=0.0)   # no suppression: every sample's own score
    scores = [detector.score_then_learn_one({"value": v}, t).score for t, v in zip(s.times_s, s.values)]
    assert all(0.0 <= x < 1.0 for x in scores)
    top = sorted(scores)[-20:]
    assert len(set(top)) == 20, "no ties at the top: a threshold sweep can separate them"


def test_without_suppression_an_incident_is_flagged_for_longer_than_its_onset():
    s = metric_series("burst", 1)
    quiet, loud = _onsets(s), _onsets(s, quiet_s=0.0)
    in_window = lambda ts: [t for t in ts if s.window_s[0] <= t <= s.window_s[1]]  # noqa: E731
    assert len(in_window(quiet)) == 1 < len(in_window(loud))


def _calm_samples_until_release(**settings):
    """Samples of a normal recent error level after an onset until the quiet period ends (None: not
    within 100 samples, far less than its day)."""
    detector = OnsetDetector(**settings)

    def evidence(recent):
        return Evidence(0.0, recent, 0.0, 0.0, 0.0, True, 1000, 1000)

    assert detector.decide_one(evidence(50.0), 0.0)[1]
    assert detector.decide_one(evidence(50.0), 60.0) == (0.0, False)    # held at 0: the same incident
    for n in range(1, 101):
        detector.decide_one(evidence(0.0), 60.0 * (n + 1))
        if detector.quiet_until <= 60.0 * (n + 1):
            assert detector.decide_one(evidence(50.0), 60.0 * (n + 1.5), update=False)[1]   # a new incident
            return n
    return None


def test_the_quiet_period_ends_after_one_averaging_window_of_normal_errors():
    assert _calm_samples_until_release() == OnsetDetector().average == 10
    assert _calm_samples_until_release(average=4) == 4
    assert _calm_samples_until_release(release_after=36) == 36
    assert _calm_samples_until_release(release_after=0) is None


def test_score_one_changes_nothing_and_a_replayed_time_is_not_learned():
    s = metric_series("normal", 2)
    detector = OnsetDetector()
    for t, v in zip(s.times_s[:1000], s.values[:1000]):
        detector.score_then_learn_one({"value": v}, t)
    before = pickle.dumps(detector)
    t, v = s.times_s[1000], s.values[1000]
    first = detector.score_one({"value": v}, t)
    assert pickle.dumps(detector) == before
    assert detector.score_then_learn_one({"value": v}, t) == first
    learned = pickle.dumps(detector)
    detector.score_then_learn_one({"value": v + 50.0}, t)      # the same time again: scored only
    assert pickle.dumps(detector) == learned


def test_irregular_gaps_and_missing_values_are_tolerated():
    s = metric_series("spike", 3)
    detector = OnsetDetector()
    flags = []
    for i, (t, v) in enumerate(zip(s.times_s, s.values)):
        if 1500 <= i < 1600:
            continue                                        # an eight-hour outage
        x = {"value": float("nan") if i % 50 == 7 else v, "other": None}
        result = detector.score_then_learn_one(x, t)
        assert 0.0 <= result.score < 1.0
        flags.append((t, result.is_anomaly))
    assert any(flag and abs(t - s.onset_s) <= STEP_S * 1.5 for t, flag in flags)


def test_pickled_state_continues_identically_and_a_newer_version_is_refused():
    s = metric_series("level_shift", 0)
    detector = OnsetDetector()
    for t, v in zip(s.times_s[:2000], s.values[:2000]):
        detector.score_then_learn_one({"value": v}, t)
    clone = pickle.loads(pickle.dumps(detector))
    for t, v in zip(s.times_s[2000:], s.values[2000:]):
        assert detector.score_then_learn_one({"value": v}, t) == clone.score_then_learn_one({"value": v}, t)
    state = dict(detector.features["value"].__dict__, version=SeasonalLevel.STATE_VERSION + 1)
    with pytest.raises(StateVersionError):
        SeasonalLevel.__new__(SeasonalLevel).__setstate__(state)
    with pytest.raises(StateVersionError):
        OnsetDetector.__new__(OnsetDetector).__setstate__(dict(detector.__dict__, version=99))


def _bursty_counts(seed: int, days: int = 21, surge_at: int = -1, surge_len: int = 24):
    """Five-minute event counts with a daily cycle and the one-sample bursts of social-media volumes
    (1 % of samples at 2-6x the rate), and optionally a 2-hour surge to 4x the rate."""
    rng = random.Random(seed)
    times, values = [], []
    for i in range(int(days * DAY_S / STEP_S)):
        t = 1.42e9 + i * STEP_S
        rate = 12.0 + 10.0 * math.sin(2.0 * math.pi * (t % DAY_S) / DAY_S)
        if rng.random() < 0.01:
            rate *= math.exp(rng.gauss(1.2, 0.4))
        if surge_at <= i < surge_at + surge_len:
            rate *= 4.0
        times.append(t)
        values.append(_poisson(rng, rate))
    return times, values


def _poisson(rng: random.Random, rate: float) -> int:
    if rate > 30.0:
        return max(0, round(rng.gauss(rate, math.sqrt(rate))))
    limit, k, p = math.exp(-rate), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def _onset_indices(times, values):
    detector = OnsetDetector()
    return [i for i, (t, v) in enumerate(zip(times, values))
            if detector.score_then_learn_one({"value": v}, t).is_anomaly]


def test_bursty_counts_raise_few_false_onsets_and_a_surge_is_reported_early():
    """Single-sample bursts are the normal noise of a count series; a sustained surge is not. (With
    the likelihood over 5 samples at 4σ these series raised about 4 false onsets a week, now under 1.5.)"""
    false = sum(len(_onset_indices(*_bursty_counts(seed))) for seed in SEEDS)
    weeks = len(SEEDS) * 3
    assert false / weeks <= 2.5, f"{false} false onsets in {weeks} weeks"
    surge = 18 * 288 + 100
    delays = []
    for seed in SEEDS:
        onsets = _onset_indices(*_bursty_counts(seed, surge_at=surge))
        delays += [i - surge for i in onsets if surge <= i < surge + 24][:1]
    # A false onset in the day before the surge can hold its report (one seed here): at most one miss.
    assert len(delays) >= len(SEEDS) - 1 and max(delays) <= 6, delays


def test_a_version_1_snapshot_gains_a_cold_spike_view_and_raises_no_onset_for_it():
    s = metric_series("normal", 1)
    detector = OnsetDetector()
    for t, v in zip(s.times_s[:2000], s.values[:2000]):
        detector.score_then_learn_one({"value": v}, t)
    state = {k: v for k, v in detector.__dict__.items() if k != "spike"}
    restored = OnsetDetector.__new__(OnsetDetector)
    restored.__setstate__(dict(state, version=1))
    assert restored.version == OnsetDetector.STATE_VERSION and restored.spike.n == 0
    flags = [restored.score_then_learn_one({"value": v}, t).is_anomaly
             for t, v in zip(s.times_s[2000:2100], s.values[2000:2100])]
    assert not any(flags)      # a cold spike view (no variance yet) must not fire
    assert restored.spike.n == 100


def test_a_version_2_snapshot_keeps_its_scales_and_gains_a_cold_shift_view():
    s = metric_series("normal", 2)
    detector = OnsetDetector()
    for t, v in zip(s.times_s[:2000], s.values[:2000]):
        detector.score_then_learn_one({"value": v}, t)
    new_fields = {"onset_z", "spike_z", "shift_z", "shifts", "shift_likelihood"}
    state = {k: v for k, v in detector.__dict__.items() if k not in new_fields}
    restored = OnsetDetector.__new__(OnsetDetector)
    restored.__setstate__(dict(state, version=2))
    assert restored.version == OnsetDetector.STATE_VERSION == 3
    assert (restored.onset_z, restored.spike_z, restored.shifts) == (5.0, 16.0, {})
    flags = [restored.score_then_learn_one({"value": v}, t).is_anomaly
             for t, v in zip(s.times_s[2000:2300], s.values[2000:2300])]
    assert not any(flags)                      # a cold shift view must not fire
    assert restored.shifts["value"].n == 300 and restored.shift_likelihood.n > 0
