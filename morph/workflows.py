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
`morph.shadow.ShadowExecutor`) ``take(run_id, step, input_digest)``. The answer is
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
import math
import queue
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Protocol

import numpy as np

# -- artifacts --------------------------------------------------------------------------------


def freeze(value) -> bytes | np.ndarray:
    """An immutable copy of a step output: bytes stay bytes, arrays are copied read-only."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, np.ndarray):
        out = np.array(value, copy=True, order="C")
        out.flags.writeable = False
        return out
    raise TypeError(f"artifacts are bytes or numpy arrays, not {type(value).__name__}")


def digest_of(value: bytes | np.ndarray) -> str:
    """Content digest (sha256 hex) of a frozen value; dtype and shape are part of an array's content."""
    h = hashlib.sha256()
    if isinstance(value, np.ndarray):
        h.update(f"nd:{value.dtype.str}:{value.shape}:".encode())
        h.update(value.tobytes())
    else:
        h.update(b"by:")
        h.update(value)
    return h.hexdigest()


def size_of(value: bytes | np.ndarray) -> int:
    return value.nbytes if isinstance(value, np.ndarray) else len(value)


@dataclass(frozen=True)
class Artifact:
    """One immutable version of a named run artifact."""

    name: str
    version: int
    value: bytes | np.ndarray = field(repr=False)
    digest: str

    @property
    def size_bytes(self) -> int:
        return size_of(self.value)


