"""ShadowExecutor: commit uses the shadow result (the body runs once), critical steps are refused,
digest mismatches and timeouts roll back, rollback cancels mid-way and releases every resource,
a live writer invalidates stale shadows, shadows cannot write outside the run."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from edge.shadow import ShadowExecutor
from tests.support import LocalLoop
from edge.runtime import IsolationError, Step, WorkflowRun, WorkflowSpec
from schemas.codec import Codec

NODE = "edge-1"


class CountingResource:
    """A resource that takes ``ms`` to acquire and counts acquisitions and releases."""

    name = "slot"

    def __init__(self, ms: float = 5.0):
        self.ms, self.acquired, self.released = ms, 0, 0
        self._lock = threading.Lock()

    def acquire(self, ctx):
        ctx.sleep(self.ms)
        with self._lock:
            self.acquired += 1
        return object()

    def release(self, handle):
        with self._lock:
            self.released += 1


class Pipeline:
    """a -> b -> c: a makes x; b reads x, fetches ref, holds a slot; c (critical) writes b's y outside."""

    def __init__(self, a_ms=30.0, b_ms=30.0, fetch_ms=10.0, b_extra=None):
        self.calls, self.fetches, self.slot = {"a": 0, "b": 0, "c": 0}, 0, CountingResource()
        self.finished_b = 0
        self.b_extra = b_extra
        lock = threading.Lock()

        def a(ctx):
            self.calls["a"] += 1
            ctx.sleep(a_ms)
            return {"x": np.arange(4, dtype=np.int64)}

        def fetch_ref(ctx):
            with lock:
                self.fetches += 1
            ctx.sleep(fetch_ms)
            return b"ref"

        def b(ctx):
            with lock:
                self.calls["b"] += 1
            ctx.resource()
            if self.b_extra:
                self.b_extra(ctx)
            ctx.sleep(b_ms)
            self.finished_b += 1
            return {"y": ctx.inputs["x"].tobytes() + ctx.data("ref")}

        def c(ctx):
            self.calls["c"] += 1
            ctx.emit(ctx.inputs["y"])
            return {"done": b"ok"}

        self.spec = WorkflowSpec("pipe", (
            Step("a", a, outputs=("x",)),
            Step("b", b, inputs=("x",), outputs=("y",), fetch={"ref": fetch_ref}, resource=self.slot),
            Step("c", c, inputs=("y",), outputs=("done",), critical=True, fetch={"ref": fetch_ref})))


def command(run_id, step, action, **extra):
    now = int(time.time() * 1000)
    return {"command_id": f"{run_id}/{step}/{action}", "node_id": NODE, "workflow_id": "pipe", "run_id": run_id,
            "step": step, "action": action, "confidence": 0.9, "expected_start_ts_ms": now, "issued_ts_ms": now,
            "input_digest": None, "reason": "test", **extra}


class Scripted:
    """An on_signal that sends given commands when given signals go by, and keeps every ack."""

    def __init__(self, executor, script):
        self.executor, self.script, self.acks = executor, script, []
        executor.on_ack = self.acks.append

    def __call__(self, signal):
        for c in self.script.get((signal["task"], signal["state"]), ()):
            self.acks.append(self.executor.handle(c(signal["run_id"]) if callable(c) else c))


@pytest.fixture
def executor():
    ex = ShadowExecutor(NODE, max_in_flight=4, ttl_ms=2000)
    yield ex
    ex.close()


def reference_run(pipe_factory=Pipeline):
    pipe = pipe_factory()
    sink = []
    result = WorkflowRun(pipe.spec, "r1", NODE, sink=lambda s, p: sink.append(p)).execute({})
    return result, sink


def assert_schema_acks(acks):
    codec = Codec()
    for ack in acks:
        assert codec.decode(codec.encode("CommandAck", ack)).record == ack
        assert ack["kind"] == "SHADOW" and ack["node_id"] == NODE


def test_commit_uses_the_shadow_result_so_the_step_body_runs_once(executor):
    off, off_sink = reference_run(lambda: Pipeline(fetch_ms=40))
    pipe = Pipeline(fetch_ms=40)
    script = Scripted(executor, {("a", 1): [lambda r: command(r, "b", "PRE_EXECUTE")]})
    sink = []
    on = WorkflowRun(pipe.spec, "r1", NODE, executor=executor, on_signal=script,
                     sink=lambda s, p: sink.append(p)).execute({})
    assert pipe.calls["b"] == 1 and on.executions.get("b", 0) == 0 and on.committed["b"] == 1
    assert executor.stats.executions["b"] == 1
    assert on.fingerprint() == off.fingerprint() and sink == off_sink
    # b needs a's output, so only its fetch (40 ms) and allocation (5 ms) overlap a: the executor
    # accounts that as saved time below (run latency itself is measured in bench/shadow.py)
    statuses = [(a["status"], a["details"].get("step")) for a in script.acks]
    assert statuses == [("APPLIED", "b"), ("COMMITTED", "b")]
    committed = script.acks[-1]
    assert committed["command_id"] == "r1/b/PRE_EXECUTE" and committed["reason"] == "ok"
    assert 20 < float(committed["details"]["saved_ms"]) and committed["details"]["executed"] == "true"
    assert_schema_acks(script.acks)
    assert executor.wait_idle() and executor.stats.balanced and pipe.slot.acquired == pipe.slot.released == 1


