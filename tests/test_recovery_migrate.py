"""Moving a run to another node (`edge.faults.MIGRATE`): the runtime, the shield, the agent, the static failover rule,
the bench supervisor."""

from __future__ import annotations

import numpy as np
import pytest

from edge.faults import (
    BAD_INPUT,
    FAIL,
    MIGRATE,
    TIMEOUT,
    Decision,
    Failure,
    FaultScenario,
    FaultSimulator,
    StepFailure,
    shield,
)
from edge.runtime import Step, WorkflowRun, WorkflowSpec
from prediction.recovery import (
    FailoverRetrier,
    FailureView,
    PolicyRecovery,
    QRecoveryAgent,
    RecoveryPolicyTable,
    step_functions_default,
    step_functions_failover,
    valid_actions,
)
from tests.support import Always


class CongestedLink:
    """A fault source: every attempt of ``step`` on ``node`` times out (the node's link is congested)."""

    def __init__(self, step: str, node: str):
        self.step, self.node = step, node

    def before_attempt(self, run, step, implementation, uses, attempt):
        if step.name == self.step and run.node_id == self.node:
            raise StepFailure(TIMEOUT, "link congested", 10.0)


SPEC = WorkflowSpec("wf", (Step("a", lambda ctx: {"x": ctx.inputs["lot"] + 1}, inputs=("lot",), outputs=("x",)),
                           Step("load", lambda ctx: {"y": ctx.inputs["x"] * 2}, inputs=("x",), outputs=("y",))))


def test_a_moved_run_stops_with_its_checkpoint_and_resumes_on_another_node():
    signals, faults = [], CongestedLink("load", "n1")
    moved = WorkflowRun(SPEC, "r1", "n1", recovery=Always(Decision(MIGRATE, state="s")), faults=faults,
                        can_migrate=True, on_signal=signals.append).execute({"lot": np.arange(2)})
    assert moved.migrated and not moved.node_lost and moved.error is not None
    assert moved.checkpoint.done == {"a"}
    last = signals[-1]
    assert (last["task"], last["outcome"], last["recovery"], last["run_ended"]) == ("load", "FAILURE", MIGRATE, True)
    assert last["attributes"]["recovery.state"] == "s"
    resumed = WorkflowRun(SPEC, "r1", "n2", faults=faults).execute(resume=moved.checkpoint)
    assert resumed.error is None and resumed.path == ["load"]
    # where no orchestrator moves runs, the shield fails the step instead
    kept = WorkflowRun(SPEC, "r1", "n1", recovery=Always(Decision(MIGRATE)), faults=faults).execute(
        {"lot": np.arange(2)})
    assert not kept.migrated and kept.error is not None and kept.recoveries[-1].decision.action == FAIL


def test_the_shield_never_moves_a_step_that_may_not_run_twice():
    once = Failure("wf", "r", "write", "n", TIMEOUT, 1, 0.0, critical=True, idempotent=False, can_migrate=True)
    assert shield(once, Decision(MIGRATE)).action == FAIL
    assert MIGRATE not in valid_actions("--n|TIMEOUT|1|0|1|0|1|0")
    assert shield(Failure("wf", "r", "load", "n", TIMEOUT, 1, 0.0, can_migrate=True), Decision(MIGRATE)).action \
        == MIGRATE


def test_a_move_is_allowed_where_a_retry_is():
    assert MIGRATE in valid_actions("a-i|TIMEOUT|3|*|1|0|*|*")
    assert MIGRATE not in valid_actions("a-i|TIMEOUT|4|*|1|0|*|*")   # past the retry budget


