"""The morph decision policy: from a node's telemetry, when to change what it serves.

Rules, checked on every sample (event time, so a replay decides the same way):

* **critical** — the last ``critical_samples`` samples all at or above
  ``critical_c`` (90 °C): go straight to the lightest variant, cool-down or not.
  A safety rule, so its debounce is shorter than the window's;
* **threshold** — at least ``sustain_fraction`` of the window at or above
  ``hot_c`` (85 °C) and ``cooldown_s`` since the last change: one rung down;
* **recovery** — the whole window at or below ``recover_c``,
  ``recover_cooldown_s`` since the last change, and the step up expected to
  stay under ``hot_c``: one rung up. The gap between ``hot_c`` and
  ``recover_c`` is the hysteresis band that stops a node from oscillating
  around a threshold. A band of fixed width is not enough where one rung
  carries much of the power (a CPU running the zoo's models: the lstm draws a
  third of the transformer's dynamic power, so a step down cools the node by
  far more than 7 °C even while the air keeps heating). So the policy watches
  what each step down did: the fall from the window's peak to the lowest
  reading within ``recover_cooldown_s`` of the node serving the lighter
  variant (`StepDownWatch`; a jump's fall is shared evenly by the rungs it
  skipped). Stepping back up is expected to undo that fall, and is held while
  the window's maximum plus that fall reaches ``hot_c``.
  The estimate is the node's own response, not a power model; a fall measured
  while the air cooled overstates the rise (recovery waits longer), one while
  the air heated understates it;
* **forecast** (with the online models on) — the temperature forecast puts the
  node at or above ``hot_c`` within ``forecast_horizon_s`` with probability at
  least ``forecast_confidence``, on ``forecast_samples`` samples in a row: one
  rung down *before* the threshold is reached;
* **anomaly** (models on) — an anomaly score at or above
  ``anomaly_fallback_score`` on ``anomaly_samples`` samples in a row, driven by a
  feature the thermal rules do not already watch: fall back to the lightest
  variant in int8. No recovery while the anomaly lasts, nor for
  ``fallback_hold_s`` after falling back;
* **lighting** (with ``min_accuracy`` set: the workflow's) — the running
  accuracy on labelled requests the node reports under ``min_accuracy`` on
  ``accuracy_samples`` samples in a row, while the node serves its frames as
  shot: switch the illumination-normalisation preprocessing stage on (the
  night shift's drift, `morph.zoo.lighting`), same model. When no labelled
  requests arrive (the sample's ``accuracy`` is None), the node's confidence
  proxy stands in with ``min_confidence`` set: the mean top-1 softmax
  probability it reports under ``min_confidence``. The models are
  over-confident (on the night shift the full zoo's cnn answers 28 % right
  at 0.86 mean confidence, 0.96 by day), so ``min_confidence`` is its own
  threshold, set from the served models' day confidence, not ``min_accuracy``.
  Thermal rules come first; a lighter model would not win back accuracy lost
  to the light;
* **resource score** — 0.4·temperature + 0.3·memory + 0.3·power headroom, each
  in [0,1], averaged over the window; tiers at 0.8/0.6/0.4/0.2 choose precision
  and batch size (with a margin before moving to a better tier).

A command is pending until the node acknowledges it or its telemetry shows the
new configuration; meanwhile nothing else is issued except a critical jump.
Every decision carries its evidence and a reason in words.

>>> policy = MorphPolicy(PolicyConfig(window=3, sustain_fraction=0.6, cooldown_s=0))
>>> state = NodeState.new("n1")
>>> sample = dict(node_id="n1", ts_ms=0, gpu_temp_c=70.0, mem_used_frac=0.4, power_w=200.0,
...               power_cap_w=300.0, variant="transformer", precision="fp32", batch_size=16)
>>> [policy.decide(state, {**sample, "ts_ms": i * 1000}) for i in range(3)]
[None, None, None]
>>> cmds = [policy.decide(state, {**sample, "ts_ms": (3 + i) * 1000, "gpu_temp_c": 86.0}) for i in range(3)]
>>> cmds[0], cmds[1]["to_variant"], cmds[1]["trigger"]
(None, 'lstm', 'THRESHOLD')
>>> cmds[1]["reason"]
'2/3 samples >= 85.0 °C (max 86.0 °C): step down transformer -> lstm'
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import ClassVar, Optional

from morph.ladder import PRECISIONS, MorphLadder
from schemas.state import Versioned

STATE_VERSION = 4
#: The preprocessing stage the lighting rule switches on (`morph.zoo.lighting.PREPROCESSING`).
LIGHTING_STAGE = "illumination-normalisation"


def _add_model_counters(state: dict) -> dict:
    """Version 1 -> 2: the online models' counters and the fallback hold, none set yet."""
    return {"forecast_hits": 0, "anomaly_hits": 0, "fallback": False, "fallback_since_ms": None, **state}


