"""The node's execution store: its workflow executions and their step records, in SQLite.

The node keeps what it ran, whether or not the cluster is reachable: one row
per execution and one per step, each with an ``edge_version`` that grows with
every change on the node and a ``sync_status``:

``pending`` → ``queued`` (committed to the durable outbox) → ``sent`` (the
broker has it) → what the central store answered (`edge.sync.SyncOutcome`):
``accepted``, ``superseded`` (the central version was kept: the node takes its
status and fields, and remembers the central change as seen, so its next
change is not a conflict) or ``conflict`` (held for an operator). A record
``sent`` and not answered within the resend time goes back to ``pending``: the
central side deduplicates the version and answers it again, so nothing hangs
on a lost answer, and an answered record is never sent again. A ``sync_log``
records every batch. `edge.sync.SyncManager` reads the pending rows from here,
most urgent first, and marks them as they go; a restart resumes: ``pending``
rows go out again, ``queued`` ones are in the durable outbox already.

>>> import tempfile, os
>>> store = ExecutionStore(os.path.join(tempfile.mkdtemp(), "records.db"), node_id="edge-1")
>>> store.upsert("execution", "run-1", "run-1", "inspection", "running", {"started_ms": "0"})
1
>>> store.upsert("execution", "run-1", "run-1", "inspection", "completed", {"latency_ms": "41.0"})
2
>>> [(r["entity_id"], r["status"], r["edge_version"], r["fields"]) for r in store.pending(10)]
[('run-1', 'completed', 2, {'started_ms': '0', 'latency_ms': '41.0'})]
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    entity TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    execution_id TEXT NOT NULL,
    workflow_id TEXT NOT NULL,
    status TEXT NOT NULL,
    fields TEXT NOT NULL,
    modified_ms INTEGER NOT NULL,
    edge_version INTEGER NOT NULL,
    sync_status TEXT NOT NULL,
    PRIMARY KEY (entity, entity_id)
);
CREATE INDEX IF NOT EXISTS records_sync ON records (sync_status, entity, modified_ms);
CREATE TABLE IF NOT EXISTS sync_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts_ms INTEGER NOT NULL,
    event TEXT NOT NULL,
    records INTEGER NOT NULL,
    detail TEXT
);
"""
#: Columns added after the first release (node stores written before get them on open).
LATER_COLUMNS = {"central_seen_ms": "INTEGER NOT NULL DEFAULT 0", "sync_ms": "INTEGER NOT NULL DEFAULT 0"}
#: sync_status a central answer sets, by SyncOutcome.outcome.
ANSWERED = {"ACCEPTED": "accepted", "SUPERSEDED": "superseded", "CONFLICT": "conflict"}
#: Sync order of entity types: executions before their steps, so the central side sees the parent first.
ENTITY_PRIORITY = {"execution": 0, "step": 1}