def test_the_agent_learns_a_move_as_a_recovery_that_spans_the_nodes():
    # the step always times out on n1 and works on n2: moving completes the run, giving up loses it
    agent, faults = QRecoveryAgent(alpha=0.5), CongestedLink("load", "n1")
    state = "--i|TIMEOUT|1|0|1|0|1|0"
    t = {"now": 0.0}

    def advance(s):
        t["now"] += s

    def run(k: int, decision: str) -> bool:
        t["now"] += 100.0
        kw = dict(recovery=Always(Decision(decision, state=state)), faults=faults, can_migrate=True,
                  on_signal=agent.learn_one, clock=lambda: t["now"], wait=advance)
        result = WorkflowRun(SPEC, f"r{k}", "n1", **kw).execute({"lot": np.arange(2)})
        if result.migrated:
            advance(5.0)   # the hand-over
            result = WorkflowRun(SPEC, f"r{k}", "n2", **kw).execute(resume=result.checkpoint)
        return result.error is None
    assert run(0, MIGRATE) and not run(1, FAIL)
    assert agent.q[state][MIGRATE] == pytest.approx(-0.5 + 1.0)   # its 5 s, then the completed run's +1
    assert agent.completion[state][MIGRATE] == 1.0 and agent.completion[state][FAIL] == 0.0
    assert not agent.pending and not agent.recovered and not agent.run_outcome
    assert agent.predict_one(state, explore=False) == MIGRATE


def test_a_node_that_cannot_move_the_run_uses_the_static_retrier_instead():
    node = PolicyRecovery(FailureView())
    node.apply(RecoveryPolicyTable("wf", 1, {"--i|TIMEOUT|1|0|0|0|0|0": MIGRATE}))
    stuck = Failure("wf", "r", "load", "n1", TIMEOUT, 1, 0.0)
    assert node.decide(stuck).reason == "static retrier"
    assert node.decide(Failure("wf", "r", "load", "n1", TIMEOUT, 1, 0.0, can_migrate=True)).action == MIGRATE
    explorer = PolicyRecovery(FailureView(), explore=1.0)
    assert all(explorer.decide(stuck).action != MIGRATE for _ in range(50))


@pytest.fixture()
def bench(bench_script):
    return bench_script("resilience")


def test_the_bench_supervisor_moves_a_run_to_a_node_whose_link_is_clear(bench):
    sim = FaultSimulator(FaultScenario("congestion", congestion={"edge-2": (60.0, 600.0)}), 0, 3600.0)
    t = next(e.start_s for e in sim.episodes) + 30.0
    fleet = bench.AgentFleet(sim, sim.indicators(0.0, 3600.0), 0, explore=0.0)
    assert fleet.move_to("edge-3", t, 30.0) == "edge-1"       # edge-2 is congested
    assert fleet.move_to("edge-1", t, 30.0) == "edge-3"


def test_a_moved_step_goes_on_from_its_attempts_so_a_move_buys_no_fresh_retries():
    faults, seen = CongestedLink("load", "n1"), []

    class Record:
        def decide(self, failure):
            seen.append((failure.node_id, failure.attempt))
            return Decision(MIGRATE) if failure.attempt == 2 else Decision("RETRY", 0.0)
    moved = WorkflowRun(SPEC, "r1", "n1", recovery=Record(), faults=faults, can_migrate=True).execute(
        {"lot": np.arange(2)})
    assert moved.migrated and moved.checkpoint.attempts == {"load": 2}

    class FailsUpTo3:  # the next node fails the step's attempts up to the third
        def before_attempt(self, run, step, implementation, uses, attempt):
            if step.name == "load" and attempt <= 3:
                raise StepFailure(TIMEOUT)
    resumed = WorkflowRun(SPEC, "r1", "n3", recovery=Record(), faults=FailsUpTo3(), can_migrate=True).execute(
        resume=moved.checkpoint)
    assert seen == [("n1", 1), ("n1", 2), ("n3", 3)]   # the third attempt, on the next node
    assert resumed.records[-1].attempts == 4 and resumed.error is None


