"""The workflow flow: workflow signals in, next-step predictions (and shadow commands) out.

::

    workflow.signals ─▶ decode, key by workflow ─┬─▶ fingerprint + predictor ─▶ workflow.predictions
                             │                   │                          └─▶ workflow.shadow
                             │                   └─▶ signal history store (SQLite | PostgreSQL)
                             └─▶ liquid.deadletter  (anything that does not decode)

Run it with ``liquid flow run workflow [--store PATH|DSN]``.
"""

from __future__ import annotations

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaSink
from bytewax.dataflow import Dataflow

from flows.spec import FlowSpec
from operators.from_spec import codec_for, predictor_factory_for, source_offsets
from operators.kafka_io import OffsetKafkaSource, dead_letter_message, decoder, encoder, is_event
from operators.workflow import NextStepStep, SignalStoreSink


def build(spec: FlowSpec) -> Dataflow:
    topics = spec.topic_names
    kafka = spec.kafka
    codec = codec_for(spec)
    flow = Dataflow("workflow")

    start, per_partition = source_offsets(spec)
    raw = op.input("kafka_in", flow, OffsetKafkaSource(
        kafka.brokers, [topics.signals], tail=spec.tail, starting_offset=start, start_offsets=per_partition,
        add_config=kafka.flow_config(), batch_size=spec.batch_size))
    decode = decoder(codec, {topics.signals: "WorkflowSignal"}, key_field="workflow_id")
    decoded = op.flat_map_batch("decode_by_workflow", raw, lambda batch: [decode(m) for m in batch])
    routed = op.branch("decodable", decoded, is_event)
    op.output("deadletter_out", op.map("dead_letter", routed.falses, dead_letter_message(topics.deadletter)),
              KafkaSink(kafka.brokers, None, add_config=kafka.config))

    if spec.options.get("store"):
        op.output("history", op.key_rm("signals", routed.trues), SignalStoreSink(spec.options["store"]))
    step = NextStepStep(predictor_factory_for(spec), report_every=int(spec.options.get("report_every", 0)))
    outputs = op.stateful_flat_map("predict", routed.trues, step)
    topic_by_schema = {name: spec.output_topics.get(name) or topics.for_schema(name)
                       for name in ("NextStepPrediction", "ShadowCommand")}
    op.output("kafka_out", op.map("encode", outputs, encoder(codec, topic_by_schema)),
              KafkaSink(kafka.brokers, None, add_config=kafka.config))
    return flow


def from_env() -> Dataflow:
    """Entry point for ``python -m bytewax.run "flows.workflow:from_env()"``."""
    return build(FlowSpec.from_env())
