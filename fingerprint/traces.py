"""Traces in: WorkflowSignal dicts from event logs, WfCommons instances and a synthetic process.

Every generator yields records with exactly the fields of
``schemas/workflow_signal.avsc``, in global timestamp order, with ``run_ended``
on each run's closing signal, so the output can go straight to the fingerprint,
the predictor, a `SignalStore` or a Kafka producer.

* `read_event_log` — CSV with case, activity and timestamp columns (any names).
  With a lifecycle column, ``start`` rows become start signals and
  ``complete`` rows finish signals (a ``complete`` with no open ``start`` is an
  instant: start and finish at the same time). Without one, each row is taken
  to **start** the activity at its timestamp, which then runs until the case's
  next event (the log says nothing else about it), and the case's last event
  has zero duration. So a case's activities never overlap: such a log has no
  concurrency in its timing, only in its order.
* `read_wfcommons` — a WfCommons instance (schema 1.4+ ``specification`` /
  ``execution``, or the older 1.3 ``workflow.tasks``) scheduled as early as its
  parents allow, runtimes divided by ``speed``.
* `MarkovProcess` — runs drawn from known transition probabilities, for tests
  and benchmarks that need the true answer.

>>> [(s["task"], s["state"], s["ts_ms"], s["run_ended"]) for s in run_signals("w", "r1", [("a", 0, 5), ("b", 5, 9)])]
[('a', 1, 0, False), ('a', 0, 5, False), ('b', 1, 5, False), ('b', 0, 9, True)]
"""

from __future__ import annotations

import csv
import heapq
import json
import math
import random
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from fingerprint.signals import END, FINISHED, START, STARTED


class TraceError(ValueError):
    """Input that cannot be turned into signals; the message names the file, line and reason."""


def make_signal(workflow_id: str, run_id: str, task: str, state: int, ts_ms: int, *, signal_id: str,
                tsa: list[int], node_id: str = "local", outcome: str | None = None,
                resources: dict[str, float] | None = None, data_size_bytes: int | None = None,
                run_ended: bool = False, attributes: dict[str, str] | None = None) -> dict:
    """One WorkflowSignal record; ``intensity`` is 0 at a start and 1 at a finish (completion)."""
    return {"signal_id": signal_id, "workflow_id": workflow_id, "run_id": run_id, "task": task,
            "state": state, "outcome": outcome if state == FINISHED else None, "ts_ms": int(ts_ms),
            "tsa": [int(t) for t in tsa], "tsa_resolution_ms": 1, "intensity": 0.0 if state == STARTED else 1.0,
            "node_id": node_id, "resources": resources, "data_size_bytes": data_size_bytes,
            "run_ended": run_ended, "inputs": None, "outputs": None, "attributes": attributes}


def run_signals(workflow_id: str, run_id: str, executions: Iterable[Sequence], t0_ms: int = 0,
                node_id: str = "local") -> list[dict]:
    """Signals of one run from ``(task, start_ms, finish_ms[, outcome[, resources[, in_bytes[, out_bytes]]]])``.

    Times are offsets from ``t0_ms``. Signals are sorted by time, finishes before
    starts at equal times (a hand-over is not an overlap); the last one closes the run.
    """
    events = []
    for n, ex in enumerate(executions):
        task, start, finish = ex[0], int(ex[1]), int(ex[2])
        outcome = ex[3] if len(ex) > 3 and ex[3] else "SUCCESS"
        resources = ex[4] if len(ex) > 4 else None
        in_bytes = ex[5] if len(ex) > 5 else None
        out_bytes = ex[6] if len(ex) > 6 else None
        events.append((t0_ms + start, 1, n, task, STARTED, None, resources, in_bytes, [t0_ms + start]))
        events.append((t0_ms + finish, 0, n, task, FINISHED, outcome, resources, out_bytes,
                       [t0_ms + start, t0_ms + finish]))
    # at equal times finishes (rank 0) go before starts (rank 1), then `_order_instants`
    # moves the finish of a zero-length execution back behind its own start
    events.sort(key=lambda e: (e[0], e[1], e[2]))
    events = _order_instants(events)
    out = []
    for i, (ts, _, n, task, state, outcome, resources, size, tsa) in enumerate(events):
        out.append(make_signal(workflow_id, run_id, task, state, ts, signal_id=f"{workflow_id}/{run_id}/{n}/{state}",
                               tsa=tsa, node_id=node_id, outcome=outcome, resources=resources,
                               data_size_bytes=size, run_ended=i == len(events) - 1))
    return out


