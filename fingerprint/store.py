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


class SignalStore:
    """Append-only store of WorkflowSignals on SQLite or PostgreSQL."""

    def __init__(self, target: str = ":memory:", batch_size: int = 100):
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.target = target
        self.batch_size = batch_size
        self.rejected = 0  # malformed signals not stored
        self._pending: list[tuple] = []
        if is_dsn(target):
            try:
                import psycopg
            except ModuleNotFoundError:
                raise RuntimeError("a PostgreSQL DSN needs psycopg: pip install 'liquid-workflow[postgres]'") from None
            self._conn = psycopg.connect(target)
            self._param = "%s"
            seq = "BIGSERIAL PRIMARY KEY"
        else:
            self._conn = sqlite3.connect(target)
            if target != ":memory:":
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=NORMAL")  # WAL keeps this durable across app crashes
            self._param = "?"
            seq = "INTEGER PRIMARY KEY AUTOINCREMENT"
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
