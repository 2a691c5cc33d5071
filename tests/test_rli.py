"""The RLI agent: its shield, its state, peer sharing under differential privacy, off-policy estimates."""

import math
import pickle
import random
import statistics

import numpy as np
import pytest

from edge.heterogeneous import HeteroNode, fleet_specs
from morph.agent import AgentState, RliAgent, RliConfig
from morph.arms import ArmSet
from morph.ope import LoggedDecision, doubly_robust, ips
from morph.peers import ExperienceSharer, PeerNetwork, SharingConfig, absorb
from morph.privacy import LaplaceMechanism, PrivacyBudget
from schemas.codec import Codec
from schemas.state import StateVersionError

ARMS = ArmSet.nominal()


def sample(node="edge-1", ts_ms=0, temp=70.0, power=250.0, variant="transformer", precision="fp32", **kw):
    return {"node_id": node, "ts_ms": ts_ms, "gpu_temp_c": temp, "power_w": power, "power_cap_w": 350.0,
            "mem_used_frac": 0.4, "throughput_rps": 300.0, "gpu_util": 0.8, "latency_ms": 12.0,
            "variant": variant, "precision": precision, "batch_size": 8, **kw}


def test_the_shield_never_lets_the_agent_pick_an_unsafe_arm():
    """Property over random contexts: whatever the agent learnt, its arm is safe by the shield's rules."""
    rng = random.Random(7)
    agent = RliAgent(ARMS, RliConfig(epoch_s=1, epsilon=0.5))
    hot, critical, margin = 85.0, 90.0, agent.config.shield.margin_c
    lightest = ARMS.profile(ARMS.fallback).cost
    for case in range(300):
        state = agent.new_state(f"n{case}")
        # a random past: some learning on random rewards, so the bandit is not neutral
        for _ in range(rng.randrange(0, 6)):
            state.bandit.learn_one(rng.choice(list(np.eye(agent.featurizer.dim))), rng.uniform(-1, 1))
        base = rng.uniform(40, 97)
        current = rng.choice(list(ARMS))
        last = None
        for i in range(4):
            s = sample(node=f"n{case}", ts_ms=1000 * i, temp=base + rng.uniform(-1.5, 1.5),
                       power=rng.uniform(80, 340), variant=current.variant, precision=current.precision,
                       offered_rps=rng.uniform(50, 900), net_ms=rng.choice([10.0, 120.0]))
            d = agent.decide(state, s)
            last = d or last
        d = last
        arm = d.arm
        temps = list(state.temps)
        if all(t >= critical for t in temps[-3:]):
            assert arm.fallback, f"case {case}: critical but chose {arm.name}"
            continue
        if arm.fallback:
            continue
        assert d.safe[d.arm_index]
        phi, predicted, power = agent.featurizer.features(d.context, state.thermal.r_c_per_w())
        assert predicted[d.arm_index] < hot - margin, f"case {case}: {arm.name} predicted {predicted[d.arm_index]}"
        assert ARMS.profile(arm).accuracy >= agent.config.constraints.min_accuracy
        if d.context.temp_c >= hot:
            assert power[d.arm_index] < d.context.power_w
        assert ARMS.profile(arm).cost >= lightest


