"""The next-step predictor's experts: follower counts per context, Witten-Bell chains, and their mixture.

Each **expert** looks at a run's prefix through one view (the last few tasks,
the set of tasks already visited, the time since the previous task, a case
attribute, ...) and predicts the next task from what followed the same view
before. Its prediction is a *chain* of context keys that all extend the shared
first-order context ``(last task,)``, e.g. ``("history", prev, last)`` then
``("history", prev2, prev, last)``, or the one key ``("gap", last, prev, 3)``;
counts along the chain are blended with Witten-Bell interpolation, so a context
is trusted in proportion to how often it was seen relative to how many different
followers it had, and otherwise backs off to the shorter one and finally to
``(last task,)`` and ``()``.

`ExpertMixture` blends the experts with a Bayesian mixture with forgetting,
kept **per last task**: each expert's weight in a context is ``exp(-L)`` with
``L`` its exponentially discounted log-loss on the predictions resolved in that
context, so the mixture learns which view to trust where. Only the ``top``
heaviest experts of a context are blended into a prediction (the rest carry
little weight, and blending costs per expert); every expert's loss is updated.

`FollowerCounts` bounds memory: a context whose total reaches ``max_total`` has
its counts halved (old evidence fades, as in adaptive PPM coders), and when more
than ``max_contexts`` contexts are held every count is halved and the contexts
left empty are dropped.

References
----------
Witten, I. H., & Bell, T. C. (1991). The zero-frequency problem: estimating the
probabilities of novel events in adaptive text compression. IEEE Trans. Inf. Theory 37(4).

Herbster, M., & Warmuth, M. K. (1998). Tracking the best expert. Machine Learning 32(2).

>>> counts = FollowerCounts()
>>> for nxt in "bbc":
...     _ = counts.learn([[(), ("a",)]], [[None, None]], nxt)  # each chain's loss: see `FollowerCounts.learn`
>>> _ = counts.learn([[()]], [[counts.table[()]]], "b")
>>> root, first = counts.table[()], counts.table[("a",)]
>>> a, b = base_scales(root, first)  # () saw b 3:1; ("a",) saw b 2:1, trusted 3 / (3 + 2)
>>> round(a * root[1]["b"] + b * first[1]["b"], 3), round(a * root[1]["c"] + b * first[1]["c"], 3)
(0.7, 0.3)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

#: Probability floor for log-loss, so one confident miss costs at most ~9.2 nats.
P_FLOOR = 1e-4
_MAX_LOSS = -math.log(P_FLOOR)


@dataclass
class FollowerCounts:
    """Next-task counts per context key (a tuple): ``table[key] = [total, {next task: count}]``.

    Parameters
    ----------
    max_contexts
        Contexts held at most; beyond, every count is halved and emptied contexts dropped.
    max_total
        A context whose total count reaches this has its counts halved (a
        follower seen once is then forgotten): recent evidence weighs more.

    Entries are updated in place, so a caller may hold an entry from prediction
    time and learn into it later without looking the key up again.

    >>> counts = FollowerCounts(max_contexts=2)
    >>> _ = counts.learn([[("a",)], [("b",)]], [[None], [None]], "x")
    >>> _ = counts.learn([[("a",)]], [[counts.table[("a",)]]], "x")
    >>> _ = counts.learn([[("c",)]], [[None]], "y")  # 3 contexts: halving forgets those seen once
    >>> counts.table
    {('a',): [1, {'x': 1}]}
    """

    max_contexts: int = 20_000
    max_total: int = 1024
    table: dict = field(default_factory=dict)

    def learn(self, chains: list, entries: list, nxt: str, p_base: float = 0.0) -> list[float]:
        """Count ``nxt`` after each key of ``chains`` (lists of keys); ``entries`` are their entries as
        looked up earlier, in the same shape (None: unseen then).

        Returns each chain's log-loss on ``nxt`` from its entries as they were
        before this call: Witten-Bell along the chain (shortest context first,
        stopping at the first entry unseen at look-up) over the base's
        probability ``p_base``. Scoring and counting share one pass, as every
        resolved prediction does both on the same entries.

        >>> counts = FollowerCounts()
        >>> [round(x, 3) for x in counts.learn([[("a",), ("a", "b")]], [[None, None]], "x", p_base=0.5)]
        [0.693]
        >>> entry = counts.table[("a",)]
        >>> [round(x, 3) for x in counts.learn([[("a",), ("a", "b")]], [[entry, None]], "x", p_base=0.5)]
        [0.288]
        """
        table, full = self.table, self.max_total - 1  # an entry counted from `full` reaches max_total
        losses = []
        log = math.log
        for chain, chain_entries in zip(chains, entries):
            p, scoring = p_base, True
            for key, entry in zip(chain, chain_entries):
                if entry is None:
                    scoring = False  # a longer context that extends an unseen one was unseen too
                    entry = table.get(key)  # another run may have counted it since
                    if entry is None:
                        table[key] = [1, {nxt: 1}]
                        continue
                n, followers = entry
                k = followers.get(nxt, 0)
                if scoring:
                    if n:
                        lam = n / (n + len(followers))
                        p = (1.0 - lam) * p + lam * k / n
                    else:  # emptied by aging since it was looked up
                        scoring = False
                followers[nxt] = k + 1
                entry[0] = n + 1
                if n >= full:
                    _halve(entry)
            losses.append(-log(p) if p > P_FLOOR else _MAX_LOSS)
        if len(table) > self.max_contexts:
            self._age()
        return losses

    def _age(self) -> None:
        """Halve every count until at most 3/4 of ``max_contexts`` contexts are left (amortised: rare)."""
        table = self.table
        while len(table) > self.max_contexts * 3 // 4:
            for key, entry in list(table.items()):
                _halve(entry)
                if not entry[0]:
                    del table[key]


def _halve(entry: list) -> None:
    halved = {k: c >> 1 for k, c in entry[1].items() if c > 1}
    entry[0], entry[1] = sum(halved.values()), halved


def base_scales(root: list, first: list | None) -> tuple[float, float]:
    """The shared base, ``()`` taken whole interpolated with ``(last,)``, as count scales ``(a, b)``:
    P(task) = a * root count + b * first-order count."""
    n0 = root[0]
    if not first or not first[0]:
        return 1.0 / n0, 0.0
    n1 = first[0]
    lam = n1 / (n1 + len(first[1]))
    return (1.0 - lam) / n0, lam / n1


def blend(probs: dict[str, float], chains: list, weights: list[tuple[int, float]]) -> float:
    """Add each weighted chain's own share of its distribution to ``probs``; return the share left to the base.

    ``weights`` are ``(chain index, weight)`` pairs. Along a chain of entries
    (shortest context first, stopping at the first unseen one), Witten-Bell
    gives the longest context ``lam`` of the chain's weight, the next ``lam * (1
    - lam_longest)``, and so on; what no context claims goes to the shared base,
    which the caller adds once for all chains.

    >>> probs = {}
    >>> left = blend(probs, [[[3, {"b": 2, "c": 1}], None]], [(0, 1.0)])  # seen 3 times, 2 followers: trusted 3 / 5
    >>> round(left, 2), {k: round(v, 2) for k, v in probs.items()}
    (0.4, {'b': 0.4, 'c': 0.2})
    """
    get = probs.get
    on_base = 0.0
    for i, left in weights:
        seen = chains[i]
        for m, entry in enumerate(seen):  # the seen prefix: a longer context that extends an unseen one is unseen too
            if entry is None or not entry[0]:
                seen = seen[:m]
                break
        for n, followers in reversed(seen):  # longest first
            lam = n / (n + len(followers))
            scale = left * lam / n
            for task, k in followers.items():
                probs[task] = get(task, 0.0) + k * scale
            left *= 1.0 - lam
        on_base += left
    return on_base


@dataclass
class ExpertMixture:
    """Bayesian mixture of experts with forgetting, its losses kept per context (the last task).

    Parameters
    ----------
    forgetting
        Discount of past losses per resolved prediction in a context: about
        ``1 / (1 - forgetting)`` recent predictions decide the weights.
    top
        Experts blended into a prediction: the heaviest ones of the context.

    >>> mix = ExpertMixture(forgetting=0.9, top=2)
    >>> for _ in range(20):
    ...     mix.update("a", [math.log(2), math.log(10), math.log(4)])  # expert 0 gave the truth 0.5
    >>> [(i, round(w, 2)) for i, w in mix.weights("a", 3)]  # the two heaviest, renormalised
    [(0, 1.0), (2, 0.0)]
    >>> [i for i, _ in mix.weights("never seen", 3)]  # an unseen context starts from the pooled losses
    [0, 2]
    >>> [(i, round(w, 2)) for i, w in mix.weights("a", 4)]  # an expert added later starts level with the best
    [(0, 0.5), (3, 0.5)]
    """

    forgetting: float = 0.98
    top: int = 4
    global_losses: list = field(default_factory=list)
    context_losses: dict = field(default_factory=dict)  # last task -> discounted losses per expert
    # context -> (k, top, its weights) until the context's losses next change: with several runs in
    # flight, a context is often predicted in again before one of its predictions resolves
    cached: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        if not 0.0 < self.forgetting < 1.0:
            raise ValueError("forgetting must be in (0, 1)")
        if self.top < 1:
            raise ValueError("top must be at least 1")

    def __getstate__(self) -> dict:
        # the cache is derived from the losses: not part of a snapshot, so predicting changes no snapshot
        return {name: value for name, value in self.__dict__.items() if name != "cached"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.cached = {}

    def losses(self, context: str | None, k: int) -> list:
        """The discounted losses of ``k`` experts in ``context`` (None: pooled), without storing anything."""
        losses = self.global_losses if context is None else self.context_losses.get(context, self.global_losses)
        if len(losses) < k:  # experts added since (a new attribute): each starts where the best one is
            fill = min(losses) if losses else 0.0
            losses = [*losses, *[fill] * (k - len(losses))]
        return losses

    def weights(self, context: str | None, k: int, top: int | None = None) -> list[tuple[int, float]]:
        """``(expert, weight)`` of the ``top`` heaviest of ``k`` experts in ``context``, heaviest first."""
        top = top or self.top
        cached = self.cached.get(context)
        if cached is not None and cached[0] == k and cached[1] == top:
            return cached[2]
        losses = self.losses(context, k)
        order = sorted(range(k), key=losses.__getitem__)[:top]
        best = losses[order[0]]
        exp = math.exp
        w = [exp(best - losses[i]) for i in order]
        total = sum(w)
        weights = [(i, x / total) for i, x in zip(order, w)]
        if context in self.context_losses:  # an unseen context follows the pooled losses: not cached
            self.cached[context] = (k, top, weights)
        return weights

    def update(self, context: str, losses: list[float]) -> None:
        """Fold in each expert's log-loss on one resolved prediction made in ``context``."""
        k, keep = len(losses), self.forgetting
        # Updated in place, so each list must be this context's own, of k losses: `losses` may hand out
        # the pooled list itself, and a prediction made before an expert was added resolves with fewer
        # losses than the lists now hold (those lists are cut to its k, the newer experts re-padded later)
        mine = self.context_losses.get(context)
        if mine is None or len(mine) != k:
            mine = self.context_losses[context] = self.losses(context, k)[:k]
        pooled = self.global_losses
        if len(pooled) != k:
            pooled = self.global_losses = self.losses(None, k)[:k]
        self.cached.pop(context, None)
        for i, x in enumerate(losses):
            mine[i] = keep * mine[i] + x
            pooled[i] = keep * pooled[i] + x


def log_loss(p: float) -> float:
    return -math.log(max(P_FLOOR, p))