def test_a_critical_step_is_never_pre_executed_only_prepared(executor):
    pipe = Pipeline()
    script = Scripted(executor, {("a", 1): [lambda r: command(r, "c", "PRE_EXECUTE"),
                                            lambda r: command(r, "c", "ALLOCATE"),
                                            lambda r: command(r, "c", "PREFETCH")]})
    sink = []
    run = WorkflowRun(pipe.spec, "r1", NODE, executor=executor, on_signal=script, sink=lambda s, p: sink.append(p))
    run.execute({})
    first = script.acks[:3]
    assert [(a["status"], a["details"]["code"]) for a in first] == [
        ("REJECTED", "critical"), ("REJECTED", "nothing_to_allocate"), ("APPLIED", "accepted")]
    assert executor.stats.executions["c"] == 0 and pipe.calls["c"] == 1 and len(sink) == 1
    assert pipe.fetches == 2  # b fetched live; c's reference data was pre-fetched and handed over
    assert script.acks[-1]["status"] == "COMMITTED" and script.acks[-1]["details"]["executed"] == "false"


def test_a_prepared_shadow_hands_its_data_and_allocation_to_the_live_step(executor):
    pipe = Pipeline()
    script = Scripted(executor, {("a", 1): [lambda r: command(r, "b", "ALLOCATE"),
                                            lambda r: command(r, "b", "PREFETCH")]})
    run = WorkflowRun(pipe.spec, "r1", NODE, executor=executor, on_signal=script)
    run.execute({})
    assert run.executions["b"] == 1 and pipe.calls["b"] == 1  # computed live...
    assert pipe.fetches == 1 and pipe.slot.acquired == 1  # ...with the data and slot the shadow got ready
    assert executor.wait_idle() and executor.stats.adopted == 1 and executor.stats.balanced
    assert pipe.slot.released == 1


def test_a_changed_environment_means_an_input_digest_mismatch_and_a_live_recompute(executor):
    model = {"id": "model-A"}

    class EnvPipeline(Pipeline):
        def __init__(self):
            super().__init__()
            b = self.spec.step("b")
            steps = list(self.spec.steps)
            steps[1] = Step(b.name, lambda ctx: {"y": b.fn(ctx)["y"] + model["id"].encode()}, inputs=b.inputs,
                            outputs=b.outputs, fetch=b.fetch, resource=b.resource,
                            environment=lambda: model["id"])
            self.spec = WorkflowSpec("pipe", tuple(steps))

    pipe = EnvPipeline()

    def swap_when_shadow_is_done(signal):
        if signal["task"] == "a" and signal["state"] == 0:
            deadline = time.monotonic() + 2
            while executor.stats.executions["b"] == 0 or executor.open_shadows and time.monotonic() < deadline:
                with executor._cond:
                    sh = executor._shadows.get(("r1", "b"))
                    if sh is not None and sh.outputs is not None:
                        break
                time.sleep(0.002)
            model["id"] = "model-B"  # the node morphed after the shadow computed b on model A

    script = Scripted(executor, {("a", 1): [lambda r: command(r, "b", "PRE_EXECUTE")]})
    on = WorkflowRun(pipe.spec, "r1", NODE, executor=executor,
                     on_signal=lambda s: (script(s), swap_when_shadow_is_done(s))).execute({})
    assert on.outputs["y"].value.endswith(b"model-B")
    assert pipe.calls["b"] == 2 and on.executions["b"] == 1
    rolled = [a for a in script.acks if a["status"] == "ROLLED_BACK"]
    assert [a["reason"] for a in rolled] == ["input digest mismatch"]
    assert float(rolled[0]["details"]["wasted_ms"]) > 0
    assert executor.wait_idle() and executor.stats.balanced and pipe.slot.acquired == pipe.slot.released


