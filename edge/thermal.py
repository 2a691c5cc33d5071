"""A physical (RC) thermal model of an accelerator, and the scenarios injected into it.

Where no NVIDIA GPU exists (a laptop, CI) the fleet simulator and the edge
worker take their temperature from this model instead of NVML, so the same
code path runs everywhere (which is why the model lives in ``edge/``: it stands in for
the node's own sensor). One lumped thermal mass C (J/°C) loses heat to the
ambient air through a resistance R (°C/W) that the fan sets::

    C dT/dt = P - (T - T_ambient) / R          (steady state: T = T_ambient + P R)

P is idle power plus the dynamic power of the variant being served (its
measured cost relative to the transformer), scaled by precision and
utilisation, and limited by the power cap. The step is integrated exactly
(exponential approach to steady state), so any sampling interval is stable.

>>> m = ThermalModel(temp_c=30.0)
>>> round(m.steady_state_c(m.power_w("transformer", "fp32", 1.0), 30.0), 1)
75.0
>>> t = [m.step(1.0, "transformer", "fp32", 1.0, Conditions(ambient_c=30.0)) for _ in range(200)]
>>> round(t[-1], 1)
75.0
>>> m.step(1.0, "snn", "fp32", 1.0, Conditions(ambient_c=30.0)) < t[-1]   # lighter variant cools
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

#: Dynamic power of each variant relative to the transformer, used until the zoo's
#: measured CPU cost per inference replaces it (`ThermalModel.variant_power`).
DEFAULT_VARIANT_POWER = {"transformer": 1.0, "lstm": 0.6, "cnn": 0.4, "mobilenet": 0.25, "snn": 0.12}
PRECISION_POWER = {"fp32": 1.0, "fp16": 0.7, "int8": 0.5}
#: Nominal per-request latency (ms at batch 1) used by the simulator when no worker measures it.
DEFAULT_VARIANT_LATENCY_MS = {"transformer": 4.0, "lstm": 2.5, "cnn": 1.5, "mobilenet": 1.0, "snn": 0.8}
#: Above this temperature the accelerator throttles its clocks (as real GPUs do near 95 °C).
THROTTLE_C = 95.0
EVENT_AMBIENT_RISE_C, EVENT_FAN = 28.0, 0.5  # thermal-event (tuned: Figure 2's ladder under noise and loop delay)


@dataclass(frozen=True)
class Conditions:
    """What the environment imposes at one moment: air temperature, fan health, power cap, load."""

    ambient_c: float = 30.0
    fan: float = 1.0          # 1 = healthy; 0.4 = failing fan (R grows by 1/fan)
    power_cap_w: float = 350.0
    load: float = 1.0         # utilisation the request stream asks for, [0,1]


@dataclass
class ThermalModel:
    r_c_per_w: float = 0.15
    c_j_per_c: float = 25.0           # tau = R C ~ 4 s: a die and its spreader, not the whole heatsink
    idle_w: float = 60.0
    dynamic_w: float = 240.0          # transformer, fp32, full utilisation
    temp_c: float = 45.0
    variant_power: dict = field(default_factory=lambda: dict(DEFAULT_VARIANT_POWER))

    def power_w(self, variant: str, precision: str, util: float, cap_w: float = math.inf) -> float:
        p = self.idle_w + self.dynamic_w * self.variant_power[variant] * PRECISION_POWER[precision] * util
        return min(p, cap_w)

    def steady_state_c(self, power_w: float, ambient_c: float, fan: float = 1.0) -> float:
        return ambient_c + power_w * self.r_c_per_w / max(fan, 1e-3)

    def step(self, dt_s: float, variant: str, precision: str, util: float, cond: Conditions) -> float:
        """Advance ``dt_s`` seconds; returns the new temperature."""
        r = self.r_c_per_w / max(cond.fan, 1e-3)
        target = cond.ambient_c + self.power_w(variant, precision, util, cond.power_cap_w) * r
        self.temp_c = target + (self.temp_c - target) * math.exp(-dt_s / (r * self.c_j_per_c))
        return self.temp_c

    def throttle_factor(self) -> float:
        """Fraction of nominal throughput left at the current temperature (clock throttling)."""
        return 1.0 if self.temp_c < THROTTLE_C else max(0.2, 1.0 - 0.15 * (self.temp_c - THROTTLE_C))


def _ramp(t: float, t0: float, t1: float, a: float, b: float) -> float:
    if t <= t0:
        return a
    if t >= t1:
        return b
    return a + (b - a) * (t - t0) / (t1 - t0)


@dataclass(frozen=True)
class Scenario:
    """Conditions as a function of time since the scenario started (seconds).

    ``duration_s`` stretches or compresses the whole timeline; the shapes are
    given as fractions of it so a short test run and a long demo see the same event.
    """

    name: str = "steady"
    duration_s: float = 120.0
    base_ambient_c: float = 30.0
    power_cap_w: float = 350.0
    cycles: int = 6  # "cycles": how many hot spells in ``duration_s``
    # thermal-event: how far the air heats, when the heating ends (fraction of the
    # timeline; it starts at 0.08) and how much of its cooling the failing fan keeps.
    event_rise_c: float = EVENT_AMBIENT_RISE_C
    event_ramp_end: float = 0.25
    event_fan: float = EVENT_FAN

    def at(self, t: float) -> Conditions:
        f = t / self.duration_s
        amb, fan, cap = self.base_ambient_c, 1.0, self.power_cap_w
        if self.name == "heat-wave":
            # Air heats by 35 °C, holds, and cools again.
            amb = _ramp(f, 0.1, 0.35, amb, amb + 35) if f < 0.6 else _ramp(f, 0.6, 0.8, amb + 35, amb)
        elif self.name == "fan-failure":
            fan = 0.45 if 0.15 <= f < 0.65 else 1.0
        elif self.name == "power-cap":
            cap = 0.6 * cap if 0.2 <= f < 0.7 else cap
        elif self.name == "thermal-event":
            # The seed's Figure 2 in two stages: hot air walks a transformer down
            # to cnn, which settles below 85 °C; then the fan fails and the
            # temperature rushes past 90 °C, which calls for the lightest variant.
            rise = self.event_rise_c
            amb = _ramp(f, 0.08, self.event_ramp_end, amb, amb + rise) if f < 0.6 else \
                _ramp(f, 0.6, 0.7, amb + rise, amb)
            fan = self.event_fan if 0.4 <= f < 0.58 else 1.0
        elif self.name == "cycles":
            # Repeated hot spells (for benchmarks that need many threshold crossings in one run).
            phase = (f * self.cycles) % 1.0
            amb = amb + 15 if 0.05 <= phase < 0.45 else amb
        elif self.name != "steady":
            raise ValueError(f"unknown scenario {self.name!r}; known: {', '.join(SCENARIOS)}")
        return Conditions(ambient_c=amb, fan=fan, power_cap_w=cap)


SCENARIOS = ("steady", "heat-wave", "fan-failure", "power-cap", "thermal-event", "cycles")