class ArtifactStore:
    """One run's artifacts: every version kept, the latest one read, and which names live steps are writing.

    Shadows wait in `wait_ready` until their inputs exist and no live step is
    about to rewrite them, so a shadow never computes on a version the run is
    replacing at that moment.
    """

    def __init__(self):
        self._cond = threading.Condition()
        self._versions: dict[str, list[Artifact]] = {}
        self._writing: Counter = Counter()

    def put(self, name: str, value) -> Artifact:
        frozen = freeze(value)
        with self._cond:
            versions = self._versions.setdefault(name, [])
            artifact = Artifact(name, len(versions) + 1, frozen, digest_of(frozen))
            versions.append(artifact)
            self._cond.notify_all()
            return artifact

    def get(self, name: str) -> Artifact | None:
        with self._cond:
            versions = self._versions.get(name)
            return versions[-1] if versions else None

    def history(self, name: str) -> list[Artifact]:
        with self._cond:
            return list(self._versions.get(name, ()))

    def latest(self) -> dict[str, Artifact]:
        with self._cond:
            return {name: versions[-1] for name, versions in self._versions.items()}

    def snapshot(self, names) -> dict[str, Artifact] | None:
        """The latest version of each name, or ``None`` if one is missing."""
        with self._cond:
            out = {}
            for name in names:
                versions = self._versions.get(name)
                if not versions:
                    return None
                out[name] = versions[-1]
            return out

    def begin_writing(self, names) -> None:
        with self._cond:
            self._writing.update(names)

    def end_writing(self, names) -> None:
        with self._cond:
            self._writing.subtract(names)
            self._writing += Counter()  # drop zero counts
            self._cond.notify_all()

    def wait_ready(self, names, stop: Callable[[], bool], timeout_s: float) -> dict[str, Artifact] | None:
        """Latest versions of ``names`` once all exist and none is being written; ``None`` on stop or timeout."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                if stop():
                    return None
                if not any(self._writing[n] for n in names):
                    snap = self.snapshot(names)  # the condition's lock is re-entrant
                    if snap is not None:
                        return snap
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                # the 50 ms cap bounds how late a stop nobody poked is noticed
                self._cond.wait(min(left, 0.05))

    def poke(self) -> None:
        """Wake waiters so they re-check their stop condition (a cancelled shadow)."""
        with self._cond:
            self._cond.notify_all()


def input_digest(step: str, artifacts: Mapping[str, Artifact], environment: str = "") -> str:
    """What a step's result depends on: its name, its inputs' contents and its environment.

    >>> a = Artifact("x", 1, b"1", digest_of(b"1"))
    >>> input_digest("s", {"x": a}) == input_digest("s", {"x": replace(a, version=7)})
    True
    >>> input_digest("s", {"x": a}) == input_digest("s", {"x": a}, environment="model-b")
    False
    """
    h = hashlib.sha256(f"step:{step}\n".encode())
    for name in sorted(artifacts):
        h.update(f"in:{name}={artifacts[name].digest}\n".encode())
    h.update(f"env:{environment}".encode())
    return h.hexdigest()


# -- steps ------------------------------------------------------------------------------------


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
class Step:
    """A named step: ``fn(ctx) -> {output name: bytes | array}`` and what it reads, needs and writes."""

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
    """What a run asks of the node's shadow executor (see `morph.shadow.ShadowExecutor`)."""

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
                 clock: Callable[[], float] = time.time):
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

    @property
    def workflow_id(self) -> str:
        return self.spec.workflow_id

    def state(self, step: str) -> str:
        with self._lock:
            return self._state[step]

    def has_started(self, step: str) -> bool:
        return self.state(step) != WAITING

    # -- executing ----------------------------------------------------------------------------

    def execute(self, inputs: Mapping[str, Any]) -> RunResult:
        """Run the spec on ``inputs`` (each becomes version 1 of its artifact); blocks until the run ends."""
        for name, value in inputs.items():
            self.store.put(name, value)
        self._t0 = time.perf_counter()
        if self.executor is not None:
            self.executor.open_run(self)
        error = None
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
                        pool.submit(self._run_step, step, done)
                    step, outputs, record, err = done.get()
                    running -= 1
                    if err is not None and error is None:
                        error = f"{step.name}: {err}"
                    ready = self._finish(step, outputs, record, err, running, failed=error is not None)
        finally:
            if self.executor is not None:
                self.executor.close_run(self.run_id)
        return RunResult(self.run_id, (time.perf_counter() - self._t0) * 1e3, self.store.latest(),
                         tuple(self._records), tuple(self._emitted), error, dict(self.executions),
                         dict(self.committed))

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
        size = sum(a.size_bytes for a in (self.store.snapshot(step.inputs) or {}).values())
        self._signal(step, 1, ts, None, size, False)

    def _run_step(self, step: Step, done: queue.Queue) -> None:
        t_start = (time.perf_counter() - self._t0) * 1e3
        outputs, err, committed, busy, wait = None, None, False, 0.0, 0.0
        try:
            artifacts = self.store.snapshot(step.inputs)
            handover = self._take(step, artifacts)
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
                        outputs = dict(step.fn(ctx))
                    finally:
                        ctx.release_acquired()
                    busy = (time.perf_counter() - t0) * 1e3
                    with self._lock:
                        self.executions[step.name] += 1
                    check_outputs(step, outputs)
            finally:
                handover.close()
        except Exception as e:  # a failing step ends the run with outcome FAILURE
            err = f"{type(e).__name__}: {e}"
        finish = (time.perf_counter() - self._t0) * 1e3
        record = StepRecord(step.name, t_start, finish, busy, wait, committed, "SUCCESS" if err is None else "FAILURE")
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
        size = 0
        if err is None:
            for name in step.outputs:
                size += self.store.put(name, outputs[name]).size_bytes
            if record.committed:
                with self._lock:
                    self.committed[step.name] += 1
        self.store.end_writing(step.outputs)
        with self._lock:
            self._state[step.name] = DONE if err is None else FAILED
        self._records.append(record)
        ready = self._ready(failed)
        ts = max(self._now_ms(), self._tsa[step.name][0])
        self._tsa[step.name].append(ts)
        self._signal(step, 0, ts, "SUCCESS" if err is None else "FAILURE", size, not ready and not running)
        return ready

    def _emit(self, step: str, payload) -> None:
        with self._lock:
            self._emitted.append((step, payload))
        if self._sink is not None:
            self._sink(step, payload)

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def _signal(self, step: Step, state: int, ts: int, outcome, size: int, ended: bool) -> None:
        if self.on_signal is None:
            return
        self._seq += 1
        self.on_signal({
            "signal_id": f"{self.workflow_id}/{self.run_id}/{step.name}/{state}",
            "workflow_id": self.workflow_id, "run_id": self.run_id, "task": step.name, "state": state,
            "outcome": outcome, "ts_ms": ts, "tsa": list(self._tsa[step.name]), "tsa_resolution_ms": 1,
            "intensity": 0.0 if state == 1 else 1.0, "node_id": self.node_id,
            "resources": dict(step.resources) if step.resources else None,
            "data_size_bytes": size, "run_ended": ended})


