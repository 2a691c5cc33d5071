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
from bytewax.dataflow import Dataflow

from flows.spec import FlowSpec
from operators.control import MorphStep
from operators.from_spec import codec_for, decoded_input, encoded_output, models_factory_for, policy_for
from operators.kafka_io import tune_gc_for_flow


def build(spec: FlowSpec) -> Dataflow:
    topics = spec.topic_names
    codec = codec_for(spec)
    flow = Dataflow("control")
    tune_gc_for_flow()

    telemetry_and_acks = decoded_input(flow, spec, codec, {topics.telemetry: "Telemetry", topics.acks: "CommandAck"},
                                       key_field="node_id")
    step = MorphStep(policy_for(spec), models_factory_for(spec), stamp_wall_clock=not spec.deterministic)
    encoded_output(op.stateful("morph", telemetry_and_acks, step.build), spec, codec, ("MorphCommand", "Alert"))
    return flow


def from_env() -> Dataflow:
    """Entry point for ``python -m bytewax.run "flows.control:from_env()"``."""
    return build(FlowSpec.from_env())
