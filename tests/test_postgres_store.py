"""The signal history store on a real PostgreSQL server (the same code path as SQLite).

The server is Debian's postgresql package, started here in a temporary data
directory; the test is skipped, saying why, where its binaries are missing.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import tempfile

import pytest

from deploy.broker import free_port
from fingerprint.store import SignalStore
from tests.conftest import run_liquid
from tests.test_nextstep_cli import LOG_ARGS, log  # noqa: F401  (the CSV log fixture)


@pytest.fixture(scope="module")
def postgres_dsn():
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not bins:
        pytest.skip("no PostgreSQL server here (Debian package postgresql)")
    bindir = os.path.dirname(bins[-1])
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []  # the server refuses root
    data = tempfile.mkdtemp(prefix="liquid-pg-")
    if as_postgres:
        shutil.chown(data, "postgres")
    port = free_port()
    subprocess.run([*as_postgres, f"{bindir}/initdb", "-D", data, "-U", "liquid", "--auth=trust", "-E", "UTF8"],
                   check=True, capture_output=True)
    subprocess.run([*as_postgres, f"{bindir}/pg_ctl", "-D", data, "-o", f"-p {port} -k {data} -h 127.0.0.1",
                    "-w", "-l", f"{data}/server.log", "start"], check=True, capture_output=True)
    try:
        yield f"postgresql://liquid@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_postgres, f"{bindir}/pg_ctl", "-D", data, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


def signal(i, ts, state=1):
    return {"signal_id": f"s{i}", "workflow_id": "wf", "run_id": "r1", "task": "a", "state": state,
            "outcome": None if state else "SUCCESS", "ts_ms": ts, "tsa": [ts], "tsa_resolution_ms": 1,
            "intensity": 0.5, "node_id": "edge-1", "resources": {"cpu": 2.0}, "data_size_bytes": 7, "run_ended": False,
            "inputs": ["raw"], "outputs": None, "attributes": {"org:group": "ops"}, "error_class": None, "attempt": None,
            "recovery": None, "policy_version": None}


def test_store_round_trips_dedupes_and_queries_by_time(postgres_dsn):
    with SignalStore(postgres_dsn) as store:
        store.add_many([signal(1, 1000), signal(2, 2000, 0), signal(1, 1000)])  # s1 twice: stored once
        store.flush()
        assert store.count() == 2 and store.workflows() == ["wf"]
        assert [s["signal_id"] for s in store.query("wf", 1500, 3000)] == ["s2"]
        assert list(store.query("wf"))[0] == signal(1, 1000)


@pytest.mark.broker
def test_workflow_flow_persists_to_postgres_and_rebuilds_the_same_fingerprint(kafka, log, postgres_dsn):  # noqa: F811
    run_liquid("produce", "signals", "--log", log, *LOG_ARGS, "--workflow", "claims", "--bootstrap", kafka.bootstrap)
    run_liquid("flow", "run", "workflow", "--until-end", "--store", postgres_dsn, "--bootstrap", kafka.bootstrap)
    from_pg = run_liquid("fingerprint", "show", "claims", "--store", postgres_dsn, "--format", "json").stdout
    from_log = run_liquid("fingerprint", "show", "claims", "--log", log, *LOG_ARGS, "--format", "json").stdout
    assert json.loads(from_pg) == json.loads(from_log)


@pytest.mark.broker
def test_sync_flow_keeps_the_nodes_records_in_postgres_and_answers_each_once_applied(kafka, tmp_path, postgres_dsn):
    from deploy.keys_cmd import PRIVATE, generate_keys
    from fingerprint.store import CentralExecutions
    from tests.test_sync_central import Node

    generate_keys(tmp_path / "keys")
    node = Node(kafka, tmp_path)
    try:
        for i in range(40):
            node.store.upsert("execution", f"run-{i}", f"run-{i}", "inspection", "completed", {"latency_ms": str(i)})
            node.store.upsert("step", f"run-{i}/0/capture", f"run-{i}", "inspection", "ok", {})
        assert node.send() == 80
        # The second run reads everything again (no recovery), on two workers with a connection each:
        # duplicates, answered again, changing nothing.
        for workers in ("1", "2"):
            run_liquid("flow", "run", "sync", "-w", workers, "--until-end", "--store", postgres_dsn,
                       "--conflict", "default=manual", "--signing-key", tmp_path / "keys" / PRIVATE,
                       "--bootstrap", kafka.bootstrap)
        node.wait_for("step", "run-39/0/capture", "accepted")
        assert node.store.counts() == {"accepted": 80}
        central = CentralExecutions(postgres_dsn)
        assert central.get("execution", "run-7")["fields"]["latency_ms"] == "7"
        assert central.conflict_counts() == {}
    finally:
        node.close()