def check_outputs(step: Step, outputs: Mapping[str, Any]) -> None:
    """Raise unless a step body returned exactly the outputs its step declares."""
    if set(outputs) != set(step.outputs):
        raise ValueError(f"step {step.name!r} returned {sorted(outputs)}, declared {sorted(step.outputs)}")


# -- the reference workflow: visual inspection ------------------------------------------------


class Classifier(Protocol):
    """The model the inspection pipeline runs: logits for a [N, 8, 8] float32 batch."""

    @property
    def identity(self) -> str: ...  # changes when the model serving changes (a morph swap)

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...

    def replica(self) -> Replica: ...  # a separate, warmed instance of the current model (costly to make)


@dataclass(frozen=True)
class Replica:
    """A model instance of its own (for re-inspection), and which model it is."""

    identity: str
    run: Callable[[np.ndarray], np.ndarray] = field(repr=False)


class ServedClassifier:
    """The current morph variant of an `morph.serving.InferenceServer`; replicas are new ONNX Runtime sessions.

    A replica is opened from the manifest's file of the variant serving now and
    warmed, which is the real cost of getting a second session ready (about
    1 ms for the cnn, 17 ms for the transformer on this machine).
    """

    def __init__(self, server, warmup_runs: int = 2):
        self.server, self.warmup_runs = server, warmup_runs

    @property
    def identity(self) -> str:
        current = self.server.current
        return f"{current.variant}/{current.precision}/{current.sha256[:16]}"

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.server.infer(batch).logits

    def replica(self) -> Replica:
        from morph.zoo import runtime

        current = self.server.current
        manifest = self.server.manifest
        blob = (manifest.root / manifest.entry(current.variant, current.precision).path).read_bytes()
        if hashlib.sha256(blob).hexdigest() != current.sha256:
            raise RuntimeError("the model file changed on disk since it was verified")
        session = runtime.open_session(blob, 1)
        for _ in range(self.warmup_runs):
            session.run(None, {runtime.INPUT: np.zeros((8, 8, 8), np.float32)})
        identity = f"{current.variant}/{current.precision}/{current.sha256[:16]}"
        return Replica(identity, lambda x: session.run(None, {runtime.INPUT: np.ascontiguousarray(x, np.float32)})[0])


class CentroidClassifier:
    """Nearest class mean on the digits train split: a real, tiny classifier for tests without the zoo.

    Logits are ``-||x - mean_c||² / temperature``; at the default 0.1 about one
    lot in six of `inspection_lots` needs re-inspection. A replica shares the
    means (cheap: nothing to load).
    """

    def __init__(self, temperature: float = 0.1):
        from morph.zoo.data import load_split

        train = load_split("train")
        x = train.x.reshape(len(train), -1).astype(np.float64)
        self.means = np.stack([x[train.y == c].mean(axis=0) for c in range(10)])
        self.temperature = temperature
        self._identity = "centroid/" + digest_of(freeze(self.means.astype(np.float32)))[:16] + f"/t{temperature}"

    @property
    def identity(self) -> str:
        return self._identity

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        x = np.asarray(batch, dtype=np.float64).reshape(len(batch), -1)
        d2 = ((x[:, None, :] - self.means[None]) ** 2).sum(axis=2)
        return (-d2 / self.temperature).astype(np.float32)

    def replica(self) -> Replica:
        return Replica(self.identity, self.__call__)