def _add_accuracy_counter(state: dict) -> dict:
    """Version 2 -> 3: the lighting rule's count of low-accuracy samples, none yet."""
    return {"low_accuracy_hits": 0, **state}


def _add_step_down_watch(state: dict) -> dict:
    """Version 3 -> 4: the recovery guard's memory of what each step down did, nothing watched yet."""
    return {"rung_rise_c": {}, "step_down_watch": None, **state}

#: (minimum resource score, precision, batch size), best tier first.
DEFAULT_TIERS = ((0.8, "fp32", 16), (0.6, "fp32", 8), (0.4, "fp16", 8), (0.2, "int8", 4), (0.0, "int8", 1))


@dataclass(frozen=True)
class PolicyConfig:
    ladder: MorphLadder = MorphLadder()
    hot_c: float = 85.0
    critical_c: float = 90.0
    recover_c: float = 78.0
    window: int = 6
    critical_samples: int = 3
    sustain_fraction: float = 0.7
    cooldown_s: float = 5.0
    recover_cooldown_s: float = 10.0
    pending_timeout_s: float = 10.0
    # Resource score: weights and the reference points that map each reading to a headroom in [0,1].
    weights: tuple[float, float, float] = (0.4, 0.3, 0.3)
    temp_ok_c: float = 75.0            # headroom 1 at or below, 0 at critical_c
    mem_ok: float = 0.75               # headroom 1 at or below, 0 at mem_full
    mem_full: float = 0.95
    power_ok_frac: float = 0.85        # headroom 1 at or below this share of the cap, 0 at the cap
    tiers: tuple = DEFAULT_TIERS
    tier_margin: float = 0.1           # extra score needed to move to a better tier
    # Predictive rules (used when the control flow runs the online models).
    forecast_horizon_s: float = 15.0
    forecast_confidence: float = 0.8
    forecast_samples: int = 2
    anomaly_fallback_score: float = 0.99999
    anomaly_samples: int = 3
    #: A fallback holds at least this long: the swap itself re-bases the detector's view of
    #: config-dependent features (latency, power), so "no anomaly" right after it proves little.
    fallback_hold_s: float = 60.0
    #: Features the thermal rules already act on; an anomaly in them alone is no reason to fall back.
    anomaly_ignore: tuple = ("gpu_temp_c", "temp_rate_c_per_s")
    #: sha256 of each (variant, precision) ONNX file, from the zoo manifest; sent in commands.
    model_sha256: tuple = ()
    #: The workflow's minimum accuracy: under it on ``accuracy_samples`` samples in a row (the
    #: running accuracy on labelled requests), illumination normalisation goes on. None: no lighting rule.
    min_accuracy: Optional[float] = None
    accuracy_samples: int = 3
    #: With no labelled requests, the lighting rule's floor on the reported confidence proxy (mean top-1
    #: softmax probability). None: the rule waits for labelled requests.
    min_confidence: Optional[float] = None

    def __post_init__(self):
        if not (self.recover_c < self.hot_c <= self.critical_c):
            raise ValueError("need recover_c < hot_c <= critical_c")
        if self.window < 1 or not (0.0 < self.sustain_fraction <= 1.0):
            raise ValueError("need window >= 1 and 0 < sustain_fraction <= 1")
        for _, precision, batch in self.tiers:
            if precision not in PRECISIONS or batch < 1:
                raise ValueError(f"bad tier precision/batch {precision}/{batch}")

    def scaled(self, factor: float) -> "PolicyConfig":
        """The same policy on a clock ``factor`` times faster (for accelerated scenarios)."""
        from dataclasses import replace

        return replace(self, cooldown_s=self.cooldown_s / factor, recover_cooldown_s=self.recover_cooldown_s / factor,
                       pending_timeout_s=self.pending_timeout_s / factor, fallback_hold_s=self.fallback_hold_s / factor)


