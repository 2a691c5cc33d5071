"""Peer learning: a node that joins catches up on its group's archive, aged experience, evidence-driven ε."""

import pickle

import pytest

from morph.agent import RliAgent
from morph.arms import ArmSet
from morph.peers import GroupArchive, SharingConfig, absorb
from operators.events import Event
from operators.peers import PeerGroup
from schemas.state import StateVersionError

ARMS = ArmSet.nominal()


def sample(node="edge-1", ts_ms=0, temp=70.0, power=250.0, **kw):
    return {"node_id": node, "ts_ms": ts_ms, "gpu_temp_c": temp, "power_w": power, "power_cap_w": 350.0,
            "mem_used_frac": 0.4, "throughput_rps": 300.0, "gpu_util": 0.8, "latency_ms": 12.0,
            "variant": "transformer", "precision": "fp32", "batch_size": 8, **kw}


def experience(origin, n, arm="cnn/fp32/b8", reward=0.8, ts_ms=0, bucket=(0, 1, 0, 0)):
    t, load, power, congested = bucket
    return {"experience_id": f"{origin}-{n}", "origin_node": origin, "group": "g0", "ts_ms": ts_ms,
            "temp_level": t, "load_level": load, "power_capped": power, "congested": congested, "arm": arm,
            "reward": reward, "count": 1, "noise_scale": 0.0, "epsilon": None, "ttl": 3, "hops": 0}


def event(record):
    return Event("Experience", record, "liquid.experience", 0, 0)


def test_a_node_joining_a_group_is_sent_the_archive_of_its_peers_releases():
    group = PeerGroup()
    for i in range(5):
        group.forward(event(experience("a", i)))
        group.forward(event(experience("b", i)))
    out = group.forward(event(experience("c", 0)))
    to_c = [e.record for m, e in out if m == "c"]
    assert sorted(r["experience_id"] for r in to_c) == sorted(f"{o}-{i}" for o in "ab" for i in range(5))
    assert all(r["hops"] == 1 and r["ttl"] == 2 for r in to_c)
    assert sorted(m for m, _ in out if m != "c") == ["a", "b"]       # c's own release goes to the others
    again = group.forward(event(experience("c", 1)))                 # a member is caught up once
    assert sorted(m for m, _ in again) == ["a", "b"]


def test_the_archive_keeps_only_the_most_recent_releases():
    archive = GroupArchive(size=3)
    for i in range(10):
        archive.add(experience("a", i))
    assert [r["experience_id"] for r in archive.records()] == ["a-7", "a-8", "a-9"]


def test_a_version_1_peer_group_snapshot_migrates_and_a_newer_one_is_refused():
    old = PeerGroup.__new__(PeerGroup)
    old.__setstate__({"members": {"a"}, "seen": {"a-0": None}, "version": 1})
    assert old.version == 2 and old.archive.records() == []
    out = old.forward(event(experience("b", 0)))
    assert [m for m, _ in out] == ["a"]
    restored = pickle.loads(pickle.dumps(old))
    assert [r["experience_id"] for r in restored.archive.records()] == ["b-0"]
    with pytest.raises(StateVersionError):
        PeerGroup.__new__(PeerGroup).__setstate__({"members": set(), "seen": {}, "version": 3})


def test_old_experience_weighs_less_than_fresh_experience():
    agent = RliAgent(ARMS)
    state = agent.new_state("edge-2")
    d = agent.decide(state, sample(node="edge-2", ts_ms=3_600_000))
    fresh = absorb(agent, state, experience("a", 0, ts_ms=3_600_000), 1, d.context, SharingConfig())
    old = absorb(agent, state, experience("a", 1, ts_ms=3_600_000 - 2_000_000), 1, d.context, SharingConfig())
    epochs = 2_000_000 / 1000 / agent.config.epoch_s
    assert old == pytest.approx(fresh * agent.config.gamma ** epochs)


def test_a_newcomer_that_absorbed_its_peers_experience_explores_less_and_prefers_what_they_found():
    agent = RliAgent(ARMS)
    alone, caught_up = agent.new_state("edge-3"), agent.new_state("edge-3")
    d = agent.decide(alone, sample(node="edge-3"))
    agent.decide(caught_up, sample(node="edge-3"))
    good, bad = "mobilenet/fp16/b8", "transformer/fp32/b8"
    for i in range(100):
        for arm, r in ((good, 0.9), (bad, 0.3)):
            absorb(agent, caught_up, experience("a", i, arm=arm, reward=r, bucket=d.bucket), 1, d.context,
                   SharingConfig())
    agent.fold_peers(caught_up)   # what its next decision does first
    assert agent.exploration(caught_up) < 0.5 * agent.exploration(alone)
    phi, _, _ = agent.featurizer.features(d.context, caught_up.thermal.r_c_per_w())
    g, b = agent.arm_by_name(good), agent.arm_by_name(bad)
    assert caught_up.bandit.predict(phi[[g, b]]).tolist() == pytest.approx([0.9, 0.3], abs=0.1)


def test_experience_summed_until_the_next_decision_is_what_learning_each_record_at_once_gives():
    """Deferred (the receiver's last context: the flow's case) and immediate (any other context object)
    absorption end with the same statistics, and the pending sums survive a snapshot."""
    import copy

    import numpy as np

    agent = RliAgent(ARMS)
    deferred, immediate = agent.new_state("edge-4"), agent.new_state("edge-4")
    d = agent.decide(deferred, sample(node="edge-4", ts_ms=60_000))
    agent.decide(immediate, sample(node="edge-4", ts_ms=60_000))
    buckets, arms = [(0, 1, 0, 0), (1, 2, 0, 0), (0, 0, 1, 1)], ["cnn/fp32/b8", "mobilenet/fp16/b8", "snn/int8/b8"]
    records = [experience("a", i, arm=arms[i % 3], reward=0.2 + 0.07 * (i % 9), ts_ms=1_000 * i,
                          bucket=buckets[i % 4 % 3]) for i in range(60)]
    count_before = deferred.bandit.stats.count
    for i, r in enumerate(records):
        w1 = absorb(agent, deferred, r, 1 + i % 3, d.context, SharingConfig())
        w2 = absorb(agent, immediate, r, 1 + i % 3, copy.copy(d.context), SharingConfig())
        assert w1 == w2 > 0
    assert deferred.bandit.stats.count == count_before < immediate.bandit.stats.count   # not learnt yet
    restored = pickle.loads(pickle.dumps(deferred))
    for state in (deferred, restored):
        agent.fold_peers(state)
        np.testing.assert_allclose(state.bandit.stats.gram, immediate.bandit.stats.gram, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(state.bandit.stats.moment, immediate.bandit.stats.moment, rtol=1e-12, atol=1e-12)
        assert state.bandit.stats.count == pytest.approx(immediate.bandit.stats.count) and not state.peer_pending


def test_a_version_1_agent_snapshot_restores_without_its_feature_cache():
    agent = RliAgent(ARMS)
    state = agent.new_state("edge-5")
    agent.decide(state, sample(node="edge-5"))
    v1 = {**state.__dict__, "version": 1, "peer_features": {(0, 1, 0, 0): "a version 1 Φ"}}
    restored = type(state).__new__(type(state))
    restored.__setstate__(v1)
    assert restored.version == 2 and restored.peer_pending == {} and not hasattr(restored, "peer_features")
    assert agent.decide(restored, sample(node="edge-5", ts_ms=10_000)) is not None
