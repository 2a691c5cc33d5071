"""The reward of one morph decision, observed from the node after the decision is applied.

The seed's R = α·throughput + β·latency⁻¹ + γ·accuracy + δ·energy-efficiency,
each term normalised to [0, 1] and the weights summing to 1 (so a perfect
epoch scores 1), minus penalties for breaking the workflow's constraints (its
§5.2 spec: ``max_latency_ms``, ``min_accuracy``, ``max_gpu_temp_c``,
``max_power_w``) and a switching cost so the agent does not oscillate.

* throughput: requests served / requests offered;
* latency: SLO / (SLO + latency): 0.5 at the SLO, near 1 far below it;
* accuracy: (accuracy − min_accuracy) / (1 − min_accuracy);
* energy efficiency: inferences per joule over ``ref_inferences_per_j``, capped at 1.

>>> c = WorkflowConstraints(max_latency_ms=100.0, min_accuracy=0.9, max_gpu_temp_c=85.0, max_power_w=300.0)
>>> m = EpochMeasurement(offered_rps=100, served_rps=100, latency_ms=20.0, accuracy=0.98, power_w=150.0,
...                      max_temp_c=80.0, seconds=10.0)
>>> round(reward(m, c, RewardWeights.preset("balanced")), 3)
0.733
>>> hot = m._replace(seconds_above_max_temp=5.0)
>>> round(reward(hot, c, RewardWeights.preset("balanced"), switched=True), 3)
0.183
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


@dataclass(frozen=True)
class WorkflowConstraints:
    """A workflow's hard requirements (seed §5.2)."""

    max_latency_ms: float = 100.0
    min_accuracy: float = 0.9
    max_gpu_temp_c: float = 85.0
    max_power_w: float = 350.0
    critical_temp_c: float = 90.0


@dataclass(frozen=True)
class RewardWeights:
    """α, β, γ, δ (normalised to sum 1) and the penalties."""

    throughput: float = 0.3
    latency: float = 0.2
    accuracy: float = 0.3
    energy: float = 0.2
    slo_penalty: float = 0.5          # per epoch whose mean latency or accuracy breaks the SLO
    thermal_penalty: float = 1.0      # times the fraction of the epoch above max_gpu_temp_c
    critical_penalty: float = 3.0     # times the fraction of the epoch above the critical temperature
    power_penalty: float = 0.5        # times the fraction by which power exceeds max_power_w
    switch_cost: float = 0.05
    ref_inferences_per_j: float = 5.0

    @classmethod
    def preset(cls, priority: str) -> "RewardWeights":
        """Weights for a workflow priority: balanced, throughput, latency, accuracy or energy."""
        table = {
            "balanced": (0.3, 0.2, 0.3, 0.2),
            "throughput": (0.55, 0.15, 0.15, 0.15),
            "latency": (0.15, 0.55, 0.15, 0.15),
            "accuracy": (0.15, 0.15, 0.55, 0.15),
            "energy": (0.15, 0.15, 0.15, 0.55),
        }
        try:
            a, b, g, d = table[priority]
        except KeyError:
            raise ValueError(f"unknown priority {priority!r}; known: {', '.join(table)}") from None
        return cls(throughput=a, latency=b, accuracy=g, energy=d)


class EpochMeasurement(NamedTuple):
    """What the node's telemetry showed between one decision and the next.

    A NamedTuple, not a frozen dataclass: the agent builds one per decision, and a
    frozen dataclass's ``__init__`` (an ``object.__setattr__`` per field) costs
    several times as much; it is as immutable and reads the same by name."""

    offered_rps: float
    served_rps: float
    latency_ms: float
    accuracy: float
    power_w: float
    max_temp_c: float
    seconds: float
    seconds_above_max_temp: float = 0.0
    seconds_above_critical: float = 0.0


