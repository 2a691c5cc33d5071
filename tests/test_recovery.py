"""Failure handling in the runtime, the Q-learning recovery agent and the baseline retriers."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest

from edge.faults import (
    ALTERNATIVE,
    DEPENDENCY_UNAVAILABLE,
    FAIL,
    RETRY,
    TIMEOUT,
    Decision,
    Failure,
    NodeLost,
    StepFailure,
)
from edge.runtime import Alternative, Step, WorkflowRun, WorkflowSpec
from prediction.recovery import (
    ACTIONS,
    FIRST_FAILURE_FLOOR,
    CircuitBreaker,
    FailureView,
    NodeContext,
    PolicyRecovery,
    QRecoveryAgent,
    RecoveryPolicyTable,
    full_jitter,
    state_key,
    step_functions_default,
    temporal_default,
    valid_actions,
)
from schemas.state import StateVersionError
from tests.support import Always


def flaky(failures: int, error_class: str = TIMEOUT):
    """A body that fails ``failures`` times, then doubles x."""
    count = {"n": 0}

    def body(ctx):
        count["n"] += 1
        if count["n"] <= failures:
            raise StepFailure(error_class, "injected")
        return {"y": ctx.inputs["x"] * 2}
    return body


def test_static_retrier_retries_with_backoff_and_signals_the_failed_state():
    waits, signals = [], []
    spec = WorkflowSpec("wf", (Step("double", flaky(2), inputs=("x",), outputs=("y",)),))
    run = WorkflowRun(spec, "r1", "n1", recovery=step_functions_default(), wait=waits.append,
                      on_signal=signals.append)
    result = run.execute({"x": np.arange(3)})
    assert result.error is None and result.outputs["y"].value.tolist() == [0, 2, 4]
    assert waits == [1.0, 2.0] and result.executions["double"] == 3
    failed = [s for s in signals if s["outcome"] == "FAILURE"]
    assert [(s["error_class"], s["attempt"], s["recovery"], s["policy_version"]) for s in failed] == [
        ("TIMEOUT", 1, "RETRY 1s", 0), ("TIMEOUT", 2, "RETRY 2s", 0)]
    assert [(s["state"], s["attempt"]) for s in signals] == [(1, 1), (0, 1), (1, 2), (0, 2), (1, 3), (0, 3)]
    assert len({s["signal_id"] for s in signals}) == len(signals) and signals[-1]["run_ended"]


def test_without_a_policy_a_failing_step_fails_the_run():
    spec = WorkflowSpec("wf", (Step("double", flaky(1), inputs=("x",), outputs=("y",)),))
    signals = []
    result = WorkflowRun(spec, "r1", on_signal=signals.append).execute({"x": np.arange(2)})
    assert result.error.startswith("double: StepFailure") and signals[-1]["error_class"] == "TIMEOUT"


def test_alternative_and_fallback():
    alt = Alternative("cached", lambda ctx: {"y": ctx.inputs["x"] * 2})
    spec = WorkflowSpec("wf", (Step("double", flaky(99, DEPENDENCY_UNAVAILABLE), inputs=("x",), outputs=("y",),
                                    alternatives=(alt,)),))
    result = WorkflowRun(spec, "r1", recovery=Always(Decision("ALTERNATIVE"))).execute({"x": np.arange(2)})
    assert result.error is None and result.records[-1].implementation == "cached"
    # the alternative is used up: the shield fails the step instead of switching again
    spec = WorkflowSpec("wf", (Step("double", flaky(99), inputs=("x",), outputs=("y",),
                                    alternatives=(Alternative("bad", flaky(99)),)),))
    result = WorkflowRun(spec, "r1", recovery=Always(Decision("ALTERNATIVE"))).execute({"x": np.arange(2)})
    assert result.error is not None and [r.decision.action for r in result.recoveries] == ["ALTERNATIVE", "FAIL"]
    fallback = lambda ctx: {"y": ctx.inputs["x"] * 0}
    spec = WorkflowSpec("wf", (Step("double", flaky(99), inputs=("x",), outputs=("y",), fallback=fallback),))
    result = WorkflowRun(spec, "r1", recovery=Always(Decision("FALLBACK"))).execute({"x": np.arange(2)})
    assert result.error is None and result.degraded == ("double",)


def test_a_critical_step_that_is_not_idempotent_is_never_executed_twice():
    def write(ctx):
        ctx.emit(b"row")
        raise StepFailure(TIMEOUT, "ack lost")
    for policy in (Always(Decision("RETRY", 0.0)), Always(Decision("ALTERNATIVE")), step_functions_default(),
                   temporal_default()):
        spec = WorkflowSpec("wf", (Step("write", write, critical=True, idempotent=False,
                                        alternatives=(Alternative("other", write),)),))
        result = WorkflowRun(spec, "r1", recovery=policy, wait=lambda s: None).execute({})
        assert result.executions["write"] == 1 and len(result.emitted) == 1 and result.error is not None
    # nor does the learned policy offer it
    state = state_key(Failure("wf", "r", "write", "n", TIMEOUT, 1, 0.0, critical=True, idempotent=False,
                              alternatives=("other",)), NodeContext())
    assert valid_actions(state) == [FAIL]


class LoseNodeAt:
    """A fault source: the node stops when ``step`` is about to start on ``node``."""

    def __init__(self, step: str, node: str):
        self.step, self.node = step, node

    def before_attempt(self, run, step, implementation, uses, attempt):
        if step.name == self.step and run.node_id == self.node:
            raise NodeLost(run.node_id)


def test_a_lost_nodes_run_resumes_elsewhere_from_its_last_committed_step():
    calls = []

    def stage(name):
        def body(ctx):
            calls.append(name)
            return {name: ctx.inputs[next(iter(ctx.inputs))] + 1}
        return body
    spec = WorkflowSpec("wf", (Step("a", stage("a"), inputs=("x",), outputs=("a",)),
                               Step("b", stage("b"), inputs=("a",), outputs=("b",)),
                               Step("c", stage("c"), inputs=("b",), outputs=("c",))))
    reference = WorkflowRun(spec, "r1").execute({"x": np.arange(3)})
    calls.clear()
    lost = WorkflowRun(spec, "r1", "n1", faults=LoseNodeAt("c", "n1"), recovery=step_functions_default()).execute(
        {"x": np.arange(3)})
    assert lost.node_lost and lost.checkpoint.done == {"a", "b"} and calls == ["a", "b"]
    resumed = WorkflowRun(spec, "r1", "n2", faults=LoseNodeAt("c", "n1")).execute(resume=lost.checkpoint)
    assert resumed.error is None and calls == ["a", "b", "c"] and resumed.path == ["c"]
    assert resumed.fingerprint() == reference.fingerprint()
    with pytest.raises(ValueError, match="does not belong"):
        WorkflowRun(spec, "r2", "n2").execute(resume=lost.checkpoint)


def test_q_learning_converges_to_the_optimal_actions_of_a_known_mdp():
    # s0 --RETRY--> s1 (reward -1); s1 --RETRY--> success (+1); ALTERNATIVE: +0.5 from either; FAIL: -1.
    # With gamma 0.9: Q*(s0,RETRY) = -1 + 0.9 = -0.1 < Q*(s0,ALT) = 0.5; Q*(s1,RETRY) = 1 > 0.5.
    s0, s1 = "a-i|TIMEOUT|1|0|0|1|0|0", "a-i|TIMEOUT|2|0|0|1|0|0"
    rng, retry, alt = random.Random(0), "RETRY 1s", "ALTERNATIVE"
    agent = QRecoveryAgent(alpha=0.2, gamma=0.9, optimism=-1.0)  # the MDP has only these three actions
    for _ in range(3000):
        state = rng.choice([s0, s1])
        a = rng.choice([retry, alt, FAIL])
        if a == FAIL:
            agent.learn_transition(state, a, -1.0, None)
        elif a == alt:
            agent.learn_transition(state, a, 0.5, None)
        elif state == s0:
            agent.learn_transition(s0, a, -1.0, s1)
        else:
            agent.learn_transition(s1, a, 1.0, None)
    assert agent.predict_one(s0) == alt and agent.predict_one(s1) == retry
    assert agent.q[s0][retry] == pytest.approx(-0.1, abs=0.05) and agent.q[s1][retry] == pytest.approx(1.0, abs=0.05)


def test_agent_learns_from_signals_and_a_node_applies_the_published_policy():
    # a dependency that never answers: retrying is hopeless, the alternative works at once
    agent = QRecoveryAgent(alpha=0.3, min_visits=3)
    node = PolicyRecovery(FailureView(), explore=1.0, seed=1)
    alt = Alternative("cached", lambda ctx: {"y": ctx.inputs["x"]})
    spec = WorkflowSpec("wf", (Step("load", flaky(10 ** 6, DEPENDENCY_UNAVAILABLE), inputs=("x",), outputs=("y",),
                                    alternatives=(alt,)),))
    clock = {"t": 0.0}

    def wait(s):
        clock["t"] += s

    def signal(s):
        node.view.graph.learn_one(s)
        agent.learn_one(s)
    for k in range(60):
        clock["t"] += 100
        WorkflowRun(spec, f"r{k}", "n1", recovery=node, wait=wait, on_signal=signal,
                    clock=lambda: clock["t"]).execute({"x": np.arange(2)})
    table = agent.policy("wf")
    state = "a-i|DEPENDENCY_UNAVAILABLE|1|2|0|1|0|0"
    assert table.actions[state] == "ALTERNATIVE" and table.version == 1
    worker = PolicyRecovery(FailureView())
    worker.apply(RecoveryPolicyTable.from_record(table.to_record(0)))
    worker.view.graph.attempts = node.view.graph.attempts  # the same recent history
    d = worker.decide(Failure("wf", "rX", "load", "n1", DEPENDENCY_UNAVAILABLE, 1, clock["t"],
                              alternatives=("cached",)))
    assert (d.action, d.alternative, d.policy_version, d.state) == ("ALTERNATIVE", "cached", 1, state)
    # a state the table does not know: the static retrier, with the table's version
    d = worker.decide(Failure("wf", "rX", "load", "n1", TIMEOUT, 1, clock["t"]))
    assert (d.action, d.delay_s, d.policy_version) == ("RETRY", 1.0, 1)


def test_agent_state_snapshot_and_refusal():
    agent = QRecoveryAgent()
    agent.learn_transition("---|TIMEOUT|1|0|0|0|0|0", "FAIL", -1.0, None)
    assert pickle.loads(pickle.dumps(agent)).q == agent.q
    with pytest.raises(StateVersionError):
        QRecoveryAgent.__new__(QRecoveryAgent).__setstate__(dict(vars(agent), version=8))
    # version 1's keys had no way-out bit: its table is dropped, its publication count kept
    v2 = {k: v for k, v in vars(agent).items() if k not in ("completion", "completion_floor")}
    old = QRecoveryAgent.__new__(QRecoveryAgent)
    old.__setstate__(dict(v2, q={"---|TIMEOUT|1|0|0|0|0": {"FAIL": -1.0}}, published=5, version=1))
    assert old.version == QRecoveryAgent.STATE_VERSION and old.q == {} and old.completion == {} and old.published == 5
    assert old.policy("wf").version == 6
    # version 2 had no completion table: its Q table is kept, the floor binds once completions are learned
    two = QRecoveryAgent.__new__(QRecoveryAgent)
    two.__setstate__(dict(v2, version=2))
    assert two.version == QRecoveryAgent.STATE_VERSION and two.q == agent.q and two.completion == {} and two.completion_floor
    assert two.predict_one("---|TIMEOUT|1|0|0|0|0|0", explore=False) == FAIL
    # version 3 learned step-level episodes: its tables are kept, it starts with no run open
    three = QRecoveryAgent.__new__(QRecoveryAgent)
    three.__setstate__({k: v for k, v in vars(agent).items() if k not in ("recovered", "run_outcome")} | {"version": 3})
    assert three.version == QRecoveryAgent.STATE_VERSION and three.q == agent.q and three.recovered == {} and three.run_outcome == {}
    # version 4 had no first-failure floor: it takes today's
    four = QRecoveryAgent.__new__(QRecoveryAgent)
    four.__setstate__({k: v for k, v in vars(agent).items() if k != "first_failure_floor"} | {"version": 4})
    assert four.version == QRecoveryAgent.STATE_VERSION and four.q == agent.q and four.first_failure_floor == FIRST_FAILURE_FLOOR
    # version 6 had no recovery rates: its values are kept, the rates start empty
    six = QRecoveryAgent.__new__(QRecoveryAgent)
    six.__setstate__({k: v for k, v in vars(agent).items() if k != "recovers"} | {"version": 6})
    assert six.version == QRecoveryAgent.STATE_VERSION and six.q == agent.q and six.recovers == {}


def test_a_way_out_is_an_alternative_whose_resources_no_active_cause_reaches():
    view = FailureView()
    view.graph.observe("alert:dep:storage", 95.0)
    parents = {"wf/load": ["alert:dep:storage"], "@dep:storage": ["alert:dep:storage"]}

    def ctx(*alternative_uses):
        f = Failure("wf", "r", "load", "n1", DEPENDENCY_UNAVAILABLE, 1, 100.0, alternatives=("x",) * len(
            alternative_uses), uses=("dep:storage",), alternative_uses=alternative_uses)
        return view.context(f, parents)
    replica_on_same_storage, cached = ("dep:storage", "network"), ()
    assert ctx(replica_on_same_storage).parent_active and ctx(replica_on_same_storage).way_out is False
    assert ctx(replica_on_same_storage, cached).way_out is True and ctx().way_out is None
    assert view.context(Failure("wf", "r", "load", "n1", TIMEOUT, 1, 500.0, alternatives=("x",),
                                alternative_uses=(replica_on_same_storage,)), parents).way_out is True


def test_baseline_schedules():
    f = lambda k: Failure("w", "r", "s", "n", TIMEOUT, k, 0.0)
    assert [temporal_default().decide(f(k)).delay_s for k in (1, 5, 7, 8, 12)] == [1, 16, 64, 100, 100]
    jitter = full_jitter(seed=3)
    delays = [jitter.decide(f(3)).delay_s for _ in range(200)]
    assert 0 <= min(delays) < 0.5 and 3.5 < max(delays) <= 4.0
    assert jitter.decide(f(4)).action == FAIL
    assert set(ACTIONS) >= {"RETRY 1s", "ALTERNATIVE", "FALLBACK", "FAIL"}


def test_circuit_breaker_opens_at_half_failures_over_100_calls_for_60_s():
    cb = CircuitBreaker()

    def call(t, failed):
        cb.learn_one({"workflow_id": "w", "task": "s", "state": 0, "outcome": "FAILURE" if failed else "SUCCESS",
                      "ts_ms": int(t * 1000)})
    for k in range(99):
        call(k, k % 2 == 0)
    assert cb.decide(Failure("w", "r", "s", "n", TIMEOUT, 1, 99.0)).action == "RETRY"
    call(99, True)  # the 100th call: 50 of 100 failed
    assert cb.decide(Failure("w", "r", "s", "n", TIMEOUT, 1, 120.0)).action == FAIL
    assert cb.decide(Failure("w", "r", "s", "n", TIMEOUT, 1, 160.0)).action == "RETRY"  # half-open
    for k in range(10):
        call(161 + k, False)
    assert "w/s" not in cb.opened_at
    assert cb.decide(Failure("w", "r", "s", "n", TIMEOUT, 3, 200.0)).action == FAIL  # retry's 3 attempts


def test_published_policy_round_trips_through_the_codec():
    from schemas.codec import Codec

    table = RecoveryPolicyTable("wf", 4, {"a-i|TIMEOUT|1|0|0|1|0|0": "ALTERNATIVE"}, {"wf/load": ["alert:dep:db"]})
    codec = Codec()
    assert RecoveryPolicyTable.from_record(codec.decode(codec.encode("RecoveryPolicy", table.to_record(7))).record) \
        == table


def test_the_flows_recovery_state_snapshots_and_refuses_a_newer_version():
    from operators.recovery import RecoveryState, RecoveryStep

    step = RecoveryStep(publish_every=1)
    signal = {"workflow_id": "wf", "run_id": "r1", "task": "load", "state": 0, "outcome": "FAILURE", "ts_ms": 1000,
              "node_id": "n1", "recovery": "FAIL", "attributes": {"recovery.state": "---|TIMEOUT|1|0|0|0|0|0"}}
    from operators.events import Event
    state, out = step(None, Event("WorkflowSignal", signal, "workflow.signals", 0, 0))
    assert out[0][1]["version"] == 1 and state.agent.q["---|TIMEOUT|1|0|0|0|0|0"] == {"FAIL": -1.0}
    # untried, so optimistically next; the coarse state learned the same transition
    assert out[0][1]["actions"] == {"---|TIMEOUT|1|0|0|0|0|0": "RETRY 0s", "---|TIMEOUT|1|*|0|0|*|*": "RETRY 0s"}
    restored = pickle.loads(pickle.dumps(state))
    assert restored.agent.q == state.agent.q and restored.steps == {"load"}
    with pytest.raises(StateVersionError, match="RecoveryState snapshot has state version 2"):
        RecoveryState.__new__(RecoveryState).__setstate__(dict(vars(state), version=2))


def test_checkpoints_through_the_codec_rebuild_a_run_that_resumes_from_its_last_committed_step():
    from edge.takeover import COMMITTED, ENDED, STARTED, Takeover, checkpoint_record
    from schemas.codec import Codec

    codec, records = Codec(), []
    spec = WorkflowSpec("wf", (Step("a", lambda ctx: {"a": ctx.inputs["x"] + 1}, inputs=("x",), outputs=("a",)),
                               Step("b", lambda ctx: {"b": bytes(ctx.inputs["a"].tobytes())}, inputs=("a",),
                                    outputs=("b",)),
                               Step("c", lambda ctx: {"c": ctx.inputs["b"] + b"!"}, inputs=("b",), outputs=("c",))))
    reference = WorkflowRun(spec, "r1").execute({"x": np.arange(3)})

    def publish(node, status, step=None, artifacts=None):
        records.append(codec.decode(codec.encode("RunCheckpoint", checkpoint_record(
            "r1", "wf", node, 1000 * (len(records) + 1), status, step, artifacts))).record)
    publish("n1", STARTED, artifacts={"x": np.arange(3)})
    lost = WorkflowRun(spec, "r1", "n1", faults=LoseNodeAt("c", "n1"), recovery=step_functions_default(),
                       on_commit=lambda step, out: publish("n1", COMMITTED, step, out)).execute({"x": np.arange(3)})
    assert lost.node_lost and [r["step"] for r in records] == [None, "a", "b"]
    watchers = [Takeover(detect_s=5.0) for _ in range(2)]
    for w in watchers:
        for r in records:
            w.learn_checkpoint(r)
        for node in ("n2", "n3"):
            w.learn_heartbeat(node, 20.0)
    assert watchers[0].orphans(4.0, {"n2", "n3"}) == []   # n1 not silent long enough yet
    picked = [w.orphans(20.0, {"n2", "n3"}) for w in watchers]
    assert picked[0][0][0] == picked[1][0][0]              # every watcher picks the same adopter
    adopter, checkpoint = picked[0][0]
    assert checkpoint.done == {"a", "b"} and watchers[0].orphans(20.0, {"n2", "n3"}) == []
    resumed = WorkflowRun(spec, "r1", adopter).execute(resume=checkpoint)
    assert resumed.path == ["c"] and resumed.fingerprint() == reference.fingerprint()
    publish(adopter, COMMITTED, "c", {"c": resumed.outputs["c"].value})
    fresh = Takeover(detect_s=5.0)
    for r in records:
        fresh.learn_checkpoint(r)
    fresh.learn_heartbeat("n9", 100.0)
    assert [c.done for _, c in fresh.orphans(100.0, {"n9"})] == [{"a", "b", "c"}]  # the adopter lost in turn
    publish(adopter, ENDED)
    fresh = Takeover(detect_s=5.0)
    for r in records:
        fresh.learn_checkpoint(r)
    fresh.learn_heartbeat("n9", 100.0)
    assert fresh.orphans(100.0, {"n9"}) == []  # ended: nothing to resume


def test_bootstrapping_uses_tried_actions_only_so_a_hopeless_retry_is_not_made_to_look_good():
    # a poisoned input: every retry fails; in the next state only FAIL was ever tried (-1)
    s1, s2 = "---|BAD_INPUT|1|0|0|0|0|0", "---|BAD_INPUT|2|0|0|0|0|0"
    agent = QRecoveryAgent(gamma=0.9)
    agent.learn_transition(s2, FAIL, -1.0, None)
    for _ in range(5):
        agent.learn_transition(s1, "RETRY 1s", -1.0, s2)
        agent.learn_transition(s1, FAIL, -1.0, None)
    # -1 + 0.9 x (-1), not -1 + 0.9 x (the optimistic +1 of the actions s2 never tried)
    assert agent.q[s1]["RETRY 1s"] == pytest.approx(-1.9) and agent.predict_one(s1, explore=False) == FAIL


def test_a_rarely_seen_state_leans_on_its_coarse_state():
    agent = QRecoveryAgent()
    fine, sibling = "a-i|RESOURCE_EXHAUSTED|1|2|1|1|1|1", "a-i|RESOURCE_EXHAUSTED|1|0|1|1|0|0"
    for _ in range(20):  # the sibling states teach the coarse one that the way out works
        agent._learn_both(sibling, "ALTERNATIVE", 1.0, None)
        agent._learn_both(sibling, "RETRY 1s", -1.0, None)
    agent._learn_both(fine, "RETRY 1s", 0.5, None)  # one lucky retry in the rare state
    assert agent.estimate(fine, "RETRY 1s") == pytest.approx((0.5 + 5 * agent.q["a-i|RESOURCE_EXHAUSTED|1|*|1|1|*|*"][
        "RETRY 1s"]) / 6)
    assert agent.predict_one(fine, explore=False) == "ALTERNATIVE"  # never tried here, known good in the coarse state


def test_the_completion_price_rises_until_the_agent_completes_as_often_as_the_static_retrier():
    # a congested link: a failing attempt takes 10 s; a retry completes half the time, 40 s later.
    # The scalar reward prices that retry (-3 or -5) below failing at once (-1); the completion constraint does not.
    slow, poisoned, spent = "---|TIMEOUT|1|0|1|0|0|0", "---|BAD_INPUT|1|0|0|0|0|0", "---|TIMEOUT|4|0|1|0|0|0"
    rng = random.Random(0)
    for floor, expected in ((False, FAIL), (True, "RETRY 1s")):
        # without the first-failure floor, which would retry here whatever the price (tested below); the dual
        # ascent on, from no price (by default the price stays at its prior, tested below)
        agent = QRecoveryAgent(alpha=0.02, completion_floor=floor, first_failure_floor=0.0, price_rate=5.0,
                               completion_price=0.0)
        for _ in range(200):
            ok = rng.random() < 0.5
            agent._learn_both(slow, "RETRY 1s", (1.0 if ok else -1.0) - 4.0, None, float(ok))
            agent._learn_both(slow, FAIL, -1.0, None, 0.0)
            for state in (poisoned, spent):  # retrying never completes: giving up at once is right
                agent._learn_both(state, "RETRY 1s", -2.0, None, 0.0)
                agent._learn_both(state, FAIL, -1.0, None, 0.0)
        assert agent.completion[slow]["RETRY 1s"] == pytest.approx(0.5, abs=0.2)
        assert agent.predict_one(slow, explore=False) == FAIL and agent.completion_gap() < 0
        prices = [agent.policy("wf").version and agent.completion_price for _ in range(30)]
        assert agent.predict_one(slow, explore=False) == expected
        assert agent.predict_one(poisoned, explore=False) == FAIL and agent.predict_one(spent, explore=False) == FAIL
        if floor:  # it rose while the gap was negative, then held: no price above what the constraint needs
            assert prices[0] > 0 and prices[-1] == prices[-5] and agent.completion_gap() >= 0
            assert prices[-1] < 2 * 3.0 / 0.5
        else:
            assert prices[-1] == 0.0


def test_by_default_a_completed_run_is_priced_so_a_slow_retry_that_often_completes_is_not_given_up():
    # a congested link: the retry completes half the time and costs 1.2 reward units of time and attempts;
    # the reward alone (-1.2 on average) gives up at once (-1), the default price of a completion (+1) does not
    slow = "---|TIMEOUT|1|0|1|0|0|0"
    for price, expected in ((0.0, FAIL), (QRecoveryAgent.completion_price, "RETRY 0s")):
        agent = QRecoveryAgent(completion_price=price)
        for k in range(40):
            agent._learn_both(slow, "RETRY 0s", (1.0 if k % 2 else -1.0) - 1.2, None, float(k % 2))
            agent._learn_both(slow, FAIL, -1.0, None, 0.0)
        assert agent.predict_one(slow, explore=False) == expected
        assert agent.policy("wf", explore=False).actions[slow] == expected and agent.completion_price == price


def test_no_retry_past_the_static_retriers_last_whatever_it_learned():
    # a dead dependency's 0.5 s attempts: a fourth retry still completes now and then and costs little time
    spent = "a-i|DEPENDENCY_UNAVAILABLE|4|0|1|0|0|0"
    agent = QRecoveryAgent()
    for k in range(40):
        agent._learn_both(spent, "RETRY 0s", (1.0 if k % 2 else -1.0) - 0.25, None, float(k % 2))
        agent._learn_both(spent, FAIL, -1.0, None, 0.0)
        agent._learn_both(spent, ALTERNATIVE, -1.2, None, 0.0)
    assert agent.q[spent]["RETRY 0s"] > agent.q[spent][FAIL]
    assert agent.predict_one(spent, explore=False) == FAIL
    assert not any(a.startswith("RETRY") for a in valid_actions(spent))
    assert "RETRY 0s" in valid_actions(spent.replace("|4|", "|3|"))
    # nodes exploring an unknown state do not retry past it either
    node = PolicyRecovery(FailureView(), explore=1.0)
    failure = Failure("wf", "r", "s", "n", DEPENDENCY_UNAVAILABLE, 4, 0.0, alternatives=("b",))
    assert all(node.decide(failure).action != RETRY for _ in range(50))


def test_under_an_active_cause_a_run_is_not_given_up_at_the_first_failure_a_retry_may_recover():
    # a congested link: a retry completes the run 3 times in 10 but its 10 s cost more reward than failing at once
    first, second, dead = "---|TIMEOUT|1|0|1|0|0|0", "---|TIMEOUT|2|0|1|0|0|0", "---|DEPENDENCY_UNAVAILABLE|1|0|1|0|0|0"
    for floor, expected in ((0.0, FAIL), (0.1, "RETRY 1s")):
        agent = QRecoveryAgent(first_failure_floor=floor)
        for k in range(50):
            for state in (first, second):
                agent._learn_both(state, "RETRY 1s", (1.0 if k % 10 < 3 else -1.0) - 1.5, None, float(k % 10 < 3))
                agent._learn_both(state, FAIL, -1.0, None, 0.0)
            agent._learn_both(dead, "RETRY 1s", -1.5, None, 0.0)  # a dead dependency: retries never complete
            agent._learn_both(dead, FAIL, -1.0, None, 0.0)
        assert agent.predict_one(first, explore=False) == expected
        assert agent.predict_one(second, explore=False) == FAIL     # after the first retry the reward decides
        assert agent.predict_one(dead, explore=False) == FAIL


def test_completion_is_bootstrapped_from_what_the_policy_does_next():
    s1, s2 = "---|TIMEOUT|1|0|0|0|0|0", "---|TIMEOUT|2|0|0|0|0|0"
    agent = QRecoveryAgent()
    for _ in range(50):
        agent.learn_transition(s2, "RETRY 1s", 0.5, None, 1.0)    # the second retry always completes
        agent.learn_transition(s2, FAIL, -1.0, None, 0.0)
        agent.learn_transition(s1, "RETRY 0s", -1.2, s2)          # the first always fails, then s2
    assert agent.predict_one(s2, explore=False) == "RETRY 1s"
    assert agent.completion[s1]["RETRY 0s"] == pytest.approx(1.0)


def test_the_static_retriers_completion_follows_its_own_continuation_not_the_policys():
    # the second retry completes half the time but is slow: the policy gives up there, the retrier would not
    s1, s2 = "---|TIMEOUT|1|0|1|0|0|0", "---|TIMEOUT|2|0|1|0|0|0"
    agent = QRecoveryAgent(alpha=0.02)
    for k in range(300):
        agent.learn_transition(s2, "RETRY 1s", (1.0 if k % 2 else -1.0) - 4.0, None, float(k % 2))
        agent.learn_transition(s2, FAIL, -1.0, None, 0.0)
        agent.learn_transition(s1, "RETRY 1s", -1.5, s2)
    assert agent.predict_one(s2, explore=False) == FAIL
    assert agent.completion[s1]["RETRY 1s"] == pytest.approx(0.0, abs=0.01)   # the policy's continuation
    assert agent.static_completion[s1] == pytest.approx(0.5, abs=0.1)          # the retrier's


def test_without_an_active_cause_the_agent_gives_up_no_sooner_than_the_static_retrier():
    # an independent transient on a slow step: the retry completes but costs more reward than failing at once
    independent, caused = "---|TIMEOUT|2|0|0|0|0|0", "---|TIMEOUT|2|0|1|0|0|0"
    for floor, expected in ((False, FAIL), (True, "RETRY 1s")):
        agent = QRecoveryAgent(completion_floor=floor, completion_price=0.0)  # the rule alone, no price
        for _ in range(20):
            for state in (independent, caused):
                agent.learn_transition(state, "RETRY 1s", -1.5, None, 1.0)
                agent.learn_transition(state, FAIL, -1.0, None, 0.0)
        assert agent.predict_one(independent, explore=False) == expected
        assert agent.predict_one(caused, explore=False) == FAIL   # an active cause: the reward decides


def finish(run, task, t, recovery=None, state=None, ended=False):
    """A step's signal: a failure with the recovery chosen (and the state it was chosen in), else its success."""
    return {"state": 0, "workflow_id": "wf", "run_id": run, "task": task, "ts_ms": int(t * 1000),
            "outcome": "FAILURE" if recovery else "SUCCESS", "recovery": recovery, "run_ended": ended,
            "attributes": {"recovery.state": state} if state else None}


