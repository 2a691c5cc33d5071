"""A heterogeneous simulated fleet for comparing morph policies on the same scenarios.

Each node is the RC thermal model of `edge.thermal` with traits drawn from a
seed: ambient temperature, fan quality, power cap, a heatsink degradation
that drifts over the run, speed, offered load (with a slow daily-like swing)
and how often inputs repeat (what a result cache can hit). Events are drawn
from the same seed: heat spells, fan failures, power-cap drops, load shifts
and network congestion. Every policy run builds its nodes from the same
`NodeSpec`s, so they meet identical conditions and sensor noise.

Per second a node serves min(offered, capacity): capacity follows the arm's
time per item (from the zoo manifest, `morph.arms`), shrinks when the power
cap clips the clocks or the die throttles above 95 °C, and grows with cache
hits (a hit costs no compute and no network fetch). Skipping the optional
preprocessing stage saves 20 % of compute and power and costs one point of
accuracy; a cache hit on a near-duplicate costs two points on that request.

>>> from morph.arms import ArmSet
>>> arms = ArmSet.nominal(batches=(8,))
>>> spec = fleet_specs(seed=3, nodes=2, duration_s=600)[0]
>>> a, b = HeteroNode(spec, arms), HeteroNode(spec, arms)
>>> [a.step(1.0)["gpu_temp_c"] for _ in range(3)] == [b.step(1.0)["gpu_temp_c"] for _ in range(3)]
True
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from edge.thermal import THROTTLE_C, ThermalModel
from morph.arms import ArmSet

BASE_RPS = 250.0          # heaviest model, fp32, batch 1, speed 1: requests/s
BASE_ITEM_MS = 4.0        # its time per item
SKIP_SAVING, SKIP_ACCURACY = 0.2, 0.01
CACHE_ACCURACY, CACHE_HIT_MS = 0.02, 0.5
NORMAL_NET_MS, CONGESTED_NET_MS = 10.0, 120.0
EVENT_KINDS = ("heat", "fan", "power-cap", "load-shift", "congestion")


@dataclass(frozen=True)
class Event:
    kind: str
    start_s: float
    end_s: float
    magnitude: float


@dataclass(frozen=True)
class NodeSpec:
    node_id: str
    ambient_c: float
    r_scale: float            # fan and heatsink quality: R multiplier
    power_cap_w: float
    degradation_per_h: float  # R grows by this fraction per hour
    speed: float
    base_load: float          # offered load as a share of the heaviest fp32 b8 capacity
    load_period_s: float
    duplicate_frac: float
    noise_seed: int
    events: tuple = ()


def fleet_specs(seed: int, nodes: int, duration_s: float) -> list[NodeSpec]:
    """Node traits and event timelines for ``nodes`` nodes over ``duration_s`` (all from ``seed``)."""
    rng = random.Random(seed)
    rates = {"heat": 1 / 3600, "fan": 1 / 10800, "power-cap": 1 / 7200, "load-shift": 1 / 5400,
             "congestion": 1 / 5400}
    specs = []
    for i in range(nodes):
        events = []
        for kind, rate in rates.items():
            t = rng.expovariate(rate)
            while t < duration_s:
                length = rng.uniform(300, 1200)
                mag = {"heat": rng.uniform(10, 18), "fan": rng.uniform(0.45, 0.6), "power-cap": rng.uniform(0.5, 0.65),
                       "load-shift": rng.uniform(1.4, 1.9), "congestion": CONGESTED_NET_MS}[kind]
                events.append(Event(kind, t, t + length, mag))
                t += length + rng.expovariate(rate)
        specs.append(NodeSpec(
            node_id=f"node-{i:03d}", ambient_c=rng.uniform(20, 34), r_scale=rng.uniform(0.85, 1.2),
            power_cap_w=rng.choice((250.0, 300.0, 350.0)), degradation_per_h=rng.uniform(0.0, 0.15),
            speed=rng.uniform(0.7, 1.3), base_load=rng.uniform(0.35, 0.95), load_period_s=rng.uniform(1800, 3600),
            duplicate_frac=rng.uniform(0.3, 0.7), noise_seed=rng.randrange(1 << 30), events=tuple(events)))
    return specs


@dataclass
class HeteroNode:
    """One simulated node serving an arm; `step` advances a second and returns Telemetry (+ offered load)."""

    spec: NodeSpec
    arms: ArmSet
    variant: str = "transformer"
    precision: str = "fp32"
    batch: int = 8
    cache: bool = False
    pipeline: str = "full"
    elapsed_s: float = 0.0
    temp_c: float = None
    model: ThermalModel = field(default_factory=ThermalModel)
    seconds_above: dict = field(default_factory=lambda: {85.0: 0.0, 90.0: 0.0})
    max_temp_c: float = -1e9
    energy_j: float = 0.0
    served_total: float = 0.0
    clock_offset_s: float = 0.0   # fleet time at which the node started: its telemetry's clock

    def __post_init__(self):
        self.rng = random.Random(self.spec.noise_seed)
        self.seq = 0
        if self.temp_c is None:
            self.temp_c = self._physics(self.elapsed_s, temp_c=self.model.temp_c)[0]["target_c"]

    def apply(self, command: dict) -> None:
        self.variant, self.precision = command["to_variant"], command["to_precision"]
        self.batch = command.get("batch_size") or self.batch
        self.cache = bool(command.get("cache", False))
        self.pipeline = command.get("pipeline") or "full"

    def conditions(self, t: float) -> dict:
        s = self.spec
        amb, fan, cap, net = s.ambient_c, 1.0, s.power_cap_w, NORMAL_NET_MS
        load = s.base_load * (1.0 + 0.2 * math.sin(2 * math.pi * t / s.load_period_s))
        for e in s.events:
            if e.start_s <= t < e.end_s:
                ramp = min(1.0, (t - e.start_s) / 120.0, (e.end_s - t) / 120.0)
                if e.kind == "heat":
                    amb += e.magnitude * ramp
                elif e.kind == "fan":
                    fan = e.magnitude
                elif e.kind == "power-cap":
                    cap *= e.magnitude
                elif e.kind == "load-shift":
                    load *= 1.0 + (e.magnitude - 1.0) * ramp
                else:
                    net = e.magnitude
        r = self.model.r_c_per_w * s.r_scale * (1.0 + s.degradation_per_h * t / 3600.0) / fan
        return {"ambient_c": amb, "r": r, "cap_w": cap, "load": load, "net_ms": net}

    def _physics(self, t: float, temp_c: float | None = None):
        """Everything the node does in the second starting at ``t`` with its current arm."""
        cond = self.conditions(t)
        p = self.arms.profile_of(self.variant, self.precision, self.batch)
        skip = self.pipeline != "full"
        cost = p.cost * (1 - SKIP_SAVING if skip else 1.0)
        item = p.item_ms_rel * (1 - SKIP_SAVING if skip else 1.0)
        hit = self.spec.duplicate_frac if self.cache else 0.0
        heavy_b8 = self.arms.profile_of(self.arms[0].variant, "fp32", 8).item_ms_rel
        offered = cond["load"] * BASE_RPS * self.spec.speed / heavy_b8
        compute_cap = BASE_RPS * self.spec.speed / item
        util = min(1.0, offered * (1 - hit) / compute_cap)
        m = self.model
        demand = m.idle_w + m.dynamic_w * cost * util
        clock = 1.0 if demand <= cond["cap_w"] else (cond["cap_w"] - m.idle_w) / (demand - m.idle_w)
        power = min(demand, cond["cap_w"])
        temp = self.temp_c if temp_c is None else temp_c
        throttle = 1.0 if temp < THROTTLE_C else max(0.2, 1.0 - 0.15 * (temp - THROTTLE_C))
        capacity = compute_cap * clock * throttle / max(1 - hit, 1e-3)
        served = min(offered, capacity)
        rho = min(offered / capacity, 0.99)
        compute_ms = BASE_ITEM_MS * item * self.batch / (self.spec.speed * clock * throttle)
        queue_ms = 250.0 if offered > capacity else compute_ms * rho / (2 * (1 - rho))
        miss_ms = cond["net_ms"] + compute_ms + queue_ms
        latency = hit * CACHE_HIT_MS + (1 - hit) * miss_ms
        accuracy = p.accuracy - (SKIP_ACCURACY if skip else 0.0) - CACHE_ACCURACY * hit
        target = cond["ambient_c"] + power * cond["r"]
        return {"target_c": target, "tau_s": cond["r"] * m.c_j_per_c, "power_w": power, "cap_w": cond["cap_w"],
                "offered": offered, "served": served, "util": min(1.0, served / capacity) * clock,
                "latency_ms": latency, "accuracy": accuracy, "net_ms": cond["net_ms"]}, cond

    def step(self, dt_s: float = 1.0, noise: bool = True) -> dict:
        """Advance ``dt_s`` seconds; one Telemetry record (with ``offered_rps`` and ``net_ms``)."""
        ph, _ = self._physics(self.elapsed_s)
        self.temp_c = ph["target_c"] + (self.temp_c - ph["target_c"]) * math.exp(-dt_s / ph["tau_s"])
        self.elapsed_s += dt_s
        for level in self.seconds_above:
            if self.temp_c >= level:
                self.seconds_above[level] += dt_s
        self.max_temp_c = max(self.max_temp_c, self.temp_c)
        self.energy_j += ph["power_w"] * dt_s
        self.served_total += ph["served"] * dt_s
        self.seq += 1
        reading = self.temp_c + (self.rng.gauss(0, 0.2) if noise else 0.0)
        return {"node_id": self.spec.node_id, "ts_ms": int((self.clock_offset_s + self.elapsed_s) * 1000), "seq": self.seq,
                "gpu_temp_c": round(reading, 2), "gpu_util": round(ph["util"], 4),
                "mem_used_frac": round(0.35 + 0.1 * self.arms.profile_of(self.variant, self.precision, 1).cost
                                       + self.batch / 400 + (0.1 if self.cache else 0.0), 3),
                "power_w": round(ph["power_w"], 1), "power_cap_w": ph["cap_w"],
                "latency_ms": round(ph["latency_ms"], 3), "throughput_rps": round(ph["served"], 1),
                "offered_rps": round(ph["offered"], 1), "net_ms": ph["net_ms"], "accuracy": ph["accuracy"],
                "variant": self.variant, "precision": self.precision, "batch_size": int(self.batch),
                "source": "simulator", "scenario": None}

    def preview(self, command: dict, seconds: int) -> list[dict]:
        """Noise-free telemetry of the next ``seconds`` if ``command`` were applied now (for the oracle)."""
        saved = (self.variant, self.precision, self.batch, self.cache, self.pipeline, self.elapsed_s, self.temp_c)
        self.apply(command)
        out, t, temp = [], self.elapsed_s, self.temp_c
        for _ in range(seconds):
            ph, _ = self._physics(t, temp)
            temp = ph["target_c"] + (temp - ph["target_c"]) * math.exp(-1.0 / ph["tau_s"])
            t += 1.0
            out.append({"ts_ms": int(t * 1000), "gpu_temp_c": temp, "power_w": ph["power_w"],
                        "throughput_rps": ph["served"], "offered_rps": ph["offered"], "latency_ms": ph["latency_ms"],
                        "accuracy": ph["accuracy"]})
        (self.variant, self.precision, self.batch, self.cache, self.pipeline, self.elapsed_s, self.temp_c) = saved
        return out


def open_loop_telemetry(seed: int, nodes: int, seconds: int, arms: ArmSet | None = None) -> list[dict]:
    """One Telemetry sample per node and second of the fleet of ``seed``, in time order, the nodes keeping
    their first arm (no controller applies a command): the same input for every policy's flow rate.

    >>> samples = open_loop_telemetry(seed=0, nodes=3, seconds=2)
    >>> len(samples), [s["node_id"] for s in samples[:3]] == [s["node_id"] for s in samples[3:]]
    (6, True)
    """
    arms = arms or ArmSet.nominal()   # one arm set for the fleet, not one per node
    fleet = [HeteroNode(spec, arms) for spec in fleet_specs(seed, nodes, seconds)]
    return [node.step(1.0) for _ in range(seconds) for node in fleet]
