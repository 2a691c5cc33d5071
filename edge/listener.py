"""The edge side of the command loop: listen for a node's commands, acknowledge them.

`CommandListener` consumes the commands topic for a set of nodes (``assign()``
to every partition, no group join: a Tansu group join costs ~half the session
timeout), checks each command with ``verify`` when given (signatures: a
rejected command gets a REJECTED ack saying why, and the node keeps serving),
skips commands it has seen (replays and resumes may repeat them), hands each to
a callback that returns a CommandAck, and publishes the ack — through
``publish_ack`` when given (the edge worker's outbox), else its own producer.
Used by the fleet simulator and by the edge worker.

An idle listener must cost the node next to nothing (the worker-overhead part of
``bench/scale.py``): it blocks in librdkafka for up to `POLL_TIMEOUT_S` (poll()
returns on the first message, so a command is not delayed by it), and its
consumer asks the broker for data with `EDGE_FETCH_WAIT_MS` rather than the flows'
5 ms long-poll, which kept librdkafka's broker thread busy 200 times a second.
The Python client cannot interrupt a blocked poll from another thread (librdkafka's
``rd_kafka_queue_yield`` is swallowed by the client's own interruptible-poll loop),
so stopping is two-phase: `halt` every listener first, then `stop` (join) them, and
a worker's shutdown waits one poll timeout at most, not one per listener. It blocks in
``consume(1, timeout)``, not ``poll(timeout)``: the client's poll wakes every 200 ms to
check for signals (5 wakeups per 1 s poll, each a round for the GIL on a serving
node); its consume sleeps the whole timeout.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Callable

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition

from schemas.codec import Codec, DecodeError
from schemas.kafka import KafkaSettings, partition_ends

#: Seconds a listener blocks in librdkafka per poll when nothing arrives: how long a stop
#: can take to be noticed (`CommandListener.halt`), not how long a command waits. Each
#: timeout is a wake-up of a Python thread on an otherwise idle core (~0.1 ms of CPU on the
#: 2-core VM of `bench/scale.py`): 1 s, not 0.5, halves what an idle listener costs, for half
#: a second more at a worker's shutdown.
POLL_TIMEOUT_S = 1.0

#: The fetch long-poll of edge consumers. A Kafka broker answers a fetch as soon as a record
#: arrives, so a long wait costs no latency there; the embedded broker (Tansu) re-checks its
#: log only a few times per wait. Measured on loopback Tansu, idle consumer CPU (librdkafka
#: threads) and command hop latency p50 / p95: 5 ms: 13 ms/s, 3 / 16 ms; 100 ms: ~1 ms/s,
#: 16 / 38 ms; 250-300 ms: < 1 ms/s (below the clock tick), 26 / 66-84 ms. A setting given
#: in the KafkaSettings wins; a listener whose records race something (shadow commands race
#: the run's own steps) passes ``fetch_wait_ms=None`` and keeps the flows' 5 ms.
#: 100 ms, not 250: on Tansu, 250 ms put `bench/adaptation.py`'s decision -> applied p50 at
#: 101 ms (target < 100; 67 ms at 100 ms) for 0.8 ms/s less of librdkafka's CPU.
#: A deployment chooses its own (``EdgeWorker(fetch_wait_ms=...)``, ``liquid worker --fetch-wait-ms``).
EDGE_FETCH_WAIT_MS = 100
#: The edge listeners' fetch wait for a broker that long-polls (a Kafka cluster answers a fetch as
#: soon as a record arrives): librdkafka's own default. A command then waits for no timer, and an
#: idle listener's consumer fetches twice a second instead of ten times; the client's CPU per
#: fetch cycle is the same on any broker, so `bench/scale.py` measures what this saves on the
#: embedded broker (where it would add ~half the wait to every command, as it does not long-poll).
LONG_POLL_FETCH_WAIT_MS = 500


class CommandListener(threading.Thread):
    def __init__(self, settings: KafkaSettings, topic: str, ack_topic: str, nodes: set[str],
                 on_command: Callable[[dict], dict | None], codec: Codec | None = None,
                 schema_name: str = "MorphCommand", from_beginning: bool = False,
                 verify: Callable[[dict, str], str | None] | None = None,
                 publish_ack: Callable[[dict], None] | None = None,
                 on_contact: Callable[[], None] | None = None, fetch_wait_ms: int | None = EDGE_FETCH_WAIT_MS):
        super().__init__(name=f"commands-{topic}", daemon=True)
        self.fetch_wait_ms = fetch_wait_ms
        self.settings, self.topic, self.ack_topic = settings, topic, ack_topic
        self.nodes, self.on_command, self.schema_name = set(nodes), on_command, schema_name
        self.codec = codec or Codec()
        self.from_beginning = from_beginning
        self.seen: set[str] = set()
        self.verify, self.on_contact = verify, on_contact
        self.kind = "SHADOW" if schema_name == "ShadowCommand" else "MORPH"
        self.received = 0
        self.rejected = 0
        self.undecodable = 0
        self._halt = threading.Event()
        self._ready = threading.Event()
        # A producer of its own only when it acknowledges and nobody publishes for it: a listener
        # without an ack topic (records, policies, checkpoints) would keep an idle librdkafka
        # instance, four threads waking every second, for nothing.
        own = publish_ack is None and bool(ack_topic)
        self.producer = Producer(settings.producer(**{"linger.ms": "0"})) if own else None
        self.publish_ack = publish_ack or (self._produce_ack if own else _no_ack)

    def run(self) -> None:
        given = "fetch.wait.max.ms" in self.settings.config or self.fetch_wait_ms is None
        fetch = {} if given else {"fetch.wait.max.ms": str(self.fetch_wait_ms)}
        consumer = Consumer(self.settings.consumer("liquid-edge", **fetch))
        partitions = self._wait_for_topic(consumer)
        if partitions is None:
            consumer.close()
            return
        starts = self._start_offsets(consumer, partitions)
        consumer.assign([TopicPartition(self.topic, p, o) for p, o in starts.items()])
        self._ready.set()
        try:
            while not self._halt.is_set():
                # consume(1, timeout) returns on the first message (with n > 1 it would wait out
                # the timeout whenever fewer than n arrive, adding that much to every command);
                # poll(timeout) would too, but wakes every 200 ms on the way (module docstring).
                first = consumer.consume(1, timeout=POLL_TIMEOUT_S)
                if not first:
                    continue
                batch = [msg for msg in first + consumer.consume(100, timeout=0) if msg.error() is None]
                for msg in batch:
                    self._handle(msg.value())
                self._handled(batch)
                if self.producer is not None:
                    self.producer.poll(0)
        finally:
            consumer.close()
            if self.producer is not None:
                self.producer.flush(5)
                # publish_ack is a bound method (a cycle): without this the client lives on until
                # the garbage collector's next full pass, reconnecting to a broker that may be gone
                self.producer = None

    def _start_offsets(self, consumer, partitions) -> dict[int, int]:
        """Where each partition is read from: the beginning, or (commands) the end as of now."""
        if self.from_beginning:
            return {p: OFFSET_BEGINNING for p in partitions}
        # Explicit high watermarks rather than OFFSET_END, which resolves lazily: a
        # command sent right after wait_ready() must not be skipped.
        ends = partition_ends(consumer, self.topic, len(partitions))
        return {p: ends[p][1] for p in partitions}

    def _handled(self, batch: list) -> None:
        """Called after each batch of messages has been handled (a listener that keeps its position)."""

    def _wait_for_topic(self, consumer) -> dict | None:
        """The topic's partitions once the broker answers; a node may start during an outage."""
        while not self._halt.is_set():
            try:
                topic = consumer.list_topics(self.topic, timeout=5).topics[self.topic]
            except KafkaException:
                continue
            if topic.error is None and topic.partitions:
                return topic.partitions
            self._halt.wait(0.5)
        return None

    def _own_record(self, raw: bytes, what: str) -> dict | None:
        """The decoded record when it is addressed to one of this listener's nodes, else None."""
        try:
            record = self.codec.decode(raw, expect=self.schema_name).record
        except DecodeError as err:
            self.undecodable += 1
            print(f"liquid: ignoring an undecodable {what}: {err}", file=sys.stderr)
            return None
        return record if record["node_id"] in self.nodes else None

    def _handle(self, raw: bytes) -> None:
        command = self._own_record(raw, "command")
        if command is None:
            return
        if self.on_contact is not None:
            self.on_contact()
        # Verified before the seen-check: a replayed command is rejected with an ack, not ignored.
        problem = self.verify(command, self.kind) if self.verify is not None else None
        if problem is not None:
            self.rejected += 1
            self.publish_ack(rejection_ack(command, self.kind, problem))
            return
        if command["command_id"] in self.seen:
            return
        self.seen.add(command["command_id"])
        self.received += 1
        ack = self.on_command(command)
        if ack is not None:
            self.publish_ack(ack)

    def _produce_ack(self, ack: dict) -> None:
        self.producer.produce(self.ack_topic, key=ack["node_id"].encode(), value=self.codec.encode("CommandAck", ack))
        self.producer.poll(0)

    def wait_ready(self, timeout_s: float = 15.0) -> bool:
        return self._ready.wait(timeout_s)

    def halt(self) -> None:
        """Ask the listener to stop after its current poll, without waiting (see `stop`)."""
        self._halt.set()

    def stop(self) -> None:
        """Halt and wait until the consumer is closed (at most one poll timeout plus the close)."""
        self._halt.set()
        if self.is_alive():
            self.join(timeout=5)


def _no_ack(ack: dict) -> None:
    """The acknowledgement of a listener without an ack topic: none."""


def rejection_ack(command: dict, kind: str, reason: str) -> dict:
    """The REJECTED ack of a command that failed its checks; the node keeps serving what it served."""
    return {"command_id": command["command_id"], "node_id": command["node_id"], "kind": kind, "status": "REJECTED",
            "reason": reason, "ts_ms": int(time.time() * 1000), "decided_on_ts_ms": command.get("decided_on_ts_ms"),
            "details": {"key_id": str(command.get("key_id")), "sequence": str(command.get("sequence"))},
            "origin": None, "record_id": None}