def test_an_episode_is_the_run_a_recovered_step_is_worth_what_the_run_then_becomes():
    # the same retry recovers step a in both runs; in r1 the cause then fails step b and the run is given up
    s, later = "---|RESOURCE_EXHAUSTED|1|0|1|0|0|0", "---|RESOURCE_EXHAUSTED|1|0|1|0|0|1"
    agent = QRecoveryAgent(gamma=0.9, time_cost_s=10.0)
    for signal in (finish("r1", "a", 0.0, "RETRY 0s", s), finish("r1", "a", 2.0),
                   finish("r1", "b", 3.0, FAIL, later, ended=True)):
        agent.learn_one(signal)
    assert agent.q[s]["RETRY 0s"] == pytest.approx(-0.2 + 0.9 * -1.0)   # not +1: the run was lost after all
    assert agent.completion[s]["RETRY 0s"] == pytest.approx(0.0)
    for signal in (finish("r2", "a", 10.0, "RETRY 0s", s), finish("r2", "a", 12.0, ended=True)):
        agent.learn_one(signal)
    # what the run became after the recovered step is the afterstate's, the mean of the two runs' (-1, +1): the
    # retry's value is its own -0.2 plus that 0 (it recovered the step both times), the first run's -1.1 moved with it
    assert agent.afterstate["---|RESOURCE_EXHAUSTED|*|*|1|0|*|*"][:2] == pytest.approx([0.0, 0.5])
    assert agent.recovers[s]["RETRY 0s"] == pytest.approx(1.0)
    assert agent.q[s]["RETRY 0s"] == pytest.approx(-0.2)
    assert agent.completion[s]["RETRY 0s"] == pytest.approx(0.5)


