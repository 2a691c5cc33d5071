"""The temporal fingerprint of one workflow, learned signal by signal over a rolling window of runs.

`Fingerprint.learn_one` takes a WorkflowSignal dict and returns nothing (River's
protocol); `Fingerprint.observe_one` learns it the same way and returns what it
did (an `Observed`), for callers that act on each signal. Open runs collect their
executions; a run closes on its ``run_ended`` signal (or is evicted as
incomplete when idle too long or when too many runs are open) and joins the
window, from which the oldest runs age out. What the fingerprint says about the
workflow is derived from the runs in the window:

* `Fingerprint.dag` — the task DAG with duration distributions, resources,
  edge kinds, probabilities and transfer sizes, each edge proven by data
  lineage or inferred from hand-over timing with a confidence (`fingerprint.dag`);
* `Fingerprint.frequent_sequences` and `Fingerprint.variants` — recurring patterns;
* `Fingerprint.sequences` — the variable-order Markov model of start order with
  inter-start delays, updated on every start so predictions use the freshest
  counts (`fingerprint.sequence`).

Bad signals never raise: they are counted per kind in ``issues`` (see
`fingerprint.signals.ISSUE_KINDS` for what happens to each). State is a plain
dataclass deriving from `schemas.state.Versioned`: a pickled snapshot of an
older version is migrated on restore, and `from_dict` reads the versions it
knows. Memory is bounded by the window: at most ``Window.runs`` closed runs and
``Window.executions`` task executions in them, whatever the size of a run.

>>> from fingerprint.traces import run_signals
>>> fp = Fingerprint("etl", window=Window(runs=100))
>>> for i in range(3):
...     for s in run_signals("etl", f"r{i}", [("extract", 0, 10), ("load", 10, 25)], t0_ms=i * 100):
...         fp.learn_one(s)
>>> len(fp.runs), fp.issues
(3, {})
>>> fp.observe_one(s) is None  # the same signal again: dropped
True
>>> fp.issues
{'duplicate': 1}
>>> print(fp.dag().render().splitlines()[0])
workflow etl: 3 runs, 2 tasks, 1 edges
>>> sorted(fp.next_step_proba(["extract"]).items(), key=lambda kv: -kv[1])[0][0]
'load'
>>> Fingerprint.from_json(fp.to_json()).to_dict() == fp.to_dict()
True
"""

from __future__ import annotations

import json
from sys import intern
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Iterable, NamedTuple

from fingerprint.dag import TaskDag
from fingerprint.patterns import Pattern, frequent_sequences, variants
from fingerprint.runs import Run
from fingerprint.sequence import SequenceModel
from fingerprint.signals import STARTED, optional_artifacts, optional_bytes, optional_resources, signal_problem
from schemas.state import Versioned

#: Version of the state layout (pickles and `Fingerprint.to_dict`); bump on incompatible changes.
#: 2: executions carry data lineage (``inputs``/``outputs``); the window caps executions.
FORMAT_VERSION = 2


@dataclass(frozen=True)
class Window:
    """Which closed runs the fingerprint keeps: the last ``runs`` runs, and/or those ended within ``ms``.

    With ``runs=None`` a time window alone still keeps at most `HARD_CAP` runs,
    so state is bounded whatever the arrival rate.
    """

    runs: int | None = 500
    ms: int | None = None
    executions: int | None = 200_000  # task executions over all kept runs (~170 bytes each): bounds memory

    HARD_CAP = 10_000

    def __post_init__(self):
        if self.runs is None and self.ms is None:
            raise ValueError("a window needs a run count, a duration, or both")
        if self.runs is not None and self.runs < 1:
            raise ValueError("window runs must be at least 1")
        if self.ms is not None and self.ms <= 0:
            raise ValueError("window ms must be positive")
        if self.executions is not None and self.executions < 1:
            raise ValueError("window executions must be at least 1")

    @property
    def max_runs(self) -> int:
        return self.runs if self.runs is not None else self.HARD_CAP


class Observed(NamedTuple):
    """What an accepted signal did: ``kind`` is "start" or "finish"; ``ended`` if it closed the run."""

    kind: str
    run: Run
    task: str
    ts_ms: int
    ended: bool


def _executions_from_v1(state: dict) -> dict:
    """Version 1 executions had no lineage slots: they read as executions that declared none."""
    for run in (*state.get("runs", ()), *state.get("open_runs", {}).values()):
        for ex in run.executions:
            for name in ("inputs", "outputs"):
                try:
                    getattr(ex, name)
                except AttributeError:
                    setattr(ex, name, None)
    state.setdefault("window_executions", sum(len(r.executions) for r in state.get("runs", ())))
    return state


