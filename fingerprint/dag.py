"""Reconstruct a workflow's task DAG from the timed executions of its runs.

Which tasks depend on which is settled in this order:

* **lineage** (`fingerprint.lineage`): where a task names the artifacts it
  read, an edge ``a -> b`` is proven when ``b`` read what ``a`` wrote earlier in
  the same run; such a task's incoming edges come from lineage alone;
* **hand-over** (`fingerprint.handover`): every other start is explained by the
  finish that triggered it, the dependency being the source that is a
  candidate in nearly all of a task's starts across the window, a coincidence
  only now and then (expectation-maximisation over the starts). A run's
  beginning is a source too, so tasks that start runs are nobody's children;
* **join**: at a join only the last input to finish triggers the start. An
  input that never is (always faster than its sibling) is found as a task that
  runs once per run, hands over to nothing, is a branch of the same fork as a
  trigger of the join, and is the last thing to finish before the join starts.

* **collector**: a task that still hands over to nothing (and does not end
  runs) feeds the latest task that always starts after it, when that task is
  what ends runs: a final report gathering results, the usual sink of inputs
  that are never a join's last.

Timing edges between tasks that run once per run are dropped when some run has
the target starting before the source finished: a dependency never does.

Each edge says which (``evidence`` lineage, handover, join or collector) and how
sure it is (``confidence``: 1 for lineage, the share of the target's starts the
source explains for a hand-over, the siblings' concurrency for a join input,
one over the number of tasks that always follow the input for a collector).

Two tasks are **concurrent** when, in runs that contain both, their activity
instances overlap in time, or they run in both orders about equally often (a
fork whose branches happen to execute one after the other). The score is
``(overlapping runs + 2 min(a-first runs, b-first runs)) / those runs``; runs
where the two interleave (a loop) are left out as uninformative. Tasks that run
in both orders are never each other's trigger. Two tasks are **exclusive** when
they almost never occur in the same run (the branches of a choice).

An edge's probability is the share of ``a``'s activity instances that handed
over to ``b``: about 1 for every branch of a fork, ``p`` and ``1 - p`` for the
branches of a choice. A node's split (join) is ``and`` when all its successors
(predecessors) are pairwise concurrent, ``xor`` when pairwise exclusive, ``or``
otherwise. Repeated executions of one task that overlap each other (a parallel
batch, e.g. 40 ``blastall`` jobs) count as one activity instance for counting;
the node remembers the batch width. Dependencies are found per execution, so
many parallel instances of one task (one per sample) still show the chain
between their stages. Loops show up as back edges, so "DAG" is the usual name
rather than a promise.

>>> from fingerprint.runs import Run
>>> def run(rid, *spans):
...     r = Run(rid, first_ms=0)
...     for task, s, f in spans:
...         r.start(task, s, "n", None, None)
...     for task, s, f in sorted(spans, key=lambda x: x[2]):
...         r.finish(task, f, "SUCCESS", None)
...     r.close(max(f for _, _, f in spans), True)
...     return r
>>> fork = [run(f"r{i}", ("a", 0, 10), ("b", 10, 30), ("c", 10, 20), ("d", 30, 40)) for i in range(5)]
>>> dag = TaskDag.reconstruct(fork)
>>> sorted((e.source, e.target, e.kind) for e in dag.edges)
[('a', 'b', 'parallel'), ('a', 'c', 'parallel'), ('b', 'd', 'parallel'), ('c', 'd', 'parallel')]
>>> dag.nodes["a"].split, dag.nodes["d"].join
('and', 'and')
"""

from __future__ import annotations

import json
from bisect import bisect_right
from dataclasses import asdict, dataclass, field
from typing import Iterable

from fingerprint.handover import attribute_handovers
from fingerprint.lineage import declares_lineage, proven_pairs
from fingerprint.runs import Run
from fingerprint.signals import START
from fingerprint.stats import RunningStats, describe

