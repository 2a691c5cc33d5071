"""The next-step predictor's experts: follower counts per context, Witten-Bell chains, and their mixture.

Each **expert** looks at a run's prefix through one view (the last few tasks,
the set of tasks already visited, the time since the previous task, a case
attribute, ...) and predicts the next task from what followed the same view
before. Its prediction is a *chain* of contexts that all extend the shared
first-order context ``(last task,)``, e.g. ``(gap, last, 3)`` then
``(gap, last, prev, 3)``; counts along the chain are blended with Witten-Bell
interpolation, so a context is trusted in proportion to how often it was seen
relative to how many different followers it had, and otherwise backs off to the
shorter one and finally to ``(last task,)`` and ``()``.

`ExpertMixture` blends the experts with a Bayesian mixture with forgetting,
kept **per last task**: each expert's weight in a context is
``exp(-L)`` with ``L`` its exponentially discounted log-loss on the predictions
resolved in that context, so the mixture learns which view to trust where
(after "Accepted" the time gap may decide, after "CRP" the tasks visited).

`FollowerCounts` bounds memory: a context whose total reaches ``max_total`` has
its counts halved (old evidence fades, as in adaptive PPM coders), and at most
``max_contexts`` contexts are kept, least recently updated dropped first.

References
----------
Witten, I. H., & Bell, T. C. (1991). The zero-frequency problem: estimating the
probabilities of novel events in adaptive text compression. IEEE Trans. Inf. Theory 37(4).

Herbster, M., & Warmuth, M. K. (1998). Tracking the best expert. Machine Learning 32(2).

>>> counts = FollowerCounts()
>>> for nxt in "bbc":
...     counts.add(("a",), nxt)
>>> counts.add((), "b")
>>> p = counts.base_proba("a")  # () says b for sure; ("a",) saw b twice, c once: trusted 3 / (3 + 2)
>>> round(p["b"], 3), round(p["c"], 3)
(0.8, 0.2)
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field

#: Probability floor for log-loss, so one confident miss costs at most ~9.2 nats.
P_FLOOR = 1e-4


@dataclass
class FollowerCounts:
    """Next-task counts per context key (a tuple), with count halving and an LRU bound on contexts.

    Parameters
    ----------
    max_contexts
        Contexts kept; the least recently updated one goes first.
    max_total
        A context whose total count reaches this has its counts halved (a
        follower seen once is then forgotten): recent evidence weighs more and
        counts stay small.

    >>> counts = FollowerCounts(max_contexts=2)
    >>> for key in [("a",), ("b",), ("c",)]:
    ...     counts.add(key, "x")
    >>> list(counts.table)
    [('b',), ('c',)]
    """

    max_contexts: int = 20_000
    max_total: int = 1024
    table: OrderedDict = field(default_factory=OrderedDict)  # key -> [total, {next: count}]

    def add(self, key: tuple, nxt: str) -> None:
        table = self.table
        entry = table.get(key)
        if entry is None:
            table[key] = [1, {nxt: 1}]
            if len(table) > self.max_contexts:
                table.popitem(last=False)
            return
        table.move_to_end(key)
        followers = entry[1]
        followers[nxt] = followers.get(nxt, 0) + 1
        entry[0] += 1
        if entry[0] >= self.max_total:
            halved = {k: c >> 1 for k, c in followers.items() if c > 1}
            entry[0], entry[1] = sum(halved.values()), halved

    def base_proba(self, last: str) -> dict[str, float]:
        """The shared back-off: ``()`` interpolated with ``(last,)``; empty before anything was learned."""
        entry = self.table.get(())
        if entry is None:
            return {}
        n0, f0 = entry
        probs = {k: c / n0 for k, c in f0.items()}
        return self.chain_proba([(last,)], probs)

    def chain_proba(self, chain: list[tuple], probs: dict[str, float]) -> dict[str, float]:
        """``probs`` refined along ``chain`` (shortest context first) by Witten-Bell interpolation."""
        table = self.table
        for key in chain:
            entry = table.get(key)
            if entry is None:
                break  # a longer context that extends an unseen one is unseen too
            n, followers = entry
            lam = n / (n + len(followers))
            keep = 1.0 - lam
            probs = {k: v * keep for k, v in probs.items()}
            scale = lam / n
            for k, c in followers.items():
                probs[k] = probs.get(k, 0.0) + c * scale
        return probs

    def chain_terms(self, chain: list[tuple]) -> tuple[float, list]:
        """The chain's distribution as ``beta * base + sum(coef * followers)``: ``(beta, [(coef, followers)])``.

        The mixture adds many chains over one shared base; this form lets it
        touch only each chain's own followers.
        """
        table = self.table
        beta, terms = 1.0, []
        for key in chain:
            entry = table.get(key)
            if entry is None:
                break
            n, followers = entry
            lam = n / (n + len(followers))
            keep = 1.0 - lam
            beta *= keep
            terms = [(coef * keep, f) for coef, f in terms]
            terms.append((lam / n, followers))
        return beta, terms

    def chain_proba_of(self, chain: list[tuple], p_base: float, nxt: str) -> float:
        """P(nxt) along ``chain`` given its base probability (cheaper than `chain_proba` for one task)."""
        table = self.table
        p = p_base
        for key in chain:
            entry = table.get(key)
            if entry is None:
                break
            n, followers = entry
            lam = n / (n + len(followers))
            p = (1.0 - lam) * p + lam * followers.get(nxt, 0) / n
        return p


@dataclass
class ExpertMixture:
    """Bayesian mixture of experts with forgetting, its losses kept per context (the last task).

    Parameters
    ----------
    forgetting
        Discount of past losses per resolved prediction in a context: about
        ``1 / (1 - forgetting)`` recent predictions decide the weights.

    >>> mix = ExpertMixture(forgetting=0.9)
    >>> for _ in range(20):
    ...     mix.update("a", [math.log(2), math.log(10)])  # expert 0 gave the truth 0.5, expert 1 gave 0.1
    >>> [round(w, 2) for w in mix.weights("a", 2)]
    [1.0, 0.0]
    >>> [round(w, 2) for w in mix.weights("never seen", 2)]  # an unseen context starts from the pooled losses
    [1.0, 0.0]
    >>> [round(w, 2) for w in mix.weights("a", 3)]  # an expert added later starts level with the best
    [0.5, 0.0, 0.5]
    """

    forgetting: float = 0.98
    global_losses: list = field(default_factory=list)
    context_losses: dict = field(default_factory=dict)  # last task -> discounted losses per expert

    def __post_init__(self):
        if not 0.0 < self.forgetting < 1.0:
            raise ValueError("forgetting must be in (0, 1)")

    def _losses(self, context: str | None, k: int) -> list:
        """The losses of ``k`` experts in ``context`` (None: pooled), without storing anything."""
        losses = self.global_losses if context is None else self.context_losses.get(context, self.global_losses)
        if len(losses) < k:  # experts added since (a new attribute): each starts where the best one is
            fill = min(losses) if losses else 0.0
            losses = [*losses, *[fill] * (k - len(losses))]
        return losses

    def weights(self, context: str | None, k: int) -> list[float]:
        """Normalised weights of the first ``k`` experts in ``context`` (None: all contexts pooled)."""
        losses = self._losses(context, k)[:k]
        best = min(losses)
        w = [math.exp(best - x) for x in losses]
        total = sum(w)
        return [x / total for x in w]

    def update(self, context: str, losses: list[float]) -> None:
        """Fold in each expert's log-loss on one resolved prediction made in ``context``."""
        k, keep = len(losses), self.forgetting
        mine = self.context_losses.get(context)
        if mine is None or len(mine) < k:
            mine = self.context_losses[context] = list(self._losses(context, k))
        if len(self.global_losses) < k:
            self.global_losses = list(self._losses(None, k))
        glob = self.global_losses
        for i, loss in enumerate(losses):
            mine[i] = keep * mine[i] + loss
            glob[i] = keep * glob[i] + loss


def log_loss(p: float) -> float:
    return -math.log(p if p > P_FLOOR else P_FLOOR)
