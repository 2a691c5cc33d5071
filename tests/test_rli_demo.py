"""``liquid demo --policy rli``: the learned agent on the live demo, under a load some variants cannot serve."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_liquid

pytestmark = pytest.mark.broker


def test_the_rli_demo_offers_a_calibrated_load_and_reports_what_the_policies_are_compared_on(zoo, tmp_path):
    out = tmp_path / "demo"
    proc = run_liquid("demo", "--policy", "rli", "--short", "--out", out, "--zoo", zoo.root, timeout=300)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["policy"] == "rli"
    capacity = summary["measured_capacity_rps"]
    assert capacity["transformer"] < capacity["snn"]                # measured on this machine, not assumed
    assert summary["rate_rps"] == pytest.approx(0.8 * capacity["cnn"], rel=0.01)
    for node in summary["nodes"].values():
        assert 0 <= node["seconds_above_90"] <= node["seconds_above_85"] and node["max_temp_c"] > 0
        assert node["energy_j_per_inference"] > 0 and 0 < node["accuracy_served"] <= 1
        assert node["slo_violation_seconds"] >= 0 and node["reward_by_window"]
        assert node["requests_served"] > 0
    commands = [a for n in summary["nodes"].values() for a in n["adaptations"]]
    assert commands and all(0 < a["propensity"] <= 1 for a in commands)
    assert "policy rli" in proc.stdout and "J/inf" in proc.stdout
    png = (out / "timeline.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 40_000


def test_demo_policy_overrides_the_resource_and_the_agents_epoch_follows_the_demo_clock():
    from dataclasses import replace

    from deploy.demo import DEMO_SPEC, demo_flow_spec
    from deploy.workflow_spec import load_workflow_spec
    from morph.agent import RliConfig
    from operators.from_spec import agent_for, policy_kind

    resource = load_workflow_spec(DEMO_SPEC)                                  # adaptation.policy: rules
    for asked, expected in ((None, "rules"), ("rules", "rules"), ("rli", "rli")):
        spec, _ = demo_flow_spec(resource, "127.0.0.1:1", 5.0, "/nonexistent-zoo", None, asked)
        assert policy_kind(spec) == expected
    spec, policy = demo_flow_spec(resource, "127.0.0.1:1", 5.0, "/nonexistent-zoo", None, "rli")
    assert spec.options["rli_epoch_s"] == pytest.approx(RliConfig.epoch_s / 5.0)
    rules_at_speed_1, _ = demo_flow_spec(resource, "127.0.0.1:1", 1.0, "/nonexistent-zoo", None, "rli")
    assert spec.policy["cooldown_s"] < rules_at_speed_1.policy["cooldown_s"]   # both clocks scale alike
    agent = agent_for(replace(spec, zoo_dir=None))   # the built zoo's arms, or nominal ones without it
    assert agent.config.epoch_s == pytest.approx(RliConfig.epoch_s / 5.0)
