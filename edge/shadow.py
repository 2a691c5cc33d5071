"""Shadow pre-execution on an edge node: prepare, pre-execute in isolation, commit or roll back.

`ShadowExecutor` is the worker side of ``schemas/shadow_command.avsc``. One per
node; ``handle(command) -> ack`` answers every ShadowCommand with a CommandAck
(``kind`` SHADOW). A shadow is keyed by (run, step) and can hold:

* an **allocation** (ALLOCATE): the step's `edge.runtime.Resource` acquired
  ahead, e.g. a warmed replica session;
* **pre-fetched data** (PREFETCH): the step's read-only outside data, loaded into
  the shadow's own cache;
* a **pre-computed result** (PRE_EXECUTE, which implies the other two): the step
  run in a background thread as soon as its inputs exist and no live step is
  rewriting them. It reads immutable artifact versions, writes only to the
  shadow's own outputs, and has no way to write outside the run
  (`edge.runtime.IsolationError`). Critical steps are refused (REJECTED).

The live run consults the executor before each step (``take``); that is the
real trigger. If the shadow computed the step from the same input digest, its
result is committed to the run and the step's body does not run at all; if
the digest differs, the shadow is rolled back ("input digest mismatch") and the
step runs live. A prepared-only shadow hands its data and allocation to the
live step. A live step that starts also invalidates the results of shadows that
read what it is about to write: they keep their data and allocation, and
recompute once the new version exists (their discarded work counts as wasted).

COMMIT from the flow (the predicted step started) holds the shadow for the live
step: its timeout is extended. The digest check happens in ``take`` because
only the worker sees the live inputs; a COMMIT that carries ``input_digest``
is checked at once if the result is ready. ROLLBACK cancels the shadow's work
(cooperatively: sleeps wake at once, bodies see `edge.runtime.Cancelled` at
their next check), discards its outputs and releases its allocation and data.
A shadow unclaimed past its deadline (``max(now, expected start) + ttl``) is
rolled back with reason "timeout", as is one the live step waited ``ttl`` for.

Each shadow ends exactly once, COMMITTED or ROLLED_BACK, with one ack carrying
the reason and details (run, step, saved ms, wasted ms, ...). If a command ended
it, that ack is ``handle``'s answer; otherwise (live trigger, timeout, failure,
run end) it goes to ``on_ack``. Other commands get APPLIED or REJECTED (with a
machine-readable ``details["code"]``). At most ``max_in_flight`` shadows are
open per node; `ShadowStats` keeps exact counts (every allocation released,
every datum dropped) for tests and telemetry.

>>> from edge.runtime import Step, WorkflowSpec, WorkflowRun
>>> calls = []
>>> def slow_double(ctx):
...     calls.append("b"); ctx.sleep(20); return {"y": ctx.inputs["x"] * 2}
>>> spec = WorkflowSpec("demo", (Step("a", lambda ctx: {"x": np.arange(3)}, outputs=("x",)),
...                              Step("b", slow_double, inputs=("x",), outputs=("y",))))
>>> executor = ShadowExecutor("n1")
>>> def on_signal(s):  # the flow's side, in-process: pre-execute b as soon as a starts
...     if s["task"] == "a" and s["state"] == 1:
...         cmd = {"command_id": "c1", "node_id": "n1", "workflow_id": "demo", "run_id": "r1", "step": "b",
...                "action": "PRE_EXECUTE", "confidence": 0.9, "expected_start_ts_ms": s["ts_ms"],
...                "issued_ts_ms": s["ts_ms"], "input_digest": None, "reason": "demo"}
...         print(executor.handle(cmd)["status"])
>>> run = WorkflowRun(spec, "r1", "n1", executor=executor, on_signal=on_signal)
>>> run.execute({}).outputs["y"].value.tolist()
APPLIED
[0, 2, 4]
>>> calls, run.executions["b"], run.committed["b"], executor.stats.committed
(['b'], 0, 1, 1)
>>> executor.close()
"""

from __future__ import annotations

