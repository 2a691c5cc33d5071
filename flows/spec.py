"""`FlowSpec`: everything a dataflow needs to be built, as plain JSON-able data.

``liquid flow run`` fills one in from its options and hands it to each Bytewax
process (through the environment for spawned processes), so every process of
a cluster builds the same flow.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Optional

from schemas import TopicNames
from schemas.kafka import KafkaSettings

ENV_VAR = "LIQUID_FLOW_SPEC"


@dataclass
class FlowSpec:
    name: str
    bootstrap: str
    kafka_config: dict = field(default_factory=dict)
    topics: dict = field(default_factory=dict)            # overrides of TopicNames fields
    tail: bool = True                                      # False: stop at the end of every partition
    start: str = "beginning"                               # beginning | end (partitions not in start_offsets)
    start_offsets: list = field(default_factory=list)      # [[topic, partition, offset], ...]
    output_topics: dict = field(default_factory=dict)      # schema name -> topic, e.g. replays write elsewhere
    batch_size: int = 1000
    registry_url: Optional[str] = None
    zoo_dir: Optional[str] = None
    models: bool = False                                   # control flow: online anomaly/forecast models
    policy: dict = field(default_factory=dict)             # PolicyConfig overrides (numbers)
    deterministic: bool = False                            # no wall-clock stamps (tests of replay)
    recovery: bool = True                                  # False: no recovery store, nothing to snapshot
    options: dict = field(default_factory=dict)            # flow-specific extras

    @property
    def kafka(self) -> KafkaSettings:
        return KafkaSettings(self.bootstrap, dict(self.kafka_config))

    @property
    def topic_names(self) -> TopicNames:
        return TopicNames(**self.topics)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "FlowSpec":
        return cls(**json.loads(text))

    @classmethod
    def from_env(cls) -> "FlowSpec":
        try:
            return cls.from_json(os.environ[ENV_VAR])
        except KeyError:
            raise RuntimeError(f"{ENV_VAR} is not set: run flows with `liquid flow run`") from None
