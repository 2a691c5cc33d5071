"""The morph ladder: the variants and precisions a node can serve, heaviest first.

Stepping *down* the ladder trades accuracy for heat, power and latency;
stepping *up* buys accuracy back when there is headroom.

>>> ladder = MorphLadder()
>>> ladder.step_down("transformer")
'lstm'
>>> ladder.step_up("lstm")
'transformer'
>>> ladder.step_down("snn"), ladder.step_up("transformer")
('snn', 'transformer')
>>> ladder.lightest
'snn'
"""

from __future__ import annotations

from dataclasses import dataclass

VARIANTS = ("transformer", "lstm", "cnn", "mobilenet", "snn")
PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class MorphLadder:
    """An ordered list of variants, heaviest (most accurate) first."""

    variants: tuple[str, ...] = VARIANTS

    def __post_init__(self):
        unknown = set(self.variants) - set(VARIANTS)
        if unknown or not self.variants:
            raise ValueError(f"ladder must be a non-empty subset of {VARIANTS}; unknown: {sorted(unknown)}")

    @property
    def heaviest(self) -> str:
        return self.variants[0]

    @property
    def lightest(self) -> str:
        return self.variants[-1]

    def rung(self, variant: str) -> int:
        """0 for the heaviest variant; raises ValueError for a variant not on the ladder."""
        try:
            return self.variants.index(variant)
        except ValueError:
            raise ValueError(f"unknown variant {variant!r}; ladder: {', '.join(self.variants)}") from None

    def step_down(self, variant: str) -> str:
        return self.variants[min(self.rung(variant) + 1, len(self.variants) - 1)]

    def step_up(self, variant: str) -> str:
        return self.variants[max(self.rung(variant) - 1, 0)]
