"""The learned morph agent (RLI): a shielded, discounted contextual bandit per node.

Every ``epoch_s`` of event time the agent closes the previous decision — its
reward is measured from the telemetry that followed it (`morph.reward`), a
delayed reward joined here in the node's state — learns from it, and picks
the next arm: among the arms the safety shield allows (`morph.shield`), the
one with the highest upper confidence bound, or with probability ε a uniformly
random allowed arm. The probability with which the arm was chosen (its
propensity) goes into the decision, so logged decisions can evaluate other
policies off-line (`morph.ope`). Between epochs only the critical rule acts:
three samples at or above 90 °C force the fallback at once, as the rules do.

>>> from morph.arms import ArmSet
>>> agent = RliAgent(ArmSet.nominal(batches=(8,), cache=(False,), pipelines=("full",)), RliConfig(epoch_s=5))
>>> state = agent.new_state("edge-1")
>>> s = dict(node_id="edge-1", gpu_temp_c=70.0, power_w=250.0, power_cap_w=350.0, mem_used_frac=0.4,
...          throughput_rps=300.0, gpu_util=0.8, latency_ms=12.0, variant="transformer", precision="fp32",
...          batch_size=8)
>>> decisions = [agent.decide(state, {**s, "ts_ms": 1000 * i}) for i in range(12)]
>>> [i for i, d in enumerate(decisions) if d is not None]
[0, 5, 10]
>>> d = decisions[5]
>>> 0 < d.propensity <= 1, d.previous_reward is not None, d.arm in agent.arms
(True, True, True)
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field
from typing import ClassVar, Optional

import numpy as np

from morph.arms import Arm, ArmSet
from morph.bandit import DiscountedLinUCB
from morph.context import EpochTelemetry, Featurizer, NodeContext
from morph.policy import MorphPolicy
from morph.reward import RewardWeights, WorkflowConstraints, reward_of_terms, reward_terms
from morph.shield import ShieldConfig, ThermalEstimate, critical_run, safe_mask
from schemas.state import SnapshotRandom, Versioned


#: Recent samples kept per node: the temperature slope's window and the evidence's.
WINDOW = 6


@dataclass(frozen=True)
class RliConfig:
    """The agent's settings (per workflow)."""

    epoch_s: float = 10.0
    early_gap_s: float = 2.0        # shortest gap before a shield-forced decision between epochs
    epsilon: float = 0.2            # initial exploration share
    epsilon_min: float = 0.03       # exploration never stops: the node keeps changing
    epsilon_decay: float = 50.0     # decisions over which ε halves
    gamma: float = 0.995            # per-decision discount: memory ~ 200 decisions
    alpha: float = 0.3
    ridge: float = 1.0
    weights: RewardWeights = RewardWeights()
    constraints: WorkflowConstraints = WorkflowConstraints()
    shield: ShieldConfig = ShieldConfig()
    seed: int = 0


@dataclass
class PendingDecision:
    """A decision whose reward is still being measured."""

    arm: int
    phi: np.ndarray
    propensity: float
    bucket: tuple
    switched: bool
    decided_ts_ms: int


@dataclass
class AgentState(Versioned):
    """Everything the agent keeps per node; Bytewax snapshots it."""

    STATE_VERSION: ClassVar[int] = 2
    # version 1 kept each bucket's Φ in ``peer_features``, a cache: its experience was already learnt
    MIGRATIONS: ClassVar[dict] = {1: lambda s: {**{k: v for k, v in s.items() if k != "peer_features"},
                                                "peer_pending": {}}}

    node_id: str
    bandit: DiscountedLinUCB
    thermal: ThermalEstimate
    rng: random.Random
    epoch: EpochTelemetry = field(default_factory=EpochTelemetry)
    temps: deque = field(default_factory=lambda: deque(maxlen=WINDOW))
    times: deque = field(default_factory=lambda: deque(maxlen=WINDOW))
    current: Optional[int] = None
    pending: Optional[PendingDecision] = None
    last_decision_ms: Optional[int] = None
    decisions: int = 0
    last_context: Optional[NodeContext] = None   # what peers' experience is translated into
    # peers' experience since the last decision, not yet in the bandit (`morph.peers.absorb`, `fold_peers`):
    # bucket -> PeerBucket (its features in last_context, and a weight and weighted reward sum per arm)
    peer_pending: dict = field(default_factory=dict)
    slope: float = 0.0                                  # dT/dt over the recent samples, °C/s
    version: int = STATE_VERSION