import enum
import threading
import time
from collections import Counter, OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np  # noqa: F401  (the module docstring's example uses it)

from edge.artifacts import freeze, input_digest

from edge.runtime import Cancelled, Handover, Step, StepContext, WorkflowRun, check_outputs

ALLOCATE, PREFETCH, PRE_EXECUTE, COMMIT, ROLLBACK = "ALLOCATE", "PREFETCH", "PRE_EXECUTE", "COMMIT", "ROLLBACK"
ACTIONS = (ALLOCATE, PREFETCH, PRE_EXECUTE, COMMIT, ROLLBACK)
APPLIED, REJECTED, FAILED, COMMITTED, ROLLED_BACK = "APPLIED", "REJECTED", "FAILED", "COMMITTED", "ROLLED_BACK"
_EXECUTE = "EXECUTE"  # the shadow's own task name for running the body (PRE_EXECUTE also allocates and fetches)
_REQUIRED = ("command_id", "node_id", "workflow_id", "run_id", "step", "action")


def reason_key(reason: str) -> str:
    """The kind of a rollback reason: its words before any colon ("shadow failed: ValueError" -> "shadow failed")."""
    return reason.split(":", 1)[0]


@dataclass
class ShadowStats:
    """Exact counts of what the node's shadows did (balanced once every run is closed and the executor idle)."""

    accepted: Counter = field(default_factory=Counter)      # commands accepted, by action
    rejected: Counter = field(default_factory=Counter)      # commands rejected, by code
    executions: Counter = field(default_factory=Counter)    # shadow runs of each step's body
    committed: int = 0
    rolled_back: Counter = field(default_factory=Counter)   # by reason kind (see `reason_key`)
    allocated: int = 0
    released: int = 0
    adopted: int = 0          # allocations handed to a live step (it releases them; counted in ``released``)
    data_loaded: int = 0
    data_released: int = 0
    invalidated: int = 0      # results discarded because a live step rewrote their inputs
    busy_ms: float = 0.0      # time shadows spent allocating, fetching and executing (not waiting for inputs)
    wasted_ms: float = 0.0    # of which rolled back or discarded
    saved_ms: float = 0.0     # estimated live time saved by commits
    peak_open: int = 0

    @property
    def balanced(self) -> bool:
        return self.allocated == self.released and self.data_loaded == self.data_released


class Phase(enum.Enum):
    """Where a shadow is in its life; independent of whether a pool thread is working on it (``busy``)."""

    OPEN = "open"          # being prepared; the reaper expires it at its deadline
    CLAIMED = "claimed"    # the live step waits to take it over and bounds that wait itself
    ENDED = "ended"        # committed or rolled back; its work is cancelled, its ack sent


@dataclass(eq=False)
class _Shadow:
    run: WorkflowRun
    step: Step
    command_id: str
    decided_on: int | None
    deadline: float                   # time.monotonic()
    wants: set = field(default_factory=set)
    actions: set = field(default_factory=set)
    data: dict = field(default_factory=dict)
    handle: Any = None
    has_handle: bool = False
    allocated: bool = False
    outputs: dict | None = None
    digest: str | None = None
    exec_gen: int = 0
    exec_started: bool = False        # the body of the current generation has begun
    phase: Phase = Phase.OPEN
    busy: bool = False                # a pool thread is running one of its tasks
    task: str | None = None
    task_wake: threading.Event | None = None
    task_t0: float = 0.0
    alloc_ms: float = 0.0
    fetch_ms: float = 0.0
    exec_ms: float = 0.0
    busy_ms: float = 0.0
    discarded_ms: float = 0.0

    @property
    def ended(self) -> bool:
        return self.phase is Phase.ENDED

    @property
    def key(self) -> tuple[str, str]:
        return self.run.run_id, self.step.name

    def next_task(self) -> str | None:
        if ALLOCATE in self.wants and not self.allocated:
            return ALLOCATE
        if PREFETCH in self.wants and any(k not in self.data for k in self.step.fetch):
            return PREFETCH
        if _EXECUTE in self.wants and self.outputs is None:
            return _EXECUTE
        return None


