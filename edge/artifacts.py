"""Run artifacts on an edge node: immutable, versioned values with content digests.

A step's outputs are frozen when written (numpy arrays are copied and made
read-only, bytes stay bytes) and each version carries a sha256 digest of its
content. `input_digest` names what a step's result depends on, which is how a
shadow result is matched to the live step that may take it over.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace  # noqa: F401  (replace: input_digest's example)
from typing import Callable, Mapping

import numpy as np



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


def lineage_id(artifact: Artifact) -> str:
    """How a signal names an artifact a task read or wrote: ``name@`` and the first 16 hex digits of its digest.

    A task whose start signal lists an id that another task's finish signal
    listed read what that task wrote: the data lineage that proves a DAG edge.
    """
    return f"{artifact.name}@{artifact.digest[:16]}"
