"""Peer observation: nodes share sanitised experience and learn from each other's (seed §4.3, §7.3).

Sender side (`ExperienceSharer`): a node keeps, per (coarse context bucket,
arm), the sufficient statistics of its closed decisions' rewards (their sum
and count) over a release window of ``window`` decisions; at the window's end
every cell with at least ``min_count`` decisions is released as one
`Experience` record (schema ``Experience``, topic ``liquid.experience``: the
mean, the count, the noise scale). Under differential privacy the sums are
clipped and noised by `morph.privacy.LaplaceMechanism`; the clipping range is
the workflow's reward range (`reward_clip`: a perfect epoch on its most
accurate model, down by the SLO penalty, so the sensitivity is 0.5, not the
1 of [0, 1]: a quarter of the noise variance at the same ε); the cells hold
disjoint decisions, so one window costs ε once however many cells it
releases, charged to the node's `PrivacyBudget`; when the budget is spent the
node stops sharing. Every pair with experience in a window gets a release, not
only the pairs a node keeps choosing, and a long window lowers the noise per
decision (the noise on a mean of n falls as 1/n).

Network (`PeerNetwork`): nodes are split into groups of ``group_size`` (the
seed finds 50–100 per group most efficient); inside a group each node has
``degree`` random neighbours and an experience travels hop by hop until its
TTL (3) runs out, each node keeping it once.

Receiver side (`absorb`): the experience's bucket becomes a representative
context *of the receiving node* (its own capacity and thermal estimate), and
the arm's features there are added to the receiver's bandit statistics with
weight similarity × hop decay × the record's `effective_count` (inverse-variance
weighting with a between-node variance τ²: a clean single decision counts 1,
noisy (DP) experience less, and a window's well-populated cell at most
1 + reward variance / τ², since another node's cell is not the receiver's
however many decisions it holds; without τ² a DP window's exploited cell
outweighed its single exploratory decisions ~60 to 1, which were most of what
a newcomer learnt from its peers). What a node hears between two of its
decisions is summed per (bucket, arm) and learnt at the next one
(`RliAgent.fold_peers`): a group's releases reach every member, so a node
hears many more records than it decides. A group's archive (`GroupArchive`)
holds its most recent releases up to a fixed amount of that evidence, so a
node that joins starts from the same amount of peer evidence with or without
DP.

>>> net = PeerNetwork([f"n{i}" for i in range(6)], group_size=3, degree=2, ttl=3, seed=1)
>>> sorted(net.groups)
['g0', 'g1']
>>> exp = {"experience_id": "n0-1", "origin_node": "n0", "group": net.group_of["n0"], "ttl": 3, "hops": 0}
>>> sorted(node for node, _ in net.deliver(exp))
['n1', 'n2']
"""

from __future__ import annotations

import functools
import math
import random
from collections import deque
from dataclasses import dataclass, field, fields
from typing import ClassVar, Optional

import numpy as np

from morph.context import NodeContext
from morph.privacy import LaplaceMechanism, PrivacyBudget
from morph.reward import reward_bounds
from schemas.state import Versioned

REWARD_VARIANCE = 0.01  # typical variance of one decision's reward (balanced weights, simulated fleet)
# between-node variance of a (bucket, arm) cell's mean reward, τ²: what a peer's mean, however many decisions it
# holds, still differs from the receiver's by (other traits, other loads in the same coarse bucket). Measured on the
# clean fleets of seeds 1000 / 1001 (32 nodes, 2 h; cells per 10 min): 1.9 × the within-node variance of a cell's
# rewards, so taken as 1.9 × REWARD_VARIANCE (`effective_count`)
BETWEEN_VARIANCE = 1.9 * REWARD_VARIANCE
DP_WINDOW = 20          # decisions per release window under DP (200 s at 10 s epochs)


