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

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, ClassVar, Optional

from bytewax.operators import StatefulLogic

from morph.peers import absorb
from morph.policy import MorphPolicy, NodeState
from operators import metrics
from operators.events import Event
from schemas.state import PickledState, Versioned, thaw

CONTROL_STATE_VERSION = 2
IDLE_FLUSH_S = 30.0
#: Record ids remembered per node: a node's outbox redelivers in order, so a duplicate is recent.
SEEN_CAPACITY = 4096


def _to_version_2(state: dict) -> dict:
    """Version 1 -> 2: no learned agent (the rules decided), no record ids seen, nothing adopted from the node."""
    return {"agent": None, "sharer": None, "seen": OrderedDict(), "duplicates": 0, "adopted_until_ms": 0, **state}


@dataclass
class ControlState(Versioned):
    """What the control flow keeps per node (snapshotted by Bytewax recovery)."""

    STATE_VERSION: ClassVar[int] = CONTROL_STATE_VERSION
    MIGRATIONS: ClassVar[dict] = {1: _to_version_2}

    node: NodeState
    models: Any = None  # per-node online models (prediction/), when enabled
    seen: OrderedDict = field(default_factory=OrderedDict)  # the node's recent record ids
    duplicates: int = 0        # redelivered records counted once
    adopted_until_ms: int = 0  # event time of the node's latest local decision
    version: int = CONTROL_STATE_VERSION
    agent: Any = None   # morph.agent.AgentState with --policy rli
    sharer: Any = None  # morph.peers.ExperienceSharer when the agent shares experience


