"""Speculation policy and the whole loop: the cost model's thresholds, commit/rollback on the next signal,
critical steps, the per-node bound, learning from acks, snapshots; and speculation never changing what a
run produces, whether predictions are right, all wrong, or shadows are killed or crash mid-way."""

from __future__ import annotations

import hashlib
import pickle
import random
from dataclasses import replace

import pytest

from fingerprint.traces import MarkovProcess, run_signals
from edge.shadow import ShadowExecutor
from tests.support import LocalLoop
from edge.inspection import InspectionCosts, Replica, inspection_lots, inspection_workflow
from edge.runtime import WorkflowRun, WorkflowSpec
from tests.support import CentroidClassifier
from prediction.nextstep import NextStepPredictor
from prediction.speculation import (ALLOCATE, PRE_EXECUTE, PREFETCH, CostModel, SpeculationPolicy, Speculator)
from schemas.codec import Codec

BRANCHING = MarkovProcess({
    ("<start>",): {"a": 1.0}, ("a",): {"b": 0.8, "c": 0.2}, ("b",): {"d": 1.0}, ("c",): {"d": 1.0},
    ("d",): {"<end>": 1.0}}, durations={t: (10.0, 1.0) for t in "abcd"}, workflow_id="w")


def trained(policy=SpeculationPolicy(), runs=300) -> Speculator:
    speculator = Speculator("w", policy=policy)
    for s in BRANCHING.signals(runs, seed=2):
        speculator.learn_one(s)
    return speculator


def live(path, run_id="live", t0=10**7):
    return run_signals("w", run_id, [(t, 10 * i, 10 * i + 10) for i, t in enumerate(path)], t0_ms=t0, node_id="n1")


def acts(commands):
    return [(c["action"], c["step"]) for c in commands]


def test_the_cost_model_sets_a_different_confidence_threshold_per_action():
    model = CostModel()
    threshold = lambda action: min(p / 100 for p in range(101) if model.worth(action, p / 100, 10.0, 10.0))  # noqa
    assert threshold(PRE_EXECUTE) == 0.51 and threshold(PREFETCH) == 0.34
    cautious = CostModel(waste_weight={ALLOCATE: 0.5, PREFETCH: 0.5, PRE_EXECUTE: 3.0})
    assert cautious.worth(PRE_EXECUTE, 0.7, 10.0, 10.0) is False and cautious.worth(PRE_EXECUTE, 0.8, 10.0, 10.0)
    assert model.worth(PRE_EXECUTE, 0.9, 1.0, 100.0) is False  # a confident guess that saves little is not worth it


def test_commands_follow_the_run_commit_the_predicted_step_and_roll_back_the_mispredicted_one():
    speculator = trained()
    signals = live(["a", "c", "d"])
    out = [speculator.predict_then_learn_one(s)[1] for s in signals]
    assert acts(out[0]) == [(PRE_EXECUTE, "b")]          # a started: b is 0.8 likely; c (0.2) is not worth it
    assert acts(out[2]) == [("ROLLBACK", "b"), (PRE_EXECUTE, "d")]
    assert out[2][0]["reason"] == "mispredicted: c started"
    assert acts(out[4]) == [("COMMIT", "d")]
    assert all(not o for o in (out[1], out[3], out[5]))
    codec = Codec()
    for c in (c for o in out for c in o):
        assert codec.decode(codec.encode("ShadowCommand", c)).record == c
        assert c["node_id"] == "n1" and c["run_id"] == "live" and 0.0 <= c["confidence"] <= 1.0
    assert out[0][0]["confidence"] == pytest.approx(0.8, abs=0.06)
    assert out[0][0]["expected_start_ts_ms"] - signals[0]["ts_ms"] == pytest.approx(10, abs=2)
    assert speculator.shadows == {} and not speculator.in_flight


def test_the_end_of_a_run_rolls_back_what_it_left_open():
    speculator = trained()
    out = [speculator.predict_then_learn_one(s)[1] for s in live(["a", "b"])]
    assert acts(out[2]) == [("COMMIT", "b"), (PRE_EXECUTE, "d")]
    assert acts(out[3]) == [("ROLLBACK", "d")] and out[3][0]["reason"] == "run ended"
    assert speculator.shadows == {} and not speculator.in_flight


