"""Recovering from step failures: a Q-learning recovery agent, the policy nodes apply, and the static baselines.

The agent (`QRecoveryAgent`) learns centrally, in the workflow flow, from every
node's failure signals; it publishes a `RecoveryPolicyTable` (a version, the
greedy action per state, each step's causal parents); a node applies the
latest table locally at the moment of failure (`PolicyRecovery`), with no round
trip, and uses the Step Functions retrier where it has no table or has never
seen the state. Every decision carries the policy version, and the runtime's
shield (`edge.faults.shield`) sits between any policy and the step.

State (compact, tabular): the step's *recovery profile* (alternatives left,
fallback branch, whether it may be re-executed) — rather than its name, so what
is learned on one step carries over to the steps of large WfCommons workflows
that fail rarely —, the error class, the attempt (1, 2, 3, 4+), the step's
recent failure rate (< 0.1, < 0.5, more), whether one of its causal parents
(`fingerprint.failures`) is active now, whether an alternative is a *way out*
(one whose resources have no active causal parent: a backup replica that reads
the same failing storage is not), whether the node raised an anomaly alert,
and whether it is under pressure. Every transition also updates a coarse state
without the rate, anomaly and pressure (`coarse_key`), which a node uses where
the fine one was never visited. Actions: retry at once or after 1, 5, 15, 30 or 60 s,
switch to an alternative, take the fallback branch, fail fast, or move the run
to another node (`edge.faults.MIGRATE`, where an orchestrator can: the node's
`Failure.can_migrate`; elsewhere a node that was told to move uses the static
retrier). Without the move, a cause scoped to the node (its link's congestion)
leaves a step whose every implementation uses the link two choices: retry into
the cause (a congested attempt fails 85 % of the time after 10 s, and the
cause's remaining length is memoryless, so waiting longer buys little) or give
the run up; on `bench/resilience.py` seed 0 the agent gave up 37 such runs at
their first TIMEOUT, 13 of which Step Functions' retrier completed.

Reward, as in the seed: +1 for a success, −1 for a failure, where what
succeeds or fails is the run (an episode is a run: a step recovered under a
lasting cause may only hand the run to the next step the cause fails, so a
recovered step leads to the run's next incident, and +1 comes when the run
completes, 0 when a fallback branch degraded it, −1 when it is given up);
minus the time each recovery took in units of ``time_cost_s`` (our addition:
with ±1 alone the agent is indifferent to MTTR) and ``attempt_cost`` per failed
attempt (the resources a retry wastes). Update: Q(s,a) ← Q(s,a) + α[R +
γ·max Q(s',a') − Q(s,a)], and the seed's score per step V ← V + λ(R − V) (R the
attempt's ±1).

Completion is not traded against time at a fixed rate: one scalar reward
prices a lost run as a fixed number of seconds, and under a slow cause (a
congested link whose failing attempts take 10 s each) giving up at once then
looks cheaper than the retries that would have completed the run — how much
cheaper depends on the fleet's faults, so no one price holds on every fault
sequence. The agent also learns, with the same update, C(s,a): the probability
that the run eventually completes (not degraded) when ``a`` is taken in ``s``
and the policy is followed after, and chooses by a constraint: complete at
least as often as Step Functions' retrier would (learned from the transitions that
took `reference_action`, what the retrier does in the state), at the best
reward. The constraint is the
fleet's, priced by a Lagrange multiplier μ that dual ascent raises at each
publication while the policy completes less often than the retrier would
(`completion_gap`) and lowers while it completes more; the choice is
argmax Q(s,a) + μ·C(s,a). Maximising completion outright waits out every
outage (MTTR three to four times Step Functions'); holding the retrier's
completion in every state spends as long as the retrier where completion is
dear (MTTR 0.8 of Step Functions' on the tuning seed). By default μ is a
fixed prior (1: a completed run is worth one more reward unit, ten seconds
of recovery) and the dual ascent is off: its gap compares C with the
retrier's completion learned from the few transitions that took the
retrier's own action (0 in the first-failure states of the congestion
scenario, seed 0, where the retrier completes about half the incidents),
so μ stayed 0 on every causal scenario of `bench/resilience.py` seeds 0–2
and the agent gave up congested steps at their first failure. The price alone buys retry storms on cheap failing
attempts (a dead dependency's 0.5 s), so no retry is allowed past the
retrier's own last (`RETRY_BUDGET`): wasted attempts stay below the
retrier's.

References
----------
Watkins, C. J. C. H., Dayan, P. (1992). Q-learning. Machine Learning 8, 279–292.
AWS Step Functions, "Handling errors": Retry fields (IntervalSeconds 1, MaxAttempts 3, BackoffRate 2.0).
Brooker, M. (2015). Exponential Backoff And Jitter. AWS Architecture Blog ("full jitter").
Temporal, "Retry Policies": initial interval 1 s, coefficient 2.0, maximum interval 100 × initial.
Resilience4j CircuitBreaker defaults: failureRateThreshold 50, slidingWindowSize 100, waitDurationInOpenState 60 s.

Examples
--------
>>> from edge.faults import Failure, TIMEOUT
>>> agent = QRecoveryAgent(alpha=0.5)
>>> s = state_key(Failure("wf", "r1", "load", "n1", TIMEOUT, 1, 0.0, alternatives=("cached",)), NodeContext())
>>> s
'a-i|TIMEOUT|1|0|0|1|0|0'
>>> for _ in range(20):
...     agent.learn_transition(s, "ALTERNATIVE", 1.0, None)
...     agent.learn_transition(s, "RETRY 1s", -1.0, None)
>>> agent.predict_one(s)  # never tried, so optimistically worth the best reward: it is tried next
'RETRY 0s'
>>> for action in valid_actions(s):
...     if action != "ALTERNATIVE":
...         agent.learn_transition(s, action, -1.0, None)
>>> agent.predict_one(s)
'ALTERNATIVE'
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import ClassVar

from edge.faults import ALTERNATIVE, BAD_INPUT, FAIL, FALLBACK, MIGRATE, NODE_LOST, RETRY, Decision, Failure
from fingerprint.failures import FailureGraph
from schemas.state import Versioned

DELAYS_S = (0.0, 1.0, 5.0, 15.0, 30.0, 60.0)  # 0: at once (right for an independent transient)
ACTIONS = tuple(f"RETRY {d:g}s" for d in DELAYS_S) + (ALTERNATIVE, FALLBACK, FAIL, MIGRATE)
RETRY_BUDGET = 3  # no retry after the attempt Step Functions' retrier (MaxAttempts 3) gives up at
FIRST_FAILURE_FLOOR = 0.0  # off: on the tuning seed every floor tried cost more MTTR than the target allows


@dataclass(frozen=True)
class NodeContext:
    """What the node knows locally when a step fails (see `FailureView`).

    ``way_out``: an alternative left whose resources have no active causal
    parent (None: the step has no alternative left to judge).
    """

    step_rate: float = 0.0
    parent_active: bool = False
    anomaly: bool = False
    pressure: float = 0.0
    way_out: bool | None = None


def state_key(failure: Failure, ctx: NodeContext) -> str:
    """The tabular state of a failure (see the module docstring)."""
    profile = (("a" if failure.alternatives else "-") + ("f" if failure.has_fallback else "-")
               + ("n" if failure.critical and not failure.idempotent else "i"))
    rate = 0 if ctx.step_rate < 0.1 else 1 if ctx.step_rate < 0.5 else 2
    way_out = int(bool(failure.alternatives) if ctx.way_out is None else ctx.way_out)
    return (f"{profile}|{failure.error_class}|{min(failure.attempt, 4)}|{rate}|{int(ctx.parent_active)}"
            f"|{way_out}|{int(ctx.anomaly)}|{int(ctx.pressure >= 0.8)}")


def coarse_key(state: str) -> str:
    """The state without the step's failure rate, the anomaly and the pressure bits: what a node falls back on.

    The fine table fragments quickly (3 x 2 x 2 variants of each coarse state);
    the coarse one is learned from the same transitions and answers where the
    fine one has not been visited yet.

    >>> coarse_key("a-i|TIMEOUT|1|2|1|0|1|0")
    'a-i|TIMEOUT|1|*|1|0|*|*'
    """
    f = state.split("|")
    return "|".join(f[:3] + ["*"] + f[4:6] + ["*", "*"]) if len(f) == 8 else state


def after_key(state: str) -> str:
    """The afterstate of a recovered step: its coarse state without the attempt (see `QRecoveryAgent`).

    >>> after_key("a-i|TIMEOUT|3|2|1|0|1|0")
    'a-i|TIMEOUT|*|*|1|0|*|*'
    """
    f = coarse_key(state).split("|")
    return "|".join(f[:2] + ["*"] + f[3:]) if len(f) == 8 else state


def valid_actions(state: str) -> list[str]:
    """The actions a state allows: no alternative or fallback that does not exist, no re-execution of a once-only step.

    No retry either once ``RETRY_BUDGET`` retries were made (the state's
    attempt is past it): beyond the static retrier's last retry, the runs a
    retry still completes are bought with more wasted attempts than they
    are worth (a storm of 0.5 s retries on a dead dependency). A move to
    another node re-executes the step, so it is allowed where a retry is.

    >>> [a for a in valid_actions("a-i|TIMEOUT|4|*|1|0|*|*") if a.startswith("RETRY")]
    []
    >>> valid_actions("a-i|TIMEOUT|3|*|1|0|*|*")[:2]
    ['RETRY 0s', 'RETRY 1s']
    """
    fields = state.split("|")
    profile = fields[0]
    spent = len(fields) > 2 and int(fields[2]) > RETRY_BUDGET
    out = []
    for action in ACTIONS:
        if action == ALTERNATIVE and (profile[0] != "a" or profile[2] == "n"):
            continue
        if (action.startswith(RETRY) or action == MIGRATE) and (profile[2] == "n" or spent):
            continue
        if action == FALLBACK and profile[1] != "f":
            continue
        out.append(action)
    return out


def retry_delay_s(action: str) -> float:
    """The delay of a retry action or recovery field, seconds.

    >>> retry_delay_s("RETRY 5s"), retry_delay_s("RETRY 0.5s")
    (5.0, 0.5)
    """
    return float(action.split()[1].rstrip("s"))


def action_of(recovery: str | None) -> str | None:
    """A signal's ``recovery`` field as one of `ACTIONS` (retry delays binned to the nearest delay of the set)."""
    if not recovery:
        return None
    if recovery.startswith(RETRY):
        delay = retry_delay_s(recovery)
        return f"RETRY {min(DELAYS_S, key=lambda d: abs(d - delay)):g}s"
    return recovery.split()[0]


