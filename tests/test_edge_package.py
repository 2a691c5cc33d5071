"""The node side stands alone: no stream engine in an edge process, and its signals carry data lineage."""

from __future__ import annotations

import subprocess
import sys

from edge.runtime import WorkflowRun
from edge.inspection import InspectionCosts, inspection_lots, inspection_workflow
from tests.conftest import ROOT
from tests.support import CentroidClassifier


def test_the_edge_worker_does_not_import_bytewax():
    code = ("import sys, edge.worker, edge.listener, edge.shadow, edge.wfcommons, deploy.worker\n"
            "loaded = sorted(m for m in sys.modules if m == 'bytewax' or m.startswith('bytewax.'))\n"
            "print(loaded)\n"
            "sys.exit(1 if loaded else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"an edge process imported the stream engine: {proc.stdout}{proc.stderr[-2000:]}"


def test_signals_carry_lineage_that_links_each_reader_to_its_writer():
    spec = inspection_workflow(CentroidClassifier(), costs=InspectionCosts().scaled(0.0))
    signals: list[dict] = []
    WorkflowRun(spec, "r1", "node-1", on_signal=signals.append).execute(inspection_lots(1, seed=3)[0])
    written_by = {a: s["task"] for s in signals if s["state"] == 0 for a in s["outputs"] or ()}
    assert written_by, "finish signals list the artifacts written"
    edges = {(written_by[a], s["task"]) for s in signals if s["state"] == 1 for a in s["inputs"] or ()
             if a in written_by}
    # What each step read, from the spec: the latest version of each input, written by the step that
    # finished writing it last before the reader started (re-inspection rewrites the scores).
    steps = {step.name: step for step in spec.steps}
    last_writer, expected = {}, set()
    for s in signals:
        step = steps[s["task"]]
        if s["state"] == 1:
            expected |= {(last_writer[name], step.name) for name in step.inputs if name in last_writer}
        else:
            last_writer.update({name: step.name for name in step.outputs})
    assert edges == expected