def test_features_are_the_context_arm_outer_product_then_the_model_features():
    """Φ[a, i·6 + j] is context feature i times arm feature j, bit for bit (each one product, however Φ is
    built); the switch feature is 0 for the current arm only."""
    from morph.context import ARM_FEATURES, CONTEXT_FEATURES, NodeContext

    f = RliAgent(ARMS).featurizer
    rng = random.Random(3)
    for _ in range(50):
        current = rng.choice(list(ARMS))
        ctx = NodeContext(temp_c=rng.uniform(40, 95), slope_c_per_s=rng.uniform(-0.5, 0.5),
                          power_w=rng.uniform(80, 340), power_cap_w=350.0, mem_used_frac=0.4,
                          offered_rps=rng.uniform(50, 900), served_rps=rng.uniform(50, 600),
                          util=rng.uniform(0.1, 1.0), latency_ms=rng.uniform(5, 150),
                          net_ms=rng.choice([0.0, 10.0, 120.0]), current=current)
        r = rng.uniform(0.05, 0.3)
        phi, _, _ = f.features(ctx, r)
        x, k = f.context_vector(ctx), len(CONTEXT_FEATURES) * len(ARM_FEATURES)
        outer = (x[None, :, None] * f.arm_features[:, None, :]).reshape(len(ARMS), k)
        assert np.array_equal(phi[:, :k], outer)
        switch = phi[:, k + 2]
        assert switch[ARMS.index(current)] == 0.0 and np.count_nonzero(switch) == len(ARMS) - 1
        coords, basis, _, _ = f.factors(ctx, r)   # the bandit's bounds are computed from these
        assert np.array_equal(coords @ basis.T, phi) and coords.shape == (len(ARMS), len(ARM_FEATURES) + 3)
        for a in rng.sample(range(len(ARMS)), 5):    # the agent's row of one arm, vector by matrix
            assert np.array_equal(coords[a] @ basis.T, phi[a])
        assert np.all((phi[:, k] > 0) & (phi[:, k] <= 1.0)) and np.all((phi[:, k + 1] >= -2.0) & (phi[:, k + 1] <= 1.0))


def test_each_arms_forecast_is_the_thermal_model_at_that_arms_power():
    """`Featurizer.factors` forecasts every arm at once; the same physics one arm at a time: its power
    (idle plus the measured dynamic power scaled by relative cost × utilisation, capped) and the
    temperature `ThermalEstimate.predict` gives at that power after the shield's horizon."""
    from morph.context import NodeContext
    from morph.shield import ThermalEstimate

    f = RliAgent(ARMS).featurizer
    shield = f.shield
    rng = random.Random(8)
    for _ in range(50):
        current = rng.choice(list(ARMS))
        ctx = NodeContext(temp_c=rng.uniform(40, 95), slope_c_per_s=rng.uniform(-0.5, 0.5),
                          power_w=rng.uniform(40, 340), power_cap_w=rng.choice([200.0, 350.0]), mem_used_frac=0.4,
                          offered_rps=rng.uniform(0, 900), served_rps=rng.uniform(1, 600),
                          util=rng.uniform(0.0, 1.2), latency_ms=20.0, net_ms=0.0, current=current)
        estimate = ThermalEstimate(shield)
        for _ in range(rng.randrange(30)):
            estimate.observe(rng.uniform(50, 90), rng.uniform(-0.3, 0.3), rng.uniform(80, 340))
        _, _, predicted, power = f.factors(ctx, estimate.r_c_per_w())
        cur = ARMS.index(current)
        now_capacity = ctx.served_rps / max(min(ctx.util, 1.0), 0.05) * f.item_ms[cur]
        dynamic = max(ctx.power_w - shield.idle_w, 0.0) / (f.cost[cur] * max(ctx.util, 1e-3))
        for a in range(len(ARMS)):
            util = min(ctx.offered_rps / (now_capacity / f.item_ms[a]), 1.0)
            assert power[a] == pytest.approx(min(shield.idle_w + dynamic * f.cost[a] * util, ctx.power_cap_w),
                                             rel=1e-12)
            assert predicted[a] == pytest.approx(estimate.predict(ctx.temp_c, power[a], shield.horizon_s,
                                                                  ctx.power_w, ctx.slope_c_per_s), rel=1e-12)


def test_the_slope_over_a_full_window_is_the_least_squares_loop_bit_for_bit():
    from collections import deque

    from morph.agent import WINDOW, _slope

    rng = random.Random(4)
    for i in range(2000):
        times = sorted(rng.uniform(0, 1e6) for _ in range(WINDOW)) if i % 2 else \
            [1000.0 * i + j * rng.choice([0.5, 1.0, 2.0]) for j in range(WINDOW)]
        temps = [rng.uniform(20.0, 100.0) for _ in range(WINDOW)]
        tm, ym = sum(times) / WINDOW, sum(temps) / WINDOW
        num = den = 0.0
        for t, y in zip(times, temps):
            num += (t - tm) * (y - ym)
            den += (t - tm) * (t - tm)
        assert _slope(deque(times, maxlen=WINDOW), deque(temps, maxlen=WINDOW)) == num / den
    assert _slope(deque([1.0, 2.0, 3.0], maxlen=WINDOW), deque([50.0, 51.0, 52.0], maxlen=WINDOW)) == 1.0


