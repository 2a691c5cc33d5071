"""The signal history: WorkflowSignals kept in SQL, queryable by workflow and time range.

`SignalStore` runs on SQLite by default (a file path, or ``":memory:"``) and on
PostgreSQL when given a DSN (``postgresql://...`` or ``"host=... dbname=..."``),
through the same DB-API code: only the parameter style, the auto-increment
column and the driver differ. psycopg is imported only for a DSN, and its
absence is a clear error rather than an import failure at start-up.

Inserts are buffered and written with ``executemany`` every ``batch_size`` rows
(SQLite runs in WAL mode, so readers are not blocked by the writer); a repeated
``signal_id`` is ignored by the database (``ON CONFLICT DO NOTHING``), so
at-least-once delivery does not duplicate history.

>>> from fingerprint.traces import run_signals
>>> with SignalStore(":memory:", batch_size=2) as store:
...     store.add_many(run_signals("etl", "r1", [("extract", 0, 10), ("load", 10, 25)], t0_ms=1000))
...     store.add_many(run_signals("etl", "r1", [("extract", 0, 10)], t0_ms=1000))  # redelivered
...     [(s["task"], s["state"]) for s in store.query("etl", start_ms=1010, end_ms=1025)]
...     store.count("etl"), store.workflows()
[('extract', 0), ('load', 1)]
(4, ['etl'])
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from fingerprint.signals import signal_problem

#: Columns added after the first release, with their SQL types: a store written before gets them on open.
LATER_COLUMNS = {"inputs": "TEXT", "outputs": "TEXT", "attributes": "TEXT", "error_class": "TEXT",
                 "attempt": "INTEGER", "recovery": "TEXT", "policy_version": "BIGINT"}
#: Columns holding JSON text (lists and maps of the record).
JSON_COLUMNS = ("tsa", "resources", "inputs", "outputs", "attributes")
COLUMNS = ("signal_id", "workflow_id", "run_id", "task", "state", "outcome", "ts_ms", "tsa",
           "tsa_resolution_ms", "intensity", "node_id", "resources", "data_size_bytes", "run_ended",
           *LATER_COLUMNS)

_TABLE = """CREATE TABLE IF NOT EXISTS workflow_signal (
    seq {seq},
    signal_id TEXT NOT NULL UNIQUE,
    workflow_id TEXT NOT NULL,
    run_id TEXT NOT NULL,
    task TEXT NOT NULL,
    state SMALLINT NOT NULL,
    outcome TEXT,
    ts_ms BIGINT NOT NULL,
    tsa TEXT NOT NULL,
    tsa_resolution_ms INTEGER NOT NULL,
    intensity DOUBLE PRECISION NOT NULL,
    node_id TEXT NOT NULL,
    resources TEXT,
    data_size_bytes BIGINT,
    run_ended BOOLEAN NOT NULL
)"""  # the LATER_COLUMNS are added by `SignalStore._add_later_columns`
_INDEX = "CREATE INDEX IF NOT EXISTS workflow_signal_by_time ON workflow_signal (workflow_id, ts_ms)"
_INSERT = (f"INSERT INTO workflow_signal ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))}) "
           "ON CONFLICT (signal_id) DO NOTHING")


def _json_or_none(value, kind: type) -> str | None:
    return json.dumps(value) if isinstance(value, kind) else None


def is_dsn(target: str) -> bool:
    """Whether ``target`` names a PostgreSQL database rather than a SQLite file."""
    return target.startswith(("postgresql://", "postgres://")) or ("=" in target and "dbname" in target)


def open_database(target: str, explicit_transactions: bool = False):
    """``(connection, parameter mark, auto-increment column type)`` for a SQLite path or a PostgreSQL DSN.

    With ``explicit_transactions`` a SQLite connection starts no transaction by
    itself (the caller sends ``BEGIN IMMEDIATE``); PostgreSQL's always opens one
    on the first statement, ended by ``commit()``.
    """
    if is_dsn(target):
        try:
            import psycopg
        except ModuleNotFoundError:
            raise RuntimeError("a PostgreSQL DSN needs psycopg: pip install 'liquid-workflow[postgres]'") from None
        return psycopg.connect(target), "%s", "BIGSERIAL PRIMARY KEY"
    if target != ":memory:":
        Path(target).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(target, isolation_level=None) if explicit_transactions else sqlite3.connect(target)
    if target != ":memory:":
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # WAL keeps this durable across app crashes
    return conn, "?", "INTEGER PRIMARY KEY AUTOINCREMENT"


class SignalStore:
    """Append-only store of WorkflowSignals on SQLite or PostgreSQL."""

    def __init__(self, target: str = ":memory:", batch_size: int = 100):
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.target = target
        self.batch_size = batch_size
        self.rejected = 0  # malformed signals not stored
        self._pending: list[tuple] = []
        self._conn, self._param, seq = open_database(target)
        cur = self._conn.cursor()
        cur.execute(_TABLE.format(seq=seq))
        cur.execute(_INDEX)
        self._conn.commit()
        self._add_later_columns()

    def _add_later_columns(self) -> None:
        """Bring a table created by an earlier release up to `COLUMNS` (the same SQL on SQLite and PostgreSQL)."""
        cur = self._conn.cursor()
        cur.execute("SELECT * FROM workflow_signal LIMIT 0")
        present = {d[0] for d in cur.description}
        for column, sql_type in LATER_COLUMNS.items():
            if column not in present:
                cur.execute(f"ALTER TABLE workflow_signal ADD COLUMN {column} {sql_type}")
        self._conn.commit()

    def _sql(self, sql: str) -> str:
        return sql if self._param == "?" else sql.replace("?", self._param)

    # -- writing ----------------------------------------------------------------------------

    def add(self, signal: dict) -> None:
        """Buffer one signal; written with the next full batch (or `flush`)."""
        if signal_problem(signal) is not None:
            self.rejected += 1
            return
        self._pending.append((
            signal["signal_id"], signal["workflow_id"], signal["run_id"], signal["task"], signal["state"],
            signal.get("outcome"), signal["ts_ms"], json.dumps(list(signal.get("tsa") or [])),
            int(signal.get("tsa_resolution_ms", 1) or 1), float(signal.get("intensity", 0.0) or 0.0),
            str(signal.get("node_id") or ""), _json_or_none(signal.get("resources"), dict),
            signal.get("data_size_bytes") if type(signal.get("data_size_bytes")) is int else None,
            bool(signal.get("run_ended", False)),
            _json_or_none(signal.get("inputs"), list), _json_or_none(signal.get("outputs"), list),
            _json_or_none(signal.get("attributes"), dict), signal.get("error_class"), signal.get("attempt"),
            signal.get("recovery"), signal.get("policy_version")))
        if len(self._pending) >= self.batch_size:
            self.flush()

    def add_many(self, signals: Iterable[dict]) -> None:
        for s in signals:
            self.add(s)
        self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        cur = self._conn.cursor()
        cur.executemany(self._sql(_INSERT), self._pending)
        self._conn.commit()
        self._pending.clear()

    # -- reading ----------------------------------------------------------------------------

    def query(self, workflow_id: str, start_ms: int | None = None, end_ms: int | None = None,
              run_id: str | None = None) -> Iterator[dict]:
        """Signals of ``workflow_id`` with ``start_ms <= ts_ms < end_ms``, in time (then arrival) order."""
        self.flush()
        sql = f"SELECT {', '.join(COLUMNS)} FROM workflow_signal WHERE workflow_id = ?"
        params: list = [workflow_id]
        if start_ms is not None:
            sql += " AND ts_ms >= ?"
            params.append(start_ms)
        if end_ms is not None:
            sql += " AND ts_ms < ?"
            params.append(end_ms)
        if run_id is not None:
            sql += " AND run_id = ?"
            params.append(run_id)
        cur = self._conn.cursor()
        cur.execute(self._sql(sql + " ORDER BY ts_ms, seq"), params)
        for row in cur:
            d = dict(zip(COLUMNS, row))
            for column in JSON_COLUMNS:
                d[column] = json.loads(d[column]) if d[column] is not None else None
            d["run_ended"] = bool(d["run_ended"])
            d["state"] = int(d["state"])
            yield d

    def workflows(self) -> list[str]:
        self.flush()
        cur = self._conn.cursor()
        cur.execute("SELECT DISTINCT workflow_id FROM workflow_signal ORDER BY workflow_id")
        return [r[0] for r in cur.fetchall()]

    def count(self, workflow_id: str | None = None) -> int:
        self.flush()
        cur = self._conn.cursor()
        if workflow_id is None:
            cur.execute("SELECT COUNT(*) FROM workflow_signal")
        else:
            cur.execute(self._sql("SELECT COUNT(*) FROM workflow_signal WHERE workflow_id = ?"), [workflow_id])
        return int(cur.fetchone()[0])

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._conn.close()

    def __enter__(self) -> SignalStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- the central store of execution records -------------------------------------------------

#: The conflict strategies of the seed's sync manager.
STRATEGIES = ("last_modified", "central_wins", "edge_wins", "manual")
#: What the central side tells the node about each synced version (`SyncOutcome.outcome`).
ACCEPTED, SUPERSEDED, CONFLICT = "ACCEPTED", "SUPERSEDED", "CONFLICT"

_SYNC_TABLES = ("""CREATE TABLE IF NOT EXISTS sync_execution (
    entity TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    node_id TEXT NOT NULL,
    record TEXT NOT NULL,
    status TEXT NOT NULL,
    modified_ms BIGINT NOT NULL,
    edge_version INTEGER NOT NULL,
    central_dirty SMALLINT NOT NULL,
    central_edit_ms BIGINT NOT NULL,
    outcome TEXT NOT NULL,
    PRIMARY KEY (entity, entity_id)
)""", """CREATE TABLE IF NOT EXISTS sync_conflict (
    entity TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    node_id TEXT NOT NULL,
    edge_version INTEGER NOT NULL,
    edge_record TEXT NOT NULL,
    strategy TEXT NOT NULL,
    resolution TEXT NOT NULL,
    ts_ms BIGINT NOT NULL
)""")
_ROW = "record, status, modified_ms, edge_version, central_dirty, central_edit_ms, outcome, node_id"
_UPSERT = ("INSERT INTO sync_execution VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (entity, entity_id) DO UPDATE "
           "SET node_id = excluded.node_id, record = excluded.record, status = excluded.status, "
           "modified_ms = excluded.modified_ms, edge_version = excluded.edge_version, "
           "central_dirty = excluded.central_dirty, central_edit_ms = excluded.central_edit_ms, "
           "outcome = excluded.outcome")
HELD = "held for review"


class CentralExecutions:
    """The central store of the nodes' execution and step records, resolving conflicts per entity type.

    It lives beside the signal history (the same SQLite file or PostgreSQL
    database, tables ``sync_execution`` and ``sync_conflict``). A **conflict**
    is a node's change to a record that was changed centrally (`edit`: an
    operator marked a run reviewed, say) after the last central version the node
    had seen (the record's ``central_seen_ms``): the node changed it without
    knowing. The strategies are the seed's:

    * ``last_modified`` — the later change wins (the node's ``modified_ms``
      against the central change's time; a tie keeps the central version);
    * ``central_wins`` — the central version stays, and goes back to the node;
    * ``edge_wins`` — the node's version replaces it;
    * ``manual`` — the central version stays and the node's is held in
      ``sync_conflict`` until an operator settles it (`resolve`; ``liquid sync
      conflicts`` lists them).

    `apply_many` applies a batch in one transaction and returns, for each
    record, what happened and the `SyncOutcome` to send the node. Idempotent: a
    redelivered version changes nothing and gets the outcome it got the first
    time again (the node may have missed it); an older version gets none.

    Parameters
    ----------
    target
        A SQLite file or a PostgreSQL DSN (`is_dsn`).
    strategies
        ``{entity type: strategy}``; types not named use ``default``.
    default
        Strategy of the other types (``last_modified``).

    Examples
    --------
    >>> central = CentralExecutions(":memory:", strategies={"execution": "central_wins"})
    >>> rec = {"record_id": "execution:r1@1", "entity": "execution", "entity_id": "r1", "execution_id": "r1",
    ...        "workflow_id": "w", "node_id": "n1", "status": "failed", "modified_ms": 1_000, "edge_version": 1,
    ...        "central_seen_ms": 0, "fields": {}}
    >>> central.apply(rec)
    'applied'
    >>> central.edit("execution", "r1", "reviewed", now_ms=2_000)   # an operator, centrally
    >>> [(r.kind, r.outcome["outcome"], r.outcome["central_status"])
    ...  for r in central.apply_many([{**rec, "record_id": "execution:r1@2", "status": "retried",
    ...                                "modified_ms": 3_000, "edge_version": 2}])]
    [('conflict: central kept', 'SUPERSEDED', 'reviewed')]
    >>> central.apply({**rec, "record_id": "execution:r1@2", "edge_version": 2})   # redelivered
    'duplicate'
    """

    def __init__(self, target, strategies: dict[str, str] | None = None, default: str = "last_modified"):
        self.strategies = dict(strategies or {})
        for strategy in [*self.strategies.values(), default]:
            if strategy not in STRATEGIES:
                raise ValueError(f"unknown conflict strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
        self.default = default
        self.target = str(target)
        self._conn, self._param, _ = open_database(self.target, explicit_transactions=True)
        self._postgres = self._param != "?"
        self._begin()
        for table in _SYNC_TABLES:
            self._exec(table)
        self._conn.commit()

    # -- plumbing: one SQL text for both databases ----------------------------------------------
    def _exec(self, sql: str, params=()):
        cur = self._conn.cursor()
        cur.execute(sql if not self._postgres else sql.replace("?", "%s"), params)
        return cur

    def _begin(self) -> None:
        # SQLite: take the write lock before reading, so an operator's edit cannot slip in between
        # the read and the write of a batch; PostgreSQL: rows are locked with FOR UPDATE instead.
        if not self._postgres:
            self._exec("BEGIN IMMEDIATE")

    def _row(self, entity: str, entity_id: str) -> tuple | None:
        lock = " FOR UPDATE" if self._postgres else ""
        return self._exec(f"SELECT {_ROW} FROM sync_execution WHERE entity = ? AND entity_id = ?{lock}",
                          (entity, entity_id)).fetchone()

    # -- the nodes' records ----------------------------------------------------------------------
    def strategy_of(self, entity: str) -> str:
        return self.strategies.get(entity, self.default)

    def apply(self, record: dict) -> str:
        """Apply one version; what happened (applied, duplicate, conflict: ...)."""
        return self.apply_many([record])[0].kind

    def apply_many(self, records: list[dict]) -> list[SyncResult]:
        """Apply a batch of edge versions in one transaction, in order; one `SyncResult` each."""
        self._begin()
        try:
            results = [self._apply_one(r) for r in records]
            self._conn.commit()
        except BaseException:
            self._conn.rollback()
            raise
        return results

    def _apply_one(self, record: dict) -> SyncResult:
        row = self._row(record["entity"], record["entity_id"])
        now_ms = int(time.time() * 1000)
        if row is not None and record["edge_version"] <= row[3]:
            # Seen before: the same version gets its outcome again, an older one none.
            again = _outcome(record, row, row[6], self.strategy_of(record["entity"]), now_ms) \
                if record["edge_version"] == row[3] else None
            return SyncResult("duplicate", again)
        if row is None or not row[4] or int(record.get("central_seen_ms") or 0) >= row[5]:
            self._store(record, dirty=False, edit_ms=row[5] if row else 0, outcome=ACCEPTED)
            return SyncResult("applied", _outcome(record, None, ACCEPTED, self.strategy_of(record["entity"]), now_ms))
        strategy = self.strategy_of(record["entity"])
        if strategy == "edge_wins" or (strategy == "last_modified" and record["modified_ms"] > row[5]):
            self._store(record, dirty=False, edit_ms=row[5], outcome=ACCEPTED)
            resolution, outcome = "edge won", ACCEPTED
        else:
            # The central version stays; the edge version is taken as seen, so its redelivery is a duplicate.
            outcome = CONFLICT if strategy == "manual" else SUPERSEDED
            resolution = HELD if strategy == "manual" else "central kept"
            self._exec("UPDATE sync_execution SET edge_version = ?, outcome = ? WHERE entity = ? AND entity_id = ?",
                       (record["edge_version"], outcome, record["entity"], record["entity_id"]))
        self._exec("INSERT INTO sync_conflict VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                   (record["entity"], record["entity_id"], record["node_id"], record["edge_version"],
                    json.dumps(record), strategy, resolution, now_ms))
        central = None if outcome == ACCEPTED else self._row(record["entity"], record["entity_id"])
        return SyncResult(f"conflict: {resolution}", _outcome(record, central, outcome, strategy, now_ms))

    def _store(self, record: dict, dirty: bool, edit_ms: int, outcome: str) -> None:
        self._exec(_UPSERT, (record["entity"], record["entity_id"], record["node_id"], json.dumps(record),
                             record["status"], record["modified_ms"], record["edge_version"], int(dirty), edit_ms,
                             outcome))

    # -- central changes and the operator's side -------------------------------------------------
    def get(self, entity: str, entity_id: str) -> dict | None:
        row = self._exec(f"SELECT {_ROW} FROM sync_execution WHERE entity = ? AND entity_id = ?",
                         (entity, entity_id)).fetchone()
        self._conn.commit()
        return None if row is None else {**json.loads(row[0]), "status": row[1], "sync_outcome": row[6]}

    def edit(self, entity: str, entity_id: str, status: str, fields: dict | None = None,
             now_ms: int | None = None) -> None:
        """A change made centrally (an operator's): a node's change made without seeing it is a conflict."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        self._begin()
        row = self._row(entity, entity_id)
        if row is None:
            self._conn.rollback()
            raise ValueError(f"no {entity} {entity_id} in the central store")
        record = json.loads(row[0])
        record.update(status=status, fields={**record.get("fields", {}), **{k: str(v) for k, v in (fields or {}).items()}})
        self._exec("UPDATE sync_execution SET record = ?, status = ?, modified_ms = ?, central_dirty = 1, "
                   "central_edit_ms = ? WHERE entity = ? AND entity_id = ?",
                   (json.dumps(record), status, now_ms, now_ms, entity, entity_id))
        self._conn.commit()

    def open_conflicts(self) -> list[dict]:
        """The node versions held under ``manual``, oldest first, with the central status beside each."""
        rows = self._exec("SELECT c.edge_record, c.strategy, c.ts_ms, e.status FROM sync_conflict c "
                          "JOIN sync_execution e ON e.entity = c.entity AND e.entity_id = c.entity_id "
                          "WHERE c.resolution = ? ORDER BY c.ts_ms, c.edge_version", (HELD,)).fetchall()
        self._conn.commit()
        return [{**json.loads(r[0]), "strategy": r[1], "held_ms": r[2], "central_status": r[3]} for r in rows]

    def conflict_counts(self) -> dict[str, int]:
        """Conflicts met so far, by ``strategy: resolution``."""
        rows = self._exec("SELECT strategy, resolution, COUNT(*) FROM sync_conflict GROUP BY strategy, resolution")
        counts = {f"{s}: {r}": int(n) for s, r, n in rows.fetchall()}
        self._conn.commit()
        return counts

    def resolve(self, entity: str, entity_id: str, keep: str) -> dict:
        """Settle a held conflict: ``keep='edge'`` takes the node's latest held version, ``'central'`` keeps
        ours. Returns the `SyncOutcome` for the node (ACCEPTED, or SUPERSEDED with the central values)."""
        if keep not in ("edge", "central"):
            raise ValueError("keep is 'edge' or 'central'")
        self._begin()
        held = self._exec("SELECT edge_record FROM sync_conflict WHERE entity = ? AND entity_id = ? AND resolution = ? "
                          "ORDER BY edge_version", (entity, entity_id, HELD)).fetchall()
        if not held:
            self._conn.rollback()
            raise ValueError(f"no open conflict for {entity} {entity_id}")
        latest = json.loads(held[-1][0])
        row = self._row(entity, entity_id)
        if keep == "edge":
            self._store(latest, dirty=False, edit_ms=row[5], outcome=ACCEPTED)
        else:
            self._exec("UPDATE sync_execution SET outcome = ? WHERE entity = ? AND entity_id = ?",
                       (SUPERSEDED, entity, entity_id))
        self._exec("UPDATE sync_conflict SET resolution = ? WHERE entity = ? AND entity_id = ? AND resolution = ?",
                   (f"resolved: {keep} kept", entity, entity_id, HELD))
        row = self._row(entity, entity_id)
        self._conn.commit()
        outcome = ACCEPTED if keep == "edge" else SUPERSEDED
        return _outcome(latest, None if keep == "edge" else row, outcome, "manual", int(time.time() * 1000),
                        detail=f"resolved by an operator: {keep} kept")

    def close(self) -> None:
        self._conn.close()


@dataclass(frozen=True)
class SyncResult:
    """What applying one record did (``kind``), and the `SyncOutcome` to send its node (None: nothing)."""

    kind: str
    outcome: dict | None


def _outcome(record: dict, central_row: tuple | None, outcome: str, strategy: str, now_ms: int,
             detail: str | None = None) -> dict:
    """The SyncOutcome record for ``record``'s version; SUPERSEDED and CONFLICT carry the central version."""
    central = json.loads(central_row[0]) if central_row is not None and outcome != ACCEPTED else None
    return {"outcome_id": f"{record['record_id']}:{outcome}", "record_id": record["record_id"],
            "node_id": record["node_id"], "entity": record["entity"], "entity_id": record["entity_id"],
            "edge_version": record["edge_version"], "outcome": outcome, "strategy": strategy,
            "detail": detail or {ACCEPTED: "stored", SUPERSEDED: "central version kept",
                                 CONFLICT: "held for an operator"}[outcome],
            "central_status": None if central is None else central_row[1],
            "central_fields": {} if central is None else dict(central.get("fields") or {}),
            "central_modified_ms": None if central is None else int(central_row[5]),
            "issued_ts_ms": now_ms,
            "key_id": None, "expires_ts_ms": None, "sequence": None, "signature": None}