def reference_action(state: str) -> str:
    """What Step Functions' default retrier does in a state (its delay binned as `action_of` does).

    The agent's completion is held against the retrier's (`QRecoveryAgent.completion_gap`).

    >>> [reference_action(f"a-i|TIMEOUT|{k}|0|0|1|0|0") for k in (1, 2, 3, 4)]
    ['RETRY 1s', 'RETRY 1s', 'RETRY 5s', 'FAIL']
    """
    attempt = int(state.split("|")[2])
    return action_of(step_functions_default().decide(Failure("", "", "", "", "", attempt, 0.0)).describe())


def decision_of(action: str, failure: Failure, version: int, state: str, reason: str) -> Decision:
    if action.startswith(RETRY):
        return Decision(RETRY, retry_delay_s(action), policy_version=version, reason=reason, state=state)
    alternative = failure.alternatives[0] if action == ALTERNATIVE and failure.alternatives else None
    return Decision(action, alternative=alternative, policy_version=version, reason=reason, state=state)


@dataclass
class QRecoveryAgent(Versioned):
    """Tabular Q-learning over failure states, fed with the fleet's WorkflowSignals (see the module docstring).

    Parameters
    ----------
    alpha, gamma
        Learning rate and discount of the Q update. Runs end, so γ is 1: below
        1, putting off a given-up step's −1 by one more hopeless retry (a
        poisoned input) would look better than giving up.
    score_rate
        λ of the seed's per-step score V ← V + λ(R − V).
    time_cost_s
        Seconds of recovery that cost as much as one failure. At 60 s the
        agent waited out most outages (completion up, MTTR three to four
        times Step Functions'); at 10 s it takes a way out or gives up
        instead (`bench/resilience.py`: chosen on one seed, checked on two
        others).
    attempt_cost
        Reward a failed attempt costs besides its time. Under a lasting cause
        a retry is a lottery (a thermal-throttled accelerator fails 80 % of
        attempts, each in 2 s): at 0 the agent bought a few more completed
        runs with 1.8 times Step Functions' wasted attempts, at 0.25 and more
        it gave up the lottery and the runs with it (`bench/resilience.py`:
        0.2 chosen on one seed among 0 to 1, checked on four others).
    min_visits
        Visits of a state before the published table holds an action for it.
    shrinkage
        Visits of a fine state's action that weigh as much as its coarse
        state's value (`estimate`).
    optimism
        Value of an action not tried yet in a state: optimistic (the best
        reward), so the greedy policy tries every allowed action of a state
        once before it settles ("optimism in the face of uncertainty"); the
        nodes' data would otherwise only hold what the static retrier did.
        An untried action's completion is optimistic too (1). The bound is
        the best the reward allows for that action (`untried_bound`): a retry
        after ``d`` s cannot earn more than ``optimism − d / time_cost_s``,
        giving up earns −1 and never completes, the fallback branch at best 0
        and a degraded run. A flat bound tried the actions in `ACTIONS` order,
        one per state between two publications: the long delays (which the
        time cost alone makes worse than giving up) before the move, which
        on `bench/resilience.py --seed 1` was never tried in the thermal
        scenario's first-failure states in 600 warm-up runs.
    completion_floor
        Whether the choice is constrained to complete, over the fleet's
        failures, at least as often as the static retrier would (a Lagrange
        multiplier, ``completion_price``, on the completion table; see
        `choice_value`); False: the scalar reward alone, as in the seed.
    price_rate
        Step of the multiplier's update at each publication (`update_price`):
        reward units per unit of completion shortfall. 0 (the default): the
        price stays at its prior (see the module docstring).
    completion_price
        The multiplier: what one more completed run is worth in reward units,
        on top of the reward's own +1 / −1. The prior 1 was chosen on
        `bench/resilience.py` seeds 0–2 (seeds 3–5 held out): with the retry
        budget, 1.5 cost more MTTR for no more completion; without it, 0.5 /
        0.75 / 1 / 2 bought completion with up to 2.7 times the retrier's
        wasted attempts.
    first_failure_floor
        At a step's first failure under an active cause, the actions allowed
        are those estimated (in the state, shrunk towards its coarse state,
        which pools every step of every workflow with the same profile and
        error class) to complete the run at least this often, when there are
        any; 0 (the default) leaves the choice to the reward. See `feasible`.
        On `bench/resilience.py --seed 3` (the causal scenarios pooled; with
        μ 0 and no retry budget, before the fixed price) 0.1 / 0.2 / 0.3
        raised completion from 0.890 to 0.902 / 0.900 / 0.912
        (Step Functions 0.879) but MTTR from 0.50 to 0.88 / 0.99 / 2.16 of
        Step Functions' and wasted attempts from 319 to 540 / 510 / 462 (its
        361): under a lasting cause the runs it keeps are bought with
        retries that take as long as the cause lasts.
    """

    STATE_VERSION = 7
    # version 1's state keys had no way-out bit: its table is not carried over (relearned); its
    # publication count is, so the nodes take the next tables as newer. Version 2 had no completion
    # table: it starts empty, and until it fills the floor does not bind (the scalar choice, as before)
    MIGRATIONS: ClassVar[dict] = {1: lambda s: {**s, "q": {}, "visits": {}, "pending": {}},
                                   2: lambda s: {**s, "completion": {}, "static_completion": {},
                                                 "completion_floor": True, "price_rate": 5.0,
                                                 "completion_price": 0.0},
                                   # version 3's episodes were steps: its tables are kept (relearned as runs go by)
                                   3: lambda s: {**s, "recovered": {}, "run_outcome": {}},
                                   # version 4 had no first-failure floor: it takes today's default
                                   4: lambda s: {**s, "first_failure_floor": FIRST_FAILURE_FLOOR},
                                   # version 5 had no afterstate values: they start empty
                                   5: lambda s: {**s, "afterstate": {}},
                                   # version 6 had no recovery rates: its values keep the afterstate values they
                                   # were learned with until relearned
                                   6: lambda s: {**s, "recovers": {}}}
    alpha: float = 0.1
    gamma: float = 1.0
    score_rate: float = 0.05
    time_cost_s: float = 10.0
    attempt_cost: float = 0.2
    min_visits: int = 1
    optimism: float = 1.0
    shrinkage: float = 5.0
    completion_floor: bool = True
    price_rate: float = 0.0
    completion_price: float = 1.0
    first_failure_floor: float = FIRST_FAILURE_FLOOR
    q: dict[str, dict[str, float]] = field(default_factory=dict)
    completion: dict[str, dict[str, float]] = field(default_factory=dict)
    static_completion: dict[str, float] = field(default_factory=dict)
    visits: dict[str, dict[str, int]] = field(default_factory=dict)
    score: dict[str, float] = field(default_factory=dict)
    pending: dict[tuple[str, str], tuple[str, str, float]] = field(default_factory=dict)
    # run -> its recovered steps' (state, action, reward so far), closed by its next incident or its end
    recovered: dict[str, list[tuple[str, str, float]]] = field(default_factory=dict)
    run_outcome: dict[str, float] = field(default_factory=dict)   # run -> 0 degraded, -1 given up (absent: +1)
    # afterstate -> [value, completion, visits] of the run once a step in it is recovered (`_close_recovered`)
    afterstate: dict[str, list] = field(default_factory=dict)
    # state -> action -> how often the action recovered the step (learned at Q's rates): the share of the afterstate's
    # value in the action's (`_close_recovered`)
    recovers: dict[str, dict[str, float]] = field(default_factory=dict)
    published: int = 0
    version: int = STATE_VERSION

    def learn_transition(self, state: str, action: str, reward: float, next_state: str | None,
                         completed: float | None = None, recovered: bool = False) -> None:
        """One Q-learning update (``next_state`` None: the episode ended).

        ``completed`` (1 the run completed, 0 it failed or was degraded; with
        a ``next_state``, ignored: the next state's completion is bootstrapped)
        also updates the completion table; None leaves it alone.
        ``recovered``: the step was recovered, ``reward`` includes the
        afterstate's value (`_close_recovered`).
        """
        row = self.q.setdefault(state, {})
        target = reward
        if next_state is not None:
            target += self.gamma * self._tried_value(next_state)
        counts = self.visits.setdefault(state, {})
        counts[action] = counts.get(action, 0) + 1
        rate = max(self.alpha, 1.0 / counts[action])  # the first sample replaces the optimistic start
        row[action] = self._value(state, action) + rate * (target - self._value(state, action))
        r_row = self.recovers.setdefault(state, {})
        r_row[action] = r_row.get(action, 0.0) + rate * (float(recovered) - r_row.get(action, 0.0))
        if completed is not None or next_state is not None:
            # undiscounted: the probability of completing, whenever it happens (time is the reward's business)
            c_target = completed if next_state is None else self._followed_completion(next_state)
            c_row = self.completion.setdefault(state, {})
            old = c_row.get(action, 1.0)
            c_row[action] = old + rate * (c_target - old)
            if action == reference_action(state):
                # what the static retrier completes from here, its own continuation (not the policy's) included
                s_target = completed if next_state is None else self.static_completion.get(
                    next_state, self._followed_completion(next_state))
                old = self.static_completion.get(state, s_target)
                self.static_completion[state] = old + rate * (s_target - old)

    def _followed_completion(self, state: str) -> float:
        """C of the action the policy takes in ``state`` among those tried (fine, else coarse; none: 0)."""
        action = self.predict_one(state, explore=False, min_visits=0)
        if action is None:
            return 0.0
        return self.estimate(state, action, self.completion)

    def _learn_both(self, state: str, action: str, reward: float, next_state: str | None,
                    completed: float | None = None, recovered: bool = False) -> None:
        """The transition in the fine table and in the coarse one (`coarse_key`)."""
        self.learn_transition(state, action, reward, next_state, completed, recovered)
        if coarse_key(state) != state:
            self.learn_transition(coarse_key(state), action, reward,
                                  None if next_state is None else coarse_key(next_state), completed, recovered)

    def _tried_value(self, state: str) -> float:
        """The best value among actions tried in ``state`` (else in its coarse state, else 0).

        Bootstrapping from untried actions' optimistic values would make any
        action that leads to a rarely seen state look good for ever (a poisoned
        input retried ten times); the optimism is for choosing, not for valuing.
        """
        for key in (state, coarse_key(state)):
            if self.q.get(key):
                return max(self.q[key].values())
        return 0.0

    def _value(self, state: str, action: str) -> float:
        return self.q.get(state, {}).get(action, self.optimism)

    def learn_one(self, signal: dict) -> None:
        """Take a WorkflowSignal: a failed finish opens a transition, what follows in the run closes it.

        An episode is the run, not the step: the completion that counts is the
        run's, and under a lasting cause a step recovered by many retries may
        only hand the run to the next step that the same cause fails. So a
        failed attempt the step is recovered from next leads to the next
        decision's state at the cost of its time; a recovered step leads to the
        run's next incident (its first failure's state) at the cost of its
        recovery time; +1 comes when the run ends complete (0 degraded by a
        fallback branch) and −1 when it is given up (FAIL).
        """
        if signal.get("state") != 0:
            return
        run, step = signal["run_id"], f"{signal['workflow_id']}/{signal['task']}"
        key, ts = (run, step), signal["ts_ms"] / 1000.0
        state = (signal.get("attributes") or {}).get("recovery.state")
        failed = signal.get("outcome") == "FAILURE"
        opened = self.pending.pop(key, None)
        if opened is not None:
            s, a, t0 = opened
            cost = (ts - t0) / self.time_cost_s
            outcome = -1.0 if failed else (0.0 if a == FALLBACK else 1.0)
            self.score[step] = self.score.get(step, 0.0) + self.score_rate * (outcome - self.score.get(step, 0.0))
            if failed and state:
                self._learn_both(s, a, -cost - self.attempt_cost, state)
            elif failed:  # no decision followed: the run failed here
                self._learn_both(s, a, -1.0 - cost - self.attempt_cost, None, 0.0)
                self.run_outcome[run] = -1.0
            else:
                self.recovered.setdefault(run, []).append((s, a, -cost))
                if a == FALLBACK:
                    self.run_outcome[run] = min(self.run_outcome.get(run, 1.0), 0.0)
        action = action_of(signal.get("recovery"))
        if failed and state and action is not None:
            if action == FAIL:
                self._learn_both(state, FAIL, -1.0, None, 0.0)
                self.run_outcome[run] = -1.0
            else:
                self.pending[key] = (state, action, ts)
        if opened is None and failed and state:  # the run's next incident: its earlier recoveries led here
            for s, a, r in self.recovered.pop(run, ()):
                self._close_recovered(s, a, r, self._tried_value(state), self._followed_completion(state))
        # a lost node's run resumes elsewhere, and so does a moved one: the run has not ended
        if signal.get("run_ended") and signal.get("error_class") != NODE_LOST and action != MIGRATE:
            self._end_run(run, signal["workflow_id"])

    def _end_run(self, run: str, workflow_id: str) -> None:
        """Close the run's recovered steps with its outcome (+1 complete, 0 degraded, −1 given up)."""
        outcome = self.run_outcome.pop(run, 1.0)
        for s, a, r in self.recovered.pop(run, ()):
            self._close_recovered(s, a, r, outcome, float(outcome > 0))
        for k in [k for k in self.pending if k[0] == run and k[1].startswith(workflow_id)]:
            del self.pending[k]

    def _close_recovered(self, state: str, action: str, reward: float, after: float, completed: float) -> None:
        """A recovered step's transition, closed with what the run became after it (``after``, ``completed``).

        What the run becomes once a step is recovered (its later incidents,
        its end) does not depend on which action recovered it, so it is
        learned once per *afterstate* (the step recovered: the state's coarse
        key without the attempt, `after_key`), pooled over every action and
        attempt, and each action's value is its recovery's own reward plus
        that pooled value. Learned per action, the run's later luck (another
        incident or none) is noise each action meets alone: on
        `bench/resilience.py --seed 4`, taking a way out at once was valued
        −1.1 from 3 runs, below three 5 s retries and the same way out after
        (12 s later, on 66 runs).

        An action's value is its own part plus its recovery rate (`recovers`)
        times the afterstate's *current* value: when the afterstate's value
        moves, every action that leads there moves with it. A snapshot (the
        afterstate's value when the action was last learned) left the actions
        tried first, while the afterstate still held the warm-up's first runs,
        below those tried later: on `bench/resilience.py --seed 8`'s transient
        scenario an immediate retry, tried 6 times while the afterstate was
        worth −0.5 to 0 (completion 0.3–0.55), stayed below a 5 s retry
        learned after it had risen to 0.4 (0.9), and was never tried again.
        """
        key = after_key(state)
        row = self.afterstate.setdefault(key, [after, completed, 0])
        old_value, old_completion = row[0], row[1]
        row[2] += 1
        rate = max(self.alpha, 1.0 / row[2])
        row[0] += rate * (after - row[0])
        row[1] += rate * (completed - row[1])
        self._shift_afterstate(key, self.gamma * (row[0] - old_value), row[1] - old_completion)
        self._learn_both(state, action, reward + self.gamma * row[0], None, row[1], recovered=True)

    def _shift_afterstate(self, key: str, value: float, completion: float) -> None:
        """The afterstate ``key``'s value moved by ``value`` (completion by ``completion``): so do the actions it follows."""
        if not value and not completion:
            return
        for state, rates in self.recovers.items():
            if after_key(state) != key:
                continue
            for action, share in rates.items():
                if share and action in self.q.get(state, {}):
                    self.q[state][action] += share * value
                    if action in self.completion.get(state, {}):
                        self.completion[state][action] += share * completion

    def predict_one(self, state: str, explore: bool = True, min_visits: int | None = None) -> str | None:
        """The greedy action of a state seen at least ``min_visits`` times, else None (changes nothing).

        With ``explore``, untried actions count with the optimistic value, so
        they come first; without, only actions tried in the state compete.
        The greedy choice is by `choice_value`.
        """
        tried = self.visits.get(state, {})
        if sum(tried.values()) < (self.min_visits if min_visits is None else min_visits) or (
                not tried and not self.visits.get(coarse_key(state))):
            return None
        coarse = self.q.get(coarse_key(state), {}) if coarse_key(state) != state else {}
        actions = valid_actions(state) if explore else [a for a in valid_actions(state) if a in tried or a in coarse]
        if not actions:
            return None
        return max(self.feasible(state, actions), key=lambda a: self.choice_value(state, a))

    def feasible(self, state: str, actions: list[str]) -> list[str]:
        """The actions allowed: where giving the step up (fail fast, the fallback branch) is not.

        Where no causal parent of the step is active (an independent
        failure), giving up is allowed only where it completes no less often
        than the static retrier's own completion from the state: an
        independent transient almost always passes on a short retry, and the
        state's estimates are well sampled (transients are the commonest
        failures). Under an active cause, at the step's first failure, only
        the actions estimated to complete the run at least
        ``first_failure_floor`` of the time are allowed, when one tried in the
        state is (a poisoned input or a dead dependency, which nothing
        completes, is still given up at once): giving up, the fallback branch
        and an alternative that shares the failing resource complete almost
        never, while retrying is how Step Functions' retrier completes the
        runs a slow cause (a congested link) fails. Elsewhere the choice is
        left to the reward and the fleet's completion price.
        """
        if not self.completion_floor:
            return actions
        fields = state.split("|")
        if fields[4] == "0" and state in self.static_completion:
            floor = self.static_completion[state]
            return [a for a in actions
                    if a not in (FAIL, FALLBACK) or self.estimate(state, a, self.completion) >= floor] or actions
        if fields[4] == "1" and fields[2] == "1" and self.first_failure_floor > 0:
            tried = self.visits.get(state, {}).keys() | self.visits.get(coarse_key(state), {}).keys()
            likely = {a for a in actions if a in tried
                      and self.estimate(state, a, self.completion) >= self.first_failure_floor}
            if likely:  # what was never tried here stays open to exploration
                return [a for a in actions if a in likely or a not in tried]
        return actions

    def choice_value(self, state: str, action: str) -> float:
        """Q(s,a) + μ·C(s,a): the reward plus the completion's price (the Lagrangian of the completion constraint).

        With μ = 0 this is the seed's greedy choice. The constraint is the
        fleet's, not each state's: completion is bought where it is cheap (a
        way out) before where it is dear (waiting out a congested link whose
        failing attempts take 10 s each).
        """
        value = self.estimate(state, action)
        if self.completion_floor and self.completion_price:
            value += self.completion_price * self.estimate(state, action, self.completion)
        return value

    def completion_gap(self) -> float | None:
        """Per incident, how much more often the policy completes the step than the static retrier would.

        The visit-weighted mean, over the coarse states of a first failure
        (where an incident starts, whatever the policy), of C(s, policy) minus
        the retrier's own completion from s (``static_completion``: learned
        from the transitions that took its action, with its continuation).
        Below 0, the policy gives up runs the retrier would have completed;
        None: not known yet.
        """
        total, weight = 0.0, 0
        for state, counts in self.visits.items():
            if "*" not in state or state.split("|")[2] != "1" or state not in self.static_completion:
                continue
            chosen = self.predict_one(state, explore=False, min_visits=0)
            n = sum(counts.values())
            total += n * (self.completion[state].get(chosen, 0.0) - self.static_completion[state])
            weight += n
        return total / weight if weight else None

    def update_price(self) -> None:
        """Dual ascent on the completion constraint: μ ← max(0, μ − rate · gap)."""
        gap = self.completion_gap()
        if self.completion_floor and gap is not None:
            self.completion_price = max(0.0, self.completion_price - self.price_rate * gap)

    def untried_bound(self, action: str, completion: bool = False) -> float:
        """The most an action never tried in a state can be worth: its optimistic value, the reward's own limits kept.

        The time a retry waits is certain, so it comes off the best reward;
        giving up is certain to end the run (−1, never completed) and the
        fallback branch to degrade it (0 at best, never completed).
        ``completion``: the bound on the completion table.

        >>> agent = QRecoveryAgent()
        >>> [agent.untried_bound(a) for a in ("RETRY 0s", "RETRY 5s", "RETRY 60s", "MIGRATE", "FAIL", "FALLBACK")]
        [1.0, 0.5, -5.0, 1.0, -1.0, 0.0]
        >>> [agent.untried_bound(a, completion=True) for a in ("RETRY 60s", "FAIL", "FALLBACK")]
        [1.0, 0.0, 0.0]
        """
        if action in (FAIL, FALLBACK):
            return 0.0 if completion else (-1.0 if action == FAIL else min(self.optimism, 0.0))
        if completion:
            return 1.0
        if action.startswith(RETRY):
            return self.optimism - retry_delay_s(action) / self.time_cost_s
        return self.optimism

    def estimate(self, state: str, action: str, table: dict | None = None, untried: float | None = None) -> float:
        """Q of a fine state shrunk towards its coarse state's: (n·Q_fine + k·Q_coarse) / (n + k).

        A fine state seen a few times has noisy values (one long outage makes a
        retry look bad); its coarse state pools all its siblings' transitions.
        ``k`` = ``shrinkage`` visits. An action never tried in the fine state
        takes the coarse value, one tried in neither the optimistic value.
        ``table``: another table learned from the same visits (the completion
        table), ``untried`` its optimistic value (default: `untried_bound`).
        """
        completion = table is not None and table is self.completion
        table = self.q if table is None else table
        untried = self.untried_bound(action, completion) if untried is None else untried
        coarse = coarse_key(state)
        fine, pooled = table.get(state, {}).get(action), table.get(coarse, {}).get(action)
        if coarse == state or pooled is None:
            return untried if fine is None else fine
        if fine is None:
            return pooled
        n = self.visits[state][action]
        return (n * fine + self.shrinkage * pooled) / (n + self.shrinkage)

    def policy(self, workflow_id: str, parents: dict[str, list[str]] | None = None,
               explore: bool = True) -> RecoveryPolicyTable:
        """Publish: a new version of the greedy policy, with each step's causal parents for the nodes.

        ``explore=False`` publishes only actions already tried in each state (a
        fleet that must exploit); the default lets the nodes try the untried ones.
        """
        self.published += 1
        self.update_price()
        actions = {s: a for s in sorted(self.q) for a in [self.predict_one(s, explore)] if a is not None}
        return RecoveryPolicyTable(workflow_id, self.published, actions, dict(parents or {}))


