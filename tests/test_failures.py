"""The causal failure graph on known structures, and against the fault simulator's true structure."""

from __future__ import annotations

import json
import pickle
import random

import pytest

from edge.faults import FaultScenario, FaultSimulator
from fingerprint.failures import FailureGraph, edge_scores
from schemas.codec import Codec
from schemas.state import StateVersionError


def finish(task: str, t: float, failed: bool, node: str = "n1") -> dict:
    wf, name = task.split("/")
    return {"workflow_id": wf, "task": name, "state": 0, "outcome": "FAILURE" if failed else "SUCCESS",
            "ts_ms": int(t * 1000), "node_id": node}


def found(graph: FailureGraph) -> set[tuple[str, str]]:
    return {(e.source, e.target) for e in graph.edges()}


def test_chain_links_each_link_not_head_to_tail():
    # a/x fails on its own; b/y fails after a/x failed; c/z fails after b/y failed
    rng, g = random.Random(1), FailureGraph(lag_s=10.0)
    last = {"a/x": -1e9, "b/y": -1e9}
    for k in range(3000):
        t = 4.0 * k
        task = ("a/x", "b/y", "c/z")[k % 3]
        if task == "a/x":
            p = 0.1
        elif task == "b/y":
            p = 0.8 if t - last["a/x"] <= 10 else 0.03
        else:
            p = 0.8 if t - last["b/y"] <= 10 else 0.03
        failed = rng.random() < p
        if failed and task != "c/z":
            last[task] = t
        g.learn_one(finish(task, t, failed))
    assert found(g) == {("a/x", "b/y"), ("b/y", "c/z")}


