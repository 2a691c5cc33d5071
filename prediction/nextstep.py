"""Next-step prediction for live workflow runs: which task starts next (or the run ends), and when.

`NextStepPredictor` is the per-workflow state the flow keys by workflow id. It
follows River's protocol: ``learn_one(signal)`` folds a WorkflowSignal in and
returns nothing, ``predict_proba_one`` / ``predict_one`` change nothing, and
``predict_then_learn_one(signal)`` does both in one call and returns the
NextStepPrediction records (``schemas/next_step_prediction.avsc``) to emit: one
per task start, with the top-k candidates (``<end>`` included) and expected
start times (last start + mean inter-start delay of that transition).

The prediction is a mixture of context experts (`prediction.context_experts`),
each a Witten-Bell chain of follower counts over one view of the run's prefix:

* ``history`` — the last ``history`` tasks (variable-length context, backing off);
* ``visited`` — the set of tasks the run has already started;
* ``gap`` / ``elapsed`` — time since the previous start / since the run's first
  start, in factor-of-two buckets;
* ``calendar`` — when the last task started: weekday and 3-hour bin of the day (UTC);
* ``attr:NAME`` — the latest value of each case or event attribute the signals
  carry (WorkflowSignal ``attributes``), up to ``max_attributes`` names.

The mixture's weights are learned per last task (Bayesian mixture with
forgetting), so it trusts, in each context, the views that predicted best there
lately; a prediction blends the ``blend_top`` heaviest experts of its context.
Every prediction is kept until the run's next start (or end) resolves it: it is
scored first (`NextStepMetrics`), then the weights and the counts learn from it.
Memory per workflow is bounded: counts live in one `FollowerCounts` table of at
most ``max_contexts`` contexts, with counts halved as they grow (forgetting); a
run's visited set is a bit mask over task ids given on first sight, at most
`MAX_TASK_BITS` of them (later new tasks share one bit).

`publish_metrics` turns the running metrics into a NextStepMetrics record
(``schemas/next_step_metrics.avsc``, topic ``workflow.metrics``) once per
``metrics_interval_ms`` of event time; `render_metrics` is its log line.

>>> from fingerprint.traces import MarkovProcess
>>> process = MarkovProcess({("<start>",): {"a": 1.0}, ("a",): {"b": 0.8, "c": 0.2},
...                          ("b",): {"<end>": 1.0}, ("c",): {"<end>": 1.0}})
>>> predictor = NextStepPredictor("synthetic")
>>> emitted = [p for s in process.signals(300, seed=7) for p in predictor.predict_then_learn_one(s)]
>>> emitted[-1]["candidates"][0]["task"] in {"b", "<end>"}
True
>>> top, p = max(predictor.predict_proba_one(["a"]).items(), key=lambda kv: kv[1])
>>> top, round(p, 1)
('b', 0.8)
>>> 0.85 < predictor.metrics.top1 <= 1.0
True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from operator import itemgetter, mul
from typing import ClassVar

from fingerprint.signals import END, START, optional_attributes
from fingerprint.temporal import Fingerprint, Window
from prediction.context_experts import (
    ExpertMixture,
    FollowerCounts,
    base_scales,
    blend,
    log_loss,
)
from schemas.state import Versioned

#: The views every workflow has; attribute views (``attr:NAME``) are added as attributes appear.
BUILTIN_VIEWS = ("history", "visited", "gap", "elapsed", "calendar")
_MS_PER_HOUR = 3_600_000
#: Tasks of a workflow that get their own bit in the ``visited`` view (bounds its keys and the task table).
MAX_TASK_BITS = 4096
_MS_PER_DAY = 86_400_000


@dataclass
class NextStepMetrics:
    """Running prequential metrics of resolved predictions (next task, ``<end>`` included).

    Top-1 and top-k accuracy, mean log-loss (nats, probability floored at 1e-4),
    the multi-class Brier score, the expected calibration error
    (ECE, 10 equal-width bins of top-1 confidence), the first-order Markov
    baseline's top-1 at the same points and an exponentially weighted recent
    top-1 (about the last ``1 / recent_rate`` predictions) are counted here.
    """

    top_k: int = 3
    recent_rate: float = 0.01
    n: int = 0
    top1_hits: int = 0
    topk_hits: int = 0
    log_loss_sum: float = 0.0
    brier_sum: float = 0.0
    markov_hits: int = 0
    recent_top1: float = 0.0
    ece_bins: list = field(default_factory=lambda: [[0, 0.0, 0] for _ in range(10)])  # count, sum conf, hits

    def update(self, y: str, ranked: list[tuple[str, float]], p_y: float, sum_sq: float,
               markov_top: str | None) -> None:
        n = self.n = self.n + 1
        self.log_loss_sum += log_loss(p_y)
        self.brier_sum += sum_sq - 2.0 * p_y + 1.0
        self.markov_hits += markov_top == y
        hit = False
        if ranked:  # the top k, most probable first
            top, conf = ranked[0]
            if top == y:
                hit = True
                self.top1_hits += 1
                self.topk_hits += 1
            else:
                for t, _ in ranked:
                    if t == y:
                        self.topk_hits += 1
                        break
            b = self.ece_bins[min(int(conf * 10), 9)]
            b[0] += 1
            b[1] += conf
            b[2] += hit
        rate = max(self.recent_rate, 1.0 / n)  # a plain mean until there are 1 / rate predictions
        self.recent_top1 += rate * (hit - self.recent_top1)

    @property
    def top1(self) -> float:
        return self.top1_hits / self.n if self.n else 0.0

    @property
    def log_loss(self) -> float:
        return self.log_loss_sum / self.n if self.n else 0.0

    @property
    def topk(self) -> float:
        return self.topk_hits / self.n if self.n else 0.0

    @property
    def brier(self) -> float:
        return self.brier_sum / self.n if self.n else 0.0

    @property
    def ece(self) -> float:
        total = sum(b[0] for b in self.ece_bins)
        return sum(abs(b[2] - b[1]) for b in self.ece_bins if b[0]) / total if total else 0.0

    def to_dict(self) -> dict:
        n = self.n or 1
        return {"predictions": self.n, "top1": self.top1, f"top{self.top_k}": self.topk,
                "log_loss": self.log_loss, "brier": self.brier, "ece": self.ece,
                "markov_top1": self.markov_hits / n, "recent_top1": self.recent_top1}


@dataclass(slots=True)
class _Pending:
    """A prediction waiting for its run's next start or end."""

    last: str
    chains: list          # one chain of context keys per expert, as predicted
    entries: list         # their count entries at prediction time (None: unseen), updated in place since
    root: list | None     # the entries of () and (last,)
    first: list | None
    probs: dict[str, float]
    ranked: list[tuple[str, float]]


