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
from bytewax.connectors.kafka import KafkaSink
from bytewax.dataflow import Dataflow

from flows.spec import FlowSpec
from operators.from_spec import codec_for, predictor_factory_for, source_offsets, speculation_factory_for
from operators.kafka_io import (OffsetKafkaSource, dead_letter_message, encoder, is_event, raw_decoder,
                                tune_gc_for_flow)
from operators.workflow import (NextStepStep, SignalStoreSink, key_by_node, predict_next_steps,
                                shadow_ack_by_workflow)


def build(spec: FlowSpec) -> Dataflow:
    topics = spec.topic_names
    kafka = spec.kafka
    codec = codec_for(spec)
    flow = Dataflow("workflow")
    tune_gc_for_flow()

    start, per_partition = source_offsets(spec)
    decode = raw_decoder(codec, {topics.signals: "WorkflowSignal"}, key_field="workflow_id")
    # the source decodes as it reads: (key, Event) or ("", DeadLetter) items
    decoded = op.input("kafka_in", flow, OffsetKafkaSource(
        kafka.brokers, [topics.signals], tail=spec.tail, starting_offset=start, start_offsets=per_partition,
        add_config=kafka.flow_config(), batch_size=spec.batch_size, decode=decode))
    routed = op.branch("decodable", decoded, is_event)
    op.output("deadletter_out", op.map("dead_letter", routed.falses, dead_letter_message(topics.deadletter)),
              KafkaSink(kafka.brokers, None, add_config=kafka.config))

    if spec.options.get("store"):
        op.output("history", op.key_rm("signals", routed.trues), SignalStoreSink(spec.options["store"]))
    events = routed.trues
    speculation = speculation_factory_for(spec)
    if speculation is not None:
        # Shadow acks come back from the workers keyed by node; the speculator of their workflow learns from them.
        acks = op.input("acks_in", flow, OffsetKafkaSource(
            kafka.brokers, [topics.acks], tail=spec.tail, starting_offset=start, start_offsets=per_partition,
            add_config=kafka.flow_config(), batch_size=spec.batch_size,
            decode=raw_decoder(codec, {topics.acks: "CommandAck"}, key_field="node_id")))
        shadow_acks = op.filter_map("shadow_acks_by_workflow", acks, shadow_ack_by_workflow)
        events = op.merge("signals_and_acks", events, shadow_acks)
    step = NextStepStep(predictor_factory_for(spec), report_every=int(spec.options.get("report_every", 0)),
                        speculation_factory=speculation)
    outputs = op.map("shadow_commands_by_node", predict_next_steps("predict", events, step), key_by_node)
    topic_by_schema = {name: spec.output_topics.get(name) or topics.for_schema(name)
                       for name in ("NextStepPrediction", "ShadowCommand")}
    op.output("kafka_out", op.map("encode", outputs, encoder(codec, topic_by_schema)),
              KafkaSink(kafka.brokers, None, add_config=kafka.config))
    return flow


def from_env() -> Dataflow:
    """Entry point for ``python -m bytewax.run "flows.workflow:from_env()"``."""
    return build(FlowSpec.from_env())
