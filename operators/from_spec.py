"""Turning a `flows.spec.FlowSpec` into the parts a flow is wired from.

Kept out of ``flows/`` so that flows only wire, and in one place so that every
flow reads the spec the same way (codec framing, start offsets, policy).
"""

from __future__ import annotations

from dataclasses import fields

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END

from morph.policy import MorphPolicy, PolicyConfig
from schemas.codec import Codec


def codec_for(spec) -> Codec:
    """Confluent framing when a registry is configured, single-object encoding when not."""
    if spec.registry_url:
        from schemas.registry import RegistrySchemaIds

        return Codec(RegistrySchemaIds(spec.registry_url, spec.topic_names))
    return Codec()


def source_offsets(spec) -> tuple[int, dict]:
    """(offset for partitions not named, {(topic, partition): offset})."""
    if spec.start not in ("beginning", "end"):
        raise ValueError(f"start must be 'beginning' or 'end', not {spec.start!r}")
    start = OFFSET_BEGINNING if spec.start == "beginning" else OFFSET_END
    return start, {(t, int(p)): int(o) for t, p, o in spec.start_offsets}


def policy_config_for(spec) -> PolicyConfig:
    names = {f.name for f in fields(PolicyConfig)}
    unknown = set(spec.policy) - names
    if unknown:
        raise ValueError(f"unknown policy setting(s): {', '.join(sorted(unknown))}")
    overrides = dict(spec.policy)
    if spec.zoo_dir:
        from morph.zoo import load_manifest

        manifest = load_manifest(spec.zoo_dir)
        overrides["model_sha256"] = tuple((key, e.sha256) for key, e in manifest.entries.items())
    return PolicyConfig(**overrides)


def policy_for(spec) -> MorphPolicy:
    return MorphPolicy(policy_config_for(spec))


def models_factory_for(spec):
    """Per-node online models for the control flow, or None when they are off."""
    if not spec.models:
        return None
    from functools import partial

    from prediction.telemetry_models import TelemetryModels

    return partial(TelemetryModels.for_node, horizon_s=policy_config_for(spec).forecast_horizon_s)



def predictor_factory_for(spec):
    """``workflow_id -> NextStepPredictor`` as the flow and ``liquid evaluate next-step`` build it.

    ``options.idle_timeout_ms`` closes runs idle that long (event time); off by
    default, as in the offline evaluation, so both give the same figures. State
    stays bounded either way: a fingerprint keeps at most 10,000 open runs.
    """
    from fingerprint.temporal import Fingerprint
    from prediction.nextstep import NextStepPredictor

    idle = spec.options.get("idle_timeout_ms")
    if not idle:
        return NextStepPredictor
    return lambda wf: NextStepPredictor(wf, fingerprint=Fingerprint(wf, idle_timeout_ms=int(idle)))


def speculation_factory_for(spec):
    """``(workflow_id, predictor) -> Speculator`` when the workflow flow speculates, else None."""
    if not spec.options.get("speculation"):
        return None
    from prediction.speculation import Speculator

    return lambda workflow_id, predictor: Speculator(workflow_id, predictor=predictor)


def decoded_input(flow, spec, codec, schema_by_topic: dict, key_field: str, step_id: str = "kafka"):
    """``(key, Event)`` items from the topics of ``schema_by_topic``, decoded as they are read.

    Anything undecodable goes to the dead-letter topic with its reason (and is
    counted); the flow carries on. Every flow reads Kafka this way.
    """
    import bytewax.operators as op
    from bytewax.connectors.kafka import KafkaSink

    from operators.kafka_io import OffsetKafkaSource, dead_letter_message, is_event, raw_decoder

    kafka = spec.kafka
    start, per_partition = source_offsets(spec)
    decoded = op.input(f"{step_id}_in", flow, OffsetKafkaSource(
        kafka.brokers, list(schema_by_topic), tail=spec.tail, starting_offset=start, start_offsets=per_partition,
        add_config=kafka.flow_config(), batch_size=spec.batch_size,
        decode=raw_decoder(codec, schema_by_topic, key_field)))
    routed = op.branch(f"{step_id}_decodable", decoded, is_event)
    op.output(f"{step_id}_deadletter_out",
              op.map(f"{step_id}_dead_letter", routed.falses, dead_letter_message(spec.topic_names.deadletter)),
              KafkaSink(kafka.brokers, None, add_config=kafka.config))
    return routed.trues


def encoded_output(stream, spec, codec, schema_names: tuple) -> None:
    """Publish ``(key, (schema name, record))`` items, each on its record type's topic."""
    import bytewax.operators as op
    from bytewax.connectors.kafka import KafkaSink

    from operators.kafka_io import encoder

    topic_by_schema = {name: spec.output_topics.get(name) or spec.topic_names.for_schema(name)
                       for name in schema_names}
    op.output("kafka_out", op.map("encode", stream, encoder(codec, topic_by_schema)),
              KafkaSink(spec.kafka.brokers, None, add_config=spec.kafka.config))
