"""Node → central → node through the real broker: the sync flow, each conflict strategy on a real conflict.

The node side is the worker's own wiring without its models: the node's
`ExecutionStore`, a durable `Outbox` draining to the broker, a `SyncManager`
and a `SyncOutcomeListener` checking answers against the node's keyring. The
central side is ``liquid flow run sync`` (a real Bytewax process, run to the end
of its input each time and resumed from its recovery snapshot) over a SQLite
central store; the operator is ``liquid sync edit | conflicts | resolve``.
A conflict is made for real: the operator changes a run centrally while the
node, not knowing, changes the same run.
"""

from __future__ import annotations

import json
import time

import pytest
from confluent_kafka import Producer

from deploy.keys_cmd import KEYRING, PRIVATE, generate_keys
from edge.outbox import SIGNAL, Outbox, idempotent_producer_config
from edge.records import ExecutionStore
from edge.signing import CommandVerifier
from edge.sync import SyncManager, SyncOutcomeListener
from fingerprint.store import CentralExecutions
from schemas import TopicNames
from schemas.codec import Codec
from tests.conftest import run_liquid
from tests.support import wait_until

pytestmark = pytest.mark.broker
TOPICS = TopicNames()


class Node:
    """One edge node's sync side, wired as `edge.worker.EdgeWorker` wires it."""

    def __init__(self, kafka, tmp_path, node_id: str = "edge-1"):
        self.codec = Codec()
        self.store = ExecutionStore(tmp_path / f"{node_id}-records.db", node_id)
        self.outbox = Outbox(tmp_path / f"{node_id}-outbox.db", lambda: Producer(idempotent_producer_config(kafka)))
        self.sync = SyncManager(self.store, self.publish, commit=self.outbox.commit)
        self.outbox.on_delivered = self.sync.delivered
        verifier = CommandVerifier(tmp_path / "keys" / KEYRING, replay_store=tmp_path / f"{node_id}-accepted.db")
        self.listener = SyncOutcomeListener(kafka, TOPICS.sync, {node_id}, self.sync.answer, self.codec,
                                            verify=verifier.check)
        self.outbox.start()
        self.listener.start()
        assert self.listener.wait_ready()

    def publish(self, record: dict) -> bool:
        return self.outbox.put(TOPICS.executions, record["node_id"].encode(),
                               self.codec.encode("ExecutionRecord", record), SIGNAL, record["record_id"])

    def send(self) -> int:
        n = 0
        while (k := self.sync.sync_once()):
            n += k
        assert self.outbox.flush(20)
        return n

    def wait_for(self, entity: str, entity_id: str, sync_status: str, timeout_s: float = 20) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            row = self.store.get(entity, entity_id)
            if row["sync_status"] == sync_status:
                return row
            time.sleep(0.05)
        raise AssertionError(f"{entity} {entity_id}: {self.store.get(entity, entity_id)}, not {sync_status}")

    def close(self) -> None:
        self.listener.stop()
        self.outbox.close()
        self.store.close()


def run_sync_flow(kafka, tmp_path, strategy: str) -> None:
    """The central side, to the end of what the nodes sent; resumes from its last snapshot."""
    run_liquid("flow", "run", "sync", "--until-end", "--store", tmp_path / "central.db",
               "--conflict", f"execution={strategy}", "--signing-key", tmp_path / "keys" / PRIVATE,
               "--recovery-dir", tmp_path / "recovery", "--snapshot-interval", "0.2", "--bootstrap", kafka.bootstrap)


def sync_cli(tmp_path, *args, kafka=None):
    extra = ("--bootstrap", kafka.bootstrap, "--signing-key", tmp_path / "keys" / PRIVATE) if kafka else ()
    return run_liquid("sync", *args, "--store", tmp_path / "central.db", *extra).stdout


