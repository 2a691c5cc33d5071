"""The NAB benchmark's selection rules: nested maximin inside the tuning fold, and its sub-folds."""

from __future__ import annotations

import math

import pytest

from prediction.nab import CorpusScore, category, fold_of


@pytest.fixture()
def bench(bench_script):
    return bench_script("nab")


def _score(value: float) -> CorpusScore:
    return CorpusScore(value, 0.5, 0.0, 0, 1, 0)


def _trial(bench, name, fold_a, sub_a, sub_b):
    """A setting with score ``fold_a`` on fold A and the given scores on A's two sub-folds."""
    by_sub = {("A", "A"): _score(sub_a), ("A", "B"): _score(sub_b)}
    return bench.Trial({"name": name}, [], {"A": _score(fold_a), "B": _score(0.0)}, by_sub)


def test_maximin_prefers_a_setting_good_on_both_halves_to_a_lone_peak(bench):
    peak = _trial(bench, "peak", 80.0, 90.0, 66.0)       # best on the whole fold, thanks to one half
    steady = _trial(bench, "steady", 76.0, 75.0, 77.0)
    table = [peak, steady]
    assert bench.select_argmax(table, "A") is peak
    assert bench.select_maximin(table, "A") is steady


def test_maximin_breaks_ties_by_the_whole_fold_and_ignores_sub_folds_without_windows(bench):
    low = _trial(bench, "low", 70.0, 72.0, 75.0)
    high = _trial(bench, "high", 74.0, 72.0, 79.0)
    assert bench.select_maximin([low, high], "A") is high
    # A sub-fold with no window has no score (NaN): the other sub-fold decides.
    nan_a = _trial(bench, "nan_a", 60.0, math.nan, 90.0)
    nan_b = _trial(bench, "nan_b", 65.0, math.nan, 85.0)
    assert nan_a.worse_sub_score("A") == 90.0
    assert bench.select_maximin([nan_a, nan_b], "A") is nan_a


def test_sub_folds_split_each_fold_by_category_and_depend_on_names_only(bench):
    names = [f"{cat}/s{i}.csv" for cat, n in (("realTweets", 10), ("realTraffic", 7), ("realAdExchange", 6))
             for i in range(n)]

    class File:
        def __init__(self, name):
            self.name = name

    folds = bench.Folds([File(n) for n in names])
    for fold in ("A", "B"):
        members = folds.names(fold)
        assert sorted(folds.sub_names(fold, "A") + folds.sub_names(fold, "B")) == sorted(members)
        assert folds.sub_fold == {**folds.sub_fold, **fold_of(members)}
        for cat in {category(n) for n in members}:
            subs = [folds.sub_fold[n] for n in members if category(n) == cat]
            assert subs.count("A") - subs.count("B") in (0, 1), (fold, cat, subs)
