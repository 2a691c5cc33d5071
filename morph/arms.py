"""The arms of the learned morph agent: what a node can be told to serve, and what each costs.

An arm is one configuration a node can run: a zoo model (variant × precision),
a batch size, whether repeated or near-duplicate inputs are answered from the
node's result cache, and whether the workflow's optional preprocessing stage
runs. The fallback arm (the lightest variant in int8, batch 1) is always among
them: it is where the safety shield sends a node at the critical temperature.

Each arm carries a profile taken from the zoo manifest, relative to the
heaviest model so a new zoo drops in: dynamic cost (heat and power), the time
per item at its batch size, and accuracy.

>>> arms = ArmSet.nominal(batches=(8,), cache=(False, True), pipelines=("full",))
>>> len(arms), arms.fallback.name
(31, 'snn/int8/b1/fallback')
>>> a = arms.find("cnn", "fp16", 8, cache=True)
>>> a.name, round(arms.profile(a).cost, 3) < round(arms.profile(arms.find("transformer", "fp32", 8)).cost, 3)
('cnn/fp16/b8/cache', True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from edge.thermal import DEFAULT_VARIANT_LATENCY_MS, DEFAULT_VARIANT_POWER, PRECISION_POWER
from morph.ladder import PRECISIONS, VARIANTS

PIPELINES = ("full", "skip-preprocess")
#: The full pipeline with its frames through illumination normalisation (the night shift's
#: drift, `morph.zoo.lighting`): an arm the agent can be given, ``pipelines=PIPELINES + (LIGHTING,)``.
LIGHTING = "illumination-normalisation"


@dataclass(frozen=True)
class Arm:
    """One configuration a node can be told to serve."""

    variant: str
    precision: str
    batch: int
    cache: bool = False
    pipeline: str = "full"
    fallback: bool = False

    @property
    def name(self) -> str:
        extra = ("/cache" if self.cache else "") + {"full": "", LIGHTING: "/normalise"}.get(self.pipeline, "/skip") + \
            ("/fallback" if self.fallback else "")
        return f"{self.variant}/{self.precision}/b{self.batch}{extra}"

    @property
    def preprocessing(self) -> str | None:
        """The requests' preprocessing stage a command for this arm sets (None: leave it)."""
        return LIGHTING if self.pipeline == LIGHTING else None


@dataclass(frozen=True)
class ArmProfile:
    """What an arm costs and delivers, relative to the heaviest model of the zoo.

    ``cost``: dynamic power (heat) relative to the heaviest model at fp32;
    ``item_ms_rel``: time per item at the arm's batch, relative to the heaviest
    fp32 model at batch 1; ``accuracy``: the manifest's held-out accuracy.
    """

    cost: float
    item_ms_rel: float
    accuracy: float


def _per_item(b1_ms: float, b32_ms: float, batch: int) -> float:
    """Time per item at ``batch``, log-interpolated between the measured batch 1 and batch 32."""
    per1, per32 = b1_ms, b32_ms / 32.0
    if batch <= 1 or per32 <= 0 or per1 <= 0:
        return per1
    f = min(math.log(batch) / math.log(32.0), 1.0)
    return per1 * (per32 / per1) ** f


