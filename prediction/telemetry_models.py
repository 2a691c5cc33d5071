"""A node's online models over its Telemetry records: anomaly score, forecasts, alert episodes.

`TelemetryModels` is the per-node bundle the control flow keeps in its state
(plain objects, pickled by Bytewax recovery). One call per sample::

    assessment, alerts = models.score_then_learn_one(record)

scores the record with the state before it, then learns it (test-then-train),
and returns an `Assessment` (anomaly result + forecasts of temperature, power
and latency at ``horizon_s``) and the Alert records of episodes that opened or
closed (see `prediction.episodes`). Other horizons: ``models.forecast("gpu_temp_c", 20.0)``,
``models.prob_above("gpu_temp_c", 85.0, 30.0)``.

What the forecasters learn
--------------------------
The power and latency forecasters do not learn a sample whose feature lies
beyond the detector's ``learn_clip`` from its normal, whether or not the
sample is still flagged (the detector reports an excursion's onset, then calms
down while it lasts): a latency spike or a power glitch would otherwise bend
the trend they extrapolate, and the forecast after the incident would chase
it; a lasting shift is learned once the detector adopts it as the new normal. The temperature forecaster learns every sample on
purpose: temperature follows physics, a thermal excursion is scored anomalous
yet is exactly what the policy must see coming (its 85 °C rule acts on the
forecast), so the forecast has to track it.

`TelemetryAnomalyDetector` maps a record onto the features the generic
`prediction.anomaly.AnomalyDetector` scores:

=====================  ==================================================
``gpu_temp_c``         temperature, °C
``temp_rate_c_per_s``  its rate of change from the previous sample (per
                       second of event time; missing across gaps > 10 s)
``power_headroom``     ``1 - power_w / power_cap_w``
``mem_used_frac``      memory in use
``latency_ms``         request latency, on a log scale (it is multiplicative)
``throughput_rps``     throughput (linear: it is proportional to load)
=====================  ==================================================

A change of variant, precision or batch size is a step the system made on
purpose: it re-bases the features it moves at once (temperature rate, power,
memory, latency, throughput; they re-warm over 10 samples) and the power and
latency forecasters, instead of calling it an anomaly. The temperature level
is not re-based: it follows physics, and a temperature far from its recent
normal is worth a look whatever caused it. So a thermal excursion (the
Figure 2 scenario) is itself scored anomalous on ``gpu_temp_c``; read
`AnomalyResult.contributions` before treating an anomaly as a fault, or leave
temperature out (``TelemetryModels.for_node(..., features=...)``) when a
threshold policy already handles it.

>>> import random
>>> rng = random.Random(0)
>>> models = TelemetryModels.for_node("n1")
>>> def record(i, **over):
...     r = dict(node_id="n1", ts_ms=1_000 * i, seq=i, gpu_temp_c=60 + rng.gauss(0, 0.3), gpu_util=0.7,
...              mem_used_frac=0.4 + rng.gauss(0, 0.002), power_w=200 + rng.gauss(0, 2), power_cap_w=300.0,
...              latency_ms=5 * (1 + rng.gauss(0, 0.02)), throughput_rps=120 + rng.gauss(0, 2),
...              variant="transformer", precision="fp32", batch_size=8, source="simulator", scenario=None)
...     return {**r, **over}
>>> for i in range(200):
...     assessment, alerts = models.score_then_learn_one(record(i))
>>> assessment.anomaly.is_anomaly, round(assessment.forecasts["gpu_temp_c"].value)
(False, 60)
>>> assessment, alerts = models.score_then_learn_one(record(200, latency_ms=25.0))   # latency jumps five-fold
>>> assessment.anomaly.is_anomaly, assessment.anomaly.top_features()
(True, ['latency_ms'])
>>> alerts[0]["alert_id"], alerts[0]["end_ts_ms"], alerts[0]["contributing_features"]   # opened at once
('n1:anomaly:200000', None, ['latency_ms'])
>>> round(models.forecast("latency_ms", 10.0).value, 1)     # the spike is not learned by the forecaster
5.0
>>> for i in range(201, 260):
...     assessment, alerts = models.score_then_learn_one(record(i))
...     if alerts: break
>>> alerts[0]["alert_id"], alerts[0]["end_ts_ms"], alerts[0]["samples"]   # closed after the 30 s gap
('n1:anomaly:200000', 200000, 1)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from collections.abc import Mapping
from typing import Optional

from prediction.anomaly import AnomalyDetector, AnomalyResult
from prediction.episodes import EpisodeDetector
from prediction.forecast import Forecast, TemperatureForecaster, TrendForecaster
from schemas.state import Versioned

TELEMETRY_FEATURES = ("gpu_temp_c", "temp_rate_c_per_s", "power_headroom", "mem_used_frac",
                      "latency_ms", "throughput_rps")
#: Features a deliberate change of variant, precision or batch size moves at once (the temperature
#: itself follows over tens of seconds, but its rate of change jumps with the power).
CONFIG_SENSITIVE = ("temp_rate_c_per_s", "power_headroom", "mem_used_frac", "latency_ms", "throughput_rps")
#: Scale floors in each feature's units (temperature sensors and the simulator round their readings).
DEFAULT_MIN_SCALE = {"gpu_temp_c": 0.1, "temp_rate_c_per_s": 0.05, "power_headroom": 0.002,
                     "mem_used_frac": 0.001, "latency_ms": 0.01, "throughput_rps": 0.1}
FORECAST_METRICS = ("gpu_temp_c", "power_w", "latency_ms")
#: The anomaly feature of each forecast metric whose flagged samples that forecaster does not learn.
FORECAST_GUARDED_BY = {"power_w": "power_headroom", "latency_ms": "latency_ms"}
MAX_RATE_GAP_S = 10.0
#: Samples an excursion scores against the normal before only its further departures count
#: (`AnomalyDetector.onset_samples`): enough for the policy's 3-in-a-row anomaly rule to see it.
ONSET_SAMPLES = 5


def _number(value) -> float:
    return math.nan if value is None else float(value)


class TelemetryAnomalyDetector(Versioned):
    """`AnomalyDetector` over the features of Telemetry records (see the module table).

    Parameters
    ----------
    detector
        The generic detector (default: threshold 0.9999, `DEFAULT_MIN_SCALE`, onsets after
        `ONSET_SAMPLES`).
    features
        Which of `TELEMETRY_FEATURES` to score.
    rebase_on_change
        Features re-based when variant, precision or batch size changes.

    Examples
    --------
    >>> detector = TelemetryAnomalyDetector(features=("gpu_temp_c",))
    >>> for i in range(100):
    ...     result = detector.score_then_learn_one({"ts_ms": 1000 * i, "gpu_temp_c": 60.0 + 0.5 * (i % 2)})
    >>> detector.score_one({"ts_ms": 100_000, "gpu_temp_c": 75.0}).top_features()
    ['gpu_temp_c']
    """

    STATE_VERSION = 1

    def __init__(self, detector: Optional[AnomalyDetector] = None, features: tuple = TELEMETRY_FEATURES,
                 rebase_on_change: tuple = CONFIG_SENSITIVE):
        self.detector = detector or AnomalyDetector(min_scale=DEFAULT_MIN_SCALE, onset_samples=ONSET_SAMPLES)
        self.features = tuple(features)
        self.rebase_on_change = tuple(rebase_on_change)
        self.version = self.STATE_VERSION
        self._last_ts_ms: Optional[int] = None
        self._last_temp = math.nan
        self._config = None
        self.config_changed = False  # set by `score_then_learn_one`: the last record changed the config

    @property
    def threshold(self) -> float:
        return self.detector.threshold

    def featurize(self, sample: Mapping) -> dict:
        """The feature dict of one record, given the last learned one (no state change)."""
        get = sample.get
        temp = get("gpu_temp_c")
        temp = math.nan if temp is None else float(temp)
        rate = math.nan
        if self._last_ts_ms is not None:
            dt = (sample["ts_ms"] - self._last_ts_ms) / 1000.0
            if 0.0 < dt <= MAX_RATE_GAP_S:
                rate = (temp - self._last_temp) / dt
        power, cap = get("power_w"), get("power_cap_w")
        latency, throughput, mem = get("latency_ms"), get("throughput_rps"), get("mem_used_frac")
        x = {
            "gpu_temp_c": temp,
            "temp_rate_c_per_s": rate,
            "power_headroom": 1.0 - power / cap if power is not None and cap is not None and cap > 0.0 else math.nan,
            "mem_used_frac": math.nan if mem is None else float(mem),
            "latency_ms": math.log(latency) if latency is not None and latency > 0.0 else math.nan,
            "throughput_rps": math.nan if throughput is None else float(throughput),
        }
        if len(self.features) != len(x):
            x = {name: x[name] for name in self.features}
        return x

    def score_then_learn_one(self, sample: Mapping) -> AnomalyResult:
        """Score the record, then learn it; a record at or before the last learned time is only scored."""
        ts_ms = sample["ts_ms"]
        fresh = self._last_ts_ms is None or ts_ms > self._last_ts_ms
        x = self.featurize(sample)
        self.config_changed = False
        if fresh:
            config = (sample.get("variant"), sample.get("precision"), sample.get("batch_size"))
            if config != self._config:
                if self._config is not None:
                    self.detector.rebase(self.rebase_on_change)
                    self.config_changed = True
                self._config = config
        result = self.detector.score_then_learn_one(x, ts_ms / 1000.0)
        if fresh:
            self._last_ts_ms = ts_ms
            temp = x.get("gpu_temp_c")
            self._last_temp = _number(sample.get("gpu_temp_c")) if temp is None else temp
        return result

    def score_one(self, sample: Mapping) -> AnomalyResult:
        return self.detector.score_one(self.featurize(sample), sample["ts_ms"] / 1000.0)

    def learn_one(self, sample: Mapping) -> None:
        self.score_then_learn_one(sample)


class Forecasts(Mapping):
    """Each forecaster's `Forecast` at the models' horizon, computed when first read.

    The policy reads one of the three per sample, so the others are not computed
    for nothing. They describe the models as they are after the sample they came
    with: read them before the models learn the next sample (a later read raises
    instead of answering for another time).
    """

    __slots__ = ("_models", "_stamp", "_values")

    def __init__(self, models: "TelemetryModels"):
        self._models = models
        self._stamp = models._last_ts_ms
        self._values = {}

    def __getitem__(self, metric: str) -> Forecast:
        value = self._values.get(metric)
        if value is None:
            models = self._models
            forecaster = models.forecasters[metric]
            if models._last_ts_ms != self._stamp:
                raise RuntimeError(f"the {metric} forecast of the sample at {self._stamp} ms was read after the "
                                   "models learned a later sample")
            value = self._values[metric] = forecaster.forecast(models.horizon_s)
        return value

    def __iter__(self):
        return iter(self._models.forecasters)

    def __len__(self) -> int:
        return len(self._models.forecasters)

    def __repr__(self) -> str:
        return f"Forecasts({dict(self)!r})"


@dataclass
class Assessment:
    """What the models say about one sample: its anomaly result and forecasts at ``horizon_s``."""

    node_id: str
    ts_ms: int
    anomaly: AnomalyResult
    forecasts: Mapping       # metric -> Forecast(value, lower, upper) (a `Forecasts`, or any mapping)
    horizon_s: float

    def evidence(self, metric: str = "gpu_temp_c") -> dict:
        """The MorphCommand evidence fields the models fill (forecast of ``metric``, anomaly)."""
        f = self.forecasts.get(metric)
        ok = f is not None and f.value == f.value
        return {
            "forecast_c": f.value if ok else None,
            "forecast_lower_c": f.lower if ok else None,
            "forecast_upper_c": f.upper if ok else None,
            "forecast_horizon_s": self.horizon_s if ok else None,
            "anomaly_score": None if self.anomaly.warming_up else self.anomaly.score,
            "contributing_features": self.anomaly.top_features() if self.anomaly.is_anomaly else [],
        }


def default_forecasters() -> dict:
    """Temperature follows its RC time constant; power and latency step, so their trends die fast."""
    return {
        "gpu_temp_c": TemperatureForecaster(),
        "power_w": TrendForecaster(level_time_s=2.0, trend_time_s=10.0, damping_time_s=5.0),
        "latency_ms": TrendForecaster(level_time_s=3.0, trend_time_s=10.0, damping_time_s=5.0),
    }


@dataclass
class TelemetryModels(Versioned):
    """Per-node anomaly detector, forecasters and alert episodes; one `score_then_learn_one` per record.

    Parameters
    ----------
    node_id
        The node these models watch.
    detector, forecasters, episodes
        The parts (defaults: `TelemetryAnomalyDetector`, `default_forecasters`, `EpisodeDetector`).
    horizon_s
        Horizon of the forecasts in each `Assessment`.

    Examples
    --------
    See the module docstring.
    """

    STATE_VERSION = 1
    node_id: str
    detector: TelemetryAnomalyDetector = field(default_factory=TelemetryAnomalyDetector)
    forecasters: dict = field(default_factory=default_forecasters)
    episodes: Optional[EpisodeDetector] = None
    horizon_s: float = 30.0
    version: int = STATE_VERSION
    _last_ts_ms: Optional[int] = None

    def __post_init__(self):
        if self.episodes is None:
            self.episodes = EpisodeDetector(self.node_id)

    @classmethod
    def for_node(cls, node_id: str, threshold: float = 0.9999, horizon_s: float = 30.0,
                 features: tuple = TELEMETRY_FEATURES, forecasts: tuple = FORECAST_METRICS) -> "TelemetryModels":
        """Fresh models for a node (the control flow's ``models_factory``); ``features`` picks the
        anomaly features (a subset of `TELEMETRY_FEATURES`), ``forecasts`` the metrics forecast
        (a subset of `FORECAST_METRICS`: a forecaster costs a few µs per sample, so a consumer
        that reads only the temperature forecast, as the morph policy does, keeps only that one)."""
        unknown = set(features) - set(TELEMETRY_FEATURES)
        if unknown or not features:
            raise ValueError(f"features must be a non-empty subset of {TELEMETRY_FEATURES}; unknown: {sorted(unknown)}")
        if not set(forecasts) <= set(FORECAST_METRICS):
            raise ValueError(f"forecasts must be a subset of {FORECAST_METRICS}, not {forecasts}")
        detector = TelemetryAnomalyDetector(AnomalyDetector(threshold=threshold, min_scale=DEFAULT_MIN_SCALE,
                                                            onset_samples=ONSET_SAMPLES), features=features)
        close = max(0.0, 1.0 - 10.0 * (1.0 - threshold))  # hysteresis: ten times the open tail
        forecasters = {metric: f for metric, f in default_forecasters().items() if metric in forecasts}
        return cls(node_id, detector, forecasters, episodes=EpisodeDetector(node_id, close_threshold=close),
                   horizon_s=horizon_s)

    def score_then_learn_one(self, sample: Mapping) -> tuple[Assessment, list[dict]]:
        """Score-then-learn one Telemetry record: its `Assessment` and the Alert records it opened or closed."""
        ts_ms = sample["ts_ms"]
        fresh = self._last_ts_ms is None or ts_ms > self._last_ts_ms
        detector = self.detector
        anomaly = detector.score_then_learn_one(sample)
        forecasters = self.forecasters
        if fresh:
            if detector.config_changed:  # a deliberate step: power and latency restart their level
                for metric in ("power_w", "latency_ms"):
                    if metric in forecasters:
                        forecasters[metric].rebase()
            t = ts_ms / 1000.0
            # Not only flagged samples: past an excursion's onset the score calms down (the detector
            # reports onsets), but the sample is still outside the feature's normal until it is adopted.
            clip = detector.detector.learn_clip
            contributions = anomaly.contributions
            for metric, forecaster in forecasters.items():
                guard = FORECAST_GUARDED_BY.get(metric)
                if guard is not None:
                    sigma = contributions.get(guard, 0.0)
                    if sigma > clip or sigma < -clip:
                        continue
                forecaster.learn_one(sample.get(metric), t)
            self._last_ts_ms = ts_ms
        alerts = self.episodes.observe(ts_ms, anomaly) if fresh else []
        return Assessment(self.node_id, ts_ms, anomaly, Forecasts(self), self.horizon_s), alerts

    def forecast(self, metric: str, horizon_s: float) -> Forecast:
        """``metric`` (gpu_temp_c, power_w, latency_ms) ``horizon_s`` seconds after the last sample."""
        return self.forecasters[metric].forecast(horizon_s)

    def prob_above(self, metric: str, level: float, horizon_s: float) -> float:
        """Probability that ``metric`` is above ``level`` ``horizon_s`` seconds after the last sample."""
        return self.forecasters[metric].prob_above(level, horizon_s)

    def flush(self) -> list[dict]:
        """The closing Alert of the episode still open (end of a stream, a node gone idle)."""
        return self.episodes.flush()
