"""Node loss and moves: runs' committed steps go to the broker, and a healthy node resumes the runs of a node that
went silent, or that its node released.

A node publishes a `RunCheckpoint` record (``schemas/run_checkpoint.avsc``,
topic ``workflow.checkpoints``, keyed by run id) when a run starts (with its
inputs), each time a step commits (with the artifact versions it wrote) and
when the run ends. In order, the records of one run rebuild its
`edge.runtime.RunCheckpoint`; a step counts as committed once its record is in
the broker, so a node that dies loses at most the steps after its last
delivered record, which run again elsewhere (non-critical steps are
deterministic functions of their inputs; a critical step in that gap may run
twice, which is why `edge.faults.shield` keeps once-only steps from being
retried, and the results store keys its receipts by content).

`Takeover` (plain logic) keeps each run's records and every node's last sign
of life (its telemetry, or any checkpoint it published). A run that has not
ended and whose node has been silent for ``detect_s`` is orphaned; among the
nodes alive, the one the run id hashes to adopts it, so that every watcher,
fed the same records, picks the same node and no run is resumed twice. A run
its node RELEASED (its recovery policy decided `edge.faults.MIGRATE`: a
cause scoped to that node, such as its congested link, keeps failing a step)
is orphaned at once, and adopted the same way among the other nodes alive,
with the attempts the step already made there.

>>> import numpy as np
>>> t = Takeover(detect_s=10.0)
>>> t.learn_checkpoint(checkpoint_record("r1", "wf", "edge-1", 1_000, STARTED, artifacts={"x": np.arange(3)}))
>>> t.learn_checkpoint(checkpoint_record("r1", "wf", "edge-1", 2_000, COMMITTED, "double", {"y": np.arange(3) * 2}))
>>> t.learn_heartbeat("edge-2", 20.0)
>>> [(node, c.run_id, sorted(c.done), c.artifacts["y"][0].tolist()) for node, c in t.orphans(20.0, {"edge-2"})]
[('edge-2', 'r1', ['double'], [0, 2, 4])]
>>> t.orphans(20.0, {"edge-2"})   # claimed once
[]
>>> t.learn_checkpoint(checkpoint_record("r2", "wf", "edge-2", 21_000, STARTED, artifacts={"x": np.arange(3)}))
>>> t.learn_checkpoint(checkpoint_record("r2", "wf", "edge-2", 22_000, RELEASED, error="TIMEOUT", attempts={"double": 2}))
>>> t.learn_heartbeat("edge-3", 22.0)
>>> [(node, c.run_id, dict(c.attempts)) for node, c in t.orphans(22.0, {"edge-2", "edge-3"})]
[('edge-3', 'r2', {'double': 2})]
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field

import numpy as np

from edge.runtime import RunCheckpoint

STARTED, COMMITTED, ENDED, RELEASED = "STARTED", "COMMITTED", "ENDED", "RELEASED"


def encode_value(value) -> bytes:
    """An artifact version as bytes: raw bytes behind b'b', an array as .npy behind b'n' (no pickle either way)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return b"b" + bytes(value)
    buf = io.BytesIO()
    np.save(buf, np.asarray(value), allow_pickle=False)
    return b"n" + buf.getvalue()


def decode_value(data: bytes):
    if data[:1] == b"b":
        return data[1:]
    if data[:1] == b"n":
        return np.load(io.BytesIO(data[1:]), allow_pickle=False)
    raise ValueError(f"unknown artifact encoding {data[:1]!r}")


def checkpoint_record(run_id: str, workflow_id: str, node_id: str, ts_ms: int, status: str, step: str | None = None,
                      artifacts: dict | None = None, error: str | None = None, attempts: dict | None = None) -> dict:
    """A `RunCheckpoint` message (see the module docstring); ``attempts`` only on RELEASED."""
    return {"run_id": run_id, "workflow_id": workflow_id, "node_id": node_id, "ts_ms": int(ts_ms), "status": status,
            "step": step, "artifacts": {k: encode_value(v) for k, v in (artifacts or {}).items()}, "error": error,
            "attempts": dict(attempts or {})}


@dataclass
class RunLog:
    """What the broker holds of one run: its artifact versions in commit order, its committed steps, its node."""

    workflow_id: str
    node_id: str
    artifacts: dict[str, list[bytes]] = field(default_factory=dict)
    done: list[str] = field(default_factory=list)
    ended: bool = False
    claimed: bool = False
    released_by: str | None = None   # the node that released the run (RELEASED), until another resumes it
    attempts: dict[str, int] = field(default_factory=dict)   # the release's failed attempts per step

    def checkpoint(self, run_id: str) -> RunCheckpoint:
        return RunCheckpoint(self.workflow_id, run_id, self.node_id,
                             {k: tuple(decode_value(v) for v in vs) for k, vs in self.artifacts.items()},
                             frozenset(self.done), frozenset(), dict(self.attempts))


class Takeover:
    """Which runs of lost nodes a live node should resume (see the module docstring)."""

    def __init__(self, detect_s: float = 10.0):
        self.detect_s = detect_s
        self.runs: dict[str, RunLog] = {}
        self.last_seen: dict[str, float] = {}

    def learn_heartbeat(self, node_id: str, ts_s: float) -> None:
        self.last_seen[node_id] = max(ts_s, self.last_seen.get(node_id, ts_s))

    def learn_checkpoint(self, record: dict) -> None:
        run = self.runs.get(record["run_id"])
        if run is None:
            run = self.runs[record["run_id"]] = RunLog(record["workflow_id"], record["node_id"])
        if record["node_id"] != run.node_id:   # resumed elsewhere: that node owns it now
            run.node_id, run.claimed, run.released_by = record["node_id"], False, None
        for name, value in record["artifacts"].items():
            run.artifacts.setdefault(name, []).append(value)
        if record["status"] == COMMITTED and record["step"] and record["step"] not in run.done:
            run.done.append(record["step"])
            run.attempts.pop(record["step"], None)   # a committed step's failed attempts no longer count
        run.ended = run.ended or record["status"] == ENDED
        if record["status"] == RELEASED:
            run.released_by, run.claimed = record["node_id"], False
            run.attempts = dict(record.get("attempts") or {})
        self.learn_heartbeat(record["node_id"], record["ts_ms"] / 1000.0)

    def alive(self, now_s: float) -> list[str]:
        return sorted(n for n, t in self.last_seen.items() if now_s - t < self.detect_s)

    def orphans(self, now_s: float, here: set[str]) -> list[tuple[str, RunCheckpoint]]:
        """(node of ``here`` that adopts it, the checkpoint to resume) for each orphaned run it should adopt.

        A run handed out is claimed: it is not handed out again unless another
        node's checkpoint for it arrives and that node falls silent (or
        releases it) in turn. A released run goes to a node other than the one
        that released it while any other is alive.
        """
        alive = self.alive(now_s)
        out = []
        for run_id, run in self.runs.items():
            if run.ended or run.claimed or (run.node_id in alive and run.released_by is None) or not alive:
                continue
            others = [n for n in alive if n != run.released_by] or alive
            adopter = others[int.from_bytes(hashlib.blake2b(run_id.encode(), digest_size=8).digest(), "little")
                             % len(others)]
            if adopter in here:
                run.claimed = True
                out.append((adopter, run.checkpoint(run_id)))
        return out

    def forget_ended(self) -> None:
        """Drop the runs that ended (a long-lived watcher keeps only what may still be resumed)."""
        for run_id in [r for r, log in self.runs.items() if log.ended]:
            del self.runs[run_id]