def test_a_released_run_travels_as_checkpoint_records_and_another_node_resumes_it_with_its_attempts():
    """What a worker with takeover does (`edge.worker`): the run's checkpoints, then RELEASED with the failed
    attempts, each through the broker's encoding; the watchers' `Takeover` hands the run to another node alive,
    which goes on from those attempts."""
    from edge.faults import RETRY
    from edge.takeover import COMMITTED, RELEASED, STARTED, Takeover, checkpoint_record
    from schemas.codec import Codec

    codec, watcher, clock = Codec(), Takeover(detect_s=10.0), {"s": 100.0}

    def publish(status, step=None, artifacts=None, error=None, attempts=None):
        record = checkpoint_record("r1", "wf", "n1", clock["s"] * 1000, status, step, artifacts, error, attempts)
        watcher.learn_checkpoint(codec.decode(codec.encode("RunCheckpoint", record)).record)

    class RetryOnceThenMove:
        def decide(self, failure: Failure) -> Decision:
            return Decision(RETRY, 0.0) if failure.attempt < 2 else Decision(MIGRATE)

    faults = CongestedLink("load", "n1")
    publish(STARTED, artifacts={"lot": np.arange(2)})
    moved = WorkflowRun(SPEC, "r1", "n1", recovery=RetryOnceThenMove(), faults=faults, can_migrate=True,
                        wait=lambda s: None, on_commit=lambda step, out: publish(COMMITTED, step, out)
                        ).execute({"lot": np.arange(2)})
    assert moved.migrated and moved.checkpoint.attempts == {"load": 2}
    publish(RELEASED, error=moved.error, attempts=moved.checkpoint.attempts)

    watcher.learn_heartbeat("n2", clock["s"])
    assert watcher.orphans(clock["s"], {"n1"}) == []           # the node that released it does not take it back
    [(adopter, resume)] = watcher.orphans(clock["s"], {"n1", "n2"})
    assert adopter == "n2" and resume.done == {"a"} and dict(resume.attempts) == {"load": 2}
    assert watcher.orphans(clock["s"], {"n2"}) == []           # claimed once
    signals = []
    resumed = WorkflowRun(SPEC, "r1", "n2", faults=faults, on_signal=signals.append).execute(resume=resume)
    assert resumed.error is None and resumed.path == ["load"]
    # its one attempt there is the run's third: the two that failed on n1 count
    assert [(s["attempt"], s["outcome"]) for s in signals if s["task"] == "load" and s["state"] == 0] == [(3, "SUCCESS")]


def test_a_node_alone_takes_back_the_run_it_released():
    from edge.takeover import RELEASED, STARTED, Takeover, checkpoint_record

    watcher = Takeover(detect_s=10.0)
    watcher.learn_checkpoint(checkpoint_record("r1", "wf", "n1", 1_000, STARTED))
    watcher.learn_checkpoint(checkpoint_record("r1", "wf", "n1", 2_000, RELEASED, error="TIMEOUT", attempts={"a": 1}))
    [(adopter, resume)] = watcher.orphans(2.0, {"n1"})
    assert adopter == "n1" and dict(resume.attempts) == {"a": 1}


def test_the_static_failover_rule_moves_once_where_the_retrier_gives_up_and_only_there():
    rule = step_functions_failover()

    def decide(attempt, error=TIMEOUT, **kw):
        return rule.decide(Failure("wf", "r", "load", "n1", error, attempt, 0.0, **kw))
    # Step Functions' schedule first, the move where it would give up, then nothing more (no fresh retries)
    assert [decide(k, can_migrate=True).describe() for k in (1, 2, 3, 4, 5)] == \
        ["RETRY 1s", "RETRY 2s", "RETRY 4s", MIGRATE, FAIL]
    assert [decide(k).describe() for k in (1, 2, 3, 4)] == [s.describe() for s in (
        step_functions_default().decide(Failure("wf", "r", "load", "n1", TIMEOUT, k, 0.0)) for k in (1, 2, 3, 4))]
    # never where no orchestrator can move the run, never a step that may not run twice, never for bad input
    assert decide(4).action == FAIL
    once = decide(4, can_migrate=True, critical=True, idempotent=False)
    assert once.action != MIGRATE
    assert shield(Failure("wf", "r", "load", "n1", TIMEOUT, 1, 0.0, critical=True, idempotent=False,
                          can_migrate=True), decide(1, can_migrate=True, critical=True, idempotent=False)).action == FAIL
    assert decide(4, BAD_INPUT, can_migrate=True).action == FAIL
    # moved earlier (in place of the last retry), the same rules hold and the step keeps Step Functions' 4 attempts
    early = step_functions_failover(move_after=3)
    assert [early.decide(Failure("wf", "r", "load", "n1", TIMEOUT, k, 0.0, can_migrate=True)).describe()
            for k in (1, 2, 3, 4)] == ["RETRY 1s", "RETRY 2s", MIGRATE, FAIL]
    assert early.decide(Failure("wf", "r", "load", "n1", TIMEOUT, 3, 0.0)).describe() == "RETRY 4s"
    assert early.decide(Failure("wf", "r", "load", "n1", TIMEOUT, 3, 0.0, can_migrate=True, critical=True,
                                idempotent=False)).action != MIGRATE


