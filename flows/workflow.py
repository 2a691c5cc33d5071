"""The workflow flow: workflow signals in, next-step predictions (and shadow commands) out.

::

    workflow.signals ─▶ decode, key by workflow ─┬─▶ fingerprint + predictor ─▶ workflow.predictions
    edge.acks (shadow, with --speculation) ──────┤    + speculator ─────────┴─▶ workflow.shadow (by node)
                             │                   └─▶ signal history store (SQLite | PostgreSQL)
                             └─▶ liquid.deadletter  (anything that does not decode)

Run it with ``liquid flow run workflow [--store PATH|DSN]``.
"""

from __future__ import annotations

import bytewax.operators as op
from bytewax.dataflow import Dataflow

from flows.spec import FlowSpec
from operators.from_spec import (codec_for, decoded_input, encoded_output, predictor_factory_for,
                                 speculation_factory_for)
from operators.kafka_io import tune_gc_for_flow
from operators.workflow import (NextStepStep, SignalStoreSink, key_by_node, predict_next_steps,
                                shadow_ack_by_workflow)


def build(spec: FlowSpec) -> Dataflow:
    topics = spec.topic_names
    codec = codec_for(spec)
    flow = Dataflow("workflow")
    tune_gc_for_flow()

    signals = decoded_input(flow, spec, codec, {topics.signals: "WorkflowSignal"}, key_field="workflow_id")
    if spec.options.get("store"):
        op.output("history", op.key_rm("signals", signals), SignalStoreSink(spec.options["store"]))
    events = signals
    speculation = speculation_factory_for(spec)
    if speculation is not None:
        # Shadow acks come back from the workers keyed by node; the speculator of their workflow learns from them.
        acks = decoded_input(flow, spec, codec, {topics.acks: "CommandAck"}, key_field="node_id", step_id="acks")
        shadow_acks = op.filter_map("shadow_acks_by_workflow", acks, shadow_ack_by_workflow)
        events = op.merge("signals_and_acks", events, shadow_acks)
    step = NextStepStep(predictor_factory_for(spec), report_every=int(spec.options.get("report_every", 0)),
                        speculation_factory=speculation)
    outputs = op.map("shadow_commands_by_node", predict_next_steps("predict", events, step), key_by_node)
    encoded_output(outputs, spec, codec, ("NextStepPrediction", "ShadowCommand"))
    return flow


def from_env() -> Dataflow:
    """Entry point for ``python -m bytewax.run "flows.workflow:from_env()"``."""
    return build(FlowSpec.from_env())