def reward_terms(m: EpochMeasurement, c: WorkflowConstraints, w: RewardWeights) -> dict[str, float]:
    """Each normalised term and each penalty of the reward (for evidence and plots)."""
    # max(a, b) / min(a, b) written as ``b if b > a else a`` / ``b if b < a else a``, what the builtins
    # return: the agent computes this once per decision, and the builtins' calls were half its cost
    offered, latency_ms, power_w, seconds = m.offered_rps, m.latency_ms, m.power_w, m.seconds
    served = offered if offered < m.served_rps else m.served_rps
    throughput = served / offered if offered > 0 else 1.0
    latency = c.max_latency_ms / (c.max_latency_ms + (0.0 if 0.0 > latency_ms else latency_ms))
    accuracy = _clip((m.accuracy - c.min_accuracy) / (1.0 - c.min_accuracy))
    energy = _clip(served / (1e-6 if 1e-6 > power_w else power_w) / w.ref_inferences_per_j)
    seconds = 1e-9 if 1e-9 > seconds else seconds
    excess = power_w / c.max_power_w - 1.0
    slo = 1.0 if (latency_ms > c.max_latency_ms or m.accuracy < c.min_accuracy) else 0.0
    return {
        "throughput": throughput, "latency": latency, "accuracy": accuracy, "energy": energy,
        "slo_violation": slo,
        "thermal": m.seconds_above_max_temp / seconds,
        "critical": m.seconds_above_critical / seconds,
        "power_excess": excess if excess > 0.0 else 0.0,
    }


def reward(m: EpochMeasurement, c: WorkflowConstraints, w: RewardWeights, switched: bool = False) -> float:
    """The scalar reward of an epoch (see the module docstring)."""
    return reward_of_terms(reward_terms(m, c, w), w, switched)


def reward_of_terms(t: dict[str, float], w: RewardWeights, switched: bool = False) -> float:
    """The scalar reward from `reward_terms`' output (for a caller that keeps the terms as well)."""
    total = w.throughput + w.latency + w.accuracy + w.energy
    gain = (w.throughput * t["throughput"] + w.latency * t["latency"] + w.accuracy * t["accuracy"]
            + w.energy * t["energy"]) / total
    return (gain - w.slo_penalty * t["slo_violation"] - w.thermal_penalty * t["thermal"]
            - w.critical_penalty * t["critical"] - w.power_penalty * t["power_excess"]
            - (w.switch_cost if switched else 0.0))


def reward_bounds(c: WorkflowConstraints, w: RewardWeights, best_accuracy: float = 1.0) -> tuple[float, float]:
    """(low, high): the range a decision's reward is clipped to before it is shared under differential privacy.

    ``high`` is the best epoch the workflow can score: everything served, at no latency, on the most
    accurate model it has (``best_accuracy``), at full energy efficiency, without a penalty or a
    switch. ``low`` = ``high`` − ``slo_penalty``: the most an epoch that breaks the latency or
    accuracy SLO can score. Below it an arm is as bad as an SLO break, and that is all a peer needs
    to learn from it (the shield, not the shared rewards, keeps the node safe). Nothing but the
    workflow's weights, constraints and the served models' accuracy goes into the range, so the
    clipping and the sensitivity ``high − low`` (= ``slo_penalty``) do not depend on any node's
    rewards.

    Parameters
    ----------
    c
        The workflow's constraints (``min_accuracy`` normalises the accuracy term).
    w
        The reward's weights and penalties.
    best_accuracy
        The held-out accuracy of the workflow's most accurate model (1: no model is known).

    Examples
    --------
    >>> c, w = WorkflowConstraints(min_accuracy=0.9), RewardWeights.preset("balanced")
    >>> [round(v, 3) for v in reward_bounds(c, w, best_accuracy=0.95)]
    [0.35, 0.85]
    >>> [round(v, 3) for v in reward_bounds(c, w)]
    [0.5, 1.0]
    """
    terms = {"throughput": 1.0, "latency": 1.0, "energy": 1.0,
             "accuracy": _clip((best_accuracy - c.min_accuracy) / (1.0 - c.min_accuracy)),
             "slo_violation": 0.0, "thermal": 0.0, "critical": 0.0, "power_excess": 0.0}
    high = reward_of_terms(terms, w)
    return high - w.slo_penalty, high


def _clip(x: float) -> float:
    return 0.0 if x < 0.0 else 1.0 if x > 1.0 else x