@dataclass
class Decision:
    """What one decision produces: the arm, its propensity, and the previous decision's outcome."""

    node_id: str
    ts_ms: int
    arm: Arm
    arm_index: int
    propensity: float
    safe: np.ndarray
    context: NodeContext
    bucket: tuple
    command: Optional[dict]
    previous_reward: Optional[float] = None
    previous_arm: Optional[int] = None
    previous_terms: Optional[dict] = None
    previous_bucket: Optional[tuple] = None
    coords: Optional[np.ndarray] = None  # every arm's features at this decision, Φ = coords · basisᵀ (`phi`)
    basis: Optional[np.ndarray] = None
    thermal_r: Optional[float] = None   # the node's estimated thermal resistance, °C/W

    @property
    def phi(self) -> Optional[np.ndarray]:
        """Every arm's features at this decision (for logging), built on demand."""
        return None if self.coords is None else self.coords @ self.basis.T


class RliAgent:
    """Decides per telemetry sample; see the module docstring."""

    def __init__(self, arms: ArmSet, config: RliConfig = RliConfig()):
        self.arms = arms
        self.config = config
        self.featurizer = Featurizer(arms, config.constraints, config.shield)
        self.fallback = arms.index(arms.fallback)
        self.arm_names = tuple(a.name for a in arms)  # built once: `Arm.name` formats a string per call
        self._by_name = {name: i for i, name in enumerate(self.arm_names)}
        self._scorer = MorphPolicy()  # the rules' resource score, reported as evidence like theirs
        # read on every sample: plain tuples and attributes, not the arm objects
        self._served = tuple((a.variant, a.precision) for a in arms)
        self._sha256 = tuple(arms.sha256.get(served) for served in self._served)
        self._preprocessing = tuple(a.preprocessing for a in arms)
        self._accuracy = tuple(self.featurizer.accuracy.tolist())
        self._accurate = self.featurizer.accuracy >= config.constraints.min_accuracy   # the shield's, once
        self._constraints = config.constraints
        self._epoch_ms = config.epoch_s * 1000
        self._early_gap_ms = config.early_gap_s * 1000
        shield = config.shield
        self._unsafe_above_c = shield.hot_c - shield.margin_c
        self._tau_s = shield.tau_s

    def arm_by_name(self, name: str) -> int:
        """The index of the arm called ``name`` (KeyError for an arm this set does not have)."""
        return self._by_name[name]

    def new_state(self, node_id: str) -> AgentState:
        c = self.config
        return AgentState(node_id, DiscountedLinUCB(self.featurizer.dim, c.gamma, c.ridge, c.alpha),
                          ThermalEstimate(c.shield), SnapshotRandom(f"{c.seed}-{node_id}"))

    # -- observation -------------------------------------------------------
    def observe(self, state: AgentState, sample: dict) -> None:
        """Fold one telemetry sample into the node's state."""
        temp = sample["gpu_temp_c"]
        state.epoch.add(sample, self._constraints)
        temps, times = state.temps, state.times
        temps.append(temp)
        times.append(sample["ts_ms"] / 1000.0)
        slope = state.slope = _slope(times, temps)
        state.thermal.observe(temp, slope, sample["power_w"])
        current = state.current
        served = None if current is None else self._served[current]
        if served is None or served[0] != sample["variant"] or served[1] != sample["precision"]:
            # the node serves something else than believed (another controller, a refused swap)
            state.current = self.arms.nearest_index(sample["variant"], sample["precision"], sample.get("batch_size"))

    def context(self, state: AgentState, sample: dict) -> NodeContext:
        return NodeContext(
            temp_c=sample["gpu_temp_c"], slope_c_per_s=state.slope, power_w=sample["power_w"],
            power_cap_w=sample["power_cap_w"], mem_used_frac=sample["mem_used_frac"],
            offered_rps=sample.get("offered_rps") or sample["throughput_rps"], served_rps=sample["throughput_rps"],
            util=sample.get("gpu_util", 1.0), latency_ms=sample["latency_ms"], net_ms=sample.get("net_ms") or 0.0,
            current=self.arms[state.current], recent_temps=tuple(state.temps))

    # -- decisions ---------------------------------------------------------
    def decide(self, state: AgentState, sample: dict) -> Optional[Decision]:
        """Observe ``sample``; at an epoch boundary (or a critical temperature) learn and choose."""
        self.observe(state, sample)
        ts = sample["ts_ms"]
        last = state.last_decision_ms
        critical_c = self._constraints.critical_temp_c
        temp = sample["gpu_temp_c"]
        # the run's last sample first: below critical (nearly always), the window need not be walked
        if last is None or ts - last >= self._epoch_ms or (temp >= critical_c and state.current != self.fallback
                                                           and critical_run(state.temps, critical_c)):
            return self._decide_now(state, sample, ts)
        limit = self._unsafe_above_c
        if temp < limit and temp + self._tau_s * state.slope < limit:
            return None  # neither hot nor heading there: most samples between epochs end at this check
        shielded = self._current_unsafe(state, sample, ts)
        if shielded is not None:
            return self._decide_now(state, sample, ts, shielded)
        return None

    def _current_unsafe(self, state: AgentState, sample: dict, ts: int):
        """Between epochs the shield still watches every sample: when the arm being served would
        now be masked (the node heats toward ``hot_c``), decide at once instead of at the epoch's end.
        Called for a sample that is hot or heading there (`decide` checks that first).

        What the shield computed when it does — `_shield`'s tuple, the decision's own inputs on
        this sample — else None."""
        if state.current == self.fallback or ts - state.last_decision_ms < self._early_gap_ms:
            return None
        shielded = self._shield(state, sample)
        return None if shielded[4][state.current] else shielded

    def _shield(self, state: AgentState, sample: dict):
        """(context, (coords, basis) of Φ, predicted temperature, predicted power, allowed arms, thermal
        resistance) on ``sample``."""
        c = self.config
        ctx = self.context(state, sample)
        thermal_r = state.thermal.r_c_per_w()
        coords, basis, predicted, power = self.featurizer.factors(ctx, thermal_r)
        safe = safe_mask(predicted, power, self.featurizer.accuracy, self.fallback, ctx.temp_c, state.temps,
                         ctx.power_w, c.constraints.min_accuracy, c.shield, accurate=self._accurate)
        return ctx, (coords, basis), predicted, power, safe, thermal_r

    def _decide_now(self, state: AgentState, sample: dict, ts: int, shielded=None) -> Decision:
        c = self.config
        # learning the last reward and ageing the evidence change the bandit only, not what the shield saw
        ctx, (coords, basis), predicted, power, safe, thermal_r = shielded or self._shield(state, sample)
        bucket = ctx.bucket(c.constraints)
        self.fold_peers(state)
        prev = self._close_epoch(state)
        state.bandit.tick()
        arm, propensity = self._choose(state, coords, basis, safe)
        switched = arm != state.current
        # Φ's row of the arm: one product per element, as Φ's (`Featurizer.factors`)
        # (ndarray.dot: the same BLAS product as @, without the matmul ufunc's dispatch)
        state.pending = PendingDecision(arm, coords[arm].dot(basis.T), propensity, bucket, switched, ts)
        state.last_decision_ms = ts
        state.last_context = ctx
        state.decisions += 1
        command = self._command(state, sample, arm, propensity, predicted[arm]) if switched else None
        state.current = arm
        decision = Decision(state.node_id, ts, self.arms[arm], arm, propensity, safe, ctx, bucket, command,
                            coords=coords, basis=basis, thermal_r=thermal_r)
        if prev is not None:
            decision.previous_reward, decision.previous_arm, decision.previous_terms, decision.previous_bucket = prev
        return decision

    def fold_peers(self, state: AgentState) -> None:
        """Learn the peers' experience absorbed since the last decision (`morph.peers.absorb`).

        It waits here, summed per (bucket, arm), because a group's releases reach every member: a
        node hears far more experience than it decides, and one product per bucket costs less than
        an outer product per record. A decision folds it first, so the bandit it chooses with holds
        the same evidence as if each record had been learnt when it arrived."""
        if not state.peer_pending:
            return  # nothing heard (the flow without peers, or a quiet group): no new dict per decision
        for pending in state.peer_pending.values():
            if pending.arms:
                rows = pending.coords[pending.arms] @ pending.basis.T
                state.bandit.learn_rows(rows, np.array(pending.weights), np.array(pending.weighted_rewards))
        state.peer_pending = {}

    def _close_epoch(self, state: AgentState):
        """Learn the pending decision's reward from the telemetry since; (reward, arm, terms, bucket)."""
        pending, epoch = state.pending, state.epoch
        out = None
        if pending is not None and epoch.n > 0:
            c = self.config
            m = epoch.measurement(self._accuracy[pending.arm])
            terms = reward_terms(m, c.constraints, c.weights)
            r = reward_of_terms(terms, c.weights, pending.switched)
            state.bandit.learn_one(pending.phi, r)
            out = (r, pending.arm, terms, pending.bucket)
        state.pending = None
        epoch.reset()
        return out

    def exploration(self, state: AgentState) -> float:
        """ε shrinks with the evidence the model holds (own decisions and peers' weighted experience,
        discounted alike), not with the node's own decision count: a node that joins a fleet whose
        experience it absorbs explores less than one that starts alone."""
        c = self.config
        return max(c.epsilon_min, c.epsilon / (1.0 + state.bandit.stats.count / c.epsilon_decay))

    def _choose(self, state: AgentState, coords: np.ndarray, basis: np.ndarray, safe: np.ndarray) -> tuple[int, float]:
        n_allowed = int(np.count_nonzero(safe))
        # when the shield leaves the fallback alone (~1 decision in 7 on the flow benchmark), no bound is needed;
        # else the allowed arms' (a solve for Φ's few directions, not per arm), the first best of them taken
        if n_allowed == 1:
            greedy = int(safe.argmax())   # the one allowed arm (the fallback: never masked)
        else:
            greedy = int(state.bandit.ucb_factored(coords, basis, safe).argmax())
        eps = self.exploration(state) if n_allowed > 1 else 0.0
        if state.rng.random() < eps:
            arm = int(safe.nonzero()[0][state.rng.randrange(n_allowed)])
        else:
            arm = greedy
        propensity = eps / n_allowed + (1.0 - eps if arm == greedy else 0.0)
        return arm, propensity

    def greedy(self, state: AgentState, phi: np.ndarray, safe: np.ndarray) -> int:
        """The arm the agent would choose without exploring (a deterministic candidate policy)."""
        allowed = np.flatnonzero(safe)
        return int(allowed[int(np.argmax(state.bandit.predict(phi[allowed])))])

    def _command(self, state: AgentState, sample: dict, arm_index: int, propensity: float,
                 predicted_c: float) -> dict:
        arm, before = self.arms.arms[arm_index], self.arms.arms[state.current]
        name, before_name = self.arm_names[arm_index], self.arm_names[state.current]
        predicted_c = float(predicted_c)  # a numpy scalar: converted once for the reason and the evidence
        critical = arm.fallback and state.temps[-1] >= self.config.constraints.critical_temp_c
        return {
            "command_id": f"{state.node_id}-rli{state.decisions}-{sample['ts_ms']}",
            "node_id": state.node_id,
            "decided_on_ts_ms": sample["ts_ms"],
            "issued_ts_ms": sample["ts_ms"],
            "trigger": "CRITICAL" if critical else "LEARNED",
            "from_variant": before.variant, "to_variant": arm.variant,
            "from_precision": before.precision, "to_precision": arm.precision,
            "batch_size": arm.batch, "cache": arm.cache, "pipeline": arm.pipeline,
            "fallback": arm.fallback, "arm": name, "propensity": round(propensity, 6),
            "model_sha256": self._sha256[arm_index],
            "reason": f"{'critical temperature' if critical else 'learned (UCB among shielded arms)'}: "
                      f"{before_name} -> {name}, predicted {predicted_c:.1f} °C",
            "evidence": self._evidence(state, sample, predicted_c),
            # unsigned here (the control flow signs what it emits); preprocessing: the lighting arm's stage, else left
            "key_id": None, "expires_ts_ms": None, "sequence": None, "signature": None,
            "preprocessing": self._preprocessing[arm_index],
        }

    def _evidence(self, state: AgentState, sample: dict, predicted_c: float) -> dict:
        """The MorphCommand evidence: the window as the rules report it, the shield's forecast for the arm."""
        temps, hot = state.temps, self.config.constraints.max_gpu_temp_c
        n = len(temps)
        return {
            "resource_score": round(self._scorer.resource_score(sample), 4),
            "temperature_c": sample["gpu_temp_c"],
            "window_mean_c": round(sum(temps) / n, 3),
            "window_max_c": max(temps),
            "violation_fraction": round(len([t for t in temps if t >= hot]) / n, 4),
            "window_size": n,
            "forecast_c": round(predicted_c, 2), "forecast_lower_c": None, "forecast_upper_c": None,
            "forecast_horizon_s": self.config.shield.horizon_s, "anomaly_score": None, "contributing_features": [],
        }


