"""Kafka in and out of a dataflow: decoding, dead letters, per-partition start offsets.

A message that does not decode becomes a `DeadLetter`; the flows route those to
the dead-letter topic (original key and bytes, the reason and the origin in
headers) and carry on. They are counted per source topic and reason kind in a
Prometheus counter (`operators.metrics`) and in `DEAD_LETTERS`; so are the
records read and published per topic, and the fetch and produce requests every
Kafka client of the flow sends (`CLIENT_REQUESTS`, from librdkafka's statistics).
"""

from __future__ import annotations

import gc
import json
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Optional

import bytewax.operators as op
from bytewax.connectors.kafka import (
    KafkaSink,
    KafkaSinkMessage,
    KafkaSource,
    _KafkaSinkPartition,  # the sink's partition, built with a producer that reports statistics
    _KafkaSourcePartition,  # per-partition offsets need the partition class
)
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import KafkaError as ConfluentKafkaError
from confluent_kafka import Producer
from prometheus_client import Gauge

from operators import metrics
from operators.events import Event
from operators.from_spec import source_offsets
from schemas.codec import Codec, Decoded, DecodeError

#: Garbage-collector thresholds for a flow process. With CPython's default (700, 10, 10) a young
#: collection runs every 700 net allocations, several times per source batch, each promoting the
#: batch in flight (records, events, messages) towards the old generation; with the per-key state
#: (fingerprint windows, River trees) turning over steadily, that set off a full collection over
#: all the state every ~10,000 messages: in bench/fingerprint_throughput.py's workflow flow 30
#: full collections and ~3.5 s of GC in a 16 s run; ~0.15 s with these. Memory is still freed by
#: reference counting; only cyclic garbage waits longer.
FLOW_GC_THRESHOLDS = (50_000, 20, 10)


def tune_gc_for_flow(thresholds: tuple[int, int, int] = FLOW_GC_THRESHOLDS) -> None:
    """Set the garbage collector for a streaming worker process (see `FLOW_GC_THRESHOLDS`).

    Only ever raises the thresholds: a process that set larger ones keeps them.
    """
    gc.set_threshold(*(max(a, b) for a, b in zip(gc.get_threshold(), thresholds)))


#: Dead letters seen by this process, by (source topic, reason kind).
DEAD_LETTERS: Counter = Counter()

@dataclass(frozen=True)
class DeadLetter:
    """A message that could not be decoded, with where it came from and why."""

    topic: str
    partition: int
    offset: int
    key: Optional[bytes]
    value: Optional[bytes]
    reason: str


def raw_decoder(codec: Codec, expect_by_topic: dict[str, str], key_field: str):
    """``decode(key, value, topic, partition, offset)`` -> ``(key, Event)`` or ``("", DeadLetter)``.

    It keys events by ``record[key_field]`` itself: one operator less per event
    than a separate ``key_on``, which matters at tens of thousands of events/s.
    `OffsetKafkaSource` calls it on each consumed message (``decode=``).
    """

    def decode(key, value, topic, partition, offset):
        try:
            decoded: Decoded = codec.decode(value, expect=expect_by_topic.get(topic))
        except DecodeError as err:
            return "", _dead(topic, partition, offset, key, value, str(err))
        record = decoded.record
        return record[key_field], Event(decoded.schema_name, record, topic, partition, offset)

    return decode


def _dead(topic: str, partition: int, offset: int, key, value, reason: str) -> DeadLetter:
    kind = reason.split(":")[0]
    DEAD_LETTERS[(topic, kind)] += 1
    metrics.DEAD_LETTERS.labels(topic, kind).inc()
    n = sum(DEAD_LETTERS.values())
    if n <= 10 or n % 1000 == 0:  # say so, without flooding the log on a burst of garbage
        print(f"liquid: dead letter #{n} from {topic}[{partition}]@{offset}: {reason}",
              file=sys.stderr, flush=True)
    return DeadLetter(topic, partition, offset, key, value, reason)


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


#: What a flow's Kafka clients asked of the brokers, from librdkafka's statistics (``brokers.*.req``,
#: cumulative per client): with ``rate()`` it shows how many fetch and produce requests a flow sends
#: per second, the figure that decides what a broker spends on it (the embedded broker's cost is per
#: request, not per record: see the README's operations section).
CLIENT_REQUESTS = Gauge("liquid_kafka_client_requests", "Requests a flow's Kafka client sent, by kind (cumulative)",
                        ["client", "request"])
CLIENT_RTT = Gauge("liquid_kafka_client_rtt_seconds", "Mean broker round trip of a flow's Kafka client (last window)",
                   ["client"])
#: How often librdkafka reports statistics to the flows (Bytewax's lag gauge comes from them too).
STATS_INTERVAL_MS = 1000


