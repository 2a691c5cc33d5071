"""DAG reconstruction on known DAGs with heavy parallelism, coincidences that must stay non-edges, and lineage."""

from __future__ import annotations

import random

import pytest

from fingerprint.temporal import Fingerprint, Window
from fingerprint.traces import run_signals


def replay(tasks: dict[str, tuple[str, list[str], float]], runs: int, seed: int = 0, dispatch_ms: int = 1000,
           jitter: float = 0.2, lineage: bool = False) -> Fingerprint:
    """Learn ``runs`` executions of ``tasks`` (id -> (name, parent ids, seconds)) scheduled as an engine would.

    Each task starts a uniform [0, dispatch_ms) delay after its last parent
    finished and runs its seconds times a lognormal jitter; with ``lineage``
    every task writes ``<id>.out`` and reads its parents' outputs.
    """
    rng = random.Random(seed)
    fp = Fingerprint("w", window=Window(runs=1000))
    t0 = 0
    for r in range(runs):
        finish: dict[str, int] = {}
        executions = []
        for tid, (name, parents, seconds) in tasks.items():  # ids are given in topological order
            start = max((finish[p] for p in parents), default=0) + int(rng.uniform(0, dispatch_ms))
            finish[tid] = start + int(seconds * 1000 * rng.lognormvariate(0, jitter))
            files = ([f"{p}.out" for p in parents], [f"{tid}.out"]) if lineage else (None, None)
            executions.append((name, start, finish[tid], "SUCCESS", None, None, None, *files))
        for s in run_signals("w", f"r{r}", executions, t0_ms=t0):
            fp.learn_one(s)
        t0 += max(finish.values()) + 10_000
    assert fp.issues == {}
    return fp


def edges(fp: Fingerprint) -> set[tuple[str, str]]:
    return {(e.source, e.target) for e in fp.dag().edges}


def lanes(samples: int, stages: list[tuple[str, float]]) -> dict:
    """prepare -> per sample a chain of stages (same names in every lane) -> report."""
    tasks = {"prep": ("prepare", [], 2.0)}
    for i in range(samples):
        parent = "prep"
        for name, seconds in stages:
            tid = f"{name}{i}"
            tasks[tid] = (name, [parent], seconds * (1 + 0.3 * (i % 3)))
            parent = tid
    tasks["report"] = ("report", [f"{stages[-1][0]}{i}" for i in range(samples)], 1.0)
    return tasks


def test_wide_fan_out_of_one_task_name_and_its_fan_in():
    tasks = {"split": ("split", [], 3.0)}
    tasks.update({f"work{i}": ("work", ["split"], 20.0 + i % 7) for i in range(40)})
    tasks["merge"] = ("merge", [f"work{i}" for i in range(40)], 2.0)
    fp = replay(tasks, runs=3)
    dag = fp.dag()
    assert edges(fp) == {("split", "work"), ("work", "merge")}
    assert dag.nodes["work"].executions == 120 and dag.nodes["work"].max_batch == 40
    assert dag.edge("split", "work").probability == 1.0 and dag.edge("work", "merge").probability == 1.0
    assert {e.evidence for e in dag.edges} == {"handover"}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_chains_of_parallel_stages_are_chains_not_a_tangle(seed):
    # 12 samples through trim -> align -> sort -> call, all lanes side by side: the stages overlap in
    # time across lanes, so "concurrent" stages must not hide the chain between them
    tasks = lanes(12, [("trim", 5.0), ("align", 30.0), ("sort", 8.0), ("call", 15.0)])
    fp = replay(tasks, runs=3, seed=seed)
    assert edges(fp) == {("prepare", "trim"), ("trim", "align"), ("align", "sort"), ("sort", "call"),
                         ("call", "report")}


def test_diamond_with_branches_that_take_turns_to_finish_last():
    tasks = {"a": ("a", [], 2.0), "b": ("b", ["a"], 10.0), "c": ("c", ["a"], 10.0), "d": ("d", ["b", "c"], 1.0)}
    fp = replay(tasks, runs=6, jitter=0.3)
    dag = fp.dag()
    assert edges(fp) == {("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")}
    assert dag.nodes["a"].split == "and" and dag.nodes["d"].join == "and"
    assert {e.kind for e in dag.edges} == {"parallel"}


def test_a_join_input_that_is_never_last_is_still_an_input():
    # b is always much faster than c: only c's finish ever starts d; b -> d is the join's other branch
    tasks = {"a": ("a", [], 2.0), "b": ("b", ["a"], 3.0), "c": ("c", ["a"], 30.0), "d": ("d", ["b", "c"], 1.0)}
    fp = replay(tasks, runs=3)
    dag = fp.dag()
    assert edges(fp) == {("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")}
    assert dag.edge("c", "d").evidence == "handover" and dag.edge("b", "d").evidence == "join"


