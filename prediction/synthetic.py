"""Synthetic telemetry with known, labelled anomalies, and thermal ramps for the forecasters.

`normal_telemetry` draws Telemetry records of one node in normal operation: a
slowly wandering load (an Ornstein–Uhlenbeck process) drives power, an RC
thermal model turns power into temperature, latency and throughput follow the
load, every reading has sensor noise; samples come about once a second with
jitter and occasional gaps. `inject` adds one anomaly and returns its labelled
window:

* ``spike`` — a reading jumps for a few seconds (default: temperature +8 °C);
* ``level_shift`` — a reading moves for good (default: latency × 1.25);
* ``drift`` — a reading creeps (default: memory +0.1 over 10 minutes, a leak);
* ``stuck`` — a sensor repeats its last value (default: temperature, 3 minutes); the
  window includes the sample where it lets go and the reading jumps.

`thermal_ramp` is a temperature that climbs towards plateaus and falls back,
with the exact noiseless curve kept for scoring forecasts.

>>> base = normal_telemetry(n=600, seed=1)
>>> stream = inject(base, "spike", at_s=300)
>>> stream.kind, len(stream.records), len(stream.windows)
('spike', 600, 1)
>>> start, end = stream.windows[0]
>>> [round(r["gpu_temp_c"] - b["gpu_temp_c"], 6) for r, b in zip(stream.records, base) if start <= r["ts_ms"] <= end]
[8.0, 8.0, 8.0, 8.0]
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

ANOMALY_KINDS = ("spike", "level_shift", "drift", "stuck")
#: (field, magnitude, duration in s, labelled window in s) of each kind by default.
DEFAULT_INJECTION = {
    "spike": ("gpu_temp_c", 8.0, 3.0, 3.0),          # +8 °C for 3 s
    "level_shift": ("latency_ms", 1.25, None, 120.0),  # × 1.25 for good; the first 2 min labelled
    "drift": ("mem_used_frac", 0.1, 600.0, 600.0),    # +0.1 over 10 min
    "stuck": ("gpu_temp_c", None, 180.0, 180.0),       # frozen for 3 min
}
START_MS = 1_700_000_000_000


@dataclass
class LabelledStream:
    """Telemetry records of one node and the windows ``[start_ms, end_ms]`` that are anomalous."""

    records: list
    windows: list = field(default_factory=list)
    kind: str = "normal"


def normal_telemetry(n: int = 3600, seed: int = 0, node_id: str = "node-0", start_ms: int = START_MS,
                     load: float = 0.6, load_sd: float = 0.05, load_time_s: float = 120.0,
                     ambient_c: float = 30.0, r_c_per_w: float = 0.15, tau_s: float = 30.0,
                     idle_w: float = 60.0, dynamic_w: float = 240.0, power_cap_w: float = 300.0,
                     temp_noise_c: float = 0.3, power_noise_w: float = 3.0, latency_ms: float = 5.0,
                     latency_noise: float = 0.03, throughput_rps: float = 150.0, mem_frac: float = 0.45,
                     mem_noise: float = 0.003, jitter_s: float = 0.1, gap_prob: float = 0.003,
                     gap_s: tuple = (5.0, 30.0)) -> list[dict]:
    """``n`` Telemetry records of a healthy node (see the module docstring)."""
    rng = random.Random(seed)
    u = load
    temp = ambient_c + (idle_w + dynamic_w * load) * r_c_per_w
    t = 0.0
    records = []
    for i in range(n):
        dt = 1.0 + rng.uniform(-jitter_s, jitter_s)
        if i and rng.random() < gap_prob:
            dt += rng.uniform(*gap_s)
        t += dt
        # Load: mean-reverting with stationary s.d. load_sd, integrated exactly over dt.
        keep = math.exp(-dt / load_time_s)
        u = load + (u - load) * keep + load_sd * math.sqrt(1.0 - keep * keep) * rng.gauss(0.0, 1.0)
        u = min(max(u, 0.02), 1.0)
        power = idle_w + dynamic_w * u
        target = ambient_c + power * r_c_per_w
        temp = target + (temp - target) * math.exp(-dt / tau_s)
        records.append({
            "node_id": node_id,
            "ts_ms": start_ms + int(round(t * 1000)),
            "seq": i,
            "gpu_temp_c": round(temp + rng.gauss(0.0, temp_noise_c), 2),
            "gpu_util": round(u, 4),
            "mem_used_frac": round(mem_frac + rng.gauss(0.0, mem_noise), 5),
            "power_w": round(min(power + rng.gauss(0.0, power_noise_w), power_cap_w), 2),
            "power_cap_w": power_cap_w,
            "latency_ms": round(latency_ms * (1.0 + 0.5 * (u - load)) * math.exp(rng.gauss(0.0, latency_noise)), 4),
            "throughput_rps": round(throughput_rps * u / load * math.exp(rng.gauss(0.0, 0.02)), 2),
            "variant": "transformer",
            "precision": "fp32",
            "batch_size": 8,
            "source": "simulator",
            "scenario": None,
        })
    return records


def inject(records: list[dict], kind: str, at_s: float, feature: str | None = None,
           magnitude: float | None = None, duration_s: float | None = None) -> LabelledStream:
    """A copy of ``records`` with one anomaly of ``kind`` starting ``at_s`` seconds after the first.

    Defaults per kind are in `DEFAULT_INJECTION`; ``magnitude`` is added for a spike
    and a drift (its total), multiplied for a level shift, unused for stuck.
    """
    if kind not in ANOMALY_KINDS:
        raise ValueError(f"unknown anomaly kind {kind!r}; known: {', '.join(ANOMALY_KINDS)}")
    d_feature, d_magnitude, d_duration, label_s = DEFAULT_INJECTION[kind]
    feature = feature or d_feature
    magnitude = d_magnitude if magnitude is None else magnitude
    duration_s = d_duration if duration_s is None else duration_s
    if kind in ("spike", "drift", "stuck"):
        label_s = duration_s
    out = [dict(r) for r in records]
    t0 = out[0]["ts_ms"] + int(at_s * 1000)
    hit = [r for r in out if r["ts_ms"] >= t0]
    if not hit:
        raise ValueError("the anomaly starts after the last record")
    start = hit[0]["ts_ms"]
    frozen = None
    for r in hit:
        age_s = (r["ts_ms"] - start) / 1000.0
        if duration_s is not None and age_s > duration_s:
            if kind == "drift":
                r[feature] = r[feature] + magnitude  # the leak stays
            continue
        if kind == "spike":
            r[feature] = r[feature] + magnitude
        elif kind == "level_shift":
            r[feature] = r[feature] * magnitude
        elif kind == "drift":
            r[feature] = r[feature] + magnitude * age_s / duration_s
        else:  # stuck: the sensor repeats what it read at the start
            frozen = r[feature] if frozen is None else frozen
            r[feature] = frozen
    covered = [r["ts_ms"] for r in hit if (r["ts_ms"] - start) / 1000.0 <= label_s]
    if kind == "stuck" and len(covered) < len(hit):
        covered.append(hit[len(covered)]["ts_ms"])  # the release: the reading jumps to where it really is
    return LabelledStream(out, [(start, covered[-1])], kind)


def anomaly_suite(seed: int = 0, n: int = 3600, at_s: float = 1800.0, **normal) -> list[LabelledStream]:
    """One stream per anomaly kind (same healthy background, seeded), plus an unlabelled normal one."""
    base = normal_telemetry(n=n, seed=seed, **normal)
    return [LabelledStream(base, [], "normal")] + [inject(base, kind, at_s) for kind in ANOMALY_KINDS]


@dataclass
class ThermalRamp:
    """A sampled temperature and the exact curve it was sampled from."""

    times_s: list
    observed_c: list
    steps: list            # (time s, target plateau °C)
    start_c: float
    tau_s: float

    def true_at(self, t: float) -> float:
        """The noiseless temperature at time ``t`` (seconds)."""
        temp, since = self.start_c, 0.0
        target = self.start_c
        for at, plateau in self.steps:
            if at > t:
                break
            temp = target + (temp - target) * math.exp(-(at - since) / self.tau_s)
            since, target = at, plateau
        return target + (temp - target) * math.exp(-(t - since) / self.tau_s)


def thermal_ramp(duration_s: float = 1200.0, seed: int = 0, start_c: float = 50.0, tau_s: float | None = None,
                 noise_c: float = 0.3, jitter_s: float = 0.2, gap_prob: float = 0.005,
                 gap_s: tuple = (3.0, 15.0), step_every_s: tuple = (150.0, 300.0),
                 plateaus_c: tuple = (55.0, 92.0)) -> ThermalRamp:
    """A temperature approaching a new random plateau every few minutes (first-order, time constant
    ``tau_s``, drawn from 20–45 s when not given), observed with noise, jitter and gaps."""
    rng = random.Random(seed)
    tau = tau_s if tau_s is not None else rng.uniform(20.0, 45.0)
    steps, at = [], 30.0
    while at < duration_s:
        steps.append((at, rng.uniform(*plateaus_c)))
        at += rng.uniform(*step_every_s)
    ramp = ThermalRamp([], [], steps, start_c, tau)
    t = 0.0
    while t < duration_s:
        ramp.times_s.append(t)
        ramp.observed_c.append(ramp.true_at(t) + rng.gauss(0.0, noise_c))
        t += 1.0 + rng.uniform(-jitter_s, jitter_s)
        if rng.random() < gap_prob:
            t += rng.uniform(*gap_s)
    return ramp
