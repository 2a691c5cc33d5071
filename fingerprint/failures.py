"""The causal failure graph: which failures and alerts make which tasks fail, learned online from signals.

Nodes are tasks (``workflow/task``, so tasks of different workflows that share
a dependency meet in one graph) and alert sources (``alert:<kind>:<where>``,
from telemetry anomalies or health probes). An edge ``u -> j`` with weight
P(j fails | u within the lag) says: an attempt of ``j`` that starts within
``lag_s`` after a failure of task ``u`` (or an alert of ``u``) fails far more
often than one that does not. This is the seed's graph (edge weights
P(task j fails | task i failed) over a sliding window, 24 h by default), made
causal in two ways:

* **time order**: only events *before* the attempt count (alerts also up to
  ``alert_lead_s`` after it, the monitoring's detection delay);
* **explaining away**, a greedy conditional-independence test in the spirit
  of the PC algorithm: alert sources are exogenous (workflow failures do not
  cause telemetry), so they are tested first; a candidate parent is kept only
  if it is still significant among the attempts *not* exposed to the parents
  kept so far. A common cause's two effects are then not linked to each
  other, nor is the head of a chain to its tail through the middle.

Significance is a two-proportion z-test (exposed vs not exposed attempts) at
the level of ``z_min`` (one-sided), Bonferroni-corrected for the number of
candidate parents tested for the task (a big workflow has many candidates, and
without the correction chance alone links some of them), with a minimum effect
``min_lift``; an edge's ``confidence`` is the
Wilson lower bound of its weight (95 %) and ``support`` the exposed failures.

Examples
--------
A dependency alert and two tasks that fail while it is raised:

>>> g = FailureGraph(lag_s=20.0, min_support=3)
>>> for k in range(200):
...     t = 10.0 * k
...     outage = (k // 10) % 4 == 0
...     if outage:
...         g.observe("alert:dep:db", t - 1)
...     for task in ("wf/load", "other/save"):
...         g.learn_one({"workflow_id": task.split("/")[0], "task": task.split("/")[1], "state": 0,
...                      "outcome": "FAILURE" if outage else "SUCCESS", "ts_ms": int(t * 1000), "node_id": "n1"})
>>> sorted((e.source, e.target) for e in g.edges())
[('alert:dep:db', 'other/save'), ('alert:dep:db', 'wf/load')]
>>> g.parents("wf/load")
['alert:dep:db']
"""

from __future__ import annotations

import bisect
import json
import math
from dataclasses import asdict, dataclass, field
from statistics import NormalDist

import numpy as np

from schemas.state import Versioned


@dataclass(frozen=True)
class FailureEdge:
    source: str
    target: str
    weight: float        # P(target fails | source within the lag)
    base: float          # P(target fails | not exposed to source, nor to the parents kept before it)
    support: int         # failures of target exposed to source
    confidence: float    # Wilson lower bound (95 %) of weight
    z: float


