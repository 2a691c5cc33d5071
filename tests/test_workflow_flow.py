"""The workflow flow through the real broker: replayed logs, predictions, the signal store."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest
from confluent_kafka import Producer

from deploy.replay import read_topic
from fingerprint.traces import read_event_log
from schemas import TopicNames
from tests.conftest import run_liquid
from tests.test_nextstep_cli import LOG_ARGS, log  # noqa: F401  (the fixture: a CSV log of a known process)

pytestmark = pytest.mark.broker
TOPICS = TopicNames()


def flow_accuracy(predictions, signals):
    """Prequential top-1 of the flow's predictions: each scored against the task that started next in its run."""
    starts = defaultdict(list)
    for s in sorted(signals, key=lambda s: s["ts_ms"]):
        if s["state"] == 1:
            starts[s["run_id"]].append(s["task"])
    scored = hits = 0
    for p in predictions:
        following = starts[p["run_id"]]
        if p["prefix_length"] < len(following):  # a next task exists (the run's end is scored separately)
            scored += 1
            hits += p["candidates"][0]["task"] == following[p["prefix_length"]]
    return scored, hits / scored


def test_replayed_log_gives_the_offline_figures_and_fingerprint(kafka, log, tmp_path):  # noqa: F811
    store = tmp_path / "signals.sqlite3"
    run_liquid("produce", "signals", "--log", log, *LOG_ARGS, "--workflow", "claims", "--bootstrap", kafka.bootstrap)
    run_liquid("flow", "run", "workflow", "--until-end", "--store", store, "--bootstrap", kafka.bootstrap)

    predictions = [p for p in read_topic(kafka, TOPICS.predictions) if p.get("_schema") == "NextStepPrediction"]
    signals = list(read_event_log(log, "case id", "activity", "time", workflow_id="claims"))
    assert len(predictions) == sum(1 for s in signals if s["state"] == 1)
    for p in predictions:
        probs = [c["probability"] for c in p["candidates"]]
        assert probs == sorted(probs, reverse=True) and all(0.0 <= x <= 1.0 for x in probs) and sum(probs) <= 1 + 1e-9
    scored, accuracy = flow_accuracy(predictions, signals)

    offline = json.loads(run_liquid("evaluate", "next-step", "--log", log, *LOG_ARGS, "--json").stdout)
    assert scored == offline["predictions"]
    assert accuracy == pytest.approx(offline["accuracy"], abs=1e-9)
    assert offline["accuracy"] > offline["baseline_accuracy"] - 0.02

    from_store = run_liquid("fingerprint", "show", "claims", "--store", store, "--format", "json").stdout
    from_log = run_liquid("fingerprint", "show", "claims", "--log", log, *LOG_ARGS, "--format", "json").stdout
    assert json.loads(from_store) == json.loads(from_log), "the flow's history store rebuilds the same fingerprint"
    assert {"receive", "check", "approve", "pay", "reject", "escalate"} <= set(from_store.replace('"', " ").split())


def test_bad_signals_are_counted_and_garbage_goes_to_dead_letters(kafka, tmp_path):
    from schemas.codec import Codec

    codec, producer = Codec(), Producer(kafka.producer())

    def sig(i, run, task, state, ts, **extra):
        return {"signal_id": f"s{i}", "workflow_id": "wf", "run_id": run, "task": task, "state": state,
                "outcome": None if state else "SUCCESS", "ts_ms": ts, "tsa": [ts], "tsa_resolution_ms": 1,
                "intensity": 1.0, "node_id": "edge-1", "resources": None, "data_size_bytes": None,
                "run_ended": False, **extra}

    good = [sig(1, "r1", "a", 1, 1000), sig(2, "r1", "a", 0, 2000), sig(3, "r1", "b", 1, 2100),
            sig(4, "r1", "b", 0, 3000, run_ended=True)]
    bad = [sig(5, "r2", "x", 0, 5000),                  # finish without start
           sig(6, "r1", "a", 1, 10),                    # after its run ended
           sig(7, "r3", "a", 1, 6000), sig(8, "r3", "b", 1, 5500),  # out of order within an open run
           good[0],                                     # duplicate signal id
           sig(9, "r4", "a", 5, 7000)]                  # malformed: state is neither 0 nor 1
    for s in good + bad:
        producer.produce(TOPICS.signals, key=b"wf", value=codec.encode("WorkflowSignal", s))
    producer.produce(TOPICS.signals, key=b"wf", value=b"\x00garbage")
    producer.flush()
    store = tmp_path / "s.sqlite3"
    proc = run_liquid("flow", "run", "workflow", "--until-end", "--store", store, "--bootstrap", kafka.bootstrap)
    from tests.test_control_flow import _raw_messages

    raw_dead = _raw_messages(kafka, TOPICS.deadletter)
    assert len(raw_dead) == 1 and raw_dead[0].value() == b"\x00garbage"
    flagged = {line.split("signal ")[1].split()[0]: line.split("signal ")[1].split()[1].rstrip(":")
               for line in proc.stderr.splitlines() if "issues so far" in line}
    assert flagged == {"s5": "finish_without_start", "s6": "after_run_end", "s8": "out_of_order", "s1": "duplicate",
                       "s9": "malformed"}, proc.stderr[-2000:]
    # The good run was learned: the history store has every accepted signal and the fingerprint knows a -> b.
    shown = run_liquid("fingerprint", "show", "wf", "--store", store, "--format", "json").stdout
    assert '"a"' in shown and '"b"' in shown
