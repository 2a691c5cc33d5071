"""Which finish started which task: the timing evidence for a workflow's dependencies.

A workflow engine starts a task once its last dependency has finished, after a
dispatch delay (the engine noticing the finish, queueing, submitting). So every
start that is not a run's first has a *trigger*: a finish shortly before it. Other
tasks that happen to finish in that short window compete with the true trigger;
what separates them is consistency across the many starts of a window of runs:
the dependency is a candidate nearly every time its target starts, a coincidence
only now and then.

`attribute_handovers` turns that into numbers:

1. For each start, the *candidates* are the latest finish of each other task
   within the hand-over window before it (tasks judged concurrent with the
   starting task are skipped, so a fork whose branches a single worker ran one
   after the other does not read as a chain). The window's width is learned from
   the data: ``WINDOW_FACTOR`` times the 99th percentile of the gap between a
   start and the nearest finish before it. The nearest finish is never further
   than the trigger, so that gap's upper end is the engine's longest dispatch
   delay (read from below; the factor is the margin). A typical gap (the 90th
   percentile) is too short where many tasks finish close together: true
   triggers fall outside the window and a nearby coincidence explains the
   start alone. The top percent is left out so that a few starts nothing
   triggered do not stretch the window. A background candidate ("nothing triggered it": a run's first
   tasks, tasks started by a timer) is always present, with the likelihood of a
   start falling in the window by chance: window / run length, against 1 for a
   hand-over (a start is that much likelier right after its trigger).
2. Each start is explained by one candidate; the strength ``pi[x, y]`` of each
   source ``x`` for target ``y`` is the maximum-likelihood mixture weight, found
   by expectation-maximisation over all starts (Dempster, Laird and Rubin 1977).
   A coincidence that competes with a true trigger in a few starts loses its
   share to the trigger that explains the rest.

The result per ``(source, target)`` is the expected number of the target's starts
the source triggered (``handovers``) and its share of the target's starts
(``confidence``).

Examples
--------
>>> runs = [[("a", 0, 10), ("b", 12, 30), ("c", 31, 40)],
...         [("a", 0, 11), ("b", 11, 25), ("c", 27, 33)],
...         [("x", 0, 24), ("a", 0, 9), ("b", 10, 24), ("c", 25, 30)]]
>>> ev = attribute_handovers(runs)
>>> sorted((s, t) for (s, t), h in ev.handovers.items() if h >= 0.5)
[('a', 'b'), ('b', 'c')]
>>> round(ev.confidence("b", "c"), 2), round(ev.confidence("x", "c"), 2)
(1.0, 0.0)

References
----------
A. P. Dempster, N. M. Laird, D. B. Rubin. Maximum likelihood from incomplete data via the
EM algorithm. Journal of the Royal Statistical Society B 39(1), 1977.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from fingerprint.stats import quantile

#: The hand-over window is this many times the `WINDOW_QUANTILE` of start-to-nearest-finish gaps.
WINDOW_FACTOR = 1.1
#: Which quantile of those gaps stands for the engine's longest dispatch delay.
WINDOW_QUANTILE = 0.99
#: How far back one start's candidate search walks (bounds the cost of a start in a huge run).
MAX_LOOKBACK = 256
#: Background: the start was triggered by nothing in the window.
BACKGROUND = None

_EM_ROUNDS = 500
_EM_TOLERANCE = 1e-6


@dataclass
class HandoverEvidence:
    """Expected hand-overs per ``(source, target)`` task pair, and how many times each target started."""

    handovers: dict[tuple[str, str], float] = field(default_factory=dict)
    starts: Counter = field(default_factory=Counter)
    window_ms: float = 0.0

    def confidence(self, source: str, target: str) -> float:
        """Share of ``target``'s starts that ``source``'s finish explains."""
        n = self.starts.get(target, 0)
        return self.handovers.get((source, target), 0.0) / n if n else 0.0


def attribute_handovers(runs: Iterable[Sequence[tuple[str, int, int]]],
                        concurrent: frozenset | set = frozenset(),
                        targets: set[str] | None = None) -> HandoverEvidence:
    """Hand-over evidence from runs given as ``(task, start_ms, finish_ms)`` executions.

    ``concurrent`` holds ``frozenset((a, b))`` pairs never to take as triggers of
    each other; with ``targets`` only starts of those tasks are explained.
    """
    indexed = [_FinishIndex(run) for run in runs]
    gaps = [gap for index in indexed for gap in index.anchor_gaps(concurrent, targets)]
    window = WINDOW_FACTOR * quantile(sorted(gaps), WINDOW_QUANTILE) if gaps else 0.0
    observations: Counter = Counter()
    for index in indexed:
        for task, candidates in index.candidates(window, concurrent, targets):
            observations[(task, candidates)] += 1
    evidence = HandoverEvidence(window_ms=window)
    for (task, _), n in observations.items():
        evidence.starts[task] += n
    spans = sorted(index.span for index in indexed)
    chance = min(window / spans[len(spans) // 2], 1.0) if spans and spans[len(spans) // 2] > 0 else 0.0
    evidence.handovers = _mixture_weights(observations, evidence.starts, chance)
    return evidence


class _FinishIndex:
    """One run's executions with its finishes sorted, to find what finished just before a start."""

    def __init__(self, run: Sequence[tuple[str, int, int]]):
        self.run = run
        order = sorted(range(len(run)), key=lambda i: run[i][2])
        self.finish_times = [run[i][2] for i in order]
        self.finish_tasks = [run[i][0] for i in order]
        self.span = max((f for _, _, f in run), default=0) - min((s for _, s, _ in run), default=0)

    def _eligible(self, task: str, start: int, concurrent):
        """(finish, task) of eligible earlier finishes, latest first, at most MAX_LOOKBACK looked at."""
        tasks, times = self.finish_tasks, self.finish_times
        i = bisect_right(times, start) - 1
        stop = max(i - MAX_LOOKBACK, -1)
        while i > stop:
            other = tasks[i]
            if other != task and (not concurrent or frozenset((other, task)) not in concurrent):
                yield times[i], other
            i -= 1

    def anchor_gaps(self, concurrent, targets):
        for task, start, _ in self.run:
            if targets is None or task in targets:
                for finish, _ in self._eligible(task, start, concurrent):
                    yield start - finish
                    break

    def candidates(self, window: float, concurrent, targets):
        """Per start: (task, sorted tuple of candidate trigger tasks)."""
        for task, start, _ in self.run:
            if targets is not None and task not in targets:
                continue
            found: set[str] = set()
            low = None
            for finish, other in self._eligible(task, start, concurrent):
                if low is None:  # the nearest eligible finish anchors the window
                    low = min(start, finish + window) - window
                if finish < low:
                    break
                found.add(other)
            yield task, tuple(sorted(found))


