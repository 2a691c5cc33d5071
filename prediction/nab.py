"""Numenta Anomaly Benchmark scoring (standard profile) and its windowed-Gaussian baseline.

The project's own implementation of NAB's scorer, so benchmarks can grade a
detector's per-row scores on NAB's labelled series without NAB installed.

How NAB scores a corpus
-----------------------
* **Windows.** Each labelled anomaly sits in a window (``combined_windows.json``,
  timestamps). A row inside a window is a true detection; only the *earliest*
  detection of a window counts, weighted by the scaled sigmoid of its position
  ``p = -(right - i + 1) / width`` in ``[-1, 0)``: ``2·σ(-5p) - 1``, divided by
  its value at ``p = -1`` so the window's first row earns ``tp_weight``.
* **False positives.** A detection outside every window costs ``fp_weight``
  times the scaled sigmoid of its distance past the previous window's right
  edge (in window widths, ``|right - i| / (width - 1)``): nearly free just
  after a window, the full ``fp_weight`` far from it or before any window.
* **Misses.** A window without a detection costs ``fn_weight``.
* **Probation.** The first ``min(floor(0.15 n), 0.15 · 5000)`` rows of a file
  are not scored (the detector is learning).
* **Threshold sweep.** A row is a detection when its score is at or above one
  threshold, the same for every file; NAB tries every distinct score and keeps
  the best corpus total.
* **Normalisation.** ``100 · (raw - null) / (perfect - null)``: the null
  detector (no detection) misses every window, the perfect one hits each at
  its first row.

>>> rows = [f"2024-01-01 00:{m:02d}:00" for m in range(40)]
>>> layout = FileLayout.of(rows, [(rows[20], rows[29])])
>>> flat = [0.0] * 40
>>> early, late = list(flat), list(flat)
>>> early[20] = late[29] = 1.0
>>> round(corpus_score([(layout, early)]).score, 1), round(corpus_score([(layout, late)]).score, 1)
(100.0, 62.4)
>>> false_alarm = list(early); false_alarm[10] = 0.5          # the sweep keeps threshold 1.0
>>> round(corpus_score([(layout, false_alarm)]).score, 1), corpus_score([(layout, false_alarm)]).threshold
(100.0, 1.0)

References
----------
Lavin, A. and Ahmad, S. (2015). Evaluating Real-time Anomaly Detection Algorithms — the
Numenta Anomaly Benchmark. IEEE ICMLA. https://github.com/numenta/NAB
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, NamedTuple, Optional, Sequence

import numpy as np

#: (tp_weight, fp_weight, fn_weight) of NAB's application profiles.
PROFILES = {"standard": (1.0, 0.11, 1.0), "reward_low_fp": (1.0, 0.22, 1.0), "reward_low_fn": (1.0, 0.11, 2.0)}
PROBATION_SHARE = 0.15
NAB_URL = "https://github.com/numenta/NAB (data/ and labels/combined_windows.json)"


def scaled_sigmoid(position: float) -> float:
    """NAB's weight of a detection at ``position`` (window widths; -1 is a window's left edge)."""
    if position > 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * position)) - 1.0


def probation_rows(n: int) -> int:
    """Rows at the start of an ``n``-row file that NAB does not score."""
    return int(min(math.floor(PROBATION_SHARE * n), PROBATION_SHARE * 5000))


@dataclass
class FileLayout:
    """What NAB needs of one file, whatever the detector: per-row weights and window membership.

    ``window[i]`` is the index of the window row ``i`` lies in, or -1; ``weight[i]``
    its true-positive weight inside a window, its (negative) false-positive weight
    outside; rows in probation have ``scored[i] = False``.
    """

    window: np.ndarray
    weight: np.ndarray
    scored: np.ndarray
    windows: int
    profile: str = "standard"

    @classmethod
    def of(cls, timestamps: Sequence[str], windows: Iterable[tuple[str, str]],
           profile: str = "standard") -> "FileLayout":
        tp_w, fp_w, _ = PROFILES[profile]
        stamps = [_stamp_key(t) for t in timestamps]
        row_of = {t: i for i, t in enumerate(stamps)}
        bounds = []
        for start, end in windows:  # NAB drops windows whose edges are not rows of the file
            a, b = row_of.get(_stamp_key(start)), row_of.get(_stamp_key(end))
            if a is not None and b is not None:
                bounds.append((a, b))
        bounds.sort()
        n = len(stamps)
        window = np.full(n, -1, dtype=np.int64)
        weight = np.empty(n)
        max_tp = scaled_sigmoid(-1.0)
        prev_right = prev_width = None
        k = 0
        i = 0
        while i < n:
            if k < len(bounds) and i == bounds[k][0]:
                left, right = bounds[k]
                width = float(right - left + 1)
                for j in range(left, right + 1):
                    window[j] = k
                    weight[j] = scaled_sigmoid(-(right - j + 1) / width) * tp_w / max_tp
                prev_right, prev_width = right, width
                k += 1
                i = right + 1
                continue
            if prev_right is None:
                weight[i] = -fp_w
            else:
                weight[i] = scaled_sigmoid(abs(prev_right - i) / (prev_width - 1.0)) * fp_w
            i += 1
        scored = np.arange(n) >= probation_rows(n)
        return cls(window, weight, scored, len(bounds), profile)

    @property
    def scored_windows(self) -> list[int]:
        """Windows with at least one scored row (a window inside probation is not counted)."""
        return sorted(set(self.window[self.scored & (self.window >= 0)].tolist()))


def _stamp_key(text: str) -> str:
    # NAB's label timestamps carry microseconds ("2014-02-19 10:50:00.000000"), the data does not.
    return str(text).strip().replace("T", " ")[:19]


class CorpusScore(NamedTuple):
    score: float          # normalised: 0 = null detector, 100 = perfect
    threshold: float      # the swept threshold that gave it
    raw: float
    detected: int         # windows detected at that threshold
    windows: int
    false_positives: int  # scored detections outside windows at that threshold


def corpus_score(files: Sequence[tuple[FileLayout, Sequence[float]]],
                 threshold: Optional[float] = None) -> CorpusScore:
    """NAB's normalised score of ``(layout, scores)`` pairs, with one threshold swept over all of them
    (NAB's definition), or at the given ``threshold`` (one carried over from other files)."""
    if not files:
        raise ValueError("no files to score")
    profile = files[0][0].profile
    tp_w, _, fn_w = PROFILES[profile]
    arrays = [np.asarray(scores, dtype=float) for _, scores in files]
    for (layout, _), scores in zip(files, arrays):
        if len(scores) != len(layout.window):
            raise ValueError(f"{len(scores)} scores for {len(layout.window)} rows")
    if threshold is None:
        thresholds = np.unique(np.concatenate([s[l.scored] for (l, _), s in zip(files, arrays)]))[::-1]
        thresholds = np.append(thresholds, np.inf)  # above every score: the null detector
    else:
        thresholds = np.array([float(threshold)])
    # Every total below is a function of the threshold, evaluated at all candidates at once.
    total = np.zeros(len(thresholds))
    detected = np.zeros(len(thresholds))
    false_pos = np.zeros(len(thresholds))
    null = perfect = 0.0
    for (layout, _), scores in zip(files, arrays):
        counted = layout.scored_windows
        null -= fn_w * len(counted)
        perfect += tp_w * len(counted)
        outside = layout.scored & (layout.window < 0)
        fp_scores, fp_weights = _descending(scores[outside], layout.weight[outside])
        hits = _count_at_least(fp_scores, thresholds)
        total += np.concatenate([[0.0], np.cumsum(fp_weights)])[hits]
        false_pos += hits
        for k in counted:
            rows = np.flatnonzero(layout.scored & (layout.window == k))
            # The earliest row reaching a threshold is the first whose running maximum reaches it.
            running = np.maximum.accumulate(scores[rows])
            first = np.searchsorted(running, thresholds, side="left")
            hit = first < len(rows)
            total += np.where(hit, layout.weight[rows][np.minimum(first, len(rows) - 1)], -fn_w)
            detected += hit
    best = int(np.argmax(total))
    raw = float(total[best])
    # Files without a window have no normalised score of their own (null = perfect): NaN.
    score = 100.0 * (raw - null) / (perfect - null) if perfect > null else math.nan
    return CorpusScore(score, float(thresholds[best]), raw,
                       int(detected[best]), int(perfect / tp_w), int(false_pos[best]))


def _descending(scores: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-scores, kind="stable")
    return scores[order], weights[order]


def _count_at_least(descending: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """For each threshold, how many of the descending scores are at or above it."""
    return np.searchsorted(-descending, -thresholds, side="right")


# -- a fixed two-fold split of the corpus ---------------------------------------------------------

FOLDS = ("A", "B")


def category(name: str) -> str:
    """NAB's category of a series: its folder under ``data/`` (``realTweets``, ``artificialNoAnomaly``...)."""
    return name.replace("\\", "/").split("/")[0]


def name_hash(name: str, salt: str = "") -> str:
    """The split's key for one series: the SHA-256 of ``salt`` followed by its path under ``data/``."""
    return hashlib.sha256((salt + name.replace("\\", "/")).encode("utf-8")).hexdigest()


def fold_of(names: Iterable[str], salt: str = "") -> dict[str, str]:
    """Each series' fold, ``A`` or ``B``: within each category, the series ordered by `name_hash`
    alternate A, B, A..., so every category is split evenly (an odd one gives A the extra series)
    and a series' fold depends only on its name and the other names of its category. Another
    ``salt`` gives another split of the same kind (the benchmark's check that a figure is not one
    split's luck).

    >>> fold_of(["realTweets/x.csv", "realTweets/y.csv", "artificialNoAnomaly/z.csv"])
    {'artificialNoAnomaly/z.csv': 'A', 'realTweets/x.csv': 'B', 'realTweets/y.csv': 'A'}
    """
    by_category: dict[str, list] = {}
    for name in names:
        by_category.setdefault(category(name), []).append(name)
    out = {}
    for members in by_category.values():
        for i, name in enumerate(sorted(members, key=lambda n: name_hash(n, salt))):
            out[name] = FOLDS[i % 2]
    return dict(sorted(out.items()))


# -- the corpus on disk --------------------------------------------------------------------------


@dataclass
class NabFile:
    """One NAB series: its path under ``data/``, timestamps as written, values, and layout."""

    name: str
    timestamps: list
    values: list
    layout: FileLayout


def load_corpus(root, profile: str = "standard") -> list[NabFile]:
    """Every series of ``root/data`` that ``root/labels/combined_windows.json`` labels, by name."""
    root = Path(root)
    labels_path = root / "labels" / "combined_windows.json"
    if not labels_path.is_file():
        raise FileNotFoundError(f"no NAB corpus at {root} (expected {labels_path}); get it from {NAB_URL}")
    windows = json.loads(labels_path.read_text(encoding="utf-8"))
    corpus = []
    for name in sorted(windows):
        path = root / "data" / name
        if not path.is_file():
            continue
        with path.open(newline="", encoding="utf-8") as handle:
            rows = [(r["timestamp"], float(r["value"])) for r in csv.DictReader(handle)]
        stamps = [t for t, _ in rows]
        corpus.append(NabFile(name, stamps, [v for _, v in rows], FileLayout.of(stamps, windows[name], profile)))
    if not corpus:
        raise FileNotFoundError(f"{labels_path} names no file present under {root / 'data'}; get NAB from {NAB_URL}")
    return corpus


# -- NAB's windowed-Gaussian baseline ------------------------------------------------------------


def windowed_gaussian_scores(values: Sequence[float], window: int = 6400, step: int = 100) -> list[float]:
    """NAB's windowed-Gaussian detector: each value's two-sided deviation from the mean and
    standard deviation of the values before it, over the last ``window`` of them, refreshed
    every ``step`` values once the window is full.

    NAB reports ``1 - Q(|z|)``, which rounds to exactly 1.0 beyond ~8σ and so ties the
    largest deviations in the threshold sweep; this returns ``|z|``, the same order without
    the ties.

    >>> [round(z, 2) for z in windowed_gaussian_scores([2.0, 4.0, 2.0, 4.0, 13.0])]
    [0.0, 2000000.0, 1.0, 1.41, 10.0]
    """
    out = []
    data: deque = deque()
    pending: list = []
    mean = m2 = 0.0
    std = 1.0
    for v in values:
        out.append(abs(v - mean) / std if data else 0.0)
        if len(data) < window:  # filling: Welford's running mean and variance
            data.append(v)
            d = v - mean
            mean += d / len(data)
            m2 += d * (v - mean)
            std = math.sqrt(m2 / len(data)) or 1e-6
            continue
        pending.append(v)
        if len(pending) == step:
            for x in pending:
                data.popleft()
                data.append(x)
            pending = []
            array = np.fromiter(data, dtype=float, count=len(data))
            mean = float(array.mean())
            std = float(array.std()) or 1e-6
    return out