def record_client_stats(client: str, stats_json: str) -> None:
    """Put one librdkafka statistics report of ``client`` into `CLIENT_REQUESTS` and `CLIENT_RTT`."""
    stats = json.loads(stats_json)
    totals: Counter = Counter()
    rtts = []
    for broker in stats.get("brokers", {}).values():
        if broker.get("nodeid", -1) < 0:  # the bootstrap connection: metadata only, counted on the broker's own
            continue
        totals.update({kind: n for kind, n in broker.get("req", {}).items() if kind in ("Produce", "Fetch")})
        if broker.get("rtt", {}).get("cnt"):
            rtts.append(broker["rtt"]["avg"] / 1e6)
    for kind, n in totals.items():
        CLIENT_REQUESTS.labels(client, kind).set(n)
    if rtts:
        CLIENT_RTT.labels(client).set(max(rtts))


def stats_producer(brokers: list[str], add_config: dict, client: str) -> Producer:
    """A producer that reports its requests (`record_client_stats`) as ``client`` (a given statistics.interval.ms wins)."""
    config = {"bootstrap.servers": ",".join(brokers), "statistics.interval.ms": STATS_INTERVAL_MS, **add_config}
    return Producer({**config, "stats_cb": lambda stats: record_client_stats(client, stats)})


class StatsKafkaSink(KafkaSink):
    """Bytewax's KafkaSink whose producer reports its requests (`record_client_stats`) as ``client``."""

    def __init__(self, *args, client: str, **kwargs):
        super().__init__(*args, **kwargs)
        self._client = client

    def build(self, step_id: str, worker_index: int, worker_count: int):
        # as KafkaSink.build, plus the statistics callback
        return _KafkaSinkPartition(stats_producer(self._brokers, self._add_config, f"{self._client}/{worker_index}"),
                                   self._topic)


class _EncodingSinkPartition(StatelessSinkPartition):
    def __init__(self, producer: Producer, codec: Codec, topic_by_schema: dict[str, str], key_by: dict[str, str]):
        self._producer, self._codec, self._topic_by_schema = producer, codec, topic_by_schema
        self._key_by = key_by
        self._published = {name: metrics.EVENTS_OUT.labels(topic) for name, topic in topic_by_schema.items()}

    def write_batch(self, items) -> None:
        produce, encode = self._producer.produce, self._codec.encode
        topic_of, key_by = self._topic_by_schema, self._key_by
        published = Counter()
        for key, (schema_name, record) in items:
            field = key_by.get(schema_name)
            if field is not None:
                key = record[field]
            produce(topic_of[schema_name], encode(schema_name, record), key.encode())
            published[schema_name] += 1
        for schema_name, n in published.items():
            self._published[schema_name].inc(n)
        # delivered before the next input batch (what keeps recovery at-least-once, as Bytewax's KafkaSink)
        self._producer.flush()

    def close(self) -> None:
        self._producer.flush()


class EncodingKafkaSink(DynamicSink):
    """Publishes ``(key, (schema name, record))`` items, each encoded onto its record type's topic.

    The message key is the item's key, or for a record type in ``key_by`` the
    record's field it names (as `kafka_input`'s ``key_field`` reads it back).
    What ``op.map(encoder) -> KafkaSink`` did in two steps, in the sink itself:
    no step crossing and no `KafkaSinkMessage` per record, and one ``poll``
    per batch (the flush) instead of one per message. Its producer reports its
    requests (`record_client_stats`) as ``client``.
    """

    def __init__(self, brokers: list[str], codec: Codec, topic_by_schema: dict[str, str], add_config: dict,
                 client: str, key_by: dict[str, str] | None = None):
        self._brokers, self._codec, self._topic_by_schema = brokers, codec, topic_by_schema
        self._add_config, self._client, self._key_by = add_config, client, dict(key_by or {})

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _EncodingSinkPartition:
        producer = stats_producer(self._brokers, self._add_config, f"{self._client}/{worker_index}")
        return _EncodingSinkPartition(producer, self._codec, self._topic_by_schema, self._key_by)


