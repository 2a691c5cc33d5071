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
    via: str = ""        # the shared resource whose pooled attempts show the link ('' : the task's own attempts)


@dataclass
class FailureGraph(Versioned):
    """The online causal failure graph (see the module docstring); snapshotted state of the workflow flow."""

    STATE_VERSION = 2
    # version 1 kept no attempt's resources: its attempts count as their task's primary
    MIGRATIONS = {1: lambda s: {**s, "attempts": {t: [(*a, None) for a in v] for t, v in s["attempts"].items()},
                                "primary_uses": {}}}
    window_s: float = 24 * 3600.0
    lag_s: float = 30.0
    alert_lead_s: float = 10.0
    min_support: int = 5
    z_min: float = 3.0
    min_lift: float = 2.0
    # task -> [(ts_s, node, failed, uses)]: every finished attempt; uses None: the task's primary implementation's
    attempts: dict[str, list[tuple[float, str, bool, str | None]]] = field(default_factory=dict)
    # task -> what its primary implementation uses (comma-joined), as its failure signals said
    primary_uses: dict[str, str] = field(default_factory=dict)
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
        attributes = signal.get("attributes") or {}
        uses = attributes.get("recovery.uses")
        if uses is not None and attributes.get("recovery.implementation", "primary") == "primary":
            self.primary_uses[task] = uses
            uses = None
        self.attempts.setdefault(task, []).append((ts, signal.get("node_id", ""), failed, uses))
        if failed:
            self._event(task, ts, None)  # a task's failures can matter fleet-wide (a shared dependency)
        self._advance(ts)

    def declare_uses(self, task: str, uses) -> None:
        """What ``task``'s primary implementation uses, from the workflow's declaration (its signals may say later).

        A task that never failed says nothing of its resources in its signals;
        the workflow's spec (`edge.runtime.Step.uses`) does, so its links
        through shared resources are found before its first failure.
        """
        self.primary_uses.setdefault(task, ",".join(uses))

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
            for source, (p1, p0, f1, conf, z) in self._greedy(group, lambda s, e=exposures, f=free: (e[s], f),
                                                                failed, z_needed):
                kept.append(FailureEdge(source, task, round(p1, 4), round(p0, 4), f1, round(conf, 4), round(z, 2)))
                free &= ~exposures[source]
        return kept

    def resource_links(self) -> dict[str, list[FailureEdge]]:
        """Alerts linked to the resources attempts use ('dep:storage', 'accelerator', ...), pooled over every task.

        A cause acts on what an attempt depends on, so the attempts of all tasks
        (of every workflow) that use a resource are pooled: tasks that rarely
        fail, or run rarely, get their parents from the evidence of the others.
        For each alert source the resources are tested greedily, each among the
        attempts that use none of the resources already linked to the alert (a
        storage outage also fails attempts that use the network, but only
        through storage); then, for each resource, every alert competes to
        explain its attempts' failures greedily, each tested among the
        attempts not exposed to the alerts kept before (explaining away, as
        for tasks), and the resource keeps those of its candidates that stay. Computed on demand, cached until the
        next signal or alert.
        """
        key = (self.latest_s, sum(map(len, self.attempts.values())), sum(map(len, self.events.values())))
        cached = getattr(self, "_links", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        rows = [(a[0], a[1], a[2], a[3] if a[3] is not None else self.primary_uses.get(task))
                for task, items in self.attempts.items() for a in items]
        rows = [r for r in rows if r[3] is not None]
        alerts = sorted(s for s in self.events if s.startswith("alert:"))
        links: dict[str, list[FailureEdge]] = {}
        if rows and alerts:
            times = np.array([r[0] for r in rows])
            nodes = np.array([r[1] for r in rows], object)
            failed = np.array([r[2] for r in rows], bool)
            kinds = sorted({r[3] for r in rows})  # few distinct resource sets: test membership once per set
            kind = np.array([kinds.index(r[3]) for r in rows]) if len(kinds) > 1 else np.zeros(len(rows), int)
            resources = sorted({u for k in kinds for u in k.split(",") if u})
            uses = {u: np.isin(kind, [i for i, k in enumerate(kinds) if u in k.split(",")]) for u in resources}
            z_needed = self._z_needed(len(alerts) * len(resources))
            exposures = {a: self._exposure(a, times, nodes) for a in alerts}
            candidates: dict[str, list[str]] = {}
            for alert in alerts:
                covered = np.zeros(len(rows), bool)
                for resource in self._greedy(
                        resources, lambda u, a=exposures[alert], c=covered: (a, uses[u] & ~c), failed, z_needed, by=0):
                    candidates.setdefault(resource[0], []).append(alert)
                    covered |= uses[resource[0]]
            for resource, linked in candidates.items():
                # every alert competes to explain the resource's failures (an outage of another service
                # that overlapped this one's alerts), but only the candidates become links
                free = uses[resource].copy()
                kept = []
                for alert, (p1, p0, f1, conf, z) in self._greedy(alerts, lambda a, f=free: (exposures[a], f),
                                                                 failed, z_needed):
                    if alert in linked:
                        kept.append(FailureEdge(alert, resource, round(p1, 4), round(p0, 4), f1, round(conf, 4),
                                                round(z, 2), resource))
                    free &= ~exposures[alert]
                if kept:
                    links[resource] = kept
        object.__setattr__(self, "_links", (key, links))
        return links

    def _greedy(self, candidates: list[str], masks, failed: np.ndarray, z_needed: float, by: int = 4):
        """Yield (candidate, test) best first, re-testing the rest after each (``masks(c)``: exposure, free).

        "Best" is the highest z (``by`` 4) or the highest failure rate when exposed (``by`` 0: among nested
        candidates, a specific resource with a strong effect before a broad one that only dilutes it).
        """
        left = list(candidates)
        while left:
            scored = []
            for candidate in left:
                exposed, free = masks(candidate)
                result = self._test(exposed, failed, free, z_needed)
                if result is not None:
                    scored.append((result, candidate))
            if not scored:
                return
            result, best = max(scored, key=lambda rc: rc[0][by])
            left.remove(best)
            yield best, result

    def __getstate__(self):
        return {k: v for k, v in vars(self).items() if k != "_links"}

    def _edges_of(self, task: str) -> list[FailureEdge]:
        """The task's own edges, then those its primary implementation's resources give it.

        A link through a resource from a node-scoped alert applies only if the
        task ran on that node in the window.
        """
        own = self._parents_of(task)
        uses = [u for u in self.primary_uses.get(task, "").split(",") if u]
        if not uses:
            return own
        links = self.resource_links()
        seen = {e.source for e in own}
        ran_on = {a[1] for a in self.attempts.get(task, ())}
        out = list(own)
        for resource in uses:
            for link in links.get(resource, ()):
                scope = {n for _, n in self.events.get(link.source, ())}
                if link.source in seen or (None not in scope and not scope & ran_on):
                    continue
                seen.add(link.source)
                out.append(FailureEdge(link.source, task, link.weight, link.base, link.support, link.confidence,
                                       link.z, resource))
        return out

    def edges(self) -> list[FailureEdge]:
        """Every edge of the graph over the current window (computed on demand)."""
        return [e for task in sorted(self.attempts) for e in self._edges_of(task)]

    def parents(self, task: str) -> list[str]:
        return [e.source for e in self._edges_of(task)]

    def recovery_parents(self, tasks) -> dict[str, list[str]]:
        """What a published recovery policy carries: each task's parents, and each resource's ('@<resource>').

        A node checks the resources' parents for the implementations it could
        switch to: an alternative whose resources have an active parent is no
        way out.
        """
        out = {task: self.parents(task) for task in tasks}
        out.update({f"@{u}": [e.source for e in links] for u, links in sorted(self.resource_links().items())})
        return out

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