def _order_instants(events: list) -> list:
    """Make sure a zero-length execution's start precedes its own finish after sorting."""
    started: set[int] = set()
    out: list = []
    deferred: dict[int, tuple] = {}
    for e in events:
        n, state = e[2], e[4]
        if state == FINISHED and n not in started:
            deferred[n] = e
            continue
        out.append(e)
        if state == STARTED:
            started.add(n)
            if n in deferred:
                out.append(deferred.pop(n))
    out.extend(deferred.values())
    return out


# -- CSV event logs ---------------------------------------------------------------------------

_START_WORDS = {"start", "started", "begin", "assign_start"}
_COMPLETE_WORDS = {"complete", "completed", "end", "finish", "finished", "done", "ate_abort", "withdraw"}


def parse_timestamp(text: str, time_format: str | None = None) -> int:
    """ms since the epoch from ISO 8601 (naive means UTC), epoch numbers, or a strptime format.

    Epoch numbers of 1e11 and above are taken as milliseconds, smaller ones as
    seconds (1e11 s is the year 5138; 1e11 ms is 1973).

    >>> parse_timestamp("2024-01-01T00:00:01Z"), parse_timestamp("1704067201"), parse_timestamp("1704067201000")
    (1704067201000, 1704067201000, 1704067201000)
    >>> parse_timestamp("30-12-2010:11.02", "%d-%m-%Y:%H.%M")
    1293706920000
    """
    text = text.strip()
    if time_format:
        dt = datetime.strptime(text, time_format)
    else:
        try:
            x = float(text)
        except ValueError:
            dt = datetime.fromisoformat(text.replace(" ", "T", 1) if "T" not in text and " " in text else text)
        else:
            if not math.isfinite(x):
                raise ValueError(f"not a finite timestamp: {text!r}")
            return int(round(x if abs(x) >= 1e11 else x * 1000))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(round(dt.timestamp() * 1000))


def read_event_log(path: str | Path, case_col: str, activity_col: str, time_col: str, *,
                   lifecycle_col: str | None = None, node_col: str | None = None,
                   workflow_id: str | None = None, workflow_col: str | None = None,
                   time_format: str | None = None, delimiter: str | None = None,
                   attr_cols: Sequence[str] = ()) -> Iterator[dict]:
    """WorkflowSignals of a CSV event log, in global timestamp order (see the module docstring).

    ``workflow_id`` defaults to the file's stem; with ``workflow_col`` only rows
    whose value there equals ``workflow_id`` are read. ``delimiter`` is sniffed
    from the header when not given. The non-empty values of ``attr_cols`` (case
    or event attributes) go into the ``attributes`` of the row's signals. Raises `TraceError` for a missing column or
    an unparseable timestamp, `FileNotFoundError` for a missing file. The whole
    log is read before the first signal is yielded: a case's last event must be
    known to mark ``run_ended``.
    """
    path = Path(path)
    workflow_id = workflow_id or path.stem
    attr_cols = list(dict.fromkeys(attr_cols))
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = _csv_rows(f, delimiter)
        columns = reader.fieldnames or []
        wanted = [c for c in (case_col, activity_col, time_col, lifecycle_col, node_col, workflow_col) if c]
        missing = [c for c in wanted + attr_cols if c not in columns]
        if missing:
            raise TraceError(f"{path}: no column {', '.join(map(repr, missing))}; columns are: {', '.join(columns)}")
        cases: dict[str, list[tuple]] = {}
        for line, row in enumerate(reader, start=2):
            if workflow_col and row[workflow_col] != workflow_id:
                continue
            raw_ts = row[time_col]
            try:
                ts = parse_timestamp(raw_ts or "", time_format)
            except (ValueError, OverflowError, OSError):
                raise TraceError(f"{path}:{line}: cannot parse timestamp {raw_ts!r} in column {time_col!r}"
                                 + (f" with format {time_format!r}" if time_format else
                                    " (expected ISO 8601 or epoch seconds/ms; see --time-format)")) from None
            case, activity = row[case_col], row[activity_col]
            if not case or not activity:
                continue  # a row without case or activity carries no event
            life = (row[lifecycle_col] or "").strip().lower() if lifecycle_col else None
            node = (row[node_col] or "log") if node_col else "log"
            attrs = {c: row[c] for c in attr_cols if row[c]} or None
            cases.setdefault(case, []).append((ts, line, activity, life, node, attrs))
    make_case = _lifecycle_case if lifecycle_col else _single_timestamp_case

    def keyed(order: int, case: str, rows: list[tuple]):
        # signals are made case by case as the merge reaches them: memory holds rows, not dicts
        rows.sort(key=lambda r: (r[0], r[1]))
        for i, s in enumerate(make_case(workflow_id, case, rows)):
            yield (s["ts_ms"], order, i), s

    streams = [keyed(order, case, rows) for order, (case, rows) in enumerate(cases.items())]
    for _, signal in heapq.merge(*streams, key=lambda x: x[0]):
        yield signal


