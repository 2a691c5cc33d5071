"""Attributes end to end: CSV columns -> WorkflowSignal ``attributes`` -> the predictor, through the CLI."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest

from deploy.cli import build_parser, main
from fingerprint.traces import TraceError, categorical_columns, read_event_log
from schemas.codec import Codec

COLUMNS = ["case", "activity", "time", "channel", "ticket", "site"]
LOG_ARGS = ["--case-col", "case", "--activity-col", "activity", "--time-col", "time"]


@pytest.fixture
def log(tmp_path) -> Path:
    """Cases receive -> check -> (fast_track if the channel is web, else review): the order alone cannot tell.

    ``channel`` is a case attribute filled on the first row only; ``ticket`` is unique per case (an id);
    ``site`` has one value.
    """
    rng = random.Random(5)
    path = tmp_path / "tickets.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for i in range(600):
            channel = rng.choice(["web", "phone"])
            third = "fast_track" if channel == "web" else "review"
            for j, activity in enumerate(["receive", "check", third]):
                w.writerow([f"c{i}", activity, 1_700_000_000 + i * 3600 + j * 60, channel if j == 0 else "",
                            f"T{i}", "north"])
    return path


def test_attribute_columns_fill_the_signals_attributes_and_fit_the_schema(log):
    signals = list(read_event_log(log, "case", "activity", "time", attr_cols=["channel", "ticket"]))
    first = [s for s in signals if s["run_id"] == "c0"]
    assert first[0]["attributes"]["channel"] in {"web", "phone"} and first[0]["attributes"]["ticket"] == "T0"
    assert first[2]["attributes"] == {"ticket": "T0"}  # empty cells are not attributes
    codec = Codec()
    assert all(codec.decode(codec.encode("WorkflowSignal", s)).record["attributes"] == s["attributes"]
               for s in signals[:50])
    assert all(s["attributes"] is None for s in read_event_log(log, "case", "activity", "time"))
    with pytest.raises(TraceError, match="no column 'nope'"):
        list(read_event_log(log, "case", "activity", "time", attr_cols=["nope"]))


def test_categorical_columns_leave_out_ids_and_constants(log):
    assert categorical_columns(log, ["case", "activity", "time"]) == ["channel"]
    assert categorical_columns(log, ["case", "activity", "time"], max_distinct=1000) == ["channel", "ticket"]


def test_evaluate_takes_attributes_and_from_log_and_the_predictor_uses_them(log, capsys):
    assert main(["evaluate", "next-step", "--from-log", str(log), *LOG_ARGS, "--json"]) == 0
    blind = json.loads(capsys.readouterr().out)
    assert main(["evaluate", "next-step", "--log", str(log), *LOG_ARGS, "--attr-col", "channel",
                 "--attr-col", "site", "--json"]) == 0
    seeing = json.loads(capsys.readouterr().out)
    assert blind["predictions"] == seeing["predictions"] == 1200
    # without the channel: check is certain, the branch a coin toss (best 0.75); with it, both certain
    assert blind["accuracy"] < 0.8 and blind["baseline_accuracy"] < 0.8
    assert seeing["accuracy"] > 0.9 > seeing["baseline_accuracy"]
    assert main(["evaluate", "next-step", "--log", str(log), *LOG_ARGS, "--attr-col", "nope"]) == 2
    assert "no column 'nope'" in capsys.readouterr().err


def test_produce_signals_takes_the_same_log_options(log):
    args = build_parser().parse_args(["produce", "signals", "--from-log", str(log), *LOG_ARGS,
                                      "--attr-col", "channel", "--attr-col", "site"])
    assert args.log == str(log) and args.attr_col == ["channel", "site"]
