"""Sync of execution records: conflict strategies on real conflicts, and node to central through the broker."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from edge.outbox import SIGNAL, Outbox, idempotent_producer_config
from edge.records import ExecutionStore
from edge.sync import SyncManager
from fingerprint.store import CentralExecutions
from schemas import TopicNames
from schemas.codec import Codec

TOPICS = TopicNames()


def synced_into(central: CentralExecutions, store: ExecutionStore) -> list[str]:
    """Move every pending record of ``store`` into ``central`` directly (no broker); the outcomes."""
    outcomes = []
    manager = SyncManager(store, lambda r: outcomes.append(central.apply(r)) is None, batch_size=10)
    while manager.sync_once():
        pass
    return outcomes


@pytest.mark.parametrize("strategy, expected_status, expected_outcome", [
    ("central_wins", "reviewed", "conflict: central kept"),
    ("edge_wins", "retried", "conflict: edge won"),
    ("last_modified", "retried", "conflict: edge won"),      # the node's change came after the operator's
    ("manual", "reviewed", "conflict: held for review"),
])
def test_each_strategy_resolves_a_real_conflict_as_configured(tmp_path, strategy, expected_status, expected_outcome):
    store = ExecutionStore(tmp_path / "node.db", "edge-1")
    central = CentralExecutions(tmp_path / "central.db", strategies={"execution": strategy})
    store.upsert("execution", "run-1", "run-1", "inspection", "failed", {"error": "camera timeout"})
    store.upsert("step", "run-1/0/capture", "run-1", "inspection", "failed", {"step": "capture"})
    assert synced_into(central, store) == ["applied", "applied"]
    central.edit("execution", "run-1", "reviewed")               # an operator, while the node is offline
    time.sleep(0.002)
    store.upsert("execution", "run-1", "run-1", "inspection", "retried", {"error": ""})   # the node, offline
    assert synced_into(central, store) == [expected_outcome]
    assert central.get("execution", "run-1")["status"] == expected_status
    # Steps are another entity type, under the default strategy, and had no conflict.
    assert central.get("step", "run-1/0/capture")["status"] == "failed"
    if strategy == "manual":
        held = central.open_conflicts()
        assert [r["status"] for r in held] == ["retried"]
        central.resolve("execution", "run-1", keep="edge")
        assert central.get("execution", "run-1")["status"] == "retried" and not central.open_conflicts()


def test_last_modified_keeps_the_later_central_change(tmp_path):
    store = ExecutionStore(tmp_path / "node.db", "edge-1")
    central = CentralExecutions(tmp_path / "central.db")                     # last_modified by default
    store.upsert("execution", "run-1", "run-1", "w", "failed", {})
    synced_into(central, store)
    store.upsert("execution", "run-1", "run-1", "w", "retried", {})         # the node's change first...
    central.edit("execution", "run-1", "cancelled", now_ms=int(time.time() * 1000) + 60_000)  # ...the operator's later
    assert synced_into(central, store) == ["conflict: central kept"]
    assert central.get("execution", "run-1")["status"] == "cancelled"


def test_unknown_strategy_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown conflict strategy"):
        CentralExecutions(tmp_path / "c.db", strategies={"execution": "newest"})


@pytest.mark.broker
def test_sync_through_the_broker_is_batched_prioritised_resumable_and_idempotent(kafka, tmp_path):
    store = ExecutionStore(tmp_path / "node.db", "edge-1")
    for i in range(30):
        store.upsert("step", f"run-{i}/0/a", f"run-{i}", "w", "completed", {})
        store.upsert("execution", f"run-{i}", f"run-{i}", "w", "completed", {"latency_ms": str(i)})
    codec = Codec()
    box = Outbox(tmp_path / "outbox.db", lambda: Producer(idempotent_producer_config(kafka)))
    manager = SyncManager(store, lambda r: box.put(TOPICS.executions, b"edge-1", codec.encode("ExecutionRecord", r),
                                                   SIGNAL, r["record_id"]), batch_size=25)
    box.on_delivered = manager.delivered
    assert manager.sync_once() == 25                  # one batch, not drained yet: a node cut off here...
    box.close()
    assert store.counts() == {"queued": 25, "pending": 35}
    box = Outbox(tmp_path / "outbox.db", lambda: Producer(idempotent_producer_config(kafka)))   # ...restarts
    box.on_delivered = manager.delivered
    manager.publish = lambda r: box.put(TOPICS.executions, b"edge-1", codec.encode("ExecutionRecord", r), SIGNAL,
                                        r["record_id"])
    box.start()
    while manager.sync_once():
        pass
    assert box.flush(20)
    box.close()
    assert store.counts() == {"sent": 60}
    consumer = Consumer(kafka.consumer("sync-test"))
    consumer.assign([TopicPartition(TOPICS.executions, p, OFFSET_BEGINNING) for p in range(2)])
    records, deadline = [], time.monotonic() + 20
    while len(records) < 60 and time.monotonic() < deadline:
        records += [codec.decode(m.value()).record for m in consumer.consume(100, timeout=0.3) if m.error() is None]
    consumer.close()
    assert [r["entity"] for r in records[:30]] == ["execution"] * 30    # executions before their steps
    central = CentralExecutions(tmp_path / "central.db")
    assert {central.apply(r) for r in records} == {"applied"}
    assert {central.apply(r) for r in records} == {"duplicate"}          # a redelivery changes nothing
    assert central.get("execution", "run-7")["fields"]["latency_ms"] == "7"