class ShadowExecutor:
    """The node's shadows: ``handle`` ShadowCommands, ``take`` for live steps, exact resource accounting."""

    def __init__(self, node_id: str, *, max_in_flight: int = 4, ttl_ms: float = 2000.0,
                 on_ack: Callable[[dict], None] | None = None, clock: Callable[[], float] = time.time):
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.node_id, self.max_in_flight, self.ttl_s = node_id, max_in_flight, ttl_ms / 1e3
        self.on_ack, self.clock = on_ack, clock
        self.stats = ShadowStats()
        self._cond = threading.Condition()
        self._pool = ThreadPoolExecutor(max_in_flight, thread_name_prefix=f"shadow-{node_id}")
        self._runs: dict[str, WorkflowRun] = {}
        self._shadows: dict[tuple[str, str], _Shadow] = {}
        self._ended: OrderedDict[tuple[str, str], tuple[str, str]] = OrderedDict()  # recent ends, for late commands
        self._closed = False
        self._busy_ended = 0  # ended shadows whose worker has not stopped yet (it releases their resources)
        self._reaper = threading.Thread(target=self._reap, name=f"shadow-reaper-{node_id}", daemon=True)
        self._reaper.start()

    # -- commands -----------------------------------------------------------------------------

    def handle(self, command: dict) -> dict:
        """Apply one ShadowCommand; returns its CommandAck."""
        if not isinstance(command, dict):
            return self._reject({}, "malformed command: not a record", "malformed")
        missing = [k for k in _REQUIRED if not isinstance(command.get(k), str)]
        if missing:
            return self._reject(command, f"malformed command: missing {', '.join(missing)}", "malformed")
        if command["node_id"] != self.node_id:
            return self._reject(command, f"command for node {command['node_id']!r}", "wrong_node")
        action = command["action"]
        if action in (ALLOCATE, PREFETCH, PRE_EXECUTE):
            return self._prepare(command)
        if action in (COMMIT, ROLLBACK):
            return self._conclude(command)
        return self._reject(command, f"unknown action {action!r}", "malformed")

    def _prepare(self, command: dict) -> dict:
        action, run_id, name = command["action"], command["run_id"], command["step"]
        with self._cond:
            if self._closed:
                return self._reject(command, "executor closed", "closed")
            run = self._runs.get(run_id)
            if run is None:
                return self._reject(command, f"unknown run {run_id!r} on this node", "unknown_run")
            if name not in run.spec:
                return self._reject(command, f"no step {name!r} in {run.workflow_id!r}", "unknown_step")
            step = run.spec.step(name)
            if action == PRE_EXECUTE and step.critical:
                return self._reject(command, "critical step: never pre-executed", "critical")
            if action == PREFETCH and not step.fetch:
                return self._reject(command, "the step reads no outside data", "nothing_to_prefetch")
            if action == ALLOCATE and step.resource is None:
                return self._reject(command, "the step holds no resource", "nothing_to_allocate")
            if run.has_started(name):
                return self._reject(command, "the step already started live", "started")
            sh = self._shadows.get((run_id, name))
            if sh is None:
                if len(self._shadows) >= self.max_in_flight:
                    return self._reject(command, f"shadow capacity full ({self.max_in_flight} open)", "capacity")
                sh = self._shadows[(run_id, name)] = _Shadow(run, step, command["command_id"],
                                                             command.get("issued_ts_ms"), 0.0)
                self.stats.peak_open = max(self.stats.peak_open, len(self._shadows))
            sh.actions.add(action)
            if action == PRE_EXECUTE:
                sh.wants |= {_EXECUTE, *([ALLOCATE] if step.resource else []), *([PREFETCH] if step.fetch else [])}
            else:
                sh.wants.add(action)
            sh.deadline = max(sh.deadline, self._deadline(command.get("expected_start_ts_ms")))
            self._kick(sh)
            self.stats.accepted[action] += 1
            return self._ack(command["command_id"], APPLIED, "accepted", command.get("issued_ts_ms"),
                             self._details(sh, action=action, code="accepted"))

    def _conclude(self, command: dict) -> dict:
        action, key = command["action"], (command["run_id"], command["step"])
        with self._cond:
            sh = self._shadows.get(key)
            if sh is None:
                prior = self._ended.get(key)
                if prior is None:
                    return self._reject(command, "no shadow for this run and step", "unknown_shadow")
                status, reason = prior
                return self._ack(command["command_id"], APPLIED, f"already {status.lower()}: {reason}",
                                 command.get("issued_ts_ms"),
                                 {**self._ids(command), "action": action, "code": "already_ended"})
            self.stats.accepted[action] += 1
            if action == ROLLBACK:
                return self._end(sh, ROLLED_BACK, command.get("reason") or "rolled back by command", "command",
                                 command_id=command["command_id"])
            digest = command.get("input_digest")
            if digest and sh.outputs is not None and digest != sh.digest:
                return self._end(sh, ROLLED_BACK, "input digest mismatch", "command", command_id=command["command_id"])
            sh.deadline = max(sh.deadline, time.monotonic() + self.ttl_s)  # hold it for the live step
            return self._ack(command["command_id"], APPLIED, "held for the live step", command.get("issued_ts_ms"),
                             self._details(sh, action=action, code="held"))

    # -- the live run's side ------------------------------------------------------------------

    def open_run(self, run: WorkflowRun) -> None:
        """Make a run known to the node's shadows (before its first signal)."""
        with self._cond:
            self._runs[run.run_id] = run

    def take(self, run_id: str, step: str, input_digest: str) -> Handover:
        """The live trigger of ``step``: commit its shadow if the digests match, hand over what was prepared."""
        acks: list[dict] = []
        handover = Handover()
        with self._cond:
            if self._closed:
                return handover
            run = self._runs.get(run_id)
            if run is not None:
                self._invalidate_readers(run, step)
            sh = self._shadows.get((run_id, step))
            if sh is None:
                return handover
            sh.phase = Phase.CLAIMED
            t0 = time.monotonic()
            limit = t0 + self.ttl_s
            while not sh.ended and (sh.busy or sh.next_task() is not None) and time.monotonic() < limit:
                self._cond.wait(limit - time.monotonic())
            wait_ms = (time.monotonic() - t0) * 1e3
            if sh.ended:
                return handover  # rolled back while we waited; its ack went out then
            if sh.busy or sh.next_task() is not None:
                acks.append(self._end(sh, ROLLED_BACK, "timeout", "trigger", wait_ms=wait_ms))
            elif _EXECUTE in sh.wants:
                if sh.digest != input_digest:
                    acks.append(self._end(sh, ROLLED_BACK, "input digest mismatch", "trigger", wait_ms=wait_ms))
                else:
                    handover = Handover(outputs=sh.outputs)
                    saved = max(sh.busy_ms - sh.discarded_ms - wait_ms, 0.0)
                    acks.append(self._end(sh, COMMITTED, "ok", "trigger", saved_ms=saved, wait_ms=wait_ms))
            else:
                resource = sh.step.resource
                handover = Handover(data=dict(sh.data), resource=sh.handle, has_resource=sh.has_handle,
                                    give_back=lambda h: self._give_back(resource, h))
                if sh.has_handle:
                    self.stats.adopted += 1
                    sh.has_handle, sh.handle = False, None  # the live step releases it now
                saved = max(sh.alloc_ms + sh.fetch_ms - wait_ms, 0.0)
                acks.append(self._end(sh, COMMITTED, "ok", "trigger", saved_ms=saved, wait_ms=wait_ms))
        self._send(acks)
        return handover

    def close_run(self, run_id: str) -> None:
        """The run ended: roll back whatever shadows it still has ("run ended") and forget it."""
        with self._cond:
            self._runs.pop(run_id, None)
            acks = [self._end(sh, ROLLED_BACK, "run ended", "run_end")
                    for key, sh in list(self._shadows.items()) if key[0] == run_id]
        self._send(acks)

    # -- introspection and shutdown -----------------------------------------------------------

    @property
    def open_shadows(self) -> int:
        with self._cond:
            return len(self._shadows)

    def wait_idle(self, timeout_s: float = 5.0) -> bool:
        """Wait until no shadow work is running (cancelled work included); True if it got there."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while any(sh.busy for sh in self._shadows.values()) or self._busy_ended:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self) -> None:
        """Roll back every shadow, wait for their work to stop, stop the threads."""
        with self._cond:
            self._closed = True
            acks = [self._end(sh, ROLLED_BACK, "executor closed", "close") for sh in list(self._shadows.values())]
            self._cond.notify_all()
        self._send(acks)
        self._pool.shutdown(wait=True)
        self._reaper.join(timeout=1.0)

    # -- internals: the shadow's work -----------------------------------------------------------

    def _kick(self, sh: _Shadow) -> None:
        if not sh.busy and sh.next_task() is not None:
            sh.busy = True
            self._pool.submit(self._work, sh)

    def _work(self, sh: _Shadow) -> None:
        while True:
            with self._cond:
                task = None if sh.ended else sh.next_task()
                if task is None:
                    sh.busy = False
                    if sh.ended:
                        self._busy_ended -= 1
                        self._release(sh)
                    self._cond.notify_all()
                    return
                gen, wake = sh.exec_gen, threading.Event()
                sh.task, sh.task_wake, sh.task_t0 = task, wake, time.perf_counter()
            acks: list[dict] = []
            try:
                if task == ALLOCATE:
                    self._allocate(sh, wake)
                elif task == PREFETCH:
                    self._prefetch(sh, wake)
                else:
                    acks += self._execute(sh, gen, wake)
            except Cancelled:
                pass
            except Exception as err:  # a crashing shadow is rolled back; the live step will compute
                with self._cond:
                    if not sh.ended:
                        acks.append(self._end(sh, ROLLED_BACK, f"shadow failed: {type(err).__name__}: {err}"[:300],
                                              "failure"))
            self._send(acks)

    def _shadow_context(self, sh: _Shadow, wake: threading.Event, inputs=None, gen: int | None = None) -> StepContext:
        def cancelled():
            return sh.ended or (gen is not None and sh.exec_gen != gen)
        return StepContext(sh.step, sh.run.run_id, inputs or {}, shadow=True, data=dict(sh.data),
                           resource=sh.handle, has_resource=sh.has_handle, cancelled=cancelled, wake=wake)

    def _allocate(self, sh: _Shadow, wake: threading.Event) -> None:
        t0 = time.perf_counter()
        try:
            handle = sh.step.resource.acquire(self._shadow_context(sh, wake))
        finally:
            self._account(sh, (time.perf_counter() - t0) * 1e3, "alloc")
        with self._cond:
            self.stats.allocated += 1
            sh.allocated = True
            if sh.ended:
                sh.step.resource.release(handle)
                self.stats.released += 1
            else:
                sh.handle, sh.has_handle = handle, True

    def _prefetch(self, sh: _Shadow, wake: threading.Event) -> None:
        ctx = self._shadow_context(sh, wake)
        for key in sh.step.fetch:
            if key in sh.data:
                continue
            t0 = time.perf_counter()
            try:
                value = freeze(sh.step.fetch[key](ctx))
            finally:
                self._account(sh, (time.perf_counter() - t0) * 1e3, "fetch")
            with self._cond:
                self.stats.data_loaded += 1
                if sh.ended:
                    self.stats.data_released += 1
                    return
                sh.data[key] = value

    def _execute(self, sh: _Shadow, gen: int, wake: threading.Event) -> list[dict]:
        # Deadlines are the reaper's (or the waiting live step's) to enforce, and a COMMIT may extend
        # them while we wait; the bound here is only a safety net.
        artifacts = sh.run.store.wait_ready(sh.step.inputs, lambda: sh.ended or sh.exec_gen != gen, 10 * self.ttl_s)
        if artifacts is None:
            with self._cond:
                if sh.ended or sh.exec_gen != gen:
                    return []
                return [self._end(sh, ROLLED_BACK, "timeout", "timeout")]
        environment = sh.step.environment_id()
        digest = input_digest(sh.step.name, artifacts, environment)
        ctx = self._shadow_context(sh, wake, artifacts, gen)
        with self._cond:
            if sh.ended or sh.exec_gen != gen:
                return []
            self.stats.executions[sh.step.name] += 1
            sh.exec_started = True
            sh.task_t0 = time.perf_counter()  # busy time starts now, not while waiting for inputs
        t0 = sh.task_t0
        try:
            outputs = sh.step.fn(ctx)
            check_outputs(sh.step, outputs)
            frozen = {k: freeze(v) for k, v in outputs.items()}
        finally:
            ctx.release_acquired()  # only if the body acquired a resource ALLOCATE did not provide
            ms = (time.perf_counter() - t0) * 1e3
            self._account(sh, ms, "exec", gen)
        with self._cond:
            if sh.ended or sh.exec_gen != gen:
                return []
            if sh.step.environment_id() != environment:  # e.g. the node morphed while the shadow ran
                return [self._end(sh, ROLLED_BACK, "environment changed", "failure")]
            sh.outputs, sh.digest, sh.exec_ms = frozen, digest, ms
            self._cond.notify_all()
        return []

    def _account(self, sh: _Shadow, ms: float, part: str, gen: int | None = None) -> None:
        """Book ``ms`` of shadow work; work of an ended or invalidated shadow is wasted."""
        with self._cond:
            self.stats.busy_ms += ms
            if sh.ended:  # its rollback ack counted what was done before; this is the tail
                self.stats.wasted_ms += ms
                return
            sh.busy_ms += ms
            if part == "alloc":
                sh.alloc_ms += ms
            elif part == "fetch":
                sh.fetch_ms += ms
            elif gen is not None and gen != sh.exec_gen:
                sh.discarded_ms += ms
                self.stats.wasted_ms += ms

    def _invalidate_readers(self, run: WorkflowRun, step_name: str) -> None:
        """A live step is starting: shadow results computed from what it will rewrite are stale."""
        writes = set(run.spec.step(step_name).outputs)
        for (rid, name), sh in self._shadows.items():
            if rid != run.run_id or name == step_name or _EXECUTE not in sh.wants or not writes & set(sh.step.inputs):
                continue
            executing = sh.busy and sh.task == _EXECUTE
            if sh.outputs is None and not executing:
                continue
            if sh.outputs is not None or sh.exec_started:  # work is thrown away, not just a wait restarted
                self.stats.invalidated += 1
            sh.exec_gen += 1
            sh.exec_started = False
            if sh.outputs is not None:
                sh.discarded_ms += sh.exec_ms
                self.stats.wasted_ms += sh.exec_ms
                sh.outputs = sh.digest = None
            if executing and sh.task_wake is not None:
                sh.task_wake.set()
            self._kick(sh)
        run.store.poke()

    # -- internals: ending, releasing, acknowledging ---------------------------------------------

    def _end(self, sh: _Shadow, status: str, reason: str, ended_by: str, *, command_id: str | None = None,
             saved_ms: float = 0.0, wait_ms: float = 0.0) -> dict:
        """End ``sh`` (lock held): cancel its work, release what it holds, count, and return its ack."""
        sh.phase = Phase.ENDED
        if sh.task_wake is not None:
            sh.task_wake.set()
        self._shadows.pop(sh.key, None)
        self._ended[sh.key] = (status, reason)
        while len(self._ended) > 4096:
            self._ended.popitem(last=False)
        in_progress = (time.perf_counter() - sh.task_t0) * 1e3 if sh.busy else 0.0
        if status == COMMITTED:
            wasted = sh.discarded_ms
            self.stats.committed += 1
            self.stats.saved_ms += saved_ms
        else:
            wasted = sh.busy_ms + in_progress
            self.stats.wasted_ms += sh.busy_ms - sh.discarded_ms  # discarded work was counted when discarded
            self.stats.rolled_back[reason_key(reason)] += 1
        if sh.busy:
            self._busy_ended += 1  # the worker releases when it stops
        else:
            self._release(sh)
        sh.run.store.poke()
        self._cond.notify_all()
        details = self._details(sh, code=_code(status, reason), ended_by=ended_by,
                                saved_ms=f"{saved_ms:.3f}", wasted_ms=f"{wasted:.3f}", busy_ms=f"{sh.busy_ms:.3f}",
                                alloc_ms=f"{sh.alloc_ms:.3f}", fetch_ms=f"{sh.fetch_ms:.3f}",
                                exec_ms=f"{sh.exec_ms:.3f}", wait_ms=f"{wait_ms:.3f}",
                                executed=str(status == COMMITTED and _EXECUTE in sh.wants).lower())
        return self._ack(command_id or sh.command_id, status, reason, sh.decided_on, details)

    def _release(self, sh: _Shadow) -> None:
        if sh.has_handle:
            sh.has_handle = False
            try:
                sh.step.resource.release(sh.handle)
            finally:
                self.stats.released += 1
                sh.handle = None
        self.stats.data_released += len(sh.data)
        sh.data = {}
        sh.outputs = None

    def _give_back(self, resource, handle) -> None:
        try:
            resource.release(handle)
        finally:
            with self._cond:
                self.stats.released += 1

    def _reap(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
                now = time.monotonic()
                expired = [sh for sh in self._shadows.values() if sh.phase is Phase.OPEN and sh.deadline <= now]
                acks = [self._end(sh, ROLLED_BACK, "timeout", "timeout") for sh in expired]
                if not acks:
                    upcoming = [sh.deadline for sh in self._shadows.values() if sh.phase is Phase.OPEN]
                    self._cond.wait(min(max(min(upcoming, default=now + 0.25) - now, 0.001), 0.25))
            self._send(acks)

    def _deadline(self, expected_start_ts_ms) -> float:
        now = time.monotonic()
        ahead = 0.0
        if isinstance(expected_start_ts_ms, int):
            ahead = max(expected_start_ts_ms / 1e3 - self.clock(), 0.0)
        return now + ahead + self.ttl_s

    def _send(self, acks: list[dict]) -> None:
        if self.on_ack is not None:
            for ack in acks:
                self.on_ack(ack)

    def _details(self, sh: _Shadow, **extra) -> dict[str, str]:
        return {"workflow_id": sh.run.workflow_id, "run_id": sh.run.run_id, "step": sh.step.name,
                "actions": ",".join(a for a in (ALLOCATE, PREFETCH, PRE_EXECUTE) if a in sh.actions),
                **{k: str(v) for k, v in extra.items()}}

    @staticmethod
    def _ids(command: dict) -> dict[str, str]:
        return {k: str(command.get(k, "")) for k in ("workflow_id", "run_id", "step")}

    def _reject(self, command: dict, reason: str, code: str) -> dict:
        with self._cond:
            self.stats.rejected[code] += 1
        return self._ack(str(command.get("command_id", "")), REJECTED, reason, command.get("issued_ts_ms"),
                         {**self._ids(command), "action": str(command.get("action", "")), "code": code})

    def _ack(self, command_id: str, status: str, reason: str, decided_on, details: dict[str, str]) -> dict:
        return {"command_id": command_id, "node_id": self.node_id, "kind": "SHADOW", "status": status,
                "reason": reason, "ts_ms": int(self.clock() * 1000), "from_variant": None, "to_variant": None,
                "from_precision": None, "to_precision": None, "swap_ms": None,
                "decided_on_ts_ms": decided_on if isinstance(decided_on, int) else None, "details": details,
                "origin": None, "record_id": None}


def _code(status: str, reason: str) -> str:
    if status == COMMITTED:
        return "committed"
    return {"input digest mismatch": "digest_mismatch", "timeout": "timeout", "run ended": "run_ended",
            "environment changed": "environment_changed", "shadow failed": "failed",
            "executor closed": "closed"}.get(reason_key(reason), "rolled_back")
