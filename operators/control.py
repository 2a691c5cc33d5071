"""The morph operator: per-node policy state inside a Bytewax ``stateful_flat_map``.

It takes decoded telemetry and acknowledgements keyed by node and returns the
records to publish as ``(schema name, record)`` pairs. The state is the plain
`morph.policy.NodeState` dataclass plus the node's online models, so Bytewax
snapshots everything the decision depends on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Optional

from morph.policy import MorphPolicy, NodeState
from operators.events import Event
from schemas.state import Versioned

CONTROL_STATE_VERSION = 2


def _add_agent(state: dict) -> dict:
    """Version 1 -> 2: the learned agent and its experience sharer, absent for the rules."""
    return {"agent": None, "sharer": None, **state}


@dataclass
class ControlState(Versioned):
    """What the control flow keeps per node (snapshotted by Bytewax recovery)."""

    STATE_VERSION: ClassVar[int] = CONTROL_STATE_VERSION
    MIGRATIONS: ClassVar[dict] = {1: _add_agent}

    node: NodeState
    models: Any = None  # per-node online models (prediction/), when enabled
    version: int = CONTROL_STATE_VERSION
    agent: Any = None   # morph.agent.AgentState with --policy rli
    sharer: Any = None  # morph.peers.ExperienceSharer when the agent shares experience


class MorphStep:
    """The mapper for ``op.stateful_flat_map``: ``(state, event) -> (state, outputs)``.

    ``models_factory`` builds a node's online models (anomaly detector and
    forecasters) on its first sample; with ``None`` the policy reacts to
    thresholds only.
    """

    def __init__(self, policy: MorphPolicy, models_factory: Optional[Callable[[str], Any]] = None,
                 stamp_wall_clock: bool = True, agent=None, sharer_factory: Optional[Callable[[str], Any]] = None):
        self.policy = policy
        self.models_factory = models_factory
        # --policy rli: a morph.agent.RliAgent decides instead of the rules; peers' experience is absorbed
        self.agent = agent
        self.sharer_factory = sharer_factory
        # issued_ts_ms is wall-clock time for latency accounting; tests of determinism turn it off.
        self.stamp_wall_clock = stamp_wall_clock

    def __call__(self, state: Optional[ControlState], event: Event):
        record = event.record
        if state is None:
            if event.schema_name == "Experience":
                return None, ()  # a peer's experience for a node not seen here: nothing to learn into
            node_id = record["node_id"]
            state = ControlState(NodeState.new(node_id),
                                 self.models_factory(node_id) if self.models_factory else None)
        if event.schema_name == "CommandAck":
            self.policy.on_ack(state.node, record)
            return state, ()
        if event.schema_name == "Experience":
            self._absorb(state, record)
            return state, ()
        outputs = []
        assessment = None
        if state.models is not None:
            assessment, alerts = state.models.update(record)
            outputs.extend(("Alert", a) for a in alerts)
        if self.agent is not None:
            command = self._learned(state, record, outputs)
        else:
            command = self.policy.decide(state.node, record, assessment)
        if command is not None:
            if self.stamp_wall_clock:
                command["issued_ts_ms"] = int(time.time() * 1000)
            outputs.append(("MorphCommand", command))
        return state, outputs

    def _learned(self, state: ControlState, record: dict, outputs: list) -> Optional[dict]:
        """The agent's decision on a sample; the experience it releases goes to ``outputs``."""
        if state.agent is None:
            state.agent = self.agent.new_state(record["node_id"])
            state.sharer = self.sharer_factory(record["node_id"]) if self.sharer_factory else None
        decision = self.agent.decide(state.agent, record)
        if decision is None:
            return None
        if state.sharer is not None and decision.previous_reward is not None:
            experience = state.sharer.record(decision.previous_bucket, self.agent.arms[decision.previous_arm].name,
                                             decision.previous_reward, decision.ts_ms)
            if experience is not None:
                outputs.append(("Experience", experience))
        return decision.command

    def _absorb(self, state: ControlState, record: dict) -> None:
        from morph.peers import absorb

        agent_state = state.agent
        if self.agent is None or agent_state is None or agent_state.last_context is None or state.sharer is None:
            return  # nothing decided here yet: nothing to translate the experience into
        absorb(self.agent, agent_state, record, record["hops"], agent_state.last_context, state.sharer.config)
