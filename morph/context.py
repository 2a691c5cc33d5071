"""What the learned agent sees of a node: telemetry gathered between decisions, and its features.

`EpochTelemetry` accumulates the samples since the last decision (the delayed
reward of that decision is measured from them); `Featurizer` turns the node's
present context and the arm set into one feature row per arm, φ(x, a), for
the shared linear model of `morph.bandit`.

φ(x, a) is the outer product of normalised context features (load against
the node's estimated capacity, temperature margin, power headroom, network
congestion, latency against the SLO) with arm features (relative cost, time
per item, accuracy, cache, skipped stage), plus three model-based features
the physics gives for free: the share of the offered load the arm could serve
at the node's measured speed, its predicted temperature margin (from the
shield's thermal estimate), and whether choosing it means a switch.

>>> from morph.arms import ArmSet
>>> arms = ArmSet.nominal(batches=(8,), cache=(False,), pipelines=("full",))
>>> f = Featurizer(arms)
>>> ctx = NodeContext(temp_c=70.0, slope_c_per_s=0.0, power_w=250.0, power_cap_w=350.0, mem_used_frac=0.4,
...                   offered_rps=300.0, served_rps=300.0, util=0.8, latency_ms=12.0, net_ms=10.0,
...                   current=arms.nearest("transformer", "fp32", 8))
>>> phi, predicted_c, power = f.features(ctx)
>>> phi.shape == (len(arms), f.dim), bool(predicted_c[0] > predicted_c[-1])
(True, True)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from morph.arms import Arm, ArmSet
from morph.reward import EpochMeasurement, WorkflowConstraints
from morph.shield import ShieldConfig

CONTEXT_FEATURES = ("bias", "load", "temp_margin", "power_headroom", "congestion", "latency_ratio")
ARM_FEATURES = ("bias", "cost", "item_ms", "accuracy", "cache", "skip")
MODEL_FEATURES = ("served_share", "thermal_margin", "switch")


@dataclass
class NodeContext:
    """A node's state at a decision, in the units telemetry reports."""

    temp_c: float
    slope_c_per_s: float
    power_w: float
    power_cap_w: float
    mem_used_frac: float
    offered_rps: float
    served_rps: float
    util: float
    latency_ms: float
    net_ms: float
    current: Arm
    recent_temps: tuple = ()

    def bucket(self, constraints: WorkflowConstraints) -> tuple[int, int, int, int]:
        """Coarse context shared with peers: temperature, load, power and congestion levels."""
        t = 0 if self.temp_c < constraints.max_gpu_temp_c - 15 else 1 if self.temp_c < constraints.max_gpu_temp_c else 2
        # max(a, b) written as ``b if b > a else a``, what the builtin returns, without its call (per decision)
        util = self.util
        capacity = self.served_rps / (1e-3 if 1e-3 > util else util)
        load = self.offered_rps / (1.0 if 1.0 > capacity else capacity)
        lv = 0 if load < 0.7 else 1 if load < 1.0 else 2
        p = 1 if self.power_w >= 0.95 * self.power_cap_w else 0
        c = 1 if self.net_ms > 0.5 * constraints.max_latency_ms else 0
        return t, lv, p, c