def test_a_critical_step_is_only_prepared_whether_configured_or_learned_from_a_rejection():
    configured = trained(SpeculationPolicy(critical=frozenset({"b"})))
    assert acts(configured.predict_then_learn_one(live(["a"])[0])[1]) == [(ALLOCATE, "b"), (PREFETCH, "b")]

    learner = trained()
    first = learner.predict_then_learn_one(live(["a"], "r1")[0])[1]
    assert acts(first) == [(PRE_EXECUTE, "b")]
    learner.learn_ack({"command_id": first[0]["command_id"], "kind": "SHADOW", "status": "REJECTED",
                    "reason": "critical step: never pre-executed",
                    "details": {"workflow_id": "w", "run_id": "r1", "step": "b", "action": PRE_EXECUTE,
                                "code": "critical"}})
    assert learner.shadows == {} and learner.metrics.rejected == {"critical": 1}
    assert acts(learner.predict_then_learn_one(live(["a"], "r2")[0])[1]) == [(ALLOCATE, "b"), (PREFETCH, "b")]


def test_open_shadows_per_node_are_bounded_and_the_most_valuable_go_first():
    even = MarkovProcess({("<start>",): {"a": 1.0}, ("a",): {"b": 0.6, "c": 0.4}, ("b",): {"<end>": 1.0},
                          ("c",): {"<end>": 1.0}}, durations={"a": (10, 1), "b": (10, 1), "c": (30, 1)},
                         workflow_id="w")
    eager = CostModel(waste_weight={ALLOCATE: 0.1, PREFETCH: 0.1, PRE_EXECUTE: 0.1})
    speculator = Speculator("w", policy=SpeculationPolicy(cost=eager, max_in_flight=1))
    for s in even.signals(300, seed=4):
        speculator.learn_one(s)
    out = speculator.predict_then_learn_one(live(["a"], "r1")[0])[1]
    assert acts(out) == [(PRE_EXECUTE, "c")]  # c saves more (30 ms x 0.4 > 10 ms x 0.6)
    assert acts(speculator.predict_then_learn_one(live(["a"], "r2", t0=2 * 10**7)[0])[1]) == []  # the node is full
    unbounded = pickle.loads(pickle.dumps(speculator))
    object.__setattr__(unbounded, "policy", replace(unbounded.policy, max_in_flight=3))
    assert acts(unbounded.predict_then_learn_one(live(["a"], "r3", t0=3 * 10**7)[0])[1]) == [(PRE_EXECUTE, "c"), (PRE_EXECUTE, "b")]


def test_acks_teach_the_policy_what_an_action_really_saves_and_fill_the_metrics():
    speculator = trained()
    for i in range(12):
        run = f"r{i}"
        out = speculator.predict_then_learn_one(live(["a"], run, t0=10**7 + i * 1000)[0])[1]
        if acts(out) != [(PRE_EXECUTE, "b")]:
            # the cheap actions, not yet measured, are still worth their prior
            assert acts(out) == [(ALLOCATE, "b"), (PREFETCH, "b")]
            break
        # the shadow of b never saves anything (b can only start once a's output exists) and costs 10 ms
        status = "ROLLED_BACK" if i % 2 == 0 else "COMMITTED"
        speculator.learn_ack({"command_id": out[0]["command_id"], "kind": "SHADOW", "status": status,
                           "reason": "ok" if status == "COMMITTED" else "mispredicted: c started",
                           "details": {"workflow_id": "w", "run_id": run, "step": "b", "actions": PRE_EXECUTE,
                                       "saved_ms": "0.0", "busy_ms": "10.0", "alloc_ms": "0", "fetch_ms": "0",
                                       "wasted_ms": "0.0" if status == "COMMITTED" else "10.0"}})
        speculator.predict_then_learn_one({**live(["a"], run)[-1], "run_ended": True})[1]
    assert i < 11, "the policy kept pre-executing a step that never saves anything"
    m = speculator.metrics
    assert m.committed + m.rolled_back == i and m.hit_rate == pytest.approx(m.committed / i)
    assert m.rollbacks_by_reason == {"mispredicted": m.rolled_back} and m.wasted_ms == 10.0 * m.rolled_back
    assert 0 < m.wasted_fraction < 1 and m.to_dict()["saved_ms"] == 0.0
    assert m.rolled_back >= 1 and m.runs["r0"].rolled_back == 1 and m.runs["r1"].committed == 1


def test_the_state_survives_a_snapshot_and_decides_the_same_afterwards():
    speculator = trained()
    signals = live(["a", "c", "d"])
    speculator.predict_then_learn_one(signals[0])[1]
    restored = pickle.loads(pickle.dumps(speculator))
    assert restored.version == speculator.version == 1
    for s in signals[1:]:
        assert restored.predict_then_learn_one(s)[1] == speculator.predict_then_learn_one(s)[1]


