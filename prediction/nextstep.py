"""Next-step prediction for live workflow runs: which task starts next (or the run ends), and when.

`NextStepPredictor` is the per-workflow state the flow keys by workflow id.
``learn_one(signal)`` folds a WorkflowSignal into its `Fingerprint` and, on
every start, returns one NextStepPrediction record (``schemas/next_step_prediction.avsc``)
for that run: the top-k candidates with probabilities, ``<end>`` included, and
expected start times (last start + mean inter-start delay of that transition).

Two models are blended:

* the fingerprint's variable-order Markov model of start order (counts with
  Witten-Bell backoff, following the rolling window exactly);
* an online River classifier on features of the prefix (last two tasks,
  prefix length, elapsed time, time since the previous start), which can
  pick up what counts of task names cannot, such as branches that depend on
  how long the run has taken.

Each prediction is kept until the run's next start (or end) resolves it; then it
is scored (test), and only then does the River model learn from it (train). The
blend weights are a Bayesian mixture with forgetting: each model's weight is
``exp(-n * L)`` with ``L`` its exponentially weighted mean log-loss over about
the last ``n = 1 / (1 - forgetting)`` resolved predictions, so the model that has
lately predicted better dominates.

Cost: the flow's target is 20,000 signals/s per worker including Kafka and
decode, which leaves the predictor ~25 µs per signal. The Markov counts learn
from every start; the River model learns from every resolved prediction for
its first ``river_warmup`` examples, then from one in ``river_every`` (a
Hoeffding tree needs hundreds of examples per split anyway, and learning is its
dearest step, ~30 µs). While its blend weight is below 0.1%, it is asked for
only one prediction in ``probe_every``, enough to notice when it becomes good.
Measured with ``bench/fingerprint_offline.py`` on this 2-core machine: ~19 µs
per signal on average (~52,000 signals/s), of which the fingerprint is ~4.5 µs.

>>> from fingerprint.traces import MarkovProcess
>>> process = MarkovProcess({("<start>",): {"a": 1.0}, ("a",): {"b": 0.8, "c": 0.2},
...                          ("b",): {"<end>": 1.0}, ("c",): {"<end>": 1.0}})
>>> predictor = NextStepPredictor("synthetic")
>>> emitted = [p for s in process.signals(300, seed=7) for p in predictor.learn_one(s)]
>>> emitted[-1]["candidates"][0]["task"] in {"b", "<end>"}
True
>>> top, p = max(predictor.predict_proba_one(["a"]).items(), key=lambda kv: kv[1])
>>> top, round(p, 1)
('b', 0.8)
>>> 0.85 < predictor.metrics.top1.get() <= 1.0
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from operator import itemgetter

from river import metrics as river_metrics
from river import tree
from river.tree.nodes.branch import DTBranch

from fingerprint.signals import END, START
from fingerprint.temporal import Fingerprint, Window

#: Version of the predictor's state layout (Bytewax snapshots pickle it).
FORMAT_VERSION = 1
#: Probability floor for log-loss, so one confident miss costs at most ~9.2 nats.
_P_FLOOR = 1e-4


class PrefixTree(tree.HoeffdingTreeClassifier):
    """River's Hoeffding tree with majority-class leaves, read without a defensive copy.

    The stock ``predict_proba_one`` deep-copies the leaf's class counts before
    normalising them (~10 µs); the counts are only read here, so this
    normalises them in place of a copy. Learning is River's own.

    >>> model = PrefixTree()
    >>> for _ in range(3):
    ...     model.learn_one({"t1": "a"}, "b")
    >>> model.predict_proba_one({"t1": "a"})
    {'b': 1.0}
    """

    def __init__(self, grace_period: int = 100, max_depth: int = 6, delta: float = 1e-5, tau: float = 0.25,
                 max_size: float = 2.0, memory_estimate_period: int = 20_000, **kwargs):
        # A larger tie threshold than River's 0.05: prefix features are redundant (last task,
        # prefix length and the task before often say the same thing), and with tau=0.05 a leaf
        # waits for ~10,000 examples before breaking such a tie, i.e. it never splits.
        # max_size (MiB), checked every 20,000 examples rather than River's 1,000,000: this is
        # per-workflow state that Bytewax snapshots, so it must stay small.
        super().__init__(grace_period=grace_period, max_depth=max_depth, delta=delta, tau=tau,
                         leaf_prediction="mc", max_size=max_size,
                         memory_estimate_period=memory_estimate_period, **kwargs)

    def predict_proba_one(self, x: dict) -> dict:
        node = self._root
        if node is None:
            return {}
        if isinstance(node, DTBranch):
            node = node.traverse(x, until_leaf=True)
        stats = node.stats
        total = sum(stats.values())
        return {c: w / total for c, w in stats.items()} if total > 0 else {}


def default_river_model() -> PrefixTree:
    """The River model the predictor blends in: ~5 µs to predict, ~30 µs to learn here.

    Naive-Bayes leaves (River's default) are better calibrated early but 3-4×
    slower to query, ``MultinomialNB`` costs ~95 µs per prediction over a dozen
    classes and ``SoftmaxRegression`` ~25 µs predict + 60 µs learn: each would
    break the flow's per-signal budget.
    """
    return PrefixTree()


@dataclass
class NextStepMetrics:
    """Running prequential metrics of resolved predictions (next task, ``<end>`` included).

    ``top1`` is a `river.metrics.Accuracy`, ``log_loss`` a `river.metrics.CrossEntropy`;
    top-k accuracy, the multi-class Brier score and the expected calibration
    error (ECE, 10 equal-width bins of top-1 confidence) are counted here.
    """

    top_k: int = 3
    top1: river_metrics.Accuracy = field(default_factory=river_metrics.Accuracy)
    log_loss: river_metrics.CrossEntropy = field(default_factory=river_metrics.CrossEntropy)
    n: int = 0
    topk_hits: int = 0
    brier_sum: float = 0.0
    markov_hits: int = 0
    river_hits: int = 0
    river_n: int = 0  # predictions the River model was asked for (see ``probe_every``)
    ece_bins: list = field(default_factory=lambda: [[0, 0.0, 0] for _ in range(10)])  # count, sum conf, hits

    def update(self, y: str, ranked: list[tuple[str, float]], p_y: float, sum_sq: float,
               markov_top: str | None, river_top: str | None) -> None:
        top = ranked[0][0] if ranked else None
        self.top1.update(y, top)
        self.log_loss.update(y, {y: max(p_y, _P_FLOOR)})
        self.n += 1
        if any(t == y for t, _ in ranked[:self.top_k]):
            self.topk_hits += 1
        self.brier_sum += sum_sq - 2.0 * p_y + 1.0
        self.markov_hits += markov_top == y
        if river_top is not None:
            self.river_n += 1
            self.river_hits += river_top == y
        if ranked:
            conf = ranked[0][1]
            b = self.ece_bins[min(int(conf * 10), 9)]
            b[0] += 1
            b[1] += conf
            b[2] += top == y

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
        return {"predictions": self.n, "top1": self.top1.get(), f"top{self.top_k}": self.topk,
                "log_loss": self.log_loss.get(), "brier": self.brier, "ece": self.ece,
                "markov_top1": self.markov_hits / n,
                "river_top1": self.river_hits / self.river_n if self.river_n else 0.0}


@dataclass(slots=True)
class _Pending:
    """A prediction waiting for its run's next start or end."""

    probs: dict[str, float]
    markov: dict[str, float]
    river: dict[str, float]
    features: dict
    ranked: list[tuple[str, float]]
    sum_sq: float


@dataclass
class NextStepPredictor:
    """Per-workflow next-step predictor: a `Fingerprint` plus an online River model, blended."""

    workflow_id: str
    order: int = 2
    window: Window = field(default_factory=Window)
    top_k: int = 3
    river_every: int = 4
    river_warmup: int = 2000
    forgetting: float = 0.98
    probe_every: int = 8
    river_model: object = field(default_factory=default_river_model)
    fingerprint: Fingerprint = None
    metrics: NextStepMetrics = None
    version: int = FORMAT_VERSION
    _pending: dict = field(default_factory=dict, repr=False)
    # mean log-loss (exponentially weighted) of the Markov and the River model; River starts as
    # bad as the probability floor, so an untrained model has no weight
    _loss: list = field(default_factory=lambda: [0.0, -math.log(_P_FLOOR)], repr=False)
    _predicted: int = 0
    _resolved: int = 0
    _river_seen: int = 0

    def __post_init__(self):
        if self.fingerprint is None:
            self.fingerprint = Fingerprint(self.workflow_id, window=self.window, order=self.order)
        elif self.fingerprint.workflow_id != self.workflow_id:
            raise ValueError("the fingerprint belongs to another workflow")
        if self.metrics is None:
            self.metrics = NextStepMetrics(top_k=self.top_k)
        if self.river_every < 1 or self.probe_every < 1:
            raise ValueError("river_every and probe_every must be at least 1")
        if not 0.0 < self.forgetting < 1.0:
            raise ValueError("forgetting must be in (0, 1)")

    # -- the streaming protocol ---------------------------------------------------------------

    def learn_one(self, signal: dict) -> list[dict]:
        """Fold in a signal; returns the NextStepPrediction records to emit (one per start, else none)."""
        obs = self.fingerprint.learn_one(signal)
        if obs is None:
            return []
        run = obs.run
        if obs.kind == "start":
            pending = self._pending.pop(run.run_id, None)
            if pending is not None:
                self._resolve(pending, obs.task)
            if obs.ended:  # a run closed by a start signal: nothing left to predict
                return []
            started = run.started
            pending = self._predict(started, _features(started, run.start_times, run.first_ms), probe=True)
            self._pending[run.run_id] = pending
            if len(self._pending) > self.fingerprint.max_open_runs + 64:
                self._prune()
            last, at = started[-1], run.start_times[-1]
            delays = self.fingerprint.sequences.delays
            candidates = []
            for task, p in pending.ranked:
                d = delays.get((last, task))
                candidates.append({"task": task, "probability": p,
                                   "expected_start_ts_ms": at + int(d.mean) if d is not None else None})
            return [{"workflow_id": self.workflow_id, "run_id": run.run_id, "node_id": run.node_id,
                     "after_task": last, "prefix_length": len(started), "ts_ms": obs.ts_ms,
                     "candidates": candidates}]
        if obs.ended:
            pending = self._pending.pop(run.run_id, None)
            if pending is not None:
                self._resolve(pending, END)
        return []

    def predict_proba_one(self, started: list[str], elapsed_ms: float = 0.0, gap_ms: float = 0.0) -> dict[str, float]:
        """P(next | tasks started so far) for any prefix; empty for a workflow with nothing learned."""
        n = len(started)
        times = [0] * n  # only the last two start times and the first matter to the features
        if n:
            times[-1] = int(elapsed_ms)
        if n > 1:
            times[-2] = int(elapsed_ms - gap_ms)
        return self._predict(started, _features(started, times, 0), probe=False).probs

    def predict_then_learn_one(self, signal: dict) -> list[dict]:
        """Fold in a signal; the NextStepPrediction records to emit (interim name, see issue 14)."""
        return self.learn_one(signal)

    def predict_one(self, started: list[str], elapsed_ms: float = 0.0, gap_ms: float = 0.0) -> str | None:
        probs = self.predict_proba_one(started, elapsed_ms, gap_ms)
        return max(probs, key=probs.get) if probs else None

    @property
    def weights(self) -> tuple[float, float]:
        """Current blend weights (Markov, River)."""
        lm, lr = self._loss
        n = 1.0 / (1.0 - self.forgetting)
        wr = 1.0 / (1.0 + math.exp(min(n * (lr - lm), 700.0)))
        return 1.0 - wr, wr

    # -- internals ---------------------------------------------------------------------------

    def _predict(self, started: list[str], features: dict, probe: bool) -> _Pending:
        """The blended distribution; ``probe`` counts towards asking a near-weightless River model."""
        markov = self.fingerprint.sequences.predict_proba(started)
        river = {}
        if self._river_seen:
            wm, wr = self.weights
            if probe:
                self._predicted += 1
            if wr > 1e-3 or not probe or self._predicted % self.probe_every == 0:
                river = self.river_model.predict_proba_one(features)
        if river:
            probs = {k: wm * v for k, v in markov.items()}
            for k, v in river.items():
                probs[k] = probs.get(k, 0.0) + wr * v
        else:
            probs = markov
        ranked = sorted(probs.items(), key=itemgetter(1), reverse=True)[:self.top_k]  # beats heapq for ~10 items
        sum_sq = sum(v * v for v in probs.values())
        return _Pending(probs, markov, river, features, ranked, sum_sq)

    def _resolve(self, pending: _Pending, y: str) -> None:
        probs, markov, river = pending.probs, pending.markov, pending.river
        markov_top = max(markov, key=markov.get) if markov else None
        river_top = max(river, key=river.get) if river else None
        self.metrics.update(y, pending.ranked, probs.get(y, 0.0), pending.sum_sq, markov_top, river_top)
        rate, loss = 1.0 - self.forgetting, self._loss
        loss[0] += rate * (-math.log(max(markov.get(y, 0.0), _P_FLOOR)) - loss[0])
        if river:  # a mean, not a sum: River is scored only when it was asked
            loss[1] += rate * (-math.log(max(river.get(y, 0.0), _P_FLOOR)) - loss[1])
        self._resolved += 1
        if self._river_seen < self.river_warmup or self._resolved % self.river_every == 0:
            self.river_model.learn_one(pending.features, y)
            self._river_seen += 1

    def _prune(self) -> None:
        open_runs = self.fingerprint.open_runs
        self._pending = {k: v for k, v in self._pending.items() if k in open_runs}


def _features(started: list[str], start_times: list[int], first_ms: int) -> dict:
    """What the River model sees of a prefix (times in seconds; trees do not care about scale)."""
    n = len(started)
    if not n:
        return {"t1": START, "t2": START, "n": 0, "elapsed_s": 0.0, "gap_s": 0.0}
    last = start_times[-1]
    return {"t1": started[-1], "t2": started[-2] if n > 1 else START, "n": n,
            "elapsed_s": (last - first_ms) / 1000.0,
            "gap_s": (last - start_times[-2]) / 1000.0 if n > 1 else 0.0}