#: Pairs scoring at least this are concurrent (see `TaskDag.reconstruct`).
CONCURRENCY_THRESHOLD = 0.5
#: Pairs co-occurring in less than this share of the rarer task's runs are exclusive.
EXCLUSIVE_THRESHOLD = 0.1
#: A timing edge must explain at least this many of its target's starts (expected hand-overs).
MIN_HANDOVERS = 0.5


@dataclass
class TaskNode:
    """A task: how often it runs, how long, on what, and how it splits and joins."""

    name: str
    runs: int = 0                 # runs containing the task
    support: float = 0.0          # runs / runs in window
    executions: int = 0
    duration_ms: dict = field(default_factory=dict)  # count, mean, std, min, p50, p90, p99, max
    offset_ms: float = 0.0        # mean start offset from the run's first signal (orders the rendering)
    max_batch: int = 1            # widest batch of overlapping executions of this task in one run
    resources: dict = field(default_factory=dict)    # key -> {mean, min, max}
    outcomes: dict = field(default_factory=dict)     # outcome -> count
    in_bytes_mean: float | None = None
    out_bytes_mean: float | None = None
    start_share: float = 0.0      # share of runs that start with this task
    end_share: float = 0.0        # share of ended runs whose last finish is this task
    split: str = "none"           # none | and | xor | or
    join: str = "none"


@dataclass
class TaskEdge:
    """A dependency ``source -> target`` with its kind, probability, hand-over delay and data size."""

    source: str
    target: str
    kind: str                     # sequence | parallel | choice
    count: int
    probability: float            # share of source executions that handed over to target
    join_share: float             # share of target executions that source fed
    delay_ms: float | None        # mean gap from source finish to target start
    transfer_bytes: float | None  # mean data_size_bytes written by the source on this edge
    evidence: str = "handover"    # lineage: proven by artifacts; handover, join or collector: inferred
    confidence: float = 1.0       # lineage 1; handover: share of the target's starts the source's finish
                                  # explains; join: how clearly the source runs beside the target's trigger;
                                  # collector: one over the number of tasks that always follow the source
    artifacts: int = 0            # distinct artifacts the source wrote and the target read (lineage)


