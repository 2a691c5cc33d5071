"""Alerting rules rendered from an AdaptiveWorkflow: thresholds from its constraints, checked by promtool.

promtool comes with Debian's prometheus package (`.ci/run` installs it); the tests
that run it are skipped, saying why, where it is missing.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from deploy.alert_rules import render_alert_rules
from deploy.workflow_spec import load_workflow_spec, parse_workflow_spec
from tests.conftest import ROOT, run_liquid

EXAMPLE = ROOT / "deploy" / "examples" / "inspection.yaml"
BARE = "apiVersion: liquid.workflow/v1\nkind: AdaptiveWorkflow\nmetadata: {name: bare}\nspec: {stages: [{name: a}]}\n"
needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None,
                                    reason="no promtool here (Debian package prometheus)")


def rules_by_alert(wf) -> dict[str, dict]:
    return {r["alert"]: r for r in render_alert_rules(wf)["groups"][0]["rules"]}


def test_the_constraints_are_the_thresholds_and_unset_ones_make_no_rule():
    rules = rules_by_alert(load_workflow_spec(EXAMPLE))  # 85 °C, 250 W, 100 ms, accuracy 0.9
    assert rules["LiquidNodeTooHot"]["expr"].endswith("> 90.0")  # the policy's critical jump: 85 + 5
    assert rules["LiquidNodeOverPowerCap"]["expr"].endswith("> 250.0")
    assert rules["LiquidNodeLatencyOverBudget"]["expr"].endswith("> 0.1")
    assert rules["LiquidNodeAccuracyBelowFloor"]["expr"].endswith("< 0.9")
    bare = rules_by_alert(parse_workflow_spec(BARE))
    assert not {"LiquidNodeOverPowerCap", "LiquidNodeLatencyOverBudget", "LiquidNodeAccuracyBelowFloor"} & set(bare)
    assert bare["LiquidNodeTooHot"]["expr"].endswith("> 90.0")  # PolicyConfig's own critical temperature
    assert {"LiquidNodeDroppingRequests", "LiquidCommandsSlow", "LiquidDeadLetters", "LiquidConsumerLagGrowing"} \
        <= set(bare)


@needs_promtool
def test_the_rendered_file_passes_promtool_check(tmp_path):
    out = tmp_path / "rules.yml"
    run_liquid("deploy", "render", EXAMPLE, "--target", "prometheus", "--out", out)
    checked = subprocess.run(["promtool", "check", "rules", str(out)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 8 rules found" in checked.stdout, checked.stdout


@needs_promtool
def test_rules_fire_on_series_that_break_the_constraints_and_stay_quiet_on_the_rest(tmp_path):
    rules = render_alert_rules(load_workflow_spec(EXAMPLE))
    for rule in rules["groups"][0]["rules"]:
        rule.pop("annotations")  # templates: `check rules` parses them; here the conditions are tested
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    lag = 'bytewax_kafka_consumer_lag{step="in",topic="%s",partition="0"}'
    served, dropped = "liquid_node_requests_served_total", "liquid_node_requests_dropped_total"
    tests = {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [
            {"series": 'liquid_node_temperature_celsius{node="hot"}', "values": "95x30"},
            {"series": 'liquid_node_temperature_celsius{node="cool"}', "values": "88x30"},
            {"series": 'liquid_node_power_watts{node="hot"}', "values": "240x30"},
            {"series": lag % "edge.telemetry", "values": "0+500x30"},   # behind, and further each minute
            {"series": lag % "workflow.signals", "values": "5000x30"},  # behind, but not falling further
            {"series": f'{served}{{node="hot"}}', "values": "0+6000x30"},   # 100/s served
            {"series": f'{dropped}{{node="hot"}}', "values": "0+600x30"},   # 10/s dropped: 9 %
            {"series": f'{served}{{node="cool"}}', "values": "0+6000x30"},
            {"series": f'{dropped}{{node="cool"}}', "values": "0+60x30"},   # 1 %
            {"series": 'liquid_dead_letters_total{topic="edge.telemetry",reason="undecodable"}',
             "values": "0x15 3x15"},
        ],
        "alert_rule_test": [
            {"eval_time": "1m", "alertname": "LiquidNodeTooHot", "exp_alerts": []},  # not yet for 2 minutes
            {"eval_time": "5m", "alertname": "LiquidNodeTooHot",
             "exp_alerts": [{"exp_labels": {"node": "hot", "severity": "critical"}}]},
            {"eval_time": "5m", "alertname": "LiquidNodeOverPowerCap", "exp_alerts": []},
            {"eval_time": "10m", "alertname": "LiquidNodeDroppingRequests",
             "exp_alerts": [{"exp_labels": {"node": "hot", "severity": "warning"}}]},
            {"eval_time": "25m", "alertname": "LiquidConsumerLagGrowing",
             "exp_alerts": [{"exp_labels": {"topic": "edge.telemetry", "severity": "warning"}}]},
            {"eval_time": "10m", "alertname": "LiquidConsumerLagGrowing", "exp_alerts": []},  # growing < 10 min
            {"eval_time": "10m", "alertname": "LiquidDeadLetters", "exp_alerts": []},
            {"eval_time": "17m", "alertname": "LiquidDeadLetters", "exp_alerts": [{"exp_labels": {
                "topic": "edge.telemetry", "reason": "undecodable", "severity": "warning"}}]},
            {"eval_time": "20m", "alertname": "LiquidCommandsSlow", "exp_alerts": []},
        ]}]}
    (tmp_path / "rules_test.yml").write_text(yaml.safe_dump(tests))
    tested = subprocess.run(["promtool", "test", "rules", "rules_test.yml"], cwd=tmp_path, capture_output=True,
                            text=True)
    assert tested.returncode == 0, tested.stdout + tested.stderr