def test_concurrent_tasks_that_happen_to_line_up_do_not_become_edges():
    # two independent pipelines in one workflow: x's finish sometimes falls just before b starts
    tasks = {"a": ("a", [], 10.0), "b": ("b", ["a"], 5.0), "c": ("c", ["b"], 5.0),
             "x": ("x", [], 10.5), "y": ("y", ["x"], 5.0)}
    fp = replay(tasks, runs=20, jitter=0.1)
    assert edges(fp) == {("a", "b"), ("b", "c"), ("x", "y")}


def test_quick_independent_starters_are_not_each_others_parents():
    # three zero-length set-up tasks at the start of every run, then the real work
    tasks = {"s1": ("fetch_index", [], 0.0), "s2": ("fetch_genome", [], 0.0), "s3": ("check_sheet", [], 0.0),
             "w": ("work", ["s1", "s2", "s3"], 10.0)}
    fp = replay(tasks, runs=5)
    found = edges(fp)
    assert not {("fetch_index", "fetch_genome"), ("fetch_genome", "fetch_index"), ("check_sheet", "fetch_index"),
                ("fetch_index", "check_sheet"), ("check_sheet", "fetch_genome"),
                ("fetch_genome", "check_sheet")} & found
    assert {s for s, t in found if t == "work"} <= {"fetch_index", "fetch_genome", "check_sheet"}


def test_lineage_proves_edges_timing_cannot_see_and_says_so():
    # 'index' feeds 'align' but always finishes long before 'trim' does: never a hand-over. 'stats' runs
    # beside 'trim' and feeds nothing. By timing both are equally plausible join inputs of 'align'
    tasks = {"in": ("input", [], 1.0), "idx": ("index", ["in"], 2.0), "trim": ("trim", ["in"], 40.0),
             "al": ("align", ["idx", "trim"], 10.0), "x": ("stats", ["in"], 39.0)}
    timing_only = replay(tasks, runs=3, seed=4).dag()
    assert {timing_only.edge("index", "align").evidence, timing_only.edge("stats", "align").evidence} <= {
        "join", "handover"}
    fp = replay(tasks, runs=3, seed=4, lineage=True)
    dag = fp.dag()
    assert edges(fp) == {("input", "index"), ("input", "trim"), ("input", "stats"), ("index", "align"),
                         ("trim", "align")}
    proven = dag.edge("index", "align")
    assert proven.evidence == "lineage" and proven.confidence == 1.0 and proven.artifacts == 1
    assert proven.count == 3 and proven.delay_ms > 30_000  # the artifact waited for trim
    assert dag.edge("stats", "align") is None  # finishes right before align starts, but align never reads it


def test_targets_without_lineage_fall_back_to_timing_in_the_same_dag():
    tasks = {"a": ("a", [], 5.0), "b": ("b", ["a"], 5.0), "c": ("c", ["b"], 5.0)}
    rng = random.Random(0)
    fp = Fingerprint("w")
    for r in range(4):
        a_end = 5000 + rng.randrange(100)
        b_start = a_end + rng.randrange(500)
        b_end = b_start + 5000
        c_start = b_end + rng.randrange(500)
        executions = [("a", 0, a_end, "SUCCESS", None, None, None, [], ["a.out"]),
                      ("b", b_start, b_end, "SUCCESS", None, None, None, ["a.out"], ["b.out"]),
                      ("c", c_start, c_start + 5000)]  # c declares nothing
        for s in run_signals("w", f"r{r}", executions, t0_ms=100_000 * r):
            fp.learn_one(s)
    dag = fp.dag()
    assert [(e.source, e.target, e.evidence) for e in dag.edges] == [("a", "b", "lineage"), ("b", "c", "handover")]
    assert tasks  # the same shape as the other tests' DAGs


def test_an_artifact_read_before_it_was_written_proves_nothing():
    executions = [("a", 0, 10, "SUCCESS", None, None, None, [], ["f"]),
                  ("b", 5, 20, "SUCCESS", None, None, None, ["f"], [])]  # b started before a wrote f
    fp = Fingerprint("w")
    for s in run_signals("w", "r", executions):
        fp.learn_one(s)
    assert fp.dag().edge("a", "b") is None