class ArmSet:
    """The arms of one workflow, in a fixed order (an arm's index is its id in statistics)."""

    def __init__(self, arms: list[Arm], profiles: dict[Arm, ArmProfile]):
        if not arms or not any(a.fallback for a in arms):
            raise ValueError("an arm set needs the fallback arm")
        self.arms = tuple(arms)
        self._profiles = profiles
        self.costs: dict = {}  # (variant, precision) -> (cost, b1 ms, b32 ms, accuracy), as built
        self._derived: dict = {}
        self._nearest: dict = {}  # (variant, precision, batch) -> the index `nearest_index` found
        self.sha256: dict = {}  # (variant, precision) -> the model file's sha256, from the manifest
        self._index = {a: i for i, a in enumerate(self.arms)}
        # by identity first: the agent asks with the set's own arm objects, whose (dataclass) hash is computed
        # per call (`index` checks the object found is the one asked about: a copied set keeps stale ids)
        self._index_by_id = {id(a): i for i, a in enumerate(self.arms)}

    def __len__(self) -> int:
        return len(self.arms)

    def __iter__(self):
        return iter(self.arms)

    def __getitem__(self, i: int) -> Arm:
        return self.arms[i]

    def index(self, arm: Arm) -> int:
        i = self._index_by_id.get(id(arm))
        return i if i is not None and self.arms[i] is arm else self._index[arm]

    def profile(self, arm: Arm) -> ArmProfile:
        return self._profiles[arm]

    def profile_of(self, variant: str, precision: str, batch: int) -> ArmProfile:
        """The profile of any (variant, precision, batch) the zoo has, in or out of the arm set."""
        key = (variant, precision, batch)
        if key not in self._derived:
            base_cost, base_ms = self._base
            cost, b1, b32, acc = self.costs[(variant, precision)]
            self._derived[key] = ArmProfile(cost / base_cost, _per_item(b1, b32, batch) / base_ms, acc)
        return self._derived[key]

    @property
    def fallback(self) -> Arm:
        return next(a for a in self.arms if a.fallback)

    def find(self, variant: str, precision: str, batch: int, cache: bool = False,
             pipeline: str = "full") -> Arm:
        arm = Arm(variant, precision, batch, cache, pipeline)
        if arm not in self._index:
            raise KeyError(f"no arm {arm.name}")
        return arm

    def nearest(self, variant: str, precision: str, batch: int | None) -> Arm:
        """The plain arm (no cache, full pipeline) closest to what a node reports serving."""
        return self.arms[self.nearest_index(variant, precision, batch)]

    def nearest_index(self, variant: str, precision: str, batch: int | None) -> int:
        """The index of `nearest`'s arm, remembered per report: the agent asks on every sample while a
        node serves something else than it was told (a refused swap, another controller)."""
        key = (variant, precision, batch)
        found = self._nearest.get(key)
        if found is None:
            plain = [a for a in self.arms if not a.cache and a.pipeline == "full" and not a.fallback
                     and a.variant == variant and a.precision == precision]
            arm = min(plain, key=lambda a: abs(a.batch - (batch or a.batch))) if plain else self.fallback
            found = self._nearest[key] = self._index[arm]
        return found

    @classmethod
    def from_costs(cls, costs: dict[tuple[str, str], tuple[float, float, float, float]],
                   batches=(8,), cache=(False, True), pipelines=PIPELINES) -> "ArmSet":
        """Arms from per-model figures ``(variant, precision) -> (cost, b1_ms, b32_ms, accuracy)``."""
        heaviest = next(k for k in ((v, "fp32") for v in VARIANTS) if k in costs)
        base_cost, base_ms = costs[heaviest][0], costs[heaviest][1]
        arms, profiles = [], {}

        def add(arm: Arm, key: tuple[str, str]):
            cost, b1, b32, acc = costs[key]
            profiles[arm] = ArmProfile(cost / base_cost, _per_item(b1, b32, arm.batch) / base_ms, acc)
            arms.append(arm)

        for v in VARIANTS:
            for p in PRECISIONS:
                if (v, p) not in costs:
                    continue
                for b in batches:
                    for c in cache:
                        for pipe in pipelines:
                            add(Arm(v, p, b, c, pipe), (v, p))
        lightest = next(k for k in ((v, p) for v in reversed(VARIANTS) for p in reversed(PRECISIONS))
                        if k in costs)
        add(Arm(lightest[0], lightest[1], 1, fallback=True), lightest)
        built = cls(arms, profiles)
        built.costs, built._base = dict(costs), (base_cost, base_ms)
        return built

    @classmethod
    def from_manifest(cls, manifest, cost_metric: str = "flops", **kw) -> "ArmSet":
        """Arms from a zoo manifest (`morph.zoo.manifest.ZooManifest`).

        ``cost_metric`` is the entry's field that stands for dynamic power:
        ``flops`` (scaled by the precision's power factor, as the thermal model
        does) or a measured one such as ``cpu_ms``.
        """
        costs = {}
        for e in manifest:
            cost = float(getattr(e, cost_metric))
            if cost_metric == "flops":
                cost *= PRECISION_POWER.get(e.precision, 1.0)
            costs[e.key] = (cost, e.latency_ms_b1, e.latency_ms_b32, e.accuracy)
        built = cls.from_costs(costs, **kw)
        built.sha256 = {e.key: e.sha256 for e in manifest}
        return built

    @classmethod
    def nominal(cls, **kw) -> "ArmSet":
        """Arms from the thermal model's nominal figures, for when no zoo is built."""
        accuracy = {"transformer": 0.99, "lstm": 0.98, "cnn": 0.975, "mobilenet": 0.965, "snn": 0.95}
        costs = {(v, p): (DEFAULT_VARIANT_POWER[v] * PRECISION_POWER[p],
                          DEFAULT_VARIANT_LATENCY_MS[v] * PRECISION_POWER[p] ** 0.5,
                          8.0 * DEFAULT_VARIANT_LATENCY_MS[v] * PRECISION_POWER[p] ** 0.5,
                          accuracy[v] - (0.005 if p == "int8" else 0.0))
                 for v in VARIANTS for p in PRECISIONS}
        return cls.from_costs(costs, **kw)
