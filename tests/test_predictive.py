"""Predictive adaptation: the policy with the online models, on the thermal model."""

from __future__ import annotations

import random

import pytest

from edge.fleet import SimulatedNode
from morph.policy import MorphPolicy, NodeState, PolicyConfig
from edge.thermal import Conditions, Scenario, ThermalModel, _ramp
from prediction.telemetry_models import TelemetryModels

WARM_S = 300  # the models learn the node's normal first, as they would in service


def models_for(cfg):
    return TelemetryModels.for_node("n1", horizon_s=cfg.forecast_horizon_s)


def warm(models, seed):
    node = SimulatedNode("n1", Scenario("steady"), seed=seed + 100)
    for t in range(WARM_S):
        models.update(node.sample(t * 1000, 1.0))


def run(scenario, seed, with_models, duration=150):
    cfg = PolicyConfig()
    node = SimulatedNode("n1", Scenario(scenario, duration_s=duration), seed=seed)
    policy, state = MorphPolicy(cfg), NodeState.new("n1")
    models = models_for(cfg) if with_models else None
    if models:
        warm(models, seed)
    cmds, first_85 = [], None
    for t in range(duration + 40):
        sample = node.sample((WARM_S + t) * 1000, 1.0)
        if first_85 is None and sample["gpu_temp_c"] >= 85.0:
            first_85 = t
        assessment = models.update(sample)[0] if models else None
        cmd = policy.decide(state, sample, assessment)
        if cmd:
            node.apply(cmd)
            cmds.append((t, sample["gpu_temp_c"], cmd))
    return cmds, first_85


@pytest.mark.parametrize("scenario", ["thermal-event", "heat-wave"])
@pytest.mark.parametrize("seed", range(3))
def test_steps_down_before_85_with_lead_time(scenario, seed):
    reactive, reactive_first_85 = run(scenario, seed, with_models=False)
    predictive, _ = run(scenario, seed, with_models=True)
    first_down_reactive = next(t for t, _, c in reactive if c["to_variant"] != c["from_variant"])
    t, temp, cmd = next((t, temp, c) for t, temp, c in predictive if c["to_variant"] != c["from_variant"])
    assert cmd["trigger"] == "FORECAST" and cmd["to_variant"] == "lstm"
    assert temp < 85.0
    lead_before_crossing = reactive_first_85 - t
    assert lead_before_crossing >= 1, "steps down before the node would have reached 85 °C"
    assert first_down_reactive - t >= 5, "well before the reactive policy (which waits for its hysteresis)"
    ev = cmd["evidence"]
    assert ev["forecast_horizon_s"] == 15.0 and ev["forecast_lower_c"] <= ev["forecast_c"] <= ev["forecast_upper_c"]
    assert "forecast" in cmd["reason"] and "P(>= 85.0 °C)" in cmd["reason"]


def ramp_commands(level_c, seed, total=200):
    """A transformer at full load while the air warms so that it settles at ``level_c``."""
    cfg = PolicyConfig()
    model, rng = ThermalModel(temp_c=75.0), random.Random(seed)
    models, policy, state = models_for(cfg), MorphPolicy(cfg), NodeState.new("n1")
    cmds = []
    for t in range(WARM_S + total):
        ambient = 30.0 if t < WARM_S + 20 else _ramp(t, WARM_S + 20, WARM_S + 50, 30.0, level_c - 45.0)
        temp = model.step(1.0, "transformer", "fp32", 1.0, Conditions(ambient_c=ambient))
        sample = dict(node_id="n1", ts_ms=t * 1000, seq=t, gpu_temp_c=round(temp + rng.gauss(0, 0.2), 2),
                      gpu_util=1.0, mem_used_frac=0.5, power_w=300.0, power_cap_w=350.0, latency_ms=1.0,
                      throughput_rps=100.0, variant="transformer", precision="fp32", batch_size=16,
                      source="thermal-model", scenario=None)
        cmd = policy.decide(state, sample, models.update(sample)[0])
        if cmd:
            cmds.append(cmd)
    return cmds, max(model.temp_c, 0)


@pytest.mark.parametrize("level", [80.0, 82.0, 83.5])
@pytest.mark.parametrize("seed", range(2))
def test_no_proactive_step_down_on_a_ramp_that_levels_off_below_threshold(level, seed):
    cmds, final = ramp_commands(level, seed)
    assert final == pytest.approx(level, abs=0.5)
    assert [c for c in cmds if c["to_variant"] != c["from_variant"]] == []


def test_sustained_latency_anomaly_triggers_fallback_and_blocks_recovery_until_it_clears():
    cfg = PolicyConfig()
    models, policy, state = models_for(cfg), MorphPolicy(cfg), NodeState.new("n1")
    rng = random.Random(1)
    cmds = []
    for t in range(WARM_S + 200):
        degraded = WARM_S + 20 <= t < WARM_S + 80
        sample = dict(node_id="n1", ts_ms=t * 1000, seq=t, gpu_temp_c=round(70 + rng.gauss(0, 0.3), 2),
                      gpu_util=0.9, mem_used_frac=0.5, power_w=250.0, power_cap_w=350.0,
                      latency_ms=(25.0 if degraded else 1.0) * (1 + 0.05 * rng.gauss(0, 1)),
                      throughput_rps=100.0, variant=state.variant or "transformer",
                      precision=state.precision or "fp32", batch_size=state.batch_size or 16,
                      source="thermal-model", scenario=None)
        cmd = policy.decide(state, sample, models.update(sample)[0])
        if cmd:
            cmds.append((t - WARM_S, cmd))
    fallback = [(t, c) for t, c in cmds if c["trigger"] == "ANOMALY"]
    assert len(fallback) == 1
    t_fb, fb = fallback[0]
    assert 20 <= t_fb <= 30 and fb["fallback"] and (fb["to_variant"], fb["to_precision"]) == ("snn", "int8")
    assert "latency_ms" in fb["evidence"]["contributing_features"]
    assert fb["evidence"]["anomaly_score"] >= cfg.anomaly_fallback_score
    recoveries = [t for t, c in cmds if c["trigger"] == "RECOVERY"]
    assert recoveries and min(recoveries) >= 80, "no step back up while the anomaly lasts"


def test_thermal_excursion_alone_does_not_trigger_fallback():
    cmds, _ = run("thermal-event", 0, with_models=True)
    assert not [c for _, _, c in cmds if c["trigger"] == "ANOMALY"]