@dataclass(slots=True)
class _RunView:
    """What the predictor remembers of an open run beyond the fingerprint's prefix."""

    attributes: dict = field(default_factory=dict)  # latest value of each case / event attribute
    visited: int = 0  # the tasks the run has started, one bit per task id (`NextStepPredictor.task_bits`)
    pending: _Pending | None = None


@dataclass
class NextStepPredictor(Versioned):
    """Per-workflow next-step predictor: a `Fingerprint` plus a mixture of context experts.

    Parameters
    ----------
    workflow_id
        The workflow this state belongs to.
    order
        Longest context of the fingerprint's own sequence model (``liquid fingerprint show``).
    window
        Runs the fingerprint keeps.
    top_k
        Candidates per emitted prediction.
    history
        Longest task history the ``history`` expert conditions on.
    forgetting
        Discount of past losses in the mixture (about ``1 / (1 - forgetting)`` predictions count).
    max_contexts
        Bound on the counted contexts (memory per workflow).
    max_attributes
        Attribute names that get an expert; later new names are ignored.
    blend_top
        Experts blended into each prediction: the heaviest of its context (all are scored).
    metrics_interval_ms
        Event time between two `publish_metrics` records (None: never).

    Examples
    --------
    >>> from fingerprint.traces import run_signals
    >>> predictor = NextStepPredictor("w")
    >>> for i in range(30):
    ...     for s in run_signals("w", f"r{i}", [("a", 0, 5), ("b", 5, 9)], t0_ms=i * 100):
    ...         predictor.learn_one(s)
    >>> predictor.predict_one(["a"])
    'b'
    >>> out = predictor.predict_then_learn_one(run_signals("w", "live", [("a", 0, 5)], t0_ms=10**6)[0])
    >>> out[0]["candidates"][0]["task"], out[0]["prefix_length"]
    ('b', 1)
    """

    # 1 was the Markov + Hoeffding-tree blend: refused, not migrated; 2 held visited sets as frozensets
    STATE_VERSION: ClassVar[int] = 3
    MIGRATIONS: ClassVar[dict] = {2: lambda state: _visited_as_bits(state)}

    workflow_id: str
    order: int = 2
    window: Window = field(default_factory=Window)
    top_k: int = 3
    history: int = 4
    forgetting: float = 0.98
    max_contexts: int = 20_000
    max_attributes: int = 8
    blend_top: int = 3
    metrics_interval_ms: int | None = 60_000
    fingerprint: Fingerprint = None
    metrics: NextStepMetrics = None
    counts: FollowerCounts = None
    mixture: ExpertMixture = None
    views: list = field(default=None, init=False)  # expert names, in the order of the mixture's weights
    version: int = STATE_VERSION
    _runs: dict = field(default_factory=dict, repr=False)  # run id -> _RunView, open runs only
    _last_metrics_ms: int | None = field(default=None, repr=False)
    # task name -> its bit in a run's visited set: an int compares and hashes in one step where a
    # frozenset key is compared element by element on every lookup of the counts table
    task_bits: dict = field(default_factory=dict, repr=False)
    _seen_attributes: set = field(default_factory=set, repr=False)      # every attribute name met
    _attribute_views: list = field(default_factory=list, repr=False)   # (view, attribute name) of attr experts

    def __post_init__(self):
        if self.fingerprint is None:
            self.fingerprint = Fingerprint(self.workflow_id, window=self.window, order=self.order)
        elif self.fingerprint.workflow_id != self.workflow_id:
            raise ValueError("the fingerprint belongs to another workflow")
        if self.metrics is None:
            self.metrics = NextStepMetrics(top_k=self.top_k)
        if self.counts is None:
            self.counts = FollowerCounts(max_contexts=self.max_contexts)
        if self.mixture is None:
            self.mixture = ExpertMixture(forgetting=self.forgetting, top=self.blend_top)
        if self.views is None:
            self.views = list(BUILTIN_VIEWS)
        if self.history < 1:
            raise ValueError("history must be at least 1")

    # -- River's protocol -----------------------------------------------------------------------

    def learn_one(self, signal: dict) -> None:
        """Fold in a signal: resolve, score and learn the run's pending prediction, predict the next step."""
        self.predict_then_learn_one(signal)

    def predict_then_learn_one(self, signal: dict) -> list[dict]:
        """`learn_one`, returning the NextStepPrediction records to emit (one per task start, else none)."""
        obs = self.fingerprint.observe_one(signal)
        if obs is None:
            return []
        kind, run, task, ts_ms, ended = obs
        view = self._runs.get(run.run_id)
        if view is None:
            view = self._runs[run.run_id] = _RunView()
            if len(self._runs) > self.fingerprint.max_open_runs + 64:
                self._prune()
        attributes = signal.get("attributes")
        if attributes and (attributes := optional_attributes(attributes)):
            self._note_attributes(view, attributes)
        if kind != "start":
            if ended:
                self._close(run.run_id, view)
            return []
        if view.pending is not None:
            self._resolve(view.pending, task)
        bit = self.task_bits.get(task)
        if bit is None:
            bit = self._new_task_bit(task)
        view.visited |= bit
        started = run.started
        pending = self._predict(started[-1], self._chains(started, run.start_times, view))
        if not pending.probs:  # nothing resolved yet: the fingerprint's sequence model has seen this start
            pending.probs = self.fingerprint.sequences.predict_proba(started)
            pending.ranked = sorted(pending.probs.items(), key=itemgetter(1), reverse=True)[:self.top_k]
        if ended:  # a run closed by a start signal: nothing left to predict, but it did end here
            self._learn(pending, END)
            del self._runs[run.run_id]
            return []
        view.pending = pending
        return [self._record(run, ts_ms, pending.ranked)]

    def predict_proba_one(self, started: list[str], elapsed_ms: float = 0.0, gap_ms: float = 0.0,
                          attributes: dict | None = None, ts_ms: int = 0) -> dict[str, float]:
        """P(next | a run's prefix); empty for an empty prefix or a workflow with nothing learned.

        ``elapsed_ms`` is the time from the first start to the last, ``gap_ms``
        from the one before to the last, ``ts_ms`` the last start's event time,
        ``attributes`` the run's latest attribute values.
        """
        if not started:
            return {}
        n = len(started)
        times = [int(ts_ms - elapsed_ms)] * n
        times[-1] = int(ts_ms)
        if n > 1:
            times[-2] = int(ts_ms - gap_ms)
        view = _RunView(dict(attributes or {}), self._visited_bits(started))
        return self._predict(started[-1], self._chains(started, times, view)).probs

    def predict_one(self, started: list[str], elapsed_ms: float = 0.0, gap_ms: float = 0.0,
                    attributes: dict | None = None, ts_ms: int = 0) -> str | None:
        probs = self.predict_proba_one(started, elapsed_ms, gap_ms, attributes, ts_ms)
        return max(probs, key=probs.get) if probs else None

    # -- running metrics ------------------------------------------------------------------------

    def publish_metrics(self, ts_ms: int) -> dict | None:
        """A NextStepMetrics record (``schemas/next_step_metrics.avsc``) when one is due at event time ``ts_ms``.

        Due when ``metrics_interval_ms`` of event time has passed since the last
        one (the first is due once a prediction has been resolved); None otherwise.
        """
        if self.metrics_interval_ms is None or not self.metrics.n:
            return None
        if self._last_metrics_ms is not None and ts_ms - self._last_metrics_ms < self.metrics_interval_ms:
            return None
        self._last_metrics_ms = ts_ms
        return self.metrics_record(ts_ms)

    def metrics_record(self, ts_ms: int) -> dict:
        """The running metrics now, as a NextStepMetrics record."""
        m = self.metrics
        n = m.n or 1
        return {"workflow_id": self.workflow_id, "ts_ms": int(ts_ms), "predictions": m.n,
                "top1": m.top1, "top_k": m.top_k, "topk_accuracy": m.topk,
                "recent_top1": m.recent_top1, "log_loss": m.log_loss, "brier": m.brier, "ece": m.ece,
                "markov_top1": m.markov_hits / n, "expert_weights": self.expert_weights()}

    def expert_weights(self) -> dict[str, float]:
        """Each expert's weight over all contexts pooled (the global losses)."""
        k = len(self.views)
        return {self.views[i]: w for i, w in sorted(self.mixture.weights(None, k, top=k))}

    # -- internals ------------------------------------------------------------------------------

    def _new_task_bit(self, task: str) -> int:
        """The visited-set bit of a task met for the first time (bounded: see `MAX_TASK_BITS`)."""
        bits = self.task_bits
        if len(bits) >= MAX_TASK_BITS:  # beyond, new tasks share one bit: the visited view blurs them
            return 1 << MAX_TASK_BITS
        bit = bits[task] = 1 << len(bits)
        return bit

    def _visited_bits(self, started: list[str]) -> int:
        """The visited set of ``started`` as bits, without adding any task (-1: a task never seen)."""
        bits, mask = self.task_bits, 0
        for task in started:
            bit = bits.get(task)
            if bit is None:
                if len(bits) < MAX_TASK_BITS:
                    return -1
                bit = 1 << MAX_TASK_BITS  # the bit that tasks beyond the bound share
            mask |= bit
        return mask

    def _note_attributes(self, view: _RunView, attributes: dict) -> None:
        view.attributes.update(attributes)
        seen = self._seen_attributes
        if seen.issuperset(attributes):
            return
        for name in attributes:
            if name not in seen:
                seen.add(name)
                if len(self.views) < len(BUILTIN_VIEWS) + self.max_attributes:
                    self.views.append("attr:" + name)
                    self._attribute_views.append(("attr:" + name, name))

    def _chains(self, started: list[str], start_times: list[int], view: _RunView) -> list[list[tuple]]:
        """One chain of context keys per expert (in ``self.views`` order) for the prefix ``started``."""
        n = len(started)
        last = started[-1]
        prev = started[-2] if n > 1 else START
        history = [("history", *started[n - j:]) if j <= n else ("history", START, *started)
                   for j in range(2, min(self.history, n + 1) + 1)]
        at = start_times[-1]
        visited = view.visited
        gap = (at - start_times[-2] + 1).bit_length() if n > 1 else -1
        elapsed = (at - start_times[0] + 1).bit_length()
        # 1970-01-01 was a Thursday: +3 makes Monday 0
        calendar = (at // _MS_PER_DAY + 3) % 7 * 8 + at // _MS_PER_HOUR % 24 // 3
        # A view's one context holds the last two tasks: keyed on the last task alone it repeats what
        # (last,) already says, and costs a count, a score and a blend per start for no top-1 accuracy
        chains = [history,  # in BUILTIN_VIEWS order
                  [("visited", last, prev, visited)],
                  [("gap", last, prev, gap)],
                  [("elapsed", last, prev, elapsed)],
                  [("calendar", last, prev, calendar)]]
        attributes = view.attributes
        for key, name in self._attribute_views:
            chains.append([(key, last, prev, attributes.get(name))])
        return chains

    def _predict(self, last: str, chains: list[list[tuple]]) -> _Pending:
        """The mixture's prediction: every chain shares the base, so only its own followers are touched."""
        get = self.counts.table.get
        root, first = get(()), get((last,))
        entries = [list(map(get, chain)) for chain in chains]
        if root is None or not root[0]:
            return _Pending(last, chains, entries, root, first, {}, [])
        probs = {}
        on_base = blend(probs, entries, self.mixture.weights(last, len(chains)))
        a, b = base_scales(root, first)  # the shared base: one pass over () and one over (last,)
        get = probs.get
        scale = on_base * a
        for task, c in root[1].items():
            probs[task] = get(task, 0.0) + c * scale
        if b:
            scale = on_base * b
            for task, c in first[1].items():
                probs[task] = get(task, 0.0) + c * scale
        ranked = sorted(probs.items(), key=itemgetter(1), reverse=True)[:self.top_k]  # beats heapq for ~10 items
        return _Pending(last, chains, entries, root, first, probs, ranked)

    def _resolve(self, pending: _Pending, y: str) -> None:
        """Score a prediction against what happened (test), then learn from it (train)."""
        probs, first = pending.probs, pending.first
        markov_top = max(first[1], key=first[1].get) if first and first[1] else None
        p = list(probs.values())
        sum_sq = sum(map(mul, p, p))
        self.metrics.update(y, pending.ranked, probs.get(y, 0.0), sum_sq, markov_top)
        self._learn(pending, y)

    def _learn(self, pending: _Pending, y: str) -> None:
        root, first, last = pending.root, pending.first, pending.last
        if root is None or not root[0]:  # nothing to score the experts against yet
            self.counts.learn([[(), (last,)], *pending.chains], [[root, first], *pending.entries], y)
            return
        a, b = base_scales(root, first)  # each expert's loss on y, from the counts before they learn y
        p0 = a * root[1].get(y, 0) + (b * first[1].get(y, 0) if b else 0.0)
        losses = self.counts.learn([[(), (last,)], *pending.chains], [[root, first], *pending.entries], y, p0)
        self.mixture.update(last, losses[1:])  # the first chain is the shared base, not an expert

    def _close(self, run_id: str, view: _RunView) -> None:
        """The run ended: its pending prediction resolves to <end>, and the predictor forgets the run."""
        if view.pending is not None:
            self._resolve(view.pending, END)
        self._runs.pop(run_id, None)

    def _record(self, run, ts_ms: int, ranked: list[tuple[str, float]]) -> dict:
        last, at = run.started[-1], run.start_times[-1]
        delays = self.fingerprint.sequences.delays
        candidates = []
        for task, p in ranked:
            d = delays.get((last, task))  # kept only while it has a count (`SequenceModel._delay`)
            candidates.append({"task": task, "probability": p,
                               "expected_start_ts_ms": at + int(d.mean) if d is not None else None})
        return {"workflow_id": self.workflow_id, "run_id": run.run_id, "node_id": run.node_id,
                "after_task": last, "prefix_length": len(run.started), "ts_ms": ts_ms, "candidates": candidates}

    def _prune(self) -> None:
        open_runs = self.fingerprint.open_runs
        self._runs = {k: v for k, v in self._runs.items() if k in open_runs}


def _visited_as_bits(state: dict) -> dict:
    """Version 2 -> 3: ``visited`` sets (frozensets of task names) become bit masks over task ids."""
    bits: dict = {}

    def mask(tasks: frozenset) -> int:
        m = 0
        for task in sorted(tasks):
            if task not in bits:
                bits[task] = 1 << min(len(bits), MAX_TASK_BITS)
            m |= bits[task]
        return m

    def key(k: tuple) -> tuple:
        return (*k[:-1], mask(k[-1])) if k and k[0] == "visited" and isinstance(k[-1], frozenset) else k

    counts = state["counts"]
    counts.table = {key(k): entry for k, entry in counts.table.items()}
    for view in state.get("_runs", {}).values():
        view.visited = mask(view.visited)
        if view.pending is not None:
            view.pending.chains = [[key(k) for k in chain] for chain in view.pending.chains]
    state["task_bits"] = {task: bit for task, bit in bits.items() if bit < 1 << MAX_TASK_BITS}
    return state


def render_metrics(record: dict) -> str:
    """One log line of a NextStepMetrics record (what the flow prints at each interval).

    >>> print(render_metrics({"workflow_id": "w", "predictions": 10, "top1": 0.5, "top_k": 3,
    ...                       "topk_accuracy": 0.9, "recent_top1": 0.6, "log_loss": 1.2, "brier": 0.4,
    ...                       "ece": 0.05, "markov_top1": 0.4, "expert_weights": {"history": 0.7, "gap": 0.3}}))
    workflow w: 10 predictions, top-1 50.0% (recent 60.0%, Markov 40.0%), top-3 90.0%, log-loss 1.200, Brier 0.400, ECE 0.050; trusts history 0.70, gap 0.30
    """
    experts = sorted(record["expert_weights"].items(), key=itemgetter(1), reverse=True)[:3]
    return (f"workflow {record['workflow_id']}: {record['predictions']} predictions, top-1 {record['top1']:.1%} "
            f"(recent {record['recent_top1']:.1%}, Markov {record['markov_top1']:.1%}), "
            f"top-{record['top_k']} {record['topk_accuracy']:.1%}, log-loss {record['log_loss']:.3f}, "
            f"Brier {record['brier']:.3f}, ECE {record['ece']:.3f}; trusts "
            + ", ".join(f"{name} {w:.2f}" for name, w in experts))