@dataclass(frozen=True)
class RecoveryPolicyTable:
    """A published recovery policy of one workflow: its version, the action per state, each step's causal parents."""

    workflow_id: str
    version: int
    actions: dict[str, str]
    parents: dict[str, list[str]] = field(default_factory=dict)

    def to_record(self, ts_ms: int) -> dict:
        """The `RecoveryPolicy` message (``schemas/recovery_policy.avsc``)."""
        return {"workflow_id": self.workflow_id, "version": self.version, "ts_ms": ts_ms, "actions": dict(self.actions),
                "parents": {k: list(v) for k, v in self.parents.items()}}

    @classmethod
    def from_record(cls, record: dict) -> RecoveryPolicyTable:
        return cls(record["workflow_id"], record["version"], dict(record["actions"]), {k: list(v) for k, v in record["parents"].items()})


class FailureView:
    """A node's own view at the moment of failure: its recent failures and the alerts it sees, in a small graph.

    ``pressure(node, ts)`` is the node's resource pressure in [0, 1] (e.g. from
    its temperature); the anomaly bit is any alert scoped to this node within
    the graph's lag; parents come from the published table.
    """

    def __init__(self, pressure=None, lag_s: float = 30.0, window_s: float = 3600.0):
        self.graph = FailureGraph(window_s=window_s, lag_s=lag_s)
        self.pressure = pressure or (lambda node, ts: 0.0)

    def context(self, failure: Failure, parents: dict[str, list[str]]) -> NodeContext:
        """``parents``: a published table's (each task's causal parents, and each resource's as '@<resource>')."""
        task, t, node = f"{failure.workflow_id}/{failure.step}", failure.ts_s, failure.node_id
        local_alerts = [s for s, ev in self.graph.events.items()
                        if s.startswith("alert:") and any(n == node for _, n in ev[-20:])]

        def blocked(uses) -> bool:
            return any(self.graph.active(p, t, node) for u in uses for p in parents.get(f"@{u}", ()))
        way_out = any(not blocked(uses) for uses in failure.alternative_uses) if failure.alternative_uses else None
        return NodeContext(self.graph.failure_rate(task, t),
                           any(self.graph.active(p, t, node) for p in parents.get(task, ())),
                           any(self.graph.active(s, t, node) for s in local_alerts),
                           self.pressure(node, t), way_out)