@dataclass(frozen=True)
class SharingConfig:
    window: int = 1                 # decisions per release window (DP: longer windows, less noise per decision)
    min_count: int = 1              # a cell with fewer decisions in a window is not released
    ttl: int = 3
    epsilon: Optional[float] = None  # per release window; None: no differential privacy
    budget: float = 100.0           # total ε a node may spend
    clip: tuple = (0.0, 1.0)        # DP clipping range; `reward_clip` derives the workflow's (sensitivity 0.5)
    peer_weight: float = 0.5        # weight of a peer's reward against one's own
    hop_decay: float = 0.7
    similarity_scale: float = 1.0   # bucket distance at which similarity falls to e^-1/2
    reward_variance: float = REWARD_VARIANCE  # for inverse-variance weights
    between_variance: float = BETWEEN_VARIANCE  # τ², between nodes: caps what one peer's record is worth
    archive: float = 500.0          # decisions' worth of evidence a group keeps for nodes that join


def _config_from_v1(config) -> SharingConfig:
    """A version-1 SharingConfig (``batch`` rewards per release) as a window of as many decisions."""
    old = dict(vars(config))
    old["window"] = old.pop("batch", 1)
    return SharingConfig(**{f.name: old[f.name] for f in fields(SharingConfig) if f.name in old})


def _sharer_from_v1(state: dict) -> dict:
    """Version 1 pooled raw rewards per cell and released a cell when its pool was full."""
    config = _config_from_v1(state["config"])
    mech = LaplaceMechanism(config.epsilon, *config.clip) if config.epsilon is not None else None
    cells = {key: [sum(mech.clip(r) if mech else r for r in pool), len(pool)]
             for key, pool in state.pop("pools").items()}
    pending = sum(count for _, count in cells.values())
    return {**state, "config": config, "cells": cells, "pending": pending}


def reward_clip(config, arms) -> tuple[float, float]:
    """The DP clipping range of an agent's rewards (`morph.reward.reward_bounds`): from its best epoch on
    the most accurate arm of ``arms`` down by the SLO penalty; public figures only (weights, constraints,
    the models' held-out accuracy), so the range leaks nothing and the sensitivity is ``slo_penalty``.

    Parameters
    ----------
    config
        The agent's `morph.agent.RliConfig` (its reward weights and constraints).
    arms
        The agent's `morph.arms.ArmSet`.

    Examples
    --------
    >>> from morph.agent import RliConfig
    >>> from morph.arms import ArmSet
    >>> [round(v, 3) for v in reward_clip(RliConfig(), ArmSet.nominal())]
    [0.47, 0.97]
    """
    best = max(arms.profile(a).accuracy for a in arms)
    return reward_bounds(config.constraints, config.weights, best)


@functools.lru_cache(maxsize=32)
def _mechanism(epsilon: float, clip: tuple) -> LaplaceMechanism:
    """One (immutable) mechanism per setting: a sharer asks for it on every decision it records."""
    return LaplaceMechanism(epsilon, *clip)