def test_an_action_learned_early_follows_its_afterstate():
    # an immediate retry recovers the step in the first two runs, which are then lost (FAIL on the next step);
    # a 5 s retry is then learned on twenty runs that complete. What follows the recovered step is the same whoever
    # recovered it: the immediate retry, 5 s faster, must stay the better (a snapshot of the afterstate's value at
    # its own updates left it at -1.2, below the 5 s retry's -0.5 + the afterstate's later value)
    s, later = "--i|DEPENDENCY_UNAVAILABLE|1|0|0|0|0|0", "--i|DEPENDENCY_UNAVAILABLE|1|0|0|0|0|1"

    agent = QRecoveryAgent(time_cost_s=10.0)
    t = 0.0
    for i in range(2):
        for signal in (finish(f"e{i}", "a", t, "RETRY 0s", s), finish(f"e{i}", "a", t + 2.0),
                       finish(f"e{i}", "b", t + 3.0, FAIL, later, ended=True)):
            agent.learn_one(signal)
        t += 100.0
    for i in range(20):
        for signal in (finish(f"l{i}", "a", t, "RETRY 5s", s), finish(f"l{i}", "a", t + 7.0, ended=True)):
            agent.learn_one(signal)
        t += 100.0
    after = agent.afterstate["--i|DEPENDENCY_UNAVAILABLE|*|*|0|0|*|*"]
    assert after[0] > 0.5
    assert agent.estimate(s, "RETRY 0s") == pytest.approx(-0.2 + after[0])
    assert agent.estimate(s, "RETRY 0s") > agent.estimate(s, "RETRY 5s")
    assert agent.completion[s]["RETRY 0s"] == pytest.approx(after[1])
    assert agent.predict_one(s, explore=False, min_visits=0) == "RETRY 0s"
    assert not agent.recovered and not agent.run_outcome and not agent.pending