class PolicyRecovery:
    """The recovery policy a node applies: the latest published table of the workflow, else the Step Functions retrier.

    ``explore`` is the probability of trying a random allowed action in a state
    the table does not know (so the central learner sees what the alternatives
    do); 0 on a node that must only exploit. Where the run cannot be moved
    (``Failure.can_migrate`` false), a table's `MIGRATE` gives way to the
    static retrier, as an unknown state does, and exploration never draws it.
    """

    def __init__(self, view: FailureView, explore: float = 0.0, seed: int = 0,
                 static: BackoffRetrier | None = None):
        self.view, self.explore, self.rng = view, explore, random.Random(seed)
        self.tables: dict[str, RecoveryPolicyTable] = {}
        self.static = static or step_functions_default()

    def apply(self, table: RecoveryPolicyTable) -> None:
        """Keep a published table unless a newer version of the workflow's policy is already here."""
        held = self.tables.get(table.workflow_id)
        if held is None or table.version > held.version:
            self.tables[table.workflow_id] = table

    def decide(self, failure: Failure) -> Decision:
        table = self.tables.get(failure.workflow_id)
        state = state_key(failure, self.view.context(failure, table.parents if table else {}))
        version = table.version if table else 0
        action = (table.actions.get(state) or table.actions.get(coarse_key(state))) if table else None
        if action == MIGRATE and not failure.can_migrate:
            action = None
        if action is None and self.explore and self.rng.random() < self.explore:
            allowed = [a for a in valid_actions(state) if a != MIGRATE or failure.can_migrate]
            return decision_of(self.rng.choice(allowed), failure, version, state, "explore")
        if action is None:
            d = self.static.decide(failure)
            return Decision(d.action, d.delay_s, d.alternative, version, "static retrier", state)
        return decision_of(action, failure, version, state, "policy")


