"""Peer observation: nodes share sanitised experience and learn from each other's (seed §4.3, §7.3).

Sender side (`ExperienceSharer`): each closed decision's reward is pooled
per (coarse context bucket, arm); when a pool holds ``batch`` rewards its mean
is released as one `Experience` record (schema ``Experience``, topic
``liquid.experience``) — under differential privacy clipped and noised by
`morph.privacy.LaplaceMechanism`, each release charged to the node's
`PrivacyBudget`; when the budget is spent the node stops sharing.

Network (`PeerNetwork`): nodes are split into groups of ``group_size`` (the
seed finds 50–100 per group most efficient); inside a group each node has
``degree`` random neighbours and an experience travels hop by hop until its
TTL (3) runs out, each node keeping it once.

Receiver side (`absorb`): the experience's bucket becomes a representative
context *of the receiving node* (its own capacity and thermal estimate), and
the arm's features there are added to the receiver's bandit statistics with
weight similarity × hop decay × count / (1 + count·noise variance / reward
variance) — inverse-variance weighting, so noisy (DP) experience counts less.

>>> net = PeerNetwork([f"n{i}" for i in range(6)], group_size=3, degree=2, ttl=3, seed=1)
>>> sorted(net.groups)
['g0', 'g1']
>>> exp = {"experience_id": "n0-1", "origin_node": "n0", "group": net.group_of["n0"], "ttl": 3, "hops": 0}
>>> sorted(node for node, _ in net.deliver(exp))
['n1', 'n2']
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass, field
from typing import ClassVar, Optional

from morph.context import NodeContext
from morph.privacy import LaplaceMechanism, PrivacyBudget
from schemas.state import Versioned


@dataclass(frozen=True)
class SharingConfig:
    batch: int = 1                  # rewards per release (DP: more rewards, less noise per release)
    ttl: int = 3
    epsilon: Optional[float] = None  # per release; None: no differential privacy
    budget: float = 100.0           # total ε a node may spend
    clip: tuple = (0.0, 1.0)         # rewards are mostly in [0, 1]: a tight range halves the noise
    peer_weight: float = 0.5        # weight of a peer's reward against one's own
    hop_decay: float = 0.7
    similarity_scale: float = 1.0   # bucket distance at which similarity falls to e^-1/2
    reward_variance: float = 0.01   # typical variance of one reward, for inverse-variance weights
    archive: int = 500              # released records a group keeps for nodes that join it


@dataclass
class ExperienceSharer(Versioned):
    """Pools a node's rewards per (bucket, arm) and releases them as Experience records."""

    STATE_VERSION: ClassVar[int] = 1

    node_id: str
    group: str
    config: SharingConfig
    rng: random.Random
    budget: PrivacyBudget = None
    pools: dict = field(default_factory=dict)
    released: int = 0
    version: int = STATE_VERSION

    def __post_init__(self):
        if self.budget is None:
            self.budget = PrivacyBudget(self.config.budget)

    def record(self, bucket: tuple, arm_name: str, reward: float, ts_ms: int) -> Optional[dict]:
        """Add one closed decision; an Experience record when its pool is full, else None."""
        c = self.config
        if c.epsilon is not None and self.budget.exhausted:
            return None
        pool = self.pools.setdefault((bucket, arm_name), [])
        pool.append(reward)
        if len(pool) < c.batch:
            return None
        del self.pools[(bucket, arm_name)]
        if c.epsilon is None:
            value, scale = sum(pool) / len(pool), 0.0
        else:
            if not self.budget.spend(c.epsilon):
                return None
            mech = LaplaceMechanism(c.epsilon, *c.clip)
            value, scale = mech.release_mean(pool, self.rng), mech.scale(len(pool))
        self.released += 1
        t, load, power, congested = bucket
        return {"experience_id": f"{self.node_id}-{self.released}", "origin_node": self.node_id,
                "group": self.group, "ts_ms": int(ts_ms), "temp_level": t, "load_level": load,
                "power_capped": power, "congested": congested, "arm": arm_name, "reward": float(value),
                "count": len(pool), "noise_scale": scale, "epsilon": c.epsilon, "ttl": c.ttl, "hops": 0}


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


def similarity(a: tuple, b: tuple, scale: float) -> float:
    """Gaussian kernel on the distance between two context buckets."""
    d2 = sum((x - y) ** 2 for x, y in zip(a, b))
    return math.exp(-d2 / (2.0 * scale ** 2))


def absorb(agent, state, experience: dict, hops: int, like: NodeContext, config: SharingConfig,
           now_ms: Optional[int] = None) -> float:
    """Add a peer's experience to the receiving node's bandit; returns the weight it got.

    Experience is aged like the node's own evidence: discounted by the bandit's γ per decision epoch
    between its release and ``now_ms`` (by default the receiver's last decision), which matters for
    records replayed from a group's archive to a node that joins (`GroupArchive`)."""
    c = agent.config.constraints
    bucket = (experience["temp_level"], experience["load_level"], experience["power_capped"], experience["congested"])
    try:
        arm = agent.arm_by_name(experience["arm"])
    except KeyError:
        return 0.0  # an arm this workflow does not have (another zoo): nothing to learn
    cached = like is state.last_context
    phi = state.peer_features.get(bucket) if cached else None
    if phi is None:
        ctx = bucket_context(bucket, like, c.max_latency_ms, c.max_gpu_temp_c)
        phi, _, _ = agent.featurizer.features(ctx, state.thermal.r_c_per_w())
        if cached:  # many peers' experience falls in few buckets: translate each once per decision
            state.peer_features[bucket] = phi
    n = experience["count"]
    noise_var = 2.0 * experience["noise_scale"] ** 2
    weight = (config.peer_weight * similarity(bucket, like.bucket(c), config.similarity_scale)
              * config.hop_decay ** max(hops - 1, 0) * n / (1.0 + n * noise_var / config.reward_variance))
    now_ms = state.last_decision_ms if now_ms is None else now_ms
    if now_ms is not None and experience.get("ts_ms") is not None:
        age_epochs = max(now_ms - experience["ts_ms"], 0) / 1000.0 / agent.config.epoch_s
        weight *= agent.config.gamma ** age_epochs
    if weight > 1e-6:
        state.bandit.learn_one(phi[arm], experience["reward"], weight)
    return weight


@dataclass
class GroupArchive(Versioned):
    """A group's most recent released experience, replayed to a node when it joins.

    Replaying a release costs no privacy: it is post-processing of an output
    that was already ε-DP (Dwork & Roth 2014, Prop. 2.1), so a newcomer can
    start from its group's experience instead of only what is released after
    it joined. Bounded: the ``size`` most recent records.
    """

    STATE_VERSION: ClassVar[int] = 1

    size: int = 500
    recent: deque = None
    version: int = STATE_VERSION

    def __post_init__(self):
        if self.recent is None:
            self.recent = deque(maxlen=self.size)

    def add(self, experience: dict) -> None:
        self.recent.append(experience)

    def records(self) -> list[dict]:
        return list(self.recent)
