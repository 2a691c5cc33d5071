"""The workflow runtime on an edge node: a run is a DAG of named steps over immutable, versioned artifacts.

A `WorkflowSpec` lists `Step` s. Each step reads named input artifacts, may read
read-only outside data (``fetch``) and hold a `Resource` (a warmed session, a
container), and writes named output artifacts. An artifact version is immutable
once written: numpy arrays are copied and made read-only, bytes are bytes, and
each version carries a content digest. Writing a name again makes a new version.

A step is **critical** when it writes outside the run, calls an external system
or must not run twice; critical steps are never pre-executed (only their data
and resources may be prepared). Every other step must be a deterministic function
of its inputs, its fetched data and its ``environment`` (e.g. the model serving
now): that is what lets a shadow compute it ahead of time and the run commit
that result instead of computing it again.

`WorkflowRun` executes a spec for one input on one node, up to ``slots`` steps at
a time, in declaration order among the ready ones. A step is ready when the steps
it comes ``after`` are done or skipped and its inputs exist; its ``when``
predicate (on the run's artifacts) can skip it, which is how data-dependent
branches are written. Every state change calls ``on_signal`` with a WorkflowSignal
record (``schemas/workflow_signal.avsc``); the last one has ``run_ended``.

Before running a step the run asks its shadow source (the node's
`edge.shadow.ShadowExecutor`) ``take(run_id, step, input_digest)``. The answer is
a `Handover`: a committed shadow result whose input digest matched (the step's
body is then not run at all), or pre-fetched data and a pre-allocated resource
the live body uses, or nothing. ``run.executions`` counts real executions of each
step's body, ``run.committed`` the steps taken from a shadow.

The model of time: everything runs on the wall clock, in threads. Costs that
stand for I/O or for work this machine does not really do (a camera read, a call
to a remote service, an HPC task's recorded runtime) are sleeps through
`StepContext.sleep`, which a cancelled shadow wakes from at once; computation
that is real (ONNX inference, numpy) is just done. Each module-level workflow
below says which of its costs are which.

>>> double = Step("double", lambda ctx: {"y": ctx.inputs["x"] * 2}, inputs=("x",), outputs=("y",))
>>> spec = WorkflowSpec("demo", (double,))
>>> signals = []
>>> result = WorkflowRun(spec, "r1", "node-1", on_signal=signals.append).execute({"x": np.arange(3)})
>>> result.outputs["y"].value.tolist(), result.outputs["y"].version
([0, 2, 4], 1)
>>> [(s["task"], s["state"], s["run_ended"]) for s in signals]
[('double', 1, False), ('double', 0, True)]
>>> result.outputs["y"].value.flags.writeable
False
"""

from __future__ import annotations

import hashlib
import json
import queue
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol

import numpy as np  # noqa: F401  (the module docstring's example uses it)


from edge.artifacts import Artifact, ArtifactStore, freeze, input_digest, lineage_id
from edge.faults import ALTERNATIVE, FAIL, FALLBACK, MIGRATE, RETRY, Decision, Failure, NodeLost, classify, shield

PRIMARY = "primary"   # the implementation a step declares in ``fn``; FALLBACK names its fallback branch

class Cancelled(Exception):
    """Raised inside a step body whose shadow was cancelled (cooperative cancellation)."""


class IsolationError(RuntimeError):
    """A shadow tried to do what only the live run may (write outside the run)."""


class Resource(Protocol):
    """Something a step holds while it runs and that takes time to get ready (a warmed session, a container)."""

    name: str

    def acquire(self, ctx: StepContext) -> Any: ...

    def release(self, handle: Any) -> None: ...


@dataclass(frozen=True)
class Alternative:
    """Another implementation of a step (a lighter model, a cached result, a backup replica): same inputs and outputs.

    ``uses`` names what it depends on ('dep:<service>', 'accelerator',
    'network', 'input'), which is what fault causes act on.
    """

    name: str
    fn: Callable[[StepContext], Mapping[str, Any]]
    uses: tuple[str, ...] = ()


