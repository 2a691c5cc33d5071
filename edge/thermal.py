"""A physical (RC) thermal model of an accelerator, and the scenarios injected into it.

Where no NVIDIA GPU exists (a laptop, CI) the fleet simulator and the edge
worker take their temperature from this model instead of NVML, so the same
code path runs everywhere (which is why the model lives in ``edge/``: it stands in for
the node's own sensor). One lumped thermal mass C (J/°C) loses heat to the
ambient air through a resistance R (°C/W) that the fan sets::

    C dT/dt = P - (T - T_ambient) / R          (steady state: T = T_ambient + P R)

P is idle power plus the dynamic power of the variant being served, scaled
by precision and utilisation, and limited by the power cap. The variant's
share of the dynamic power is its measured cost relative to the transformer
(`measured_variant_power`: the zoo's CPU time per inference, by default in
the edge worker), or a GPU-like profile (`DEFAULT_VARIANT_POWER`: what a
GPU's power would show, flatter than this CPU's cost, and what a bare
`ThermalModel` uses). The step is integrated exactly
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

#: Dynamic power of each variant relative to the transformer on a GPU-like device (the
#: ``gpu`` power profile): a bare `ThermalModel` uses it; the edge worker uses the zoo's
#: measured cost instead unless told otherwise (`measured_variant_power`).
DEFAULT_VARIANT_POWER = {"transformer": 1.0, "lstm": 0.6, "cnn": 0.4, "mobilenet": 0.25, "snn": 0.12}
#: Where a node's power per variant comes from: the zoo's measured CPU time per
#: inference (the default), its FLOPs, or the GPU-like profile above.
POWER_PROFILES = ("cpu", "flops", "gpu")
#: A variant's share of the dynamic power is never taken below this (idle work of serving at all).
MIN_POWER_SHARE = 0.05
PRECISION_POWER = {"fp32": 1.0, "fp16": 0.7, "int8": 0.5}
#: Nominal per-request latency (ms at batch 1) used by the simulator when no worker measures it.
DEFAULT_VARIANT_LATENCY_MS = {"transformer": 4.0, "lstm": 2.5, "cnn": 1.5, "mobilenet": 1.0, "snn": 0.8}
#: Above this temperature the accelerator throttles its clocks (as real GPUs do near 95 °C).
THROTTLE_C = 95.0
EVENT_AMBIENT_RISE_C, EVENT_FAN = 28.0, 0.5  # thermal-event (tuned: Figure 2's ladder under noise and loop delay)
#: The thermal event for a node whose power follows the zoo's measured cost (the demo's).
#: That profile is steep (the lstm draws about a third of the transformer's dynamic power),
#: so a step down cools the node far below the 78 °C recovery line (the policy holds the
#: step back up while it would undo the step down: `morph.policy`). The air heats by 35 °C
#: over 42 s (0.8 °C/s, slow enough that the 85 °C rule acts before 90 °C), the die and
#: spreader hold 35 J/°C (tau 5 s), and the failing fan keeps 55 % of its cooling, so the
#: lstm or cnn passes 90 °C and the snn stays under it. Simulated: see
#: tests/test_thermal.py::test_the_rules_walk_a_measured_cost_node_down_and_back_up_once.
MEASURED_COST_EVENT = {"event_rise_c": 35.0, "event_ramp_end": 0.36, "event_fan": 0.55,
                       "heat_capacity_j_per_c": 35.0}


def thermal_event(duration_s: float, power_profile: str = "cpu") -> "Scenario":
    """The demo's thermal event for a node on ``power_profile``: `MEASURED_COST_EVENT` where the
    power follows the zoo's measured cost (cpu, flops), the GPU-like profile's own event for gpu.

    >>> thermal_event(150).event_rise_c, thermal_event(150, "gpu").event_rise_c
    (35.0, 28.0)
    """
    if power_profile not in POWER_PROFILES:
        raise ValueError(f"unknown power profile {power_profile!r}; known: {', '.join(POWER_PROFILES)}")
    shape = {} if power_profile == "gpu" else MEASURED_COST_EVENT
    return Scenario("thermal-event", duration_s, **shape)


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


def measured_variant_power(relative_cost: dict) -> dict:
    """Each variant's share of the dynamic power from its measured cost relative to the
    transformer (`morph.zoo.manifest.ZooManifest.relative_cost`), kept within
    [`MIN_POWER_SHARE`, 1]; a variant the zoo lacks keeps its GPU-like share.

    >>> measured_variant_power({"transformer": 1.0, "lstm": 0.34, "cnn": 0.17, "mobilenet": 0.065, "snn": 0.03})
    {'transformer': 1.0, 'lstm': 0.34, 'cnn': 0.17, 'mobilenet': 0.065, 'snn': 0.05}
    """
    power = dict(DEFAULT_VARIANT_POWER)
    power.update({v: min(1.0, max(MIN_POWER_SHARE, float(c))) for v, c in relative_cost.items()})
    return power


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
    #: The node's heat capacity under this scenario (J/°C; None: the thermal model's own).
    heat_capacity_j_per_c: float | None = None

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