@dataclass
class FailureGraph(Versioned):
    """The online causal failure graph (see the module docstring); snapshotted state of the workflow flow."""

    STATE_VERSION = 1
    window_s: float = 24 * 3600.0
    lag_s: float = 30.0
    alert_lead_s: float = 10.0
    min_support: int = 5
    z_min: float = 3.0
    min_lift: float = 2.0
    # task -> [(ts_s, node, failed)]: every finished attempt
    attempts: dict[str, list[tuple[float, str, bool]]] = field(default_factory=dict)
    # source -> [(ts_s, node or None)]: task failures and alerts, in time order
    events: dict[str, list[tuple[float, str | None]]] = field(default_factory=dict)
    latest_s: float = 0.0
    version: int = STATE_VERSION

    # -- learning ---------------------------------------------------------------------------------

    def learn_one(self, signal: dict) -> None:
        """Take a WorkflowSignal: a finish (state 0) is an attempt of its task; a failed one is also an event."""
        if signal.get("state") != 0 or signal.get("outcome") not in ("SUCCESS", "FAILURE"):
            return
        task = f"{signal['workflow_id']}/{signal['task']}"
        ts, failed = signal["ts_ms"] / 1000.0, signal["outcome"] == "FAILURE"
        self.attempts.setdefault(task, []).append((ts, signal.get("node_id", ""), failed))
        if failed:
            self._event(task, ts, None)  # a task's failures can matter fleet-wide (a shared dependency)
        self._advance(ts)

    def observe(self, source: str, ts_s: float, node: str | None = None) -> None:
        """An alert at ``ts_s`` (``node`` scopes it to the attempts on that node; None: fleet-wide)."""
        self._event(source, ts_s, node)
        self._advance(ts_s)

    def learn_alert(self, alert: dict) -> None:
        """Take an `Alert` record: source ``alert:<kind>:<node>``, scoped to its node."""
        self.observe(f"alert:{alert['kind']}:{alert['node_id']}", alert["start_ts_ms"] / 1000.0, alert["node_id"])

    def _event(self, source: str, ts: float, node: str | None) -> None:
        events = self.events.setdefault(source, [])
        if events and ts < events[-1][0]:
            bisect.insort(events, (ts, node), key=lambda e: e[0])
        else:
            events.append((ts, node))

    def _advance(self, ts: float) -> None:
        if ts <= self.latest_s:
            return
        self.latest_s = ts
        horizon = ts - self.window_s
        for store in (self.attempts, self.events):
            for key, items in list(store.items()):
                if items and items[0][0] < horizon:
                    keep = bisect.bisect_left(items, horizon, key=lambda e: e[0])
                    store[key] = items[keep:]

    # -- the graph --------------------------------------------------------------------------------

    def _exposure(self, source: str, times: np.ndarray, nodes: np.ndarray) -> np.ndarray:
        events = self.events.get(source, [])
        lead = self.alert_lead_s if source.startswith("alert:") else 0.0
        exposed = np.zeros(len(times), bool)
        scopes: dict[str | None, list[float]] = {}
        for ts, node in events:
            scopes.setdefault(node, []).append(ts)
        for node, stamps in scopes.items():
            arr = np.asarray(stamps)
            lo = np.searchsorted(arr, times - self.lag_s, "left")
            hi = np.searchsorted(arr, times + lead, "right" if lead else "left")
            hit = hi > lo
            exposed |= hit if node is None else (hit & (nodes == node))
        return exposed

    def _z_needed(self, candidates: int) -> float:
        p = (1.0 - NormalDist().cdf(self.z_min)) / max(1, candidates)
        return NormalDist().inv_cdf(1.0 - p)

    def _test(self, exposed: np.ndarray, failed: np.ndarray, free: np.ndarray, z_needed: float):
        n1, n0 = int((exposed & free).sum()), int((~exposed & free).sum())
        f1, f0 = int((failed & exposed & free).sum()), int((failed & ~exposed & free).sum())
        if n1 == 0 or f1 < self.min_support:
            return None
        p1, p0 = f1 / n1, (f0 / n0 if n0 else 0.0)
        p = (f1 + f0) / (n1 + n0)
        se = math.sqrt(max(p * (1 - p) * (1 / n1 + (1 / n0 if n0 else 1.0)), 1e-12))
        z = (p1 - p0) / se
        if z < z_needed or p1 < self.min_lift * p0:
            return None
        return p1, p0, f1, _wilson_lower(f1, n1), z

    def _parents_of(self, task: str) -> list[FailureEdge]:
        attempts = self.attempts.get(task, [])
        failed = np.array([a[2] for a in attempts], bool)
        if failed.sum() < self.min_support:
            return []
        times = np.array([a[0] for a in attempts])
        nodes = np.array([a[1] for a in attempts], object)
        kept: list[FailureEdge] = []
        free = np.ones(len(attempts), bool)
        alerts = sorted(s for s in self.events if s.startswith("alert:"))
        tasks = sorted(s for s in self.events if not s.startswith("alert:") and s != task)
        z_needed = self._z_needed(len(alerts) + len(tasks))
        for group in (alerts, tasks):  # exogenous alerts first, then what failures of other tasks still explain
            exposures = {s: self._exposure(s, times, nodes) for s in group}
            while True:
                scored = [(r, s) for s in group if s not in {e.source for e in kept}
                          for r in [self._test(exposures[s], failed, free, z_needed)] if r is not None]
                if not scored:
                    break
                (p1, p0, f1, conf, z), source = max(scored, key=lambda rs: rs[0][4])
                kept.append(FailureEdge(source, task, round(p1, 4), round(p0, 4), f1, round(conf, 4), round(z, 2)))
                free &= ~exposures[source]
        return kept

    def edges(self) -> list[FailureEdge]:
        """Every edge of the graph over the current window (computed on demand)."""
        return [e for task in sorted(self.attempts) for e in self._parents_of(task)]

    def parents(self, task: str) -> list[str]:
        return [e.source for e in self._parents_of(task)]

    def active(self, source: str, ts_s: float, node: str | None = None) -> bool:
        """Whether ``source`` had an event within the lag before ``ts_s`` (in ``node``'s scope)."""
        return bool(self._exposure(source, np.array([ts_s]), np.array([node], object))[0])

    def failure_rate(self, task: str, ts_s: float, horizon_s: float = 300.0) -> float:
        """Share of ``task``'s attempts in the ``horizon_s`` before ``ts_s`` that failed (0 with none)."""
        recent = [a[2] for a in self.attempts.get(task, ()) if ts_s - horizon_s <= a[0] <= ts_s]
        return sum(recent) / len(recent) if recent else 0.0

    # -- explaining it ----------------------------------------------------------------------------

    def to_json(self) -> str:
        return json.dumps({"window_s": self.window_s, "lag_s": self.lag_s,
                           "edges": [asdict(e) for e in self.edges()]}, indent=2)

    def to_dot(self) -> str:
        lines = ["digraph failures {", "  rankdir=LR;"]
        for e in self.edges():
            shape = "box" if e.source.startswith("alert:") else "ellipse"
            lines.append(f'  "{e.source}" [shape={shape}];')
            lines.append(f'  "{e.source}" -> "{e.target}" [label="{e.weight:.2f} (base {e.base:.2f}, '
                         f'conf {e.confidence:.2f}, n={e.support})", penwidth={1 + 3 * e.weight:.1f}];')
        return "\n".join(lines + ["}"])

    def describe(self) -> str:
        edges = self.edges()
        if not edges:
            return "no failure links in the window"
        return "\n".join(f"{e.source} -> {e.target}: P(fail | source) {e.weight:.2f} vs {e.base:.2f} otherwise, "
                         f"confidence {e.confidence:.2f}, {e.support} failures" for e in edges)


def _wilson_lower(successes: int, n: int, z: float = 1.96) -> float:
    if n == 0:
        return 0.0
    p = successes / n
    centre = p + z * z / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - margin) / (1 + z * z / n))


def edge_scores(found: set[tuple[str, str]], truth: set[tuple[str, str]]) -> tuple[float, float]:
    """(precision, recall) of found edges against the true ones (1.0 where a set is empty)."""
    hits = len(found & truth)
    return (hits / len(found) if found else 1.0, hits / len(truth) if truth else 1.0)