@dataclass(frozen=True)
class Step:
    """A named step: ``fn(ctx) -> {output name: bytes | array}`` and what it reads, needs and writes.

    For recovery: ``idempotent`` (False: must never be executed twice, whatever
    a policy says), ``alternatives`` to switch to, a ``fallback`` branch that
    produces degraded outputs (e.g. defer to manual review) and ``uses``, what
    the primary implementation depends on.
    """

    name: str
    fn: Callable[[StepContext], Mapping[str, Any]]
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    critical: bool = False
    fetch: Mapping[str, Callable[[StepContext], Any]] = field(default_factory=dict)
    resource: Resource | None = None
    after: tuple[str, ...] = ()
    when: Callable[[Mapping[str, Artifact]], bool] | None = None
    environment: Callable[[], str] | None = None
    resources: Mapping[str, float] | None = None  # what the step's signals report (cpu, mem_mb, ...)
    idempotent: bool = True
    alternatives: tuple[Alternative, ...] = ()
    fallback: Callable[[StepContext], Mapping[str, Any]] | None = None
    uses: tuple[str, ...] = ()

    def implementation(self, name: str) -> tuple[Callable[[StepContext], Mapping[str, Any]], tuple[str, ...]]:
        """The body and what it uses of the implementation ``name`` (primary, an alternative, or the fallback)."""
        if name == PRIMARY:
            return self.fn, self.uses
        if name == FALLBACK and self.fallback is not None:
            return self.fallback, ()
        for alt in self.alternatives:
            if alt.name == name:
                return alt.fn, alt.uses
        raise KeyError(f"step {self.name!r} has no implementation {name!r}")

    def environment_id(self) -> str:
        return self.environment() if self.environment is not None else ""


@dataclass(frozen=True)
class WorkflowSpec:
    """A workflow: its id and its steps in a topological order."""

    workflow_id: str
    steps: tuple[Step, ...]

    def __post_init__(self):
        names = [s.name for s in self.steps]
        if len(set(names)) != len(names):
            raise ValueError(f"step names repeat in {self.workflow_id!r}")
        seen: set[str] = set()
        for s in self.steps:
            unknown = [a for a in s.after if a not in seen]
            if unknown:
                raise ValueError(f"step {s.name!r} comes after {unknown}, which are not declared before it")
            seen.add(s.name)

    def step(self, name: str) -> Step:
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(f"no step {name!r} in workflow {self.workflow_id!r}")

    def __contains__(self, name: str) -> bool:
        return any(s.name == name for s in self.steps)

    @property
    def critical_steps(self) -> frozenset[str]:
        return frozenset(s.name for s in self.steps if s.critical)


class StepContext:
    """What a step body sees, live or in a shadow: inputs, outside data, its resource, a cancellable clock.

    ``data(key)`` returns pre-fetched data or fetches it now; ``resource()``
    returns the pre-allocated handle or acquires one now (released when the
    live step ends). ``emit`` writes outside the run and exists only live.
    """

    def __init__(self, step: Step, run_id: str, inputs: Mapping[str, Artifact], *, shadow: bool,
                 data: dict | None = None, resource: Any = None, has_resource: bool = False,
                 sink: Callable[[str, Any], None] | None = None, cancelled: Callable[[], bool] | None = None,
                 wake: threading.Event | None = None):
        self.step, self.run_id, self.shadow = step, run_id, shadow
        self.artifacts = dict(inputs)
        self.inputs = {name: a.value for name, a in inputs.items()}
        self._data = data if data is not None else {}
        self._resource, self._has_resource, self._acquired = resource, has_resource, False
        self._sink = sink
        self._cancelled = cancelled or (lambda: False)
        self._wake = wake or threading.Event()  # set by whoever cancels, so sleeps end at once
        self.fetch_ms = 0.0
        self.acquire_ms = 0.0

    def data(self, key: str):
        if key not in self._data:
            fetch = self.step.fetch.get(key)
            if fetch is None:
                raise KeyError(f"step {self.step.name!r} declares no data {key!r}")
            t0 = time.perf_counter()
            self._data[key] = freeze(fetch(self))
            self.fetch_ms += (time.perf_counter() - t0) * 1e3
        return self._data[key]

    def resource(self):
        if not self._has_resource:
            if self.step.resource is None:
                raise KeyError(f"step {self.step.name!r} declares no resource")
            t0 = time.perf_counter()
            self._resource = self.step.resource.acquire(self)
            self.acquire_ms += (time.perf_counter() - t0) * 1e3
            self._has_resource = self._acquired = True
        return self._resource

    def release_acquired(self) -> None:
        """Give back a resource this context acquired itself (not one handed over to it)."""
        if self._acquired:
            self._acquired = self._has_resource = False
            self.step.resource.release(self._resource)

    def sleep(self, ms: float) -> None:
        """Wait ``ms`` (a cost standing for I/O or outside work); a cancelled shadow wakes at once."""
        self.check()
        if ms > 0 and self._wake.wait(ms / 1e3):
            self.check()

    def check(self) -> None:
        if self._cancelled():
            raise Cancelled(self.step.name)

    def emit(self, payload) -> None:
        """Write outside the run (the critical sink). Never available in a shadow."""
        if self.shadow or self._sink is None:
            raise IsolationError(f"step {self.step.name!r} may not write outside the run here")
        self._sink(self.step.name, payload)


