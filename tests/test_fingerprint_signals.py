"""Bad signals: each kind is counted, handled as documented, and nothing ever raises."""

from __future__ import annotations

import random

import pytest

from fingerprint.signals import ISSUE_KINDS
from fingerprint.temporal import Fingerprint
from fingerprint.traces import MarkovProcess, make_signal, run_signals
from prediction.nextstep import NextStepPredictor


def sig(run, task, state, ts, sid=None, **kw):
    return make_signal("w", run, task, state, ts, signal_id=sid or f"{run}/{task}/{state}/{ts}", tsa=[ts], **kw)


@pytest.mark.parametrize("broken", [
    None, "text", 42, [], {},
    {"signal_id": "x"},
    {**sig("r", "a", 1, 0), "state": 2},
    {**sig("r", "a", 1, 0), "state": "1"},
    {**sig("r", "a", 1, 0), "ts_ms": 1.5},
    {**sig("r", "a", 1, 0), "ts_ms": None},
    {**sig("r", "a", 1, 0), "task": None},
    {**sig("r", "a", 1, 0), "run_id": 7},
])
def test_malformed_signals_are_counted_and_dropped(broken):
    fp = Fingerprint("w")
    assert fp.observe_one(broken) is None
    assert fp.issues == {"malformed": 1} and fp.accepted == 0 and not fp.open_runs


def test_optional_fields_of_the_wrong_type_are_ignored_not_fatal():
    fp = Fingerprint("w")
    fp.learn_one(sig("r", "a", 1, 0, resources={"cpu": "lots", "mem_mb": 512, 3: 1.0}, data_size_bytes=-5))
    fp.learn_one(sig("r", "a", 0, 10, data_size_bytes="big", run_ended=True))
    ex = fp.runs[0].executions[0]
    assert ex.resources == {"mem_mb": 512.0} and ex.in_bytes is None and ex.out_bytes is None
    assert fp.issues == {}


def test_each_kind_of_bad_signal_is_counted_as_documented():
    fp = Fingerprint("w")
    assert fp.observe_one(sig("r1", "a", 1, 100)).kind == "start"
    assert fp.observe_one(sig("r1", "a", 1, 100)) is None                       # duplicate
    assert fp.observe_one({**sig("r1", "a", 1, 101), "workflow_id": "v"}) is None  # unknown workflow
    assert fp.observe_one(sig("r1", "zz", 0, 120)) is None                      # finish without start
    assert fp.observe_one(sig("r1", "a", 0, 90)) is None                        # finish before its start
    assert fp.observe_one(sig("r1", "b", 1, 95)).kind == "start"                # out of order: kept
    obs = fp.observe_one(sig("r1", "a", 0, 130, run_ended=True))
    assert obs.ended and fp.runs[0].run_id == "r1"
    assert fp.observe_one(sig("r1", "c", 1, 140)) is None                       # after the run ended
    assert fp.issues == {"duplicate": 1, "unknown_workflow": 1, "finish_without_start": 1,
                         "negative_duration": 1, "out_of_order": 1, "after_run_end": 1}
    assert set(fp.issues) <= set(ISSUE_KINDS)
    assert fp.runs[0].started == ["a", "b"]  # the late start is part of the run


def test_a_closing_signal_still_closes_the_run_when_its_task_never_started():
    fp = Fingerprint("w")
    fp.learn_one(sig("r1", "a", 1, 0))
    fp.learn_one(sig("r1", "a", 0, 5))
    obs = fp.observe_one(sig("r1", "ghost", 0, 9, run_ended=True))
    assert obs is not None and obs.ended
    assert fp.issues == {"finish_without_start": 1} and not fp.open_runs and len(fp.runs) == 1
    # a stray finish of an unknown run opens nothing
    fp.learn_one(sig("r2", "a", 0, 20))
    assert not fp.open_runs


def test_fuzzed_signals_never_raise_and_every_signal_is_accounted_for():
    rng = random.Random(42)
    good = list(MarkovProcess({("<start>",): {"a": 1.0}, ("a",): {"b": 0.5, "<end>": 0.5},
                               ("b",): {"<end>": 1.0}}, workflow_id="w").signals(300, seed=1))
    junk_values = [None, "", "x", -1, 0, 1, 2, 1.5, True, [], {}, 10**20, "w", "<end>"]
    stream = []
    for s in good:
        s = dict(s)
        roll = rng.random()
        if roll < 0.15:  # corrupt a field
            s[rng.choice(list(s))] = rng.choice(junk_values)
        elif roll < 0.2:  # drop a field
            del s[rng.choice(list(s))]
        stream.append(s)
        if rng.random() < 0.05:
            stream.append(dict(s))  # redelivery
    rng.shuffle(stream[len(stream) // 2:])  # the second half arrives out of order
    predictor = NextStepPredictor("w")
    for s in stream:
        predictor.learn_one(s)
    fp = predictor.fingerprint
    dropped = sum(v for k, v in fp.issues.items() if k not in ("out_of_order", "abandoned_run"))
    # every signal is accepted or dropped, except that a dropped finish carrying run_ended is accepted
    assert fp.accepted + dropped >= len(stream)
    assert fp.accepted + dropped - len(stream) <= fp.issues.get("finish_without_start", 0) + \
        fp.issues.get("negative_duration", 0)
    assert {"malformed", "duplicate", "out_of_order"} <= set(fp.issues)
    assert fp.dag().nodes  # the survivors still make a fingerprint


def test_a_predictor_asked_about_a_workflow_it_never_saw_answers_nothing():
    predictor = NextStepPredictor("w")
    assert predictor.predict_proba_one(["a"]) == {} and predictor.predict_one(["a"]) is None
    out = [p for s in run_signals("other", "r", [("a", 0, 1)]) for p in predictor.predict_then_learn_one(s)]
    assert out == [] and predictor.fingerprint.issues == {"unknown_workflow": 2}
