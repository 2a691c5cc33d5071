"""The sync flow: the nodes' execution records into the central store, and its answers back to them.

::

    edge.executions ─▶ decode, key by node ─▶ central store (batch per transaction) ─▶ edge.sync (by node)
                            │                  SQLite | PostgreSQL, conflict strategy
                            │                  per entity type
                            └─▶ liquid.deadletter  (anything that does not decode)

A flow of its own (``liquid flow run sync --store PATH|DSN [--conflict
ENTITY=STRATEGY]``) rather than a step of the workflow flow: it reads another
topic keyed another way (by node, not workflow), its cost is database writes
rather than per-workflow model updates, and it must keep going when the
workflow flow is stopped or replayed (a replay of signals must not re-apply
records). Resumable like every flow (``--recovery-dir``: source offsets are
snapshotted; what is read again after a resume is deduplicated by the store).

Without Kafka, give `build` a source and a sink: a node's record is accepted.

>>> from bytewax.testing import TestingSink, TestingSource, run_main
>>> record = {"record_id": "execution:r1@1", "entity": "execution", "entity_id": "r1", "execution_id": "r1",
...           "workflow_id": "w", "node_id": "edge-1", "status": "completed", "modified_ms": 1_000,
...           "edge_version": 1, "central_seen_ms": 0, "fields": {}}
>>> out = []
>>> spec = FlowSpec("sync", bootstrap="unused:9092", options={"store": ":memory:"})
>>> run_main(build(spec, source=TestingSource([("ExecutionRecord", record)]), sink=TestingSink(out)))
>>> [(node, name, answer["record_id"], answer["outcome"]) for node, (name, answer) in out]
[('edge-1', 'SyncOutcome', 'execution:r1@1', 'ACCEPTED')]
"""

from __future__ import annotations

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.outputs import Sink

from flows.spec import FlowSpec
from operators.events import keyed_input
from operators.from_spec import codec_for
from operators.kafka_io import kafka_input, kafka_output, tune_gc_for_flow
from operators.sync import central_sync_for


def build(spec: FlowSpec, source: Source | None = None, sink: Sink | None = None) -> Dataflow:
    """The sync flow of ``spec``, on Kafka, or on ``source`` and ``sink`` when given.

    ``source`` yields ``("ExecutionRecord", record)`` items; ``sink`` takes
    ``(node id, ("SyncOutcome", record))`` items.
    """
    flow = Dataflow("sync")
    tune_gc_for_flow()
    step = central_sync_for(spec)
    # (node id, Event): the nodes' execution and step records
    if source is None:
        records = kafka_input(flow, spec, codec_for(spec), {spec.topic_names.executions: "ExecutionRecord"},
                              key_field="node_id")
    else:
        records = keyed_input(flow, "in", source, {"ExecutionRecord": "node_id"})
    # (node id, ("SyncOutcome", record)): the central store's answer to each version
    outcomes = op.flat_map_batch("central_store", records, step)
    if sink is None:
        kafka_output(outcomes, spec, codec_for(spec), ("SyncOutcome",))
    else:
        op.output("out", outcomes, sink)
    return flow


def from_env() -> Dataflow:
    """Entry point for ``python -m bytewax.run "flows.sync:from_env()"``."""
    return build(FlowSpec.from_env())
