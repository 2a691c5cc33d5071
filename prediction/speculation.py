"""When to speculate: turn next-step predictions into ShadowCommands, and learn from what the shadows did.

`Speculator` is the per-workflow state the flow keys by workflow id. It owns a
`prediction.nextstep.NextStepPredictor` (or anything with the same
``learn_one`` / ``predict_then_learn_one``). River's protocol:
``learn_one(signal)`` only learns (speculation off); ``learn_ack(ack)`` learns
from what a shadow did; ``predict_then_learn_one(signal)`` feeds the signal to
the predictor and returns ``(NextStepPrediction records, ShadowCommand records)``,
the commands (``schemas/shadow_command.avsc``) to send to the run's node:

* on a start of task T in run R: COMMIT R's shadow of T if there is one; keep
  R's other shadows that the new prediction still wants; ROLLBACK the rest
  ("mispredicted: T started"); then ALLOCATE / PREFETCH / PRE_EXECUTE what the
  new prediction makes worth it;
* on the signal that ends R: ROLLBACK everything R still has ("run ended").

Keeping a shadow the new prefix still predicts, instead of rolling back every
other shadow, matters for forks (siblings start one after the other) and for a
branch whose other arm comes next anyway; a kept shadow whose inputs the live
run rewrites is recomputed by the executor, and one that is never triggered
times out there, so nothing wrong can be committed either way.

Whether an action is worth it is `SpeculationPolicy`'s `CostModel`: act on step
s with probability p when ``p · saving > (1 − p) · waste_weight · cost``, with a
weight and a confidence floor per action (ALLOCATE and PREFETCH are cheap I/O,
PRE_EXECUTE spends compute). Saving and cost start as a share of the step's
mean duration (from the finish signals' timestamp arrays) and are then learned
from the acks (``learn_ack``): measured saved ms of commits, busy ms of every
shadow. A step the node refuses to pre-execute (critical) or that has nothing
to fetch or allocate is remembered from the REJECTED ack. Per node at most
``max_in_flight`` shadows are open; the most valuable actions go first.

`SpeculationMetrics` sums what the acks report: latency saved, shadow work
wasted (as a fraction of all step time, live and shadow), hit rate, rollbacks by
reason, per run and in aggregate.

>>> from fingerprint.traces import run_signals
>>> spec = [("ingest", 0, 10), ("infer", 10, 20), ("report", 20, 50)]
>>> speculator = Speculator("w", policy=SpeculationPolicy(critical=frozenset({"report"})))
>>> for i in range(30):  # learn the workflow first
...     _ = [speculator.predict_then_learn_one(s) for s in run_signals("w", f"r{i}", spec, t0_ms=i * 100, node_id="n1")]
>>> live = run_signals("w", "live", spec, t0_ms=10_000, node_id="n1")
>>> predictions, commands = speculator.predict_then_learn_one(live[0])  # ingest started
>>> predictions[0]["candidates"][0]["task"], [(c["action"], c["step"]) for c in commands]
('infer', [('PRE_EXECUTE', 'infer')])
>>> _ = speculator.predict_then_learn_one(live[1])  # ingest finished
>>> [(c["action"], c["step"]) for c in speculator.predict_then_learn_one(live[2])[1]]  # infer started; report is critical
[('COMMIT', 'infer'), ('ALLOCATE', 'report'), ('PREFETCH', 'report')]
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import ClassVar

from prediction.nextstep import NextStepPredictor
from schemas.state import Versioned

ALLOCATE, PREFETCH, PRE_EXECUTE, COMMIT, ROLLBACK = "ALLOCATE", "PREFETCH", "PRE_EXECUTE", "COMMIT", "ROLLBACK"
PREPARE = (ALLOCATE, PREFETCH, PRE_EXECUTE)
END = "<end>"


@dataclass(frozen=True)
class CostModel:
    """When a shadow action pays: ``p · saving > (1 − p) · waste_weight · cost`` and ``p ≥ min_confidence``.

    ``waste_weight`` is what a wasted ms of that action costs relative to a
    saved ms of run latency; ``prior_share`` is the share of the step's mean
    duration the action is assumed to save (and cost) until acks have measured it.

    >>> m = CostModel()
    >>> m.worth(PRE_EXECUTE, 0.6, 30.0, 30.0), m.worth(PRE_EXECUTE, 0.4, 30.0, 30.0)
    (True, False)
    >>> m.worth(PREFETCH, 0.4, 30.0, 30.0)  # cheap action, lower bar
    True
    """

    waste_weight: dict = field(default_factory=lambda: {ALLOCATE: 0.5, PREFETCH: 0.5, PRE_EXECUTE: 1.0})
    min_confidence: dict = field(default_factory=lambda: {ALLOCATE: 0.1, PREFETCH: 0.1, PRE_EXECUTE: 0.3})
    prior_share: dict = field(default_factory=lambda: {ALLOCATE: 0.25, PREFETCH: 0.25, PRE_EXECUTE: 1.0})

    def value(self, action: str, p: float, saving_ms: float, cost_ms: float) -> float:
        """Expected net gain in ms: saving if right, weighted cost if wrong."""
        return p * saving_ms - (1.0 - p) * self.waste_weight[action] * cost_ms

    def worth(self, action: str, p: float, saving_ms: float, cost_ms: float) -> bool:
        return p >= self.min_confidence[action] and self.value(action, p, saving_ms, cost_ms) > 0.0


@dataclass(frozen=True)
class SpeculationPolicy:
    """How a workflow speculates: cost model, per-node bound, known critical steps, learning rate."""

    cost: CostModel = field(default_factory=CostModel)
    max_in_flight: int = 4            # open shadows per node (match the executor's)
    critical: frozenset = frozenset()  # steps known critical; more are learned from REJECTED acks
    learning_rate: float = 0.2         # of the exponentially weighted means of measured ms
    idle_run_ms: int = 600_000         # a run silent this long is forgotten (its shadows rolled back)

    def __post_init__(self):
        if self.max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        if not 0.0 < self.learning_rate <= 1.0:
            raise ValueError("learning_rate must be in (0, 1]")


@dataclass
class RunSpeculation:
    """What speculation did for one run (from the acks)."""

    saved_ms: float = 0.0
    wasted_ms: float = 0.0
    committed: int = 0
    rolled_back: int = 0


@dataclass
class SpeculationMetrics:
    """Aggregate and per-run speculation figures, from the commands issued and the acks received."""

    commands: Counter = field(default_factory=Counter)     # by action
    committed: int = 0
    rolled_back: int = 0
    rollbacks_by_reason: Counter = field(default_factory=Counter)
    rejected: Counter = field(default_factory=Counter)     # by code
    saved_ms: float = 0.0
    wasted_ms: float = 0.0
    shadow_ms: float = 0.0   # busy time of every shadow that ended
    live_ms: float = 0.0     # duration of every live step (finish signals)
    predicted_hits: int = 0  # a shadowed step started (COMMIT sent)
    predicted_misses: int = 0  # another step started or the run ended (ROLLBACK sent)
    runs: OrderedDict = field(default_factory=OrderedDict)  # run_id -> RunSpeculation, most recent last
    max_runs: int = 1000

    @property
    def hit_rate(self) -> float:
        """Share of ended shadows that were committed."""
        n = self.committed + self.rolled_back
        return self.committed / n if n else 0.0

    @property
    def wasted_fraction(self) -> float:
        """Rolled-back or discarded shadow time over all step time, live and shadow."""
        total = self.live_ms + self.shadow_ms
        return self.wasted_ms / total if total else 0.0

    def run(self, run_id: str) -> RunSpeculation:
        r = self.runs.get(run_id)
        if r is None:
            r = self.runs[run_id] = RunSpeculation()
            while len(self.runs) > self.max_runs:
                self.runs.popitem(last=False)
        return r

    def to_dict(self) -> dict:
        return {"commands": dict(self.commands), "committed": self.committed, "rolled_back": self.rolled_back,
                "rollbacks_by_reason": dict(self.rollbacks_by_reason), "rejected": dict(self.rejected),
                "hit_rate": self.hit_rate, "saved_ms": self.saved_ms, "wasted_ms": self.wasted_ms,
                "wasted_fraction": self.wasted_fraction, "shadow_ms": self.shadow_ms, "live_ms": self.live_ms,
                "predicted_hits": self.predicted_hits, "predicted_misses": self.predicted_misses}


@dataclass
class Speculator(Versioned):
    """Per-workflow speculation: turns next-step predictions into shadow commands and learns from their acks.

    Parameters
    ----------
    workflow_id
        The workflow this state belongs to; signals and acks of other workflows are ignored.
    policy
        The cost model, the per-node bound on open shadows, known critical steps
        and the learning rate of measured costs.
    predictor
        The next-step model (`prediction.nextstep.NextStepPredictor` by default):
        anything with ``learn_one(signal)`` and ``predict_then_learn_one(signal)``.

    Examples
    --------
    >>> from fingerprint.traces import run_signals
    >>> speculator = Speculator("w", policy=SpeculationPolicy(critical=frozenset({"c"})))
    >>> for i in range(30):
    ...     for s in run_signals("w", f"r{i}", [("a", 0, 10), ("b", 10, 20)], t0_ms=i * 100, node_id="n1"):
    ...         speculator.learn_one(s)
    >>> live = run_signals("w", "live", [("a", 0, 10), ("b", 10, 20)], t0_ms=10_000, node_id="n1")
    >>> predictions, commands = speculator.predict_then_learn_one(live[0])
    >>> [(c["action"], c["step"], c["node_id"]) for c in commands]
    [('PRE_EXECUTE', 'b', 'n1')]

    References
    ----------
    Speculative execution of workflow steps as in the temporal-fingerprint seed
    (``002_223f545181f843fb.txt``): pre-execute predicted steps in isolation, commit
    on a match, roll back otherwise; the cost model is the expected-value test
    ``p · saving > (1 − p) · waste``.
    """

    workflow_id: str
    policy: SpeculationPolicy = field(default_factory=SpeculationPolicy)
    predictor: object = None
    STATE_VERSION: ClassVar[int] = 1
    version: int = STATE_VERSION
    shadows: dict = field(default_factory=dict)      # run_id -> {step: {"actions": set, "node": str}}
    in_flight: Counter = field(default_factory=Counter)  # node -> open shadows
    estimates: dict = field(default_factory=dict)    # "step|action" -> [saving, n_saving, cost, n_cost]
    durations: dict = field(default_factory=dict)    # step -> exponentially weighted mean duration (ms)
    learned_critical: set = field(default_factory=set)
    inapplicable: set = field(default_factory=set)   # (step, action) the node said do nothing
    metrics: SpeculationMetrics = field(default_factory=SpeculationMetrics)
    dedupe_capacity: int = 10_000
    _runs: dict = field(default_factory=dict, repr=False)  # run_id -> [node, last_ms, started steps]
    _seen: OrderedDict = field(default_factory=OrderedDict, repr=False)    # recent signal ids
    _closed: OrderedDict = field(default_factory=OrderedDict, repr=False)  # recently ended run ids
    _seq: int = 0
    _signals: int = 0

    def __post_init__(self):
        if self.predictor is None:
            self.predictor = NextStepPredictor(self.workflow_id)

    # -- the streaming protocol ---------------------------------------------------------------

    def learn_one(self, signal: dict) -> None:
        """Learn from a WorkflowSignal without speculating (the flow with speculation off)."""
        if signal.get("workflow_id") == self.workflow_id and self._fresh(signal):
            self.predictor.learn_one(signal)
            self._learn_duration(signal)

    def _fresh(self, signal: dict) -> bool:
        """False for a redelivered signal (at-least-once delivery) or one of a run that already ended."""
        sid = signal.get("signal_id")
        if sid in self._seen or signal.get("run_id") in self._closed:
            return False
        self._seen[sid] = None
        if len(self._seen) > self.dedupe_capacity:
            self._seen.popitem(last=False)
        return True

    def _learn_duration(self, signal: dict) -> None:
        if signal.get("state") == 0:
            tsa = signal.get("tsa") or []
            if len(tsa) >= 2:
                ms = (tsa[-1] - tsa[-2]) * (signal.get("tsa_resolution_ms") or 1)
                self.metrics.live_ms += ms
                prev = self.durations.get(signal["task"])
                rate = self.policy.learning_rate
                self.durations[signal["task"]] = ms if prev is None else prev + rate * (ms - prev)

    def predict_then_learn_one(self, signal: dict) -> tuple[list[dict], list[dict]]:
        """Fold in a WorkflowSignal: ``(NextStepPrediction records, ShadowCommand records)`` to publish."""
        if signal.get("workflow_id") != self.workflow_id or not self._fresh(signal):
            return [], []
        predictions = self.predictor.predict_then_learn_one(signal)
        self._learn_duration(signal)
        run_id, task, ts = signal["run_id"], signal["task"], signal["ts_ms"]
        info = self._runs.get(run_id)
        if info is None:
            info = self._runs[run_id] = [signal.get("node_id") or "", ts, set()]
        info[1] = max(info[1], ts)
        out: list[dict] = []
        if signal.get("run_ended"):
            out += self._close(run_id, ts, "run ended")
            self._runs.pop(run_id, None)
            self._closed[run_id] = None
            if len(self._closed) > self.dedupe_capacity:
                self._closed.popitem(last=False)
        elif signal.get("state") == 1:
            info[2].add(task)
            wanted = self._plan(predictions, info[2])
            out += self._resolve(run_id, task, ts, wanted)
            out += self._issue(run_id, ts, wanted)
        self._signals += 1
        if self._signals % 256 == 0:
            out += self._forget_idle(ts)
        return predictions, out

    def learn_ack(self, ack: dict) -> None:
        """Learn from a CommandAck of a shadow of this workflow (others are ignored)."""
        details = ack.get("details") or {}
        if ack.get("kind") != "SHADOW" or details.get("workflow_id") != self.workflow_id:
            return
        status, step, run_id = ack.get("status"), details.get("step", ""), details.get("run_id", "")
        m = self.metrics
        if status == "REJECTED":
            code, action = details.get("code", ""), details.get("action", "")
            m.rejected[code] += 1
            if code == "critical":
                self.learned_critical.add(step)
            elif code in ("nothing_to_prefetch", "nothing_to_allocate"):
                self.inapplicable.add((step, action))
            self._drop(run_id, step, action)
            return
        if status not in ("COMMITTED", "ROLLED_BACK"):
            return
        num = _number(details)
        actions = [a for a in details.get("actions", "").split(",") if a]
        busy, wasted, saved = num("busy_ms"), num("wasted_ms"), num("saved_ms")
        m.shadow_ms += busy
        m.wasted_ms += wasted
        run = m.run(run_id)
        run.wasted_ms += wasted
        parts = {ALLOCATE: num("alloc_ms"), PREFETCH: num("fetch_ms")}
        if status == "COMMITTED":
            m.committed += 1
            m.saved_ms += saved
            run.committed += 1
            run.saved_ms += saved
            if PRE_EXECUTE in actions:
                self._sample(step, PRE_EXECUTE, saving=saved, cost=busy)
            else:
                for a in actions:
                    self._sample(step, a, saving=parts.get(a, 0.0), cost=parts.get(a, 0.0))
        else:
            m.rolled_back += 1
            m.rollbacks_by_reason[ack.get("reason", "").split(":", 1)[0]] += 1
            run.rolled_back += 1
            for a in actions:
                self._sample(step, a, cost=busy if a == PRE_EXECUTE else parts.get(a, 0.0))
        self._drop(run_id, step, None)  # ended on the node (timeout, failure, ...): no longer open

    # -- deciding -----------------------------------------------------------------------------

    def critical(self, step: str) -> bool:
        return step in self.policy.critical or step in self.learned_critical

    def estimate(self, step: str, action: str) -> tuple[float, float] | None:
        """(saving ms, cost ms) expected of ``action`` on ``step``; ``None`` while its duration is unknown."""
        est = self.estimates.get(f"{step}|{action}")
        duration = self.durations.get(step)
        prior = None if duration is None else self.policy.cost.prior_share[action] * duration
        saving = est[0] if est and est[1] else prior
        cost = est[2] if est and est[3] else prior
        if saving is None or cost is None:
            return None
        return saving, cost

    def _plan(self, predictions: list[dict], started: set) -> dict[str, tuple[str, float, int, float]]:
        """Step -> (action, p, expected start, value) for what the predictions make worth doing."""
        cost = self.policy.cost
        wanted: dict[str, tuple[str, float, int, float]] = {}
        for prediction in predictions:
            for c in prediction["candidates"]:
                step, p = c["task"], c["probability"]
                if step == END or step in started or step in wanted:
                    continue
                start = c.get("expected_start_ts_ms") or prediction["ts_ms"]
                actions = (ALLOCATE, PREFETCH) if self.critical(step) else (PRE_EXECUTE, ALLOCATE, PREFETCH)
                for action in actions:
                    if (step, action) in self.inapplicable:
                        continue
                    est = self.estimate(step, action)
                    if est is None or not cost.worth(action, p, *est):
                        continue
                    v = cost.value(action, p, *est)
                    have = wanted.get(step)
                    if have is None:
                        wanted[step] = (action, p, start, v)
                    elif have[0] != PRE_EXECUTE:  # PRE_EXECUTE already allocates and fetches
                        wanted[step] = (have[0] + "+" + action, p, start, have[3] + v)
                    if action == PRE_EXECUTE:
                        break
        return wanted

    def _resolve(self, run_id: str, task: str, ts: int, wanted: dict) -> list[dict]:
        """A task started: commit its shadow, keep what is still wanted, roll back the rest."""
        out = []
        for step, shadow in list(self.shadows.get(run_id, {}).items()):
            if step == task:
                out.append(self._command(run_id, step, COMMIT, 1.0, ts, ts, f"{task} started"))
                self.metrics.predicted_hits += 1
                self._drop(run_id, step, None)
            elif step not in wanted:
                out.append(self._command(run_id, step, ROLLBACK, 0.0, ts, ts, f"mispredicted: {task} started"))
                self.metrics.predicted_misses += 1
                self._drop(run_id, step, None)
        return out

    def _issue(self, run_id: str, ts: int, wanted: dict) -> list[dict]:
        out = []
        open_ = self.shadows.setdefault(run_id, {})
        node = self._runs[run_id][0]
        for step, (actions, p, start, value) in sorted(wanted.items(), key=lambda kv: -kv[1][3]):
            shadow = open_.get(step)
            if shadow is None:
                if self.in_flight[node] >= self.policy.max_in_flight:
                    continue
                shadow = open_[step] = {"actions": set(), "node": node}
                self.in_flight[node] += 1
            for action in actions.split("+"):
                if action in shadow["actions"] or PRE_EXECUTE in shadow["actions"]:
                    continue
                shadow["actions"].add(action)
                est = self.estimate(step, action)
                reason = (f"p={p:.2f}: saves ~{est[0]:.1f} ms if right, wastes ~{est[1]:.1f} ms if wrong"
                          if est else f"p={p:.2f}")
                out.append(self._command(run_id, step, action, p, start, ts, reason))
        if not open_:
            self.shadows.pop(run_id, None)
        return out

    def _close(self, run_id: str, ts: int, reason: str) -> list[dict]:
        out = []
        for step in list(self.shadows.get(run_id, {})):
            out.append(self._command(run_id, step, ROLLBACK, 0.0, ts, ts, reason))
            self.metrics.predicted_misses += 1
            self._drop(run_id, step, None)
        return out

    def _forget_idle(self, now: int) -> list[dict]:
        out = []
        for run_id, (_, last, _) in list(self._runs.items()):
            if now - last > self.policy.idle_run_ms:
                out += self._close(run_id, now, "run idle")
                del self._runs[run_id]
        return out

    def _drop(self, run_id: str, step: str, action: str | None) -> None:
        """Forget an open shadow (or one action of it; the shadow goes when no action is left)."""
        open_ = self.shadows.get(run_id)
        shadow = open_.get(step) if open_ else None
        if shadow is None:
            return
        if action:
            shadow["actions"].discard(action)
            if shadow["actions"]:
                return
        del open_[step]
        self.in_flight[shadow["node"]] -= 1
        if self.in_flight[shadow["node"]] <= 0:
            del self.in_flight[shadow["node"]]
        if not open_:
            del self.shadows[run_id]

    def _sample(self, step: str, action: str, saving: float | None = None, cost: float | None = None) -> None:
        est = self.estimates.setdefault(f"{step}|{action}", [0.0, 0, 0.0, 0])
        rate = self.policy.learning_rate
        for value, i in ((saving, 0), (cost, 2)):
            if value is None or not math.isfinite(value):
                continue
            est[i] = value if not est[i + 1] else est[i] + rate * (value - est[i])
            est[i + 1] += 1

    def _command(self, run_id: str, step: str, action: str, p: float, start: int, ts: int, reason: str) -> dict:
        self._seq += 1
        self.metrics.commands[action] += 1
        info = self._runs.get(run_id)
        node = info[0] if info else ""
        return {"command_id": f"{self.workflow_id}/{run_id}/{step}/{action}/{self._seq}", "node_id": node,
                "workflow_id": self.workflow_id, "run_id": run_id, "step": step, "action": action,
                "confidence": float(min(max(p, 0.0), 1.0)), "expected_start_ts_ms": int(start),
                "issued_ts_ms": int(ts), "input_digest": None, "reason": reason,
                "key_id": None, "expires_ts_ms": None, "sequence": None, "signature": None}  # signed by the flow


def _number(details: dict):
    def get(key: str) -> float:
        try:
            return float(details.get(key, 0.0))
        except (TypeError, ValueError):
            return 0.0
    return get