@dataclass
class TaskDag:
    """The reconstructed DAG of one workflow over the runs of a window."""

    workflow_id: str
    runs: int
    nodes: dict[str, TaskNode]
    edges: list[TaskEdge]
    concurrent: list[tuple[str, str, float]]  # pairs judged concurrent, with their score
    exclusive: list[tuple[str, str]]

    def edge(self, source: str, target: str) -> TaskEdge | None:
        for e in self.edges:
            if e.source == source and e.target == target:
                return e
        return None

    def successors(self, task: str) -> list[TaskEdge]:
        return [e for e in self.edges if e.source == task]

    # -- reconstruction --------------------------------------------------------------------

    @classmethod
    def reconstruct(cls, runs: Iterable[Run], workflow_id: str = "",
                    min_probability: float = 0.01) -> TaskDag:
        """Build the DAG from ``runs``; edges rarer than ``min_probability`` are noise and dropped."""
        runs = list(runs)
        instances = [_activity_instances(r) for r in runs]
        stats = _NodeStats()
        for run, (inst, _) in zip(runs, instances):
            stats.add_run(run, inst)
        pairs = _pair_relations([inst for inst, _ in instances])
        concurrent: dict[frozenset, float] = {}
        exclusive: set[frozenset] = set()
        for key, (cooc, overlap, ab, ba) in pairs.items():
            # runs where the pair interleaves (a loop) say nothing about concurrency: left out
            informative = overlap + ab + ba
            score = (overlap + 2 * min(ab, ba)) / informative if informative else 0.0
            if score >= CONCURRENCY_THRESHOLD:
                concurrent[key] = score
        names = sorted(stats.runs_with)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                key = frozenset((a, b))
                cooc = pairs.get(key, (0,))[0]
                rarer = min(stats.runs_with[a], stats.runs_with[b])
                if rarer and cooc / rarer < EXCLUSIVE_THRESHOLD:
                    exclusive.add(key)

        ordered_both_ways = {k for k, (_, _, ab, ba) in pairs.items()
                             if ab and ba and 2 * min(ab, ba) / (ab + ba) >= CONCURRENCY_THRESHOLD}
        offsets = {name: stat.mean or 0.0 for name, stat in stats.offsets.items()}
        sources = _edge_sources(runs, ordered_both_ways)
        once = {name for name, k in stats.runs_with.items() if stats.offsets[name].count == k}
        _drop_out_of_order(sources, pairs, once)
        _add_join_edges(sources, pairs, concurrent, offsets, once, runs)
        enders = {name for name, k in stats.last.items() if 2 * k >= stats.ended_runs}  # end half the runs
        _add_collector_edges(sources, runs, offsets, enders)
        edge_count: dict[tuple[str, str], int] = {}
        edge_delay: dict[tuple[str, str], RunningStats] = {}
        edge_bytes: dict[tuple[str, str], RunningStats] = {}
        for run, (inst, of_execution) in zip(runs, instances):
            for (x, y, gap) in _handed_over(run, inst, of_execution, sources):
                key = (x.task, y.task)
                edge_count[key] = edge_count.get(key, 0) + 1
                edge_delay.setdefault(key, RunningStats()).add(gap)
                if x.out_bytes is not None:
                    edge_bytes.setdefault(key, RunningStats()).add(x.out_bytes)

        nodes = stats.nodes(len(runs))
        edges = []
        for (a, b), n in edge_count.items():
            p = n / stats.instances[a]
            if p < min_probability:
                continue
            tb = edge_bytes.get((a, b))
            evidence, confidence, artifacts = sources.evidence[(a, b)]
            edges.append(TaskEdge(a, b, "sequence", n, p, n / stats.instances[b],
                                  edge_delay[(a, b)].mean, tb.mean if tb else None,
                                  evidence, confidence, artifacts))
        _classify(nodes, edges, concurrent, exclusive)
        order = {name: (node.offset_ms, name) for name, node in nodes.items()}
        edges.sort(key=lambda e: (order[e.source], order[e.target]))
        return cls(workflow_id, len(runs), dict(sorted(nodes.items(), key=lambda kv: order[kv[0]])), edges,
                   sorted((*sorted(k), round(v, 3)) for k, v in concurrent.items()),
                   sorted(tuple(sorted(k)) for k in exclusive))

    # -- explanation and export ------------------------------------------------------------

    def to_dict(self) -> dict:
        return {"workflow_id": self.workflow_id, "runs": self.runs,
                "nodes": [asdict(n) for n in self.nodes.values()],
                "edges": [asdict(e) for e in self.edges],
                "concurrent": [list(c) for c in self.concurrent],
                "exclusive": [list(x) for x in self.exclusive]}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def to_dot(self) -> str:
        """Graphviz DOT: solid sequence, bold parallel, dashed choice edges, labelled ``p`` and delay."""
        lines = [f'digraph "{_esc(self.workflow_id)}" {{', "  rankdir=LR;",
                 '  node [shape=box, fontname="Helvetica"];']
        for node in self.nodes.values():
            d = node.duration_ms
            label = f"{node.name}\\n{_ms(d.get('mean'))} ±{_ms(d.get('std'))}\\nsupport {node.support:.0%}"
            if node.max_batch > 1:
                label += f"\\nbatch ×{node.max_batch}"
            lines.append(f'  "{_esc(node.name)}" [label="{_esc_label(label)}"];')
        style = {"sequence": "solid", "parallel": "bold", "choice": "dashed"}
        for e in self.edges:
            label = f"{e.kind} p={e.probability:.2f}\\n{_evidence(e)}"
            if e.delay_ms is not None:
                label += f"\\n+{_ms(e.delay_ms)}"
            if e.transfer_bytes is not None:
                label += f"\\n{_bytes(e.transfer_bytes)}"
            lines.append(f'  "{_esc(e.source)}" -> "{_esc(e.target)}" '
                         f'[label="{_esc_label(label)}", style={style[e.kind]}];')
        lines.append("}")
        return "\n".join(lines) + "\n"

    def render(self) -> str:
        """Plain-text explanation: tasks with timings, then edges with kinds and probabilities."""
        out = [f"workflow {self.workflow_id}: {self.runs} runs, {len(self.nodes)} tasks, {len(self.edges)} edges"]
        out.append("tasks (in mean start order):")
        width = max((len(n) for n in self.nodes), default=4)
        for node in self.nodes.values():
            d = node.duration_ms
            line = (f"  {node.name:<{width}}  in {node.support:>4.0%} of runs  n={node.executions:<5} "
                    f"duration {_ms(d.get('mean'))} ±{_ms(d.get('std'))} "
                    f"(p50 {_ms(d.get('p50'))}, p90 {_ms(d.get('p90'))})")
            if node.max_batch > 1:
                line += f"  batch ×{node.max_batch}"
            if node.split != "none":
                line += f"  split={node.split}"
            if node.join != "none":
                line += f"  join={node.join}"
            if node.resources:
                line += "  " + " ".join(f"{k}={v['mean']:g}" for k, v in node.resources.items())
            out.append(line)
        out.append("edges:")
        for e in self.edges:
            line = (f"  {e.source} -> {e.target}  {e.kind:<8} p={e.probability:.2f}  n={e.count}")
            if e.delay_ms is not None:
                line += f"  hand-over {_ms(e.delay_ms)}"
            if e.transfer_bytes is not None:
                line += f"  moves {_bytes(e.transfer_bytes)}"
            line += f"  [{_evidence(e)}]"
            out.append(line)
        starts = [f"{n.name} {n.start_share:.0%}" for n in self.nodes.values() if n.start_share > 0]
        ends = [f"{n.name} {n.end_share:.0%}" for n in self.nodes.values() if n.end_share > 0]
        out.append("starts with: " + (", ".join(starts) or "-"))
        out.append("ends with: " + (", ".join(ends) or "-"))
        if self.concurrent:
            out.append("concurrent: " + ", ".join(f"{a} || {b}" for a, b, _ in self.concurrent))
        return "\n".join(out) + "\n"