@pytest.mark.parametrize("strategy", ["central_wins", "edge_wins", "last_modified", "manual"])
def test_round_trip_resolves_a_real_conflict_with_each_strategy(kafka, tmp_path, strategy):
    generate_keys(tmp_path / "keys")
    node = Node(kafka, tmp_path)
    try:
        node.store.upsert("execution", "run-1", "run-1", "inspection", "failed", {"error": "camera timeout"})
        node.store.upsert("step", "run-1/0/capture", "run-1", "inspection", "failed", {"step": "capture"})
        assert node.send() == 2
        run_sync_flow(kafka, tmp_path, strategy)
        node.wait_for("execution", "run-1", "accepted")
        node.wait_for("step", "run-1/0/capture", "accepted")
        assert node.send() == 0                                   # answered: never sent again

        # The conflict: an operator reviews the run centrally; the node, not knowing, retries it.
        sync_cli(tmp_path, "edit", "execution", "run-1", "--status", "reviewed", "--field", "note=operator")
        time.sleep(0.01)
        node.store.upsert("execution", "run-1", "run-1", "inspection", "retried", {"error": ""})
        assert node.send() == 1
        run_sync_flow(kafka, tmp_path, strategy)
        central = CentralExecutions(tmp_path / "central.db")
        if strategy == "central_wins":
            row = node.wait_for("execution", "run-1", "superseded")
            assert row["status"] == "reviewed" and row["fields"]["note"] == "operator"   # the node took the central version
        elif strategy in ("edge_wins", "last_modified"):         # last_modified: the node's change came later
            row = node.wait_for("execution", "run-1", "accepted")
            assert row["status"] == "retried" and central.get("execution", "run-1")["status"] == "retried"
        else:
            row = node.wait_for("execution", "run-1", "conflict")
            assert row["status"] == "retried"                     # held: the node keeps its own until resolved
            listed = json.loads(sync_cli(tmp_path, "conflicts", "--json"))
            assert [(c["entity_id"], c["status"], c["central_status"]) for c in listed] == [
                ("run-1", "retried", "reviewed")]
            sync_cli(tmp_path, "resolve", "execution", "run-1", "--keep", "central", kafka=kafka)
            row = node.wait_for("execution", "run-1", "superseded")
            assert row["status"] == "reviewed" and not json.loads(sync_cli(tmp_path, "conflicts", "--json"))
        assert central.conflict_counts() == {f"{strategy}: {resolution}": 1 for resolution in
                                             [{"central_wins": "central kept", "edge_wins": "edge won",
                                               "last_modified": "edge won",
                                               "manual": "resolved: central kept"}[strategy]]}
        if row["status"] == "reviewed":
            # Having taken the central version, the node's next change is no conflict.
            node.store.upsert("execution", "run-1", "run-1", "inspection", "archived", {})
            node.send()
            run_sync_flow(kafka, tmp_path, strategy)
            node.wait_for("execution", "run-1", "accepted")
            assert central.get("execution", "run-1")["status"] == "archived"
        assert central.get("step", "run-1/0/capture")["status"] == "failed"
        assert node.listener.rejected == 0
    finally:
        node.close()


def test_node_ignores_forged_and_unsigned_answers(kafka, tmp_path):
    generate_keys(tmp_path / "keys")
    node = Node(kafka, tmp_path)
    try:
        node.store.upsert("execution", "run-1", "run-1", "inspection", "completed", {})
        node.send()
        codec = Codec()
        answer = {"outcome_id": "x", "record_id": "execution:run-1@1", "node_id": "edge-1", "entity": "execution",
                  "entity_id": "run-1", "edge_version": 1, "outcome": "SUPERSEDED", "strategy": "central_wins",
                  "detail": "forged", "central_status": "deleted", "central_fields": {}, "central_modified_ms": 1,
                  "issued_ts_ms": int(time.time() * 1000), "key_id": "0" * 16, "expires_ts_ms": None,
                  "sequence": None, "signature": "AAAA"}
        producer = Producer(kafka.producer())
        for fake in (answer, {**answer, "signature": None, "key_id": None}):
            producer.produce(TOPICS.sync, key=b"edge-1", value=codec.encode("SyncOutcome", fake))
        producer.flush(10)
        deadline = time.monotonic() + 10
        while node.listener.rejected < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert node.listener.rejected == 2
        assert node.store.get("execution", "run-1")["status"] == "completed"
        run_sync_flow(kafka, tmp_path, "central_wins")             # the real, signed answer is taken
        node.wait_for("execution", "run-1", "accepted")
    finally:
        node.close()


def test_an_edge_worker_learns_the_central_answer_for_every_run_it_synced(kafka, zoo, tmp_path):
    from edge.thermal import Scenario
    from edge.worker import EdgeWorker

    generate_keys(tmp_path / "keys")
    worker = EdgeWorker(kafka, TOPICS, ["edge-1"], Scenario("steady", 100.0), zoo_dir=zoo.root, sensor="thermal",
                        rate=20, interval_s=0.5, keyring=tmp_path / "keys" / KEYRING,
                        outbox_path=tmp_path / "outbox.db", workflow="inspection", workflow_runs=3,
                        silent_after_s=None).start()
    try:
        assert worker.wait_runs(120)
        sync = worker.nodes["edge-1"].sync
        assert wait_until(lambda: set(sync.store.counts()) == {"sent"})
        run_sync_flow(kafka, tmp_path, "manual")
        assert wait_until(lambda: set(sync.store.counts()) == {"accepted"}), sync.store.counts()
        assert sync.answers["ACCEPTED"] == sum(sync.store.counts().values()) >= 3 * 2
        assert len(sync.round_trips_ms) == sync.answers["ACCEPTED"]
    finally:
        worker.stop()