# -- baselines -------------------------------------------------------------------------------------


@dataclass
class BackoffRetrier:
    """Retry after ``interval · backoff^(attempt-1)`` (capped, optionally with full jitter) up to ``max_retries``.

    >>> r = step_functions_default()
    >>> from edge.faults import Failure, TIMEOUT
    >>> [r.decide(Failure("w", "r", "s", "n", TIMEOUT, k, 0.0)).describe() for k in (1, 2, 3, 4)]
    ['RETRY 1s', 'RETRY 2s', 'RETRY 4s', 'FAIL']
    """

    name: str
    interval_s: float = 1.0
    backoff: float = 2.0
    max_retries: int | None = 3     # None: unlimited (the runtime's max_attempts still ends it)
    max_interval_s: float | None = None
    jitter: bool = False
    seed: int = 0

    def __post_init__(self):
        self.rng = random.Random(f"{self.name}/{self.seed}")

    def decide(self, failure: Failure) -> Decision:
        if self.max_retries is not None and failure.attempt > self.max_retries:
            return Decision(FAIL, reason=f"{self.name}: {self.max_retries} retries")
        delay = self.interval_s * self.backoff ** (failure.attempt - 1)
        if self.max_interval_s is not None:
            delay = min(delay, self.max_interval_s)
        if self.jitter:
            delay = self.rng.uniform(0.0, delay)
        return Decision(RETRY, round(delay, 3), reason=self.name)