def test_common_cause_links_the_cause_and_not_its_effects_to_each_other():
    rng, g = random.Random(2), FailureGraph(lag_s=15.0)
    for k in range(4000):
        t = 2.0 * k
        outage = (t // 300) % 5 == 0
        if k % 3 == 0 and rng.random() < (0.9 if outage else 0.01):
            g.observe("alert:dep:db", t)
        task = ("w1/load", "w2/save")[k % 2]
        g.learn_one(finish(task, t, rng.random() < (0.85 if outage else 0.02)))
    assert found(g) == {("alert:dep:db", "w1/load"), ("alert:dep:db", "w2/save")}


def test_independent_faults_are_not_linked():
    rng, g = random.Random(3), FailureGraph(lag_s=30.0)
    for k in range(4000):
        t = 1.0 * k
        if rng.random() < 0.02:
            g.observe("alert:thermal:n1", t, "n1")
        g.learn_one(finish(("a/x", "b/y", "c/z")[k % 3], t, rng.random() < 0.15))
    assert found(g) == set()


def test_node_scoped_alerts_only_explain_failures_on_their_node():
    rng, g = random.Random(4), FailureGraph(lag_s=10.0)
    for k in range(4000):
        t = 2.0 * k
        hot = (t // 200) % 4 == 1
        if hot and k % 3 == 0:
            g.observe("alert:thermal:n1", t, "n1")
        node = ("n1", "n2")[k % 2]
        g.learn_one(finish("wf/infer", t, rng.random() < (0.8 if hot and node == "n1" else 0.03), node))
    edges = {e.source: e for e in g.edges()}
    assert set(edges) == {"alert:thermal:n1"}
    assert edges["alert:thermal:n1"].weight > 0.6 and edges["alert:thermal:n1"].base < 0.1


def test_graph_recovers_the_simulators_true_structure():
    scenario = FaultScenario("mixed", outages={"storage": (400.0, 60.0), "validation": (500.0, 60.0)},
                             thermal={"edge-1": (500.0, 80.0)}, transient_p=0.03)
    horizon = 6 * 3600.0
    sim = FaultSimulator(scenario, seed=5, horizon_s=horizon)
    uses = {"insp/gate": ("dep:validation", "network"), "insp/infer": ("accelerator",),
            "insp/write": ("dep:storage", "network"), "wf/stage": ("dep:storage", "network", "accelerator"),
            "insp/ingest": ("input",)}
    placement = {"insp": ("edge-1", "edge-2"), "wf": ("edge-2",)}
    g = FailureGraph(lag_s=30.0)
    t, k = 0.0, 0
    for ts, source, node in sim.indicators(0.0, horizon):
        g.observe(source, ts, node)
    while t < horizon:
        for task, used in uses.items():
            wf = task.split("/")[0]
            node = placement[wf][k % len(placement[wf])]
            hit = sim.failure_at(t, f"r{k}", task, "primary", 1, node, used)
            g.learn_one(finish(task, t, hit is not None, node))
        t, k = t + 3.0, k + 1
    truth = sim.true_edges(placement, uses)
    precision, recall = edge_scores(found(g), truth)
    assert precision >= 0.8 and recall >= 0.8, (found(g), truth)


def test_explained_as_dot_and_json_and_text():
    g = FailureGraph(lag_s=20.0, min_support=3)
    for k in range(100):
        t = 10.0 * k
        bad = k % 4 == 0
        if bad:
            g.observe("alert:dep:db", t - 1)
        g.learn_one(finish("wf/load", t, bad))
    assert json.loads(g.to_json())["edges"][0]["source"] == "alert:dep:db"
    assert '"alert:dep:db" -> "wf/load"' in g.to_dot()
    assert "alert:dep:db -> wf/load" in g.describe()


def test_sliding_window_forgets_old_failures():
    g = FailureGraph(window_s=100.0, lag_s=5.0, min_support=2)
    for k in range(20):
        g.observe("alert:dep:db", k - 0.5)
        g.learn_one(finish("wf/load", k, True))
    assert found(g)
    g.learn_one(finish("wf/load", 500.0, False))
    assert not found(g) and len(g.attempts["wf/load"]) == 1


def test_snapshot_round_trip_and_refusal_of_a_newer_version():
    g = FailureGraph()
    g.learn_one(finish("wf/load", 1.0, True))
    restored = pickle.loads(pickle.dumps(g))
    assert restored.attempts == g.attempts and restored.version == 2
    state = dict(vars(g), version=3)
    with pytest.raises(StateVersionError, match="FailureGraph snapshot has state version 3"):
        FailureGraph.__new__(FailureGraph).__setstate__(state)


def test_a_version_1_snapshot_is_migrated_its_attempts_counted_as_their_primary():
    old = {"window_s": 86400.0, "lag_s": 30.0, "alert_lead_s": 10.0, "min_support": 5, "z_min": 3.0, "min_lift": 2.0,
           "attempts": {"wf/load": [(1.0, "n1", True)]}, "events": {"wf/load": [(1.0, None)]}, "latest_s": 1.0,
           "version": 1}
    g = FailureGraph.__new__(FailureGraph)
    g.__setstate__(old)
    assert g.version == 2 and g.attempts == {"wf/load": [(1.0, "n1", True, None)]} and g.primary_uses == {}
    g.learn_one(finish("wf/load", 2.0, False))
    assert g.failure_rate("wf/load", 2.0) == 0.5


def test_a_shared_resource_links_an_alert_to_tasks_too_rare_to_show_it_alone():
    """Storage outages: 'busy' runs often and shows the link; 'rare' uses storage too, fails 3 times in all."""
    g = FailureGraph(lag_s=20.0, min_support=5)
    for k in range(400):
        t = 10.0 * k
        outage = (k // 10) % 5 == 0
        if outage:
            g.observe("alert:dep:storage", t - 1)
        attrs = {"recovery.uses": "dep:storage,network", "recovery.implementation": "primary"}
        g.learn_one(dict(finish("wf/busy", t, outage), attributes=attrs if outage else None))
        g.learn_one(dict(finish("wf/cpu", t, k % 50 == 27),  # fails on its own now and then, never with storage
                         attributes={"recovery.uses": "accelerator,network", "recovery.implementation": "primary"}
                         if k % 50 == 27 else None))
        if k % 40 == 0:
            failed = outage and k < 300
            g.learn_one(dict(finish("other/rare", t + 1, failed), attributes=attrs if failed else None))
    assert set(g.resource_links()) == {"dep:storage"}     # not 'network': storage explains those failures
    assert g.parents("other/rare") == ["alert:dep:storage"] and not g._parents_of("other/rare")
    assert g.parents("wf/cpu") == [] and g.recovery_parents(["wf/busy"]) == {
        "wf/busy": ["alert:dep:storage"], "@dep:storage": ["alert:dep:storage"]}
    rare = next(e for e in g.edges() if e.target == "other/rare")
    assert rare.via == "dep:storage" and rare.weight > 0.8


def test_failed_signal_round_trips_through_the_codec():
    codec = Codec()
    signal = {"signal_id": "wf/r1/load/0/a2", "workflow_id": "wf", "run_id": "r1", "task": "load", "state": 0,
              "outcome": "FAILURE", "ts_ms": 5, "tsa": [1, 5], "tsa_resolution_ms": 1, "intensity": 1.0,
              "node_id": "edge-1", "resources": None, "data_size_bytes": 0, "run_ended": False, "inputs": None,
              "outputs": None, "attributes": {"recovery.state": "a-i|TIMEOUT|2|0|0|0|0"}, "error_class": "TIMEOUT",
              "attempt": 2, "recovery": "RETRY 5s", "policy_version": 3}
    assert codec.decode(codec.encode("WorkflowSignal", signal)).record == signal
    old = {k: v for k, v in signal.items() if k not in ("error_class", "attempt", "recovery", "policy_version")}
    decoded = codec.decode(codec.encode("WorkflowSignal", old)).record
    assert decoded["error_class"] is None and decoded["attempt"] is None


def test_fingerprint_show_failures_prints_the_graph_from_the_signal_store(tmp_path):
    import subprocess

    import numpy as np

    from edge.faults import TIMEOUT, StepFailure
    from edge.runtime import Step, WorkflowRun, WorkflowSpec
    from fingerprint.store import SignalStore
    from prediction.recovery import step_functions_default
    from tests.conftest import ROOT, liquid_cmd

    clock = {"t": 1_800_000_000.0, "load_failed": -1e9}

    def load(ctx):  # fails now and then; each failure makes the next save fail
        if int(clock["t"]) % 7 == 0:
            clock["load_failed"] = clock["t"]
            raise StepFailure(TIMEOUT, "slow disk")
        return {"y": ctx.inputs["x"]}

    def save(ctx):
        if clock["t"] - clock["load_failed"] < 10:
            raise StepFailure(TIMEOUT, "the same slow disk")
        return {"z": ctx.inputs["y"]}
    spec = WorkflowSpec("orders", (Step("load", load, inputs=("x",), outputs=("y",)),
                                   Step("save", save, inputs=("y",), outputs=("z",))))
    store = SignalStore(str(tmp_path / "signals.db"))
    signals = []
    for k in range(300):
        clock["t"] += 13 + k % 5
        WorkflowRun(spec, f"r{k}", "n1", recovery=step_functions_default(), on_signal=signals.append,
                    clock=lambda: clock["t"], wait=lambda s: clock.__setitem__("t", clock["t"] + s)
                    ).execute({"x": np.arange(2)})
    store.add_many(signals)
    store.close()
    out = subprocess.run(liquid_cmd("fingerprint", "show", "orders", "--store", tmp_path / "signals.db",
                                    "--failures", "--format", "json"), check=False, cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    edges = {(e["source"], e["target"]) for e in json.loads(out.stdout)["edges"]}
    assert edges == {("orders/load", "orders/save")}
