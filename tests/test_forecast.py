"""Short-horizon forecasters: accuracy against the last value, interval coverage, irregular time."""

from __future__ import annotations

import bisect
import math
import statistics

import pytest

from prediction.forecast import Forecast, TemperatureForecaster, TrendForecaster
from prediction.synthetic import normal_telemetry, thermal_ramp
from prediction.telemetry_models import TelemetryModels


def _replay(ramp, horizon_s, forecaster=None):
    """Forecast ``horizon_s`` ahead after every sample; errors against the true curve, and hits of
    the interval on the observation that arrives at the target time."""
    f = forecaster or TemperatureForecaster()
    ts, ys = ramp.times_s, ramp.observed_c
    fc_err, last_err, hits = [], [], []
    for t, y in zip(ts, ys):
        f.learn_one(y, t)
        if t < 120.0:
            continue
        j = bisect.bisect_left(ts, t + horizon_s)
        if j >= len(ts) or ts[j] - (t + horizon_s) > 1.5:
            continue
        value, lower, upper = f.forecast(horizon_s)
        truth = ramp.true_at(t + horizon_s)
        fc_err.append(abs(value - truth))
        last_err.append(abs(y - truth))
        hits.append(lower <= ys[j] <= upper)
    return statistics.mean(fc_err), statistics.mean(last_err), sum(hits) / len(hits)


@pytest.mark.parametrize("horizon_s", [10.0, 20.0, 30.0])
def test_forecast_beats_last_value_on_thermal_ramps(horizon_s):
    for seed in range(3):
        mae, baseline, _ = _replay(thermal_ramp(seed=seed, duration_s=1500.0), horizon_s)
        assert mae < 0.8 * baseline, (seed, mae, baseline)


def test_interval_covers_about_its_nominal_share():
    coverage = [_replay(thermal_ramp(seed=seed, duration_s=1500.0), h)[2]
                for seed in range(3) for h in (10.0, 30.0)]
    assert 0.85 <= statistics.mean(coverage) <= 0.97, coverage


def test_a_different_coverage_gives_a_narrower_interval_that_covers_less():
    ramp = thermal_ramp(seed=4, duration_s=1500.0)
    wide = _replay(ramp, 20.0, TemperatureForecaster(coverage=0.9))[2]
    narrow = _replay(ramp, 20.0, TemperatureForecaster(coverage=0.5))[2]
    assert 0.35 <= narrow <= 0.7 < wide


def test_linear_trend_without_damping_extrapolates_a_line_exactly():
    f = TrendForecaster(damping_time_s=math.inf)
    t = 0.0
    for i in range(200):
        t += 0.5 if i % 3 else 2.0            # irregular spacing
        f.learn_one(10.0 + 0.25 * t, t)
    value, lower, upper = f.forecast(40.0)
    assert value == pytest.approx(10.0 + 0.25 * (t + 40.0), abs=1e-6)


def test_gaps_nans_and_out_of_order_samples():
    f = TemperatureForecaster()
    for t in range(100):
        f.learn_one(60.0, float(t))
    f.learn_one(math.nan, 100.0)              # a gap in the reading
    f.learn_one(None, 101.0)
    f.learn_one(99.0, 50.0)                   # out of order: ignored
    assert f.forecast(10.0).value == pytest.approx(60.0)
    f.learn_one(70.0, 400.0)                  # after a 5-minute silence the level moves, but not wildly
    value = f.forecast(10.0).value
    assert 60.0 < value < 72.0


def test_prob_above_is_consistent_with_the_interval():
    f = TemperatureForecaster()
    ramp = thermal_ramp(seed=2, duration_s=600.0)
    for t, y in zip(ramp.times_s, ramp.observed_c):
        f.learn_one(y, t)
    value, lower, upper = f.forecast(30.0)
    assert f.prob_above(value, 30.0) == pytest.approx(0.5)
    assert f.prob_above(value, 30.0) > f.prob_above(value + 0.5, 30.0) > f.prob_above(upper, 30.0)
    assert f.prob_above(upper, 30.0) == pytest.approx(0.05, abs=0.02)   # 90% interval: ~5% above
    assert f.prob_above(lower, 30.0) == pytest.approx(0.95, abs=0.02)


def test_telemetry_models_forecast_and_evidence():
    models = TelemetryModels.for_node("node-0", horizon_s=20.0)
    for r in normal_telemetry(n=300, seed=1):
        assessment, _ = models.score_then_learn_one(r)
    assert set(assessment.forecasts) == {"gpu_temp_c", "power_w", "latency_ms"}
    assert all(isinstance(f, Forecast) and f.lower <= f.value <= f.upper for f in assessment.forecasts.values())
    assert models.forecast("gpu_temp_c", 20.0) == assessment.forecasts["gpu_temp_c"]
    evidence = assessment.evidence()
    assert evidence["forecast_horizon_s"] == 20.0
    assert evidence["forecast_c"] == assessment.forecasts["gpu_temp_c"].value
    assert 0.0 <= evidence["anomaly_score"] <= 1.0 and evidence["contributing_features"] == []
    assert 0.0 <= models.prob_above("gpu_temp_c", 85.0, 30.0) < 0.01


def test_the_assessment_forecasts_are_computed_when_read_and_never_answer_for_a_later_sample():
    models = TelemetryModels.for_node("node-0", horizon_s=20.0)
    records = normal_telemetry(n=200, seed=2)
    for r in records[:199]:
        assessment, _ = models.score_then_learn_one(r)
    power = models.forecast("power_w", 20.0)
    assert assessment.forecasts["power_w"] == power and len(assessment.forecasts) == 3
    models.score_then_learn_one(records[199])
    assert assessment.forecasts["power_w"] == power             # read before: kept as it was
    with pytest.raises(RuntimeError, match="later sample"):
        assessment.forecasts["latency_ms"]                       # never read before the next sample


def test_models_keep_only_the_forecasters_asked_for():
    models = TelemetryModels.for_node("node-0", forecasts=("gpu_temp_c",))   # what the control flow keeps
    for r in normal_telemetry(n=100, seed=3):
        assessment, _ = models.score_then_learn_one(r)
    assert list(models.forecasters) == ["gpu_temp_c"] and list(assessment.forecasts) == ["gpu_temp_c"]
    assert assessment.evidence()["forecast_c"] == models.forecast("gpu_temp_c", 30.0).value
    with pytest.raises(ValueError):
        TelemetryModels.for_node("node-0", forecasts=("fan_rpm",))