def step_functions_default() -> BackoffRetrier:
    """AWS Step Functions' retrier defaults: 1 s, backoff ×2, 3 retries, no jitter."""
    return BackoffRetrier("step-functions")


@dataclass
class FailoverRetrier:
    """A static retrier with the move to another node: when it would give up on a step, move the run there once.

    The rule an operator writes on top of a retrier when the orchestrator can
    resume a run elsewhere: retry as ``retrier`` does (Step Functions' 1 s,
    ×2, 3 retries by default); at the failure where it would give up, move the
    run to another node (`MIGRATE`) instead, once per step, unless the failure
    is ``BAD_INPUT`` (the same input fails on any node), the step may not run
    twice (critical and not idempotent), or no orchestrator can move the run
    (``Failure.can_migrate`` false) — then it gives up as the retrier does.
    The moved step goes on from its attempts (a checkpoint carries them: a move
    buys no fresh retries), so on the new node the retrier is already past its
    last retry: one attempt there, then it gives up. No parameter was tuned;
    the move is made once, where the retrier's own schedule runs out.
    ``move_after`` (a failed attempt number) moves at that failure instead, in
    place of the retrier's retry: ``move_after=3`` makes the last retry on the
    other node, so the step has Step Functions' (and the agent's) 4 attempts.

    >>> from edge.faults import Failure, TIMEOUT
    >>> r = step_functions_failover()
    >>> [r.decide(Failure("w", "r", "s", "n", TIMEOUT, k, 0.0, can_migrate=True)).describe() for k in (1, 2, 3, 4, 5)]
    ['RETRY 1s', 'RETRY 2s', 'RETRY 4s', 'MIGRATE', 'FAIL']
    >>> r.decide(Failure("w", "r", "s", "n", TIMEOUT, 4, 0.0)).describe()   # nowhere to move it
    'FAIL'
    >>> same_budget = step_functions_failover(move_after=3)
    >>> [same_budget.decide(Failure("w", "r", "s", "n", TIMEOUT, k, 0.0, can_migrate=True)).describe()
    ...  for k in (1, 2, 3, 4)]
    ['RETRY 1s', 'RETRY 2s', 'MIGRATE', 'FAIL']
    """

    retrier: BackoffRetrier = field(default_factory=lambda: BackoffRetrier("step-functions"))
    name: str = "failover"
    move_after: int | None = None    # None: at the failure where the retrier gives up

    def decide(self, failure: Failure) -> Decision:
        decision = self.retrier.decide(failure)
        if self.move_after is None:
            here = decision.action == FAIL and self.retrier.max_retries is not None \
                and failure.attempt == self.retrier.max_retries + 1
        else:
            here = failure.attempt == self.move_after and decision.action in (RETRY, FAIL)
        once_only = failure.critical and not failure.idempotent
        if here and failure.can_migrate and not once_only and failure.error_class != BAD_INPUT:
            return Decision(MIGRATE, reason=f"{self.name}: move once at attempt {failure.attempt}")
        return decision