def test_the_static_failover_rule_completes_a_run_stuck_on_a_congested_link_elsewhere():
    faults = CongestedLink("load", "n1")
    rule = step_functions_failover()
    moved = WorkflowRun(SPEC, "r1", "n1", recovery=rule, faults=faults, can_migrate=True).execute(
        {"lot": np.arange(2)})
    assert moved.migrated and moved.checkpoint.attempts == {"load": 4}
    assert [r.decision.action for r in moved.recoveries] == ["RETRY", "RETRY", "RETRY", MIGRATE]
    resumed = WorkflowRun(SPEC, "r1", "n2", recovery=rule, faults=faults, can_migrate=True).execute(
        resume=moved.checkpoint)
    assert resumed.error is None and resumed.records[-1].attempts == 5
    # where the orchestrator cannot move runs, the rule is Step Functions' retrier: the run is given up
    kept = WorkflowRun(SPEC, "r2", "n1", recovery=rule, faults=faults).execute({"lot": np.arange(2)})
    assert not kept.migrated and kept.error is not None and kept.recoveries[-1].decision.action == FAIL
    # a step that may not run twice is never moved: it fails at its first failure, on its node
    once = WorkflowSpec("wf", (SPEC.steps[0], Step("load", SPEC.steps[1].fn, inputs=("x",), outputs=("y",),
                                                    critical=True, idempotent=False)))
    hit = WorkflowRun(once, "r3", "n1", recovery=rule, faults=faults, can_migrate=True).execute(
        {"lot": np.arange(2)})
    assert not hit.migrated and hit.error is not None and len(hit.recoveries) == 1


def test_the_bench_runs_the_static_move_baseline_with_the_agents_supervisor(bench):
    assert "static-move" in bench.POLICIES
    policies = bench.baseline_policies("static-move", 0)
    assert set(policies) == set(bench.NODES)
    assert all(isinstance(p, FailoverRetrier) and learn is None for p, learn in policies.values())
    sim = FaultSimulator(FaultScenario("congestion", congestion={"edge-2": (60.0, 600.0)}), 0, 3600.0)
    t = next(e.start_s for e in sim.episodes) + 30.0
    alerts = sim.indicators(0.0, 3600.0)
    fleet, supervisor = bench.AgentFleet(sim, alerts, 0, explore=0.0), bench.Supervisor(sim, alerts)
    for node in bench.NODES:
        assert supervisor.move_to(node, t, 30.0) == fleet.move_to(node, t, 30.0)


def test_a_step_committed_after_a_release_sheds_the_attempts_it_made_before():
    from edge.takeover import COMMITTED, RELEASED, STARTED, Takeover, checkpoint_record

    watcher = Takeover(detect_s=10.0)
    watcher.learn_checkpoint(checkpoint_record("r1", "wf", "n1", 1_000, STARTED))
    watcher.learn_checkpoint(checkpoint_record("r1", "wf", "n1", 2_000, RELEASED, attempts={"a": 2, "b": 1}))
    watcher.learn_checkpoint(checkpoint_record("r1", "wf", "n2", 3_000, STARTED))
    watcher.learn_checkpoint(checkpoint_record("r1", "wf", "n2", 4_000, COMMITTED, "a"))
    # n2 then falls silent: whoever resumes the run goes on from b's attempts only
    watcher.learn_heartbeat("n3", 20.0)
    [(adopter, resume)] = watcher.orphans(20.0, {"n3"})
    assert adopter == "n3" and resume.done == {"a"} and dict(resume.attempts) == {"b": 1}