@dataclass
class EpochTelemetry:
    """Samples between two decisions: the measurement a decision's reward is computed from."""

    n: int = 0
    seconds: float = 0.0
    temp_sum: float = 0.0
    max_temp_c: float = -1e9
    above_hot_s: float = 0.0
    above_critical_s: float = 0.0
    power_sum: float = 0.0
    served_sum: float = 0.0
    offered_sum: float = 0.0
    latency_sum: float = 0.0
    accuracy_sum: float = 0.0
    accuracy_n: int = 0
    last_ts_ms: int | None = None

    def add(self, sample: dict, constraints: WorkflowConstraints) -> None:
        ts = sample["ts_ms"]
        last = self.last_ts_ms
        dt = 1.0 if last is None else (ts - last) / 1000.0
        if dt < 0.0:
            dt = 0.0
        self.last_ts_ms = ts
        t = sample["gpu_temp_c"]
        self.n += 1
        self.seconds += dt
        self.temp_sum += t
        if t > self.max_temp_c:
            self.max_temp_c = t
        if t >= constraints.max_gpu_temp_c:
            self.above_hot_s += dt
        if t >= constraints.critical_temp_c:
            self.above_critical_s += dt
        self.power_sum += sample["power_w"]
        served = sample["throughput_rps"]
        self.served_sum += served
        self.offered_sum += sample.get("offered_rps") or served  # null from nodes without the load figures
        self.latency_sum += sample["latency_ms"]
        accuracy = sample.get("accuracy")
        if accuracy is not None:  # accuracy served, where the node measures it
            self.accuracy_sum += accuracy
            self.accuracy_n += 1

    def measurement(self, accuracy: float) -> EpochMeasurement:
        """The epoch's figures; ``accuracy`` (the arm's, from the manifest) unless the samples carried it."""
        n = 1 if 1 > self.n else self.n   # max(self.n, 1), what the builtin returns, without its call
        if self.accuracy_n:
            accuracy = self.accuracy_sum / self.accuracy_n
        return EpochMeasurement(offered_rps=self.offered_sum / n, served_rps=self.served_sum / n,
                                latency_ms=self.latency_sum / n, accuracy=accuracy, power_w=self.power_sum / n,
                                max_temp_c=self.max_temp_c,
                                seconds=1e-9 if 1e-9 > self.seconds else self.seconds,
                                seconds_above_max_temp=self.above_hot_s,
                                seconds_above_critical=self.above_critical_s)

    def reset(self) -> None:
        last = self.last_ts_ms
        self.__init__()
        self.last_ts_ms = last