# -- the reconstruction steps ---------------------------------------------------------------


@dataclass(slots=True)
class _Instance:
    """Overlapping executions of one task in one run, merged: the unit relations are computed on."""

    task: str
    start: int
    finish: int
    width: int
    out_bytes: int | None


def _activity_instances(run: Run) -> tuple[list[_Instance], list[_Instance]]:
    """The run's activity instances sorted by start, and the instance each execution belongs to."""
    by_task: dict[str, list] = {}
    for n, e in enumerate(run.executions):
        by_task.setdefault(e.task, []).append((e.start_ms, _finish(e), e.out_bytes, n))
    out = []
    of_execution: list[_Instance] = [None] * len(run.executions)
    for task, spans in by_task.items():
        spans.sort()
        cur = None
        for s, f, ob, n in spans:
            if cur is not None and s < cur.finish:  # overlaps the batch so far: same instance
                cur.finish = max(cur.finish, f)
                cur.width += 1
                if ob is not None:
                    cur.out_bytes = (cur.out_bytes or 0) + ob
            else:
                cur = _Instance(task, s, f, 1, ob)
                out.append(cur)
            of_execution[n] = cur
    out.sort(key=lambda i: (i.start, i.finish, i.task))
    return out, of_execution


def _finish(e) -> int:
    # an execution still running when the run was evicted counts as an instant
    return e.finish_ms if e.finish_ms is not None else e.start_ms


