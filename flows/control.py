"""The control flow: telemetry and acknowledgements in, morph commands (and alerts) out.

::

    edge.telemetry ─┐                                   ┌─▶ edge.commands
                    ├─▶ decode, key by node ───▶ morph ─┤
    edge.acks ──────┘      │                            └─▶ liquid.alerts
                           └─▶ liquid.deadletter  (anything that does not decode)

Run it with ``liquid flow run control`` (or ``python -m bytewax.run
"flows.control:from_env()"`` with ``LIQUID_FLOW_SPEC`` set).
"""

from __future__ import annotations

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaSink
from bytewax.dataflow import Dataflow

from flows.spec import FlowSpec
from operators.control import MorphStep
from operators.kafka_io import (OffsetKafkaSource, dead_letter_message, encoder, is_event, raw_decoder,
                                tune_gc_for_flow)
from operators.from_spec import codec_for, models_factory_for, policy_for, source_offsets


def build(spec: FlowSpec) -> Dataflow:
    topics = spec.topic_names
    kafka = spec.kafka
    codec = codec_for(spec)
    flow = Dataflow("control")
    tune_gc_for_flow()

    start, per_partition = source_offsets(spec)
    decode = raw_decoder(codec, {topics.telemetry: "Telemetry", topics.acks: "CommandAck"}, key_field="node_id")
    # the source decodes as it reads: (key, Event) or ("", DeadLetter) items
    decoded = op.input("kafka_in", flow, OffsetKafkaSource(
        kafka.brokers, [topics.telemetry, topics.acks], tail=spec.tail, starting_offset=start,
        start_offsets=per_partition, add_config=kafka.flow_config(), batch_size=spec.batch_size, decode=decode))
    routed = op.branch("decodable", decoded, is_event)
    op.output("deadletter_out", op.map("dead_letter", routed.falses, dead_letter_message(topics.deadletter)),
              KafkaSink(kafka.brokers, None, add_config=kafka.config))

    step = MorphStep(policy_for(spec), models_factory_for(spec), stamp_wall_clock=not spec.deterministic)
    outputs = op.stateful_flat_map("morph", routed.trues, step)
    topic_by_schema = {name: spec.output_topics.get(name) or topics.for_schema(name)
                       for name in ("MorphCommand", "Alert")}
    op.output("kafka_out", op.map("encode", outputs, encoder(codec, topic_by_schema)),
              KafkaSink(kafka.brokers, None, add_config=kafka.config))
    return flow


def from_env() -> Dataflow:
    """Entry point for ``python -m bytewax.run "flows.control:from_env()"``."""
    return build(FlowSpec.from_env())
