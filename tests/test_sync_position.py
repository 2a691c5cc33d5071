"""A node's read position on ``edge.sync`` survives its restart, through the real broker."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Producer

from edge.sync import SyncOutcomeListener, TopicPosition
from schemas import TopicNames
from schemas.codec import Codec

pytestmark = pytest.mark.broker
TOPICS = TopicNames()


def outcome(node_id: str, n: int) -> dict:
    record_id = f"execution:run-{n}@1"
    return {"outcome_id": f"{record_id}:ACCEPTED", "record_id": record_id, "node_id": node_id, "entity": "execution",
            "entity_id": f"run-{n}", "edge_version": 1, "outcome": "ACCEPTED", "strategy": "last_modified",
            "detail": "new", "central_status": None, "central_fields": {}, "central_modified_ms": None,
            "issued_ts_ms": int(time.time() * 1000), "key_id": None, "expires_ts_ms": None, "sequence": None,
            "signature": None}


def answer(kafka, *outcomes: dict) -> None:
    producer, codec = Producer(kafka.producer()), Codec()
    for o in outcomes:
        producer.produce(TOPICS.sync, key=o["node_id"].encode(), value=codec.encode("SyncOutcome", o))
    assert producer.flush(10) == 0


def read(kafka, position: TopicPosition | None, expect: int, settle_s: float = 1.5) -> list[str]:
    """The record ids one listener run hands over: until ``expect`` arrived, then ``settle_s`` more for extras."""
    got: list[str] = []
    listener = SyncOutcomeListener(kafka, TOPICS.sync, {"edge-1"}, lambda o: got.append(o["record_id"]),
                                   position=position)
    listener.start()
    assert listener.wait_ready()
    deadline = time.monotonic() + 20
    while len(got) < expect and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(settle_s)
    listener.stop()
    return got


def test_a_restarted_node_resumes_where_it_had_read_to(kafka, tmp_path):
    path = tmp_path / "outbox-positions.db"
    answer(kafka, *(outcome("edge-1", n) for n in range(3)), outcome("edge-2", 9))
    first = TopicPosition(path, TOPICS.sync)
    assert sorted(read(kafka, first, 3)) == [f"execution:run-{n}@1" for n in range(3)]
    first.close()
    stored = TopicPosition(path, TOPICS.sync).load()
    assert sum(stored.values()) == 4  # every record of both partitions read, edge-2's too

    answer(kafka, outcome("edge-1", 3), outcome("edge-1", 4))
    restarted = TopicPosition(path, TOPICS.sync)
    assert sorted(read(kafka, restarted, 2)) == ["execution:run-3@1", "execution:run-4@1"]  # only the new ones
    restarted.close()
    # Without a stored position (the behaviour before): everything from the beginning.
    assert len(read(kafka, None, 5, settle_s=0.5)) == 5


def test_a_position_the_broker_no_longer_has_is_read_from_the_logs_start(kafka, tmp_path):
    """A broker that lost its log (memory storage restarted) starts its offsets again at 0."""
    position = TopicPosition(tmp_path / "positions.db", TOPICS.sync)
    position.save({0: 1_000, 1: 1_000})
    answer(kafka, *(outcome("edge-1", n) for n in range(3)))
    assert sorted(read(kafka, position, 3)) == [f"execution:run-{n}@1" for n in range(3)]
    assert min(position.load().values()) == 3  # edge-1's partition: its new log read to the end
