"""The one task every zoo model solves: scikit-learn's 8x8 handwritten digits.

The data ships inside scikit-learn, so nothing is downloaded. Each image is
presented the same way to every variant: a float32 tensor ``[8, 8]`` scaled to
[0, 1], read as a sequence of 8 pixel rows of 8 features (the transformer and
the LSTM consume it as a sequence, the convolutional nets as an image, the
spiking net as a constant input current).

The split is stratified and seeded, so the test split the zoo is scored on is
the one the edge worker draws its live requests from.

>>> test = load_split("test")
>>> test.x.shape, test.x.dtype, test.y.dtype
((360, 8, 8), dtype('float32'), dtype('int64'))
>>> float(test.x.min()), float(test.x.max())
(0.0, 1.0)
>>> sorted({len(load_split(s)) for s in SPLITS})
[359, 360, 1078]
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

SPLITS = ("train", "val", "test")
#: Seed of the split; changing it changes every accuracy in the manifest.
SPLIT_SEED = 1797
N_CLASSES = 10


@dataclass(frozen=True)
class DigitsSplit:
    """Inputs ``x`` float32 [N, 8, 8] in [0, 1] and labels ``y`` int64 [N]."""

    name: str
    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


@lru_cache(maxsize=1)
def _splits() -> dict[str, DigitsSplit]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    images, labels = load_digits(return_X_y=True)
    x = (images / 16.0).astype(np.float32).reshape(-1, 8, 8)
    y = labels.astype(np.int64)
    # 60 / 20 / 20, stratified so every class is represented in val and test alike.
    x_train, x_rest, y_train, y_rest = train_test_split(
        x, y, test_size=0.4, stratify=y, random_state=SPLIT_SEED)
    x_val, x_test, y_val, y_test = train_test_split(
        x_rest, y_rest, test_size=0.5, stratify=y_rest, random_state=SPLIT_SEED)
    parts = {"train": (x_train, y_train), "val": (x_val, y_val), "test": (x_test, y_test)}
    out = {}
    for name, (xs, ys) in parts.items():
        xs, ys = np.ascontiguousarray(xs), np.ascontiguousarray(ys)
        xs.flags.writeable = ys.flags.writeable = False  # shared between callers
        out[name] = DigitsSplit(name, xs, ys)
    return out


def load_split(name: str) -> DigitsSplit:
    """The ``train``, ``val`` or ``test`` split; the same arrays on every call."""
    try:
        return _splits()[name]
    except KeyError:
        raise ValueError(f"unknown split {name!r}; choose one of {', '.join(SPLITS)}") from None