def test_three_samples_at_90_force_the_fallback_between_epochs():
    agent = RliAgent(ARMS, RliConfig(epoch_s=60, early_gap_s=1e6))   # the critical rule alone
    state = agent.new_state("edge-1")
    assert agent.decide(state, sample(ts_ms=0, temp=80.0)) is not None       # first decision
    out = [agent.decide(state, sample(ts_ms=1000 * i, temp=91.0, power=300.0)) for i in range(1, 4)]
    assert out[0] is None and out[1] is None
    assert out[2].arm.fallback and out[2].command["trigger"] == "CRITICAL"
    assert out[2].propensity == 1.0


def test_a_node_heating_past_85_gets_a_lighter_arm_before_the_epoch_ends():
    agent = RliAgent(ARMS, RliConfig(epoch_s=60))
    state = agent.new_state("edge-1")
    first = agent.decide(state, sample(ts_ms=0, temp=70.0, power=300.0))
    served = first.arm
    temps = [72.0, 76.0, 80.0, 84.0, 86.0, 87.0]
    out = [agent.decide(state, sample(ts_ms=1000 * (i + 1), temp=t, power=300.0, variant=served.variant,
                                      precision=served.precision)) for i, t in enumerate(temps)]
    early = next(d for d in out if d is not None)
    assert early.ts_ms < 60_000
    assert agent.featurizer.cost[early.arm_index] < agent.featurizer.cost[agent.arms.index(early.context.current)] \
        or early.arm.fallback


def test_commands_carry_the_propensity_and_reward_follows_the_decision():
    agent = RliAgent(ARMS, RliConfig(epoch_s=5, seed=3))
    state = agent.new_state("edge-1")
    decisions = [agent.decide(state, sample(ts_ms=1000 * i)) for i in range(31)]
    made = [d for d in decisions if d is not None]
    assert len(made) == 7
    assert all(0 < d.propensity <= 1 for d in made)
    assert all(d.previous_reward is not None for d in made[1:])
    for d in made:
        if d.command is not None:
            assert d.command["propensity"] == pytest.approx(d.propensity, abs=1e-6)
            assert d.command["arm"] == d.arm.name


def test_agent_state_survives_a_snapshot_and_decides_the_same_afterwards():
    agent = RliAgent(ARMS, RliConfig(epoch_s=3, seed=5))
    state = agent.new_state("edge-1")
    for i in range(20):
        agent.decide(state, sample(ts_ms=1000 * i, temp=70 + i * 0.3))
    restored = pickle.loads(pickle.dumps(state))
    later = [sample(ts_ms=1000 * i, temp=75 + (i % 5)) for i in range(20, 40)]
    a = [agent.decide(state, s) for s in later]
    b = [agent.decide(restored, s) for s in later]
    assert [(d.arm_index, d.propensity) for d in a if d] == [(d.arm_index, d.propensity) for d in b if d]


def test_a_control_snapshot_is_a_copy_that_later_events_do_not_change_and_resumes_the_same():
    from flows.spec import FlowSpec
    from operators.control import ControlLogic, MorphStep
    from operators.events import Event
    from operators.from_spec import agent_for, policy_for, sharer_factory_for

    spec = FlowSpec("control", bootstrap="unused:9092", deterministic=True, options={"policy_kind": "rli"})
    step = MorphStep(policy_for(spec), None, stamp_wall_clock=False, agent=agent_for(spec),
                     sharer_factory=sharer_factory_for(spec))
    events = [Event("Telemetry", sample(ts_ms=1000 * i, temp=70 + (i % 17)), "test", 0, -1) for i in range(80)]
    logic = ControlLogic(step, None)
    for e in events[:40]:
        logic.on_item(e)
    snap = logic.snapshot()
    taken = pickle.loads(snap)
    original = [out for e in events[40:] for out in logic.on_item(e)[0] if out[0] == "MorphCommand"]
    later = pickle.loads(snap)
    assert later.agent.decisions == taken.agent.decisions < logic.state.agent.decisions
    np.testing.assert_array_equal(later.agent.bandit.stats.gram, taken.agent.bandit.stats.gram)
    assert not np.array_equal(later.agent.bandit.stats.gram, logic.state.agent.bandit.stats.gram)
    resumed_logic = ControlLogic(step, snap)
    resumed = [out for e in events[40:] for out in resumed_logic.on_item(e)[0] if out[0] == "MorphCommand"]
    assert original and [(c["arm"], c["propensity"]) for _, c in resumed] == \
        [(c["arm"], c["propensity"]) for _, c in original]