@dataclass
class _EdgeSources:
    """Per target task, its source tasks and how each edge is known: (evidence, confidence, artifacts)."""

    of_target: dict[str, set[str]]
    evidence: dict[tuple[str, str], tuple[str, float, int]]
    roots: set[str]  # tasks the run's beginning hands over to
    with_lineage: set[str] = field(default_factory=set)  # tasks whose incoming edges lineage settles

    def triggers(self, task: str) -> set[str]:
        """Sources of ``task``'s hand-overs, with `START` for a task that starts runs."""
        found = {a for a in self.of_target.get(task, ()) if self.evidence[(a, task)][0] == "handover"}
        return found | {START} if task in self.roots else found


def _edge_sources(runs: list[Run], ordered_both_ways: set[frozenset]) -> _EdgeSources:
    """Which task pairs are edges: proven by lineage where the target declares it, else by hand-over timing."""
    with_lineage: set[str] = set()
    artifacts: dict[tuple[str, str], set[str]] = {}
    for run in runs:
        ex = run.executions
        with_lineage.update(e.task for e in ex if declares_lineage(e))
        for i, j, artifact in proven_pairs(ex):
            artifacts.setdefault((ex[i].task, ex[j].task), set()).add(artifact)
    evidence = {k: ("lineage", 1.0, len(v)) for k, v in artifacts.items() if k[1] in with_lineage}
    timed = {e.task for run in runs for e in run.executions} - with_lineage
    roots: set[str] = set()
    if timed:
        # the run's beginning hands over too: to the tasks that start it (a pseudo-task finishing then)
        spans = [[(START, run.first_ms, run.first_ms), *((e.task, e.start_ms, _finish(e)) for e in run.executions)]
                 for run in runs]
        handovers = attribute_handovers(spans, ordered_both_ways, timed)
        for (a, b), h in handovers.handovers.items():
            if h >= MIN_HANDOVERS:
                if a == START:
                    roots.add(b)
                else:
                    evidence[(a, b)] = ("handover", round(handovers.confidence(a, b), 4), 0)
    of_target: dict[str, set[str]] = {}
    for a, b in evidence:
        of_target.setdefault(b, set()).add(a)
    return _EdgeSources(of_target, evidence, roots, with_lineage)


def _drop_out_of_order(sources: _EdgeSources, pairs, once: set[str]) -> None:
    """Drop timing edges between tasks that run once per run where the target started before the source finished.

    A dependency never starts before its input exists; a hand-over that
    explained some starts while another run shows the opposite or an overlap
    was a coincidence. Tasks with many executions per run are left alone: one
    of their executions may depend on another task that others run beside.
    """
    for (a, b), (evidence, _, _) in list(sources.evidence.items()):
        if evidence != "handover" or a not in once or b not in once:
            continue
        rel = pairs.get(frozenset((a, b)))
        if rel is not None and (rel[2] if a < b else rel[3]) != rel[0]:
            del sources.evidence[(a, b)]
            sources.of_target[b].discard(a)


def _add_join_edges(sources: _EdgeSources, pairs, concurrent: dict[frozenset, float],
                    offsets: dict[str, float], once: set[str], runs: list[Run]) -> None:
    """A join's other inputs: tasks whose finish hands over to nothing but that always precede a join.

    At a join only the last input to finish triggers the start, so an input that
    is always faster than a concurrent sibling never shows as a hand-over. A task
    ``z`` with no outgoing edge that runs concurrently with a source ``x`` of a
    timing edge ``x -> y``, shares a trigger with ``x`` (the two are branches of
    one fork) and finished before ``y`` started in every run with
    both, with no other task starting in between, feeds the earliest such ``y``
    (a sink that merely finished early has other starts after it). Only tasks that run ``once`` per run
    count: concurrency between many parallel instances of two tasks (one per
    sample, say) says nothing about their siblinghood, and on real workflows the
    rule then adds far more wrong edges than right ones.
    """
    has_out = {a for a, _ in sources.evidence}
    for z in sorted(({n for key in concurrent for n in key} & once) - has_out):
        joins = []
        for y, srcs in sources.of_target.items():
            if y == z or z in srcs or y not in once:
                continue
            rel = pairs.get(frozenset((z, y)))
            if rel is None or (rel[2] if z < y else rel[3]) != rel[0]:
                continue  # not before y in every run where both ran
            forked = sources.triggers(z)  # z and x must be branches of one fork: a common trigger
            score = max((concurrent.get(frozenset((z, x)), 0.0) for x in srcs
                         if x in once and sources.evidence[(x, y)][0] != "lineage"
                         and forked & sources.triggers(x)), default=0.0)
            if score >= CONCURRENCY_THRESHOLD and _next_to_start(z, y, runs):
                joins.append((offsets.get(y, 0.0), y, score))
        if joins:
            _, y, score = min(joins)
            sources.evidence[(z, y)] = ("join", round(score, 4), 0)
            sources.of_target[y].add(z)


