"""Replaying WfCommons instances as workflow runs on the edge runtime.

The tasks come from `fingerprint.traces.wfcommons_tasks` (the one WfCommons
reader); here each becomes a `Step`: files are artifacts, recorded runtimes are
sleeps, parents are ``after`` dependencies.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

from edge.runtime import Alternative, Step, StepContext, WorkflowSpec
from fingerprint.traces import WfTask, wfcommons_tasks


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
    it outside the run and are critical (idempotent: a product is a file written
    whole under its name).

    For recovery, every task ``uses`` the node's accelerator, and the shared
    storage service (``dep:storage``) and the network when it stages files in
    or writes products; a task that stages in has an alternative: the same
    files from a backup replica (``dep:storage-backup``, half the bandwidth).
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
        body = _wf_body(t, tuple(external), tuple(finals), speed, jitter)
        remote = ("dep:storage", "network") if external or finals else ()
        backup = ()
        if external:
            extra_ms = sum(external.values()) / (stage_in_mb_s * 1e3)  # the replica's half bandwidth

            def from_backup(ctx, _body=body, _ms=extra_ms):
                ctx.sleep(_ms)
                return _body(ctx)
            backup = (Alternative("backup-replica", from_backup,
                                  ("accelerator", "dep:storage-backup", "network") + (("dep:storage",) if finals else ())),)
        steps.append(Step(
            t.name, body,
            inputs=internal, outputs=tuple(dict.fromkeys(f for f, _ in t.outputs)),
            critical=bool(finals), fetch=fetch, resource=container, after=t.parents,
            resources={"cores": float(t.cores)} if t.cores else None,
            uses=("accelerator",) + remote, alternatives=backup))
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
