"""The one definition of every message: Avro schemas (``*.avsc``) and the default topics.

Each record type lives in one ``.avsc`` file beside this module. `load_schema`
parses it with fastavro (parsed once, cached); `TOPICS` names the default topic
of each record type, which is also the Confluent registry subject
``<topic>-value``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

SCHEMA_DIR = Path(__file__).parent

#: Record name -> .avsc file stem.
SCHEMA_FILES = {
    "Telemetry": "telemetry",
    "WorkflowSignal": "workflow_signal",
    "MorphCommand": "morph_command",
    "ShadowCommand": "shadow_command",
    "CommandAck": "command_ack",
    "Alert": "alert",
    "NextStepPrediction": "next_step_prediction",
    "Experience": "experience",
    "NextStepMetrics": "next_step_metrics",
    "ExecutionRecord": "execution_record",
    "RecoveryPolicy": "recovery_policy",
    "SyncOutcome": "sync_outcome",
    "RunCheckpoint": "run_checkpoint",
}
SCHEMA_NAMES = tuple(SCHEMA_FILES)

#: Default topic of each record type (topic names are configuration; these are defaults).
TOPICS = {
    "Telemetry": "edge.telemetry",
    "WorkflowSignal": "workflow.signals",
    "MorphCommand": "edge.commands",
    "ShadowCommand": "workflow.shadow",
    "CommandAck": "edge.acks",
    "Alert": "liquid.alerts",
    "NextStepPrediction": "workflow.predictions",
    "Experience": "liquid.experience",
    "NextStepMetrics": "workflow.metrics",
    "ExecutionRecord": "edge.executions",
    "RecoveryPolicy": "workflow.policy",
    "SyncOutcome": "edge.sync",
    "RunCheckpoint": "workflow.checkpoints",
}
DEADLETTER_TOPIC = "liquid.deadletter"


def schema_json(name: str) -> dict:
    """The schema as written in its .avsc file (for registries and docs)."""
    try:
        stem = SCHEMA_FILES[name]
    except KeyError:
        raise ValueError(f"unknown schema {name!r}; known: {', '.join(SCHEMA_NAMES)}") from None
    return json.loads((SCHEMA_DIR / f"{stem}.avsc").read_text())


@cache
def load_schema(name: str) -> dict:
    """The fastavro-parsed schema (fastavro wants a parsed schema for speed)."""
    import fastavro

    return fastavro.parse_schema(schema_json(name))


@dataclass(frozen=True)
class TopicNames:
    """Topic name of each record type; names are configuration, these are the defaults."""

    telemetry: str = TOPICS["Telemetry"]
    signals: str = TOPICS["WorkflowSignal"]
    commands: str = TOPICS["MorphCommand"]
    shadow: str = TOPICS["ShadowCommand"]
    acks: str = TOPICS["CommandAck"]
    alerts: str = TOPICS["Alert"]
    predictions: str = TOPICS["NextStepPrediction"]
    experience: str = TOPICS["Experience"]
    metrics: str = TOPICS["NextStepMetrics"]
    executions: str = TOPICS["ExecutionRecord"]
    policy: str = TOPICS["RecoveryPolicy"]
    sync: str = TOPICS["SyncOutcome"]
    checkpoints: str = TOPICS["RunCheckpoint"]
    deadletter: str = DEADLETTER_TOPIC

    def all(self) -> list[str]:
        return list(dict.fromkeys(vars(self).values()))

    def for_schema(self, schema_name: str) -> str:
        """The topic a record type is published to."""
        return {
            "Telemetry": self.telemetry, "WorkflowSignal": self.signals, "MorphCommand": self.commands,
            "ShadowCommand": self.shadow, "CommandAck": self.acks, "Alert": self.alerts,
            "NextStepPrediction": self.predictions, "Experience": self.experience, "NextStepMetrics": self.metrics,
            "ExecutionRecord": self.executions, "RecoveryPolicy": self.policy, "SyncOutcome": self.sync,
            "RunCheckpoint": self.checkpoints,
        }[schema_name]
