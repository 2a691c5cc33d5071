"""DAG reconstruction on workflows whose DAG is known: chains, fork/join, choices with known probabilities."""

from __future__ import annotations

import json
import math
import random

import pytest

from fingerprint.temporal import Fingerprint, Window
from fingerprint.traces import run_signals


def learn(runs: list[list[tuple]], window: int = 5000, gap: int = 1000) -> Fingerprint:
    """A fingerprint of runs given as execution lists (offsets in ms), one run every ``gap`` ms... or later."""
    fp = Fingerprint("w", window=Window(runs=window))
    t0 = 0
    for i, executions in enumerate(runs):
        for s in run_signals("w", f"r{i}", executions, t0_ms=t0):
            assert fp.observe_one(s) is not None
        t0 += max(e[2] for e in executions) + gap
    assert fp.issues == {}
    return fp


def test_chain_has_sequence_edges_with_probability_one_and_exact_durations():
    rng = random.Random(0)
    runs = []
    for _ in range(50):
        t, spans = 0, []
        for task, d in (("a", 10), ("b", 20), ("c", 30), ("d", 40)):
            dur = d + rng.randint(-5, 5)
            spans.append((task, t, t + dur))
            t += dur + rng.randint(0, 3)  # small hand-over gaps
        runs.append(spans)
    dag = learn(runs).dag()
    assert [(e.source, e.target, e.kind) for e in dag.edges] == [
        ("a", "b", "sequence"), ("b", "c", "sequence"), ("c", "d", "sequence")]
    assert all(e.probability == 1.0 and e.count == 50 for e in dag.edges)
    durations_b = [r[1][2] - r[1][1] for r in runs]
    assert dag.nodes["b"].duration_ms["mean"] == pytest.approx(sum(durations_b) / 50)
    assert dag.nodes["b"].duration_ms["max"] == max(durations_b)
    assert dag.nodes["a"].start_share == 1.0 and dag.nodes["d"].end_share == 1.0
    assert all(n.split == "none" and n.join == "none" for n in dag.nodes.values())
    assert dag.concurrent == [] and list(dag.nodes) == ["a", "b", "c", "d"]


@pytest.mark.parametrize("overlapping", [True, False])
def test_fork_join_is_found_whether_branches_overlap_or_run_one_after_the_other(overlapping):
    rng = random.Random(1)
    runs = []
    for _ in range(60):
        if overlapping:  # b and c run side by side
            spans = [("a", 0, 10), ("b", 10, 10 + rng.randint(5, 30)), ("c", 10, 10 + rng.randint(5, 30))]
            join = max(spans[1][2], spans[2][2])
        else:  # one worker runs the branches in a random order
            first, second = rng.sample(["b", "c"], 2)
            spans = [("a", 0, 10), (first, 10, 20), (second, 20, 30)]
            join = 30
        spans.append(("d", join, join + 10))
        runs.append(spans)
    dag = learn(runs).dag()
    edges = {(e.source, e.target): e for e in dag.edges}
    assert set(edges) == {("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")}
    for e in edges.values():
        assert e.kind == "parallel"
        assert e.probability == pytest.approx(1.0)
    assert dag.nodes["a"].split == "and" and dag.nodes["d"].join == "and"
    assert [(a, b) for a, b, _ in dag.concurrent] == [("b", "c")]


def test_choice_branch_probabilities_match_the_generating_ones():
    rng = random.Random(2)
    n, p_b = 3000, 0.3
    runs = []
    for _ in range(n):
        branch = "b" if rng.random() < p_b else "c"
        runs.append([("a", 0, 10), (branch, 10, 25), ("d", 25, 30)])
    dag = learn(runs, window=n).dag()
    ab, ac = dag.edge("a", "b"), dag.edge("a", "c")
    # 4 standard errors of a binomial proportion: fails by chance about once in 15,000 runs
    tolerance = 4 * math.sqrt(p_b * (1 - p_b) / n)
    assert ab.probability == pytest.approx(p_b, abs=tolerance)
    assert ab.probability + ac.probability == pytest.approx(1.0)
    assert ab.kind == ac.kind == "choice"
    assert dag.nodes["a"].split == "xor" and dag.nodes["d"].join == "xor"
    assert ("b", "c") in dag.exclusive
    assert dag.edge("b", "d").probability == 1.0 and dag.edge("b", "c") is None


