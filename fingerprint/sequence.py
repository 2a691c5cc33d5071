"""The probabilistic model of execution sequences: which task starts next, and after how long.

A variable-order Markov model over the order in which a run's tasks start,
with the pseudo-tasks ``<start>`` (before the first task) and ``<end>`` (the run
closes). Counts are kept for every context of length 0..``order``; a prediction
blends them with Witten-Bell interpolation, which trusts a long context in
proportion to how often it was seen relative to how many different followers it
had, and otherwise backs off to shorter ones. Inter-start delays are kept per
(last task, next task) pair.

Every count can be subtracted again, so the model follows the fingerprint's
rolling window exactly: a run adds its transitions as they happen and removes
them when it ages out.

>>> model = SequenceModel(order=2)
>>> for run in (["a", "b", "d"], ["a", "c", "d"], ["a", "b", "d"], ["a", "b", "d"]):
...     model.learn_run(run, [0, 10, 20], end_ms=30)
>>> probs = model.predict_proba(["a"])  # seen 3:1; Witten-Bell keeps some mass for the unseen
>>> round(probs["b"], 2), round(probs["c"], 2), round(sum(probs.values()), 6)
(0.69, 0.23, 1.0)
>>> max(model.predict_proba(["a", "b", "d"]), key=model.predict_proba(["a", "b", "d"]).get)
'<end>'
>>> model.delay("a", "b").mean
10.0
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fingerprint.signals import END, START
from fingerprint.stats import RunningStats


@dataclass
class SequenceModel:
    """Transition counts conditioned on the last ``order`` tasks, with backoff and forgetting."""

    order: int = 2
    counts: dict[tuple[str, ...], dict[str, int]] = field(default_factory=dict)
    totals: dict[tuple[str, ...], int] = field(default_factory=dict)
    delays: dict[tuple[str, str], RunningStats] = field(default_factory=dict)

    def __post_init__(self):
        if self.order < 1:
            raise ValueError("order must be at least 1")

    # -- learning and forgetting ------------------------------------------------------------

    def _tail(self, prefix: list[str], upto: int) -> tuple[str, ...]:
        """The longest context ending at ``prefix[:upto]``: its last ``order`` tasks, or all after ``<start>``."""
        return tuple(prefix[upto - self.order:upto]) if upto >= self.order else (START, *prefix[:upto])

    def _contexts(self, prefix: list[str], upto: int) -> list[tuple[str, ...]]:
        """Contexts of lengths 0..order ending at ``prefix[:upto]``, shortest first."""
        tail = self._tail(prefix, upto)
        return [tail[j:] for j in range(len(tail), -1, -1)]  # tail[len(tail):] is ()

    def _bump(self, tail: tuple[str, ...], nxt: str, by: int) -> None:
        """Count ``nxt`` ``by`` more times after every suffix of ``tail``, shortest first (``()`` included)."""
        counts, totals = self.counts, self.totals
        for j in range(len(tail), -1, -1):
            ctx = tail[j:]
            followers = counts.get(ctx)
            if followers is None:
                if by > 0:
                    counts[ctx] = {nxt: by}
                    totals[ctx] = by
                continue
            n = followers.get(nxt, 0) + by
            if n > 0:
                followers[nxt] = n
            else:
                followers.pop(nxt, None)
            t = totals[ctx] + by
            if t > 0:
                totals[ctx] = t
            else:  # no follower left: drop the context so state shrinks with the window
                del totals[ctx], counts[ctx]

    def _delay(self, prev: str, nxt: str, delay_ms: float, by: int) -> None:
        key = (prev, nxt)
        stats = self.delays.get(key)
        if by > 0:
            if stats is None:
                stats = self.delays[key] = RunningStats()
            stats.add(delay_ms)
        elif stats is not None:  # a delay never added (or already gone) has nothing to remove
            stats.remove(delay_ms)
            if not stats.count:
                del self.delays[key]

    def learn_start(self, started: list[str], start_times: list[int]) -> None:
        """Learn the transition to the last task of ``started`` (call right after it starts)."""
        i = len(started) - 1
        nxt = started[i]
        counts, totals = self.counts, self.totals
        # `_bump(self._tail(started, i), nxt, 1)` unrolled: this runs on every start
        tail = self._tail(started, i)
        for j in range(len(tail), -1, -1):
            ctx = tail[j:]
            followers = counts.get(ctx)
            if followers is None:
                counts[ctx] = {nxt: 1}
                totals[ctx] = 1
            else:
                followers[nxt] = followers.get(nxt, 0) + 1
                totals[ctx] += 1
        if i:
            key = (started[i - 1], nxt)
            stats = self.delays.get(key)
            if stats is None:
                stats = self.delays[key] = RunningStats()
            stats.add(start_times[i] - start_times[i - 1])

    def learn_end(self, started: list[str], start_times: list[int], end_ms: int) -> None:
        """Learn that the run closed after ``started``."""
        self._bump(self._tail(started, len(started)), END, 1)
        if started:
            self._delay(started[-1], END, end_ms - start_times[-1], 1)

    def learn_run(self, started: list[str], start_times: list[int], end_ms: int | None) -> None:
        """Learn a whole run at once (``end_ms=None``: the run did not end cleanly)."""
        self._count_run(started, start_times, end_ms, 1)

    def forget_run(self, started: list[str], start_times: list[int], end_ms: int | None) -> None:
        """Undo `learn_run` for a run leaving the window."""
        self._count_run(started, start_times, end_ms, -1)

    def _count_run(self, started: list[str], start_times: list[int], end_ms: int | None, by: int) -> None:
        """Add (``by=1``) or remove (``by=-1``) every transition and delay of a run, in the order it made them."""
        tail, bump, delay = self._tail, self._bump, self._delay
        prev = None
        for i, nxt in enumerate(started):
            bump(tail(started, i), nxt, by)
            if i:
                delay(prev, nxt, start_times[i] - start_times[i - 1], by)
            prev = nxt
        if end_ms is not None:
            bump(tail(started, len(started)), END, by)
            if started:
                delay(prev, END, end_ms - start_times[-1], by)

    # -- prediction ------------------------------------------------------------------------

    def predict_proba(self, started: list[str]) -> dict[str, float]:
        """P(next task | prefix), including ``<end>``; empty when nothing was learned yet."""
        counts, totals = self.counts, self.totals
        base = counts.get(())
        if not base:
            return {}
        n0 = totals[()]
        probs = {s: c / n0 for s, c in base.items()}
        upto = len(started)
        for ctx in self._contexts(started, upto):
            if not ctx:
                continue
            followers = counts.get(ctx)
            if followers is None:
                break  # a longer context that contains an unseen one is unseen too
            n = totals[ctx]
            lam = n / (n + len(followers))  # Witten-Bell: trust grows with n, shrinks with diversity
            keep = 1.0 - lam
            for s in probs:
                probs[s] *= keep
            for s, c in followers.items():
                probs[s] += lam * c / n
        return probs

    def delay(self, prev: str, nxt: str) -> RunningStats | None:
        """Inter-start delay distribution (ms) from ``prev`` starting to ``nxt`` starting (or the run ending)."""
        return self.delays.get((prev, nxt))

    def merge(self, other: SequenceModel) -> None:
        for ctx, followers in other.counts.items():
            mine = self.counts.setdefault(ctx, {})
            for s, c in followers.items():
                mine[s] = mine.get(s, 0) + c
            self.totals[ctx] = self.totals.get(ctx, 0) + other.totals[ctx]
        for key, stats in other.delays.items():
            self.delays.setdefault(key, RunningStats()).merge(stats)