@dataclass
class Pending:
    command_id: str
    to_variant: str
    to_precision: str
    batch_size: int
    issued_at_ms: int


@dataclass
class StepDownWatch:
    """One step down being watched: the variant left, the one stepped to, the hottest reading
    before the node served it, the coolest since, and when the node first reported serving it."""

    left: str
    to: str
    peak_c: float
    trough_c: Optional[float] = None
    serving_since_ms: Optional[int] = None

    def fall_c(self) -> Optional[float]:
        """The fall so far (None until the node serves the lighter variant)."""
        return None if self.trough_c is None else max(0.0, self.peak_c - self.trough_c)


@dataclass
class NodeState(Versioned):
    """Everything the policy remembers about one node; Bytewax snapshots it."""

    STATE_VERSION: ClassVar[int] = STATE_VERSION
    MIGRATIONS: ClassVar[dict] = {1: _add_model_counters, 2: _add_accuracy_counter, 3: _add_step_down_watch}

    node_id: str
    version: int = STATE_VERSION
    temps: deque = field(default_factory=deque)
    scores: deque = field(default_factory=deque)
    variant: Optional[str] = None
    precision: Optional[str] = None
    batch_size: Optional[int] = None
    pending: Optional[Pending] = None
    last_change_ms: Optional[int] = None
    last_ts_ms: Optional[int] = None
    decisions: int = 0
    acked: deque = field(default_factory=lambda: deque(maxlen=256))
    stale_samples: int = 0
    forecast_hits: int = 0      # consecutive samples whose forecast crosses hot_c confidently
    anomaly_hits: int = 0       # consecutive samples anomalous beyond the fallback score
    fallback: bool = False
    fallback_since_ms: Optional[int] = None
    low_accuracy_hits: int = 0  # consecutive samples whose reported accuracy is under min_accuracy
    #: Per variant: how far the node's temperature fell the last time it stepped down from it
    #: (what stepping back up to it is expected to add).
    rung_rise_c: dict = field(default_factory=dict)
    step_down_watch: Optional[StepDownWatch] = None

    @classmethod
    def new(cls, node_id: str) -> "NodeState":
        return cls(node_id=node_id)