def test_a_commit_carrying_another_digest_rolls_back_at_once(executor):
    pipe = Pipeline(b_ms=1)
    run = WorkflowRun(pipe.spec, "r1", NODE)
    run.store.put("x", np.arange(4, dtype=np.int64))
    executor.open_run(run)
    assert executor.handle(command("r1", "b", "PRE_EXECUTE"))["status"] == "APPLIED"
    deadline = time.monotonic() + 2
    while executor._shadows[("r1", "b")].outputs is None and time.monotonic() < deadline:
        time.sleep(0.002)
    ack = executor.handle(command("r1", "b", "COMMIT", input_digest="f" * 64))
    assert (ack["status"], ack["reason"], ack["command_id"]) == ("ROLLED_BACK", "input digest mismatch", "r1/b/COMMIT")
    late = executor.handle(command("r1", "b", "ROLLBACK"))
    assert late["status"] == "APPLIED" and late["reason"].startswith("already rolled_back")
    executor.close_run("r1")
    assert executor.wait_idle() and executor.stats.balanced


def test_rollback_cancels_a_shadow_mid_way_and_releases_everything(executor):
    pipe = Pipeline(b_ms=400)
    run = WorkflowRun(pipe.spec, "r1", NODE)
    run.store.put("x", np.arange(4, dtype=np.int64))
    executor.open_run(run)
    executor.handle(command("r1", "b", "PRE_EXECUTE"))
    deadline = time.monotonic() + 2
    while executor.stats.executions["b"] == 0 and time.monotonic() < deadline:
        time.sleep(0.002)
    time.sleep(0.02)  # well inside b's 400 ms body
    t0 = time.monotonic()
    ack = executor.handle(command("r1", "b", "ROLLBACK", reason="mispredicted: z started"))
    assert executor.wait_idle(2.0)
    assert time.monotonic() - t0 < 0.2  # cooperative cancellation: the body's sleep woke at once
    assert (ack["status"], ack["reason"], ack["details"]["code"]) == ("ROLLED_BACK", "mispredicted: z started",
                                                                      "rolled_back")
    assert float(ack["details"]["wasted_ms"]) >= 20
    assert pipe.finished_b == 0 and pipe.calls["b"] == 1
    assert pipe.slot.acquired == pipe.slot.released == 1
    s = executor.stats
    assert s.balanced and s.allocated == s.released == 1 and s.data_loaded == s.data_released == 1
    assert s.rolled_back == {"mispredicted": 1} and executor.open_shadows == 0
    assert_schema_acks([ack])


def test_an_unclaimed_shadow_times_out_and_releases_everything():
    acks = []
    ex = ShadowExecutor(NODE, ttl_ms=60, on_ack=acks.append)
    try:
        pipe = Pipeline(b_ms=1)
        run = WorkflowRun(pipe.spec, "r1", NODE)
        run.store.put("x", np.arange(4, dtype=np.int64))
        ex.open_run(run)
        ex.handle(command("r1", "b", "PRE_EXECUTE"))
        deadline = time.monotonic() + 2
        while not acks and time.monotonic() < deadline:
            time.sleep(0.005)
        assert [(a["status"], a["reason"], a["details"]["ended_by"]) for a in acks] == [
            ("ROLLED_BACK", "timeout", "timeout")]
        assert ex.wait_idle() and ex.stats.balanced and pipe.slot.acquired == pipe.slot.released == 1
        assert ex.stats.rolled_back == {"timeout": 1}
    finally:
        ex.close()


def test_a_live_step_waits_at_most_the_ttl_for_a_slow_shadow_then_computes_itself():
    slow = {"on": True}

    def stall_in_shadow(ctx):
        if ctx.shadow and slow["on"]:
            ctx.sleep(5000)

    pipe = Pipeline(a_ms=5, b_ms=5, b_extra=stall_in_shadow)
    ex = ShadowExecutor(NODE, ttl_ms=80)
    try:
        script = Scripted(ex, {("a", 1): [lambda r: command(r, "b", "PRE_EXECUTE")]})
        t0 = time.monotonic()
        run = WorkflowRun(pipe.spec, "r1", NODE, executor=ex, on_signal=script)
        result = run.execute({})
        assert time.monotonic() - t0 < 1.0 and result.error is None and run.executions["b"] == 1
        assert [a["reason"] for a in script.acks if a["status"] == "ROLLED_BACK"] == ["timeout"]
        assert ex.wait_idle() and ex.stats.balanced
    finally:
        ex.close()


def test_shadow_work_in_flight_is_bounded_per_node():
    ex = ShadowExecutor(NODE, max_in_flight=1)
    try:
        pipe = Pipeline()
        run = WorkflowRun(pipe.spec, "r1", NODE)
        ex.open_run(run)
        assert ex.handle(command("r1", "b", "PREFETCH"))["status"] == "APPLIED"
        full = ex.handle(command("r1", "c", "PREFETCH"))
        assert (full["status"], full["details"]["code"]) == ("REJECTED", "capacity")
        assert ex.handle(command("r1", "b", "ALLOCATE"))["status"] == "APPLIED"  # same shadow, no new slot
        ex.close_run("r1")
        assert ex.wait_idle() and ex.stats.balanced and ex.stats.peak_open == 1
    finally:
        ex.close()


