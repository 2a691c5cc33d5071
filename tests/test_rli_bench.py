"""bench/rli.py's cold start: the oracle run on the newcomers alone, independent cohorts pooled."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from morph.agent import RliConfig
from morph.arms import ArmSet

ARMS = ArmSet.nominal()
SECONDS, HORIZON = 900, 12


@pytest.fixture()
def bench(bench_script):
    return bench_script("rli")


def _args(**kw):
    return argparse.Namespace(**{"seed": 2, "cold_nodes": 6, "horizon": HORIZON, "epsilon": 1.0, "dp_window": 20,
                                 "group_size": 50, "cohorts": 1, **kw})


def test_the_oracle_on_the_newcomers_alone_gives_the_whole_fleets_rows(bench):
    config = RliConfig(seed=2)
    specs = bench.fleet_specs(2, 6, SECONDS)
    join, newcomers = bench.join_times(2, 6, SECONDS, HORIZON, config.epoch_s)
    whole = bench.simulate("oracle", specs, ARMS, config, SECONDS, join_s=join)
    alone = bench.oracle_newcomers(specs, join, newcomers, ARMS, config, SECONDS, HORIZON)
    assert alone.rewards.shape[0] == len(newcomers) == 3
    np.testing.assert_array_equal(alone.rewards[:, :HORIZON], whole.rewards[newcomers, :HORIZON])
    np.testing.assert_array_equal(alone.floor[:, :HORIZON], whole.floor[newcomers, :HORIZON])
    assert np.isfinite(alone.rewards[:, :HORIZON]).all()


def test_cohorts_pool_independent_fleets_and_the_first_is_the_runs_own(bench):
    one = bench.cold_start(_args(), ARMS, RliConfig(seed=2), SECONDS)
    three = bench.cold_start(_args(cohorts=3), ARMS, RliConfig(seed=2), SECONDS)
    assert set(three) == {"rli", "rli+peers", "rli+peers+dp", "oracle", "random"}
    for name, curve in one.items():
        assert curve.shape == (3, HORIZON) and three[name].shape == (9, HORIZON)
        np.testing.assert_array_equal(three[name][:3], curve)            # cohort 0: the single-fleet protocol
    assert not np.array_equal(three["oracle"][3:6], three["oracle"][6:9])  # fleets of their own
    seeds = {bench.cohort_seed(s, c) for s in range(12) for c in range(8)}
    assert len(seeds) == 96 and not seeds & {s + 1000 for s in range(12)}


def test_marking_notes_the_time_before_every_segments_first_item(bench, monkeypatch):
    monkeypatch.setattr(bench, "SEGMENT", 3)
    marks = []
    assert list(bench._marking(list(range(10)), marks)) == list(range(10))
    assert len(marks) == 4   # before items 0, 3, 6 and 9
    assert all(later >= earlier for earlier, later in zip(marks, marks[1:]))


def test_the_flow_rate_of_each_segments_fastest_run_is_at_least_its_best_whole_runs(bench, monkeypatch):
    monkeypatch.setattr(bench, "SEGMENT", 20)
    rate = bench.flow_rate(None, seed=3, nodes=3, seconds=40, pairs=2)
    assert rate["events"] == 120 and len(rate["pair_ratios"]) == 2
    for name in ("rules", "rli"):
        # a sum of per-segment minima over the runs is at most any run's own sum
        assert rate[name] >= rate[f"{name}_best_run"] * (1 - 1e-9) > 0
        assert rate[f"{name}_cpu"] > 0
    assert rate["rli_commands"] > 0 and rate["rules_commands"] >= 0
    figures = bench.flow_figures(rate)
    assert figures["events_per_s_ratio"] == round(rate["rli"] / rate["rules"], 3)