class MorphStep:
    """Per-event logic: ``(state, event) -> (state, outputs)``; `build` makes the Bytewax logic of a node.

    ``models_factory`` builds a node's online models (anomaly detector and
    forecasters) on its first sample; with ``None`` the policy reacts to
    thresholds only.
    """

    def __init__(self, policy: MorphPolicy, models_factory: Optional[Callable[[str], Any]] = None,
                 stamp_wall_clock: bool = True, agent=None, sharer_factory: Optional[Callable[[str], Any]] = None,
                 signer=None, idle_flush_s: float = IDLE_FLUSH_S,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc), snapshots: bool = True):
        self.policy = policy
        self.models_factory = models_factory
        # --policy rli: a morph.agent.RliAgent decides instead of the rules; peers' experience is absorbed
        self.agent = agent
        self.sharer_factory = sharer_factory
        # issued_ts_ms is wall-clock time for latency accounting; tests of determinism turn it off.
        self.stamp_wall_clock = stamp_wall_clock
        self.signer = signer  # edge.signing.CommandSigner: every command leaves signed
        self.idle_flush = timedelta(seconds=idle_flush_s)
        self.clock = clock
        # False when no recovery store keeps snapshots (`ControlLogic.snapshot`)
        self.snapshots = snapshots
        # Wall-clock issue time of recent commands, for the round-trip metric (this process's commands only).
        self._issued: OrderedDict[str, int] = OrderedDict()
        self._decisions = {}  # trigger -> metric child

    def build(self, resume_state: Optional[PickledState | ControlState]) -> "ControlLogic":
        """The builder ``op.stateful`` calls for each node (with its snapshot when resuming)."""
        return ControlLogic(self, resume_state)

    def __call__(self, state: Optional[ControlState], event: Event):
        record = event.record
        if state is None:
            if event.schema_name == "Experience":
                return None, ()  # a peer's experience for a node not seen here: nothing to learn into
            node_id = record["node_id"]
            state = ControlState(NodeState.new(node_id),
                                 self.models_factory(node_id) if self.models_factory else None)
        if self._redelivered(state, record.get("record_id")):
            return state, ()
        if event.schema_name == "CommandAck":
            issued = self._issued.pop(record["command_id"], None)
            if issued is not None and record.get("ts_ms"):
                metrics.COMMAND_ROUND_TRIP.observe(max(0, record["ts_ms"] - issued) / 1e3)
            self.policy.on_ack(state.node, record)
            if record.get("origin") == "local" and record["status"] == "APPLIED":
                state.adopted_until_ms = max(state.adopted_until_ms, record.get("decided_on_ts_ms") or 0)
            return state, ()
        if event.schema_name == "Experience":
            self._absorb(state, record)
            return state, ()
        outputs = []
        assessment = None
        if state.models is not None:
            assessment, alerts = state.models.score_then_learn_one(record)
            outputs.extend(("Alert", a) for a in alerts)
        if self.agent is not None:
            command = self._learned(state, record, outputs)
        else:
            command = self.policy.decide(state.node, record, assessment)
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
            self._count_decision(command)
        _count_alerts(outputs)
        return state, outputs

    def _count_decision(self, command: dict) -> None:
        trigger = command["trigger"]
        child = self._decisions.get(trigger)
        if child is None:
            child = self._decisions[trigger] = metrics.DECISIONS.labels(trigger, "rli" if self.agent else "rules")
        child.inc()
        self._issued[command["command_id"]] = command.get("issued_ts_ms") or int(time.time() * 1000)
        if len(self._issued) > SEEN_CAPACITY:
            self._issued.popitem(last=False)

    def _learned(self, state: ControlState, record: dict, outputs: list) -> Optional[dict]:
        """The agent's decision on a sample; the experience it releases goes to ``outputs``."""
        if state.agent is None:
            state.agent = self.agent.new_state(record["node_id"])
            state.sharer = self.sharer_factory(record["node_id"]) if self.sharer_factory else None
        decision = self.agent.decide(state.agent, record)
        if decision is None:
            return None
        if state.sharer is not None and decision.previous_reward is not None:
            for experience in state.sharer.record(decision.previous_bucket, self.agent.arm_names[decision.previous_arm],
                                                  decision.previous_reward, decision.ts_ms):
                outputs.append(("Experience", experience))
        return decision.command

    def _absorb(self, state: ControlState, record: dict) -> None:
        agent_state = state.agent
        if self.agent is None or agent_state is None or agent_state.last_context is None or state.sharer is None:
            return  # nothing decided here yet: nothing to translate the experience into
        absorb(self.agent, agent_state, record, record["hops"], agent_state.last_context, state.sharer.config)

    @staticmethod
    def flush_alerts(state: Optional[ControlState]) -> list:
        """The closing Alert of the node's open episode, if any."""
        if state is None or state.models is None:
            return []
        return _count_alerts([("Alert", a) for a in state.models.flush()])

    @staticmethod
    def episode_open(state: Optional[ControlState]) -> bool:
        return state is not None and state.models is not None and state.models.episodes.is_open

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


def single_threaded_blas() -> None:
    """One BLAS thread in this process: the learned agent's algebra is on 39 × 39 matrices.

    At that size a multi-threaded OpenBLAS gains nothing, and on a loaded machine
    its threads are descheduled while the caller waits for them: a triangular
    solve that takes 7 µs on one thread averaged 1 ms with the default threads
    (measured on the 2-core machine under load). Bytewax workers are the flow's
    parallelism, not BLAS threads.
    """
    # Loaded first, so that their BLAS libraries (numpy's and scipy's own) are the ones limited.
    import numpy  # noqa: F401
    import scipy.linalg.lapack  # noqa: F401
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")


def _count_alerts(outputs: list) -> list:
    for name, record in outputs:
        if name == "Alert":
            metrics.ALERTS.labels(record["node_id"]).inc()
    return outputs


class ControlLogic(StatefulLogic):
    """One node's `MorphStep` state in ``op.stateful``, with the idle and end-of-input flushes."""

    def __init__(self, step: MorphStep, state: Optional[PickledState | ControlState]):
        self.step = step
        self.state = thaw(state)
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

    def snapshot(self) -> Optional[PickledState]:
        if not self.step.snapshots:
            # No recovery store: Bytewax still asks at every epoch's end for every node seen in it, and
            # copying them all stalls the worker at each epoch's end (see the README's scale notes).
            return None
        return PickledState.of(self.state)