def test_commands_for_unknown_runs_other_nodes_or_started_steps_are_rejected(executor):
    pipe = Pipeline()
    assert executor.handle(command("nope", "b", "PREFETCH"))["details"]["code"] == "unknown_run"
    run = WorkflowRun(pipe.spec, "r1", NODE)
    executor.open_run(run)
    assert executor.handle({**command("r1", "b", "PREFETCH"), "node_id": "edge-9"})["details"]["code"] == "wrong_node"
    assert executor.handle(command("r1", "zz", "PREFETCH"))["details"]["code"] == "unknown_step"
    assert executor.handle({"action": "PREFETCH"})["details"]["code"] == "malformed"
    assert executor.handle(command("r1", "b", "COMMIT"))["details"]["code"] == "unknown_shadow"


def test_a_live_step_rewriting_a_shadows_input_makes_it_recompute_on_the_new_version(executor):
    """Like re-inspection revising the scores postprocess was pre-executed on."""
    calls = {"use": 0}

    def use(ctx):
        calls["use"] += 1
        ctx.sleep(15)
        return {"out": ctx.inputs["v"] * 10}

    spec = WorkflowSpec("pipe", (
        Step("make", lambda ctx: {"v": np.array([1, 2])}, outputs=("v",)),
        Step("gate", lambda ctx: (ctx.sleep(40), {"g": b"fix"})[1], inputs=("v",), outputs=("g",), critical=True),
        Step("fix", lambda ctx: (ctx.sleep(20), {"v": ctx.inputs["v"] + 1})[1], inputs=("v",), outputs=("v",),
             after=("gate",), when=lambda arts: arts["g"].value == b"fix"),
        Step("use", use, inputs=("v",), outputs=("out",), after=("gate", "fix"))))
    off = WorkflowRun(spec, "r1", NODE).execute({})
    calls["use"] = 0
    script = Scripted(executor, {("gate", 1): [lambda r: command(r, "use", "PRE_EXECUTE")]})
    on = WorkflowRun(spec, "r1", NODE, executor=executor, on_signal=script).execute({})
    assert on.outputs["out"].value.tolist() == off.outputs["out"].value.tolist() == [20, 30]
    assert on.committed["use"] == 1 and calls["use"] == 2  # once on v1 (discarded), once on v2 (committed)
    assert executor.stats.invalidated == 1
    committed = script.acks[-1]
    assert committed["status"] == "COMMITTED" and float(committed["details"]["wasted_ms"]) >= 10


def test_a_shadow_cannot_write_outside_the_run_or_change_its_inputs(executor):
    tried = []

    def sneaky(ctx):
        if ctx.shadow:
            try:
                ctx.inputs["x"][0] = 99
            except ValueError:
                tried.append("read-only")
            ctx.emit(b"leak")  # raises IsolationError in a shadow

    pipe = Pipeline(b_extra=sneaky)
    sink = []
    script = Scripted(executor, {("a", 1): [lambda r: command(r, "b", "PRE_EXECUTE")]})
    run = WorkflowRun(pipe.spec, "r1", NODE, executor=executor, on_signal=script, sink=lambda s, p: sink.append(p))
    result = run.execute({})
    assert tried == ["read-only"] and result.outputs["x"].value.tolist() == [0, 1, 2, 3]
    failed = [a for a in script.acks if a["status"] == "ROLLED_BACK"]
    assert len(failed) == 1 and failed[0]["reason"].startswith("shadow failed: IsolationError")
    assert run.executions["b"] == 1 and len(sink) == 1  # only the live critical step wrote outside
    assert executor.wait_idle() and executor.stats.balanced
    assert executor.stats.rolled_back == {"shadow failed": 1} and IsolationError.__name__ in failed[0]["reason"]


def test_the_end_of_a_run_rolls_back_the_shadows_it_left(executor):
    pipe = Pipeline(b_ms=1)
    loop_acks = []
    def late_allocate(s):
        return [command(s["run_id"], "b", "ALLOCATE")] if (s["task"], s["state"]) == ("c", 1) else []

    loop = LocalLoop(executor, late_allocate, loop_acks.append)
    WorkflowRun(pipe.spec, "r1", NODE, executor=executor, on_signal=loop).execute({})
    # b had already run when the ALLOCATE came: rejected; nothing left open
    assert loop_acks[0]["details"]["code"] == "started"
    run = WorkflowRun(pipe.spec, "r2", NODE)
    executor.open_run(run)
    executor.handle(command("r2", "b", "PREFETCH"))
    executor.close_run("r2")
    assert [(a["status"], a["reason"]) for a in loop_acks[1:]] == [("ROLLED_BACK", "run ended")]
    assert executor.wait_idle() and executor.stats.balanced and executor.open_shadows == 0
