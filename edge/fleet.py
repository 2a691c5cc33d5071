"""Simulated edge nodes: the thermal model plus what a node serves, as Telemetry records.

The fleet simulator (``liquid produce telemetry``) drives these; a simulated
node applies morph commands instantly, which closes the control loop without
real models. The edge worker uses `SimulatedNode` too when no GPU exists, with
its measured throughput and latency in place of the nominal ones. It lives in ``edge/``
beside the worker because a simulated node is a stand-in for a real one.

>>> node = SimulatedNode("edge-1", Scenario("steady"), seed=1)
>>> s = node.sample(ts_ms=1_000, dt_s=1.0)
>>> s["node_id"], s["variant"], s["source"], 74 < s["gpu_temp_c"] < 76
('edge-1', 'transformer', 'simulator', True)
>>> node.apply({"to_variant": "snn", "to_precision": "int8", "batch_size": 1})
('transformer', 'fp32')
>>> node.sample(ts_ms=2_000, dt_s=1.0)["variant"]
'snn'
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from morph.ladder import PRECISIONS, VARIANTS
from edge.thermal import DEFAULT_VARIANT_LATENCY_MS, PRECISION_POWER, Conditions, Scenario, ThermalModel

#: Nominal requests/s a node serves per variant when nothing throttles it.
NOMINAL_THROUGHPUT = {"transformer": 400.0, "lstm": 550.0, "cnn": 700.0, "mobilenet": 800.0, "snn": 850.0}


@dataclass(frozen=True)
class NodeProfile:
    """How one simulated node differs from the nominal one: its air, its fan, its power cap.

    A fleet of identical boxes in identical rooms would answer every scenario
    with the same temperatures to the decimal; real ones do not. `drawn` makes
    a node's profile from its id and a seed, so a fleet is varied and repeatable.

    >>> a, b = NodeProfile.drawn("edge-1", seed=0), NodeProfile.drawn("edge-2", seed=0)
    >>> a != b and a == NodeProfile.drawn("edge-1", seed=0)
    True
    """

    ambient_offset_c: float = 0.0   # added to the scenario's air temperature
    fan_health: float = 1.0          # multiplies the scenario's fan (1 = as new)
    power_cap_scale: float = 1.0     # multiplies the scenario's power cap

    @classmethod
    def drawn(cls, node_id: str, seed: int = 0) -> "NodeProfile":
        rng = random.Random(f"profile-{seed}-{node_id}")
        return cls(ambient_offset_c=round(rng.uniform(-4.0, 4.0), 2), fan_health=round(rng.uniform(0.85, 1.0), 3),
                   power_cap_scale=round(rng.choice((1.0, 1.0, 0.9, 0.8)), 2))

    def applied(self, cond: Conditions) -> Conditions:
        return Conditions(ambient_c=cond.ambient_c + self.ambient_offset_c, fan=cond.fan * self.fan_health,
                          power_cap_w=cond.power_cap_w * self.power_cap_scale, load=cond.load)


@dataclass
class SimulatedNode:
    node_id: str
    scenario: Scenario
    seed: int = 0
    profile: NodeProfile = NodeProfile()
    variant: str = "transformer"
    precision: str = "fp32"
    batch_size: int = 16
    noise_c: float = 0.2
    thermal: ThermalModel = None
    elapsed_s: float = 0.0
    seq: int = 0
    rng: random.Random = field(init=False, repr=False)

    def __post_init__(self):
        self.rng = random.Random(f"{self.seed}-{self.node_id}")
        if self.thermal is None:
            # Start at the steady state of what the node serves, so a run opens in equilibrium.
            model = ThermalModel()
            cond = self.profile.applied(self.scenario.at(0.0))
            model.temp_c = model.steady_state_c(model.power_w(self.variant, self.precision, cond.load,
                                                              cond.power_cap_w), cond.ambient_c, cond.fan)
            self.thermal = model

    def apply(self, command: dict) -> tuple[str, str]:
        """Serve what the command says from now on; returns the previous (variant, precision)."""
        if command["to_variant"] not in VARIANTS or command["to_precision"] not in PRECISIONS:
            raise ValueError(f"unknown variant/precision {command['to_variant']}/{command['to_precision']}")
        before = (self.variant, self.precision)
        self.variant, self.precision = command["to_variant"], command["to_precision"]
        self.batch_size = command.get("batch_size") or self.batch_size
        return before

    def sample(self, ts_ms: int, dt_s: float, throughput_rps: float | None = None,
               latency_ms: float | None = None, source: str = "simulator") -> dict:
        """Advance the thermal model by ``dt_s`` and return one Telemetry record."""
        self.elapsed_s += dt_s
        cond = self.profile.applied(self.scenario.at(self.elapsed_s))
        temp = self.thermal.step(dt_s, self.variant, self.precision, cond.load, cond)
        power = self.thermal.power_w(self.variant, self.precision, cond.load, cond.power_cap_w)
        throttle = self.thermal.throttle_factor()
        if throughput_rps is None:
            throughput_rps = NOMINAL_THROUGHPUT[self.variant] * throttle * (1 + 0.02 * self.rng.gauss(0, 1))
        if latency_ms is None:
            latency_ms = DEFAULT_VARIANT_LATENCY_MS[self.variant] * PRECISION_POWER[self.precision] ** 0.5 / throttle
        self.seq += 1
        return {
            "node_id": self.node_id,
            "ts_ms": int(ts_ms),
            "seq": self.seq,
            "gpu_temp_c": round(temp + self.rng.gauss(0, self.noise_c), 2),
            "gpu_util": round(cond.load * throttle, 3),
            "mem_used_frac": round(0.35 + 0.1 * (VARIANTS.index("snn") - VARIANTS.index(self.variant)) / 4
                                   + self.batch_size / 400, 3),
            "power_w": round(power, 1),
            "power_cap_w": cond.power_cap_w,
            "latency_ms": round(latency_ms, 3),
            "throughput_rps": round(max(throughput_rps, 0.0), 1),
            "variant": self.variant,
            "precision": self.precision,
            "batch_size": int(self.batch_size),
            "source": source,
            "scenario": None if self.scenario.name == "steady" else self.scenario.name,
            "record_id": None,  # the edge worker sets one (its outbox redelivers); the simulator never does
        }
