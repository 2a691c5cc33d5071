"""The workflow operators: next-step prediction per workflow, and the signal history sink.

`NextStepStep` is the mapper of a Bytewax ``stateful_flat_map`` keyed by
workflow id: its state is the workflow's `prediction.nextstep.NextStepPredictor`
(fingerprint, sequence model, River model, running metrics), which Bytewax
snapshots for recovery. `SignalStoreSink` writes every signal to the history
store (SQLite by default, PostgreSQL with a DSN) from each worker.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Optional

from bytewax.outputs import DynamicSink, StatelessSinkPartition

from fingerprint.store import SignalStore
from operators.kafka_io import Event
from prediction.nextstep import NextStepPredictor

WORKFLOW_STATE_VERSION = 1


@dataclass
class WorkflowState:
    """What the workflow flow keeps per workflow (snapshotted by Bytewax recovery)."""

    predictor: NextStepPredictor
    speculation: Any = None   # shadow pre-execution policy state, when enabled
    version: int = WORKFLOW_STATE_VERSION


class NextStepStep:
    """``(state, event) -> (state, [(schema name, record), ...])`` for ``op.stateful_flat_map``."""

    def __init__(self, make_predictor=NextStepPredictor, report_every: int = 0, speculation_factory=None):
        self.make_predictor = make_predictor
        self.flagged = 0  # signals the fingerprint flagged (dropped or kept), in this process
        self.report_every = report_every
        self.speculation_factory = speculation_factory

    def __call__(self, state: Optional[WorkflowState], event: Event):
        record = event.record
        if state is None:
            workflow_id = record["workflow_id"]
            state = WorkflowState(self.make_predictor(workflow_id),
                                  self.speculation_factory(workflow_id) if self.speculation_factory else None)
        if event.schema_name == "CommandAck":
            if state.speculation is not None:
                state.speculation.on_ack(record)
            return state, ()
        fingerprint = state.predictor.fingerprint
        issues_before = dict(fingerprint.issues)
        predictions = state.predictor.learn_one(record)
        if fingerprint.issues != issues_before:
            self._report_issue(record, issues_before, fingerprint.issues)
        outputs = [("NextStepPrediction", p) for p in predictions]
        if state.speculation is not None:
            outputs += [("ShadowCommand", c) for c in state.speculation.learn_one(record, predictions,
                                                                                  state.predictor)]
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
