"""Moving a run to another node (`edge.faults.MIGRATE`): the runtime, the shield, the agent, the bench supervisor."""

from __future__ import annotations

import numpy as np

from edge.faults import FAIL, MIGRATE, TIMEOUT, Decision, Failure, StepFailure, shield
from edge.runtime import Step, WorkflowRun, WorkflowSpec


class Always:
    def __init__(self, decision: Decision):
        self.decision = decision

    def decide(self, failure: Failure) -> Decision:
        return self.decision


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
    assert shield(Failure("wf", "r", "load", "n", TIMEOUT, 1, 0.0, can_migrate=True), Decision(MIGRATE)).action \
        == MIGRATE


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
