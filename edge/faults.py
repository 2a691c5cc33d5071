"""Why steps fail: failure classes, recovery decisions, and a fault simulator whose causes evolve over time.

The vocabulary the runtime and every recovery policy share:

* error classes (`TIMEOUT`, `RESOURCE_EXHAUSTED`, `DEPENDENCY_UNAVAILABLE`,
  `BAD_INPUT`, `NODE_LOST`, `INTERNAL`) and `classify` for any exception;
* `StepFailure` (a step attempt failed, with its class) and `NodeLost` (the
  node stopped: the run must be resumed elsewhere);
* `Failure` (what a policy sees at the moment of failure) and `Decision`
  (retry after a delay, switch to an alternative, take the fallback branch,
  move the run to another node, fail fast), and `shield`, the rule that always
  holds: a critical step that is not idempotent is never executed twice.

`FaultSimulator` injects failures into `edge.runtime.WorkflowRun` attempts from
causes with a life of their own: a shared dependency that degrades and recovers,
thermal pressure on a node, network congestion on a node's link, independent
transient faults, poisoned inputs and whole-node loss. Cause timelines are
alternating renewal processes drawn once from the seed, and every per-attempt
draw is a hash of (seed, run, step, implementation, attempt), so every policy
replayed against the same simulator sees the same fault sequence. The
simulator also emits what a fleet's monitoring would see of each cause (probe
and telemetry alerts, with misses and false alarms) and knows its true causal
structure, against which `fingerprint.failures` is checked.

>>> sim = FaultSimulator(FaultScenario("outage", outages={"storage": (300.0, 60.0)}), seed=1, horizon_s=3600)
>>> ep = sim.episodes[0]
>>> ep.cause, ep.end_s > ep.start_s
('dep:storage', True)
>>> sim.failure_at(ep.start_s + 1, "r1", "load", "primary", 1, "edge-1", ("dep:storage",))
('DEPENDENCY_UNAVAILABLE', 0.5, 'dep:storage')
>>> sim.failure_at(ep.start_s + 1, "r1", "load", "backup", 1, "edge-1", ("dep:storage-backup",)) is None
True
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

TIMEOUT, RESOURCE_EXHAUSTED, DEPENDENCY_UNAVAILABLE = "TIMEOUT", "RESOURCE_EXHAUSTED", "DEPENDENCY_UNAVAILABLE"
BAD_INPUT, NODE_LOST, INTERNAL = "BAD_INPUT", "NODE_LOST", "INTERNAL"
ERROR_CLASSES = (TIMEOUT, RESOURCE_EXHAUSTED, DEPENDENCY_UNAVAILABLE, BAD_INPUT, NODE_LOST, INTERNAL)

RETRY, ALTERNATIVE, FALLBACK, FAIL = "RETRY", "ALTERNATIVE", "FALLBACK", "FAIL"
#: Resume the run from its last committed step on another node (the failed step runs again there): the way
#: out of a cause scoped to this node (its link's congestion, its accelerator's heat) for a step whose every
#: implementation uses what the cause degrades. Only an orchestrator that moves runs can do it
#: (``Failure.can_migrate``), as it resumes a lost node's runs.
MIGRATE = "MIGRATE"


class StepFailure(Exception):
    """A step attempt failed for a known class of reason; ``cost_s`` is how long the attempt took to fail."""

    def __init__(self, error_class: str, message: str = "", cost_s: float = 0.0):
        super().__init__(f"{error_class}: {message}" if message else error_class)
        self.error_class, self.cost_s = error_class, cost_s


class NodeLost(Exception):
    """The node stopped (its worker was killed): the run can only be resumed on another node."""

    error_class = NODE_LOST


def classify(exc: BaseException) -> str:
    """The error class of any exception a step raised."""
    if isinstance(exc, (StepFailure, NodeLost)):
        return exc.error_class
    if isinstance(exc, TimeoutError):
        return TIMEOUT
    if isinstance(exc, MemoryError):
        return RESOURCE_EXHAUSTED
    if isinstance(exc, (ConnectionError, OSError)):
        return DEPENDENCY_UNAVAILABLE
    if isinstance(exc, (ValueError, KeyError, TypeError, IndexError)):
        return BAD_INPUT
    return INTERNAL


@dataclass(frozen=True)
class Failure:
    """What a recovery policy knows at the moment a step attempt failed."""

    workflow_id: str
    run_id: str
    step: str
    node_id: str
    error_class: str
    attempt: int                  # the attempt that failed, 1 for the first
    ts_s: float                   # event time of the failure
    implementation: str = "primary"
    critical: bool = False
    idempotent: bool = True
    alternatives: tuple[str, ...] = ()   # alternatives not tried yet in this run
    has_fallback: bool = False
    uses: tuple[str, ...] = ()           # what the failed implementation depends on
    alternative_uses: tuple[tuple[str, ...], ...] = ()   # what each of ``alternatives`` depends on
    can_migrate: bool = False            # an orchestrator would resume the run on another node (`MIGRATE`)


@dataclass(frozen=True)
class Decision:
    """What to do after a failure; ``policy_version`` 0 is a static retrier (no learned policy)."""

    action: str
    delay_s: float = 0.0
    alternative: str | None = None
    policy_version: int = 0
    reason: str = ""
    state: str = ""          # the policy's state key, sent with the failure so a central learner sees it

    def describe(self) -> str:
        if self.action == RETRY:
            return f"RETRY {self.delay_s:g}s"
        if self.action == ALTERNATIVE:
            return f"ALTERNATIVE {self.alternative}"
        return self.action


def shield(failure: Failure, decision: Decision, max_attempts: int = 10) -> Decision:
    """The decision made safe: what any learned or static policy must obey.

    A critical step that is not idempotent may have taken effect before it
    failed, so it is never executed again (neither retried, nor switched to an
    alternative, nor moved to another node): it takes its fallback branch if
    it has one, else it fails. An alternative or fallback that does not exist,
    a move where no orchestrator can move the run, and any attempt past
    ``max_attempts``, fail fast.

    >>> f = Failure("wf", "r", "write", "n", TIMEOUT, 1, 0.0, critical=True, idempotent=False)
    >>> shield(f, Decision(RETRY, 1.0)).action
    'FAIL'
    >>> shield(Failure("wf", "r", "load", "n", TIMEOUT, 1, 0.0), Decision(MIGRATE)).reason
    'no orchestrator to move the run'
    """
    once_only = failure.critical and not failure.idempotent
    action = decision.action
    if action in (RETRY, ALTERNATIVE, MIGRATE) and (once_only or failure.attempt >= max_attempts):
        reason = "critical, not idempotent: never re-executed" if once_only else f"{max_attempts} attempts"
        if failure.has_fallback:
            return Decision(FALLBACK, policy_version=decision.policy_version, reason=reason, state=decision.state)
        return Decision(FAIL, policy_version=decision.policy_version, reason=reason, state=decision.state)
    if action == ALTERNATIVE:
        if not failure.alternatives:
            return Decision(FAIL, policy_version=decision.policy_version, reason="no alternative left",
                            state=decision.state)
        if decision.alternative not in failure.alternatives:
            return Decision(ALTERNATIVE, alternative=failure.alternatives[0], policy_version=decision.policy_version,
                            reason=decision.reason, state=decision.state)
    if action == MIGRATE and not failure.can_migrate:
        return Decision(FAIL, policy_version=decision.policy_version, reason="no orchestrator to move the run",
                        state=decision.state)
    if action == FALLBACK and not failure.has_fallback:
        return Decision(FAIL, policy_version=decision.policy_version, reason="no fallback branch", state=decision.state)
    return decision


# -- the simulator ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Episode:
    """One stretch of time a cause is active: ``cause`` is e.g. 'dep:storage', 'thermal:edge-1', 'congestion:edge-2'."""

    cause: str
    start_s: float
    end_s: float

    def active(self, t: float) -> bool:
        return self.start_s <= t < self.end_s


@dataclass(frozen=True)
class FaultScenario:
    """Which causes a scenario has, each as (mean time between episodes, mean episode length) in seconds.

    ``outages`` by dependency name, ``thermal`` and ``congestion`` by node;
    ``transient_p`` is the independent failure probability of any attempt,
    ``bad_input_p`` the share of runs whose input no attempt can process, and
    ``node_losses`` ((node, at_s, for_s), ...) nodes that stop for a while.
    """

    name: str
    outages: dict[str, tuple[float, float]] = field(default_factory=dict)
    thermal: dict[str, tuple[float, float]] = field(default_factory=dict)
    congestion: dict[str, tuple[float, float]] = field(default_factory=dict)
    transient_p: float = 0.0
    bad_input_p: float = 0.0
    node_losses: tuple[tuple[str, float, float], ...] = ()


#: How each cause makes an attempt fail: the resource an implementation must use to be hit, the failure
#: probability while the cause is active, the class, and how long the failing attempt takes (s).
EFFECTS = {
    "dep": (0.9, DEPENDENCY_UNAVAILABLE, 0.5),
    "thermal": (0.8, RESOURCE_EXHAUSTED, 2.0),
    "congestion": (0.85, TIMEOUT, 10.0),
}


class FaultSimulator:
    """Failures of runtime attempts from causes that evolve over (event) time; see the module docstring.

    An implementation declares what it ``uses``: ``dep:<name>`` (a shared
    dependency), ``accelerator`` (hit by its node's thermal pressure) and
    ``network`` (hit by its node's link congestion). ``failure_at`` says whether
    an attempt at time ``t`` fails, with which class and after how long.
    """

    def __init__(self, scenario: FaultScenario, seed: int, horizon_s: float, *, probe_s: float = 5.0,
                 detect_p: float = 0.9, false_alarm_p: float = 0.005):
        self.scenario, self.seed, self.horizon_s = scenario, seed, horizon_s
        self.probe_s, self.detect_p, self.false_alarm_p = probe_s, detect_p, false_alarm_p
        rng = random.Random(f"faults/{scenario.name}/{seed}")
        causes = ([(f"dep:{d}", v) for d, v in sorted(scenario.outages.items())]
                  + [(f"thermal:{n}", v) for n, v in sorted(scenario.thermal.items())]
                  + [(f"congestion:{n}", v) for n, v in sorted(scenario.congestion.items())])
        self.episodes: list[Episode] = []
        for cause, (gap, length) in causes:
            t = rng.expovariate(1 / gap)
            while t < horizon_s:
                d = max(5.0, rng.expovariate(1 / length))
                self.episodes.append(Episode(cause, t, t + d))
                t += d + rng.expovariate(1 / gap)
        self.causes = tuple(c for c, _ in causes)

    def _u(self, *key) -> float:
        h = hashlib.blake2b("/".join(map(str, (self.seed, *key))).encode(), digest_size=8).digest()
        return int.from_bytes(h, "little") / 2 ** 64

    def active(self, t: float) -> list[str]:
        return [e.cause for e in self.episodes if e.active(t)]

    def node_down(self, node: str, t: float) -> bool:
        return any(n == node and at <= t < at + length for n, at, length in self.scenario.node_losses)

    def failure_at(self, t: float, run_id: str, step: str, implementation: str, attempt: int, node: str,
                   uses: tuple[str, ...]) -> tuple[str, float, str] | None:
        """(error class, seconds the attempt took to fail, the cause) if this attempt fails, else None."""
        if self.node_down(node, t):
            return NODE_LOST, 0.0, f"down:{node}"
        if "input" in uses and self.bad_input(run_id):
            return BAD_INPUT, 0.1, "bad-input"
        for cause in self.active(t):
            kind, _, where = cause.partition(":")
            p, error_class, cost = EFFECTS[kind]
            hit = (kind == "dep" and cause in uses) or (where == node and (
                (kind == "thermal" and "accelerator" in uses) or (kind == "congestion" and "network" in uses)))
            if hit and self._u(cause, run_id, step, implementation, attempt) < p:
                return error_class, cost, cause
        if self._u("transient", run_id, step, implementation, attempt) < self.scenario.transient_p:
            if self._u("class", run_id, step, attempt) < 0.5:
                return TIMEOUT, 1.0, "transient"
            return DEPENDENCY_UNAVAILABLE, 0.2, "transient"
        return None

    def bad_input(self, run_id: str) -> bool:
        """Whether this run's input is poisoned: every step that parses it (uses 'input') fails, whatever is tried."""
        return bool(self.scenario.bad_input_p) and self._u("bad", run_id) < self.scenario.bad_input_p

    def indicators(self, t0: float, t1: float) -> list[tuple[float, str, str | None]]:
        """Monitoring alerts in [t0, t1): (time, source, node or None), one probe every ``probe_s``.

        A probe sees an active cause with probability ``detect_p`` and raises a
        false alarm on an idle one with probability ``false_alarm_p``. Node
        causes come from the node's telemetry, dependency causes from a health
        probe; the source names the cause ('alert:dep:storage').
        """
        out = []
        k = int(t0 // self.probe_s)
        while k * self.probe_s < t1:
            t = k * self.probe_s
            if t >= t0:
                active = set(self.active(t))
                for cause in self.causes:
                    p = self.detect_p if cause in active else self.false_alarm_p
                    if self._u("probe", cause, k) < p:
                        kind, _, where = cause.partition(":")
                        out.append((t, f"alert:{cause}", where if kind != "dep" else None))
            k += 1
        return out

    def true_edges(self, placement: dict[str, tuple[str, ...]],
                   uses: dict[str, tuple[str, ...]]) -> set[tuple[str, str]]:
        """The true causal edges (alert source -> 'workflow/step') given where each workflow runs.

        ``placement`` maps a workflow to its nodes, ``uses`` maps 'workflow/step'
        to what the step's primary implementation uses. Independent transients
        and bad inputs have no edge.
        """
        edges = set()
        for cause in {e.cause for e in self.episodes}:
            kind, _, where = cause.partition(":")
            for task, used in uses.items():
                wf = task.split("/", 1)[0]
                if kind == "dep" and cause in used or kind != "dep" and where in placement.get(wf, ()) and (
                        (kind == "thermal" and "accelerator" in used) or (kind == "congestion" and "network" in used)):
                    edges.add((f"alert:{cause}", task))
        return edges


class SimClock:
    """Event time for simulated runs: attempts and waits advance it instead of sleeping."""

    def __init__(self, start_s: float = 0.0):
        self.t = start_s

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += max(0.0, seconds)


class SimulatedFaults:
    """The runtime's fault source in simulation: each attempt advances ``clock`` and may fail.

    ``duration_s(step, implementation)`` is how long a successful attempt takes
    in event time (the body itself runs at machine speed). Use the clock as
    the run's ``clock`` and ``clock.advance`` as its ``wait``.
    """

    def __init__(self, simulator: FaultSimulator, clock: SimClock, duration_s):
        self.simulator, self.clock, self.duration_s = simulator, clock, duration_s
        self.caused: dict[tuple[str, str], int] = {}   # (cause, 'workflow/step') -> failures it caused

    def before_attempt(self, run, step, implementation: str, uses: tuple[str, ...], attempt: int) -> None:
        hit = self.simulator.failure_at(self.clock(), run.run_id, step.name, implementation, attempt,
                                        run.node_id, uses)
        if hit is None:
            self.clock.advance(self.duration_s(step.name, implementation))
            return
        error_class, cost, cause = hit
        self.caused[(cause, f"{run.workflow_id}/{step.name}")] = self.caused.get(
            (cause, f"{run.workflow_id}/{step.name}"), 0) + 1
        self.clock.advance(cost)
        if error_class == NODE_LOST:
            raise NodeLost(run.node_id)
        raise StepFailure(error_class, f"injected on {run.node_id} at {self.clock():.1f}s", cost)
