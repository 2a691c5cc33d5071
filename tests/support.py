"""Test and benchmark support: stand-ins for what is not under test, kept out of production modules.

* `CentroidClassifier` — a real, tiny classifier for runs of the inspection
  workflow without the model zoo;
* `LocalLoop` — what Kafka does between a node's shadow executor and the
  workflow flow, in one process and in order (tests and ``bench/shadow.py``);
* `TopicCollector` — everything a set of topics holds, read from the beginning
  (the outage test and ``bench/outage.py`` count what the cluster finally got);
* `Always` — a recovery policy that always decides the same (the recovery tests);
* `wait_until` — poll a condition until it holds or time runs out.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from edge.artifacts import digest_of, freeze
from edge.faults import Decision, Failure
from edge.inspection import Replica
from edge.shadow import ShadowExecutor
from schemas.codec import Codec, DecodeError


class CentroidClassifier:
    """Nearest class mean on the zoo's train split: a real, tiny classifier for tests without the zoo.

    Frames are reduced to 8x8 block means first (a frame's coarse shading, 64
    features). Logits are ``-||f(x) - mean_c||² / temperature``; at the default
    0.0005 (measured on `inspection_lots`: 13 % of clean lots and 32 % of noisy
    ones go to re-inspection) about one lot in six needs re-inspection. A
    replica shares the means (cheap: nothing to load).
    """

    def __init__(self, temperature: float = 0.0005):
        from morph.zoo.data import N_CLASSES, load_split

        train = load_split("train")
        x = self._features(train.x)
        self.means = np.stack([x[train.y == c].mean(axis=0) for c in range(N_CLASSES)])
        self.temperature = temperature
        self._identity = "centroid/" + digest_of(freeze(self.means.astype(np.float32)))[:16] + f"/t{temperature}"

    @staticmethod
    def _features(frames: np.ndarray) -> np.ndarray:
        x = np.asarray(frames, dtype=np.float64)
        n, h, w = x.shape
        return x.reshape(n, 8, h // 8, 8, w // 8).mean(axis=(2, 4)).reshape(n, -1)

    @property
    def identity(self) -> str:
        return self._identity

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        x = self._features(batch)
        d2 = ((x[:, None, :] - self.means[None]) ** 2).sum(axis=2)
        return (-d2 / self.temperature).astype(np.float32)

    def replica(self) -> Replica:
        return Replica(self.identity, self.__call__)


class LocalLoop:
    """What Kafka does between a node and the workflow flow, in one process and in order.

    Use it as a run's ``on_signal``: each signal goes to ``decide`` (e.g.
    `prediction.speculation.Speculator.learn_one`), each command it returns to
    the executor, and every ack, returned or asynchronous, to ``learn_ack``.
    Calls are serialised, as a keyed Bytewax operator would see them.
    """

    def __init__(self, executor: ShadowExecutor, decide: Callable[[dict], list[dict]],
                 learn_ack: Callable[[dict], None] | None = None, *, keep: bool = True):
        self.executor, self.decide, self.learn_ack, self.keep = executor, decide, learn_ack, keep
        self.commands: list[dict] = []
        self.acks: list[dict] = []
        self._lock = threading.RLock()
        executor.on_ack = self.deliver

    def __call__(self, signal: dict) -> None:
        with self._lock:
            for command in self.decide(signal):
                if self.keep:
                    self.commands.append(command)
                self.deliver(self.executor.handle(command))

    def deliver(self, ack: dict) -> None:
        with self._lock:
            if self.keep:
                self.acks.append(ack)
            if self.learn_ack is not None:
                self.learn_ack(ack)


class TopicCollector(threading.Thread):
    """Reads every decodable record of ``topics`` (2 partitions each) from the beginning until stopped."""

    def __init__(self, settings, topics: tuple[str, ...], group: str = "collector"):
        super().__init__(daemon=True)
        self.consumer = Consumer(settings.consumer(group, **{"log_level": "0"}))
        self.consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t in topics for p in range(2)])
        self.records: list[tuple[str, dict, bytes]] = []   # (schema name, record, raw bytes)
        self.halt, self.codec = threading.Event(), Codec()

    def run(self) -> None:
        while not self.halt.is_set():
            for msg in self.consumer.consume(500, timeout=0.02):
                if msg.error() is None:
                    try:
                        decoded = self.codec.decode(msg.value())
                    except DecodeError:
                        continue
                    self.records.append((decoded.schema_name, decoded.record, msg.value()))
        self.consumer.close()

    def ids(self) -> set[str]:
        """The ids of what the nodes published (commands are the cluster's, not theirs)."""
        return {record_id(r) for s, r, _ in list(self.records) if s != "MorphCommand"}

    def stop(self) -> None:
        self.halt.set()
        self.join(10)


def record_id(record: dict) -> str:
    """A published record's id: telemetry and acks carry ``record_id``, signals ``signal_id``."""
    return record.get("record_id") or record.get("signal_id") or record["command_id"]


class Always:
    """A recovery policy that always decides the same."""

    def __init__(self, decision: Decision):
        self.decision = decision

    def decide(self, failure: Failure) -> Decision:
        return self.decision


def wait_until(condition, timeout_s: float = 30) -> bool:
    """True once ``condition()`` holds, polled every 0.1 s; else its value at the deadline."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()