@dataclass
class ExperienceSharer(Versioned):
    """Per release window, a node's reward sums and counts per (bucket, arm), released as Experience records."""

    STATE_VERSION: ClassVar[int] = 2
    MIGRATIONS: ClassVar[dict] = {1: _sharer_from_v1}

    node_id: str
    group: str
    config: SharingConfig
    rng: random.Random
    budget: PrivacyBudget = None
    cells: dict = field(default_factory=dict)   # (bucket, arm name) -> [sum of (clipped) rewards, count]
    pending: int = 0                            # decisions in the current window
    released: int = 0
    version: int = STATE_VERSION

    def __post_init__(self):
        if self.budget is None:
            self.budget = PrivacyBudget(self.config.budget)

    @property
    def mechanism(self) -> Optional[LaplaceMechanism]:
        c = self.config
        return _mechanism(c.epsilon, tuple(c.clip)) if c.epsilon is not None else None

    def record(self, bucket: tuple, arm_name: str, reward: float, ts_ms: int) -> list[dict]:
        """Add one closed decision; the window's Experience records when it closes the window, else []."""
        mech = self.mechanism
        if mech is not None and self.budget.exhausted:
            return []
        cell = self.cells.setdefault((bucket, arm_name), [0.0, 0])
        cell[0] += mech.clip(reward) if mech is not None else reward
        cell[1] += 1
        self.pending += 1
        return self.release(ts_ms) if self.pending >= self.config.window else []

    def release(self, ts_ms: int) -> list[dict]:
        """Close the window: one record per cell with at least ``min_count`` decisions (ε spent once)."""
        cells = [(key, total, count) for key, (total, count) in self.cells.items() if count >= self.config.min_count]
        self.cells, self.pending = {}, 0
        mech = self.mechanism
        if not cells or (mech is not None and not self.budget.spend(self.config.epsilon)):
            return []
        out = []
        for (bucket, arm_name), total, count in cells:
            scale, mean = 0.0, total / count
            if mech is not None:
                total, b = mech.release_sum(total, self.rng)
                # the clipped mean lies in [low, high]: projecting the noised one there (post-processing,
                # no privacy cost) can only bring it closer, and bounds its error (`effective_count`)
                scale, mean = b / count, mech.clip(total / count)
            self.released += 1
            t, load, power, congested = bucket
            out.append({"experience_id": f"{self.node_id}-{self.released}", "origin_node": self.node_id,
                        "group": self.group, "ts_ms": int(ts_ms), "temp_level": t, "load_level": load,
                        "power_capped": power, "congested": congested, "arm": arm_name,
                        "reward": float(mean), "count": count, "noise_scale": scale,
                        "epsilon": self.config.epsilon, "ttl": self.config.ttl, "hops": 0})
        return out


class PeerNetwork:
    """Hierarchical groups with a random neighbour graph inside each; TTL-bounded propagation."""

    def __init__(self, nodes: list[str], group_size: int = 50, degree: int = 4, ttl: int = 3, seed: int = 0):
        rng = random.Random(seed)
        self.ttl = ttl
        self.groups: dict[str, list[str]] = {}
        self.group_of: dict[str, str] = {}
        for i in range(0, len(nodes), group_size):
            gid = f"g{i // group_size}"
            self.groups[gid] = list(nodes[i:i + group_size])
            for n in nodes[i:i + group_size]:
                self.group_of[n] = gid
        self.neighbours: dict[str, list[str]] = {}
        for members in self.groups.values():
            for n in members:
                others = [m for m in members if m != n]
                self.neighbours[n] = rng.sample(others, min(degree, len(others)))

    def deliver(self, experience: dict) -> list[tuple[str, int]]:
        """(receiving node, hops travelled) for every node the experience reaches, once each."""
        origin = experience["origin_node"]
        seen, frontier, out = {origin}, [origin], []
        for hop in range(1, min(experience["ttl"], self.ttl) + 1):
            nxt = []
            for n in frontier:
                for m in self.neighbours.get(n, ()):
                    if m not in seen:
                        seen.add(m)
                        nxt.append(m)
                        out.append((m, hop))
            frontier = nxt
        return out


def bucket_context(bucket: tuple, like: NodeContext, max_latency_ms: float, max_temp_c: float) -> NodeContext:
    """A representative context of the receiving node (``like``) in ``bucket``."""
    t, load, power, congested = bucket
    capacity = max(like.served_rps, 1.0) / max(min(like.util, 1.0), 0.05)
    offered = capacity * (0.5, 0.85, 1.3)[load]
    temp = (max_temp_c - 20.0, max_temp_c - 7.0, max_temp_c + 2.0)[t]
    util = min(1.0, offered / capacity)
    return NodeContext(temp_c=temp, slope_c_per_s=0.0,
                       power_w=like.power_cap_w if power else like.power_w, power_cap_w=like.power_cap_w,
                       mem_used_frac=like.mem_used_frac, offered_rps=offered, served_rps=min(offered, capacity),
                       util=util, latency_ms=like.latency_ms, net_ms=max_latency_ms if congested else 10.0,
                       current=like.current, recent_temps=())