def step_functions_failover(move_after: int | None = None) -> FailoverRetrier:
    """Step Functions' retrier, then one move to another node where it would give up (`FailoverRetrier`)."""
    return FailoverRetrier(step_functions_default(), move_after=move_after)


def full_jitter(seed: int = 0) -> BackoffRetrier:
    """Step Functions' schedule with full jitter (delay uniform in [0, backoff delay])."""
    return BackoffRetrier("full-jitter", jitter=True, seed=seed)


def temporal_default() -> BackoffRetrier:
    """Temporal's default retry policy: 1 s, ×2, at most 100 s, unlimited attempts."""
    return BackoffRetrier("temporal", max_retries=None, max_interval_s=100.0)


@dataclass
class CircuitBreaker:
    """Resilience4j's circuit breaker (defaults) per step, around Resilience4j's retry (3 attempts, 0.5 s).

    Count-based window of the last ``window`` calls; it opens when at least
    ``window`` calls were recorded and ``threshold`` of them failed; open, it
    lets no retry through for ``open_s``; then half-open, ``half_open_calls``
    calls decide whether it closes or opens again. It learns the calls'
    outcomes from the step's finish signals (``learn_one``).
    """

    window: int = 100
    threshold: float = 0.5
    open_s: float = 60.0
    half_open_calls: int = 10
    retry_attempts: int = 3
    retry_wait_s: float = 0.5
    calls: dict[str, list[bool]] = field(default_factory=dict)
    opened_at: dict[str, float] = field(default_factory=dict)

    def _state(self, step: str, ts: float) -> str:
        if step not in self.opened_at:
            return "closed"
        return "open" if ts < self.opened_at[step] + self.open_s else "half-open"

    def learn_one(self, signal: dict) -> None:
        if signal.get("state") != 0 or signal.get("outcome") not in ("SUCCESS", "FAILURE"):
            return
        step, ts = f"{signal['workflow_id']}/{signal['task']}", signal["ts_ms"] / 1000.0
        calls = self.calls.setdefault(step, [])
        state = self._state(step, ts)
        if state == "open":
            return
        calls.append(signal["outcome"] == "FAILURE")
        need = self.half_open_calls if state == "half-open" else self.window
        del calls[:-need]
        if len(calls) >= need:
            if sum(calls) / len(calls) >= self.threshold:
                self.opened_at[step] = ts
                calls.clear()
            elif state == "half-open":
                del self.opened_at[step]
                calls.clear()

    def decide(self, failure: Failure) -> Decision:
        step = f"{failure.workflow_id}/{failure.step}"
        if self._state(step, failure.ts_s) == "open":
            return Decision(FAIL, reason="circuit open: call not permitted")
        if failure.attempt >= self.retry_attempts:
            return Decision(FAIL, reason=f"resilience4j retry: {self.retry_attempts} attempts")
        return Decision(RETRY, self.retry_wait_s, reason="resilience4j retry")
