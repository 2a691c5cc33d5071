"""A discounted linear UCB bandit in numpy, with mergeable sufficient statistics.

The reward of arm a in context x is modelled as θ·φ(x, a) with one shared θ,
so what is learnt about one arm carries to arms with similar features. The
sufficient statistics are the Gram matrix Σ w φφᵀ and the moment Σ w φ r
(`LinearStats`); both are sums, so two learners' statistics merge by adding
them, which is what peers and Bytewax snapshots need. Discounting both by γ
at every decision forgets old evidence geometrically (D-LinUCB), which keeps
the estimate tracking a non-stationary node: the effective memory is about
1 / (1 − γ) decisions.

>>> import numpy as np
>>> bandit = DiscountedLinUCB(dim=2, gamma=1.0, alpha=0.0)
>>> arms = np.eye(2)                      # two arms, one feature each
>>> for _ in range(20):
...     bandit.tick()
...     bandit.learn_one(arms[0], 0.2)
...     bandit.learn_one(arms[1], 0.8)
>>> int(np.argmax(bandit.ucb(arms))), [round(float(v), 2) for v in bandit.predict(arms)]
(1, [0.19, 0.76])

References
----------
Russac, Vernade, Cappé (2019). Weighted linear bandits for non-stationary
environments. NeurIPS. Li, Chu, Langford, Schapire (2010). A contextual-bandit
approach to personalized news article recommendation. WWW.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from numba import njit
from scipy.linalg.blas import dtrsm as _trsm
from scipy.linalg.lapack import dpotrf as _potrf, dpotrs as _potrs

from schemas.state import Versioned


# The updates and the bounds are compiled (numba): at 39 features a NumPy or BLAS call costs more in its
# wrapper than in its arithmetic, and one kernel call replaces several. cache=True keeps the machine code
# in __pycache__ (or numba's user cache when that is read-only), so a process compiles them once.

@njit(cache=True, nogil=True)
def _add_outer(gram: np.ndarray, moment: np.ndarray, phi: np.ndarray, weight: float, weighted_reward: float) -> None:
    """gram += (w·φ)φᵀ and moment += (w·r)·φ, in place: each element as NumPy's in-place sum of those
    products computes it, so to the last bit (tests/test_bandit.py checks it)."""
    d = phi.shape[0]
    for i in range(d):
        wi = weight * phi[i]
        for j in range(d):
            gram[i, j] += wi * phi[j]
        moment[i] += weighted_reward * phi[i]


@njit(cache=True, nogil=True)
def _scale(gram: np.ndarray, moment: np.ndarray, factor: float) -> None:
    """gram *= factor and moment *= factor, in place (the same products as NumPy's)."""
    d = moment.shape[0]
    for i in range(d):
        for j in range(d):
            gram[i, j] *= factor
        moment[i] *= factor


@dataclass
class LinearStats(Versioned):
    """Σ w φφᵀ, Σ w φ r and Σ w: additive, so statistics from several sources merge by summing.

    >>> a, b = LinearStats.zeros(2), LinearStats.zeros(2)
    >>> a.add(np.array([1.0, 0.0]), 1.0); b.add(np.array([0.0, 1.0]), 0.5)
    >>> a.merge(b).moment.tolist(), a.merge(b).count
    ([1.0, 0.5], 2.0)
    """

    STATE_VERSION: ClassVar[int] = 1

    gram: np.ndarray
    moment: np.ndarray
    count: float = 0.0
    version: int = STATE_VERSION

    @classmethod
    def zeros(cls, dim: int) -> "LinearStats":
        return cls(np.zeros((dim, dim)), np.zeros(dim))

    def add(self, phi: np.ndarray, reward: float, weight: float = 1.0) -> None:
        _add_outer(self.gram, self.moment, phi, weight, weight * reward)
        self.count += weight

    def add_rows(self, rows: np.ndarray, weights: np.ndarray, weighted_rewards: np.ndarray) -> None:
        """Add many rows at once: Σ w φφᵀ, Σ (w·r) φ and Σ w over the rows (``weighted_rewards`` = w·r)."""
        self.gram += (rows * weights[:, None]).T @ rows
        self.moment += weighted_rewards @ rows
        self.count += float(weights.sum())

    def discount(self, gamma: float) -> None:
        if gamma < 1.0:
            _scale(self.gram, self.moment, gamma)
            self.count *= gamma

    def merge(self, other: "LinearStats", weight: float = 1.0) -> "LinearStats":
        """A new statistics object holding both (``other`` scaled by ``weight``)."""
        return LinearStats(self.gram + weight * other.gram, self.moment + weight * other.moment,
                           self.count + weight * other.count)

    def to_dict(self) -> dict:
        return {"gram": self.gram.tolist(), "moment": self.moment.tolist(), "count": self.count,
                "version": self.version}

    @classmethod
    def from_dict(cls, data: dict) -> "LinearStats":
        restored = cls.__new__(cls)
        restored.__setstate__({"gram": np.asarray(data["gram"], dtype=float),
                               "moment": np.asarray(data["moment"], dtype=float),
                               "count": float(data["count"]), "version": data.get("version", 1)})
        return restored


@functools.lru_cache(maxsize=8)
def _ridge_identity(dim: int, ridge: float) -> np.ndarray:
    """λI, built once per (dim, λ) and read-only: V = gram + λI adds 0.0 off the diagonal, which leaves
    every element of the gram as it is (its entries are sums of products, never −0.0)."""
    identity = ridge * np.eye(dim)
    identity.flags.writeable = False
    return identity


@njit(cache=True, nogil=True)
def _factored_bounds(factor: np.ndarray, moment: np.ndarray, coords: np.ndarray, basis: np.ndarray,
                     alpha: float, rows: np.ndarray) -> np.ndarray:
    """`DiscountedLinUCB.ucb_factored` after the factorisation: the forward substitution
    Y = L⁻¹[basis | moment] (``factor``'s lower triangle is L), G = YᵀY, and each row's
    c·G[:m, m] + α·sqrt(cᵀ G[:m, :m] c), for the rows where ``rows`` is true (−∞ elsewhere).

    Not to the last bit of BLAS's triangular solve and products, which sum in their own order: the
    bounds agree with `DiscountedLinUCB.ucb` to ~1e-15 (tests/test_bandit.py).
    """
    d, m = basis.shape
    y = np.empty((d, m + 1))
    for i in range(d):
        y[i, :m] = basis[i]
        y[i, m] = moment[i]
        for k in range(i):
            lik = factor[i, k]
            for c in range(m + 1):
                y[i, c] -= lik * y[k, c]
        inverse = 1.0 / factor[i, i]
        for c in range(m + 1):
            y[i, c] *= inverse
    gram = np.zeros((m + 1, m + 1))
    for k in range(d):
        for a in range(m + 1):
            yka = y[k, a]
            for b in range(m + 1):
                gram[a, b] += yka * y[k, b]
    n = coords.shape[0]
    bounds = np.full(n, -np.inf)
    row = np.empty(m + 1)
    for r in range(n):
        if not rows[r]:
            continue
        row[:] = 0.0
        for a in range(m):
            ca = coords[r, a]
            for b in range(m + 1):
                row[b] += ca * gram[a, b]
        var = 0.0
        for b in range(m):
            var += row[b] * coords[r, b]
        # |Yc|² from the Gram matrix: rounding can leave it a hair below 0 where it is 0
        bounds[r] = row[m] + alpha * np.sqrt(var if var > 0.0 else 0.0)
    return bounds


@dataclass
class DiscountedLinUCB(Versioned):
    """Discounted linear UCB over a shared feature map.

    Parameters
    ----------
    dim
        Length of the feature vectors φ(x, a).
    gamma
        Discount per decision (`tick`); 1 for a stationary problem.
    ridge
        Prior precision λ: the estimate is (Σ w φφᵀ + λI)⁻¹ Σ w φ r.
    alpha
        Width of the confidence bonus, in standard deviations.

    Examples
    --------
    >>> bandit = DiscountedLinUCB(dim=3)
    >>> bandit.learn_one(np.array([1.0, 0.0, 0.5]), 0.7)
    >>> phi = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.0]])
    >>> mean, width = bandit.predict(phi), bandit.width(phi)
    >>> bool(width[1] > width[0]), bool(mean[0] > mean[1])    # the untried arm is less certain
    (True, True)
    """

    STATE_VERSION: ClassVar[int] = 1

    dim: int
    gamma: float = 0.99
    ridge: float = 1.0
    alpha: float = 0.5
    stats: LinearStats = None
    version: int = STATE_VERSION
    _cache: tuple = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if self.stats is None:
            self.stats = LinearStats.zeros(self.dim)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_cache"] = None  # derived: recomputed after a restore
        return state

    def tick(self) -> None:
        """One decision has passed: age all evidence by γ."""
        self.stats.discount(self.gamma)
        self._cache = None

    def learn_one(self, phi: np.ndarray, reward: float, weight: float = 1.0) -> None:
        self.stats.add(np.asarray(phi, dtype=float), float(reward), weight)
        self._cache = None

    def learn_rows(self, rows: np.ndarray, weights: np.ndarray, weighted_rewards: np.ndarray) -> None:
        """`learn_one` for each row at once (row i with weight ``weights[i]`` and reward
        ``weighted_rewards[i] / weights[i]``): one product for the Gram matrix, not one outer product per row."""
        self.stats.add_rows(rows, weights, weighted_rewards)
        self._cache = None

    def absorb(self, stats: LinearStats, weight: float = 1.0) -> None:
        """Add another learner's statistics (a peer's, or a shard's), scaled by ``weight``."""
        self.stats = self.stats.merge(stats, weight)
        self._cache = None

    def _factor(self) -> np.ndarray:
        """Lower Cholesky factor L of V = Σ w φφᵀ + λI, cached until the statistics change.

        V is symmetric positive definite (λ > 0), so a Cholesky factorisation
        replaces the explicit inverse: on 39 features LAPACK's ``dpotrf`` costs a
        fraction of ``np.linalg.inv`` and of its per-call checks, once per decision.
        """
        if self._cache is None:
            v = self.stats.gram + _ridge_identity(self.dim, self.ridge)   # one addition into a new array
            # V is symmetric: its transpose is V in Fortran order, which LAPACK factors in place (no copy)
            # positional arguments (lower, no clean, overwrite): f2py parses keywords slower. Only the lower
            # triangle is the factor; the upper one keeps V's, which every use here (lower=1) never reads
            factor, info = _potrf(v.T, 1, 0, 1)
            if info != 0:  # not positive definite: only from corrupt statistics
                raise np.linalg.LinAlgError(f"bandit statistics are not positive definite (dpotrf info {info})")
            self._cache = (factor, None)
        return self._cache[0]

    def _solve(self) -> tuple[np.ndarray, np.ndarray]:
        """(θ = V⁻¹ Σ w φ r, the factor L), cached until the statistics change."""
        factor = self._factor()
        theta = self._cache[1]
        if theta is None:
            theta, _ = _potrs(factor, self.stats.moment, lower=1)
            self._cache = (factor, theta)
        return theta, factor

    def predict(self, phi: np.ndarray) -> np.ndarray:
        """Estimated reward of each row of ``phi``."""
        theta, _ = self._solve()
        return np.asarray(phi) @ theta

    def width(self, phi: np.ndarray) -> np.ndarray:
        """Confidence width sqrt(φᵀ V⁻¹ φ) of each row: the norm of L⁻¹φ."""
        _, factor = self._solve()
        phi = np.atleast_2d(np.asarray(phi, dtype=float))
        solved = _trsm(1.0, factor, phi.T, lower=1)
        return np.sqrt((solved * solved).sum(axis=0))

    def ucb(self, phi: np.ndarray) -> np.ndarray:
        """Upper confidence bound θ·φ + α·sqrt(φᵀ V⁻¹ φ) of each row of ``phi``.

        One triangular solve serves both terms: with y = L⁻¹φ and z = L⁻¹ Σ w φ r,
        θ·φ = z·y and φᵀ V⁻¹ φ = y·y, so the arms' bounds cost one BLAS call on
        [Φᵀ | Σ w φ r] after the factorisation, not a solve for θ and another for the widths.
        """
        factor = self._factor()
        phi = np.atleast_2d(np.asarray(phi, dtype=float))
        # rows: the arms, then the moment; transposed, the columns solved for, in place (Fortran order).
        # BLAS's dtrsm is what LAPACK's dtrtrs calls after checking the diagonal for zeros, which a
        # factor from a successful dpotrf cannot have.
        solved = _trsm(1.0, factor, np.concatenate((phi, self.stats.moment[None, :])).T, lower=1, overwrite_b=1)
        y = solved[:, :-1]
        return solved[:, -1] @ y + self.alpha * np.sqrt(np.einsum("ij,ij->j", y, y))

    def ucb_factored(self, coords: np.ndarray, basis: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """`ucb` of the rows φ = coords · basisᵀ (coords n × m, basis dim × m): many rows in few directions.

        Only the rows where the boolean mask ``rows`` is true (all without one); the others' bounds
        are −∞, so the bounds' argmax is the best of those rows.

        With Y = L⁻¹·basis and z = L⁻¹ Σ w φ r, θ·φ = (Yᵀz)·c and φᵀ V⁻¹ φ = cᵀ(YᵀY)c, so the
        triangular solve is for the m basis columns, not for the n rows: the agent's Φ has 61 arms
        in 9 directions, and the solve for ~50 allowed arms' columns was the largest single cost of
        a decision. YᵀY and Yᵀz are one Gram matrix of [Y | z].
        """
        if rows is None:
            rows = np.ones(len(coords), dtype=bool)
        return _factored_bounds(self._factor(), self.stats.moment, coords, basis, self.alpha, rows)
