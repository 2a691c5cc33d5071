"""The morph policy, rule by rule, without Kafka."""

import random

import pytest

from edge.fleet import SimulatedNode
from morph.policy import MorphPolicy, NodeState, PolicyConfig
from edge.thermal import Scenario

BASE = dict(node_id="n1", mem_used_frac=0.4, power_w=200.0, power_cap_w=350.0,
            variant="transformer", precision="fp32", batch_size=16)


def feed(policy, state, temps, start_s=0, follow=True, **extra):
    """Feed temperatures at 1 Hz; a simulated node follows each command at once."""
    cmds = []
    serving = {"variant": state.variant or BASE["variant"], "precision": state.precision or BASE["precision"],
               "batch_size": state.batch_size or BASE["batch_size"]}
    for i, t in enumerate(temps):
        sample = {**BASE, **extra, **serving, "ts_ms": (start_s + i) * 1000, "gpu_temp_c": t}
        cmd = policy.decide(state, sample)
        if cmd is not None:
            cmds.append(cmd)
            if follow:
                serving = {"variant": cmd["to_variant"], "precision": cmd["to_precision"],
                           "batch_size": cmd["batch_size"]}
                policy.on_ack(state, {"command_id": cmd["command_id"], "kind": "MORPH", "status": "APPLIED",
                                      "to_variant": cmd["to_variant"], "to_precision": cmd["to_precision"]})
    return cmds


def variants(cmds):
    return [c["to_variant"] for c in cmds if c["to_variant"] != c["from_variant"]]


def test_steps_down_one_rung_per_cooldown_when_hot():
    policy = MorphPolicy(PolicyConfig(cooldown_s=5))
    state = NodeState.new("n1")
    cmds = feed(policy, state, [70] * 6 + [86] * 14)
    downs = [c for c in cmds if c["trigger"] == "THRESHOLD"]
    assert variants(downs) == ["lstm", "cnn"]
    gap = (downs[1]["decided_on_ts_ms"] - downs[0]["decided_on_ts_ms"]) / 1000
    assert gap >= 5, "the second step must wait for the cool-down"
    assert downs[0]["evidence"]["violation_fraction"] >= 0.7
    assert downs[0]["evidence"]["window_max_c"] == 86
    assert "step down transformer -> lstm" in downs[0]["reason"]


def test_hysteresis_ignores_short_spikes():
    policy = MorphPolicy(PolicyConfig())
    state = NodeState.new("n1")
    # Spikes of 3 samples in every 6 (50 %) never reach the 70 % needed.
    cmds = feed(policy, state, ([70, 70, 70, 88, 88, 88]) * 10)
    assert variants(cmds) == []


def test_critical_goes_straight_to_lightest_even_in_cooldown():
    policy = MorphPolicy(PolicyConfig(cooldown_s=30))
    state = NodeState.new("n1")
    cmds = feed(policy, state, [70] * 6 + [86] * 5 + [91] * 4)
    assert variants(cmds) == ["lstm", "snn"]
    assert cmds[-1]["trigger"] == "CRITICAL"
    assert "jump lstm -> snn" in cmds[-1]["reason"]


def test_recovers_up_the_ladder_as_it_cools():
    policy = MorphPolicy(PolicyConfig(recover_cooldown_s=10))
    state = NodeState.new("n1")
    feed(policy, state, [70] * 6 + [92] * 4)
    assert state.variant == "snn"
    cmds = feed(policy, state, [65] * 60, start_s=10)
    ups = [c for c in cmds if c["trigger"] == "RECOVERY"]
    assert variants(ups) == ["mobilenet", "cnn", "lstm", "transformer"]
    times = [c["decided_on_ts_ms"] for c in ups]
    assert all(b - a >= 10_000 for a, b in zip(times, times[1:]))


def test_no_recovery_inside_the_hysteresis_band():
    policy = MorphPolicy(PolicyConfig(recover_c=78))
    state = NodeState.new("n1")
    feed(policy, state, [70] * 6 + [86] * 6)
    assert state.variant == "lstm"
    cmds = feed(policy, state, [82] * 60, start_s=12)  # below 85 but above 78: stay
    assert variants(cmds) == []


def test_no_oscillation_on_noisy_temperature_around_threshold():
    policy = MorphPolicy(PolicyConfig())
    state = NodeState.new("n1")
    rng = random.Random(7)
    cmds = feed(policy, state, [85 + rng.gauss(0, 1.5) for _ in range(600)])
    changes = variants(cmds)
    # It may step down while the noise keeps it hot, but it must never step back up
    # (that needs <= 78 °C) and so never oscillate.
    ladder = ["transformer", "lstm", "cnn", "mobilenet", "snn"]
    assert all(ladder.index(b) > ladder.index(a) for a, b in zip(["transformer"] + changes, changes))
    assert not [c for c in cmds if c["trigger"] == "RECOVERY"]


