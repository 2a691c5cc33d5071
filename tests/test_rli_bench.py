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
