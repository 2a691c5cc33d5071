"""Traces in: CSV event logs, WfCommons instances (1.4+ and 1.3), the synthetic process, a real log."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import pytest

from fingerprint.temporal import Fingerprint
from fingerprint.traces import MarkovProcess, TraceError, read_event_log, read_wfcommons
from schemas.codec import Codec, field_names

FIELDS = field_names("WorkflowSignal")


def write_csv(path: Path, header: list[str], rows: list[list], delimiter: str = ",") -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(header)
        w.writerows(rows)
    return path


LOG = [  # case, activity, time: case 2 interleaves with case 1
    ["c1", "register", "2024-03-01T10:00:00Z"],
    ["c2", "register", "2024-03-01T10:00:30Z"],
    ["c1", "check", "2024-03-01T10:01:00Z"],
    ["c2", "reject", "2024-03-01T10:02:00Z"],
    ["c1", "decide", "2024-03-01T10:05:00+00:00"],
]


def test_single_timestamp_log_becomes_ordered_schema_exact_signals(tmp_path):
    path = write_csv(tmp_path / "claims.csv", ["case", "act", "when"], LOG)
    signals = list(read_event_log(path, "case", "act", "when"))
    assert len(signals) == 2 * len(LOG)
    assert all(list(s) == FIELDS for s in signals)  # exactly the schema's fields, in order
    codec = Codec()
    assert all(codec.decode(codec.encode("WorkflowSignal", s)).record == s for s in signals)
    ts = [s["ts_ms"] for s in signals]
    assert ts == sorted(ts)
    c1 = [(s["task"], s["state"], s["ts_ms"] - 1709287200000) for s in signals if s["run_id"] == "c1"]
    # each activity runs until the case's next event; the last one takes no time
    assert c1 == [("register", 1, 0), ("register", 0, 60000), ("check", 1, 60000), ("check", 0, 300000),
                  ("decide", 1, 300000), ("decide", 0, 300000)]
    assert [s["run_ended"] for s in signals if s["run_id"] == "c1"] == [False] * 5 + [True]
    assert sum(s["run_ended"] for s in signals) == 2 and signals[0]["workflow_id"] == "claims"
    fp = Fingerprint("claims").learn_many(signals)
    assert fp.issues == {} and len(fp.runs) == 2


@pytest.mark.parametrize("scale", [1, 1000])
def test_epoch_timestamps_in_seconds_or_ms_and_sniffed_delimiter(tmp_path, scale):
    rows = [["1", "a", 1700000000 * scale], ["1", "b", 1700000060 * scale]]
    path = write_csv(tmp_path / "e.csv", ["id", "task", "t"], rows, delimiter=";")
    signals = list(read_event_log(path, "id", "task", "t", workflow_id="wf"))
    assert [s["ts_ms"] for s in signals] == [1700000000000, 1700000060000, 1700000060000, 1700000060000]
    assert {s["workflow_id"] for s in signals} == {"wf"}


def test_lifecycle_log_keeps_overlaps_and_turns_lone_completes_into_instants(tmp_path):
    rows = []
    for case in range(30):
        t = 1000 * case
        rows += [[case, "load", "start", t], [case, "load", "complete", t + 10],
                 [case, "left", "start", t + 10], [case, "right", "start", t + 10],
                 [case, "right", "complete", t + 25], [case, "left", "complete", t + 30],
                 [case, "merge", "complete", t + 40], [case, "note", "schedule", t + 41]]
    path = write_csv(tmp_path / "life.csv", ["case", "activity", "lifecycle", "ts"], rows)
    signals = list(read_event_log(path, "case", "activity", "ts", lifecycle_col="lifecycle"))
    assert "note" not in {s["task"] for s in signals}  # schedule says neither start nor finish
    merge = [s for s in signals if s["run_id"] == "0" and s["task"] == "merge"]
    assert [(s["state"], s["ts_ms"]) for s in merge] == [(1, 40000), (0, 40000)] and merge[-1]["run_ended"]
    dag = Fingerprint("life").learn_many(signals).dag()
    assert dag.edge("load", "left").kind == "parallel" and dag.nodes["merge"].join == "and"


def test_bad_logs_are_reported_with_file_line_and_reason(tmp_path):
    path = write_csv(tmp_path / "bad.csv", ["case", "act", "when"], LOG[:2] + [["c1", "x", "not a time"]])
    with pytest.raises(TraceError, match=r"bad.csv:4: cannot parse timestamp 'not a time'"):
        list(read_event_log(path, "case", "act", "when"))
    with pytest.raises(TraceError, match=r"no column 'activity'; columns are: case, act, when"):
        list(read_event_log(path, "case", "activity", "when"))
    with pytest.raises(FileNotFoundError):
        list(read_event_log(tmp_path / "missing.csv", "case", "act", "when"))


def wfcommons_14() -> dict:
    """A 1.5-style instance: split -> 3 parallel blastall jobs -> cat, with files and runtimes."""
    jobs = [f"blastall_ID00000{i}" for i in range(3)]
    spec_tasks = [{"name": "split_fasta_ID000001", "id": "split_fasta_ID000001", "parents": [], "children": jobs,
                   "inputFiles": ["in.fasta"], "outputFiles": [f"part{i}" for i in range(3)]}]
    spec_tasks += [{"name": j, "id": j, "parents": ["split_fasta_ID000001"], "children": ["cat_ID000009"],
                    "inputFiles": [f"part{i}"], "outputFiles": [f"out{i}"]} for i, j in enumerate(jobs)]
    spec_tasks.append({"name": "cat_ID000009", "id": "cat_ID000009", "parents": jobs, "children": [],
                       "inputFiles": [f"out{i}" for i in range(3)], "outputFiles": ["result"]})
    files = [{"id": "in.fasta", "sizeInBytes": 3000}, {"id": "result", "sizeInBytes": 50}]
    files += [{"id": f"part{i}", "sizeInBytes": 1000} for i in range(3)]
    files += [{"id": f"out{i}", "sizeInBytes": 100} for i in range(3)]
    runtimes = {"split_fasta_ID000001": 2.0, "blastall_ID000000": 10.0, "blastall_ID000001": 12.0,
                "blastall_ID000002": 8.0, "cat_ID000009": 1.0}
    return {"name": "blast-test", "schemaVersion": "1.5",
            "workflow": {"specification": {"tasks": spec_tasks, "files": files},
                         "execution": {"makespanInSeconds": 15, "executedAt": "20240301T100000+0000",
                                       "tasks": [{"id": k, "runtimeInSeconds": v, "coreCount": 2,
                                                  "memoryInBytes": 1024} for k, v in runtimes.items()]}}}


def test_wfcommons_14_instance_is_scheduled_as_soon_as_parents_allow(tmp_path):
    path = tmp_path / "blast.json"
    path.write_text(json.dumps(wfcommons_14()))
    signals = list(read_wfcommons(path, speed=2.0))
    assert all(list(s) == FIELDS for s in signals) and signals[0]["workflow_id"] == "blast-test"
    starts = {(s["task"], s["ts_ms"]) for s in signals if s["state"] == 1}
    # runtimes halved by speed 2: split 0-1 s, blastall from 1 s (longest 6 s), cat from 7 s
    assert starts == {("split_fasta", 0), ("blastall", 1000), ("cat", 7000)}
    assert Counter(s["task"] for s in signals if s["state"] == 1) == {"blastall": 3, "split_fasta": 1, "cat": 1}
    split_done = next(s for s in signals if s["task"] == "split_fasta" and s["state"] == 0)
    assert split_done["data_size_bytes"] == 3000 and split_done["tsa"] == [0, 1000]
    first = signals[0]
    assert first["resources"] == {"cores": 2.0, "memory_bytes": 1024.0} and first["data_size_bytes"] == 3000
    assert signals[-1]["task"] == "cat" and signals[-1]["run_ended"] and signals[-1]["ts_ms"] == 7500


def test_wfcommons_runs_with_jitter_make_a_fingerprint_of_the_real_dag():
    signals = list(read_wfcommons(wfcommons_14(), runs=20, jitter=0.2, seed=3))
    fp = Fingerprint("blast-test").learn_many(signals)
    dag = fp.dag()
    assert len(fp.runs) == 20 and fp.issues == {}
    assert {(e.source, e.target) for e in dag.edges} == {("split_fasta", "blastall"), ("blastall", "cat")}
    assert dag.nodes["blastall"].max_batch == 3
    assert dag.edge("split_fasta", "blastall").transfer_bytes == 3000
    assert dag.nodes["blastall"].duration_ms["std"] > 0  # the jitter shows


def test_wfcommons_13_instance_with_inline_files_and_parent_names():
    instance = {"name": "old", "schemaVersion": "1.3", "workflow": {"tasks": [
        {"name": "prep_00001", "type": "compute", "runtime": 3.0, "parents": [], "cores": 1,
         "files": [{"link": "input", "name": "raw", "sizeInBytes": 500},
                   {"link": "output", "name": "clean", "sizeInBytes": 400}]},
        {"name": "fit_00002", "type": "compute", "runtime": 5.0, "parents": ["prep_00001"],
         "files": [{"link": "input", "name": "clean", "sizeInBytes": 400}]},
        {"name": "plot_00003", "category": "report", "runtime": 1.0, "parents": ["prep_00001", "fit_00002"]},
    ]}}
    spans = {}
    for s in read_wfcommons(instance):
        spans.setdefault(s["task"], []).append(s["ts_ms"])
    assert spans == {"prep": [0, 3000], "fit": [3000, 8000], "report": [8000, 9000]}
    with pytest.raises(TraceError, match="unknown parents"):
        list(read_wfcommons({"workflow": {"tasks": [{"name": "a", "runtime": 1, "parents": ["zz"]}]}}))
    with pytest.raises(TraceError, match="not a WfCommons instance"):
        list(read_wfcommons({"nothing": 1}))


def test_the_synthetic_process_draws_its_declared_probabilities():
    process = MarkovProcess({("<start>",): {"a": 1.0}, ("a",): {"b": 0.25, "c": 0.75},
                             ("b",): {"<end>": 1.0}, ("c",): {"<end>": 1.0}})
    second = Counter(s["task"] for s in process.signals(4000, seed=5) if s["state"] == 1 and s["task"] != "a")
    assert second["b"] / 4000 == pytest.approx(0.25, abs=0.03)  # > 4 standard errors (0.007)
    with pytest.raises(ValueError, match="sum to"):
        MarkovProcess({("a",): {"b": 0.5}})


RUNNING_EXAMPLE = "opyenxes-0.3.0/example/xes_file/csv_file.csv"


@pytest.fixture(scope="session")
def running_example(tmp_path_factory) -> Path:
    """The process-mining "running example" log, shipped in the opyenxes 0.3.0 sdist on PyPI.

    It is GPL-3.0 material, so it is fetched at test time (95 KB) rather than
    copied into the repository; without PyPI the test is skipped.
    """
    where = tmp_path_factory.mktemp("pypi")
    try:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        "--no-build-isolation", "-q", "-d", str(where), "opyenxes==0.3.0"],
                       check=True, capture_output=True, timeout=90)
        with tarfile.open(next(where.glob("opyenxes-*.tar.gz"))) as tar:
            tar.extract(RUNNING_EXAMPLE, where, filter="data")
    except (subprocess.SubprocessError, StopIteration, KeyError, OSError) as err:
        pytest.skip(f"opyenxes sdist not available from PyPI: {err}")
    return where / RUNNING_EXAMPLE


def test_real_running_example_log(running_example):
    signals = list(read_event_log(running_example, "Case ID", "Activity", "dd-MM-yyyy:HH.mm",
                                  time_format="%d-%m-%Y:%H.%M", workflow_id="running"))
    fp = Fingerprint("running").learn_many(signals)
    assert fp.issues == {} and len(fp.runs) == 10 and fp.accepted == 2 * 71
    dag = fp.dag()
    assert dag.nodes["register request"].start_share == 1.0
    # the textbook model: checking the ticket and examining happen in either order
    assert ("check ticket", "examine casually") in [(a, b) for a, b, _ in dag.concurrent]
    assert dag.edge("decide", "reinitiate request").kind == "choice"


def test_wfcommons_signals_carry_the_task_files_as_lineage_and_names_without_id_suffix():
    signals = list(read_wfcommons(wfcommons_14()))
    starts = {s["task"]: s for s in signals if s["state"] == 1}
    finishes = {s["task"]: s for s in signals if s["state"] == 0}
    assert starts["split_fasta"]["inputs"] == ["in.fasta"] and starts["split_fasta"]["outputs"] is None
    assert finishes["split_fasta"]["outputs"] == ["part0", "part1", "part2"] and finishes["split_fasta"]["inputs"] is None
    assert starts["cat"]["inputs"] == ["out0", "out1", "out2"]
    assert all(s["inputs"] is None and s["outputs"] is None for s in read_wfcommons(wfcommons_14(), lineage=False))
    # 1.4+ names lose only an _ID<digits> suffix: numbered tasks of a hello-world chain stay distinct
    chain = {"name": "chain", "workflow": {"specification": {"files": [], "tasks": [
        {"name": f"cpuhog_chain_0000000{i}", "id": f"cpuhog_chain_0000000{i}",
         "parents": [f"cpuhog_chain_0000000{i - 1}"] if i > 1 else []} for i in range(1, 4)]},
        "execution": {"tasks": [{"id": f"cpuhog_chain_0000000{i}", "runtimeInSeconds": 1.0} for i in range(1, 4)]}}}
    assert [s["task"] for s in read_wfcommons(chain) if s["state"] == 1] == [
        "cpuhog_chain_00000001", "cpuhog_chain_00000002", "cpuhog_chain_00000003"]


def test_wfcommons_replays_are_seeded_and_differ_run_to_run_like_reruns():
    def timings(**kw):
        return [(s["run_id"], s["task"], s["state"], s["ts_ms"]) for s in read_wfcommons(wfcommons_14(), **kw)]

    kw = {"runs": 3, "jitter": 0.1, "dispatch_ms": 1000}
    assert timings(seed=1, **kw) == timings(seed=1, **kw)
    assert timings(seed=1, **kw) != timings(seed=2, **kw)
    signals = list(read_wfcommons(wfcommons_14(), **kw))
    per_run: dict[str, dict] = {}
    for s in signals:
        per_run.setdefault(s["run_id"], {}).setdefault((s["task"], s["state"]), []).append(s["ts_ms"] - (
            min(x["ts_ms"] for x in signals if x["run_id"] == s["run_id"])))
    assert len({tuple(sorted(r[("cat", 1)])) for r in per_run.values()}) == 3  # each rerun times cat anew
    for run in per_run.values():
        # every blastall starts after split finished, within the dispatch delay, and cat after the last blastall
        split_done = run[("split_fasta", 0)][0]
        assert all(0 <= t - split_done < 1000 for t in run[("blastall", 1)])
        assert 0 <= run[("cat", 1)][0] - max(run[("blastall", 0)]) < 1000
    # what a replay says is exactly the schema's fields: the instance's parent links are not in it
    assert all(list(s) == FIELDS for s in signals)
    with pytest.raises(ValueError, match="must not be negative"):
        list(read_wfcommons(wfcommons_14(), dispatch_ms=-1))