@dataclass
class Fingerprint(Versioned):
    """Per-workflow state: open runs, the window of closed runs, the sequence model, issue counts."""

    STATE_VERSION = FORMAT_VERSION
    MIGRATIONS = {1: _executions_from_v1}

    workflow_id: str
    window: Window = field(default_factory=Window)
    order: int = 2
    max_open_runs: int = 10_000
    idle_timeout_ms: int | None = None
    dedupe_capacity: int = 10_000
    version: int = FORMAT_VERSION
    runs: deque = field(default_factory=deque)               # closed runs, oldest first
    open_runs: OrderedDict[str, Run] = field(default_factory=OrderedDict)  # least recently active first
    sequences: SequenceModel = None
    issues: dict[str, int] = field(default_factory=dict)
    accepted: int = 0
    evicted: int = 0
    latest_ms: int = 0
    window_executions: int = 0                              # executions in the closed runs kept
    # OrderedDict, not dict: dropping the oldest key of a plain dict that is
    # deleted from the front costs a scan over the holes left behind
    _seen_ids: OrderedDict[str, None] = field(default_factory=OrderedDict, repr=False)
    _closed_ids: OrderedDict[str, None] = field(default_factory=OrderedDict, repr=False)

    def __post_init__(self):
        if self.sequences is None:
            self.sequences = SequenceModel(order=self.order)

    def __len__(self) -> int:
        return len(self.runs)

    # -- learning ---------------------------------------------------------------------------

    def learn_one(self, signal: dict) -> None:
        """Fold one signal in (River's protocol: returns nothing; bad signals are counted in ``issues``)."""
        self.observe_one(signal)

    def observe_one(self, signal: dict) -> Observed | None:
        """Fold one signal in and return what it did, or ``None`` if it was dropped (see ``issues``)."""
        problem = signal_problem(signal)
        if problem is not None:
            return self._issue(problem)
        if signal["workflow_id"] != self.workflow_id:
            return self._issue("unknown_workflow")
        seen = self._seen_ids
        sid = signal["signal_id"]
        if sid in seen:
            return self._issue("duplicate")
        seen[sid] = None
        if len(seen) > self.dedupe_capacity:
            seen.popitem(last=False)

        # Interned: every decoded signal brings its own copy of the task name, and the window, the
        # counts and the snapshots would otherwise hold (and compare, and pickle) one per signal.
        run_id, task, ts = signal["run_id"], intern(signal["task"]), signal["ts_ms"]
        if ts > self.latest_ms:
            self.latest_ms = ts
        open_runs = self.open_runs
        run = open_runs.get(run_id)
        if run is None:
            if run_id in self._closed_ids:
                return self._issue("after_run_end")
            run = open_runs[run_id] = Run(run_id, first_ms=ts)
            late = False
        else:
            open_runs.move_to_end(run_id)  # order = least recently active first
            late = ts < run.last_ms  # counted below, once the signal is known to be kept
        ended = signal.get("run_ended") is True

        if signal["state"] == STARTED:
            # the optional fields are usually absent: checked only when present
            resources, size, inputs = signal.get("resources"), signal.get("data_size_bytes"), signal.get("inputs")
            run.start(task, ts, signal.get("node_id") or "",
                      None if resources is None else optional_resources(resources),
                      None if size is None else optional_bytes(size),
                      None if inputs is None else optional_artifacts(inputs))
            self.sequences.learn_start(run.started, run.start_times)
            kind = "start"
        else:
            execution = run.open_execution(task)
            if execution is None or ts < execution.start_ms:
                self._issue("finish_without_start" if execution is None else "negative_duration")
                if not run.executions and not ended:
                    del open_runs[run_id]  # nothing usable: do not keep an empty run open
                if not ended:
                    return None
            else:
                size, outputs = signal.get("data_size_bytes"), signal.get("outputs")
                run.finish(task, ts, signal.get("outcome"), None if size is None else optional_bytes(size),
                           None if outputs is None else optional_artifacts(outputs))
            kind = "finish"
        if late:
            self._issue("out_of_order")
        if ended:
            self._close(run, ts, ended=True)
        if len(open_runs) > self.max_open_runs or self.idle_timeout_ms is not None:
            self._evict_open()
        self.accepted += 1
        return Observed(kind, run, task, ts, ended)

    def learn_many(self, signals: Iterable[dict]) -> Fingerprint:
        for s in signals:
            self.learn_one(s)
        return self

    def _issue(self, kind: str) -> None:
        self.issues[kind] = self.issues.get(kind, 0) + 1
        return None

    def _close(self, run: Run, end_ms: int, ended: bool) -> None:
        self.open_runs.pop(run.run_id, None)
        self._closed_ids[run.run_id] = None
        if len(self._closed_ids) > self.dedupe_capacity:
            self._closed_ids.popitem(last=False)
        if not run.executions:
            return
        run.close(end_ms, ended)
        if ended:
            self.sequences.learn_end(run.started, run.start_times, run.end_ms)
        self.runs.append(run)
        self.window_executions += len(run.executions)
        self._age()

    def _evict_open(self) -> None:
        open_runs = self.open_runs
        while len(open_runs) > self.max_open_runs:
            self._abandon(open_runs[next(iter(open_runs))])
        if self.idle_timeout_ms is not None:
            while open_runs:
                oldest = next(iter(open_runs.values()))
                if self.latest_ms - oldest.last_ms <= self.idle_timeout_ms:
                    break
                self._abandon(oldest)

    def _abandon(self, run: Run) -> None:
        self._issue("abandoned_run")
        self.evicted += 1
        self._close(run, run.last_ms, ended=False)

    def _age(self) -> None:
        runs, cap, span = self.runs, self.window.max_runs, self.window.ms
        max_executions = self.window.executions
        while len(runs) > cap or (max_executions is not None and len(runs) > 1
                                  and self.window_executions > max_executions):
            self._forget(runs.popleft())
        if span is not None and runs:
            horizon = runs[-1].end_ms - span
            while runs and runs[0].end_ms < horizon:
                self._forget(runs.popleft())

    def _forget(self, run: Run) -> None:
        self.window_executions -= len(run.executions)
        self.sequences.forget_run(run.started, run.start_times, run.end_ms if run.ended else None)

    # -- what the fingerprint says ------------------------------------------------------------

    def next_step_proba(self, started: list[str]) -> dict[str, float]:
        """P(next task to start | tasks started so far), including ``<end>``."""
        return self.sequences.predict_proba(started)

    def dag(self, min_probability: float = 0.01) -> TaskDag:
        return TaskDag.reconstruct(self.runs, self.workflow_id, min_probability=min_probability)

    def frequent_sequences(self, min_support: float = 0.1, lengths=(2, 3, 4), top: int | None = 20) -> list[Pattern]:
        return frequent_sequences((r.started for r in self.runs), min_support, lengths, top)

    def variants(self, top: int | None = 10) -> list[Pattern]:
        """Start orders of the runs that ended cleanly, most frequent first."""
        return variants((r.started for r in self.runs if r.ended), top)

    def describe(self, min_probability: float = 0.01) -> dict:
        """The explainable view as JSON-ready data: DAG, patterns, issues."""
        return {"workflow_id": self.workflow_id, "runs_in_window": len(self.runs),
                "open_runs": len(self.open_runs), "signals_accepted": self.accepted,
                "issues": dict(self.issues), "dag": self.dag(min_probability).to_dict(),
                "frequent_sequences": [_pattern_dict(p) for p in self.frequent_sequences()],
                "variants": [_pattern_dict(p) for p in self.variants()]}

    def render(self, min_probability: float = 0.01) -> str:
        """Text explanation: the DAG with probabilities and timings, patterns, issues."""
        out = [self.dag(min_probability).render().rstrip("\n")]
        out.append(f"window: {len(self.runs)} closed runs, {len(self.open_runs)} open; "
                   f"{self.accepted} signals accepted")
        frequent = self.frequent_sequences(top=5)
        if frequent:
            out.append("frequent sequences:")
            out += [f"  {' > '.join(p.tasks)}  support {p.support:.0%}" for p in frequent]
        top_variants = self.variants(top=5)
        if top_variants:
            out.append("variants:")
            out += [f"  {p.count:>5}× ({p.support:.0%})  {' > '.join(p.tasks)}" for p in top_variants]
        out.append("issues: " + (", ".join(f"{k}={v}" for k, v in sorted(self.issues.items())) or "none"))
        return "\n".join(out) + "\n"

    def to_dot(self, min_probability: float = 0.01) -> str:
        return self.dag(min_probability).to_dot()

    # -- merging and serialising ------------------------------------------------------------

    def merge(self, other: Fingerprint) -> Fingerprint:
        """A new fingerprint holding both windows (same workflow; this one's configuration).

        A run known to both keeps the closed copy, else the one with more
        executions; the union is then aged through this window.
        """
        if other.workflow_id != self.workflow_id:
            raise ValueError(f"cannot merge fingerprints of {self.workflow_id!r} and {other.workflow_id!r}")
        closed: dict[str, Run] = {}
        for run in (*self.runs, *other.runs):
            have = closed.get(run.run_id)
            if have is None or len(run.executions) > len(have.executions):
                closed[run.run_id] = run
        open_: dict[str, Run] = {}
        for run in sorted((*self.open_runs.values(), *other.open_runs.values()), key=lambda r: r.last_ms):
            if run.run_id in closed:
                continue
            have = open_.get(run.run_id)
            if have is None or len(run.executions) > len(have.executions):
                open_.pop(run.run_id, None)
                open_[run.run_id] = run
        issues = dict(self.issues)
        for k, v in other.issues.items():
            issues[k] = issues.get(k, 0) + v
        merged = self._configured(issues=issues, accepted=self.accepted + other.accepted,
                                  evicted=self.evicted + other.evicted,
                                  latest_ms=max(self.latest_ms, other.latest_ms))
        merged._restore(sorted(closed.values(), key=lambda r: (r.end_ms, r.run_id)), open_.values(),
                        [*self._seen_ids, *other._seen_ids], [*self._closed_ids, *other._closed_ids])
        return merged

    def _configured(self, **state) -> Fingerprint:
        return Fingerprint(self.workflow_id, window=self.window, order=self.order,
                           max_open_runs=self.max_open_runs, idle_timeout_ms=self.idle_timeout_ms,
                           dedupe_capacity=self.dedupe_capacity, **state)

    def _restore(self, closed: Iterable[Run], open_runs: Iterable[Run], seen_ids, closed_ids) -> None:
        """Rebuild derived state (sequence model) from runs: one code path for merge and load."""
        cap = self.dedupe_capacity
        self._seen_ids = OrderedDict.fromkeys(list(dict.fromkeys(seen_ids))[-cap:])
        self._closed_ids = OrderedDict.fromkeys(list(dict.fromkeys(closed_ids))[-cap:])
        for run in closed:
            self.sequences.learn_run(run.started, run.start_times, run.end_ms if run.ended else None)
            self.runs.append(run)
            self.window_executions += len(run.executions)
        self._age()
        for run in open_runs:
            self.sequences.learn_run(run.started, run.start_times, None)
            self.open_runs[run.run_id] = run
        self._evict_open()

    def to_dict(self) -> dict:
        return {"version": self.version, "workflow_id": self.workflow_id,
                "window": {"runs": self.window.runs, "ms": self.window.ms,
                           "executions": self.window.executions}, "order": self.order,
                "max_open_runs": self.max_open_runs, "idle_timeout_ms": self.idle_timeout_ms,
                "dedupe_capacity": self.dedupe_capacity, "accepted": self.accepted, "evicted": self.evicted,
                "latest_ms": self.latest_ms, "issues": dict(self.issues),
                "runs": [r.to_dict() for r in self.runs],
                "open_runs": [r.to_dict() for r in self.open_runs.values()],
                "seen_ids": list(self._seen_ids), "closed_ids": list(self._closed_ids)}

    @classmethod
    def from_dict(cls, d: dict) -> Fingerprint:
        version = d.get("version")
        if version not in (1, FORMAT_VERSION):  # 1 differs only in lacking lineage: its rows read as none declared
            raise ValueError(f"fingerprint format version {version!r} not supported (this code reads 1 to {FORMAT_VERSION})")
        fp = cls(d["workflow_id"], window=Window(**d["window"]), order=d["order"],
                 max_open_runs=d["max_open_runs"], idle_timeout_ms=d["idle_timeout_ms"],
                 dedupe_capacity=d["dedupe_capacity"], issues=dict(d["issues"]), accepted=d["accepted"],
                 evicted=d["evicted"], latest_ms=d["latest_ms"])
        fp._restore([Run.from_dict(r) for r in d["runs"]], [Run.from_dict(r) for r in d["open_runs"]],
                    d["seen_ids"], d["closed_ids"])
        return fp

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> Fingerprint:
        return cls.from_dict(json.loads(text))


def _pattern_dict(p: Pattern) -> dict:
    return {"tasks": list(p.tasks), "support": p.support, "count": p.count}
