"""Shadow pre-execution end to end: worker runs -> signals -> workflow flow -> shadow commands -> worker."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from deploy.replay import read_topic
from edge.worker import EdgeWorker
from edge.thermal import Scenario
from schemas import TopicNames
from tests.conftest import ROOT

pytestmark = pytest.mark.broker
TOPICS = TopicNames()
RUNS = 40


def run_worker(kafka, zoo, runs=RUNS):
    worker = EdgeWorker(kafka, TOPICS, ["edge-1"], Scenario("steady"), zoo_dir=zoo.root, sensor="thermal",
                        rate=20, interval_s=0.5, workflow="inspection", workflow_runs=runs).start()
    assert worker.wait_runs(timeout_s=240), "the runs did not finish"
    node = worker.nodes["edge-1"]
    node.executor.wait_idle()
    time.sleep(1.0)  # the last acks reach the broker
    stats = node.executor.stats
    worker.stop()
    return node.runs, stats


def test_speculation_on_and_off_give_identical_outputs_and_shadows_commit(kafka, zoo, tmp_path):
    # Speculation off: the same worker, no flow sending shadow commands.
    off, off_stats = run_worker(kafka, zoo)
    assert off_stats.committed == 0
    flow = subprocess.Popen([sys.executable, "-m", "deploy.cli", "flow", "run", "workflow", "--speculation",
                             "--start", "end", "--bootstrap", kafka.bootstrap], cwd=ROOT,
                            stdout=open(tmp_path / "flow.log", "w"), stderr=subprocess.STDOUT)
    try:
        time.sleep(3.0)
        on, stats = run_worker(kafka, zoo)
    finally:
        flow.terminate()
        flow.wait(10)
    assert len(on) == len(off) == RUNS
    assert all(r.error is None for r in on + off)
    # The live workflow never observes a guess: every run's outputs are byte-identical.
    assert [r.fingerprint() for r in on] == [r.fingerprint() for r in off]

    shadow_cmds = [c for c in read_topic(kafka, TOPICS.shadow) if c.get("_schema") == "ShadowCommand"]
    acks = [a for a in read_topic(kafka, TOPICS.acks) if a.get("_schema") == "CommandAck" and a["kind"] == "SHADOW"]
    assert shadow_cmds, (tmp_path / "flow.log").read_text()[-2000:]
    assert {c["node_id"] for c in shadow_cmds} == {"edge-1"}
    committed = [a for a in acks if a["status"] == "COMMITTED"]
    assert len(committed) >= RUNS // 2, "predicted steps were pre-executed and committed through Kafka"
    assert stats.committed == len(committed)
    # A committed pre-executed step hands its result to the run, which does not compute it again
    # (prefetch shadows commit too, but hand over fetched data, not a result).
    executed = [a for a in committed if a["details"].get("executed") == "true"]
    assert executed and sum(sum(r.committed.values()) for r in on) == len(executed)
    assert sum(r.executions.get(a["details"]["step"], 0) for r in on for a in executed
               if a["details"]["run_id"] == r.run_id) == 0
    # A critical step is never pre-executed: the worker refuses, and the policy learns not to ask again.
    for a in acks:
        if a["details"].get("step") in ("quality_gate", "output"):
            assert a["status"] != "COMMITTED" and a["details"].get("executed") != "true"
    assert stats.balanced, "every allocation released, every prefetch dropped"
    predictions = [p for p in read_topic(kafka, TOPICS.predictions) if p.get("_schema") == "NextStepPrediction"]
    assert len(predictions) >= RUNS