class MorphPolicy:
    """Decides per telemetry sample; see the module docstring for the rules."""

    def __init__(self, config: PolicyConfig = PolicyConfig()):
        self.config = config
        self._sha = dict(config.model_sha256)

    # -- resource score -------------------------------------------------
    def resource_score(self, sample: dict) -> float:
        c = self.config
        t = _clip((c.critical_c - sample["gpu_temp_c"]) / (c.critical_c - c.temp_ok_c))
        m = _clip((c.mem_full - sample["mem_used_frac"]) / (c.mem_full - c.mem_ok))
        cap = sample["power_cap_w"] or 1.0
        p = _clip((1.0 - sample["power_w"] / cap) / (1.0 - c.power_ok_frac))
        w = c.weights
        return w[0] * t + w[1] * m + w[2] * p

    def tier_for(self, score: float, current: tuple[str, int] | None) -> tuple[str, int]:
        tiers = self.config.tiers
        idx = next(i for i, (floor, _, _) in enumerate(tiers) if score >= floor or i == len(tiers) - 1)
        if current is not None:
            cur = next((i for i, (_, p, b) in enumerate(tiers) if (p, b) == current), None)
            # Moving to a better tier needs the margin on top of its floor: no flapping at a boundary.
            if cur is not None and idx < cur and score < tiers[idx][0] + self.config.tier_margin:
                idx = cur if score < tiers[cur - 1][0] + self.config.tier_margin else cur - 1
        _, precision, batch = tiers[idx]
        return precision, batch

    def _better(self, tier: tuple[str, int], current: tuple[str, int]) -> bool:
        order = [(p, b) for _, p, b in self.config.tiers]
        return current in order and order.index(tier) < order.index(current)

    # -- acknowledgements ------------------------------------------------
    def on_ack(self, state: NodeState, ack: dict) -> None:
        """Learn from a worker's CommandAck what the node really runs."""
        if ack.get("kind", "MORPH") != "MORPH":
            return
        state.acked.append(ack["command_id"])
        pending = state.pending
        if pending is not None and pending.command_id == ack["command_id"]:
            state.pending = None
        if ack["status"] == "APPLIED":
            state.variant = ack.get("to_variant") or state.variant
            state.precision = ack.get("to_precision") or state.precision
        elif ack.get("from_variant"):
            state.variant = ack["from_variant"]
            state.precision = ack.get("from_precision") or state.precision

    # -- decisions -------------------------------------------------------
    def decide(self, state: NodeState, sample: dict, assessment=None) -> Optional[dict]:
        """Update ``state`` with one telemetry sample; a MorphCommand record or None.

        ``assessment`` is what the node's online models say of the sample
        (`prediction.telemetry_models.Assessment`); without it the policy reacts
        to thresholds only.
        """
        c = self.config
        ts = sample["ts_ms"]
        if state.last_ts_ms is not None and ts < state.last_ts_ms:
            state.stale_samples += 1  # out of order: it must not move the window backwards in time
            return None
        state.last_ts_ms = ts
        temps, scores = state.temps, state.scores
        temps.append(sample["gpu_temp_c"])
        scores.append(self.resource_score(sample))
        if len(temps) > c.window:
            temps.popleft()
            scores.popleft()
        self._sync_belief(state, sample, ts)
        self._watch_step_down(state, sample)
        p_hot = self._track_models(state, assessment)
        self._track_accuracy(state, sample)
        if len(temps) < c.window:
            return None

        n = len(temps)
        k = min(c.critical_samples, n)
        critical = all(temps[-i] >= c.critical_c for i in range(1, k + 1))
        variant = state.variant
        if state.pending is not None:
            if critical and state.pending.to_variant != c.ladder.lightest:
                return self._command(state, sample, "CRITICAL", c.ladder.lightest, 1.0,
                                     f"last {k} samples >= {c.critical_c} °C while a change was pending",
                                     assessment)
            return None
        since = None if state.last_change_ms is None else (ts - state.last_change_ms) / 1000.0
        rung, lightest = c.ladder.rung(variant), len(c.ladder.variants) - 1

        if critical and rung < lightest:
            return self._command(state, sample, "CRITICAL", c.ladder.lightest, 1.0,
                                 f"last {k} samples >= {c.critical_c} °C (max {max(temps):.1f} °C)", assessment)
        cooled_down = since is None or since >= c.cooldown_s
        hot = sum(1 for t in temps if t >= c.hot_c) / n
        if hot >= c.sustain_fraction and rung < lightest and cooled_down:
            return self._command(state, sample, "THRESHOLD", c.ladder.step_down(variant), hot,
                                 f"{_count(hot, n)} samples >= {c.hot_c} °C (max {max(temps):.1f} °C)", assessment)
        if state.anomaly_hits >= c.anomaly_samples and not state.fallback and cooled_down:
            state.fallback, state.fallback_since_ms = True, ts
            return self._command(state, sample, "ANOMALY", c.ladder.lightest, 1.0,
                                 f"anomaly score {assessment.anomaly.score:.5f} on {state.anomaly_hits} samples "
                                 f"in a row ({', '.join(assessment.anomaly.top_features())})", assessment,
                                 precision="int8")
        if state.forecast_hits >= c.forecast_samples and rung < lightest and cooled_down \
                and sample["gpu_temp_c"] < c.hot_c:
            f = assessment.forecasts["gpu_temp_c"]
            return self._command(state, sample, "FORECAST", c.ladder.step_down(variant), 0.0,
                                 f"forecast {f.value:.1f} °C in {assessment.horizon_s:.0f} s "
                                 f"(90% interval {f.lower:.1f}..{f.upper:.1f}), P(>= {c.hot_c} °C) = {p_hot:.2f} "
                                 f"on {state.forecast_hits} samples", assessment)
        held = state.fallback and (ts - state.fallback_since_ms) / 1000.0 < c.fallback_hold_s
        if rung > 0 and hot == 0.0 and max(temps) <= c.recover_c and state.anomaly_hits == 0 and not held \
                and (since is None or since >= c.recover_cooldown_s) and self._stays_cool_one_rung_up(state):
            return self._recovery_command(state, sample, since, assessment)
        if state.low_accuracy_hits >= c.accuracy_samples and sample.get("preprocessing") in (None, "none"):
            return self._lighting_command(state, sample)
        current = (state.precision, state.batch_size)
        tier = self.tier_for(sum(scores) / n, current)
        # A worse tier after the ordinary cool-down; a better one only after the recovery cool-down.
        wait = c.recover_cooldown_s if self._better(tier, current) else c.cooldown_s
        if tier != current and (since is None or since >= wait):
            return self._command(state, sample, "RESOURCE_SCORE", variant, hot,
                                 f"mean resource score {sum(scores) / n:.2f} over {n} samples", assessment)
        return None

    def _stays_cool_one_rung_up(self, state: NodeState) -> bool:
        """Whether the window's maximum plus the rise expected from stepping up stays under ``hot_c``
        (a step up that would undo the step down waits until the node is cooler)."""
        rise = self._expected_rise(state, self.config.ladder.step_up(state.variant))
        return rise is None or max(state.temps) + rise < self.config.hot_c

    def _recovery_command(self, state: NodeState, sample: dict, since: Optional[float], assessment) -> Optional[dict]:
        c, temps = self.config, state.temps
        up = c.ladder.step_up(state.variant)
        rise = self._expected_rise(state, up)
        state.fallback = False
        state.rung_rise_c.pop(up, None)  # used once: the next step down from it measures afresh
        return self._command(state, sample, "RECOVERY", up, 1.0,
                             f"all {len(temps)} samples <= {c.recover_c} °C (max {max(temps):.1f} °C)"
                             + ("" if since is None else f", {since:.0f} s since the last change")
                             + ("" if rise is None else f", +{rise:.1f} °C expected from stepping up"), assessment)

    def _watch_step_down(self, state: NodeState, sample: dict) -> None:
        """Follow the last step down: its peak until the node serves the lighter variant, then its
        lowest reading for ``recover_cooldown_s``; then remember the fall for the variant it left."""
        watch = state.step_down_watch
        if watch is None:
            return
        temp, ts = sample["gpu_temp_c"], sample["ts_ms"]
        if watch.serving_since_ms is None:
            if sample["variant"] != watch.to:
                watch.peak_c = max(watch.peak_c, temp)
                return
            watch.serving_since_ms, watch.trough_c = ts, temp
        watch.trough_c = min(watch.trough_c, temp)
        if ts - watch.serving_since_ms >= self.config.recover_cooldown_s * 1000:
            self._remember_fall(state, watch)
            state.step_down_watch = None

    def _left_behind(self, watch: StepDownWatch) -> list[str]:
        """The variants a step down left: the one it came from and any a jump skipped."""
        variants = self.config.ladder.variants
        return list(variants[variants.index(watch.left):variants.index(watch.to)])

    def _remember_fall(self, state: NodeState, watch: StepDownWatch) -> None:
        # A jump's fall is shared evenly by the rungs it skipped: each step back up adds its share
        # (the node never ran the skipped ones here, so nothing better is known of them).
        left = self._left_behind(watch)
        for variant in left:
            state.rung_rise_c[variant] = round(watch.fall_c() / len(left), 3)

    def _expected_rise(self, state: NodeState, variant: str) -> Optional[float]:
        """How much stepping up to ``variant`` is expected to heat the node: the fall its last step
        down caused (the one still watched counts as far as it has gone; not yet served: no step up)."""
        watch = state.step_down_watch
        if watch is not None and variant in self._left_behind(watch):
            fall = watch.fall_c()
            return math.inf if fall is None else fall / len(self._left_behind(watch))
        return state.rung_rise_c.get(variant)

    def _track_models(self, state: NodeState, assessment) -> float:
        """Count consecutive forecast and anomaly hits; returns P(temperature >= hot_c at the horizon)."""
        if assessment is None:
            return 0.0
        c = self.config
        f = assessment.forecasts.get("gpu_temp_c")
        p_hot = _prob_above(f, c.hot_c)
        state.forecast_hits = state.forecast_hits + 1 if p_hot >= c.forecast_confidence else 0
        a = assessment.anomaly
        driven = a.is_anomaly and not a.warming_up and a.score >= c.anomaly_fallback_score and \
            bool(set(a.top_features()) - set(c.anomaly_ignore))
        state.anomaly_hits = state.anomaly_hits + 1 if driven else 0
        return p_hot

    def _track_accuracy(self, state: NodeState, sample: dict) -> None:
        """Count consecutive samples whose running accuracy (labelled requests) is under ``min_accuracy``,
        or, with none labelled, whose confidence proxy is under ``min_confidence``."""
        state.low_accuracy_hits = state.low_accuracy_hits + 1 if self._light_evidence(sample) else 0

    def _light_evidence(self, sample: dict) -> Optional[str]:
        """Why this sample says the light has drifted (None: it does not)."""
        c = self.config
        if c.min_accuracy is None:
            return None
        accuracy, confidence = sample.get("accuracy"), sample.get("confidence")
        if accuracy is not None:
            return f"accuracy {accuracy:.2f} < min_accuracy {c.min_accuracy:.2f}" if accuracy < c.min_accuracy else None
        if c.min_confidence is not None and confidence is not None and confidence < c.min_confidence:
            return f"no labelled requests; confidence {confidence:.2f} < min_confidence {c.min_confidence:.2f}"
        return None

    def _lighting_command(self, state: NodeState, sample: dict) -> Optional[dict]:
        """The same model, its requests through illumination normalisation (the lighting rule)."""
        hits = state.low_accuracy_hits
        state.low_accuracy_hits = 0
        why = f"{self._light_evidence(sample)} on {hits} samples while serving frames as shot (lighting drift)"
        record = self._command(state, sample, "THRESHOLD", state.variant, 1.0, why,
                               precision=state.precision, batch=state.batch_size, changes_stage=True)
        if record is not None:
            record["preprocessing"] = LIGHTING_STAGE
            record["reason"] = f"{why}: {LIGHTING_STAGE} on, {state.variant}/{state.precision} kept"
        return record

    def _start_watch(self, state: NodeState, to_variant: str) -> None:
        """Watch this step down; one still watched ends here with the fall it has seen."""
        old = state.step_down_watch
        if old is not None and old.fall_c() is not None:
            self._remember_fall(state, old)
        state.step_down_watch = StepDownWatch(state.variant, to_variant, max(state.temps))

    def _sync_belief(self, state: NodeState, sample: dict, ts: int) -> None:
        reported = (sample["variant"], sample["precision"], sample["batch_size"])
        pending = state.pending
        if pending is not None:
            if (pending.to_variant, pending.to_precision, pending.batch_size) == reported:
                state.pending = None
            elif ts - pending.issued_at_ms > self.config.pending_timeout_s * 1000:
                state.pending = None  # never confirmed: believe the node again
            else:
                return
        state.variant, state.precision, state.batch_size = reported

    def _command(self, state: NodeState, sample: dict, trigger: str, to_variant: str,
                 violation: float, why: str, assessment=None, precision: str | None = None,
                 batch: int | None = None, changes_stage: bool = False) -> Optional[dict]:
        c = self.config
        n = len(state.temps)
        mean_score = sum(state.scores) / n
        tier_precision, tier_batch = self.tier_for(mean_score, (state.precision, state.batch_size))
        precision, batch = precision or tier_precision, batch or tier_batch
        if not changes_stage and to_variant == state.variant and (precision, batch) == (state.precision,
                                                                                           state.batch_size):
            return None
        ts = sample["ts_ms"]
        state.decisions += 1
        command_id = f"{state.node_id}-{state.decisions}-{ts}"
        moves = []
        if to_variant != state.variant:
            verb = "step up" if c.ladder.rung(to_variant) < c.ladder.rung(state.variant) else (
                "jump" if trigger == "CRITICAL" else "step down")
            moves.append(f"{verb} {state.variant} -> {to_variant}")
        if (precision, batch) != (state.precision, state.batch_size):
            moves.append(f"{state.precision}/b{state.batch_size} -> {precision}/b{batch}")
        record = {
            "command_id": command_id,
            "node_id": state.node_id,
            "decided_on_ts_ms": ts,
            "issued_ts_ms": ts,
            "trigger": trigger,
            "from_variant": state.variant,
            "to_variant": to_variant,
            "from_precision": state.precision,
            "to_precision": precision,
            "batch_size": batch,
            "cache": False,
            "fallback": trigger == "ANOMALY",
            "model_sha256": self._sha.get((to_variant, precision)),
            "propensity": None, "arm": None, "pipeline": None,  # the learned agent's fields: rules are deterministic
            # Unsigned here: the control flow signs what it emits (edge.signing).
            "key_id": None, "expires_ts_ms": None, "sequence": None, "signature": None,
            "reason": f"{why}: {'; '.join(moves)}",
            "evidence": {
                "resource_score": round(mean_score, 4),
                "temperature_c": sample["gpu_temp_c"],
                "window_mean_c": round(sum(state.temps) / n, 3),
                "window_max_c": max(state.temps),
                "violation_fraction": round(violation, 4),
                "window_size": n,
                "forecast_c": None, "forecast_lower_c": None, "forecast_upper_c": None,
                "forecast_horizon_s": None, "anomaly_score": None, "contributing_features": [],
            },
            "preprocessing": None,  # the thermal rules leave the node's preprocessing stage as it is
        }
        if assessment is not None:
            record["evidence"].update(assessment.evidence())
        state.pending = Pending(command_id, to_variant, precision, batch, ts)
        if c.ladder.rung(to_variant) > c.ladder.rung(state.variant):
            self._start_watch(state, to_variant)
        state.variant, state.precision, state.batch_size = to_variant, precision, batch
        state.last_change_ms = ts
        if command_id in state.acked:
            state.pending = None
            return None  # acknowledged before (a replay or a resume): never issue it twice
        return record


def _prob_above(forecast, level: float) -> float:
    """P(value >= level) from a forecast's 90 % interval, taken as normal."""
    if forecast is None or forecast.value != forecast.value:  # missing or NaN: no opinion
        return 0.0
    sigma = max((forecast.upper - forecast.lower) / (2 * 1.6449), 1e-9)
    return 0.5 * math.erfc((level - forecast.value) / (sigma * math.sqrt(2)))


def _clip(x: float) -> float:
    return 0.0 if x < 0.0 else 1.0 if x > 1.0 else x


def _count(fraction: float, n: int) -> str:
    return f"{round(fraction * n)}/{n}"
