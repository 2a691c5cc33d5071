"""Offline, prequential evaluation of next-step prediction on a replayed signal stream.

`evaluate_next_step` pushes signals, in the order given (a log replayed in
global timestamp order), through the same `NextStepPredictor.predict_then_learn_one` the flow
calls, one predictor per workflow as the flow keys them, and scores what it
emitted:

* **accuracy / top3_accuracy** — for every event (task start) of a case after
  its first, whether the task was the top-1 (among the top-3) candidate of the
  prediction emitted at the case's previous event; that prediction was made
  before the event was learned from. ``predictions`` counts these events; an
  event for which nothing was emitted counts as a miss.
* **end_accuracy** — at every prediction point of a case that closed (after
  each of its events, the last included), whether "the case ends next"
  (``<end>`` ranked first) was right: the share of points where the predicted
  and true answers to "does the case end now?" agree. ``end_precision`` and
  ``end_recall`` are over the points where ``<end>`` was predicted / was true.
* **baseline_*** — the same figures for a first-order Markov baseline
  (`MostFrequentNext`: the most frequent next activity after the last one),
  updated in the same loop at the same points, so both see the same information.
* **halves** (with ``split_at``) — predictions, accuracy and baseline accuracy
  of the events scored before and after the ``split_at``-th signal, in the same
  single pass: whether a gain holds on both parts of a log.

>>> from fingerprint.traces import MarkovProcess
>>> process = MarkovProcess({  # what follows "x" depends on the task before it
...     ("<start>",): {"a": 0.5, "c": 0.5}, ("a",): {"x": 1.0}, ("c",): {"x": 1.0},
...     ("a", "x"): {"b": 1.0}, ("c", "x"): {"d": 1.0}, ("b",): {"<end>": 1.0}, ("d",): {"<end>": 1.0}})
>>> report = evaluate_next_step(process.signals(400, seed=3))
>>> report["predictions"]  # 400 runs of three tasks: two events after each run's first
800
>>> report["accuracy"] > 0.95, 0.7 < report["baseline_accuracy"] < 0.8  # the baseline is blind after "x"
(True, True)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from fingerprint.signals import END, STARTED
from prediction.nextstep import NextStepPredictor


class MostFrequentNext:
    """First-order Markov baseline: rank next activities by how often they followed the last one.

    Ties go to the follower seen first.

    >>> b = MostFrequentNext()
    >>> for last, nxt in [("a", "b"), ("a", "c"), ("a", "c")]:
    ...     b.learn_one(last, nxt)
    >>> b.rank("a"), b.rank("z")
    (['c', 'b'], [])
    """

    def __init__(self):
        self.counts: dict[str, dict[str, int]] = {}

    def learn_one(self, last: str, nxt: str) -> None:
        followers = self.counts.setdefault(last, {})
        followers[nxt] = followers.get(nxt, 0) + 1

    def rank(self, last: str, k: int = 3) -> list[str]:
        followers = self.counts.get(last)
        if not followers:
            return []
        return sorted(followers, key=followers.get, reverse=True)[:k]  # sort is stable: first seen wins ties


class _Score:
    """Hits of one predictor (ours or the baseline) at the scored points."""

    def __init__(self):
        self.hit1 = self.hit3 = 0
        self.end_tp = self.end_fp = self.end_tn = self.end_fn = 0

    def event(self, ranked: list[str], task: str) -> None:
        if ranked:
            self.hit1 += ranked[0] == task
            self.hit3 += task in ranked[:3]
        self.end_point(ranked, ended=False)

    def end_point(self, ranked: list[str], ended: bool) -> None:
        says_end = bool(ranked) and ranked[0] == END
        if ended:
            self.end_tp += says_end
            self.end_fn += not says_end
        else:
            self.end_fp += says_end
            self.end_tn += not says_end

    def figures(self, n: int, prefix: str = "") -> dict:
        points = self.end_tp + self.end_fp + self.end_tn + self.end_fn
        return {f"{prefix}accuracy": self.hit1 / n if n else 0.0,
                f"{prefix}top3_accuracy": self.hit3 / n if n else 0.0,
                f"{prefix}end_accuracy": (self.end_tp + self.end_tn) / points if points else 0.0,
                f"{prefix}end_precision": self.end_tp / (self.end_tp + self.end_fp) if self.end_tp + self.end_fp else 0.0,
                f"{prefix}end_recall": self.end_tp / (self.end_tp + self.end_fn) if self.end_tp + self.end_fn else 0.0}


def evaluate_next_step(signals: Iterable[dict], *,
                       make_predictor: Callable[[str], NextStepPredictor] = NextStepPredictor,
                       progress: Callable[[int, float], None] | None = None,
                       progress_every: int = 100_000, split_at: int | None = None) -> dict:
    """Prequential next-step figures of ``signals`` (see the module docstring for each key).

    ``make_predictor(workflow_id)`` builds each workflow's predictor;
    ``progress(signals_done, seconds)`` is called every ``progress_every`` signals;
    ``split_at`` (a signal count) adds ``halves``.
    """
    predictors: dict[str, NextStepPredictor] = {}
    baselines: dict[str, MostFrequentNext] = {}
    ours, base = _Score(), _Score()
    halves = [[0, 0, 0], [0, 0, 0]]  # predictions, our top-1 hits, baseline top-1 hits
    # (workflow, run) -> (our ranking, baseline ranking, last task), as emitted at the run's last event
    waiting: dict[tuple[str, str], tuple[list[str], list[str], str]] = {}
    n_signals = events = predictions = cases = 0
    t0 = time.perf_counter()
    for signal in signals:
        n_signals += 1
        if progress is not None and n_signals % progress_every == 0:
            progress(n_signals, time.perf_counter() - t0)
        wf = signal.get("workflow_id") if isinstance(signal, dict) else None
        if not isinstance(wf, str):
            continue
        predictor = predictors.get(wf)
        if predictor is None:
            predictor = predictors[wf] = make_predictor(wf)
            baselines[wf] = MostFrequentNext()
        fingerprint = predictor.fingerprint
        accepted_before = fingerprint.accepted
        records = predictor.predict_then_learn_one(signal)
        if fingerprint.accepted == accepted_before:
            continue  # dropped as a bad signal: not an event of any case
        key = (wf, signal["run_id"])
        baseline = baselines[wf]
        if signal["state"] == STARTED:
            events += 1
            task = signal["task"]
            before = waiting.pop(key, None)
            if before is not None:
                ours_ranked, base_ranked, last = before
                predictions += 1
                ours.event(ours_ranked, task)
                base.event(base_ranked, task)
                half = halves[split_at is not None and n_signals > split_at]
                half[0] += 1
                half[1] += bool(ours_ranked) and ours_ranked[0] == task
                half[2] += bool(base_ranked) and base_ranked[0] == task
                baseline.learn_one(last, task)  # after scoring: test, then train
            ranked = [c["task"] for c in records[0]["candidates"]] if records else []
            waiting[key] = (ranked, baseline.rank(task), task)
        if signal.get("run_ended") is True:
            cases += 1
            before = waiting.pop(key, None)
            if before is not None:
                ours_ranked, base_ranked, last = before
                ours.end_point(ours_ranked, ended=True)
                base.end_point(base_ranked, ended=True)
                baseline.learn_one(last, END)
    seconds = time.perf_counter() - t0
    report = {"predictions": predictions, **ours.figures(predictions), **base.figures(predictions, "baseline_"),
              "events": events, "cases": cases, "signals": n_signals, "workflows": len(predictors),
              "seconds": seconds, "signals_per_s": n_signals / seconds if seconds > 0 else 0.0}
    # calibration of everything the predictor resolved (next task or <end>), pooled over workflows
    resolved = sum(p.metrics.n for p in predictors.values())
    if resolved:
        report["log_loss"] = sum(p.metrics.log_loss_sum for p in predictors.values()) / resolved
        report["brier"] = sum(p.metrics.brier * p.metrics.n for p in predictors.values()) / resolved
        report["ece"] = _pooled_ece(predictors.values())
    report["issues"] = _summed(p.fingerprint.issues for p in predictors.values())
    if split_at is not None:
        report["halves"] = [{"predictions": n, "accuracy": hits / n if n else 0.0,
                             "baseline_accuracy": base_hits / n if n else 0.0} for n, hits, base_hits in halves]
    return report


def _pooled_ece(predictors) -> float:
    bins = [[0, 0.0, 0] for _ in range(10)]
    for p in predictors:
        for mine, theirs in zip(bins, p.metrics.ece_bins):
            for i in range(3):
                mine[i] += theirs[i]
    total = sum(b[0] for b in bins)
    return sum(abs(b[2] - b[1]) for b in bins if b[0]) / total if total else 0.0


def _summed(dicts) -> dict:
    out: dict[str, int] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return out