class ExecutionStore:
    """Executions and step records of one node, with their sync state.

    Parameters
    ----------
    path
        The SQLite file (WAL journal).
    node_id
        The node the records belong to.
    """

    def __init__(self, path, node_id: str):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.node_id = node_id
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # As the outbox: durable against a crash of the worker, no fsync per commit (a delivery report or
        # an answer lost to a power cut only makes the record go out again, and the central side
        # deduplicates it); with the default (FULL) each of them cost an fsync, in the drain thread.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        present = {row[1] for row in self._db.execute("PRAGMA table_info(records)")}
        for column, sql_type in LATER_COLUMNS.items():
            if column not in present:
                self._db.execute(f"ALTER TABLE records ADD COLUMN {column} {sql_type}")
        self._lock = threading.Lock()

    def upsert(self, entity: str, entity_id: str, execution_id: str, workflow_id: str, status: str,
               fields: dict[str, str]) -> int:
        """Record a change on the node; returns the record's new edge version (it is pending sync again)."""
        if entity not in ENTITY_PRIORITY:
            raise ValueError(f"unknown entity {entity!r}; known: {', '.join(ENTITY_PRIORITY)}")
        now = int(time.time() * 1000)
        with self._lock:
            row = self._db.execute("SELECT fields, edge_version FROM records WHERE entity = ? AND entity_id = ?",
                                   (entity, entity_id)).fetchone()
            merged = {**(json.loads(row[0]) if row else {}), **{k: str(v) for k, v in fields.items()}}
            version = (row[1] if row else 0) + 1
            self._db.execute(
                "INSERT INTO records (entity, entity_id, execution_id, workflow_id, status, fields, modified_ms, "
                "edge_version, sync_status, sync_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?) "
                "ON CONFLICT (entity, entity_id) DO UPDATE SET status = excluded.status, fields = excluded.fields, "
                "modified_ms = excluded.modified_ms, edge_version = excluded.edge_version, sync_status = 'pending', "
                "sync_ms = excluded.sync_ms",
                (entity, entity_id, execution_id, workflow_id, status, json.dumps(merged), now, version, now))
        return version

    def record_run(self, workflow_id: str, result) -> None:
        """An `edge.runtime.RunResult`: the execution and each of its steps."""
        status = "failed" if result.error else "completed"
        self.upsert("execution", result.run_id, result.run_id, workflow_id, status,
                    {"latency_ms": f"{result.latency_ms:.3f}", "steps": str(len(result.records)),
                     "error": result.error or ""})
        for i, step in enumerate(result.records):
            self.upsert("step", f"{result.run_id}/{i}/{step.step}", result.run_id, workflow_id, step.outcome,
                        {"step": step.step, "start_ms": f"{step.start_ms:.3f}", "finish_ms": f"{step.finish_ms:.3f}",
                         "busy_ms": f"{step.busy_ms:.3f}", "committed": str(step.committed)})

    def pending(self, limit: int, statuses: tuple[str, ...] = ("pending",)) -> list[dict]:
        """Up to ``limit`` records to sync: executions first, then steps; oldest change first."""
        marks = ",".join("?" for _ in statuses)
        with self._lock:
            rows = self._db.execute(
                f"SELECT entity, entity_id, execution_id, workflow_id, status, fields, modified_ms, edge_version, "
                f"central_seen_ms "
                f"FROM records WHERE sync_status IN ({marks}) "
                f"ORDER BY CASE entity WHEN 'execution' THEN 0 ELSE 1 END, modified_ms LIMIT ?",
                (*statuses, limit)).fetchall()
        return [{"entity": e, "entity_id": i, "execution_id": x, "workflow_id": w, "node_id": self.node_id,
                 "status": s, "fields": json.loads(f), "modified_ms": m, "edge_version": v, "central_seen_ms": c}
                for e, i, x, w, s, f, m, v, c in rows]

    def mark(self, keys: list[tuple[str, str, int]], sync_status: str, only_from: str | None = None) -> int:
        """Set ``sync_status`` of ``(entity, entity_id, edge_version)`` rows still at that version (and,
        with ``only_from``, still in that status: a late delivery report does not undo an answer)."""
        now = int(time.time() * 1000)
        where = "" if only_from is None else " AND sync_status = ?"
        with self._lock:
            self._db.execute("BEGIN")
            n = sum(self._db.execute("UPDATE records SET sync_status = ?, sync_ms = ? WHERE entity = ? "
                                     f"AND entity_id = ? AND edge_version = ?{where}",
                                     (sync_status, now, *key, *([only_from] if only_from else []))).rowcount
                    for key in keys)
            self._db.execute("COMMIT")
        return n

    def answer(self, outcome: dict) -> bool:
        """The central store's answer (a SyncOutcome) for one version; False when the row has moved on
        or already has this answer (answers are repeated for redelivered records).

        SUPERSEDED and CONFLICT carry the central version: on SUPERSEDED the node
        takes it (status, fields) and its time as the central change it has seen.
        """
        sync_status = ANSWERED[outcome["outcome"]]
        key = (outcome["entity"], outcome["entity_id"], outcome["edge_version"])
        now = int(time.time() * 1000)
        with self._lock:
            if outcome["outcome"] != "SUPERSEDED":
                return self._db.execute("UPDATE records SET sync_status = ?, sync_ms = ? WHERE entity = ? "
                                        "AND entity_id = ? AND edge_version = ? AND sync_status != ?",
                                        (sync_status, now, *key, sync_status)).rowcount > 0
            row = self._db.execute("SELECT fields FROM records WHERE entity = ? AND entity_id = ? AND edge_version = ? "
                                   "AND sync_status != ?", (*key, sync_status)).fetchone()
            if row is None:
                return False
            fields = {**json.loads(row[0]), **(outcome.get("central_fields") or {})}
            self._db.execute("UPDATE records SET sync_status = ?, sync_ms = ?, status = ?, fields = ?, "
                             "central_seen_ms = ? WHERE entity = ? AND entity_id = ? AND edge_version = ?",
                             (sync_status, now, outcome["central_status"], json.dumps(fields),
                              int(outcome.get("central_modified_ms") or 0), *key))
            return True

    def get(self, entity: str, entity_id: str) -> dict | None:
        """One record as the node has it, with its sync status."""
        with self._lock:
            row = self._db.execute("SELECT status, fields, edge_version, sync_status, central_seen_ms FROM records "
                                   "WHERE entity = ? AND entity_id = ?", (entity, entity_id)).fetchone()
        return None if row is None else {"status": row[0], "fields": json.loads(row[1]), "edge_version": row[2],
                                         "sync_status": row[3], "central_seen_ms": row[4]}

    def resend_unanswered(self, after_s: float) -> int:
        """Records ``sent`` more than ``after_s`` ago with no central answer go back to ``pending``."""
        cutoff = int((time.time() - after_s) * 1000)
        with self._lock:
            return self._db.execute("UPDATE records SET sync_status = 'pending' WHERE sync_status = 'sent' "
                                    "AND sync_ms < ?", (cutoff,)).rowcount

    def log(self, event: str, records: int, detail: str = "") -> None:
        with self._lock:
            self._db.execute("INSERT INTO sync_log (ts_ms, event, records, detail) VALUES (?, ?, ?, ?)",
                             (int(time.time() * 1000), event, records, detail))

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._db.execute("SELECT sync_status, COUNT(*) FROM records GROUP BY sync_status"))

    def close(self) -> None:
        with self._lock:
            self._db.close()
