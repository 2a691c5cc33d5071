"""Kafka in and out of a dataflow: decoding, dead letters, per-partition start offsets.

A message that does not decode becomes a `DeadLetter`; the flows route those to
the dead-letter topic (original key and bytes, the reason and the origin in
headers) and carry on. They are counted per source topic and reason kind in a
Prometheus counter and in `DEAD_LETTERS`.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

from bytewax.connectors.kafka import KafkaSinkMessage, KafkaSource, KafkaSourceMessage
from bytewax.connectors.kafka import _KafkaSourcePartition  # per-partition offsets need the partition class

from schemas.codec import Codec, Decoded, DecodeError

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


#: Dead letters seen by this process, by (source topic, reason kind).
DEAD_LETTERS: Counter = Counter()

try:
    from prometheus_client import Counter as _PromCounter

    _DEAD_LETTER_METRIC = _PromCounter("liquid_dead_letters", "Messages sent to the dead-letter topic",
                                       ["topic", "reason"])
except (ImportError, ValueError):  # ValueError: registered twice in one process (tests re-import)
    _DEAD_LETTER_METRIC = None


@dataclass(frozen=True)
class DeadLetter:
    """A message that could not be decoded, with where it came from and why."""

    topic: str
    partition: int
    offset: int
    key: Optional[bytes]
    value: Optional[bytes]
    reason: str


@dataclass(frozen=True)
class Event:
    """A decoded record with its origin (kept for event-time and replay bookkeeping)."""

    schema_name: str
    record: dict
    topic: str
    partition: int
    offset: int


def decoder(codec: Codec, expect_by_topic: dict[str, str], key_field: str):
    """A map function: KafkaSourceMessage -> ``(key, Event)`` or ``("", DeadLetter)``.

    It keys events by ``record[key_field]`` itself: one operator less per event
    than a separate ``key_on``, which matters at tens of thousands of events/s.
    """

    def decode(msg: KafkaSourceMessage):
        try:
            decoded: Decoded = codec.decode(msg.value, expect=expect_by_topic.get(msg.topic))
        except DecodeError as err:
            return "", _dead(msg, str(err))
        record = decoded.record
        return record[key_field], Event(decoded.schema_name, record, msg.topic, msg.partition, msg.offset)

    return decode


def _dead(msg: KafkaSourceMessage, reason: str) -> DeadLetter:
    kind = reason.split(":")[0]
    DEAD_LETTERS[(msg.topic, kind)] += 1
    if _DEAD_LETTER_METRIC is not None:
        _DEAD_LETTER_METRIC.labels(msg.topic, kind).inc()
    n = sum(DEAD_LETTERS.values())
    if n <= 10 or n % 1000 == 0:  # say so, without flooding the log on a burst of garbage
        print(f"liquid: dead letter #{n} from {msg.topic}[{msg.partition}]@{msg.offset}: {reason}",
              file=sys.stderr, flush=True)
    return DeadLetter(msg.topic, msg.partition, msg.offset, msg.key, msg.value, reason)


def is_event(keyed) -> bool:
    return isinstance(keyed[1], Event)


def dead_letter_message(deadletter_topic: str):
    def to_message(keyed) -> KafkaSinkMessage:
        dl: DeadLetter = keyed[1]
        headers = [("liquid.error", dl.reason.encode()), ("liquid.source.topic", dl.topic.encode()),
                   ("liquid.source.partition", str(dl.partition).encode()),
                   ("liquid.source.offset", str(dl.offset).encode())]
        return KafkaSinkMessage(key=dl.key, value=dl.value or b"", topic=deadletter_topic, headers=headers)

    return to_message


def encoder(codec: Codec, topic_by_schema: dict[str, str]):
    """A map function: (key, (schema name, record)) -> KafkaSinkMessage on that record type's topic."""

    def encode(item) -> KafkaSinkMessage:
        key, (schema_name, record) = item
        return KafkaSinkMessage(key=key.encode(), value=codec.encode(schema_name, record),
                                topic=topic_by_schema[schema_name])

    return encode


class OffsetKafkaSource(KafkaSource):
    """KafkaSource whose partitions can each start at their own offset.

    ``start_offsets`` maps ``(topic, partition)`` to an offset; partitions not in
    it use ``starting_offset``. A resume from recovery still wins over both, as
    in Bytewax's own source. Like Bytewax's source it uses ``assign()`` and
    commits nothing, so no consumer group's offsets ever move.
    """

    def __init__(self, *args, start_offsets: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._start_offsets = dict(start_offsets or {})

    def build_part(self, step_id: str, for_part: str, resume_state):
        idx, topic = for_part.split("-", 1)
        offset = self._start_offsets.get((topic, int(idx)))
        if offset is None:
            return super().build_part(step_id, for_part, resume_state)
        config = {
            "group.id": "BYTEWAX_IGNORED",
            "enable.auto.commit": "false",
            "bootstrap.servers": ",".join(self._brokers),
            "enable.partition.eof": str(not self._tail),
            "statistics.interval.ms": 1000,
        }
        config.update(self._add_config)
        return _KafkaSourcePartition(step_id, config, topic, int(idx), offset, resume_state,
                                     self._batch_size, self._raise_on_errors)