def effective_count(experience: dict, reward_variance: float = REWARD_VARIANCE, between_variance: float = 0.0) -> float:
    """How much a record's mean is worth, in clean single-decision peer records: the inverse of its
    mean's variance as a predictor of the receiver's reward, relative to a clean single decision's.

    A record of ``count`` decisions has sampling variance ``reward_variance / count``, the noise's
    variance, and the between-node variance τ² (``between_variance``: a peer's cell is not the
    receiver's, however many decisions it holds; random-effects meta-analysis, DerSimonian & Laird
    1986). A clean single decision's variance is ``reward_variance + τ²``, so it is worth exactly 1
    and a clean record of n decisions at most 1 + ``reward_variance`` / τ²; with τ² = 0 this is
    count / (1 + count·noise variance / reward variance), plain inverse-variance weighting.

    A Laplace scale b has variance 2b². A DP record's mean was projected into the clipping range, whose
    width the record implies (sensitivity = b·count·ε); the noise variance taken is the projected
    error's mean square at the worst place the clipped mean can lie (`projected_noise_variance`: 0.066
    for a single decision at ε = 1 and width 0.5, against 2b² = 0.5 unprojected and the width²/2 =
    0.125 bound of before). It matters where count·ε is small: a window's single decisions (a peer's
    exploration), whose unprojected noise would drown them.

    Examples
    --------
    >>> effective_count({"count": 20, "noise_scale": 0.0})
    20.0
    >>> round(effective_count({"count": 1, "noise_scale": 0.5, "epsilon": 1.0}), 4)   # width 0.5: 0.066
    0.1315
    >>> round(effective_count({"count": 1, "noise_scale": 0.5}), 4)                  # no width known: 2b²
    0.0196
    >>> effective_count({"count": 1, "noise_scale": 0.0}, 0.01, 0.019)              # a clean decision: one
    1.0
    >>> round(effective_count({"count": 17, "noise_scale": 0.5 / 17, "epsilon": 1.0}, 0.01, 0.019), 3)  # 4.4 at τ² = 0
    1.361
    >>> round(effective_count({"count": 1, "noise_scale": 0.5, "epsilon": 1.0}, 0.01, 0.019), 4)
    0.3051
    """
    n, b = experience["count"], experience["noise_scale"]
    epsilon = experience.get("epsilon")
    noise = projected_noise_variance(b, b * n * epsilon) if epsilon and b > 0.0 else 2.0 * b * b
    # = (v + τ²) / (v/n + noise + τ²), written so that τ² = 0 gives plain inverse-variance weights to the bit
    return n / (1.0 + n * (noise + between_variance) / reward_variance) * (1.0 + between_variance / reward_variance)


@functools.lru_cache(maxsize=256)
def projected_noise_variance(scale: float, width: float) -> float:
    """The mean square error of a value noised with Laplace(``scale``) and projected into a range of
    ``width`` that holds the true value, at the worst place the true value can lie in it.

    With the true value a from the lower end and c = width − a from the upper, the error is the
    noise X cut at −a and +c, so its mean square is ½ g(a) + ½ g(c) with g(t) = E[min(E, t)²] for E
    exponential of mean ``scale``: g(t) = 2b²(1 − e^(−t/b)) − 2bt·e^(−t/b). Its largest value over a
    is taken (on a grid of the half range, by symmetry): the true mean is not known to the receiver.
    For a single decision at ε = 1 with sensitivity 0.5 (b = width = 0.5) it is 0.066 (at an end of
    the range), against the width²/2 = 0.125 bound taken before; it tends to 2b² when b ≪ width.

    >>> round(projected_noise_variance(0.5, 0.5), 4)
    0.0661
    >>> round(projected_noise_variance(0.5 / 17, 0.5) / (2 * (0.5 / 17) ** 2), 2)   # little clipping: 2b²
    1.0
    >>> projected_noise_variance(0.5, 0.0)
    0.0
    """
    if width <= 0.0:
        return 0.0
    b = scale

    def g(t: float) -> float:
        e = math.exp(-t / b)
        return 2.0 * b * b * (1.0 - e) - 2.0 * b * t * e

    return max(0.5 * g(a) + 0.5 * g(width - a) for a in (width / 2.0 * k / 64 for k in range(65)))


