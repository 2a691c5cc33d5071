"""The workflow flow: workflow signals in, next-step predictions (and shadow commands) out.

::

    workflow.signals ─▶ decode, key by workflow ─┬─▶ fingerprint + predictor ─▶ workflow.predictions
                                                  │    (its running accuracy every minute) ─▶ workflow.metrics
    edge.acks (shadow, with --speculation) ──────┤    + speculator ─────────┴─▶ workflow.shadow (by node)
                             │                   ├─▶ failure graph + recovery agent ─▶ workflow.policy
                             │                   │   (with --resilience)
                             │                   └─▶ signal history store (SQLite | PostgreSQL)
                             └─▶ liquid.deadletter  (anything that does not decode)

Run it with ``liquid flow run workflow [--store PATH|DSN]``. Without Kafka, give
`build` a source and a sink: after three runs of ``ingest -> infer``, the start of
``ingest`` in a fourth predicts ``infer``.

>>> from bytewax.testing import TestingSink, TestingSource, run_main
>>> from fingerprint.traces import run_signals
>>> signals = [s for r in range(4)
...            for s in run_signals("inspect", f"r{r}", [("ingest", 0, 10), ("infer", 10, 30)], t0_ms=100 * r)]
>>> out = []
>>> spec = FlowSpec("workflow", bootstrap="unused:9092")
>>> run_main(build(spec, source=TestingSource([("WorkflowSignal", s) for s in signals]), sink=TestingSink(out)))
>>> predictions = [p for _, (name, p) in out if name == "NextStepPrediction"]
>>> last = predictions[-2]  # at r3's start of ingest (the last is at infer's start: the run ends next)
>>> last["run_id"], last["after_task"], last["candidates"][0]["task"]
('r3', 'ingest', 'infer')
>>> [(key, name, m["predictions"]) for key, (name, m) in out if name == "NextStepMetrics"]  # the first resolved
[('inspect', 'NextStepMetrics', 1)]
"""

from __future__ import annotations

import gc

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.outputs import Sink

from flows.spec import FlowSpec
from operators.events import keyed_input
from operators.from_spec import codec_for, predictor_factory_for, signer_for, speculation_factory_for
from operators.kafka_io import kafka_input, kafka_output, tune_gc_for_flow
from operators.recovery import RecoveryStep
from operators.workflow import (NextStepStep, SignalStoreSink, is_signal, key_by_node, predict_next_steps,
                                shadow_ack_by_workflow)


def build(spec: FlowSpec, source: Source | None = None, sink: Sink | None = None) -> Dataflow:
    """The workflow flow of ``spec``, on Kafka, or on ``source`` and ``sink`` when given.

    ``source`` yields ``(schema name, record)`` items (WorkflowSignal, and
    CommandAck with speculation); ``sink`` takes ``(key, (schema name, record))``
    items (NextStepPrediction keyed by workflow, ShadowCommand keyed by node).
    """
    topics = spec.topic_names
    flow = Dataflow("workflow")
    tune_gc_for_flow()
    # What is alive now (modules, classes, functions: ~40,000 objects) lives as long as the
    # process: out of the collector's way, a full collection walks only the workflows' state.
    gc.collect()
    gc.freeze()
    speculation = speculation_factory_for(spec)
    # (workflow id, Event) signals; (node id, Event) acks, read only when the flow speculates
    if source is None:
        signals = kafka_input(flow, spec, codec_for(spec), {topics.signals: "WorkflowSignal"}, key_field="workflow_id")
        acks = None if speculation is None else kafka_input(flow, spec, codec_for(spec), {topics.acks: "CommandAck"},
                                                            key_field="node_id", step_id="acks")
    else:
        both = op.branch("signals_or_acks", keyed_input(flow, "in", source,
                                                         {"WorkflowSignal": "workflow_id", "CommandAck": "node_id"}),
                         is_signal)
        signals, acks = both.trues, both.falses
    if spec.options.get("store"):
        op.output("history", op.key_rm("signals", signals), SignalStoreSink(spec.options["store"]))
    events = signals
    if speculation is not None:
        # (workflow id, Event): the shadow acks, re-keyed to the workflow whose speculator learns from them
        events = op.merge("signals_and_acks", events, op.filter_map("shadow_acks_by_workflow", acks,
                                                                     shadow_ack_by_workflow))
    step = NextStepStep(predictor_factory_for(spec), speculation_factory=speculation, signer=signer_for(spec),
                        log_metrics=bool(spec.options.get("log_metrics")))
    # (workflow id, (schema name, record)): predictions and metrics by workflow
    outputs = predict_next_steps("predict", events, step, snapshots=spec.recovery)
    if speculation is not None:  # shadow commands go by node: a step per output only when there are any
        outputs = op.map("shadow_commands_by_node", outputs, key_by_node)
    if spec.options.get("resilience"):
        # (workflow id, ("RecoveryPolicy", record)): the policy learned from every node's failures
        policies = op.stateful_flat_map("recovery", signals, RecoveryStep(int(spec.options.get("publish_every", 20))))
        outputs = op.merge("predictions_and_policies", outputs, policies)
    if sink is None:
        kafka_output(outputs, spec, codec_for(spec), ("NextStepPrediction", "ShadowCommand", "RecoveryPolicy",
                                                        "NextStepMetrics"))
    else:
        op.output("out", outputs, sink)
    return flow


def from_env() -> Dataflow:
    """Entry point for ``python -m bytewax.run "flows.workflow:from_env()"``."""
    return build(FlowSpec.from_env())
