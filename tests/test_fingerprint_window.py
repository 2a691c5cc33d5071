"""The rolling window (ageing by runs and by time), bounded open runs, merging and serialisation."""

from __future__ import annotations

import pickle

import pytest

from fingerprint.sequence import SequenceModel
from fingerprint.temporal import Fingerprint, Window
from fingerprint.traces import MarkovProcess, run_signals

PROCESS = MarkovProcess({("<start>",): {"a": 1.0}, ("a",): {"b": 0.6, "c": 0.4}, ("b",): {"d": 0.7, "<end>": 0.3},
                         ("c",): {"d": 1.0}, ("d",): {"a": 0.2, "<end>": 0.8}}, workflow_id="w")


def signals(runs=200, seed=0, **kw):
    return list(PROCESS.signals(runs, seed=seed, **kw))


def test_count_window_keeps_the_last_runs_and_forgets_their_counts_exactly():
    fp = Fingerprint("w", window=Window(runs=25)).learn_many(signals(300))
    assert len(fp.runs) == 25
    fresh = SequenceModel(order=fp.order)
    for run in fp.runs:
        fresh.learn_run(run.started, run.start_times, run.end_ms)
    assert fp.sequences.counts == fresh.counts and fp.sequences.totals == fresh.totals
    assert {k: (v.count, round(v.total, 6)) for k, v in fp.sequences.delays.items()} == \
        {k: (v.count, round(v.total, 6)) for k, v in fresh.delays.items()}


def test_time_window_ages_runs_out_by_end_time():
    fp = Fingerprint("w", window=Window(runs=None, ms=1000))
    for i in range(50):  # a run every 100 ms
        fp.learn_many(run_signals("w", f"r{i}", [("a", 0, 10), ("b", 10, 20)], t0_ms=i * 100))
    newest = fp.runs[-1].end_ms
    assert all(newest - r.end_ms <= 1000 for r in fp.runs)
    assert len(fp.runs) == 11
    assert fp.sequences.totals[()] == 11 * 3  # a, b and <end> of each run still in the window


def test_window_follows_a_change_of_process():
    old = MarkovProcess({("<start>",): {"a": 1.0}, ("a",): {"b": 1.0}, ("b",): {"<end>": 1.0}}, workflow_id="w")
    new = MarkovProcess({("<start>",): {"a": 1.0}, ("a",): {"c": 1.0}, ("c",): {"<end>": 1.0}}, workflow_id="w")
    fp = Fingerprint("w", window=Window(runs=50))
    fp.learn_many(old.signals(200, seed=1))
    assert max(fp.next_step_proba(["a"]).items(), key=lambda kv: kv[1])[0] == "b"
    fp.learn_many(new.signals(200, seed=2, t0_ms=10**7, run_prefix="new"))
    assert fp.issues == {}
    probs = fp.next_step_proba(["a"])
    assert "b" not in probs and probs["c"] > 0.6
    assert set(fp.dag().nodes) == {"a", "c"}


def test_open_runs_are_bounded_and_evicted_runs_counted():
    fp = Fingerprint("w", max_open_runs=5)
    for i in range(20):  # runs that start and never end
        fp.learn_one(run_signals("w", f"r{i}", [("a", 0, 10)], t0_ms=i)[0])
    assert len(fp.open_runs) == 5 and fp.issues == {"abandoned_run": 15}
    assert list(fp.open_runs) == [f"r{i}" for i in range(15, 20)]  # the most recent stay
    assert all(not r.ended for r in fp.runs) and len(fp.runs) == 15


def test_idle_runs_time_out():
    fp = Fingerprint("w", idle_timeout_ms=1000)
    fp.learn_one(run_signals("w", "slow", [("a", 0, 10)])[0])
    fp.learn_many(run_signals("w", "fast", [("a", 0, 10), ("b", 10, 20)], t0_ms=5000))
    assert "slow" not in fp.open_runs and fp.issues == {"abandoned_run": 1}


def test_duplicate_memory_is_bounded():
    fp = Fingerprint("w", dedupe_capacity=100)
    fp.learn_many(signals(200))
    assert len(fp._seen_ids) == 100 and len(fp._closed_ids) == 100


def test_merging_two_halves_equals_learning_everything():
    stream = signals(400, seed=3)
    runs = sorted({s["run_id"] for s in stream})
    left_runs = set(runs[::2])
    left = Fingerprint("w", window=Window(runs=1000)).learn_many(s for s in stream if s["run_id"] in left_runs)
    right = Fingerprint("w", window=Window(runs=1000)).learn_many(s for s in stream if s["run_id"] not in left_runs)
    whole = Fingerprint("w", window=Window(runs=1000)).learn_many(stream)
    merged = left.merge(right)
    assert len(merged.runs) == len(whole.runs) == 400
    assert merged.sequences.counts == whole.sequences.counts
    assert merged.dag().to_dict() == whole.dag().to_dict()
    assert merged.accepted == whole.accepted
    # merging a fingerprint with itself does not count its runs twice
    assert merged.merge(merged).sequences.counts == whole.sequences.counts


def test_merge_respects_the_window_and_refuses_other_workflows():
    a = Fingerprint("w", window=Window(runs=30)).learn_many(signals(100, seed=4))
    b = Fingerprint("w", window=Window(runs=30)).learn_many(signals(100, seed=5, t0_ms=10**8, run_prefix="b"))
    merged = a.merge(b)
    assert len(merged.runs) == 30 and merged.runs[-1].run_id == b.runs[-1].run_id
    with pytest.raises(ValueError, match="cannot merge"):
        a.merge(Fingerprint("other"))


def test_json_round_trip_and_resume_equal_an_uninterrupted_fingerprint():
    stream = signals(300, seed=6)
    half = len(stream) // 2
    uninterrupted = Fingerprint("w", window=Window(runs=100)).learn_many(stream)
    first = Fingerprint("w", window=Window(runs=100)).learn_many(stream[:half])
    assert first.open_runs  # the cut leaves runs open: they must survive the round trip
    restored = Fingerprint.from_json(first.to_json())
    assert restored.to_dict() == first.to_dict()
    assert restored.sequences.counts == first.sequences.counts
    restored.learn_many(stream[half:])
    assert restored.to_dict() == uninterrupted.to_dict()
    assert restored.next_step_proba(["a", "b"]) == uninterrupted.next_step_proba(["a", "b"])
    # a duplicate of a signal seen before the snapshot is still a duplicate after it
    restored.learn_one(stream[half - 1])
    assert restored.issues.get("duplicate") == 1


def test_pickle_round_trip_as_bytewax_snapshots_it():
    fp = Fingerprint("w").learn_many(signals(50))
    clone = pickle.loads(pickle.dumps(fp))
    assert clone.to_dict() == fp.to_dict() and clone.version == fp.version


def test_unknown_format_versions_are_refused():
    data = Fingerprint("w").to_dict()
    data["version"] = 99
    with pytest.raises(ValueError, match="version 99"):
        Fingerprint.from_dict(data)
