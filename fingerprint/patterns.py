"""Recurring patterns in a window of runs: frequent contiguous task sequences and run variants.

Runs are read as the order their tasks started in. A pattern's *support* is the
share of runs that contain it at least once (so a loop repeating a pattern does
not inflate it); *count* is how many times it occurred in all.

>>> runs = [["a", "b", "c"], ["a", "b", "d"], ["a", "b", "c"], ["x"]]
>>> [(p.tasks, p.support) for p in frequent_sequences(runs, min_support=0.5, lengths=(2, 3))]
[(('a', 'b'), 0.75), (('a', 'b', 'c'), 0.5), (('b', 'c'), 0.5)]
>>> variants(runs)[0]
Pattern(tasks=('a', 'b', 'c'), support=0.5, count=2)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence


@dataclass(frozen=True)
class Pattern:
    """A task sequence with the share of runs containing it and its total occurrences."""

    tasks: tuple[str, ...]
    support: float
    count: int


def frequent_sequences(runs: Iterable[Sequence[str]], min_support: float = 0.1,
                       lengths: Sequence[int] = (2, 3, 4), top: int | None = 20) -> list[Pattern]:
    """Contiguous n-grams of the given lengths occurring in at least ``min_support`` of the runs.

    Longest-first among equal support is deliberate: a longer pattern with the
    same support says more.
    """
    runs = list(runs)
    if not runs:
        return []
    runs_with: dict[tuple[str, ...], int] = {}
    total: dict[tuple[str, ...], int] = {}
    for seq in runs:
        seen = set()
        for n in lengths:
            for i in range(len(seq) - n + 1):
                gram = tuple(seq[i:i + n])
                total[gram] = total.get(gram, 0) + 1
                seen.add(gram)
        for gram in seen:
            runs_with[gram] = runs_with.get(gram, 0) + 1
    found = [Pattern(g, k / len(runs), total[g]) for g, k in runs_with.items() if k / len(runs) >= min_support]
    found.sort(key=lambda p: (-p.support, -len(p.tasks), p.tasks))
    return found[:top] if top else found


def variants(runs: Iterable[Sequence[str]], top: int | None = 10) -> list[Pattern]:
    """Whole-run sequences (process-mining "variants"), most frequent first."""
    runs = list(runs)
    counts: dict[tuple[str, ...], int] = {}
    for seq in runs:
        key = tuple(seq)
        counts[key] = counts.get(key, 0) + 1
    found = [Pattern(v, c / len(runs), c) for v, c in counts.items()]
    found.sort(key=lambda p: (-p.count, p.tasks))
    return found[:top] if top else found