def test_three_samples_in_a_row_at_the_critical_temperature_make_a_critical_run():
    from collections import deque

    from morph.shield import critical_run

    assert critical_run(deque([80.0, 90.0, 90.5, 91.0], maxlen=6), 90.0)
    assert not critical_run(deque([95.0, 90.0, 89.9, 91.0], maxlen=6), 90.0)
    assert not critical_run([91.0, 92.0], 90.0)
    assert not critical_run([91.0, float("nan"), 92.0], 90.0)   # a missing reading is no evidence


def test_agent_state_of_a_newer_release_is_refused():
    state = RliAgent(ARMS).new_state("edge-1")
    data = {**state.__dict__, "version": AgentState.STATE_VERSION + 1}
    with pytest.raises(StateVersionError, match="AgentState snapshot"):
        AgentState.__new__(AgentState).__setstate__(data)


def test_laplace_noise_has_the_scale_its_epsilon_implies():
    rng = random.Random(11)
    for epsilon, count in ((1.0, 1), (0.5, 10), (2.0, 4)):
        mech = LaplaceMechanism(epsilon, low=-1.0, high=1.0)
        b = mech.scale(count)
        assert b == pytest.approx(2.0 / count / epsilon)
        draws = [mech.release_mean([0.3] * count, rng) - 0.3 for _ in range(20000)]
        # Laplace(b): mean |x| = b, standard deviation sqrt(2) b
        assert statistics.fmean(abs(x) for x in draws) == pytest.approx(b, rel=0.05)
        assert statistics.pstdev(draws) == pytest.approx(math.sqrt(2) * b, rel=0.05)
    assert LaplaceMechanism(1.0).clip(5.0) == 1.0


def test_the_privacy_budget_stops_sharing_when_spent():
    cfg = SharingConfig(epsilon=1.0, window=2, budget=3.0)
    sharer = ExperienceSharer("edge-1", "g0", cfg, random.Random(1))
    out = [r for i in range(20) for r in sharer.record((0, 1, 0, 0), "cnn/fp32/b8", 0.5, ts_ms=i)]
    assert len(out) == 3 and sharer.budget.exhausted and sharer.budget.spent == pytest.approx(3.0)
    assert all(r["noise_scale"] == pytest.approx(0.5) and r["count"] == 2 for r in out)  # range 1 / 2 / ε
    no_dp = ExperienceSharer("edge-1", "g0", SharingConfig(window=1), random.Random(1))
    assert all(no_dp.record((0, 0, 0, 0), "cnn/fp32/b8", 0.5, i)[0]["noise_scale"] == 0.0 for i in range(5))
    assert PrivacyBudget(1.0).spend(1.5) is False


def test_experience_records_round_trip_through_the_avro_codec():
    sharer = ExperienceSharer("edge-1", "g0", SharingConfig(epsilon=1.0, window=1), random.Random(2))
    [record] = sharer.record((2, 1, 1, 0), "snn/int8/b1/fallback", 0.25, ts_ms=1234)
    codec = Codec()
    decoded = codec.decode(codec.encode("Experience", record))
    assert decoded.schema_name == "Experience" and decoded.record == record


def test_experience_travels_ttl_hops_inside_its_group_only():
    nodes = [f"n{i}" for i in range(60)]
    net = PeerNetwork(nodes, group_size=30, degree=2, ttl=3, seed=4)
    exp = {"experience_id": "x", "origin_node": "n0", "group": net.group_of["n0"], "ttl": 3, "hops": 0}
    reached = net.deliver(exp)
    assert all(net.group_of[n] == net.group_of["n0"] for n, _ in reached)
    assert max(h for _, h in reached) <= 3 and len({n for n, _ in reached}) == len(reached)
    assert len(reached) <= 2 + 4 + 8
    one_hop = net.deliver({**exp, "ttl": 1})
    assert sorted(n for n, _ in one_hop) == sorted(net.neighbours["n0"])


