"""The workflow operators: next-step prediction per workflow, and the signal history sink.

`NextStepStep` is the mapper of a stateful step keyed by workflow id
(`predict_next_steps`, or Bytewax's ``stateful_flat_map``): its state is the
workflow's `prediction.nextstep.NextStepPredictor` (fingerprint, sequence model,
River model, running metrics), which Bytewax snapshots for recovery.
`SignalStoreSink` writes every signal to the history store (SQLite by default,
PostgreSQL with a DSN) from each worker.
"""

from __future__ import annotations

import pickle
import sys
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import bytewax.operators as op
from bytewax.dataflow import operator
from bytewax.operators import KeyedStream, StatefulLogic
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from fingerprint.store import SignalStore
from operators.events import Event
from prediction.nextstep import NextStepPredictor
from schemas.state import Versioned

@dataclass
class WorkflowState(Versioned):
    """What the workflow flow keeps per workflow (snapshotted by Bytewax recovery)."""

    STATE_VERSION: ClassVar[int] = 1
    predictor: NextStepPredictor
    speculation: Any = None   # shadow pre-execution policy state, when enabled
    version: int = STATE_VERSION


class NextStepStep:
    """``(state, event) -> (state, [(schema name, record), ...])`` for ``op.stateful_flat_map``."""

    def __init__(self, make_predictor=NextStepPredictor, report_every: int = 0, speculation_factory=None):
        self.make_predictor = make_predictor
        self.flagged = 0  # signals the fingerprint flagged (dropped or kept), in this process
        self.report_every = report_every
        self.speculation_factory = speculation_factory

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
        fingerprint = state.predictor.fingerprint
        issues_before = dict(fingerprint.issues)
        if state.speculation is not None:
            predictions, commands = state.speculation.predict_then_learn_one(record)
        else:
            predictions, commands = state.predictor.predict_then_learn_one(record), ()
        if fingerprint.issues != issues_before:
            self._report_issue(record, issues_before, fingerprint.issues)
        outputs = [("NextStepPrediction", p) for p in predictions]
        outputs += [("ShadowCommand", c) for c in commands]
        if self.report_every and state.predictor.fingerprint.accepted % self.report_every == 0 and predictions:
            m = state.predictor.metrics.to_dict()
            print(f"workflow {record['workflow_id']}: {m}", file=sys.stderr, flush=True)
        return state, outputs


    def _report_issue(self, record: dict, before: dict, after: dict) -> None:
        from fingerprint.signals import ISSUE_KINDS

        self.flagged += 1
        if self.flagged <= 20 or self.flagged % 1000 == 0:  # say so without flooding the log
            kinds = [k for k in after if after[k] != before.get(k, 0)]
            what = "; ".join(f"{k}: {ISSUE_KINDS.get(k, k)}" for k in kinds)
            print(f"liquid: workflow {record.get('workflow_id')}: signal {record.get('signal_id')} {what}; "
                  f"issues so far {dict(after)}", file=sys.stderr, flush=True)


class PickledState(bytes):
    """A snapshot of a `WorkflowState`: the state pickled at the end of an epoch."""

    def load(self) -> WorkflowState:
        return pickle.loads(self)


def thaw(resume_state) -> Optional[WorkflowState]:
    """The state to resume from: a `PickledState`, or a `WorkflowState` (snapshots of earlier versions)."""
    return resume_state.load() if isinstance(resume_state, PickledState) else resume_state


class NextStepLogic(StatefulLogic):
    """One workflow's `NextStepStep` state in Bytewax's ``stateful`` operator, snapshotted as a pickle.

    Bytewax's ``stateful_flat_map`` snapshots by ``copy.deepcopy`` of the state
    at the end of every epoch, recovery or not: for a predictor with a full
    window that is ~100 ms per workflow and a copy of every object of the state,
    which the garbage collector then has to walk. Pickling the state is the
    same immutable snapshot (recovery pickles it anyway) at a third of the cost
    and one object.
    """

    def __init__(self, step: NextStepStep, state: Optional[WorkflowState]):
        self.step = step
        self.state = state

    def on_item(self, value: Event):
        self.state, outputs = self.step(self.state, value)
        return outputs, self.state is None  # discard when the step drops its state, as stateful_flat_map

    def snapshot(self) -> PickledState:
        return PickledState(pickle.dumps(self.state, protocol=pickle.HIGHEST_PROTOCOL))


@operator
def predict_next_steps(step_id: str, up: KeyedStream[Event], step: NextStepStep) -> KeyedStream[tuple]:
    """``stateful_flat_map(step_id, up, step)`` with `NextStepLogic`'s cheaper snapshots.

    The inner step is named ``stateful`` as in ``stateful_flat_map``, so snapshots
    keep their step id and a recovery store written before still resumes.
    """

    def builder(resume_state) -> NextStepLogic:
        return NextStepLogic(step, thaw(resume_state))

    return op.stateful("stateful", up, builder)


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