def _mixture_weights(observations: Counter, starts: Counter, chance: float) -> dict[tuple[str, str], float]:
    """EM for ``pi[source, target]``; returns the expected hand-overs ``pi * starts[target]`` of real sources.

    ``chance`` is the background's likelihood relative to a candidate's. The
    weights of one target depend only on that target's starts, so each target's
    mixture is fitted on its own and stops as soon as it has converged.
    """
    by_target: dict[str, list[tuple[tuple[str, ...], int]]] = {}
    for (task, candidates), n in observations.items():
        by_target.setdefault(task, []).append((candidates, n))
    out: dict[tuple[str, str], float] = {}
    for task, rows in by_target.items():
        for source, h in _fit_target(rows, starts[task], chance).items():
            out[(source, task)] = h
    return out


def _fit_target(rows: list[tuple[tuple[str, ...], int]], n_starts: int, chance: float) -> dict[str, float]:
    """Expected hand-overs per source of one target's starts (``rows``: candidate tuple, how many starts)."""
    sources = sorted({c for candidates, _ in rows for c in candidates})
    if not sources:
        return {}
    at = {c: i for i, c in enumerate(sources)}
    background = len(sources)
    pi = [1.0] * (len(sources) + 1)
    rows_ix = [([at[c] for c in candidates], n) for candidates, n in rows]
    for _ in range(_EM_ROUNDS):
        mass = [0.0] * len(pi)
        for ix, n in rows_ix:
            if not ix:
                mass[background] += n
                continue
            total = pi[background] * chance + sum(pi[i] for i in ix)
            if total <= 0.0:  # every candidate already ruled out: the start stays unexplained
                mass[background] += n
                continue
            share = n / total
            for i in ix:
                mass[i] += pi[i] * share
            mass[background] += pi[background] * chance * share
        new = [m / n_starts for m in mass]
        change = max(abs(a - b) for a, b in zip(new, pi))
        pi = new
        if change < _EM_TOLERANCE:
            break
    return {c: pi[i] * n_starts for c, i in at.items() if pi[i] > 0.0}
