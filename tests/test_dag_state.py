"""The fingerprint's streaming protocol and snapshot state: River's learn_one, lineage in version 2, bounds."""

from __future__ import annotations

import copy
import copyreg
import io
import pickle

import pytest

from fingerprint.runs import Execution, Run
from fingerprint.temporal import FORMAT_VERSION, Fingerprint, Observed, Window
from fingerprint.traces import run_signals
from schemas.state import StateVersionError


def lineage_run(i: int, t0: int) -> list[dict]:
    return run_signals("w", f"r{i}", [("a", 0, 10, "SUCCESS", None, None, None, [], ["a.out"]),
                                      ("b", 12, 30, "SUCCESS", None, None, None, ["a.out"], ["b.out"])], t0_ms=t0)


def learned(runs: int = 4, **kw) -> Fingerprint:
    fp = Fingerprint("w", **kw)
    for i in range(runs):
        for s in lineage_run(i, 1000 * i):
            fp.learn_one(s)
    return fp


def test_learn_one_returns_nothing_and_observe_one_says_what_the_signal_did():
    fp = Fingerprint("w")
    first, second = lineage_run(0, 0)[:2]
    assert fp.learn_one(first) is None
    obs = fp.observe_one(second)
    assert isinstance(obs, Observed) and obs.kind == "finish" and obs.task == "a" and not obs.ended
    assert fp.observe_one(second) is None and fp.issues == {"duplicate": 1}
    assert fp.open_runs["r0"].executions[0].outputs == ("a.out",)


def test_a_version_1_snapshot_is_migrated_on_restore():
    fp = learned()
    old = copy.deepcopy(fp)
    # what a version 1 snapshot held: executions without lineage slots, no execution count
    for run in old.runs:
        for ex in run.executions:
            del ex.inputs, ex.outputs
    del old.__dict__["window_executions"]
    old.version = 1
    restored = pickle.loads(pickle.dumps(old))
    assert restored.version == FORMAT_VERSION == 2
    assert restored.window_executions == 8
    assert all(ex.inputs is None and ex.outputs is None for run in restored.runs for ex in run.executions)
    # without lineage the edge is still there, now inferred from timing
    assert [(e.source, e.target, e.evidence) for e in restored.dag().edges] == [("a", "b", "handover")]
    assert [(e.source, e.target, e.evidence) for e in fp.dag().edges] == [("a", "b", "lineage")]


class _GenericRunPickler(pickle.Pickler):
    """Pickles runs and executions in the generic slots form the previous release wrote."""

    def reducer_override(self, obj):
        if isinstance(obj, (Run, Execution)):
            return copyreg.__newobj__, (type(obj),), obj.__getstate__()
        return NotImplemented


def test_runs_pickle_positionally_and_snapshots_in_the_generic_form_still_load():
    fp = learned()
    fp.learn_one(lineage_run(9, 9000)[0])  # an open run with a running execution
    restored = pickle.loads(pickle.dumps(fp))
    assert restored.to_dict() == fp.to_dict()
    assert list(restored.runs) == list(fp.runs) and restored.open_runs == fp.open_runs
    out = io.BytesIO()
    _GenericRunPickler(out, protocol=5).dump(fp)
    assert out.getvalue() != pickle.dumps(fp, protocol=5)  # really another form
    assert pickle.loads(out.getvalue()).to_dict() == fp.to_dict()


def test_a_snapshot_of_a_newer_release_is_refused():
    newer = copy.deepcopy(learned())
    newer.version = FORMAT_VERSION + 1
    with pytest.raises(StateVersionError, match="state version 3, this release reads 1 to 2"):
        pickle.loads(pickle.dumps(newer))


def test_version_1_json_reads_as_runs_without_lineage_and_version_2_round_trips():
    fp = learned()
    data = fp.to_dict()
    assert Fingerprint.from_dict(data).to_dict() == data
    old = copy.deepcopy(data)
    old["version"] = 1
    del old["window"]["executions"]
    for run in old["runs"]:
        run["executions"] = [row[:7] for row in run["executions"]]
    restored = Fingerprint.from_dict(old)
    assert restored.runs[0].executions[1].inputs is None and len(restored.runs) == 4


def test_the_window_bounds_executions_whatever_the_size_of_a_run():
    fp = Fingerprint("w", window=Window(runs=100, executions=50))
    for i in range(20):
        spans = [(f"t{k}", k * 10, k * 10 + 5) for k in range(10)]
        for s in run_signals("w", f"r{i}", spans, t0_ms=10_000 * i):
            fp.learn_one(s)
    assert len(fp.runs) == 5 and fp.window_executions == 50
    assert sum(len(r.executions) for r in fp.runs) == fp.window_executions
    # one run larger than the whole budget is still kept: the window never goes empty
    big = Fingerprint("w", window=Window(runs=100, executions=5))
    for s in run_signals("w", "huge", [(f"t{k}", k, k + 1) for k in range(10)]):
        big.learn_one(s)
    assert len(big.runs) == 1
    with pytest.raises(ValueError, match="executions must be at least 1"):
        Window(executions=0)
