"""Workflow runtime: signals as the schema says, data-dependent branches, immutable versioned artifacts,
the critical sink, failures, and WfCommons instances replayed as runs."""

from __future__ import annotations

import numpy as np
import pytest

from edge.artifacts import ArtifactStore, freeze

from edge.inspection import InspectionCosts, inspection_lots, inspection_workflow

from edge.runtime import Step, WorkflowRun, WorkflowSpec

from edge.wfcommons import wfcommons_tasks, wfcommons_workflow

from tests.support import CentroidClassifier
from schemas import schema_json
from schemas.codec import Codec

FAST = InspectionCosts().scaled(0.1)


@pytest.fixture(scope="module")
def model():
    return CentroidClassifier()


def run_inspection(spec, lot, run_id="r1"):
    signals, sink = [], []
    result = WorkflowRun(spec, run_id, "edge-7", on_signal=signals.append,
                         sink=lambda step, payload: sink.append((step, payload))).execute(lot)
    return result, signals, sink


def test_an_inspection_run_emits_schema_records_in_start_finish_pairs_and_ends_once(model):
    spec = inspection_workflow(model, costs=FAST)
    result, signals, _ = run_inspection(spec, inspection_lots(1, seed=3)[0])
    assert result.error is None
    fields = {f["name"] for f in schema_json("WorkflowSignal")["fields"]}
    codec = Codec()
    for s in signals:
        assert set(s) == fields
        assert codec.decode(codec.encode("WorkflowSignal", s)).record == s
        assert (s["workflow_id"], s["run_id"], s["node_id"]) == ("inspection", "r1", "edge-7")
    assert [s["run_ended"] for s in signals].count(True) == 1 and signals[-1]["run_ended"]
    steps = result.path
    assert [(s["task"], s["state"]) for s in signals] == [(t, st) for t in steps for st in (1, 0)]
    finishes = [s for s in signals if s["state"] == 0]
    assert all(s["outcome"] == "SUCCESS" and len(s["tsa"]) == 2 and s["tsa"][0] <= s["tsa"][1] for s in finishes)
    assert len({s["signal_id"] for s in signals}) == len(signals)


def test_the_quality_gate_branch_depends_on_the_data(model):
    spec = inspection_workflow(model, costs=InspectionCosts().scaled(0.0))
    clean = [run_inspection(spec, lot)[0] for lot in inspection_lots(60, seed=1, noisy_share=0.0)]
    noisy = [run_inspection(spec, lot)[0] for lot in inspection_lots(60, seed=1, noisy_share=1.0)]
    share = lambda results: np.mean(["reinspect" in r.path for r in results])  # noqa: E731
    # both branches occur in both kinds of lot: the prefix cannot tell, only the images can
    assert 0.0 < share(clean) < 0.2 and share(noisy) > share(clean) + 0.1
    revised = next(r for r in noisy if "reinspect" in r.path)
    assert revised.outputs["scores"].version == 2  # re-inspection wrote a new version, postprocess read it
    passed = next(r for r in clean if "reinspect" not in r.path)
    assert passed.outputs["scores"].version == 1 and passed.path[-2:] == ["postprocess", "output"]


def test_the_critical_output_writes_outside_the_run_exactly_once(model):
    spec = inspection_workflow(model, costs=FAST)
    assert spec.critical_steps == {"quality_gate", "output"}
    result, _, sink = run_inspection(spec, inspection_lots(1, seed=5)[0])
    assert sink == [("output", result.outputs["report"].value)]
    assert result.emitted == tuple(sink)
    assert result.outputs["receipt"].value.decode() == __import__("hashlib").sha256(sink[0][1]).hexdigest()


def test_artifacts_are_immutable_versioned_and_content_digested():
    store = ArtifactStore()
    source = np.arange(4)
    first = store.put("x", source)
    source[0] = 99  # the run keeps its own copy
    assert first.value.tolist() == [0, 1, 2, 3] and first.version == 1
    with pytest.raises(ValueError):
        first.value[0] = 5
    second = store.put("x", np.arange(4) * 2)
    assert second.version == 2 and store.get("x") is second and first.digest != second.digest
    assert [a.version for a in store.history("x")] == [1, 2]
    assert store.put("y", b"ab").digest == store.put("z", bytearray(b"ab")).digest
    assert store.put("i", np.zeros(2, np.int32)).digest != store.put("f", np.zeros(2, np.float32)).digest
    with pytest.raises(TypeError):
        freeze([1, 2])


