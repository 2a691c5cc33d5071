"""The workflow flow resumes its per-workflow state from a Bytewax recovery store.

The flow stops after three runs (the input's EOF), restarts on the same
recovery store and carries on: its predictions for the fourth run are those of
a flow that never stopped, which it could not make from a fresh state.
"""

from __future__ import annotations

import pickle
from datetime import timedelta

from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, run_main

from fingerprint.traces import run_signals
from flows.spec import FlowSpec
from flows.workflow import build
from schemas.state import PickledState, thaw


def _runs(first: int, last: int) -> list:
    return [("WorkflowSignal", s) for r in range(first, last)
            for s in run_signals("inspect", f"r{r}", [("ingest", 0, 10), ("infer", 10, 30)], t0_ms=100 * r)]


def _predictions(out: list, run_id: str) -> list:
    return [p for _, (name, p) in out if name == "NextStepPrediction" and p["run_id"] == run_id]


def _run(items: list, recovery_dir=None) -> list:
    out: list = []
    flow = build(FlowSpec("workflow", bootstrap="unused:9092"), source=TestingSource(items), sink=TestingSink(out))
    config = RecoveryConfig(str(recovery_dir)) if recovery_dir is not None else None
    run_main(flow, epoch_interval=timedelta(0), recovery_config=config)
    return out


def test_a_restarted_flow_resumes_each_workflows_state(tmp_path):
    init_db_dir(tmp_path, 1)
    items = [*_runs(0, 3), TestingSource.EOF(), *_runs(3, 4)]
    first = _run(items, tmp_path)
    assert not _predictions(first, "r3")  # stopped at the EOF
    resumed = _run(items, tmp_path)
    uninterrupted = _run([*_runs(0, 3), *_runs(3, 4)])
    fresh = _run(_runs(3, 4))
    assert _predictions(resumed, "r3") == _predictions(uninterrupted, "r3")
    assert _predictions(resumed, "r3")[0]["candidates"][0]["task"] == "infer"
    assert _predictions(fresh, "r3")[0]["candidates"] != _predictions(resumed, "r3")[0]["candidates"]


def test_a_flow_run_without_a_recovery_store_pickles_no_snapshots(monkeypatch):
    """`run_flow` builds the flow with recovery off when no store is given: its workflows' snapshots are None."""
    import bytewax.run

    from deploy import flowrun
    from operators.workflow import NextStepLogic

    built, snapshots = [], []
    real_snapshot = NextStepLogic.snapshot
    monkeypatch.setattr(NextStepLogic, "snapshot", lambda self: snapshots.append(real_snapshot(self)) or snapshots[-1])

    def run_here(flow, **kwargs):
        run_main(flow, epoch_interval=timedelta(0))

    class Workflow:
        @staticmethod
        def build(spec):
            built.append(spec.recovery)
            return build(spec, source=TestingSource(_runs(0, 2)), sink=TestingSink([]))

    monkeypatch.setattr(flowrun, "flow_module", lambda name: Workflow)
    monkeypatch.setattr(bytewax.run, "cli_main", run_here)
    assert flowrun.run_flow(FlowSpec("workflow", bootstrap="unused:9092")) == 0
    assert built == [False] and snapshots and all(s is None for s in snapshots)
    assert real_snapshot(NextStepLogic(None, None)) is not None   # with a store (the default) it is a pickle


def test_a_flow_stopped_while_making_its_recovery_store_starts_cleanly_next_time(tmp_path, monkeypatch):
    import sqlite3

    import bytewax.recovery

    from deploy.flowrun import prepare_recovery

    def stopped_midway(path, partitions):
        (path / "part-0.sqlite3").touch()  # the file exists, its tables do not yet
        raise KeyboardInterrupt

    store = tmp_path / "recovery-control"
    real = bytewax.recovery.init_db_dir
    monkeypatch.setattr(bytewax.recovery, "init_db_dir", stopped_midway)
    try:
        prepare_recovery(store, 1)
    except KeyboardInterrupt:
        pass
    monkeypatch.setattr(bytewax.recovery, "init_db_dir", real)
    prepare_recovery(store, 1)
    tables = {name for (name,) in sqlite3.connect(store / "part-0.sqlite3").execute("select name from sqlite_master")}
    assert {"snaps", "fronts", "commits"} <= tables
    assert [p.name for p in tmp_path.iterdir()] == ["recovery-control"]  # no staging left behind

    (store / "part-0.sqlite3").write_bytes(b"")  # an existing store is the flow's own: never remade
    prepare_recovery(store, 1)
    assert (store / "part-0.sqlite3").read_bytes() == b""


def test_recovery_partitions_join_a_directory_that_holds_other_files(tmp_path):
    from deploy.flowrun import prepare_recovery

    (tmp_path / "README").write_text("ours")
    prepare_recovery(tmp_path, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README", "part-0.sqlite3", "part-1.sqlite3"]


def test_a_killed_starts_staging_is_removed_once_stale_and_a_fresh_one_is_left_to_its_process(tmp_path):
    import os
    import time

    from deploy.flowrun import STALE_STAGING_S, prepare_recovery

    killed, working = tmp_path / ".recovery-control.init-killed", tmp_path / ".recovery-control.init-working"
    for staging in (killed, working):
        staging.mkdir()
        (staging / "part-0.sqlite3").touch()
    old = time.time() - STALE_STAGING_S - 60
    os.utime(killed, (old, old))
    prepare_recovery(tmp_path / "recovery-control", 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".recovery-control.init-working", "recovery-control"]


def test_a_snapshot_pickled_while_its_class_lived_in_the_workflow_operator_still_resumes():
    """Recovery stores written before `PickledState` moved to `schemas.state` name it
    ``operators.workflow.PickledState``: that name must still lead to the class."""
    snap = PickledState.of({"runs": 3})
    moved = pickle.dumps(snap, protocol=2)   # protocol 2 names the class in plain text
    written_before = moved.replace(b"cschemas.state\nPickledState\n", b"coperators.workflow\nPickledState\n")
    assert written_before != moved
    restored = pickle.loads(written_before)
    assert isinstance(restored, PickledState) and thaw(restored) == {"runs": 3}

