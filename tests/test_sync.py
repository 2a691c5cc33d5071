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
from tests.test_postgres_store import postgres_dsn  # noqa: F401  (the PostgreSQL server fixture)

TOPICS = TopicNames()


@pytest.fixture(params=["sqlite", "postgresql"])
def central_target(request, tmp_path):
    """A fresh central store: a SQLite file, or a new database on the test's PostgreSQL server."""
    if request.param == "sqlite":
        return str(tmp_path / "central.db")
    import psycopg

    dsn = request.getfixturevalue("postgres_dsn")
    name = f"central_{abs(hash(request.node.nodeid)) % 10**9}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    return dsn.rsplit("/", 1)[0] + f"/{name}"


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
def test_each_strategy_resolves_a_real_conflict_as_configured(tmp_path, central_target, strategy, expected_status,
                                                             expected_outcome):
    store = ExecutionStore(tmp_path / "node.db", "edge-1")
    central = CentralExecutions(central_target, strategies={"execution": strategy})
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


def test_last_modified_keeps_the_later_central_change(tmp_path, central_target):
    store = ExecutionStore(tmp_path / "node.db", "edge-1")
    central = CentralExecutions(central_target)                              # last_modified by default
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


def test_redelivery_repeats_the_answer_and_an_older_version_gets_none(central_target):
    central = CentralExecutions(central_target, strategies={"execution": "central_wins"})
    v1 = {"record_id": "execution:r@1", "entity": "execution", "entity_id": "r", "execution_id": "r",
          "workflow_id": "w", "node_id": "edge-1", "status": "running", "modified_ms": 1, "edge_version": 1,
          "central_seen_ms": 0, "fields": {}}
    v2 = {**v1, "record_id": "execution:r@2", "status": "failed", "modified_ms": 2, "edge_version": 2}
    first = central.apply_many([v1, v2])
    assert [(r.kind, r.outcome["outcome"]) for r in first] == [("applied", "ACCEPTED"), ("applied", "ACCEPTED")]
    again = central.apply_many([v1, v2])                       # a resumed flow reads them again
    assert [r.kind for r in again] == ["duplicate", "duplicate"]
    assert again[0].outcome is None and again[1].outcome["record_id"] == "execution:r@2"
    central.edit("execution", "r", "reviewed")
    v3 = {**v2, "record_id": "execution:r@3", "status": "retried", "modified_ms": 3, "edge_version": 3}
    assert central.apply(v3) == "conflict: central kept"
    repeated = central.apply_many([v3])[0]                      # the node missed the answer and sent it again
    assert repeated.kind == "duplicate" and repeated.outcome["outcome"] == "SUPERSEDED"
    assert repeated.outcome["central_status"] == "reviewed"
    assert central.conflict_counts() == {"central_wins: central kept": 1}


def test_a_node_that_took_the_central_version_changes_it_without_conflict(tmp_path, central_target):
    store = ExecutionStore(tmp_path / "node.db", "edge-1")
    central = CentralExecutions(central_target, strategies={"execution": "central_wins"})
    manager = SyncManager(store, lambda r: answers.append(central.apply_many([r])[0].outcome) is None)
    answers = []
    store.upsert("execution", "run-1", "run-1", "w", "failed", {})
    manager.sync_once()
    central.edit("execution", "run-1", "reviewed", {"by": "ops"})
    store.upsert("execution", "run-1", "run-1", "w", "retried", {})       # made without seeing the review
    manager.sync_once()
    assert [a["outcome"] for a in answers] == ["ACCEPTED", "SUPERSEDED"]
    assert not manager.answer(answers[0])        # for version 1: the node has moved past it
    assert manager.answer(answers[1])
    assert store.get("execution", "run-1")["status"] == "reviewed"
    store.upsert("execution", "run-1", "run-1", "w", "archived", {})      # made after seeing it
    manager.sync_once()
    assert answers[-1]["outcome"] == "ACCEPTED" and central.get("execution", "run-1")["status"] == "archived"
    assert central.conflict_counts() == {"central_wins: central kept": 1}
    assert manager.answer(answers[-1]) and sorted(manager.answers.items()) == [("ACCEPTED", 1), ("SUPERSEDED", 1)]


def test_unanswered_records_are_sent_again_answered_ones_never(tmp_path):
    store = ExecutionStore(tmp_path / "node.db", "edge-1")
    sent = []
    manager = SyncManager(store, lambda r: sent.append(r["record_id"]) is None)
    store.upsert("execution", "a", "a", "w", "completed", {})
    store.upsert("execution", "b", "b", "w", "completed", {})
    manager.sync_once()
    manager.delivered("execution:a@1")
    manager.delivered("execution:b@1")
    manager.answer({"outcome": "ACCEPTED", "entity": "execution", "entity_id": "a", "edge_version": 1,
                    "record_id": "execution:a@1"})
    manager.delivered("execution:a@1")                     # a late delivery report does not undo the answer
    assert store.counts() == {"accepted": 1, "sent": 1}
    assert store.resend_unanswered(after_s=60) == 0        # not yet
    time.sleep(0.01)
    assert store.resend_unanswered(after_s=0.005) == 1     # b had no answer: it goes out again
    manager.sync_once()
    assert sent == ["execution:a@1", "execution:b@1", "execution:b@1"]


def test_resends_back_off_while_nothing_answers(tmp_path):
    store = ExecutionStore(tmp_path / "node.db", "edge-1")
    manager = SyncManager(store, lambda r: True, resend_after_s=0.001, max_resend_s=0.004)
    store.upsert("execution", "a", "a", "w", "completed", {})
    waits = []
    for _ in range(5):
        manager.sync_once()
        manager.delivered("execution:a@1")
        waits.append(manager.resend_wait_s)
        while not manager.resend_unanswered():
            time.sleep(0.001)
    # The first resend may just be a slow answer; after that the wait doubles, up to the cap.
    assert waits == [0.001, 0.001, 0.002, 0.004, 0.004]
    manager.answer({"outcome": "ACCEPTED", "entity": "execution", "entity_id": "a", "edge_version": 1,
                    "record_id": "execution:a@1"})
    assert manager.resend_wait_s == 0.001 and store.counts() == {"accepted": 1}


def test_a_repeated_answer_changes_nothing_and_is_not_counted_again(tmp_path):
    store = ExecutionStore(tmp_path / "node.db", "edge-1")
    manager = SyncManager(store, lambda r: True)
    store.upsert("execution", "a", "a", "w", "completed", {})
    manager.sync_once()
    answer = {"outcome": "SUPERSEDED", "entity": "execution", "entity_id": "a", "edge_version": 1,
              "record_id": "execution:a@1", "central_status": "reviewed", "central_fields": {},
              "central_modified_ms": 7}
    assert manager.answer(answer) and not manager.answer(answer)
    assert manager.answers == {"SUPERSEDED": 1}


def test_the_sync_flow_without_a_store_is_a_one_line_error():
    from tests.conftest import run_liquid

    proc = run_liquid("flow", "run", "sync", "--bootstrap", "127.0.0.1:9", check=False)
    assert proc.returncode == 2 and "needs --store" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
