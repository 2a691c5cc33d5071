"""Sync of execution records: from a node's store, through Kafka, into the central store.

Node side, `SyncManager`: every ``interval_s`` it takes up to ``batch_size``
pending records from the node's `edge.records.ExecutionStore` (executions
before steps, oldest change first), publishes each as an ``ExecutionRecord``
through the worker's durable outbox and marks it ``queued``; the outbox's
delivery report marks it ``synced``. Nothing is lost to an outage or a restart:
pending rows are taken again, queued ones are in the outbox file.

Central side, `CentralExecutions` (SQLite, the same kind of file as the signal
store): applies each record with the conflict strategy configured for its
entity type. A conflict is an edge change to a record that the central side
has changed since it last took the node's version (an operator marked a run
reviewed, say, while the node, offline, retried it). The strategies are the
seed's:

* ``last_modified`` — the later change wins (node and central clocks compared);
* ``central_wins`` — the central version stays;
* ``edge_wins`` — the node's version replaces it;
* ``manual`` — the central version stays and the node's is kept in
  ``conflicts`` until someone resolves it (`CentralExecutions.resolve`).

A redelivered or older edge version changes nothing. The central side does not
send its versions back to the node (there is no central → edge channel yet).

>>> import tempfile, os
>>> central = CentralExecutions(os.path.join(tempfile.mkdtemp(), "central.db"),
...                             strategies={"execution": "central_wins"})
>>> rec = {"record_id": "execution:r1@1", "entity": "execution", "entity_id": "r1", "execution_id": "r1",
...        "workflow_id": "w", "node_id": "n1", "status": "failed", "modified_ms": 1_000, "edge_version": 1,
...        "fields": {}}
>>> central.apply(rec)
'applied'
>>> central.edit("execution", "r1", "reviewed", now_ms=2_000)   # an operator, centrally
>>> central.apply({**rec, "record_id": "execution:r1@2", "status": "retried", "modified_ms": 3_000,
...                "edge_version": 2})
'conflict: central kept'
>>> central.get("execution", "r1")["status"]
'reviewed'
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

STRATEGIES = ("last_modified", "central_wins", "edge_wins", "manual")

CENTRAL_SCHEMA = """
CREATE TABLE IF NOT EXISTS executions (
    entity TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    node_id TEXT NOT NULL,
    record TEXT NOT NULL,
    status TEXT NOT NULL,
    modified_ms INTEGER NOT NULL,
    edge_version INTEGER NOT NULL,
    central_dirty INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (entity, entity_id)
);
CREATE TABLE IF NOT EXISTS conflicts (
    entity TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    edge_record TEXT NOT NULL,
    strategy TEXT NOT NULL,
    outcome TEXT NOT NULL,
    ts_ms INTEGER NOT NULL
);
"""


def sync_record_id(entity: str, entity_id: str, edge_version: int) -> str:
    return f"{entity}:{entity_id}@{edge_version}"


def parse_sync_record_id(record_id: str) -> tuple[str, str, int]:
    head, version = record_id.rsplit("@", 1)
    entity, entity_id = head.split(":", 1)
    return entity, entity_id, int(version)


class SyncManager:
    """Moves a node's pending execution records into its outbox, batched and in priority order.

    Parameters
    ----------
    store
        The node's `edge.records.ExecutionStore`.
    publish
        ``(ExecutionRecord dict) -> bool``: into the outbox (False when it refused).
    batch_size, interval_s
        Records per batch, and seconds between batches.
    """

    def __init__(self, store, publish, batch_size: int = 200, interval_s: float = 1.0):
        self.store, self.publish = store, publish
        self.batch_size, self.interval_s = batch_size, interval_s
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None

    def sync_once(self) -> int:
        """One batch; returns how many records went to the outbox."""
        batch = self.store.pending(self.batch_size)
        queued = []
        for row in batch:
            record = {**row, "record_id": sync_record_id(row["entity"], row["entity_id"], row["edge_version"])}
            if not self.publish(record):
                break  # the outbox is full of more urgent records: resume from here next time
            queued.append((row["entity"], row["entity_id"], row["edge_version"]))
        if queued:
            self.store.mark(queued, "queued")
            self.store.log("queued", len(queued))
        return len(queued)

    def delivered(self, record_id: str) -> None:
        """The outbox's delivery report for an ExecutionRecord: the broker has it."""
        self.store.mark([parse_sync_record_id(record_id)], "synced")

    def start(self) -> "SyncManager":
        self._thread = threading.Thread(target=self._loop, name="execution-sync", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._halt.wait(self.interval_s):
            while self.sync_once() == self.batch_size and not self._halt.is_set():
                pass  # a backlog: keep going batch after batch

    def stop(self) -> None:
        self._halt.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.sync_once()


class CentralExecutions:
    """The central store of execution records, resolving conflicts per entity type.

    Parameters
    ----------
    path
        SQLite file.
    strategies
        ``{entity type: strategy}``; types not named use ``default``.
    default
        Strategy for the other types (``last_modified``).
    """

    def __init__(self, path, strategies: dict[str, str] | None = None, default: str = "last_modified"):
        self.strategies = dict(strategies or {})
        for strategy in [*self.strategies.values(), default]:
            if strategy not in STRATEGIES:
                raise ValueError(f"unknown conflict strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
        self.default = default
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.executescript(CENTRAL_SCHEMA)

    def get(self, entity: str, entity_id: str) -> dict | None:
        row = self._db.execute("SELECT record, status FROM executions WHERE entity = ? AND entity_id = ?",
                               (entity, entity_id)).fetchone()
        return None if row is None else {**json.loads(row[0]), "status": row[1]}

    def edit(self, entity: str, entity_id: str, status: str, now_ms: int | None = None) -> None:
        """A change made centrally (an operator's): the next edge change to this record is a conflict."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        self._db.execute("UPDATE executions SET status = ?, modified_ms = ?, central_dirty = 1 "
                         "WHERE entity = ? AND entity_id = ?", (status, now_ms, entity, entity_id))

    def apply(self, record: dict) -> str:
        """Apply one edge version; returns what happened (applied, duplicate, conflict: ...)."""
        key = (record["entity"], record["entity_id"])
        row = self._db.execute("SELECT modified_ms, edge_version, central_dirty FROM executions "
                               "WHERE entity = ? AND entity_id = ?", key).fetchone()
        if row is not None and record["edge_version"] <= row[1]:
            return "duplicate"
        if row is None or not row[2]:
            self._store(record)
            return "applied"
        strategy = self.strategies.get(record["entity"], self.default)
        edge_wins = strategy == "edge_wins" or (strategy == "last_modified" and record["modified_ms"] > row[0])
        if edge_wins:
            self._store(record)
            outcome = "edge won"
        else:
            # The central version stays; the edge version is taken as seen (so a redelivery
            # is a duplicate), and kept for a person to decide under "manual".
            self._db.execute("UPDATE executions SET edge_version = ? WHERE entity = ? AND entity_id = ?",
                             (record["edge_version"], *key))
            outcome = "held for review" if strategy == "manual" else "central kept"
        self._db.execute("INSERT INTO conflicts VALUES (?, ?, ?, ?, ?, ?)",
                         (*key, json.dumps(record), strategy, outcome, int(time.time() * 1000)))
        return f"conflict: {outcome}"

    def _store(self, record: dict) -> None:
        self._db.execute(
            "INSERT INTO executions VALUES (?, ?, ?, ?, ?, ?, ?, 0) ON CONFLICT (entity, entity_id) DO UPDATE SET "
            "record = excluded.record, status = excluded.status, modified_ms = excluded.modified_ms, "
            "edge_version = excluded.edge_version, central_dirty = 0",
            (record["entity"], record["entity_id"], record["node_id"], json.dumps(record), record["status"],
             record["modified_ms"], record["edge_version"]))

    def open_conflicts(self) -> list[dict]:
        """Edge versions held under the ``manual`` strategy, oldest first."""
        rows = self._db.execute("SELECT edge_record FROM conflicts WHERE outcome = 'held for review' "
                                "ORDER BY ts_ms").fetchall()
        return [json.loads(r[0]) for r in rows]

    def resolve(self, entity: str, entity_id: str, keep: str) -> None:
        """Settle a held conflict: ``keep='edge'`` takes the node's latest held version, ``'central'`` keeps ours."""
        if keep not in ("edge", "central"):
            raise ValueError("keep is 'edge' or 'central'")
        held = [r for r in self.open_conflicts() if (r["entity"], r["entity_id"]) == (entity, entity_id)]
        if not held:
            raise ValueError(f"no open conflict for {entity} {entity_id}")
        if keep == "edge":
            self._store(held[-1])
        else:
            self._db.execute("UPDATE executions SET central_dirty = 0 WHERE entity = ? AND entity_id = ?",
                             (entity, entity_id))
        self._db.execute("UPDATE conflicts SET outcome = ? WHERE entity = ? AND entity_id = ? "
                         "AND outcome = 'held for review'", (f"resolved: {keep} kept", entity, entity_id))