def similarity(a: tuple, b: tuple, scale: float) -> float:
    """Gaussian kernel on the distance between two context buckets."""
    d2 = sum((x - y) ** 2 for x, y in zip(a, b))
    return math.exp(-d2 / (2.0 * scale ** 2))


@dataclass
class PeerBucket:
    """Peers' experience in one context bucket since the receiver's last decision, not yet learnt.

    The bucket's features in the receiver's last context (Φ = coords · basisᵀ,
    `Featurizer.factors`), its similarity to that context, and per arm the
    experience's total weight and weighted reward sum (`RliAgent.fold_peers`
    learns them at the next decision)."""

    coords: np.ndarray
    basis: np.ndarray
    similarity: float
    arms: list = field(default_factory=list)
    weights: list = field(default_factory=list)
    weighted_rewards: list = field(default_factory=list)

    def add(self, arm: int, weight: float, reward: float) -> None:
        try:
            i = self.arms.index(arm)
        except ValueError:
            self.arms.append(arm)
            self.weights.append(weight)
            self.weighted_rewards.append(weight * reward)
            return
        self.weights[i] += weight
        self.weighted_rewards[i] += weight * reward


def absorb(agent, state, experience: dict, hops: int, like: NodeContext, config: SharingConfig,
           now_ms: Optional[int] = None) -> float:
    """Add a peer's experience to the receiving node's evidence; returns the weight it got.

    The experience's bucket becomes a context of the receiving node (``like``, its last decision's
    context) and the arm's row there is learnt with that weight. When ``like`` is the node's last
    decision's context (the flow's and the benchmark's case) the record waits, summed with the
    others of its bucket and arm, for the node's next decision (`RliAgent.fold_peers`): nothing
    reads the bandit before it, and a group's releases reach every member, so a node hears far
    more records than it decides. Otherwise it is learnt at once.

    Experience is aged like the node's own evidence: discounted by the bandit's γ per decision epoch
    between its release and ``now_ms`` (by default the receiver's last decision), which matters for
    records replayed from a group's archive to a node that joins (`GroupArchive`)."""
    c = agent.config.constraints
    bucket = (experience["temp_level"], experience["load_level"], experience["power_capped"], experience["congested"])
    try:
        arm = agent.arm_by_name(experience["arm"])
    except KeyError:
        return 0.0  # an arm this workflow does not have (another zoo): nothing to learn
    deferred = like is state.last_context
    pending = state.peer_pending.get(bucket) if deferred else None
    if pending is None:
        # many peers' experience falls in few buckets: each translated once per decision
        ctx = bucket_context(bucket, like, c.max_latency_ms, c.max_gpu_temp_c)
        coords, basis, _, _ = agent.featurizer.factors(ctx, state.thermal.r_c_per_w())
        pending = PeerBucket(coords, basis, similarity(bucket, like.bucket(c), config.similarity_scale))
        if deferred:
            state.peer_pending[bucket] = pending
    weight = (config.peer_weight * pending.similarity
              * config.hop_decay ** max(hops - 1, 0)
              * effective_count(experience, config.reward_variance, config.between_variance))
    now_ms = state.last_decision_ms if now_ms is None else now_ms
    if now_ms is not None and experience.get("ts_ms") is not None:
        age_epochs = max(now_ms - experience["ts_ms"], 0) / 1000.0 / agent.config.epoch_s
        weight *= agent.config.gamma ** age_epochs
    if weight > 1e-6:
        if deferred:
            pending.add(arm, weight, experience["reward"])
        else:
            state.bandit.learn_one(pending.coords[arm] @ pending.basis.T, experience["reward"], weight)
    return weight


