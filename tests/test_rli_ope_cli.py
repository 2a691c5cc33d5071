"""``liquid evaluate policy`` on a decision log written by the agent on the simulated fleet."""

import json

import pytest

from deploy.cli import main
from edge.heterogeneous import HeteroNode, fleet_specs
from morph.agent import RliAgent, RliConfig
from morph.arms import ArmSet
from morph.ope import log_record


@pytest.fixture(scope="module")
def decision_log(tmp_path_factory):
    arms = ArmSet.nominal()
    agent = RliAgent(arms, RliConfig(seed=2))
    specs = fleet_specs(seed=2, nodes=2, duration_s=900)
    nodes = [HeteroNode(s, arms) for s in specs]
    states = [agent.new_state(s.node_id) for s in specs]
    last, lines = [None, None], []
    for _ in range(900):
        for n, node in enumerate(nodes):
            d = agent.decide(states[n], node.step())
            if d is None:
                continue
            if d.command:
                node.apply(d.command)
            if last[n] is not None and d.previous_reward is not None:
                lines.append(json.dumps(log_record(last[n], d.previous_reward)))
            last[n] = d
    path = tmp_path_factory.mktemp("ope") / "decisions.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path, len(lines)


def test_estimates_each_candidate_from_the_log(decision_log, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("LIQUID_ZOO_DIR", str(tmp_path / "no-zoo"))   # nominal arms, as the log was written
    path, n = decision_log
    assert main(["evaluate", "policy", "--log", str(path), "--candidate", "lightest-safe",
                 "--candidate", "arm:snn/int8/b1/fallback", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["decisions"] == n and n > 150
    for est in report["candidates"].values():
        assert set(est) == {"matches", "ips", "snips", "dr", "direct"}
        assert -2.0 < est["dr"] < 2.0


def test_bad_input_is_one_line_with_status_2(decision_log, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("LIQUID_ZOO_DIR", str(tmp_path / "no-zoo"))
    path, _ = decision_log
    assert main(["evaluate", "policy", "--log", str(path), "--candidate", "arm:bert/fp64/b9"]) == 2
    assert "no arm 'bert/fp64/b9'" in capsys.readouterr().err
    assert main(["evaluate", "policy", "--log", str(tmp_path / "none.jsonl"), "--candidate", "lightest-safe"]) == 2
    assert "no such decision log" in capsys.readouterr().err