def test_an_untried_action_is_explored_only_if_the_reward_could_still_prefer_it():
    # a node-scoped cause (a hot accelerator): the short retries were tried and mostly fail; the move was not.
    # A flat optimistic value would try RETRY 15s / 30s / 60s first (`ACTIONS` order); their wait alone
    # costs 1.5 / 3 / 6 reward units, so the move (no wait known) comes first and RETRY 60s never
    hot = "--i|RESOURCE_EXHAUSTED|1|0|1|0|1|1"
    agent = QRecoveryAgent()
    for action in ("RETRY 0s", "RETRY 1s", "RETRY 5s"):
        agent._learn_both(hot, action, -1.5, None, 0.0)
    assert agent.predict_one(hot) == "MIGRATE"
    agent._learn_both(hot, "MIGRATE", -1.2, None, 0.0)
    assert agent.predict_one(hot) == "RETRY 15s"  # worth at most 1 - 1.5 (+ the price), more than -1.2
    agent._learn_both(hot, "RETRY 15s", -2.0, None, 0.0)
    # left: giving up (known without trying: -1, never completes), RETRY 30s (at best as good) and RETRY 60s
    for _ in range(2):
        action = agent.predict_one(hot)
        assert action in (FAIL, "RETRY 30s")
        agent._learn_both(hot, action, -1.0 if action == FAIL else -3.5, None, 0.0)
    assert agent.predict_one(hot) == FAIL and "RETRY 60s" not in agent.q[hot]


def test_what_a_run_becomes_after_a_recovered_step_is_pooled_over_the_actions_that_recovered_it():
    # a way out at once (0 s) and three slow retries (12 s) both recover the step; what the run meets later
    # (another incident, or none) is luck that has nothing to do with either. Ten runs took the retries and
    # mostly completed; the three that took the way out happened to be given up later. Per action that luck
    # made the way out look worse; pooled, the way out is worth the run's future minus no time
    s = "a-i|DEPENDENCY_UNAVAILABLE|1|0|1|1|0|0"
    agent = QRecoveryAgent()
    for k in range(10):
        agent._close_recovered(s, "RETRY 5s", -1.2 - 0.6, 1.0 if k % 5 else -1.0, float(k % 5 != 0))
    for _ in range(3):
        agent._close_recovered(s, ALTERNATIVE, 0.0, -1.0, 0.0)
    assert agent.estimate(s, ALTERNATIVE) > agent.estimate(s, "RETRY 5s")
    assert agent.predict_one(s, explore=False) == ALTERNATIVE
