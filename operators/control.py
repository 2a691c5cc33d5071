"""The morph operator: per-node policy state inside a Bytewax ``stateful_flat_map``.

It takes decoded telemetry and acknowledgements keyed by node and returns the
records to publish as ``(schema name, record)`` pairs. The state is the plain
`morph.policy.NodeState` dataclass plus the node's online models, so Bytewax
snapshots everything the decision depends on.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Optional

from morph.policy import MorphPolicy, NodeState
from operators.events import Event
from schemas.state import Versioned

CONTROL_STATE_VERSION = 2
#: Record ids remembered per node: a node's outbox redelivers in order, so a duplicate is recent.
SEEN_CAPACITY = 4096


def _add_record_ids(state: dict) -> dict:
    """Version 1 -> 2: no record ids seen yet, nothing adopted from the node yet."""
    return {"seen": OrderedDict(), "duplicates": 0, "adopted_until_ms": 0, **state}


@dataclass
class ControlState(Versioned):
    """What the control flow keeps per node (snapshotted by Bytewax recovery)."""

    STATE_VERSION: ClassVar[int] = CONTROL_STATE_VERSION
    MIGRATIONS: ClassVar[dict] = {1: _add_record_ids}
    node: NodeState
    models: Any = None  # per-node online models (prediction/), when enabled
    seen: OrderedDict = field(default_factory=OrderedDict)  # the node's recent record ids
    duplicates: int = 0        # redelivered records counted once
    adopted_until_ms: int = 0  # event time of the node's latest local decision
    version: int = CONTROL_STATE_VERSION


class MorphStep:
    """The mapper for ``op.stateful_flat_map``: ``(state, event) -> (state, outputs)``.

    ``models_factory`` builds a node's online models (anomaly detector and
    forecasters) on its first sample; with ``None`` the policy reacts to
    thresholds only.
    """

    def __init__(self, policy: MorphPolicy, models_factory: Optional[Callable[[str], Any]] = None,
                 stamp_wall_clock: bool = True, signer=None):
        self.policy = policy
        self.models_factory = models_factory
        # issued_ts_ms is wall-clock time for latency accounting; tests of determinism turn it off.
        self.stamp_wall_clock = stamp_wall_clock
        self.signer = signer  # edge.signing.CommandSigner: every command leaves signed

    def __call__(self, state: Optional[ControlState], event: Event):
        record = event.record
        if state is None:
            node_id = record["node_id"]
            state = ControlState(NodeState.new(node_id),
                                 self.models_factory(node_id) if self.models_factory else None)
        if self._redelivered(state, record.get("record_id")):
            return state, ()
        if event.schema_name == "CommandAck":
            self.policy.on_ack(state.node, record)
            if record.get("origin") == "local" and record["status"] == "APPLIED":
                state.adopted_until_ms = max(state.adopted_until_ms, record.get("decided_on_ts_ms") or 0)
            return state, ()
        outputs = []
        if state.models is not None:
            assessment, alerts = state.models.update(record)
            outputs.extend(("Alert", a) for a in alerts)
            command = self.policy.decide(state.node, record, assessment)
        else:
            command = self.policy.decide(state.node, record)
        if command is not None and record["ts_ms"] <= state.adopted_until_ms:
            # The node decided this stretch itself while we were cut off (its acks drain before
            # its telemetry): adopt what it runs instead of commanding from stale samples.
            state.node.pending = None
            command = None
        if command is not None:
            if self.stamp_wall_clock:
                command["issued_ts_ms"] = int(time.time() * 1000)
            if self.signer is not None:
                self.signer.sign(command)
            outputs.append(("MorphCommand", command))
        return state, outputs

    @staticmethod
    def _redelivered(state: ControlState, record_id: Optional[str]) -> bool:
        """True for a record id seen before: an outbox redelivery, counted once."""
        if record_id is None:
            return False
        if record_id in state.seen:
            state.duplicates += 1
            return True
        state.seen[record_id] = None
        if len(state.seen) > SEEN_CAPACITY:
            state.seen.popitem(last=False)
        return False