class ReplicaResource:
    """The re-inspection's own model instance: acquiring it opens and warms a replica of the current model."""

    name = "replica-session"

    def __init__(self, model: Classifier):
        self.model = model

    def acquire(self, ctx: StepContext) -> Replica:
        return self.model.replica()

    def release(self, handle: Replica) -> None:
        pass  # the session is freed with its last reference


@dataclass(frozen=True)
class InspectionCosts:
    """Sleep-based costs (ms) of the inspection pipeline, each standing for I/O; all other work is real.

    * ``camera_read_ms`` — ingest reads the lot's frames from the camera buffer;
    * ``calibration_fetch_ms`` — preprocess loads the camera's flat-field from the config service;
    * ``validation_ms`` — the quality gate's round trip to a remote validation service;
    * ``reference_fetch_ms`` — postprocess loads the lot's reference images from the product database;
    * ``render_ms`` — postprocess renders the annotated report images (the numpy part is real but < 1 ms);
    * ``sink_write_ms`` — output writes the report to the results store.

    Inference and re-inspection are real computation (ONNX Runtime or numpy),
    and so is opening the re-inspection's replica session.
    """

    camera_read_ms: float = 12.0
    calibration_fetch_ms: float = 12.0
    validation_ms: float = 40.0
    reference_fetch_ms: float = 20.0
    render_ms: float = 8.0
    sink_write_ms: float = 3.0

    def scaled(self, factor: float) -> InspectionCosts:
        return InspectionCosts(*(getattr(self, f) * factor for f in self.__dataclass_fields__))


#: The camera's vignetting: frames are darker towards the corners; the flat-field undoes it.
_VIGNETTE = (1.0 - 0.15 * np.hypot(*np.meshgrid(np.linspace(-1, 1, 8), np.linspace(-1, 1, 8))) / math.sqrt(2)
             ).astype(np.float32)