class Featurizer:
    """φ(x, a) for every arm at once (rows in the arm set's order)."""

    def __init__(self, arms: ArmSet, constraints: WorkflowConstraints = WorkflowConstraints(),
                 shield: ShieldConfig = ShieldConfig()):
        self.arms = arms
        self.constraints = constraints
        self.shield = shield
        prof = [arms.profile(a) for a in arms]
        self.cost = np.array([p.cost for p in prof])
        self.item_ms = np.array([p.item_ms_rel for p in prof])
        self.accuracy = np.array([p.accuracy - (0.01 if a.pipeline != "full" else 0.0) for a, p in zip(arms, prof)])
        acc = np.clip((self.accuracy - constraints.min_accuracy) / (1 - constraints.min_accuracy), 0, 1)
        self.arm_features = np.column_stack([
            np.ones(len(arms)), self.cost, self.item_ms / self.item_ms.max(), acc,
            [1.0 if a.cache else 0.0 for a in arms], [1.0 if a.pipeline != "full" else 0.0 for a in arms]])
        self.dim = len(CONTEXT_FEATURES) * len(ARM_FEATURES) + len(MODEL_FEATURES)
        # Per-decision constants, so `factors` is one compiled call on the arms. Imported here, not with the
        # module: the rules' control flow imports this module (`NodeContext`) and never builds a Featurizer,
        # so it does not load numba and its compiler.
        from morph.arm_factors import arm_factors
        self._arm_factors = arm_factors
        self._item_ms = self.item_ms.tolist()
        self._cost = self.cost.tolist()
        self._max_item_ms = float(self.item_ms.max())
        self._decay = float(np.exp(-shield.horizon_s / shield.tau_s))
        # Φ = coords · basisᵀ (`factors`): an arm's coords are its features, then its model columns; basis
        # row i·|arm features| + j holds context value i in column j, model row m a 1.0 in column
        # |arm features| + m. So Φ[a, i·|arm features| + j] is one product, context value i times arm
        # feature j (the outer product), and Φ's model columns are the coords' last ones: the rows of Φ
        # span |arm features| + |model features| directions, which is what the bandit's bounds are
        # computed in (`DiscountedLinUCB.ucb_factored`); Φ itself is only built when asked for.
        n_arm, n_model = len(ARM_FEATURES), len(MODEL_FEATURES)
        k = len(CONTEXT_FEATURES) * n_arm
        self._n_arm = n_arm
        # the coords before a decision's model columns: the switch column is 1 for every arm (0 then
        # written for the current one), the other two model columns are written per decision
        self._coords = np.zeros((len(arms), n_arm + n_model))
        self._coords[:, :n_arm] = self.arm_features
        self._coords[:, n_arm + 2] = 1.0
        self._basis_pattern = np.zeros((self.dim, n_arm + n_model))
        self._basis_pattern[np.arange(k), np.tile(np.arange(n_arm), len(CONTEXT_FEATURES))] = 1.0
        self._basis_pattern[k + np.arange(n_model), n_arm + np.arange(n_model)] = 1.0
        # the basis transposed, flat: its (|arm features| + |model features|) rows of dim one after the other
        self._basis_pattern_flat = np.ascontiguousarray(self._basis_pattern.T).ravel()
        # which context value (or, last, the 1.0 of the model rows) multiplies each element of that flat pattern
        self._basis_source = np.tile(np.repeat(np.arange(len(CONTEXT_FEATURES) + 1),
                                               [n_arm] * len(CONTEXT_FEATURES) + [n_model]), n_arm + n_model)

    def context_vector(self, ctx: NodeContext) -> np.ndarray:
        return np.array(self._context_values(ctx, _capacity(ctx) * self._item_ms[self.arms.index(ctx.current)]))

    def _context_values(self, ctx: NodeContext, served_now: float) -> list[float]:
        """The normalised context; ``served_now``: what the node could serve with its current arm, requests/s."""
        # scalars clipped in Python: np.clip on one number costs more than the whole row; and max(a, b) /
        # min(a, b) written as ``b if b > a else a`` / ``b if b < a else a``, what the builtins return: a
        # decision made ~20 such calls (~80 ns each, the expression ~10)
        c = self.constraints
        load = ctx.offered_rps / (1e-6 if 1e-6 > served_now else served_now) / 2.0
        temp = (c.max_gpu_temp_c - ctx.temp_c) / 20.0
        cap = c.max_power_w if c.max_power_w < ctx.power_cap_w else ctx.power_cap_w
        power = 1.0 - ctx.power_w / (1.0 if 1.0 > cap else cap)
        net = ctx.net_ms / c.max_latency_ms
        latency = ctx.latency_ms / c.max_latency_ms
        return [1.0, 1.5 if 1.5 < load else load, _clamp(temp, -1.0, 1.0), _clamp(power, -1.0, 1.0),
                2.0 if 2.0 < net else net, 2.0 if 2.0 < latency else latency]

    def features(self, ctx: NodeContext, r_c_per_w: float | None = None):
        """(Φ, predicted temperature of each arm, predicted power of each arm).

        ``r_c_per_w`` is the node's estimated thermal resistance
        (`ThermalEstimate.r_c_per_w`); the shield's prior without one."""
        coords, basis, predicted, power = self.factors(ctx, r_c_per_w)
        return coords @ basis.T, predicted, power

    def factors(self, ctx: NodeContext, r_c_per_w: float | None = None):
        """(coords, basis, predicted temperature of each arm, predicted power of each arm), Φ = coords · basisᵀ.

        What `features` gives without building Φ: a decision needs only the
        bounds (`DiscountedLinUCB.ucb_factored`) and the chosen arm's row."""
        cur = self.arms.index(ctx.current)
        shield = self.shield
        served_now = _capacity(ctx) * self._item_ms[cur]
        values = self._context_values(ctx, served_now)
        values.append(1.0)
        r = shield.prior_r_c_per_w if r_c_per_w is None else r_c_per_w
        decay = self._decay
        # the thermal model after the horizon, T·decay + T_ss·(1 − decay) with T_ss = t_now + R·P: what
        # does not depend on the arm's power P is summed here, once
        t_now = ctx.temp_c + shield.tau_s * ctx.slope_c_per_s - r * ctx.power_w
        basis_t, coords, predicted, power = self._arm_factors(
            self._basis_pattern_flat, np.array(values), self._basis_source, self._coords, self._n_arm, cur,
            self.item_ms, self.cost, served_now, ctx.offered_rps, served_now / self._max_item_ms >= 1e-6, ctx.power_w,
            self._cost[cur] * (1e-3 if 1e-3 > ctx.util else ctx.util), shield.idle_w, ctx.power_cap_w,
            r * (1.0 - decay), ctx.temp_c * decay + t_now * (1.0 - decay), self.constraints.max_gpu_temp_c)
        return coords, basis_t.T, predicted, power


def _clamp(v: float, lo: float, hi: float) -> float:
    return lo if v < lo else hi if v > hi else v


def _capacity(ctx: NodeContext) -> float:
    """Requests/s the node could serve with its current arm: served over utilisation."""
    # max / min as conditional expressions, what the builtins return (see `Featurizer._context_values`)
    served, util = ctx.served_rps, ctx.util
    util = 1.0 if 1.0 < util else util
    return (1.0 if 1.0 > served else served) / (0.05 if 0.05 > util else util)
