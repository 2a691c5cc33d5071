"""Kafka client settings and helpers shared by every side: flows, the command line and edge workers.

No Bytewax here: an edge worker reaches Kafka with confluent-kafka alone.
Every librdkafka setting passes through `KafkaSettings` unchanged, so a real
cluster with SASL/TLS works the same way as the embedded broker.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from functools import lru_cache

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

#: Low-latency consumer settings measured on this machine: librdkafka's default
#: fetch.wait.max.ms (500) adds ~100 ms per hop; 5 ms brings a hop to 2-3 ms.
LOW_LATENCY_CONSUMER = {"fetch.wait.max.ms": "5", "fetch.min.bytes": "1"}

#: A consumer that reads a topic through to its end (a dump, a replay's read-back): the broker may
#: wait for a megabyte. With the low-latency settings the embedded broker answered each fetch with
#: whatever was stored, one small batch when a two-worker flow had flushed its output in batches of
#: a few records: 137,000 predictions read at ~1,000 records/s (each fetch dearer as batches pile
#: up); with these, in 0.3 s. Measured on the embedded broker.
BULK_CONSUMER = {"fetch.wait.max.ms": "100", "fetch.min.bytes": "1048576"}

#: A flow's sink: Bytewax's KafkaSink flushes after every output batch (so a batch is delivered
#: before the next input, which keeps recovery at-least-once), and flush() waits out the linger
#: first. librdkafka's default linger.ms (5) thus blocked the flow's worker ~5-6 ms per output
#: batch; with 0 a flush is one broker round trip (~1 ms on loopback). Measured on the embedded broker.
FLOW_SINK_PRODUCER = {"linger.ms": "0"}

#: A producer that sends for many sources at once (the fleet simulator, a log replay): a gateway.
#: The embedded broker's cost is per request, and grows with every batch a partition holds
#: (bench/broker.py): at the 1,000-node rate (2,200 records/s, 4 partitions) a 2 ms linger made ~940 requests
#: of ~2 records per second and the broker's round trip climbed to 7.8 s within 90 s; with 20 ms (one
#: partition), 46 requests/s and all 2,200 records/s delivered over two minutes (p50 19-29 ms).
GATEWAY_PRODUCER = {"linger.ms": "20"}


@dataclass(frozen=True)
class KafkaSettings:
    """A bootstrap address plus librdkafka settings, shared by producers, consumers and flows.

    Each kind of client gets only the settings it takes: a consumer-only setting
    (``fetch.wait.max.ms``) is left out of producers and admin clients, a
    producer-only one (``linger.ms``) out of consumers, so librdkafka has nothing
    to warn about (CONFWARN). Which kind a setting belongs to is librdkafka's own
    answer (`client_kind`), so every setting of every version is classified.
    """

    bootstrap: str
    config: dict = field(default_factory=dict)

    def _for(self, kind: str) -> dict:
        return {k: v for k, v in self.config.items() if client_kind(k, v) in (None, kind)}

    def client(self, **extra) -> dict:
        """Settings for a client of either kind (admin clients, probes): those both kinds take."""
        return {"bootstrap.servers": self.bootstrap, **self._for("both"), **extra}

    def producer(self, **extra) -> dict:
        return {"bootstrap.servers": self.bootstrap, "linger.ms": "2", **self._for("producer"), **extra}

    def consumer(self, group_id: str, **extra) -> dict:
        return {"bootstrap.servers": self.bootstrap, "group.id": group_id, "enable.auto.commit": "false",
                **LOW_LATENCY_CONSUMER, **self._for("consumer"), **extra}

    def bulk_consumer(self, group_id: str) -> dict:
        """A consumer that reads through to a topic's end (`BULK_CONSUMER`; given settings win)."""
        return {"bootstrap.servers": self.bootstrap, "group.id": group_id, "enable.auto.commit": "false",
                **BULK_CONSUMER, **self._for("consumer")}

    def gateway_producer(self, **extra) -> dict:
        """A producer for many sources at once (`GATEWAY_PRODUCER`; given settings win)."""
        return {"bootstrap.servers": self.bootstrap, **GATEWAY_PRODUCER, **self._for("producer"), **extra}

    def producer_config(self) -> dict:
        """A producer's settings without the bootstrap address (Bytewax's KafkaSink adds it)."""
        return self._for("producer")

    def sink_config(self) -> dict:
        """A flow sink's producer settings without the bootstrap address (`FLOW_SINK_PRODUCER`; given ones win)."""
        return {**FLOW_SINK_PRODUCER, **self._for("producer")}

    def consumer_config(self) -> dict:
        """A consumer's settings without the bootstrap address (a flow's source partitions)."""
        return {**LOW_LATENCY_CONSUMER, **self._for("consumer")}

    @property
    def brokers(self) -> list[str]:
        return self.bootstrap.split(",")


@lru_cache(maxsize=None)
def client_kind(key: str, value: str) -> str | None:
    """``"consumer"`` or ``"producer"`` when librdkafka ignores ``key`` in the other kind of client; None when both take it.

    librdkafka knows which of its properties are consumer- or producer-only and
    says so when a client of the other kind is configured with one: a producer
    and a consumer are configured with the setting alone (no connection is made)
    and their warnings read.

    >>> client_kind("fetch.wait.max.ms", "5"), client_kind("linger.ms", "2"), client_kind("security.protocol", "plaintext")
    ('consumer', 'producer', None)
    """
    warnings: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            warnings.append(record.getMessage())

    log = logging.getLogger(f"liquid.kafka.probe.{key}")
    log.propagate, log.handlers = False, [Capture()]
    try:
        Producer({key: value, "logger": log}).poll(0)
        Consumer({key: value, "group.id": "liquid-probe", "logger": log}).close()
    except KafkaException:
        return None  # an invalid value: let the real client report it
    if any("is a consumer property" in w for w in warnings):
        return "consumer"
    if any("is a producer property" in w for w in warnings):
        return "producer"
    return None


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


def produce_waiting(producer, topic: str, key: bytes | None, value: bytes, wait_s: float = 0.05) -> None:
    """Produce one message; while librdkafka's local queue is full, serve delivery reports and retry (lose nothing)."""
    while True:
        try:
            producer.produce(topic, key=key, value=value)
            return
        except BufferError:
            producer.poll(wait_s)
