"""SignalStore: queries by workflow and time range, batching, deduplication, the PostgreSQL path."""

from __future__ import annotations

import importlib.util
import sqlite3

import pytest

from fingerprint.store import SignalStore, is_dsn
from fingerprint.temporal import Fingerprint
from fingerprint.traces import run_signals


def two_workflows():
    etl = [s for i in range(5) for s in run_signals("etl", f"r{i}", [("extract", 0, 10), ("load", 10, 30)],
                                                    t0_ms=1000 * i, node_id="n1")]
    ml = [s for i in range(3) for s in run_signals("ml", f"m{i}", [("train", 0, 500, "SUCCESS", {"gpu": 1.0}, 10, 20)],
                                                   t0_ms=1000 * i + 5)]
    return etl, ml


def test_query_by_workflow_and_half_open_time_range(tmp_path):
    etl, ml = two_workflows()
    with SignalStore(str(tmp_path / "signals.sqlite3")) as store:
        store.add_many(etl + ml)
        assert store.workflows() == ["etl", "ml"]
        assert store.count() == len(etl) + len(ml) and store.count("ml") == len(ml)
        assert list(store.query("etl")) == sorted(etl, key=lambda s: s["ts_ms"])  # every field round-trips
        window = list(store.query("etl", start_ms=1000, end_ms=2010))
        assert [s["ts_ms"] for s in window] == [1000, 1010, 1010, 1030, 2000]  # 2010 is excluded
        assert {s["workflow_id"] for s in window} == {"etl"}
        assert [s["task"] for s in store.query("ml", run_id="m1")] == ["train", "train"]
        assert list(store.query("nope")) == []


def test_the_history_rebuilds_the_same_fingerprint(tmp_path):
    etl, _ = two_workflows()
    with SignalStore(str(tmp_path / "s.sqlite3")) as store:
        store.add_many(etl)
        replayed = Fingerprint("etl").learn_many(store.query("etl"))
    direct = Fingerprint("etl").learn_many(etl)
    assert replayed.dag().to_dict() == direct.dag().to_dict() and replayed.issues == {}


def test_rows_are_committed_in_batches_and_redeliveries_ignored(tmp_path):
    path = str(tmp_path / "batched.sqlite3")
    etl, _ = two_workflows()
    store = SignalStore(path, batch_size=8)
    reader = sqlite3.connect(path)

    def committed():
        return reader.execute("SELECT COUNT(*) FROM workflow_signal").fetchone()[0]

    for s in etl[:7]:
        store.add(s)
    assert committed() == 0  # still buffered
    store.add(etl[7])
    assert committed() == 8  # one batch, one commit
    assert reader.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.add_many(etl[:8])  # redelivered
    store.add({"signal_id": "broken"})
    assert committed() == 8 and store.rejected == 1
    store.close()
    assert committed() == 8


def test_memory_store_and_dsn_detection():
    store = SignalStore(":memory:")
    store.add_many(two_workflows()[1])
    assert store.count() == 6
    store.close()
    assert is_dsn("postgresql://u@localhost/liquid") and is_dsn("host=db dbname=liquid")
    assert not is_dsn("signals.sqlite3") and not is_dsn(":memory:")


@pytest.mark.skipif(importlib.util.find_spec("psycopg") is not None, reason="psycopg is installed")
def test_a_postgres_dsn_without_psycopg_is_a_clear_error():
    with pytest.raises(RuntimeError, match=r"needs psycopg.*liquid-workflow\[postgres\]"):
        SignalStore("postgresql://nobody@127.0.0.1:1/none")


def test_postgres_paramstyle_is_adapted_from_the_same_sql():
    store = SignalStore(":memory:")
    store._param = "%s"  # what a psycopg connection gets
    assert store._sql("SELECT 1 WHERE a = ? AND b < ?") == "SELECT 1 WHERE a = %s AND b < %s"
    store._param = "?"
    store.close()


def test_a_store_written_by_an_earlier_release_gains_the_new_columns(tmp_path):
    """Lineage, attributes and the failure fields round-trip after opening a store created without them."""
    import sqlite3

    from fingerprint.store import _TABLE, LATER_COLUMNS

    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as conn:  # the table exactly as the first release created it
        conn.execute(_TABLE.format(seq="INTEGER PRIMARY KEY AUTOINCREMENT"))
    signal = {"signal_id": "s1", "workflow_id": "wf", "run_id": "r1", "task": "infer", "state": 0,
              "outcome": "SUCCESS", "ts_ms": 5, "tsa": [1, 5], "tsa_resolution_ms": 1, "intensity": 1.0,
              "node_id": "edge-1", "resources": None, "data_size_bytes": None, "run_ended": True,
              "inputs": None, "outputs": ["scores@0123"], "attributes": {"lot": "A7"}, "error_class": "timeout",
              "attempt": 2, "recovery": "retry", "policy_version": 3}
    with SignalStore(str(path)) as store:
        store.add_many([signal])
        assert list(store.query("wf")) == [signal]
    with sqlite3.connect(path) as conn:
        assert set(LATER_COLUMNS) <= {row[1] for row in conn.execute("PRAGMA table_info(workflow_signal)")}
