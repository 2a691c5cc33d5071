"""bench/resilience.py's agent settings: the completion price and its dual ascent reach the fleet's learner."""

from __future__ import annotations


import pytest

from edge.faults import FaultScenario, FaultSimulator
from prediction.recovery import QRecoveryAgent


@pytest.fixture()
def bench(bench_script):
    return bench_script("resilience")


def _fleet(bench, **kw):
    sim = FaultSimulator(FaultScenario("congestion", congestion={"edge-2": (600.0, 120.0)}), 0, 3600.0)
    return bench.AgentFleet(sim, sim.indicators(0.0, 3600.0), 0, explore=0.3, **kw)


def test_the_fleet_takes_the_agents_price_by_default_and_the_flags_otherwise(bench):
    agent = _fleet(bench).agent
    assert (agent.completion_price, agent.price_rate) == (QRecoveryAgent.completion_price, QRecoveryAgent.price_rate)
    agent = _fleet(bench, completion_price=2.0, price_rate=5.0).agent
    assert (agent.completion_price, agent.price_rate) == (2.0, 5.0)


def test_the_price_rate_moves_the_fleets_price_only_when_set(bench):
    # a state where the policy gives up and the retrier's own action completes: a completion shortfall
    s = "a-i|TIMEOUT|1|*|1|0|*|*"
    for rate, moved in ((0.0, False), (5.0, True)):
        agent = _fleet(bench, price_rate=rate).agent
        for _ in range(10):
            agent.learn_transition(s, "FAIL", -1.0, None, 0.0)
            agent.learn_transition(s, "RETRY 1s", -3.0, None, 1.0)
        agent.policy("wf")
        assert (agent.completion_price > QRecoveryAgent.completion_price) is moved
