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
