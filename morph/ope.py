"""Off-policy evaluation: a candidate morph policy's value, estimated from logged decisions.

Each logged decision holds the context the agent saw, the arms the shield
allowed, the arm chosen, the probability it was chosen with (its propensity)
and the reward measured afterwards. A candidate policy maps a logged decision
to an arm. Estimators of its value (the mean reward it would have earned on
these contexts):

* IPS: mean of 1[a = π(x)] · r / p — unbiased when every arm the candidate
  picks had a positive propensity, but noisy with many arms;
* SNIPS: the same, normalised by the mean importance weight;
* doubly robust: a reward model r̂(x, a) (ridge regression on the logged
  features) predicts every arm, and the importance-weighted residual corrects
  its bias: mean of r̂(x, π(x)) + 1[a = π(x)] (r − r̂(x, a)) / p.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> logs = []
>>> for _ in range(4000):
...     x = rng.uniform(0, 1)
...     phi = np.array([[1.0, x, 0.0, 0.0], [0.0, 0.0, 1.0, x]])       # arm 0 earns x, arm 1 earns 1 - x
...     a = int(rng.random() < 0.5)
...     r = (x if a == 0 else 1 - x) + rng.normal(0, 0.05)
...     logs.append(LoggedDecision(phi, np.array([True, True]), a, 0.5, r))
>>> best = lambda d: 0 if d.phi[0, 1] > 0.5 else 1                  # the candidate: the better arm
>>> true_value = 0.75
>>> abs(ips(logs, best) - true_value) < 0.03, abs(doubly_robust(logs, best) - true_value) < 0.02
(True, True)

References
----------
Dudík, Langford, Li (2011). Doubly robust policy evaluation and learning. ICML.
Swaminathan, Joachims (2015). The self-normalized estimator for counterfactual learning. NeurIPS.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from morph.context import Featurizer, NodeContext


@dataclass
class LoggedDecision:
    """One logged decision: features of every arm, the shield's mask, the arm, its propensity, its reward."""

    phi: np.ndarray
    safe: np.ndarray
    arm: int
    propensity: float
    reward: float


Policy = Callable[[LoggedDecision], int]


def _matches(logs: list[LoggedDecision], policy: Policy) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    chosen = np.array([policy(d) for d in logs])
    logged = np.array([d.arm for d in logs])
    weights = (chosen == logged) / np.array([d.propensity for d in logs])
    return chosen, weights, np.array([d.reward for d in logs])


def ips(logs: list[LoggedDecision], policy: Policy) -> float:
    """Inverse propensity score estimate of ``policy``'s mean reward."""
    _, w, r = _matches(logs, policy)
    return float(np.mean(w * r))


def snips(logs: list[LoggedDecision], policy: Policy) -> float:
    """Self-normalised IPS."""
    _, w, r = _matches(logs, policy)
    return float(np.sum(w * r) / max(np.sum(w), 1e-12))


def fit_reward_model(logs: list[LoggedDecision], ridge: float = 1.0) -> np.ndarray:
    """θ of the direct-method reward model r̂(x, a) = θ·φ(x, a), by ridge regression on the logs."""
    phis = np.array([d.phi[d.arm] for d in logs])
    r = np.array([d.reward for d in logs])
    return np.linalg.solve(phis.T @ phis + ridge * np.eye(phis.shape[1]), phis.T @ r)


def doubly_robust(logs: list[LoggedDecision], policy: Policy, ridge: float = 1.0, folds: int = 2) -> float:
    """Doubly robust estimate; the reward model is cross-fitted (trained on the other folds)."""
    chosen, w, r = _matches(logs, policy)
    n = len(logs)
    idx = np.arange(n) % folds
    total = 0.0
    for f in range(folds):
        train = [d for d, k in zip(logs, idx) if k != f] if folds > 1 else logs
        theta = fit_reward_model(train, ridge)
        for i in np.flatnonzero(idx == f):
            d = logs[i]
            direct = float(d.phi[chosen[i]] @ theta)
            total += direct + w[i] * (r[i] - float(d.phi[d.arm] @ theta))
    return float(total / n)


def direct_method(logs: list[LoggedDecision], policy: Policy, ridge: float = 1.0) -> float:
    """The reward model's estimate alone (biased where the model is wrong)."""
    theta = fit_reward_model(logs, ridge)
    return float(np.mean([d.phi[policy(d)] @ theta for d in logs]))


def log_record(decision, reward: float) -> dict:
    """A decision and the reward measured after it, as one JSON-able log line."""
    ctx = {k: v for k, v in asdict(decision.context).items() if k not in ("current", "recent_temps")}
    arms = decision.context.current, decision.arm
    return {"node_id": decision.node_id, "ts_ms": decision.ts_ms, "context": ctx, "current": arms[0].name,
            "thermal_r": decision.thermal_r, "safe": [bool(x) for x in decision.safe], "arm": arms[1].name,
            "propensity": decision.propensity, "reward": reward}


def from_log_record(record: dict, featurizer: Featurizer, arm_index: dict[str, int]) -> LoggedDecision:
    """The `LoggedDecision` of a log line, its features recomputed for the arm set of ``featurizer``."""
    ctx = NodeContext(**record["context"], current=featurizer.arms[arm_index[record["current"]]])
    phi, _, _ = featurizer.features(ctx, record["thermal_r"])
    return LoggedDecision(phi, np.asarray(record["safe"], dtype=bool), arm_index[record["arm"]],
                          float(record["propensity"]), float(record["reward"]))
