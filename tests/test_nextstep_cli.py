"""``liquid evaluate next-step`` and ``liquid fingerprint show`` through `deploy.cli.main`."""

from __future__ import annotations

import csv
import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from deploy.cli import main
from fingerprint.store import SignalStore
from fingerprint.traces import MarkovProcess, read_event_log
from prediction.evaluate_nextstep import evaluate_next_step

PROCESS = MarkovProcess({
    ("<start>",): {"receive": 1.0}, ("receive",): {"check": 0.7, "reject": 0.3},
    ("check",): {"approve": 0.6, "escalate": 0.4}, ("escalate",): {"approve": 0.5, "reject": 0.5},
    ("approve",): {"pay": 0.9, "<end>": 0.1}, ("pay",): {"<end>": 1.0}, ("reject",): {"<end>": 1.0},
}, workflow_id="claims")

LOG_ARGS = ["--case-col", "case id", "--activity-col", "activity", "--time-col", "time"]


@pytest.fixture
def log(tmp_path) -> Path:
    """An event log of the process: one row per task start, ISO timestamps, a column name with a space."""
    path = tmp_path / "claims.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case id", "activity", "time", "resource"])
        for s in PROCESS.signals(400, seed=21, t0_ms=1_700_000_000_000):
            if s["state"] == 1:
                when = datetime.fromtimestamp(s["ts_ms"] / 1000, tz=timezone.utc).isoformat(timespec="milliseconds")
                w.writerow([s["run_id"], s["task"], when, "clerk"])
    return path


def test_json_report_has_the_agreed_keys_and_matches_a_direct_call(log, capsys):
    assert main(["evaluate", "next-step", "--log", str(log), *LOG_ARGS, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"accuracy", "top3_accuracy", "baseline_accuracy", "predictions"} <= set(report)
    direct = evaluate_next_step(read_event_log(log, "case id", "activity", "time"))
    for key in ("accuracy", "top3_accuracy", "baseline_accuracy", "baseline_top3_accuracy", "predictions",
                "end_accuracy", "end_precision", "end_recall", "cases", "events", "log_loss", "brier", "ece"):
        assert report[key] == direct[key], key
    with log.open() as f:
        rows = list(csv.DictReader(f))
    assert report["events"] == len(rows) and report["cases"] == len({r["case id"] for r in rows})
    assert report["predictions"] == report["events"] - report["cases"]
    assert 0 <= report["baseline_accuracy"] <= report["accuracy"] <= report["top3_accuracy"] <= 1


def test_readable_report_and_progress_on_stderr(log, capsys):
    assert main(["evaluate", "next-step", "--log", str(log), *LOG_ARGS, "--progress-every", "500"]) == 0
    out, err = capsys.readouterr()
    assert "top-1 accuracy" in out and "baseline" in out and "case-end accuracy" in out
    assert "liquid: evaluated 500 signals" in err and "{" not in out


@pytest.mark.parametrize("change, message", [
    (lambda args, log: ["--log", str(log.with_name("nope.csv")), *args[2:]], "no such log file"),
    (lambda args, log: [*args[:4], "--activity-col", "task", *args[6:]], "no column 'task'"),
    (lambda args, log: [*args, "--time-format", "%d/%m/%Y"], "cannot parse timestamp"),
])
def test_bad_input_is_one_line_and_exit_2(log, capsys, change, message):
    args = ["--log", str(log), *LOG_ARGS]
    assert main(["evaluate", "next-step", *change(args, log)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.startswith("liquid: error:") and len(err.splitlines()) == 1


def test_fingerprint_show_from_a_log_in_three_formats(log, capsys):
    base = ["fingerprint", "show", "claims", "--log", str(log), *LOG_ARGS]
    assert main(base) == 0
    text = capsys.readouterr().out
    assert text.startswith("workflow claims:") and "receive -> check" in text and "choice" in text
    assert main([*base, "--format", "dot"]) == 0
    assert capsys.readouterr().out.startswith('digraph "claims"')
    assert main([*base, "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    edge = next(e for e in data["dag"]["edges"] if (e["source"], e["target"]) == ("receive", "check"))
    assert edge["probability"] == pytest.approx(0.7, abs=0.08) and data["runs_in_window"] == 400


def test_fingerprint_show_from_the_signal_store(tmp_path, capsys):
    path = tmp_path / "history.sqlite3"
    with SignalStore(str(path)) as store:
        store.add_many(PROCESS.signals(100, seed=22))
    assert main(["fingerprint", "show", "claims", "--store", str(path), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["runs_in_window"] == 100
    assert main(["fingerprint", "show", "payroll", "--store", str(path)]) == 2
    assert "unknown workflow 'payroll'" in capsys.readouterr().err
    assert main(["fingerprint", "show", "claims"]) == 2
    assert "exactly one of --log, --store, --wfcommons" in capsys.readouterr().err


def test_fingerprint_show_from_a_wfcommons_instance(tmp_path, capsys):
    instance = {"name": "pair", "schemaVersion": "1.4", "workflow": {
        "specification": {"tasks": [{"name": "a_ID1", "id": "a_ID1", "parents": [], "children": ["b_ID2"]},
                                    {"name": "b_ID2", "id": "b_ID2", "parents": ["a_ID1"], "children": []}]},
        "execution": {"tasks": [{"id": "a_ID1", "runtimeInSeconds": 1.0}, {"id": "b_ID2", "runtimeInSeconds": 2.0}]}}}
    path = tmp_path / "pair.json"
    path.write_text(json.dumps(instance))
    assert main(["fingerprint", "show", "pair", "--wfcommons", str(path), "--runs", "5"]) == 0
    out = capsys.readouterr().out
    assert "a -> b  sequence p=1.00  n=5" in out