def _add_collector_edges(sources: _EdgeSources, runs: list[Run], offsets: dict[str, float],
                         enders: set[str]) -> None:
    """An input nothing else consumes feeds the run's final collector (a report that gathers every result).

    A task's output is read by someone, yet a task that is never the last input
    of a join hands over to nothing: timing alone cannot show where its output
    goes. If it is not what ends runs, and the latest task to start after it
    (finished before that task's first start in every run with it) is what ends
    runs, the likeliest reader is that collector (a MultiQC-like report step).
    A task that more than half of the workflow's tasks always follow is set-up
    (an index, a reference): its reader is an early join, not the report, and
    it is left without a guess.
    Such an edge is a guess from the workflow's shape, not from a hand-over: its
    evidence is ``collector``, its confidence one over the number of tasks that
    always follow the input (the chance of the pick were it made blindly among
    them: low, as a guess from shape should be).
    """
    bounds: list[dict[str, tuple[int, int]]] = []
    for run in runs:
        b: dict[str, tuple[int, int]] = {}
        for e in run.executions:
            start, done = e.start_ms, _finish(e)
            lo, hi = b.get(e.task, (start, done))
            b[e.task] = (min(lo, start), max(hi, done))
        bounds.append(b)
    names = sorted({t for b in bounds for t in b})
    has_out = {a for a, _ in sources.evidence}
    for z in names:
        if z in has_out or z in enders:
            continue
        with_z = [b for b in bounds if z in b]
        after = [y for y in names if y != z and all(y in b and b[z][1] <= b[y][0] for b in with_z)]
        if not after or 2 * len(after) > len(names):  # set-up: read by an early join
            continue
        y = max(after, key=lambda t: (offsets.get(t, 0.0), t))
        if y in enders and y not in sources.with_lineage:
            sources.evidence[(z, y)] = ("collector", round(1 / len(after), 4), 0)
            sources.of_target.setdefault(y, set()).add(z)


def _next_to_start(z: str, y: str, runs: list[Run]) -> bool:
    """Whether in every run with both, ``y`` is the first task to start after ``z`` finished."""
    for run in runs:
        done = next((_finish(e) for e in run.executions if e.task == z), None)
        start = next((e.start_ms for e in run.executions if e.task == y), None)
        if done is None or start is None:
            continue
        if any(done <= e.start_ms < start and e.task not in (z, y) for e in run.executions):
            return False
    return True


def _handed_over(run: Run, inst: list[_Instance], of_execution: list[_Instance], sources: _EdgeSources):
    """Distinct (source instance, target instance, hand-over gap) of this run along the known edges.

    A target execution is fed by lineage where it declares it, else by the latest
    execution of each source task that finished before it started.
    """
    ex = run.executions
    finishes: dict[str, list[tuple[int, int]]] = {}
    for n, e in enumerate(ex):
        finishes.setdefault(e.task, []).append((_finish(e), n))
    for f in finishes.values():
        f.sort()
    seen: set[tuple[int, int]] = set()
    proven = {(i, j) for i, j, _ in proven_pairs(ex)} if any(e.inputs for e in ex) else set()
    for j, e in enumerate(ex):
        y = of_execution[j]
        for source in sources.of_target.get(e.task, ()):
            if sources.evidence[(source, e.task)][0] == "lineage":
                feeders = [n for _, n in finishes.get(source, ()) if (n, j) in proven]
            else:
                done = finishes.get(source, ())
                k = bisect_right(done, (e.start_ms, len(ex))) - 1
                feeders = [done[k][1]] if k >= 0 else []
            for i in feeders:
                x = of_execution[i]
                if x is not y and (id(x), id(y)) not in seen:
                    seen.add((id(x), id(y)))
                    yield x, y, e.start_ms - _finish(ex[i])


