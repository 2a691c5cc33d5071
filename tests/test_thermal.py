"""The RC thermal model and its scenarios."""

import pytest

from edge.thermal import SCENARIOS, Conditions, Scenario, ThermalModel


def test_steady_state_matches_rc_formula():
    m = ThermalModel(temp_c=20.0)
    for _ in range(400):
        m.step(0.5, "cnn", "fp32", 1.0, Conditions(ambient_c=30.0))
    p = m.power_w("cnn", "fp32", 1.0)
    assert m.temp_c == pytest.approx(30.0 + p * m.r_c_per_w, abs=0.01)


def test_exact_integration_is_step_size_independent():
    a, b = ThermalModel(temp_c=40.0), ThermalModel(temp_c=40.0)
    cond = Conditions(ambient_c=35.0, fan=0.7)
    for _ in range(10):
        a.step(1.0, "transformer", "fp32", 1.0, cond)
    for _ in range(100):
        b.step(0.1, "transformer", "fp32", 1.0, cond)
    assert a.temp_c == pytest.approx(b.temp_c, abs=1e-9)


def test_lighter_variants_and_precisions_draw_less_and_run_cooler():
    m = ThermalModel()
    powers = [m.power_w(v, "fp32", 1.0) for v in ("transformer", "lstm", "cnn", "mobilenet", "snn")]
    assert powers == sorted(powers, reverse=True)
    assert m.power_w("cnn", "int8", 1.0) < m.power_w("cnn", "fp16", 1.0) < m.power_w("cnn", "fp32", 1.0)


def test_failing_fan_and_power_cap():
    m = ThermalModel()
    assert m.steady_state_c(200, 30, fan=0.5) > m.steady_state_c(200, 30, fan=1.0)
    assert m.power_w("transformer", "fp32", 1.0, cap_w=150) == 150


def test_throttling_above_95():
    m = ThermalModel(temp_c=100.0)
    assert m.throttle_factor() < 1.0
    m.temp_c = 80.0
    assert m.throttle_factor() == 1.0


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenarios_return_to_normal(name):
    s = Scenario(name, duration_s=100)
    assert s.at(0) == s.at(99.9) == Conditions(ambient_c=30.0, power_cap_w=350.0)
    mid = [s.at(t) for t in range(20, 60)]
    if name != "steady":
        assert any(c != s.at(0) for c in mid)


def test_unknown_scenario():
    with pytest.raises(ValueError, match="unknown scenario"):
        Scenario("volcano").at(1)


def test_measured_power_follows_the_zoo_and_keeps_the_ladder_order(zoo):
    from edge.thermal import MIN_POWER_SHARE, measured_variant_power
    from morph.ladder import VARIANTS

    power = measured_variant_power(zoo.relative_cost("cpu_ms"))
    shares = [power[v] for v in VARIANTS]
    assert shares[0] == 1.0 and shares == sorted(shares, reverse=True)
    assert all(MIN_POWER_SHARE <= s <= 1.0 for s in shares)


def _walk(shares: dict, seed: int, delay: int) -> tuple[list, list]:
    """The demo's node (measured-cost power, its thermal event) under the rules, a command
    applied ``delay`` samples after it was decided; the variants it walks and the triggers."""
    from edge.fleet import SimulatedNode
    from edge.thermal import MEASURED_COST_EVENT
    from morph.policy import MorphPolicy, NodeState, PolicyConfig

    event = Scenario("thermal-event", duration_s=150, **MEASURED_COST_EVENT)
    node = SimulatedNode("n1", event, seed=seed)
    node.thermal.variant_power, node.thermal.c_j_per_c = shares, event.heat_capacity_j_per_c
    policy, state = MorphPolicy(PolicyConfig()), NodeState.new("n1")
    seq, triggers, queue = ["transformer"], [], []
    for t in range(165):
        sample = node.sample(t * 1000, 1.0)
        while queue and queue[0][0] <= t:
            node.apply(queue.pop(0)[1])
        cmd = policy.decide(state, sample)
        if cmd:
            queue.append((t + delay, cmd))
            if cmd["to_variant"] != seq[-1]:
                seq.append(cmd["to_variant"])
                triggers.append(cmd["trigger"])
    return seq, triggers


def test_the_rules_keep_a_measured_cost_node_through_the_demos_event(zoo):
    """With the zoo's own cost as power, the rules act on the demo's event: the first step down
    leaves the transformer at 85 °C, every 90 °C jump lands on the snn, and the node ends back on
    the transformer once the event is over; for every noise seed and a command applied at once,
    one or two samples late.

    The exact Figure-2 walk (lstm, cnn, then the jump) is not asserted: it depends on the cost
    ratios measured on the machine that built the zoo. On the full zoo's shares it holds for every
    seed here; on reduced zoos built on other runs one seed jumped from the lstm straight to the
    snn, or recovered to the lstm before the jump. That is why the demo keeps the GPU-like profile."""
    from edge.thermal import measured_variant_power

    shares = measured_variant_power(zoo.relative_cost("cpu_ms"))
    for seed in range(5):
        for delay in (0, 1, 2):
            seq, triggers = _walk(shares, seed, delay)
            assert seq[:2] == ["transformer", "lstm"] and triggers[0] == "THRESHOLD", (seed, delay, seq)
            assert all(seq[k + 1] == "snn" for k, t in enumerate(triggers) if t == "CRITICAL"), (seed, delay, seq)
            assert seq[-1] == "transformer" and triggers[-1] == "RECOVERY", (seed, delay, seq)
