"""The morph operator: per-node policy state and online models inside a Bytewax ``stateful`` step.

It takes decoded telemetry and acknowledgements keyed by node and returns the
records to publish as ``(schema name, record)`` pairs. The state is the plain
`morph.policy.NodeState` dataclass plus the node's online models, so Bytewax
snapshots everything the decision depends on.

Alerts: an anomaly episode's Alert goes out on the sample that opens it and
its update when it closes (`prediction.episodes`). An episode closes on a later
sample of the node; a node that goes silent mid-episode is flushed after
``idle_flush_s`` of wall-clock time without telemetry, and every open episode
is flushed when the input ends (``--until-end``, replays), so no episode is
left unpublished.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Optional

from bytewax.operators import StatefulLogic

from morph.policy import MorphPolicy, NodeState
from operators.events import Event
from schemas.state import Versioned

IDLE_FLUSH_S = 30.0


@dataclass
class ControlState(Versioned):
    """What the control flow keeps per node (snapshotted by Bytewax recovery)."""

    STATE_VERSION = 1
    node: NodeState
    models: Any = None  # per-node online models (prediction/), when enabled
    version: int = STATE_VERSION


class MorphStep:
    """Per-event logic: ``(state, event) -> (state, outputs)``; `build` makes the Bytewax logic of a node.

    ``models_factory`` builds a node's online models (anomaly detector and
    forecasters) on its first sample; with ``None`` the policy reacts to
    thresholds only.
    """

    def __init__(self, policy: MorphPolicy, models_factory: Optional[Callable[[str], Any]] = None,
                 stamp_wall_clock: bool = True, idle_flush_s: float = IDLE_FLUSH_S,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)):
        self.policy = policy
        self.models_factory = models_factory
        # issued_ts_ms is wall-clock time for latency accounting; tests of determinism turn it off.
        self.stamp_wall_clock = stamp_wall_clock
        self.idle_flush = timedelta(seconds=idle_flush_s)
        self.clock = clock

    def build(self, resume_state: Optional[ControlState]) -> "ControlLogic":
        """The builder ``op.stateful`` calls for each node (with its snapshot when resuming)."""
        return ControlLogic(self, resume_state)

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
            assessment, alerts = state.models.score_then_learn_one(record)
            outputs.extend(("Alert", a) for a in alerts)
            command = self.policy.decide(state.node, record, assessment)
        else:
            command = self.policy.decide(state.node, record)
        if command is not None:
            if self.stamp_wall_clock:
                command["issued_ts_ms"] = int(time.time() * 1000)
            outputs.append(("MorphCommand", command))
        return state, outputs

    @staticmethod
    def flush_alerts(state: Optional[ControlState]) -> list:
        """The closing Alert of the node's open episode, if any."""
        if state is None or state.models is None:
            return []
        return [("Alert", a) for a in state.models.flush()]

    @staticmethod
    def episode_open(state: Optional[ControlState]) -> bool:
        return state is not None and state.models is not None and state.models.episodes.is_open


class ControlLogic(StatefulLogic):
    """One node's `MorphStep` state in ``op.stateful``, with the idle and end-of-input flushes."""

    def __init__(self, step: MorphStep, state: Optional[ControlState]):
        self.step = step
        self.state = state
        self.flush_at: Optional[datetime] = None

    def on_item(self, value: Event):
        step = self.step
        self.state, outputs = step(self.state, value)
        # The clock is read only while an episode is open: the common path stays free of it.
        self.flush_at = step.clock() + step.idle_flush if step.episode_open(self.state) else None
        return outputs, StatefulLogic.RETAIN

    def on_notify(self):
        self.flush_at = None
        return self.step.flush_alerts(self.state), StatefulLogic.RETAIN

    def on_eof(self):
        self.flush_at = None
        return self.step.flush_alerts(self.state), StatefulLogic.RETAIN

    def notify_at(self) -> Optional[datetime]:
        return self.flush_at

    def snapshot(self) -> Optional[ControlState]:
        return copy.deepcopy(self.state)
