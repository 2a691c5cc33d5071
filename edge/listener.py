"""The edge side of the command loop: listen for a node's commands, acknowledge them.

`CommandListener` consumes the commands topic for a set of nodes (``assign()``
to every partition, no group join: a Tansu group join costs ~half the session
timeout), skips commands it has seen (replays and resumes may repeat them),
hands each to a callback that returns a CommandAck, and publishes the ack.
Used by the fleet simulator and by the edge worker.
"""

from __future__ import annotations

import sys
import threading
from typing import Callable

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from schemas.codec import Codec, DecodeError
from schemas.kafka import KafkaSettings, partition_ends


class CommandListener(threading.Thread):
    def __init__(self, settings: KafkaSettings, topic: str, ack_topic: str, nodes: set[str],
                 on_command: Callable[[dict], dict | None], codec: Codec | None = None,
                 schema_name: str = "MorphCommand", from_beginning: bool = False):
        super().__init__(name=f"commands-{topic}", daemon=True)
        self.settings, self.topic, self.ack_topic = settings, topic, ack_topic
        self.nodes, self.on_command, self.schema_name = set(nodes), on_command, schema_name
        self.codec = codec or Codec()
        self.from_beginning = from_beginning
        self.seen: set[str] = set()
        self.received = 0
        self.undecodable = 0
        self._halt = threading.Event()
        self._ready = threading.Event()
        self.producer = Producer(settings.producer(**{"linger.ms": "0"}))

    def run(self) -> None:
        consumer = Consumer(self.settings.consumer("liquid-edge"))
        partitions = consumer.list_topics(self.topic, timeout=10).topics[self.topic].partitions
        # Explicit high watermarks rather than OFFSET_END, which resolves lazily: a
        # command sent right after wait_ready() must not be skipped.
        ends = partition_ends(consumer, self.topic, len(partitions))
        starts = {p: OFFSET_BEGINNING if self.from_beginning else ends[p][1] for p in partitions}
        consumer.assign([TopicPartition(self.topic, p, o) for p, o in starts.items()])
        self._ready.set()
        try:
            while not self._halt.is_set():
                # poll() returns on the first message; consume(n, timeout) would wait out the
                # timeout whenever fewer than n arrive, adding that much to every command.
                first = consumer.poll(0.05)
                if first is None:
                    continue
                for msg in [first] + consumer.consume(100, timeout=0):
                    if msg.error() is None:
                        self._handle(msg.value())
                self.producer.poll(0)
        finally:
            consumer.close()
            self.producer.flush(5)

    def _handle(self, raw: bytes) -> None:
        try:
            command = self.codec.decode(raw, expect=self.schema_name).record
        except DecodeError as err:
            self.undecodable += 1
            print(f"liquid: ignoring an undecodable command: {err}", file=sys.stderr)
            return
        if command["node_id"] not in self.nodes or command["command_id"] in self.seen:
            return
        self.seen.add(command["command_id"])
        self.received += 1
        ack = self.on_command(command)
        if ack is not None:
            self.producer.produce(self.ack_topic, key=ack["node_id"].encode(),
                                  value=self.codec.encode("CommandAck", ack))
            self.producer.poll(0)

    def wait_ready(self, timeout_s: float = 15.0) -> bool:
        return self._ready.wait(timeout_s)

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(timeout=5)