def test_noisy_experience_weighs_less_than_clean_experience():
    agent = RliAgent(ARMS)
    state = agent.new_state("edge-2")
    d = agent.decide(state, sample(node="edge-2"))
    clean = {"temp_level": 0, "load_level": 1, "power_capped": 0, "congested": 0, "arm": "cnn/fp32/b8",
             "reward": 0.8, "count": 1, "noise_scale": 0.0}
    w_clean = absorb(agent, state, clean, 1, d.context, SharingConfig())
    w_noisy = absorb(agent, state, {**clean, "noise_scale": 2.0}, 1, d.context, SharingConfig())
    w_far = absorb(agent, state, {**clean, "temp_level": 2, "load_level": 2, "congested": 1}, 1, d.context,
                   SharingConfig())
    w_hops = absorb(agent, state, clean, 3, d.context, SharingConfig())
    assert w_clean > w_hops > 0 and w_clean > w_far and w_noisy < 0.01 * w_clean
    assert absorb(agent, state, {**clean, "arm": "bert/fp32/b8"}, 1, d.context, SharingConfig()) == 0.0


def test_inverse_propensity_and_doubly_robust_estimates_are_unbiased_under_a_random_logger():
    rng = np.random.default_rng(5)
    means = np.array([0.2, 0.6, 0.4])
    logs = []
    for _ in range(6000):
        x = rng.uniform(0, 1)
        phi = np.zeros((3, 6))
        for a in range(3):
            phi[a, 2 * a], phi[a, 2 * a + 1] = 1.0, x
        p = np.array([0.6, 0.2, 0.2])
        a = int(rng.choice(3, p=p))
        logs.append(LoggedDecision(phi, np.ones(3, bool), a, float(p[a]), means[a] + 0.3 * x + rng.normal(0, 0.1)))
    candidate = lambda d: 1 if d.phi[0, 1] < 0.5 else 2      # noqa: E731
    truth = 0.5 * 0.6 + 0.5 * 0.4 + 0.3 * 0.5
    assert ips(logs, candidate) == pytest.approx(truth, abs=0.03)
    assert doubly_robust(logs, candidate) == pytest.approx(truth, abs=0.01)


def test_on_the_simulated_fleet_the_agent_stays_below_90_and_beats_the_static_transformer():
    specs = fleet_specs(seed=5, nodes=2, duration_s=1800)
    agent = RliAgent(ARMS, RliConfig(seed=5))
    learned, static = [HeteroNode(s, ARMS) for s in specs], [HeteroNode(s, ARMS) for s in specs]
    states = [agent.new_state(s.node_id) for s in specs]
    rewards = []
    for _ in range(1800):
        for n, node in enumerate(learned):
            d = agent.decide(states[n], node.step())
            if d is not None:
                if d.command:
                    node.apply(d.command)
                if d.previous_reward is not None:
                    rewards.append(d.previous_reward)
        for node in static:
            node.step()
    assert all(nd.seconds_above[90.0] == 0 for nd in learned)
    assert sum(nd.seconds_above[85.0] for nd in learned) <= sum(nd.seconds_above[85.0] for nd in static)
    served = sum(nd.served_total for nd in learned) / sum(nd.energy_j for nd in learned)
    assert served > sum(nd.served_total for nd in static) / sum(nd.energy_j for nd in static)
    assert statistics.fmean(rewards[-50:]) > statistics.fmean(rewards[:20]) - 0.05


def test_a_version_1_control_state_snapshot_migrates_and_a_newer_one_is_refused():
    from morph.policy import NodeState
    from operators.control import ControlState

    v1 = {"node": NodeState.new("edge-1"), "models": None, "version": 1}
    restored = ControlState.__new__(ControlState)
    restored.__setstate__(dict(v1))
    assert restored.agent is None and restored.sharer is None and restored.version == ControlState.STATE_VERSION
    with pytest.raises(StateVersionError, match="ControlState snapshot has state version 3"):
        ControlState.__new__(ControlState).__setstate__({**v1, "version": 3})