# -- the whole loop on the reference workflow ---------------------------------------------------

COSTS = InspectionCosts().scaled(0.25)
N_WARM, N_LOTS = 10, 14


class CountingClassifier(CentroidClassifier):
    """Counts real inference (calls) and re-inspection (replica runs), wherever they happen."""

    def __init__(self):
        super().__init__()
        self.calls = self.replica_calls = 0

    def __call__(self, batch):
        self.calls += 1
        return super().__call__(batch)

    def replica(self):
        def run(x):
            self.replica_calls += 1
            return CentroidClassifier.__call__(self, x)
        return Replica(self.identity, run)


class WrongPredictor:
    """Learns like the real predictor but always names a step that does not start next."""

    def __init__(self, workflow_id, paths):
        self.inner, self.paths = NextStepPredictor(workflow_id), paths

    def learn_one(self, signal):
        self.inner.learn_one(signal)

    def predict_then_learn_one(self, signal):
        out = self.inner.predict_then_learn_one(signal)
        path = self.paths.get(signal["run_id"].split("-", 1)[1])
        if not out or path is None:
            return out
        k = path.index(signal["task"])
        wrong = [t for t in (path[k + 2:k + 3] + ["reinspect"]) if t not in path[k + 1:k + 2]]
        return [{**p, "candidates": [{"task": t, "probability": 0.99, "expected_start_ts_ms": p["ts_ms"] + 5}
                                     for t in wrong]} for p in out]


def chaotic(decide, executor, seed):
    """Also roll back, at random moments, shadows that are open (killing some mid-way)."""
    rng = random.Random(seed)

    def wrapped(signal):
        commands = decide(signal)
        with executor._cond:
            open_ = list(executor._shadows)
        for run_id, step in open_:
            if rng.random() < 0.5:
                commands.append({"command_id": f"chaos/{run_id}/{step}/{rng.random()}", "node_id": executor.node_id,
                                 "workflow_id": "inspection", "run_id": run_id, "step": step, "action": "ROLLBACK",
                                 "confidence": 0.0, "expected_start_ts_ms": signal["ts_ms"],
                                 "issued_ts_ms": signal["ts_ms"], "input_digest": None, "reason": "chaos"})
        return commands
    return wrapped


def counting_bodies(spec: WorkflowSpec, calls: dict) -> WorkflowSpec:
    """The same workflow counting every run of each step's body, live or in a shadow, per (run, step)."""
    def count(fn, name):
        def body(ctx):
            calls[(ctx.run_id, name)] = calls.get((ctx.run_id, name), 0) + 1
            return fn(ctx)
        return body
    return replace(spec, steps=tuple(replace(s, fn=count(s.fn, s.name)) for s in spec.steps))


def crashing_in_shadows(spec: WorkflowSpec) -> WorkflowSpec:
    """The same workflow whose non-critical steps crash half-way when run as a shadow (for some runs)."""
    def crash(fn, name):
        def body(ctx):
            if ctx.shadow and hashlib.sha256(f"{ctx.run_id}/{name}".encode()).digest()[0] % 2:
                ctx.sleep(1)
                raise RuntimeError("shadow worker died")
            return fn(ctx)
        return body
    return replace(spec, steps=tuple(s if s.critical else replace(s, fn=crash(s.fn, s.name)) for s in spec.steps))


@pytest.fixture(scope="module")
def lots():
    return inspection_lots(N_WARM + N_LOTS, seed=11, noisy_share=0.5)


@pytest.fixture(scope="module")
def reference(lots):
    """Speculation off: what every run must produce, byte for byte."""
    spec = inspection_workflow(CentroidClassifier(), costs=COSTS)
    results = {}
    for i, lot in enumerate(lots):
        sink = []
        r = WorkflowRun(spec, f"off-{i}", "n1", sink=lambda s, p: sink.append(p)).execute(lot)
        results[str(i)] = (r.fingerprint(), sink, r.path, r.outputs["report"].value)
    return results