def inspection_lots(n: int, seed: int = 0, batch: int = 16, noisy_share: float = 0.25,
                    noise: tuple[float, float] = (0.25, 0.4)) -> list[dict[str, np.ndarray]]:
    """Inputs of ``n`` inspection runs: lots of ``batch`` digit images as the camera delivers them (uint8).

    Most lots are shot in good light (sensor noise σ 0.02); a ``noisy_share``
    of them in poor light (σ drawn from ``noise``), which lowers the model's
    confidence and so sends the run through re-inspection. Whether a given run
    does depends on its images, not on anything the run's prefix shows.
    """
    from morph.zoo.data import load_split

    test = load_split("test")
    rng = np.random.default_rng(seed)
    lots = []
    for _ in range(n):
        idx = rng.choice(len(test), size=batch, replace=False)
        sigma = rng.uniform(*noise) if rng.random() < noisy_share else 0.02
        frames = test.x[idx] * _VIGNETTE + rng.normal(0.0, sigma, size=(batch, 8, 8))
        lots.append({"lot": np.clip(np.round(frames * 255.0), 0, 255).astype(np.uint8)})
    return lots


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def inspection_workflow(model: Classifier, *, costs: InspectionCosts = InspectionCosts(),
                        confidence_floor: float = 0.8, max_low_share: float = 1 / 16,
                        workflow_id: str = "inspection") -> WorkflowSpec:
    """The seed's inspection pipeline, with a data-dependent branch.

    ``ingest → preprocess → inference → quality_gate → [reinspect →] postprocess → output``

    The gate sends a lot to re-inspection (test-time augmentation on a replica
    session) when more than ``max_low_share`` of its images have a confidence
    below ``confidence_floor`` (with the zoo's transformer, about a quarter of
    `inspection_lots`).
    ``quality_gate`` (an outside service) and ``output`` (writes to the results
    store) are critical. What speculation can use: postprocess needs only the
    scores, which exist before the slow gate finishes, and its reference
    images can be fetched early; preprocess's flat-field can be fetched while
    ingest reads the camera; the replica the re-inspection needs can be
    opened ahead. A swap of the model serving changes inference's and
    reinspect's environment, so a shadow computed on the old model never commits.
    """

    def ingest(ctx):
        ctx.sleep(costs.camera_read_ms)
        return {"frames": ctx.inputs["lot"].astype(np.float32) / 255.0}

    def fetch_flatfield(ctx):
        ctx.sleep(costs.calibration_fetch_ms)
        return _VIGNETTE

    def preprocess(ctx):
        frames, flat = ctx.inputs["frames"], ctx.data("flatfield")
        return {"tensor": np.clip(frames / flat, 0.0, 1.0).astype(np.float32)}

    def inference(ctx):
        return {"scores": _softmax(model(ctx.inputs["tensor"]))}

    def quality_gate(ctx):
        ctx.sleep(costs.validation_ms)
        low = ctx.inputs["scores"].max(axis=1) < confidence_floor
        return {"verdict": b"reinspect" if low.mean() > max_low_share else b"pass"}

    def reinspect(ctx):
        tensor, scores = ctx.inputs["tensor"], ctx.inputs["scores"]
        replica = ctx.resource()
        if replica.identity != model.identity:  # the node morphed since the replica was opened
            replica = model.replica()
        views = [tensor] + [np.roll(tensor, s, axis=a) for a in (1, 2) for s in (-1, 1)]
        tta = _softmax(replica.run(np.concatenate(views))).reshape(len(views), len(tensor), -1).mean(axis=0)
        low = scores.max(axis=1) < confidence_floor
        return {"scores": np.where(low[:, None], tta, scores).astype(np.float32)}

    def fetch_reference(ctx):
        from morph.zoo.data import load_split

        ctx.sleep(costs.reference_fetch_ms)
        train = load_split("train")
        return np.stack([train.x[train.y == c].mean(axis=0) for c in range(10)]).astype(np.float32)

    def postprocess(ctx):
        scores, tensor, reference = ctx.inputs["scores"], ctx.inputs["tensor"], ctx.data("reference")
        labels, conf = scores.argmax(axis=1), scores.max(axis=1)
        a = tensor.reshape(len(tensor), -1) - tensor.reshape(len(tensor), -1).mean(axis=1, keepdims=True)
        b = reference[labels].reshape(len(labels), -1)
        b = b - b.mean(axis=1, keepdims=True)
        match = (a * b).sum(axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-9)
        ctx.sleep(costs.render_ms)
        report = [{"i": i, "label": int(labels[i]), "confidence": round(float(conf[i]), 4),
                   "match": round(float(match[i]), 4),
                   "status": "ok" if conf[i] >= confidence_floor and match[i] >= 0.5 else "review"}
                  for i in range(len(labels))]
        return {"report": json.dumps(report, sort_keys=True, separators=(",", ":")).encode()}

    def output(ctx):
        ctx.sleep(costs.sink_write_ms)
        ctx.emit(ctx.inputs["report"])
        return {"receipt": hashlib.sha256(ctx.inputs["report"]).hexdigest().encode()}

    def needs_reinspection(artifacts):
        return artifacts["verdict"].value == b"reinspect"

    return WorkflowSpec(workflow_id, (
        Step("ingest", ingest, inputs=("lot",), outputs=("frames",), resources={"cpu": 0.1}),
        Step("preprocess", preprocess, inputs=("frames",), outputs=("tensor",), fetch={"flatfield": fetch_flatfield},
             resources={"cpu": 0.5}),
        Step("inference", inference, inputs=("tensor",), outputs=("scores",),
             environment=lambda: model.identity, resources={"cpu": 1.0}),
        Step("quality_gate", quality_gate, inputs=("scores",), outputs=("verdict",), critical=True,
             resources={"cpu": 0.1}),
        Step("reinspect", reinspect, inputs=("tensor", "scores"), outputs=("scores",), after=("quality_gate",),
             when=needs_reinspection, resource=ReplicaResource(model), environment=lambda: model.identity,
             resources={"cpu": 1.0}),
        Step("postprocess", postprocess, inputs=("scores", "tensor"), outputs=("report",),
             after=("quality_gate", "reinspect"), fetch={"reference": fetch_reference}, resources={"cpu": 0.5}),
        Step("output", output, inputs=("report",), outputs=("receipt",), critical=True, resources={"cpu": 0.1}),
    ))


