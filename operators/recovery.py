"""The recovery operator of the workflow flow: learn from every node's failures, publish the policy.

`RecoveryStep` is the mapper of a ``stateful_flat_map`` keyed by workflow id.
Its state (`RecoveryState`, snapshotted by Bytewax recovery) is the workflow's
causal failure graph (`fingerprint.failures.FailureGraph`) and its Q-learning
recovery agent (`prediction.recovery.QRecoveryAgent`). Every signal feeds
both; after ``publish_every`` failed signals of a workflow it emits a new
`RecoveryPolicy` (greedy actions and each step's causal parents) for the
``workflow.policy`` topic, which the nodes keep and apply locally.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from fingerprint.failures import FailureGraph
from operators.events import Event
from prediction.recovery import QRecoveryAgent
from schemas.state import Versioned


@dataclass
class RecoveryState(Versioned):
    """Per workflow: the failure graph, the agent, the steps seen, failures since the last publication."""

    STATE_VERSION: ClassVar[int] = 1
    graph: FailureGraph = field(default_factory=FailureGraph)
    agent: QRecoveryAgent = field(default_factory=QRecoveryAgent)
    steps: set = field(default_factory=set)
    failures_since_publish: int = 0
    version: int = STATE_VERSION


class RecoveryStep:
    """``(state, event) -> (state, [("RecoveryPolicy", record)])`` for ``op.stateful_flat_map``.

    >>> step = RecoveryStep(publish_every=2)
    >>> fail = {"workflow_id": "wf", "run_id": "r1", "task": "load", "state": 0, "outcome": "FAILURE",
    ...         "ts_ms": 1000, "node_id": "n1", "recovery": "RETRY 1s", "attributes": {"recovery.state": "s"}}
    >>> state, out = step(None, Event("WorkflowSignal", fail, "workflow.signals", 0, 0))
    >>> out
    []
    >>> state, out = step(state, Event("WorkflowSignal", dict(fail, run_id="r2", ts_ms=2000), "", 0, 1))
    >>> [(name, p["workflow_id"], p["version"]) for name, p in out]
    [('RecoveryPolicy', 'wf', 1)]
    """

    def __init__(self, publish_every: int = 20):
        self.publish_every = publish_every

    def __call__(self, state: RecoveryState | None, event: Event):
        record = event.record
        if event.schema_name != "WorkflowSignal":
            return state, []
        state = state or RecoveryState()
        state.graph.learn_one(record)
        state.agent.learn_one(record)
        state.steps.add(record["task"])
        if record.get("state") == 0 and record.get("outcome") == "FAILURE":
            state.failures_since_publish += 1
        if state.failures_since_publish < self.publish_every:
            return state, []
        state.failures_since_publish = 0
        wf = record["workflow_id"]
        parents = state.graph.recovery_parents([f"{wf}/{s}" for s in sorted(state.steps)])
        table = state.agent.policy(wf, parents)
        return state, [("RecoveryPolicy", table.to_record(record["ts_ms"]))]