def _slope(times: deque, temps: deque) -> float:
    """dT/dt over the recent samples (least squares), °C/s; plain Python: six points, every sample."""
    n = len(times)
    if n == WINDOW == len(temps):
        # the full window (all but a node's first samples), unrolled: the loop's overhead was a third of
        # the slope's cost; the same operations in the same order as the loop below, so the same result
        t0, t1, t2, t3, t4, t5 = times
        y0, y1, y2, y3, y4, y5 = temps
        tm, ym = (t0 + t1 + t2 + t3 + t4 + t5) / n, (y0 + y1 + y2 + y3 + y4 + y5) / n
        d0, d1, d2, d3, d4, d5 = t0 - tm, t1 - tm, t2 - tm, t3 - tm, t4 - tm, t5 - tm
        num = (0.0 + d0 * (y0 - ym) + d1 * (y1 - ym) + d2 * (y2 - ym) + d3 * (y3 - ym) + d4 * (y4 - ym)
               + d5 * (y5 - ym))
        den = 0.0 + d0 * d0 + d1 * d1 + d2 * d2 + d3 * d3 + d4 * d4 + d5 * d5
        return num / den if den > 0 else 0.0
    if n < 2:
        return 0.0
    if len(temps) != n:
        temps = list(temps)[-n:]
    tm, ym = sum(times) / n, sum(temps) / n
    num = den = 0.0
    for t, y in zip(times, temps):
        d = t - tm
        num += d * (y - ym)
        den += d * d
    return num / den if den > 0 else 0.0