# -- replaying WfCommons instances as runs ----------------------------------------------------


@dataclass(frozen=True)
class WfTask:
    """A WfCommons task as the runner needs it: files by name with sizes in bytes."""

    name: str
    parents: tuple[str, ...]
    runtime_s: float
    inputs: tuple[tuple[str, int], ...]
    outputs: tuple[tuple[str, int], ...]
    cores: float | None = None


def wfcommons_tasks(instance: dict) -> list[WfTask]:
    """Tasks of a WfCommons instance in topological order (schema 1.4+, or 1.0-1.3 ``tasks``/``jobs``)."""
    wf = instance.get("workflow")
    if not isinstance(wf, dict):
        raise ValueError("not a WfCommons instance: no 'workflow' object")
    tasks: list[WfTask] = []
    if "specification" in wf:
        spec = wf["specification"]
        sizes = {f["id"]: int(f.get("sizeInBytes", 0)) for f in spec.get("files", [])}
        executed = {t["id"]: t for t in wf.get("execution", {}).get("tasks", [])}
        for t in spec.get("tasks", []):
            ex = executed.get(t["id"], {})
            tasks.append(WfTask(t["id"], tuple(t.get("parents", [])), float(ex.get("runtimeInSeconds", 0.0)),
                                tuple((f, sizes.get(f, 0)) for f in t.get("inputFiles", [])),
                                tuple((f, sizes.get(f, 0)) for f in t.get("outputFiles", [])),
                                ex.get("coreCount")))
    else:
        items = wf.get("tasks", wf.get("jobs"))
        if not isinstance(items, list):
            raise ValueError("not a WfCommons instance: neither workflow.specification nor workflow.tasks")
        for t in items:
            def size(f):  # 1.3 has sizeInBytes; older WorkflowHub files give size in KB
                return int(f["sizeInBytes"] if "sizeInBytes" in f else f.get("size", 0) * 1024)
            files = t.get("files", [])
            tasks.append(WfTask(t.get("id") or t["name"], tuple(t.get("parents", [])),
                                float(t.get("runtimeInSeconds", t.get("runtime", 0.0))),
                                tuple((f["name"], size(f)) for f in files if f.get("link") == "input"),
                                tuple((f["name"], size(f)) for f in files if f.get("link") == "output"),
                                t.get("cores")))
        ids = {t.get("name"): (t.get("id") or t["name"]) for t in items}
        tasks = [replace(t, parents=tuple(ids.get(p, p) for p in t.parents)) for t in tasks]
    return _topological(tasks)


def _topological(tasks: list[WfTask]) -> list[WfTask]:
    by_name = {t.name: t for t in tasks}
    for t in tasks:
        unknown = [p for p in t.parents if p not in by_name]
        if unknown:
            raise ValueError(f"task {t.name!r} has unknown parents {unknown}")
    placed: set[str] = set()
    order: list[WfTask] = []
    pending = list(tasks)
    while pending:
        rest = [t for t in pending if not all(p in placed for p in t.parents)]
        if len(rest) == len(pending):
            raise ValueError("the instance's task graph has a cycle")
        for t in pending:
            if t not in rest:
                order.append(t)
        placed.update(t.name for t in order)
        pending = rest
    return order