def test_no_command_when_nothing_changes():
    policy = MorphPolicy(PolicyConfig())
    state = NodeState.new("n1")
    assert feed(policy, state, [60 + (i % 3) for i in range(300)]) == []


def test_pending_command_is_not_reissued_and_acked_ids_never_are():
    policy = MorphPolicy(PolicyConfig(pending_timeout_s=1000))
    state = NodeState.new("n1")
    cmds = feed(policy, state, [70] * 6 + [86] * 30, follow=False)  # the node never answers
    assert len(cmds) == 1  # a pending command blocks further non-critical changes

    # Replaying the same telemetry into a fresh state that has seen the ack: nothing re-issued.
    fresh = NodeState.new("n1")
    fresh.acked.append(cmds[0]["command_id"])
    again = feed(policy, fresh, [70] * 6 + [86] * 30, follow=False)
    assert cmds[0]["command_id"] not in [c["command_id"] for c in again]


def test_rejected_ack_restores_belief():
    policy = MorphPolicy(PolicyConfig())
    state = NodeState.new("n1")
    cmd = feed(policy, state, [70] * 6 + [86] * 5, follow=False)[0]
    assert state.variant == "lstm" and state.pending is not None
    policy.on_ack(state, {"command_id": cmd["command_id"], "kind": "MORPH", "status": "REJECTED",
                          "from_variant": "transformer", "from_precision": "fp32"})
    assert state.pending is None and state.variant == "transformer"


def test_resource_score_weights_and_tiers():
    policy = MorphPolicy(PolicyConfig())
    cool = {**BASE, "gpu_temp_c": 60.0, "mem_used_frac": 0.3, "power_w": 100.0}
    assert policy.resource_score(cool) == pytest.approx(1.0)
    hot = {**cool, "gpu_temp_c": 90.0}
    assert policy.resource_score(hot) == pytest.approx(0.6)  # temperature weighs 0.4
    full = {**cool, "mem_used_frac": 0.95, "power_w": 350.0}
    assert policy.resource_score(full) == pytest.approx(0.4)
    assert policy.tier_for(0.9, None) == ("fp32", 16)
    assert policy.tier_for(0.5, None) == ("fp16", 8)
    assert policy.tier_for(0.1, None) == ("int8", 1)
    # A better tier needs the margin: 0.85 is not enough to leave (fp32, 8) for (fp32, 16).
    assert policy.tier_for(0.85, ("fp32", 8)) == ("fp32", 8)
    assert policy.tier_for(0.95, ("fp32", 8)) == ("fp32", 16)


def test_memory_pressure_lowers_precision():
    policy = MorphPolicy(PolicyConfig())
    state = NodeState.new("n1")
    cmds = feed(policy, state, [80] * 12, mem_used_frac=0.95, power_w=340.0)
    assert cmds and cmds[-1]["trigger"] == "RESOURCE_SCORE"
    assert cmds[-1]["to_precision"] in ("fp16", "int8") and cmds[-1]["to_variant"] == "transformer"


def test_out_of_order_samples_are_counted_not_used():
    policy = MorphPolicy(PolicyConfig())
    state = NodeState.new("n1")
    feed(policy, state, [70] * 6, start_s=100)
    assert policy.decide(state, {**BASE, "ts_ms": 50_000, "gpu_temp_c": 99.0}) is None
    assert state.stale_samples == 1 and max(state.temps) == 70


@pytest.mark.parametrize("seed", range(5))
def test_thermal_event_walks_figure_2(seed):
    """The seed's Figure 2 on the thermal model: down to cnn, jump to snn at 90 °C, back up."""
    node = SimulatedNode("n1", Scenario("thermal-event", duration_s=150), seed=seed)
    policy, state = MorphPolicy(PolicyConfig()), NodeState.new("n1")
    seq, triggers = ["transformer"], []
    for t in range(190):
        cmd = policy.decide(state, node.sample(t * 1000, 1.0))
        if cmd:
            node.apply(cmd)
            if cmd["to_variant"] != seq[-1]:
                seq.append(cmd["to_variant"])
                triggers.append(cmd["trigger"])
    assert seq[:4] == ["transformer", "lstm", "cnn", "snn"]
    assert triggers[:3] == ["THRESHOLD", "THRESHOLD", "CRITICAL"]
    assert seq[-1] == "transformer" and triggers[-1] == "RECOVERY"


def test_config_is_validated():
    with pytest.raises(ValueError):
        PolicyConfig(recover_c=90, hot_c=85)
    with pytest.raises(ValueError):
        PolicyConfig(sustain_fraction=0)