def test_a_failing_step_ends_the_run_with_a_failure_signal_and_runs_nothing_after_it():
    def boom(ctx):
        raise RuntimeError("disk full")

    spec = WorkflowSpec("w", (Step("a", lambda ctx: {"x": b"1"}, outputs=("x",)),
                              Step("b", boom, inputs=("x",), outputs=("y",)),
                              Step("c", lambda ctx: {"z": b"3"}, inputs=("y",), outputs=("z",))))
    signals = []
    result = WorkflowRun(spec, "r", on_signal=signals.append).execute({})
    assert result.error == "b: RuntimeError: disk full"
    assert [(s["task"], s["state"], s["outcome"], s["run_ended"]) for s in signals][-1] == ("b", 0, "FAILURE", True)
    assert "c" not in result.path and "z" not in result.outputs


def test_specs_refuse_duplicate_steps_and_dependencies_on_later_steps():
    a = Step("a", lambda ctx: {}, after=())
    with pytest.raises(ValueError):
        WorkflowSpec("w", (a, a))
    with pytest.raises(ValueError):
        WorkflowSpec("w", (Step("b", lambda ctx: {}, after=("a",)), a))


FORK_JOIN = {
    "name": "forkjoin", "schemaVersion": "1.5",
    "workflow": {
        "specification": {
            "tasks": [
                {"id": "split", "parents": [], "inputFiles": ["raw.dat"], "outputFiles": ["p1", "p2"]},
                {"id": "work1", "parents": ["split"], "inputFiles": ["p1", "db"], "outputFiles": ["o1"]},
                {"id": "work2", "parents": ["split"], "inputFiles": ["p2", "db"], "outputFiles": ["o2"]},
                {"id": "merge", "parents": ["work1", "work2"], "inputFiles": ["o1", "o2"], "outputFiles": ["final"]},
            ],
            "files": [{"id": "raw.dat", "sizeInBytes": 2_000_000}, {"id": "db", "sizeInBytes": 1_000_000},
                      {"id": "p1", "sizeInBytes": 10}, {"id": "p2", "sizeInBytes": 10},
                      {"id": "o1", "sizeInBytes": 10}, {"id": "o2", "sizeInBytes": 10},
                      {"id": "final", "sizeInBytes": 10}]},
        "execution": {"tasks": [{"id": "split", "runtimeInSeconds": 1.0}, {"id": "work1", "runtimeInSeconds": 3.0},
                                {"id": "work2", "runtimeInSeconds": 3.0}, {"id": "merge", "runtimeInSeconds": 1.0}]}}}


def test_a_wfcommons_instance_becomes_a_dag_whose_final_writers_are_critical():
    spec = wfcommons_workflow(FORK_JOIN, speed=100.0, stage_in_mb_s=1000.0, startup_ms=1.0, jitter=0.0)
    merge = spec.step("merge")
    assert merge.after == ("work1", "work2") and merge.inputs == ("o1", "o2") and merge.critical
    assert spec.critical_steps == {"merge"}
    assert set(spec.step("work1").fetch) == {"db"} and spec.step("work1").inputs == ("p1",)
    signals, sink = [], []
    result = WorkflowRun(spec, "r1", slots=2, on_signal=signals.append,
                         sink=lambda step, p: sink.append((step, p))).execute({})
    assert result.error is None and result.path[0] == "split" and result.path[-1] == "merge"
    at = {(s["task"], s["state"]): s["ts_ms"] for s in signals}
    assert at[("work2", 1)] < at[("work1", 0)]  # two slots: the branches overlap
    assert at[("merge", 1)] >= max(at[("work1", 0)], at[("work2", 0)])
    assert [step for step, _ in sink] == ["merge"] and sink[0][1]["final"] == result.outputs["final"].value
    again = WorkflowRun(spec, "r1", slots=1).execute({})
    assert again.fingerprint() == result.fingerprint()  # outputs depend on inputs, not on scheduling


def test_old_wfcommons_job_lists_are_read_too():
    old = {"workflow": {"jobs": [
        {"name": "a_ID01", "runtime": 2.0, "parents": [], "files": [{"link": "output", "name": "f", "size": 3}]},
        {"name": "b_ID02", "runtime": 1.5, "parents": ["a_ID01"],
         "files": [{"link": "input", "name": "f", "size": 3}, {"link": "output", "name": "g", "size": 1}]}]}}
    tasks = wfcommons_tasks(old)
    assert [(t.name, t.parents, t.runtime_s) for t in tasks] == [("a_ID01", (), 2.0), ("b_ID02", ("a_ID01",), 1.5)]
    assert tasks[1].inputs == (("f", 3072),)
    with pytest.raises(ValueError):
        wfcommons_tasks({"workflow": {"jobs": [{"name": "x", "parents": ["y"]}]}})