def speculate(lots, mode, reference, costs=COSTS):
    model = CountingClassifier()
    spec = inspection_workflow(model, costs=costs)
    if mode == "crash":
        spec = crashing_in_shadows(spec)
    speculate.calls = {}
    spec = counting_bodies(spec, speculate.calls)
    paths = {k: v[2] for k, v in reference.items()}
    predictor = WrongPredictor("inspection", paths) if mode == "wrong" else None
    policy = SpeculationPolicy() if mode == "wrong" else SpeculationPolicy(critical=spec.critical_steps)
    speculator = Speculator("inspection", policy=policy, predictor=predictor)
    executor = ShadowExecutor("n1", max_in_flight=4)
    def commands(signal):
        return speculator.predict_then_learn_one(signal)[1]

    decide = chaotic(commands, executor, seed=5) if mode == "chaos" else commands
    loop = LocalLoop(executor, decide, speculator.learn_ack)
    runs = []
    for i, lot in enumerate(lots):
        sink = []
        calls = model.calls
        run = WorkflowRun(spec, f"on-{i}", "n1", executor=executor, on_signal=loop, sink=lambda s, p: sink.append(p))
        result = run.execute(lot)
        runs.append((str(i), result, sink, model.calls - calls))
    assert executor.wait_idle(5.0)
    executor.close()
    return runs, executor, speculator, loop


@pytest.mark.parametrize("mode", ["on", "wrong", "chaos", "crash"])
def test_speculation_never_changes_what_a_run_produces(lots, reference, mode):
    runs, executor, speculator, loop = speculate(lots, mode, reference)
    for key, result, sink, _ in runs:
        fingerprint, off_sink, off_path, report = reference[key]
        assert result.error is None
        assert result.outputs["report"].value == report and sink == off_sink, f"run {key} differs ({mode})"
        assert result.fingerprint() == fingerprint and result.path == off_path
    s = executor.stats
    assert s.balanced and s.allocated == s.released and s.data_loaded == s.data_released
    assert executor.open_shadows == 0
    assert s.executions["output"] == s.executions["quality_gate"] == 0  # critical: never pre-executed
    assert speculator.shadows == {} and not speculator.in_flight
    finals = [a for a in loop.acks if a["status"] in ("COMMITTED", "ROLLED_BACK")]
    assert len(finals) == len({(a["details"]["run_id"], a["details"]["step"], a["command_id"]) for a in finals})
    measured = runs[N_WARM:]
    if mode == "on":
        assert speculator.metrics.hit_rate > 0.6 and s.committed > 2 * len(measured)
        # a committed step's real work ran once, in the shadow; only postprocess re-runs, when re-inspection
        # rewrote the scores its shadow had read
        calls = speculate.calls
        for key, r, *_ in measured:
            for step in r.path:
                n = calls[(f"on-{key}", step)]
                assert n == 1 or (step == "postprocess" and "reinspect" in r.path and n == 2), (key, step, n)
            assert all(r.executions.get(step, 0) == 0 for step in r.committed)
        # preprocess always follows ingest (p ~ 1): its shadow result is committed in every run; postprocess
        # only when the policy found p(pass) high enough, else its data is pre-fetched instead
        assert all(r.committed.get("preprocess") == 1 for _, r, *_ in measured)
        assert any(r.committed.get("postprocess") for _, r, *_ in measured)
        assert all(inference == 1 for *_, inference in measured)  # the model itself: once per run
    if mode == "wrong":
        assert s.committed == 0 and speculator.metrics.hit_rate == 0.0
        assert s.rejected["critical"] >= 1 and s.rolled_back["mispredicted"] > len(lots)
    if mode == "chaos":
        assert s.rolled_back["chaos"] > 0 and s.committed > 0
    if mode == "crash":
        assert s.rolled_back["shadow failed"] > 0 and s.committed > 0


def test_redelivered_signals_and_signals_after_the_end_change_nothing():
    speculator = trained()
    signals = live(["a", "c", "d"])
    first = [speculator.predict_then_learn_one(s)[1] for s in signals[:3]]
    assert acts(first[2]) == [("ROLLBACK", "b"), (PRE_EXECUTE, "d")]
    assert speculator.predict_then_learn_one(signals[0])[1] == [] and speculator.predict_then_learn_one(signals[2])[1] == []  # redelivered
    assert speculator.shadows["live"].keys() == {"d"}  # the shadow of d survived the duplicates
    rest = [speculator.predict_then_learn_one(s)[1] for s in signals[3:]]
    assert acts(rest[1]) == [("COMMIT", "d")]
    late = {**signals[0], "signal_id": "late-one"}
    assert speculator.predict_then_learn_one(late)[1] == [] and speculator.shadows == {}
