"""The control flow: telemetry and acknowledgements in, morph commands (and alerts) out.

::

    edge.telemetry ─┐                                        ┌─▶ edge.commands
                    ├─▶ decode, key by node ───────▶ morph ──┼─▶ liquid.alerts
    edge.acks ──────┘      │                          ▲      └─▶ liquid.experience (keyed by group)
                           │                          │
    liquid.experience ─▶ decode, key by group ─▶ peer groups: to each member node
                           │
                           └─▶ liquid.deadletter  (anything that does not decode)

The experience topic is read and written only with ``--policy rli`` and peers.

Run it with ``liquid flow run control`` (or ``python -m bytewax.run
"flows.control:from_env()"`` with ``LIQUID_FLOW_SPEC`` set). Without Kafka, give
`build` a source and a sink: here a node heats past 85 °C and the flow steps it
down one rung, with the evidence in the command.

>>> from bytewax.testing import TestingSink, TestingSource, run_main
>>> def sample(second, temp_c):
...     return ("Telemetry", {"node_id": "edge-1", "ts_ms": 1_000 * second, "seq": second, "gpu_temp_c": temp_c,
...             "gpu_util": 0.9, "mem_used_frac": 0.25, "power_w": 200.0, "power_cap_w": 300.0,
...             "latency_ms": 20.0, "throughput_rps": 100.0, "variant": "transformer",
...             "precision": "fp32", "batch_size": 16, "source": "simulator", "scenario": "heat-wave"})
>>> out = []
>>> spec = FlowSpec("control", bootstrap="unused:9092", deterministic=True)
>>> run_main(build(spec, source=TestingSource([sample(s, 86.0 + s / 10) for s in range(8)]), sink=TestingSink(out)))
>>> [(node, name, cmd["from_variant"], cmd["to_variant"], cmd["trigger"]) for node, (name, cmd) in out]
[('edge-1', 'MorphCommand', 'transformer', 'lstm', 'THRESHOLD')]
"""

from __future__ import annotations

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.outputs import Sink

from flows.spec import FlowSpec
from operators.control import MorphStep, single_threaded_blas
from operators.events import keyed_input
from operators.from_spec import agent_for, codec_for, models_factory_for, policy_for, sharer_factory_for, signer_for
from operators.kafka_io import kafka_input, kafka_output, tune_gc_for_flow
from operators.peers import forward_to_members


def build(spec: FlowSpec, source: Source | None = None, sink: Sink | None = None,
          peers: Source | None = None) -> Dataflow:
    """The control flow of ``spec``, on Kafka, or on ``source`` and ``sink`` when given.

    ``source`` yields ``(schema name, record)`` items (Telemetry, CommandAck);
    ``sink`` takes ``(node id, (schema name, record))`` items (MorphCommand, Alert,
    and Experience when the agent shares). With a ``source``, peers' experience
    comes from ``peers`` (``("Experience", record)`` items), a second input as
    ``liquid.experience`` is on Kafka; without it the nodes hear no peers.
    """
    topics = spec.topic_names
    flow = Dataflow("control")
    tune_gc_for_flow()
    # (node id, Event): telemetry samples and acks, keyed by node
    if source is None:
        events = kafka_input(flow, spec, codec_for(spec), {topics.telemetry: "Telemetry", topics.acks: "CommandAck"},
                             key_field="node_id")
    else:
        events = keyed_input(flow, "in", source, {"Telemetry": "node_id", "CommandAck": "node_id"})
    # (node id, (schema name, record)): the commands and alerts the node's state decides
    agent = agent_for(spec)
    sharers = sharer_factory_for(spec, agent)
    if agent is not None:
        single_threaded_blas()
    # (group, Event): peers' experience, on an input of its own so that no telemetry sample is tested for it
    if sharers is None or (source is not None and peers is None):
        shared = None
    elif source is None:
        shared = kafka_input(flow, spec, codec_for(spec), {topics.experience: "Experience"}, key_field="group",
                             step_id="peers_kafka")
    else:
        shared = keyed_input(flow, "peers", peers, {"Experience": "group"})
    if shared is not None:
        # (member node id, Event): each release reaches every other member node's agent
        forwarded = op.stateful_flat_map("peer_groups", shared, forward_to_members)
        events = op.merge("with_peers", events, op.map("to_member", forwarded, lambda kv: kv[1]))
    step = MorphStep(policy_for(spec), models_factory_for(spec), stamp_wall_clock=not spec.deterministic,
                     agent=agent, sharer_factory=sharers, signer=signer_for(spec), snapshots=spec.recovery)
    decisions = op.stateful("morph", events, step.build)
    if sink is None:  # experience is keyed by its group on its topic
        kafka_output(decisions, spec, codec_for(spec), ("MorphCommand", "Alert", "Experience"),
                     key_by={"Experience": "group"})
    else:
        op.output("out", decisions, sink)
    return flow


def from_env() -> Dataflow:
    """Entry point for ``python -m bytewax.run "flows.control:from_env()"``."""
    return build(FlowSpec.from_env())