def test_fork_then_choice_keeps_both_kinds_apart():
    # a -> (b || c) -> d -> (e | f): the and-split and the xor-split in one DAG
    rng = random.Random(3)
    runs = []
    for _ in range(400):
        tail = "e" if rng.random() < 0.8 else "f"
        runs.append([("a", 0, 5), ("b", 5, 15), ("c", 5, 12), ("d", 15, 20), (tail, 20, 30)])
    dag = learn(runs).dag()
    assert dag.edge("a", "b").kind == "parallel" and dag.edge("c", "d").kind == "parallel"
    assert dag.edge("d", "e").kind == "choice"
    assert dag.edge("d", "e").probability == pytest.approx(0.8, abs=0.08)
    assert dag.nodes["d"].split == "xor" and dag.nodes["a"].split == "and"


def test_transfer_sizes_resources_delays_and_batches_are_reported():
    runs = []
    for i in range(20):
        runs.append([("split", 0, 10, "SUCCESS", {"cpu": 1.0}, 100, 4096),
                     # a batch of three overlapping "work" executions
                     ("work", 12, 40, "SUCCESS", {"cpu": 4.0, "mem_mb": 512.0}, 4096, 1000),
                     ("work", 12, 42, "SUCCESS", {"cpu": 4.0, "mem_mb": 512.0}, 4096, 1000),
                     ("work", 13, 41, "SUCCESS", {"cpu": 4.0, "mem_mb": 512.0}, 4096, 1000),
                     ("merge", 42, 50, "FAILURE" if i % 4 == 0 else "SUCCESS")])
    dag = learn(runs).dag()
    edge = dag.edge("split", "work")
    assert edge.transfer_bytes == 4096 and edge.delay_ms == 2.0 and edge.kind == "sequence"
    assert dag.edge("work", "merge").transfer_bytes == 3000  # the batch's outputs together
    work = dag.nodes["work"]
    assert work.max_batch == 3 and work.executions == 60
    assert work.resources["cpu"]["mean"] == 4.0 and work.resources["mem_mb"]["max"] == 512.0
    assert dag.nodes["merge"].outcomes == {"FAILURE": 5, "SUCCESS": 15}
    assert dag.nodes["work"].in_bytes_mean == 4096


def test_text_dot_and_json_exports_describe_the_same_graph():
    runs = [[("a", 0, 10), ("b", 10, 30), ("c", 10, 20), ("d", 30, 40)] for _ in range(5)]
    fp = learn(runs)
    dag = fp.dag()
    text = dag.render()
    assert "a -> b  parallel p=1.00" in text and "split=and" in text and "b || c" in text
    dot = fp.to_dot()
    assert dot.startswith('digraph "w" {') and dot.count("->") == len(dag.edges) == 4
    assert "style=bold" in dot
    data = json.loads(dag.to_json())
    assert {(e["source"], e["target"]) for e in data["edges"]} == {(e.source, e.target) for e in dag.edges}
    assert {n["name"] for n in data["nodes"]} == {"a", "b", "c", "d"}
    described = json.loads(json.dumps(fp.describe()))
    assert described["dag"] == data and described["runs_in_window"] == 5


def test_rare_edges_are_dropped_as_noise_only_below_the_threshold():
    runs = [[("a", 0, 1), ("b", 1, 2)]] * 199 + [[("a", 0, 1), ("x", 1, 2)]]
    fp = learn(runs)
    assert fp.dag(min_probability=0.01).edge("a", "x") is None  # 0.5% of a's hand-overs
    assert fp.dag(min_probability=0.0).edge("a", "x").probability == pytest.approx(0.005)


def test_frequent_sequences_and_variants_count_runs():
    runs = [[("a", 0, 1), ("b", 1, 2), ("c", 2, 3)]] * 6 + [[("a", 0, 1), ("c", 1, 2)]] * 4
    fp = learn(runs)
    top = fp.frequent_sequences(min_support=0.5)
    assert top[0].tasks == ("a", "b", "c") and top[0].support == 0.6
    assert ("a", "c") not in [p.tasks for p in top] and fp.frequent_sequences(min_support=0.4)[-1].tasks == ("a", "c")
    assert [(v.tasks, v.count) for v in fp.variants()] == [(("a", "b", "c"), 6), (("a", "c"), 4)]