# -- the run's view of the node's shadows -----------------------------------------------------


@dataclass
class Handover:
    """What the node's shadows give a live step: a committed result, or prepared data and resource, or nothing."""

    outputs: Mapping[str, Any] | None = None
    data: dict = field(default_factory=dict)
    resource: Any = None
    has_resource: bool = False
    give_back: Callable[[Any], None] | None = None  # releases an adopted resource (the executor counts it)

    def close(self) -> None:
        if self.has_resource and self.give_back is not None:
            self.has_resource = False
            self.give_back(self.resource)


class ShadowSource(Protocol):
    """What a run asks of the node's shadow executor (see `edge.shadow.ShadowExecutor`)."""

    def open_run(self, run: WorkflowRun) -> None: ...

    def take(self, run_id: str, step: str, input_digest: str) -> Handover: ...

    def close_run(self, run_id: str) -> None: ...


# -- runs -------------------------------------------------------------------------------------

WAITING, RUNNING, DONE, SKIPPED, FAILED = "waiting", "running", "done", "skipped", "failed"


@dataclass(frozen=True)
class StepRecord:
    """How one step went in one run (times in ms from the run's start)."""

    step: str
    start_ms: float
    finish_ms: float
    busy_ms: float        # time the live body ran (0 when a shadow result was committed)
    wait_ms: float        # time spent in take(): waiting for a shadow to finish
    committed: bool
    outcome: str
    attempts: int = 1           # the attempt that ended the step
    implementation: str = PRIMARY


@dataclass(frozen=True)
class RecoveryRecord:
    """One failure inside a run and what was decided about it."""

    failure: Failure
    decision: Decision


@dataclass(frozen=True)
class RunCheckpoint:
    """What a run had committed when it stopped: the steps done or skipped and every artifact version.

    Resuming it (``WorkflowRun.execute(resume=...)``) on another node runs only
    the steps not committed. A step in flight when the node stopped had not
    committed, so it runs again; the simulator loses a node between attempts,
    never inside a critical step's side effect. ``attempts``: the attempts a
    step not committed has already made and failed (an attempt the node's loss
    stopped before it ran is not one); on the next node its first attempt is
    the one after them, so a policy's retry budget and the attempt a failure
    reports are the run's, not the node's (a move to another node, which is
    how a policy leaves a node-scoped cause, does not buy fresh retries).
    """

    workflow_id: str
    run_id: str
    node_id: str
    artifacts: Mapping[str, tuple]
    done: frozenset[str]
    skipped: frozenset[str]
    attempts: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class RunResult:
    run_id: str
    latency_ms: float
    outputs: dict[str, Artifact]
    records: tuple[StepRecord, ...]
    emitted: tuple[tuple[str, Any], ...]   # what critical steps wrote outside the run, in order
    error: str | None = None
    executions: dict[str, int] = field(default_factory=dict)  # live executions of each step's body
    committed: dict[str, int] = field(default_factory=dict)   # steps taken from a shadow instead
    recoveries: tuple[RecoveryRecord, ...] = ()
    degraded: tuple[str, ...] = ()     # steps that ended on their fallback branch
    node_lost: bool = False
    checkpoint: RunCheckpoint | None = None
    migrated: bool = False             # stopped to be resumed on another node (`edge.faults.MIGRATE`)

    @property
    def path(self) -> list[str]:
        return [r.step for r in self.records]

    def fingerprint(self) -> str:
        """One digest over every final artifact and every emitted payload (equal runs, equal fingerprints)."""
        h = hashlib.sha256()
        for name in sorted(self.outputs):
            h.update(f"{name}@{self.outputs[name].version}={self.outputs[name].digest}\n".encode())
        for step, payload in self.emitted:
            h.update(f"emit:{step}=".encode() + _payload_bytes(payload) + b"\n")
        return h.hexdigest()


