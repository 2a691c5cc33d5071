"""Kafka client settings and helpers shared by every side: flows, the command line and edge workers.

No Bytewax here: an edge worker reaches Kafka with confluent-kafka alone.
Every librdkafka setting passes through `KafkaSettings` unchanged, so a real
cluster with SASL/TLS works the same way as the embedded broker.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from confluent_kafka import TopicPartition

#: Low-latency consumer settings measured on this machine: librdkafka's default
#: fetch.wait.max.ms (500) adds ~100 ms per hop; 5 ms brings a hop to 2-3 ms.
LOW_LATENCY_CONSUMER = {"fetch.wait.max.ms": "5", "fetch.min.bytes": "1"}


@dataclass(frozen=True)
class KafkaSettings:
    """A bootstrap address plus librdkafka settings, shared by producers, consumers and flows."""

    bootstrap: str
    config: dict = field(default_factory=dict)

    def client(self, **extra) -> dict:
        conf = {"bootstrap.servers": self.bootstrap}
        conf.update(self.config)
        conf.update({k: v for k, v in extra.items()})
        return conf

    def producer(self, **extra) -> dict:
        return self.client(**{"linger.ms": "2", **extra})

    def consumer(self, group_id: str, **extra) -> dict:
        return self.client(**{"group.id": group_id, "enable.auto.commit": "false",
                              **LOW_LATENCY_CONSUMER, **extra})

    def flow_config(self) -> dict:
        """Settings for Bytewax's KafkaSource/KafkaSink (which add bootstrap themselves)."""
        return {**LOW_LATENCY_CONSUMER, **self.config}

    @property
    def brokers(self) -> list[str]:
        return self.bootstrap.split(",")


def partition_ends(consumer, topic: str, partitions: int) -> dict[int, tuple[int, int]]:
    """``{partition: (low, end)}`` where end is one past the last record.

    Tansu (the embedded broker) reports the high watermark as the base offset of
    the last record *batch* plus one, not one past its last record. So fetch from
    ``high - 1`` and take the last offset of that batch; on a real Kafka cluster
    this returns the high watermark unchanged.
    """
    marks = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in range(partitions)}
    probe = {p: high - 1 for p, (low, high) in marks.items() if high > low}
    ends = {p: high for p, (_, high) in marks.items()}
    if probe:
        # Drain the last batches: one consume call can return only part of a batch (it holds up
        # to batch.num.messages records), so stopping at each partition's first message
        # under-reports the end and readers silently miss the tail.
        consumer.assign([TopicPartition(topic, p, o) for p, o in probe.items()])
        deadline = time.monotonic() + 5.0
        seen: set[int] = set()
        while time.monotonic() < deadline:
            msgs = consumer.consume(1000, timeout=0.2)
            for msg in msgs:
                if msg.error() is None:
                    p = msg.partition()
                    ends[p] = max(ends[p], msg.offset() + 1)
                    seen.add(p)
            if not msgs and seen >= set(probe):
                break
        consumer.unassign()
    return {p: (marks[p][0], ends[p]) for p in range(partitions)}