def _csv_rows(f, delimiter: str | None) -> csv.DictReader:
    """A DictReader over an open CSV file; ``delimiter`` is sniffed from the header when None."""
    head = f.readline()
    if delimiter is None:
        counts = {d: head.count(d) for d in (",", ";", "\t", "|")}
        delimiter = max(counts, key=counts.get) if max(counts.values()) else ","
    f.seek(0)
    return csv.DictReader(f, delimiter=delimiter)


def categorical_columns(path: str | Path, exclude: Sequence[str] = (), *, max_distinct: int = 100,
                        delimiter: str | None = None) -> list[str]:
    """Columns of a CSV event log usable as attributes: 2 to ``max_distinct`` distinct non-empty values.

    Ids, timestamps and measurements have hundreds of distinct values and would
    each split the counts into contexts seen once; a column with one value says
    nothing. ``exclude`` names columns never to return (case, activity, time).
    """
    with Path(path).open(newline="", encoding="utf-8-sig") as f:
        reader = _csv_rows(f, delimiter)
        candidates = [c for c in reader.fieldnames or [] if c not in set(exclude)]
        seen: dict[str, set] = {c: set() for c in candidates}
        for row in reader:
            for c in list(seen):
                v = row[c]
                if v:
                    values = seen[c]
                    values.add(v)
                    if len(values) > max_distinct:
                        del seen[c]
    return [c for c in candidates if c in seen and len(seen[c]) >= 2]


def _single_timestamp_case(workflow_id: str, case: str, rows: list[tuple]) -> list[dict]:
    out = []
    for i, (ts, _, activity, _, node, attrs) in enumerate(rows):
        finish = rows[i + 1][0] if i + 1 < len(rows) else ts
        last = i + 1 == len(rows)
        out.append(make_signal(workflow_id, case, activity, STARTED, ts, signal_id=f"{workflow_id}/{case}/{i}/s",
                               tsa=[ts], node_id=node, attributes=attrs))
        out.append(make_signal(workflow_id, case, activity, FINISHED, finish, signal_id=f"{workflow_id}/{case}/{i}/f",
                               tsa=[ts, finish], node_id=node, outcome="SUCCESS", run_ended=last,
                               attributes=attrs))
    return out


def _lifecycle_case(workflow_id: str, case: str, rows: list[tuple]) -> list[dict]:
    out: list[dict] = []
    open_starts: dict[str, list[int]] = {}
    for i, (ts, _, activity, life, node, attrs) in enumerate(rows):
        if life in _START_WORDS:
            open_starts.setdefault(activity, []).append(ts)
            out.append(make_signal(workflow_id, case, activity, STARTED, ts, signal_id=f"{workflow_id}/{case}/{i}",
                                   tsa=[ts], node_id=node, attributes=attrs))
        elif life in _COMPLETE_WORDS or not life:
            starts = open_starts.get(activity)
            if starts:
                start = starts.pop(0)
            else:  # completion only: an instant
                start = ts
                out.append(make_signal(workflow_id, case, activity, STARTED, ts,
                                       signal_id=f"{workflow_id}/{case}/{i}/s", tsa=[ts], node_id=node,
                                       attributes=attrs))
            out.append(make_signal(workflow_id, case, activity, FINISHED, ts, signal_id=f"{workflow_id}/{case}/{i}",
                                   tsa=[start, ts], node_id=node, outcome="SUCCESS", attributes=attrs))
        # other transitions (schedule, suspend, ...) say nothing about start or finish: skipped
    # starts never completed: close them at the case's last timestamp so the run can end
    last_ts = rows[-1][0] if rows else 0
    for activity, starts in open_starts.items():
        for start in starts:
            out.append(make_signal(workflow_id, case, activity, FINISHED, last_ts,
                                   signal_id=f"{workflow_id}/{case}/open/{activity}/{start}",
                                   tsa=[start, last_ts], node_id="log", outcome="CANCELLED"))
    if out:
        out[-1]["run_ended"] = True
    return out


# -- WfCommons instances ----------------------------------------------------------------------

_ID_SUFFIX = re.compile(r"(_ID\d+|_\d+)$")