def _payload_bytes(payload) -> bytes:
    if isinstance(payload, dict):
        return json.dumps(payload, sort_keys=True, default=lambda b: bytes(b).hex()).encode()
    return freeze(payload) if isinstance(payload, (bytes, bytearray, memoryview)) else freeze(payload).tobytes()


class WorkflowRun:
    """One run of a spec on one node: executes steps, consults the node's shadows, emits signals."""

    def __init__(self, spec: WorkflowSpec, run_id: str, node_id: str = "local", *,
                 executor: ShadowSource | None = None, on_signal: Callable[[dict], None] | None = None,
                 sink: Callable[[str, Any], None] | None = None, slots: int = 1,
                 clock: Callable[[], float] = time.time, recovery=None, faults=None,
                 wait: Callable[[float], None] = time.sleep, max_attempts: int = 10,
                 on_commit: Callable[[str, dict[str, Any]], None] | None = None, can_migrate: bool = False):
        """``recovery`` decides after a failed attempt (``decide(Failure) -> Decision``, e.g. a
        `prediction.recovery` policy); without one a failing step fails the run. ``faults``
        (``before_attempt(run, step, implementation, uses, attempt)``) may fail an attempt before
        its body runs (`edge.faults.SimulatedFaults`); ``wait`` waits out a retry delay. ``on_commit(step,
        {artifact: value})`` hears of every step that commits, with what it wrote (`edge.takeover`).
        ``can_migrate``: the caller resumes the run on another node when ``RunResult.migrated`` (as it
        resumes a lost node's runs), so a policy may decide `edge.faults.MIGRATE`; without it the
        shield fails such a decision."""
        if slots < 1:
            raise ValueError("slots must be at least 1")
        self.spec, self.run_id, self.node_id = spec, run_id, node_id
        self.executor, self.on_signal, self.slots, self.clock = executor, on_signal, slots, clock
        self._sink = sink
        self.store = ArtifactStore()
        self.executions: Counter = Counter()   # live executions of each step's body
        self.committed: Counter = Counter()    # steps whose shadow result was committed instead
        self._state = {s.name: WAITING for s in spec.steps}
        self._lock = threading.Lock()
        self._emitted: list[tuple[str, Any]] = []
        self._records: list[StepRecord] = []
        self._tsa: dict[str, list[int]] = {}
        self._seq = 0
        self.recovery, self.faults, self._wait, self.max_attempts = recovery, faults, wait, max_attempts
        self.on_commit = on_commit
        self._signal_lock = threading.Lock()   # retried attempts signal from the pool's threads
        self._recoveries: list[RecoveryRecord] = []
        self._decisions: dict[str, Decision] = {}
        self._tried: dict[str, set[str]] = {}
        self.can_migrate, self._migrating = can_migrate, False
        self._attempted: dict[str, int] = {}   # step -> the attempts it made and failed (a checkpoint's `attempts`)

    @property
    def workflow_id(self) -> str:
        return self.spec.workflow_id

    def state(self, step: str) -> str:
        with self._lock:
            return self._state[step]

    def has_started(self, step: str) -> bool:
        return self.state(step) != WAITING

    # -- executing ----------------------------------------------------------------------------

    def execute(self, inputs: Mapping[str, Any] | None = None, *, resume: RunCheckpoint | None = None) -> RunResult:
        """Run the spec on ``inputs`` (each becomes version 1 of its artifact); blocks until the run ends.

        With ``resume`` (a checkpoint of this run from another node) the
        committed steps and artifacts are taken over and only the rest runs.
        """
        if resume is not None:
            self._restore(resume)
        for name, value in (inputs or {}).items():
            self.store.put(name, value)
        self._t0 = time.perf_counter()
        if self.executor is not None:
            self.executor.open_run(self)
        error, node_lost, self._migrating = None, False, False
        done: queue.Queue = queue.Queue()
        running = 0
        try:
            with ThreadPoolExecutor(self.slots, thread_name_prefix=f"run-{self.run_id}") as pool:
                ready = self._ready()
                while ready or running:
                    while ready and running < self.slots:
                        step = ready.pop(0)
                        self._start(step)
                        running += 1
                        # a step resumed from another node's checkpoint goes on from its attempts there
                        made = self._attempted.get(step.name, 0)
                        pool.submit(self._run_step, step, done, made + 1, PRIMARY, 0.0, bool(made))
                    step, outputs, record, exc = done.get()
                    running -= 1
                    again = self._recover(step, record, exc) if exc is not None and error is None else None
                    if again is not None:
                        running += 1
                        pool.submit(self._run_step, step, done, *again)
                        continue
                    if exc is not None and error is None:
                        error = f"{step.name}: {type(exc).__name__}: {exc}"
                        node_lost = isinstance(exc, NodeLost)
                    ready = self._finish(step, outputs, record, exc, running, failed=error is not None)
        finally:
            if self.executor is not None:
                self.executor.close_run(self.run_id)
        return RunResult(self.run_id, (time.perf_counter() - self._t0) * 1e3, self.store.latest(),
                         tuple(self._records), tuple(self._emitted), error, dict(self.executions),
                         dict(self.committed), tuple(self._recoveries),
                         tuple(r.step for r in self._records if r.implementation == FALLBACK and r.outcome == "SUCCESS"),
                         node_lost, self.checkpoint(), self._migrating)

    def checkpoint(self) -> RunCheckpoint:
        """What this run has committed so far (see `RunCheckpoint`)."""
        with self._lock:
            done = frozenset(n for n, st in self._state.items() if st == DONE)
            skipped = frozenset(n for n, st in self._state.items() if st == SKIPPED)
        artifacts = {name: tuple(a.value for a in self.store.history(name)) for name in self.store.latest()}
        attempts = {s: n for s, n in self._attempted.items() if s not in done and s not in skipped}
        return RunCheckpoint(self.workflow_id, self.run_id, self.node_id, artifacts, done, skipped, attempts)

    def _restore(self, checkpoint: RunCheckpoint) -> None:
        if (checkpoint.workflow_id, checkpoint.run_id) != (self.workflow_id, self.run_id):
            raise ValueError(f"checkpoint of {checkpoint.workflow_id}/{checkpoint.run_id} "
                             f"does not belong to run {self.workflow_id}/{self.run_id}")
        for name, values in checkpoint.artifacts.items():
            for value in values:
                self.store.put(name, value)
        with self._lock:
            for name in checkpoint.done:
                self._state[name] = DONE
            for name in checkpoint.skipped:
                self._state[name] = SKIPPED
        self._attempted.update(checkpoint.attempts)

    def _recover(self, step: Step, record: StepRecord, exc: BaseException) -> tuple[int, str, float] | None:
        """After a failed attempt: (next attempt, implementation, delay s) to try, or None to fail the step.

        The policy's decision passes through `edge.faults.shield`; the failed
        attempt's finish signal carries the error class, the attempt and what
        was decided, with the policy's version.
        """
        if not isinstance(exc, (NodeLost, Cancelled)):  # a lost node's attempt never ran
            self._attempted[step.name] = record.attempts
        if self.recovery is None or isinstance(exc, (NodeLost, Cancelled)) or record.implementation == FALLBACK:
            return None
        tried = self._tried.setdefault(step.name, {PRIMARY})
        tried.add(record.implementation)
        left = tuple(a for a in step.alternatives if a.name not in tried)
        failure = Failure(self.workflow_id, self.run_id, step.name, self.node_id, classify(exc), record.attempts,
                          self.clock(), record.implementation, step.critical, step.idempotent,
                          tuple(a.name for a in left), step.fallback is not None,
                          step.implementation(record.implementation)[1], tuple(a.uses for a in left),
                          self.can_migrate)
        try:
            decision = self.recovery.decide(failure)
        except Exception as e:  # a broken policy must not break the run: fail the step with the reason
            decision = Decision(FAIL, reason=f"policy error: {type(e).__name__}: {e}")
        decision = shield(failure, decision, self.max_attempts)
        self._recoveries.append(RecoveryRecord(failure, decision))
        self._decisions[step.name] = decision
        if decision.action in (FAIL, MIGRATE):  # the step ends here; a move's failure signal says MIGRATE
            self._migrating = decision.action == MIGRATE
            return None
        ts = max(self._now_ms(), self._tsa[step.name][-1])
        self._tsa[step.name].append(ts)
        self._signal(step, 0, ts, "FAILURE", 0, False, failure=(failure.error_class, failure.attempt, decision),
                     implementation=record.implementation)
        implementation = {ALTERNATIVE: decision.alternative, FALLBACK: FALLBACK}.get(decision.action,
                                                                                      record.implementation)
        return record.attempts + 1, implementation, decision.delay_s if decision.action == RETRY else 0.0

    def _ready(self, failed: bool = False) -> list[Step]:
        """Steps that can start now, in declaration order; skips steps whose ``when`` says no."""
        if failed:
            return []
        out = []
        with self._lock:
            changed = True
            while changed:  # a skip can make later steps ready
                changed, out = False, []
                for s in self.spec.steps:
                    if self._state[s.name] != WAITING:
                        continue
                    if any(self._state[a] not in (DONE, SKIPPED) for a in s.after):
                        continue
                    snap = self.store.snapshot(s.inputs)
                    if snap is None:
                        continue
                    if s.when is not None and not s.when(self.store.latest()):
                        self._state[s.name] = SKIPPED
                        changed = True
                        break
                    out.append(s)
        return out

    def _start(self, step: Step) -> None:
        with self._lock:
            self._state[step.name] = RUNNING
        self.store.begin_writing(step.outputs)
        ts = self._now_ms()
        self._tsa[step.name] = [ts]
        inputs = self.store.snapshot(step.inputs) or {}
        size = sum(a.size_bytes for a in inputs.values())
        self._signal(step, 1, ts, None, size, False, inputs=[lineage_id(a) for a in inputs.values()])

    def _run_step(self, step: Step, done: queue.Queue, attempt: int = 1, implementation: str = PRIMARY,
                  delay_s: float = 0.0, resumed: bool = False) -> None:
        """One attempt of ``step``; ``resumed``: the first here of a step that failed on another node (no delay to
        wait, and `_start` already signalled its start)."""
        outputs, err, committed, busy, wait = None, None, False, 0.0, 0.0
        t_start = (time.perf_counter() - self._t0) * 1e3
        try:
            if attempt > 1 and not resumed:
                self._wait(delay_s)
                self._restart_signal(step, attempt)
                t_start = (time.perf_counter() - self._t0) * 1e3
            body, uses = step.implementation(implementation)
            if self.faults is not None:
                self.faults.before_attempt(self, step, implementation, uses, attempt)
            artifacts = self.store.snapshot(step.inputs)
            # a shadow computed the primary's first attempt; a retry or another implementation runs live
            handover = self._take(step, artifacts) if attempt == 1 else Handover()
            wait = (time.perf_counter() - self._t0) * 1e3 - t_start
            try:
                if handover.outputs is not None:
                    outputs, committed = dict(handover.outputs), True
                else:
                    ctx = StepContext(step, self.run_id, artifacts, shadow=False, data=dict(handover.data),
                                      resource=handover.resource, has_resource=handover.has_resource,
                                      sink=self._emit)
                    t0 = time.perf_counter()
                    try:
                        outputs = dict(body(ctx))
                    finally:
                        ctx.release_acquired()
                        with self._lock:  # a body that raised was executed too (it may have had effects)
                            self.executions[step.name] += 1
                    busy = (time.perf_counter() - t0) * 1e3
                    check_outputs(step, outputs)
            finally:
                handover.close()
        except Exception as e:  # the run's loop asks the recovery policy, or the run ends with FAILURE
            err = e
        finish = (time.perf_counter() - self._t0) * 1e3
        record = StepRecord(step.name, t_start, finish, busy, wait, committed, "SUCCESS" if err is None else "FAILURE",
                            attempt, implementation)
        done.put((step, outputs, record, err))

    def _take(self, step: Step, artifacts: Mapping[str, Artifact]) -> Handover:
        if self.executor is None:
            return Handover()
        digest = input_digest(step.name, artifacts, step.environment_id())
        try:
            return self.executor.take(self.run_id, step.name, digest)
        except Exception:  # the shadows must never break the live run: compute it live instead
            return Handover()

    def _finish(self, step: Step, outputs, record: StepRecord, err, running: int, failed: bool) -> list[Step]:
        size, written, values = 0, [], {}
        if err is None:
            for name in step.outputs:
                artifact = self.store.put(name, outputs[name])
                size += artifact.size_bytes
                written.append(lineage_id(artifact))
                values[name] = artifact.value
            if record.committed:
                with self._lock:
                    self.committed[step.name] += 1
        self.store.end_writing(step.outputs)
        with self._lock:
            self._state[step.name] = DONE if err is None else FAILED
        if err is None and self.on_commit is not None:
            self.on_commit(step.name, values)
        self._records.append(record)
        ready = self._ready(failed)
        ts = max(self._now_ms(), self._tsa[step.name][0])
        self._tsa[step.name].append(ts)
        decision = self._decisions.pop(step.name, None) or Decision(FAIL)
        self._signal(step, 0, ts, "SUCCESS" if err is None else "FAILURE", size, not ready and not running,
                     outputs=written, attempt=record.attempts,
                     failure=None if err is None else (classify(err), record.attempts, decision),
                     implementation=record.implementation)
        return ready

    def _restart_signal(self, step: Step, attempt: int) -> None:
        ts = max(self._now_ms(), self._tsa[step.name][-1])
        self._tsa[step.name].append(ts)
        inputs = self.store.snapshot(step.inputs) or {}
        self._signal(step, 1, ts, None, sum(a.size_bytes for a in inputs.values()), False,
                     inputs=[lineage_id(a) for a in inputs.values()], attempt=attempt)

    def _emit(self, step: str, payload) -> None:
        with self._lock:
            self._emitted.append((step, payload))
        if self._sink is not None:
            self._sink(step, payload)

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def _signal(self, step: Step, state: int, ts: int, outcome, size: int, ended: bool, *,
                inputs: list[str] | None = None, outputs: list[str] | None = None, attempt: int | None = None,
                failure: tuple[str, int, Decision] | None = None, implementation: str | None = None) -> None:
        if self.on_signal is None:
            return
        if failure is not None:
            attempt = failure[1]
        suffix = f"/a{attempt}" if attempt and attempt > 1 else ""
        attributes = {"recovery.state": failure[2].state} if failure and failure[2].state else None
        if implementation is not None and (failure is not None or attempt and attempt > 1):
            # what the attempt depended on, so the failure graph can link causes to shared resources;
            # only on failures and recovery attempts: a first attempt's success says its primary's
            attributes = dict(attributes or {}, **{"recovery.uses": ",".join(step.implementation(implementation)[1]),
                                                   "recovery.implementation": implementation})
        with self._signal_lock:
            self._seq += 1
            self.on_signal(self._signal_record(step, state, ts, outcome, size, ended, inputs, outputs, suffix,
                                               attempt, failure, attributes))

    def _signal_record(self, step, state, ts, outcome, size, ended, inputs, outputs, suffix, attempt, failure,
                       attributes):
        return {
            "signal_id": f"{self.workflow_id}/{self.run_id}/{step.name}/{state}{suffix}",
            "workflow_id": self.workflow_id, "run_id": self.run_id, "task": step.name, "state": state,
            "outcome": outcome, "ts_ms": ts, "tsa": list(self._tsa[step.name]), "tsa_resolution_ms": 1,
            "intensity": 0.0 if state == 1 else 1.0, "node_id": self.node_id,
            "resources": dict(step.resources) if step.resources else None,
            "data_size_bytes": size, "run_ended": ended, "inputs": inputs, "outputs": outputs,
            "attributes": attributes,
            "error_class": failure[0] if failure else None,
            "attempt": attempt or (1 if self.recovery is not None else None),
            "recovery": failure[2].describe() if failure else None,
            "policy_version": failure[2].policy_version if failure else None}


def check_outputs(step: Step, outputs: Mapping[str, Any]) -> None:
    """Raise unless a step body returned exactly the outputs its step declares."""
    if set(outputs) != set(step.outputs):
        raise ValueError(f"step {step.name!r} returned {sorted(outputs)}, declared {sorted(step.outputs)}")
