"""The one task every zoo model solves, and the zoo's data API: splits, input shape, classes.

The task is the seed's visual quality inspection (`morph.zoo.inspection`):
monochrome ``32 x 32`` frames of steel parts, five classes (``none``,
``scratch``, ``dent``, ``stain``, ``crack``). It is generated from a seed,
never downloaded; `InspectionTask` holds the seed and the split sizes and is
written into the zoo's manifest.

Every split has exactly balanced classes in a shuffled order and comes from
its own random stream (seed, split), so the test split is the same whatever
the training split's size: a reduced zoo built for the tests is scored on the
same frames as the full one, and the edge worker's requests are drawn from
them too. ``drift`` renders the same parts under lighting that far from the
day shift towards the night shift (`morph.zoo.lighting`).

Callers that serve models ask this module, not the task, what to feed them:
`load_split` ("the test split") and `input_shape`.

>>> small = InspectionTask(train=10, val=5, test=5)
>>> test = load_split("test", small)
>>> test.x.shape, test.x.dtype, test.y.dtype
((5, 32, 32), dtype('float32'), dtype('int64'))
>>> sorted(test.y.tolist())
[0, 1, 2, 3, 4]
>>> input_shape(small), N_CLASSES
((32, 32), 5)
>>> bool((load_split("test", small).x == test.x).all())
True
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np

from morph.zoo.inspection import CLASSES, render_frame
from morph.zoo.lighting import shift_lighting

__all__ = ["CLASSES", "DriftingFrames", "InspectionSplit", "InspectionTask", "N_CLASSES", "SPLITS", "TASK", "input_shape",
           "load_split"]

SPLITS = ("train", "val", "test")
N_CLASSES = len(CLASSES)


@dataclass(frozen=True)
class InspectionTask:
    """The generator's parameters: seed, frame size and split sizes."""

    seed: int = 2026
    size: int = 32
    train: int = 4000
    val: int = 1000
    test: int = 2000

    def count(self, split: str) -> int:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        return getattr(self, split)

    def to_dict(self) -> dict:
        return {**asdict(self), "classes": list(CLASSES), "generator": "morph.zoo.inspection"}

    @classmethod
    def from_dict(cls, data: dict) -> InspectionTask:
        return cls(**{k: data[k] for k in ("seed", "size", "train", "val", "test") if k in data})


#: The task of the full zoo (``liquid zoo build``), the demo and the benchmarks.
TASK = InspectionTask()


@dataclass(frozen=True)
class InspectionSplit:
    """Frames ``x`` float32 [N, size, size] in [0, 1] and defect labels ``y`` int64 [N]."""

    name: str
    x: np.ndarray
    y: np.ndarray
    drift: float = 0.0

    def __len__(self) -> int:
        return len(self.y)


def balanced_labels(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` labels, each class ``n // N_CLASSES`` times (the first ``n % N_CLASSES`` once more), shuffled."""
    return rng.permutation(np.arange(n) % N_CLASSES).astype(np.int64)


@lru_cache(maxsize=32)
def _generate(task: InspectionTask, split: str, drift: float) -> InspectionSplit:
    n = task.count(split)
    rng = np.random.default_rng([task.seed, SPLITS.index(split)])
    labels = balanced_labels(n, rng)
    frames = np.empty((n, task.size, task.size), np.float32)
    for i, label in enumerate(labels):
        frames[i] = render_frame(rng, int(label), shift_lighting(rng, drift), task.size)
    frames.flags.writeable = labels.flags.writeable = False  # shared between callers
    return InspectionSplit(split, frames, labels, drift)


def load_split(name: str, task: InspectionTask = TASK, drift: float = 0.0) -> InspectionSplit:
    """The ``train``, ``val`` or ``test`` split of ``task``; the same arrays on every call.

    ``drift`` in [0, 1] renders the same parts and defects under lighting that
    far from the day shift (0, what the zoo is trained on) to the night shift (1);
    it is rounded to 0.05 so a drifting stream reuses a few cached renderings."""
    task.count(name)
    return _generate(task, name, round(min(max(float(drift), 0.0), 1.0) * 20) / 20)


class DriftingFrames:
    """A request stream's frames through a shift change: the test parts rendered at the
    drift levels ``schedule`` passes through (every ``step``), the first at once and the
    rest on a background thread, so a caller never waits for a rendering; until a level
    is ready the nearest rendered one below it stands in.

    >>> from morph.zoo.lighting import ShiftChange
    >>> frames = DriftingFrames(ShiftChange(day_s=0, ramp_s=10), frames=10, step=0.5).wait()
    >>> [frames.at(t).drift for t in (0, 4, 6, 12)]
    [0.0, 0.0, 0.5, 1.0]
    >>> bool((frames.at(12).y == frames.at(0).y).all())   # same parts, other light
    True
    """

    def __init__(self, schedule, frames: int = 400, step: float = 0.1, seed: int = TASK.seed):
        import threading

        self.schedule, self.task = schedule, InspectionTask(seed=seed, test=frames)
        self.levels = [round(i * step, 4) for i in range(int(round(1 / step)) + 1)]
        self._ready = {0.0: load_split("test", self.task, 0.0)}
        self._thread = threading.Thread(target=self._render, name="drifting-frames", daemon=True)
        self._thread.start()

    def _render(self) -> None:
        for level in self.levels[1:]:
            self._ready[level] = load_split("test", self.task, level)

    def wait(self) -> DriftingFrames:
        self._thread.join()
        return self

    def at(self, t_s: float) -> InspectionSplit:
        """The split to draw requests from at scenario time ``t_s``."""
        drift = self.schedule.drift_at(t_s)
        level = max((lv for lv in self._ready if lv <= drift + 1e-9), default=0.0)
        return self._ready[level]


def input_shape(task: InspectionTask = TASK) -> tuple[int, int]:
    """Shape of one model input (a frame), without the batch axis."""
    return task.size, task.size