def task_category(task: dict) -> str:
    """The task's kind across runs: ``category`` if given, else its name without a trailing ``_ID000123``/``_00001``."""
    return task.get("category") or task.get("type_name") or _ID_SUFFIX.sub("", str(task.get("name", "?")))


def read_wfcommons(source: str | Path | dict, *, workflow_id: str | None = None, runs: int = 1,
                   speed: float = 1.0, t0_ms: int = 0, gap_ms: int = 1000, jitter: float = 0.0,
                   seed: int = 0, node_id: str = "local") -> Iterator[dict]:
    """Timed signals of a WfCommons instance, ``runs`` times in a row.

    Each task starts when its last parent finishes (an as-soon-as-possible
    schedule with unlimited workers) and runs ``runtime / speed`` seconds; with
    ``jitter`` > 0 each runtime is multiplied by a lognormal factor of that
    sigma, so repeated runs vary like real ones. Task names are task categories
    (see `task_category`): the fingerprint is about kinds of tasks, not the
    instance's unique ids. Start signals carry the task's input bytes and its
    cores/memory, finish signals its output bytes.
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        try:
            instance = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise TraceError(f"{path}: not JSON: {err}") from None
        default_id = instance.get("name") or path.stem
    else:
        instance, default_id = source, source.get("name", "wfcommons")
    if speed <= 0:
        raise ValueError("speed must be positive")
    tasks = _wfcommons_tasks(instance)
    order = _topological(tasks)
    workflow_id = workflow_id or default_id
    rng = random.Random(seed)
    t = t0_ms
    for r in range(runs):
        finish: dict[str, int] = {}
        executions = []
        for tid in order:
            task = tasks[tid]
            start = max((finish[p] for p in task["parents"]), default=0)
            runtime = task["runtime"] * (math.exp(rng.gauss(0.0, jitter)) if jitter > 0 else 1.0)
            finish[tid] = start + max(int(round(runtime * 1000 / speed)), 0)
            executions.append((task["category"], start, finish[tid], "SUCCESS", task["resources"],
                               task["in_bytes"], task["out_bytes"]))
        yield from run_signals(workflow_id, f"run-{r}", executions, t0_ms=t, node_id=node_id)
        t += max(finish.values(), default=0) + gap_ms


def _wfcommons_tasks(instance: dict) -> dict[str, dict]:
    """id -> {category, parents, runtime (s), resources, in_bytes, out_bytes}, whatever the schema version."""
    wf = instance.get("workflow")
    if not isinstance(wf, dict):
        raise TraceError("not a WfCommons instance: no 'workflow' object")
    out: dict[str, dict] = {}
    if "specification" in wf:  # schema 1.4 and later
        spec = wf["specification"]
        sizes = {f["id"]: f.get("sizeInBytes", 0) for f in spec.get("files", [])}
        executed = {t["id"]: t for t in wf.get("execution", {}).get("tasks", [])}
        for t in spec.get("tasks", []):
            ex = executed.get(t["id"], {})
            res = {k: float(ex[src]) for k, src in (("cores", "coreCount"), ("memory_bytes", "memoryInBytes"))
                   if isinstance(ex.get(src), (int, float))}
            out[t["id"]] = {"category": task_category({**t, "category": ex.get("category", t.get("category"))}),
                            "parents": list(t.get("parents", [])),
                            "runtime": float(ex.get("runtimeInSeconds", 0.0)),
                            "resources": res or None,
                            "in_bytes": sum(sizes.get(f, 0) for f in t.get("inputFiles", [])),
                            "out_bytes": sum(sizes.get(f, 0) for f in t.get("outputFiles", []))}
    else:  # 1.3 and earlier: workflow.tasks (or .jobs) with runtime, parents by name, inline files
        items = wf.get("tasks", wf.get("jobs"))
        if not isinstance(items, list):
            raise TraceError("not a WfCommons instance: neither workflow.specification nor workflow.tasks")
        for t in items:
            files = t.get("files", [])

            def size(f):  # 1.3 has sizeInBytes; older WorkflowHub files give size in KB
                return f["sizeInBytes"] if "sizeInBytes" in f else int(f.get("size", 0) * 1024)

            res = {k: float(t[src]) for k, src in (("cores", "cores"), ("memory_bytes", "memoryInBytes"))
                   if isinstance(t.get(src), (int, float))}
            tid = t.get("id") or t["name"]
            out[tid] = {"category": task_category(t), "parents": list(t.get("parents", [])),
                        "runtime": float(t.get("runtimeInSeconds", t.get("runtime", 0.0))),
                        "resources": res or None,
                        "in_bytes": sum(size(f) for f in files if f.get("link") == "input"),
                        "out_bytes": sum(size(f) for f in files if f.get("link") == "output")}
        by_name = {t["name"]: (t.get("id") or t["name"]) for t in items}
        for task in out.values():  # 1.3 parents are names; map them to ids
            task["parents"] = [by_name.get(p, p) for p in task["parents"]]
    for tid, task in out.items():
        unknown = [p for p in task["parents"] if p not in out]
        if unknown:
            raise TraceError(f"task {tid!r} has unknown parents {unknown}")
    return out


def _topological(tasks: dict[str, dict]) -> list[str]:
    indegree = {tid: len(set(t["parents"])) for tid, t in tasks.items()}
    children: dict[str, list[str]] = {}
    for tid, t in tasks.items():
        for p in set(t["parents"]):
            children.setdefault(p, []).append(tid)
    ready = sorted(tid for tid, d in indegree.items() if d == 0)
    order = []
    while ready:
        tid = ready.pop(0)
        order.append(tid)
        for c in children.get(tid, []):
            indegree[c] -= 1
            if indegree[c] == 0:
                ready.append(c)
    if len(order) != len(tasks):
        raise TraceError("the instance's task graph has a cycle")
    return order


# -- synthetic processes with known probabilities ---------------------------------------------


@dataclass
class MarkovProcess:
    """Runs drawn from known next-task probabilities, conditioned on up to the last ``order`` tasks.

    ``transitions`` maps a context (tuple of the last tasks, ``<start>`` before
    the first) to ``{next task or "<end>": probability}``; the longest context
    present wins. Tasks run one after another, each for ``durations[task]`` ms
    (mean, sd; normal, at least 1 ms), and ``concurrent`` runs interleave in time.

    >>> p = MarkovProcess({("<start>",): {"a": 1.0}, ("a",): {"b": 0.3, "<end>": 0.7}, ("b",): {"<end>": 1.0}})
    >>> p.probabilities(["a"])
    {'b': 0.3, '<end>': 0.7}
    >>> runs = {s["run_id"] for s in p.signals(50, seed=1)}
    >>> len(runs)
    50
    """

    transitions: dict[tuple[str, ...], dict[str, float]]
    durations: dict[str, tuple[float, float]] = field(default_factory=dict)
    workflow_id: str = "synthetic"
    max_length: int = 200

    def __post_init__(self):
        self.order = max(len(c) for c in self.transitions)
        for ctx, dist in self.transitions.items():
            if abs(sum(dist.values()) - 1.0) > 1e-9:
                raise ValueError(f"probabilities after {ctx} sum to {sum(dist.values())}, not 1")

    def probabilities(self, prefix: Sequence[str]) -> dict[str, float]:
        """The true next-task distribution after ``prefix``."""
        history = (START, *prefix)
        for j in range(min(self.order, len(history)), 0, -1):
            dist = self.transitions.get(tuple(history[-j:]))
            if dist is not None:
                return dict(dist)
        raise KeyError(f"no transition defined after {tuple(prefix)}")

    def sample_run(self, rng: random.Random) -> list[str]:
        prefix: list[str] = []
        while len(prefix) < self.max_length:
            dist = self.probabilities(prefix)
            nxt = rng.choices(list(dist), weights=list(dist.values()))[0]
            if nxt == END:
                break
            prefix.append(nxt)
        return prefix

    def signals(self, runs: int, seed: int = 0, concurrent: int = 4, t0_ms: int = 0,
                interarrival_ms: int = 50, run_prefix: str = "run") -> Iterator[dict]:
        """Signals of ``runs`` runs (ids ``{run_prefix}-{n}``) in global time order, about ``concurrent`` overlapping."""
        rng = random.Random(seed)
        streams = []
        for r in range(runs):
            t = t0_ms + (r // max(concurrent, 1)) * interarrival_ms * concurrent + rng.randrange(interarrival_ms)
            spans = []
            for task in self.sample_run(rng):
                mean, sd = self.durations.get(task, (10.0, 2.0))
                d = max(1, int(rng.gauss(mean, sd)))
                spans.append((task, t - t0_ms, t - t0_ms + d))
                t += d
            if spans:
                sigs = run_signals(self.workflow_id, f"{run_prefix}-{r}", spans, t0_ms=t0_ms)
                streams.append([((s["ts_ms"], r, i), s) for i, s in enumerate(sigs)])
        for _, signal in heapq.merge(*streams, key=lambda x: x[0]):
            yield signal