def test_a_step_that_names_no_input_keeps_its_ordering_dependency_from_timing():
    # 'notify' reads no artifact but always waits for 'publish': lineage cannot show it, timing does
    fp = Fingerprint("w")
    rng = random.Random(5)
    for r in range(4):
        publish_end = 8000 + rng.randrange(2000)
        notify_start = publish_end + rng.randrange(300)
        executions = [("build", 0, 5000, "SUCCESS", None, None, None, ["src"], ["pkg"]),
                      ("publish", 5100, publish_end, "SUCCESS", None, None, None, ["pkg"], []),
                      ("notify", notify_start, notify_start + 100, "SUCCESS", None, None, None, [], [])]
        for s in run_signals("w", f"r{r}", executions, t0_ms=100_000 * r):
            fp.learn_one(s)
    dag = fp.dag()
    assert [(e.source, e.target, e.evidence) for e in dag.edges] == [
        ("build", "publish", "lineage"), ("publish", "notify", "handover")]


def qc_report(samples: int) -> dict:
    """Per sample: fastqc beside align -> call; align -> stats; a report gathers fastqc, stats and call."""
    tasks = {"in": ("input", [], 1.0)}
    for i in range(samples):
        tasks[f"q{i}"] = ("fastqc", ["in"], 2.0 + i % 3)
        tasks[f"a{i}"] = ("align", ["in"], 30.0 + i % 4)
        tasks[f"s{i}"] = ("stats", [f"a{i}"], 1.0)
        tasks[f"c{i}"] = ("call", [f"a{i}"], 15.0)
    tasks["rep"] = ("report", [f"{k}{i}" for i in range(samples) for k in "qsc"], 1.0)
    return tasks


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_inputs_of_the_final_report_that_are_never_last_feed_it_as_collector_guesses(seed):
    # fastqc and stats always finish long before the slowest 'call': timing never shows them handing over
    fp = replay(qc_report(6), runs=3, seed=seed)
    dag = fp.dag()
    assert edges(fp) == {("input", "fastqc"), ("input", "align"), ("align", "stats"), ("align", "call"),
                         ("call", "report"), ("fastqc", "report"), ("stats", "report")}
    guessed = {(e.source, e.target): e for e in dag.edges if e.evidence == "collector"}
    assert set(guessed) == {("fastqc", "report"), ("stats", "report")}
    # confidence: one over the tasks that always follow the input (fastqc: stats, call, report)
    assert guessed[("fastqc", "report")].confidence == round(1 / 3, 4)
    assert guessed[("stats", "report")].confidence == 1.0
    assert dag.edge("call", "report").evidence == "handover"


def test_a_side_branch_that_ends_the_runs_collects_nothing():
    # 'archive' runs longest and ends every run: what finishes before the report is not its input
    tasks = qc_report(4)
    tasks["arc"] = ("archive", ["in"], 90.0)
    found = edges(replay(tasks, runs=3))
    assert not {(s, t) for s, t in found if t in ("archive", "report") and s in ("fastqc", "stats")}
    assert ("input", "archive") in found and ("call", "report") in found


def test_a_timing_edge_between_single_tasks_that_another_run_contradicts_is_dropped():
    # 'probe' finishes right before 'work' starts in two runs, the only finish near it: a hand-over by
    # timing alone. In the third run probe is still running when work starts (and 'log' happens to
    # finish just before): a dependency never starts before its input is done
    fp = Fingerprint("w")
    spans = [[("setup", 0, 1000), ("probe", 200, 4900), ("work", 5000, 9000)],
             [("setup", 0, 1100), ("probe", 250, 5050), ("work", 5100, 9100)],
             [("setup", 0, 1000), ("probe", 220, 8000), ("log", 4000, 4950), ("work", 5050, 9050)]]
    for r, run in enumerate(spans):
        for s in run_signals("w", f"r{r}", [(t, s, f, "SUCCESS") for t, s, f in run], t0_ms=100_000 * r):
            fp.learn_one(s)
    dag = fp.dag()
    assert dag.edge("probe", "work") is None
    assert dag.nodes["work"].executions == 3


def test_set_up_that_most_of_the_workflow_follows_is_not_guessed_into_the_report():
    # 'index' is read by align but always finishes long before trim does: timing never shows the
    # hand-over, and most of the workflow comes after it, so it is not taken for a report input
    tasks = {"in": ("input", [], 1.0), "idx": ("index", ["in"], 0.5)}
    for i in range(4):
        tasks[f"t{i}"] = ("trim", ["in"], 10.0 + i)
        tasks[f"a{i}"] = ("align", [f"t{i}", "idx"], 20.0)
        tasks[f"s{i}"] = ("sort", [f"a{i}"], 5.0)
        tasks[f"m{i}"] = ("markdup", [f"s{i}"], 5.0)
        tasks[f"c{i}"] = ("call", [f"m{i}"], 8.0)
    tasks["rep"] = ("report", [f"c{i}" for i in range(4)], 1.0)
    dag = replay(tasks, runs=3).dag()
    assert dag.edge("index", "report") is None
    assert dag.edge("call", "report").evidence == "handover"