def _archive_from_v1(state: dict) -> dict:
    """Version 1 kept ``size`` records whatever they held: keep them, bounded by as many decisions' worth."""
    recent = deque(state["recent"])  # without v1's maxlen, which would evict without counting
    return {**state, "recent": recent, "evidence": float(state["size"]), "reward_variance": REWARD_VARIANCE,
            "held": sum(effective_count(r) for r in recent)}


def _archive_from_v2(state: dict) -> dict:
    """Version 2 summed `effective_count` before a single decision's DP record was weighted by its
    projected error: the evidence held is recounted, so evictions subtract what was added."""
    return {**state, "held": sum(effective_count(r, state["reward_variance"]) for r in state["recent"])}


def _archive_from_v3(state: dict) -> dict:
    """Version 3 weighed records without the between-node variance: its records are recounted with it."""
    return {**state, "between_variance": BETWEEN_VARIANCE,
            "held": sum(effective_count(r, state["reward_variance"], BETWEEN_VARIANCE) for r in state["recent"])}


def _archive_from_v4(state: dict) -> dict:
    """Version 4 bounded a projected DP mean's noise by width²/2, not its exact worst mean square
    (`projected_noise_variance`): the evidence held is recounted."""
    return {**state, "held": sum(effective_count(r, state["reward_variance"], state["between_variance"])
                                 for r in state["recent"])}


@dataclass
class GroupArchive(Versioned):
    """A group's most recent released experience, replayed to a node when it joins.

    Replaying a release costs no privacy: it is post-processing of an output
    that was already ε-DP (Dwork & Roth 2014, Prop. 2.1), so a newcomer can
    start from its group's experience instead of only what is released after
    it joined. Bounded by evidence: the most recent records worth ``evidence``
    decisions (`effective_count`), so a newcomer is given the same amount of
    peer evidence whether records are single clean rewards or noised window
    statistics, however many records that takes (at most ``size``). A record
    of several decisions is worth less than as many single ones: one peer's
    cell differs from another's by the between-node variance.

    >>> archive = GroupArchive(evidence=3.0)
    >>> for i in range(5):
    ...     archive.add({"experience_id": f"a-{i}", "count": 1, "noise_scale": 0.0})
    >>> [r["experience_id"] for r in archive.records()]
    ['a-2', 'a-3', 'a-4']
    >>> archive.add({"experience_id": "b-0", "count": 2, "noise_scale": 0.0})
    >>> [r["experience_id"] for r in archive.records()], round(archive.held, 3)
    (['a-3', 'a-4', 'b-0'], 3.208)
    """

    STATE_VERSION: ClassVar[int] = 5
    MIGRATIONS: ClassVar[dict] = {1: _archive_from_v1, 2: _archive_from_v2, 3: _archive_from_v3, 4: _archive_from_v4}

    evidence: float = 500.0
    size: int = 20_000
    reward_variance: float = REWARD_VARIANCE
    between_variance: float = BETWEEN_VARIANCE
    recent: deque = None
    held: float = 0.0
    version: int = STATE_VERSION

    def __post_init__(self):
        if self.recent is None:
            self.recent = deque()

    def add(self, experience: dict) -> None:
        self.recent.append(experience)
        self.held += self._count(experience)
        while len(self.recent) > 1:
            oldest = self._count(self.recent[0])
            if len(self.recent) <= self.size and self.held - oldest < self.evidence:
                break
            self.held -= oldest
            self.recent.popleft()

    def _count(self, experience: dict) -> float:
        return effective_count(experience, self.reward_variance, self.between_variance)

    def records(self) -> list[dict]:
        return list(self.recent)