class Container:
    """A task's execution environment: acquiring it is a sleep standing for a container start."""

    name = "container"

    def __init__(self, startup_ms: float):
        self.startup_ms = startup_ms

    def acquire(self, ctx: StepContext) -> str:
        ctx.sleep(self.startup_ms)
        return f"container:{ctx.step.name}"

    def release(self, handle) -> None:
        pass


def wfcommons_workflow(instance: dict, *, workflow_id: str | None = None, speed: float = 1000.0,
                       stage_in_mb_s: float = 500.0, startup_ms: float = 5.0, jitter: float = 0.1) -> WorkflowSpec:
    """A WfCommons instance as a workflow: one step per task, files as artifacts, recorded runtimes as sleeps.

    Every cost here is a sleep (we have the traces, not the programs): a task
    stages in the files no task of the workflow produces (``size / stage_in_mb_s``;
    pre-fetchable), starts its container (``startup_ms``; pre-allocatable), and
    then "computes" for its recorded runtime divided by ``speed``, times a
    lognormal factor of sigma ``jitter`` drawn per (run, task), so runs vary like
    real ones. Its outputs are digests of its inputs (deterministic, so shadow and
    live results agree byte for byte). Parents become ``after`` dependencies.
    Tasks writing a file no other task reads (the workflow's final products) write
    it outside the run and are critical.
    """
    tasks = wfcommons_tasks(instance)
    produced = {f for t in tasks for f, _ in t.outputs}
    consumed = {f for t in tasks for f, _ in t.inputs}
    container = Container(startup_ms)
    steps = []
    for t in tasks:
        internal = tuple(dict.fromkeys(f for f, _ in t.inputs if f in produced))
        external = {f: size for f, size in t.inputs if f not in produced}
        finals = [f for f, _ in t.outputs if f not in consumed]

        def stage_in(ctx, _size=0, _name=""):
            ctx.sleep(_size / (stage_in_mb_s * 1e3))  # bytes / (MB/s) -> ms
            return hashlib.sha256(f"file:{_name}".encode()).digest()

        fetch = {f: (lambda ctx, s=size, n=f: stage_in(ctx, s, n)) for f, size in external.items()}
        steps.append(Step(
            t.name, _wf_body(t, tuple(external), tuple(finals), speed, jitter),
            inputs=internal, outputs=tuple(dict.fromkeys(f for f, _ in t.outputs)),
            critical=bool(finals), fetch=fetch, resource=container, after=t.parents,
            resources={"cores": float(t.cores)} if t.cores else None))
    return WorkflowSpec(workflow_id or instance.get("name", "wfcommons"), tuple(steps))


def _wf_body(task: WfTask, external: tuple[str, ...], finals: tuple[str, ...], speed: float, jitter: float):
    def body(ctx: StepContext):
        h = hashlib.sha256(f"task:{task.name}\n".encode())
        for name in sorted(ctx.inputs):
            h.update(name.encode() + b"=" + ctx.inputs[name])
        for name in external:
            h.update(name.encode() + b"=" + ctx.data(name))
        ctx.resource()
        factor = 1.0
        if jitter > 0:  # deterministic per (run, task): a shadow and the live step cost the same
            seed = int.from_bytes(hashlib.sha256(f"{ctx.run_id}/{task.name}".encode()).digest()[:8], "little")
            factor = math.exp(np.random.default_rng(seed).normal(0.0, jitter))
        ctx.sleep(task.runtime_s * 1e3 / speed * factor)
        base = h.digest()
        outputs = {f: hashlib.sha256(base + f.encode()).digest() for f, _ in task.outputs}
        if finals:
            ctx.emit({f: outputs[f] for f in finals})
        return outputs
    return body
