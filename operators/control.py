"""The morph operator: per-node policy state inside a Bytewax ``stateful_flat_map``.

It takes decoded telemetry and acknowledgements keyed by node and returns the
records to publish as ``(schema name, record)`` pairs. The state is the plain
`morph.policy.NodeState` dataclass plus the node's online models, so Bytewax
snapshots everything the decision depends on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from morph.policy import MorphPolicy, NodeState
from operators.events import Event

CONTROL_STATE_VERSION = 1


@dataclass
class ControlState:
    """What the control flow keeps per node (snapshotted by Bytewax recovery)."""

    node: NodeState
    models: Any = None  # per-node online models (prediction/), when enabled
    version: int = CONTROL_STATE_VERSION


class MorphStep:
    """The mapper for ``op.stateful_flat_map``: ``(state, event) -> (state, outputs)``.

    ``models_factory`` builds a node's online models (anomaly detector and
    forecasters) on its first sample; with ``None`` the policy reacts to
    thresholds only.
    """

    def __init__(self, policy: MorphPolicy, models_factory: Optional[Callable[[str], Any]] = None,
                 stamp_wall_clock: bool = True):
        self.policy = policy
        self.models_factory = models_factory
        # issued_ts_ms is wall-clock time for latency accounting; tests of determinism turn it off.
        self.stamp_wall_clock = stamp_wall_clock

    def __call__(self, state: Optional[ControlState], event: Event):
        record = event.record
        if state is None:
            node_id = record["node_id"]
            state = ControlState(NodeState.new(node_id),
                                 self.models_factory(node_id) if self.models_factory else None)
        if event.schema_name == "CommandAck":
            self.policy.on_ack(state.node, record)
            return state, ()
        outputs = []
        if state.models is not None:
            assessment, alerts = state.models.update(record)
            outputs.extend(("Alert", a) for a in alerts)
            command = self.policy.decide(state.node, record, assessment)
        else:
            command = self.policy.decide(state.node, record)
        if command is not None:
            if self.stamp_wall_clock:
                command["issued_ts_ms"] = int(time.time() * 1000)
            outputs.append(("MorphCommand", command))
        return state, outputs