class OffsetKafkaSource(KafkaSource):
    """KafkaSource whose partitions can each start at their own offset, and can decode as they read.

    ``start_offsets`` maps ``(topic, partition)`` to an offset; partitions not in
    it use ``starting_offset``. A resume from recovery still wins over both, as
    in Bytewax's own source. Like Bytewax's source it uses ``assign()`` and
    commits nothing, so no consumer group's offsets ever move.

    With ``decode`` (a `raw_decoder`) the source emits decoded ``(key, Event)``
    and ``("", DeadLetter)`` items instead of `KafkaSourceMessage` objects (see
    `_DecodingKafkaPartition`).
    """

    def __init__(self, *args, start_offsets: dict | None = None, decode=None, consumer_config: dict | None = None,
                 **kwargs):
        super().__init__(*args, **kwargs)
        # add_config also configures the admin client that lists partitions (a producer-type instance):
        # consumer-only settings go to the partitions' consumers alone, or librdkafka warns.
        self._consumer_config = self._add_config if consumer_config is None else consumer_config
        self._start_offsets = dict(start_offsets or {})
        self._decode = decode
        if decode is not None and not self._raise_on_errors:
            raise ValueError("decode= needs raise_on_errors=True (consumer errors are not messages to decode)")

    def build_part(self, step_id: str, for_part: str, resume_state):
        idx, topic = for_part.split("-", 1)
        offset = self._start_offsets.get((topic, int(idx)), self._starting_offset)
        config = {
            "group.id": "BYTEWAX_IGNORED",
            "enable.auto.commit": "false",
            "bootstrap.servers": ",".join(self._brokers),
            "enable.partition.eof": str(not self._tail),
            "statistics.interval.ms": STATS_INTERVAL_MS,
        }
        config.update(self._consumer_config)
        if self._decode is None:
            return _KafkaSourcePartition(step_id, config, topic, int(idx), offset, resume_state,
                                         self._batch_size, self._raise_on_errors)
        return _DecodingKafkaPartition(step_id, config, topic, int(idx), offset, resume_state,
                                       self._batch_size, self._raise_on_errors, decode=self._decode)


class _DecodingKafkaPartition(_KafkaSourcePartition):
    """Bytewax's Kafka source partition, emitting what ``decode`` makes of each message.

    Same consumer, offsets (its snapshot), end of partition and error handling as
    Bytewax's ``next_batch`` with ``raise_on_errors``; it only skips building a
    `KafkaSourceMessage` per message (~1.5 µs with its eight accessor calls) and
    a separate decode step downstream.
    """

    def __init__(self, *args, decode, **kwargs):
        super().__init__(*args, **kwargs)
        self._decode = decode
        self._read = metrics.EVENTS_IN.labels(self._topic)
        self._client = f"source/{self._topic}[{self._part_idx}]"

    def _process_stats(self, json_stats: str) -> None:
        record_client_stats(self._client, json_stats)
        super()._process_stats(json_stats)  # Bytewax's lag gauge

    def next_batch(self) -> list:
        if self._eof:
            raise StopIteration()
        decode, topic, partition = self._decode, self._topic, self._part_idx  # this partition's consumer reads only them
        batch = []
        last_offset = None
        for msg in self._consumer.consume(self._batch_size, 0.001):
            error = msg.error()
            if error is not None:
                if error.code() == ConfluentKafkaError._PARTITION_EOF:
                    # emit this batch; StopIteration on the next call, as Bytewax's source does
                    self._eof = True
                    break
                raise RuntimeError(f"error consuming from Kafka topic `{self._topic!r}`: {error}")
            last_offset = msg.offset()
            batch.append(decode(msg.key(), msg.value(), topic, partition, last_offset))
        if last_offset is not None:
            self._offset = last_offset + 1  # resume from the next message, not this one
        self._read.inc(len(batch))
        return batch


# -- the Kafka wiring of every flow ----------------------------------------------------------


def kafka_input(flow, spec, codec, schema_by_topic: dict, key_field: str, step_id: str = "kafka"):
    """``(key, Event)`` items from the topics of ``schema_by_topic``, decoded as they are read.

    Anything undecodable goes to the dead-letter topic with its reason (and is
    counted); the flow carries on. Every flow reads Kafka this way.
    """
    kafka = spec.kafka
    start, per_partition = source_offsets(spec)
    decoded = op.input(f"{step_id}_in", flow, OffsetKafkaSource(
        kafka.brokers, list(schema_by_topic), tail=spec.tail, starting_offset=start, start_offsets=per_partition,
        add_config=kafka.producer_config(), consumer_config=kafka.consumer_config(), batch_size=spec.batch_size,
        decode=raw_decoder(codec, schema_by_topic, key_field)))
    routed = op.branch(f"{step_id}_decodable", decoded, is_event)
    op.output(f"{step_id}_deadletter_out",
              op.map(f"{step_id}_dead_letter", routed.falses, dead_letter_message(spec.topic_names.deadletter)),
              StatsKafkaSink(kafka.brokers, None, add_config=kafka.sink_config(), client=f"sink/{step_id}_deadletter"))
    return routed.trues


def kafka_output(stream, spec, codec, schema_names: tuple, key_by: dict[str, str] | None = None) -> None:
    """Publish ``(key, (schema name, record))`` items, each on its record type's topic, keyed by the item's key
    or, for a record type in ``key_by``, by the record's field it names."""
    topic_by_schema = {name: spec.output_topics.get(name) or spec.topic_names.for_schema(name)
                       for name in schema_names}
    op.output("kafka_out", stream, EncodingKafkaSink(spec.kafka.brokers, codec, topic_by_schema,
                                                     add_config=spec.kafka.sink_config(), client="sink/kafka_out",
                                                     key_by=key_by))