def _pair_relations(instances: list[list[_Instance]]) -> dict[frozenset, tuple[int, int, int, int]]:
    """Per unordered task pair: runs with both, runs where they overlap, runs a-only-before-b, b-before-a.

    ``ab``/``ba`` are counted only in runs without overlap, with ``a`` the
    alphabetically first task of the pair.
    """
    rel: dict[frozenset, list[int]] = {}
    for inst in instances:
        spans: dict[str, list[_Instance]] = {}
        for i in inst:
            spans.setdefault(i.task, []).append(i)
        names = sorted(spans)
        bounds = {t: (min(i.start for i in s), max(i.finish for i in s)) for t, s in spans.items()}
        for x, a in enumerate(names):
            a_start, a_finish = bounds[a]
            for b in names[x + 1:]:
                b_start, b_finish = bounds[b]
                # all of one strictly before all of the other: no pair needs looking at
                if a_finish < b_start:
                    overlap, a_first, b_first = False, True, False
                elif b_finish < a_start:
                    overlap, a_first, b_first = False, False, True
                else:
                    overlap, a_first, b_first = _interleaving(spans[a], spans[b])
                r = rel.setdefault(frozenset((a, b)), [0, 0, 0, 0])
                r[0] += 1
                if overlap:
                    r[1] += 1
                elif a_first and not b_first:
                    r[2] += 1
                elif b_first and not a_first:
                    r[3] += 1
    return {k: tuple(v) for k, v in rel.items()}


def _interleaving(xs: list[_Instance], ys: list[_Instance]) -> tuple[bool, bool, bool]:
    """Whether some x overlaps some y, some x precedes some y, some y precedes some x."""
    overlap = a_first = b_first = False
    for i in xs:
        for j in ys:
            if i.start < j.finish and j.start < i.finish:
                overlap = True
            elif i.finish < j.start or (i.finish == j.start and (i.start, i.task) <= (j.start, j.task)):
                a_first = True
            else:
                b_first = True
    return overlap, a_first, b_first


