"""The workflow operators: next-step prediction per workflow, and the signal history sink.

`NextStepStep` is the mapper of a stateful step keyed by workflow id
(`predict_next_steps`, or Bytewax's ``stateful_flat_map``): its state is the
workflow's `prediction.nextstep.NextStepPredictor` (fingerprint, sequence model,
River model, running metrics), which Bytewax snapshots for recovery.
`SignalStoreSink` writes every signal to the history store (SQLite by default,
PostgreSQL with a DSN) from each worker.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import bytewax.operators as op
from bytewax.dataflow import operator
from bytewax.operators import KeyedStream, StatefulBatchLogic
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from fingerprint.store import SignalStore
from operators import metrics
from operators.events import Event
from prediction.nextstep import NextStepPredictor, render_metrics
# PickledState is imported here too: snapshots pickled before it moved name operators.workflow.PickledState
from schemas.state import PickledState, Versioned, thaw

@dataclass
class WorkflowState(Versioned):
    """What the workflow flow keeps per workflow (snapshotted by Bytewax recovery)."""

    STATE_VERSION: ClassVar[int] = 1
    predictor: NextStepPredictor
    speculation: Any = None   # shadow pre-execution policy state, when enabled
    version: int = STATE_VERSION


class NextStepStep:
    """``(state, event) -> (state, [(schema name, record), ...])`` for ``op.stateful_flat_map``."""

    def __init__(self, make_predictor=NextStepPredictor, speculation_factory=None, signer=None,
                 log_metrics: bool = False):
        self.make_predictor = make_predictor
        self.flagged = 0  # signals the fingerprint flagged (dropped or kept), in this process
        self.log_metrics = log_metrics  # print each published NextStepMetrics record as a log line
        self.speculation_factory = speculation_factory
        self.signer = signer  # edge.signing.CommandSigner: shadow commands leave signed

    def __call__(self, state: Optional[WorkflowState], event: Event):
        record = event.record
        if event.schema_name == "CommandAck":
            if state is not None and state.speculation is not None:
                state.speculation.learn_ack(record)
            return state, ()
        if state is None:
            workflow_id = record["workflow_id"]
            predictor = self.make_predictor(workflow_id)
            # The speculator owns the predictor: one model of the workflow, not two.
            speculation = self.speculation_factory(workflow_id, predictor) if self.speculation_factory else None
            state = WorkflowState(predictor, speculation)
        predictor = state.predictor
        issues = predictor.fingerprint.issues
        # a clean stream has no issues: then nothing is copied or compared per signal
        issues_before = dict(issues) if issues else None
        if state.speculation is not None:
            predictions, commands = state.speculation.predict_then_learn_one(record)
        else:
            predictions, commands = predictor.predict_then_learn_one(record), ()
        if issues and issues != issues_before:  # issues only grow: none now, none before
            self._report_issue(record, issues_before or {}, issues)
        outputs = []
        for prediction in predictions:  # a loop, not a comprehension: no extra frame per signal
            outputs.append(("NextStepPrediction", prediction))
        if commands:
            outputs += [("ShadowCommand", self.signer.sign(c) if self.signer else c) for c in commands]
        running = predictor.publish_metrics(record["ts_ms"])
        if running is not None:
            outputs.append(("NextStepMetrics", running))
            self._export(running, state.speculation)
        return state, outputs

    def _export(self, running: dict, speculation) -> None:
        """A published NextStepMetrics record to Prometheus (and the log, with ``log_metrics``)."""
        metrics.WORKFLOW_QUALITY.observe(running, None if speculation is None else speculation.metrics)
        if self.log_metrics:
            print(render_metrics(running), file=sys.stderr, flush=True)


    def _report_issue(self, record: dict, before: dict, after: dict) -> None:
        from fingerprint.signals import ISSUE_KINDS

        self.flagged += 1
        if self.flagged <= 20 or self.flagged % 1000 == 0:  # say so without flooding the log
            kinds = [k for k in after if after[k] != before.get(k, 0)]
            what = "; ".join(f"{k}: {ISSUE_KINDS.get(k, k)}" for k in kinds)
            print(f"liquid: workflow {record.get('workflow_id')}: signal {record.get('signal_id')} {what}; "
                  f"issues so far {dict(after)}", file=sys.stderr, flush=True)


class NextStepLogic(StatefulBatchLogic):
    """One workflow's `NextStepStep` state in Bytewax's ``stateful_batch`` operator, snapshotted as a pickle.

    Bytewax's ``stateful_flat_map`` snapshots by ``copy.deepcopy`` of the state
    at the end of every epoch, recovery or not: for a predictor with a full
    window that is ~100 ms per workflow and a copy of every object of the state,
    which the garbage collector then has to walk. Pickling the state is the
    same immutable snapshot (recovery pickles it anyway) at a third of the cost
    and one object. It takes the workflow's signals a batch at a time: no
    per-signal ``on_item`` layer in between.
    """

    def __init__(self, step: NextStepStep, state: Optional[WorkflowState], snapshots: bool = True):
        self.step = step
        self.state = state
        self.snapshots = snapshots  # False when no recovery store keeps them

    def on_batch(self, values: list):
        step, state = self.step, self.state
        outputs = []
        for value in values:
            state, out = step(state, value)
            if out:
                outputs += out
        self.state = state
        return outputs, state is None  # discard when the step drops its state, as stateful_flat_map

    def snapshot(self) -> Optional[PickledState]:
        if not self.snapshots:
            # No recovery store: Bytewax still asks at every epoch's end for every workflow seen in
            # it, and pickling them all stalls the worker at each epoch's end (README, scale notes).
            return None
        return PickledState.of(self.state)


@operator
def _stateful(step_id: str, up: KeyedStream[Event], builder) -> KeyedStream[tuple]:
    # The same nesting as Bytewax's ``stateful``, so snapshots keep their step id.
    return op.stateful_batch("stateful_batch", up, builder)


@operator
def predict_next_steps(step_id: str, up: KeyedStream[Event], step: NextStepStep,
                       snapshots: bool = True) -> KeyedStream[tuple]:
    """``stateful_flat_map(step_id, up, step)`` with `NextStepLogic`'s cheaper snapshots and batches.

    ``snapshots=False`` (no recovery store) makes every snapshot None: nothing is pickled.

    The inner steps are named ``stateful`` / ``stateful_batch`` as in
    ``stateful_flat_map``, so snapshots keep their step id and a recovery store
    written before still resumes.
    """

    def builder(resume_state) -> NextStepLogic:
        return NextStepLogic(step, thaw(resume_state), snapshots)

    return _stateful("stateful", up, builder)


class _StorePartition(StatelessSinkPartition):
    def __init__(self, target: str, batch_size: int):
        self.store = SignalStore(target, batch_size=batch_size)

    def write_batch(self, items) -> None:
        self.store.add_many(event.record for event in items)
        self.store.flush()

    def close(self) -> None:
        self.store.close()


class SignalStoreSink(DynamicSink):
    """Every worker appends the signals it sees to the history store."""

    def __init__(self, target: str, batch_size: int = 500):
        self.target, self.batch_size = target, batch_size

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _StorePartition:
        return _StorePartition(self.target, self.batch_size)


def shadow_ack_by_workflow(keyed):
    """A decoded ack keyed by node -> keyed by its workflow, for shadow acks only (morph acks: None)."""
    _, item = keyed
    if not isinstance(item, Event) or item.record.get("kind") != "SHADOW":
        return None  # morph acks belong to the control flow; undecodable acks are the control flow's dead letters
    workflow_id = (item.record.get("details") or {}).get("workflow_id")
    return (workflow_id, item) if workflow_id else None


def is_signal(keyed) -> bool:
    """True for a workflow signal, False for an ack (one input carrying both, as a test's source does)."""
    return keyed[1].schema_name == "WorkflowSignal"


def key_by_node(keyed):
    """Shadow commands go to their run's node: re-key them by node id (predictions stay keyed by workflow)."""
    key, (schema_name, record) = keyed
    return (record["node_id"], (schema_name, record)) if schema_name == "ShadowCommand" else keyed