class _NodeStats:
    """Per-task aggregates over the window's runs."""

    def __init__(self):
        self.runs_with: dict[str, int] = {}
        self.instances: dict[str, int] = {}
        self.durations: dict[str, list[float]] = {}
        self.offsets: dict[str, RunningStats] = {}
        self.max_batch: dict[str, int] = {}
        self.resources: dict[str, dict[str, list[float]]] = {}
        self.outcomes: dict[str, dict[str, int]] = {}
        self.in_bytes: dict[str, RunningStats] = {}
        self.out_bytes: dict[str, RunningStats] = {}
        self.first: dict[str, int] = {}
        self.last: dict[str, int] = {}
        self.ended_runs = 0

    def add_run(self, run: Run, inst: list[_Instance]) -> None:
        for name in {e.task for e in run.executions}:
            self.runs_with[name] = self.runs_with.get(name, 0) + 1
        for i in inst:
            self.instances[i.task] = self.instances.get(i.task, 0) + 1
            self.max_batch[i.task] = max(self.max_batch.get(i.task, 1), i.width)
        for e in run.executions:
            self.offsets.setdefault(e.task, RunningStats()).add(e.start_ms - run.first_ms)
            if e.finish_ms is not None:
                self.durations.setdefault(e.task, []).append(e.finish_ms - e.start_ms)
                if e.outcome:
                    oc = self.outcomes.setdefault(e.task, {})
                    oc[e.outcome] = oc.get(e.outcome, 0) + 1
                if e.out_bytes is not None:
                    self.out_bytes.setdefault(e.task, RunningStats()).add(e.out_bytes)
            if e.in_bytes is not None:
                self.in_bytes.setdefault(e.task, RunningStats()).add(e.in_bytes)
            if e.resources:
                res = self.resources.setdefault(e.task, {})
                for k, v in e.resources.items():
                    res.setdefault(k, []).append(v)
        if run.started:
            self.first[run.started[0]] = self.first.get(run.started[0], 0) + 1
        if run.ended:
            self.ended_runs += 1
            finished = [e for e in run.executions if e.finish_ms is not None]
            if finished:
                last = max(finished, key=lambda e: (e.finish_ms, e.start_ms)).task
                self.last[last] = self.last.get(last, 0) + 1

    def nodes(self, n_runs: int) -> dict[str, TaskNode]:
        out = {}
        for name, k in self.runs_with.items():
            res = {key: {"mean": sum(v) / len(v), "min": min(v), "max": max(v)}
                   for key, v in self.resources.get(name, {}).items()}
            ib, ob = self.in_bytes.get(name), self.out_bytes.get(name)
            out[name] = TaskNode(
                name=name, runs=k, support=k / n_runs if n_runs else 0.0,
                executions=self.offsets[name].count,
                duration_ms=describe(self.durations.get(name, [])),
                offset_ms=self.offsets[name].mean or 0.0,
                max_batch=self.max_batch.get(name, 1), resources=res,
                outcomes=dict(self.outcomes.get(name, {})),
                in_bytes_mean=ib.mean if ib else None, out_bytes_mean=ob.mean if ob else None,
                start_share=self.first.get(name, 0) / n_runs if n_runs else 0.0,
                end_share=self.last.get(name, 0) / self.ended_runs if self.ended_runs else 0.0)
        return out


def _gateway(names: list[str], concurrent, exclusive) -> str:
    if len(names) < 2:
        return "none"
    pairs = [frozenset((a, b)) for i, a in enumerate(names) for b in names[i + 1:]]
    if all(p in concurrent for p in pairs):
        return "and"
    if all(p in exclusive for p in pairs):
        return "xor"
    return "or"


def _classify(nodes: dict[str, TaskNode], edges: list[TaskEdge], concurrent, exclusive) -> None:
    succ: dict[str, list[str]] = {}
    pred: dict[str, list[str]] = {}
    for e in edges:
        succ.setdefault(e.source, []).append(e.target)
        pred.setdefault(e.target, []).append(e.source)
    for name, node in nodes.items():
        node.split = _gateway(succ.get(name, []), concurrent, exclusive)
        node.join = _gateway(pred.get(name, []), concurrent, exclusive)
    for e in edges:
        siblings = [t for t in succ[e.source] if t != e.target]
        co_preds = [s for s in pred[e.target] if s != e.source]
        if any(frozenset((e.target, t)) in concurrent for t in siblings) or \
                any(frozenset((e.source, s)) in concurrent for s in co_preds):
            e.kind = "parallel"
        elif siblings:
            e.kind = "choice"
        else:
            e.kind = "sequence"


def _evidence(e: TaskEdge) -> str:
    if e.evidence == "lineage":
        return f"lineage: {e.artifacts} artifact{'s' if e.artifacts != 1 else ''}"
    return f"{e.evidence} {e.confidence:.2f}"


def _ms(x: float | None) -> str:
    if x is None:
        return "?"
    if abs(x) >= 60_000:
        return f"{x / 60_000:.1f}min"
    if abs(x) >= 1000:
        return f"{x / 1000:.2f}s"
    return f"{x:.0f}ms"


def _bytes(x: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(x) < 1024 or unit == "GB":
            return f"{x:.0f}{unit}" if unit == "B" else f"{x:.1f}{unit}"
        x /= 1024
    return f"{x:.1f}GB"


def _esc(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"')


def _esc_label(s: str) -> str:
    # the label already carries DOT line breaks (\n); only quotes need escaping
    return s.replace('"', '\\"')
