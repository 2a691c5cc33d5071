"""How the zoo's models fare when the light drifts to the night shift, with and without illumination normalisation.

The models are trained on day-shift frames. `lighting_robustness` scores
each model on the same parts rendered at several drift levels
(`morph.zoo.data.load_split` with ``drift``), on the raw frames and after
`morph.zoo.lighting.normalise_illumination`: the accuracy a node loses at
night, and what the normalisation stage buys back. The build records it in
the manifest (``lighting_drift``) for the learned agent and the CLI.

>>> rows = {"cnn/fp32": {"raw": {"0.0": 0.95, "1.0": 0.60}, "normalised": {"0.0": 0.94, "1.0": 0.90}}}
>>> worst_night_drop(rows), best_night_recovery(rows)
(0.35, 0.3)
"""

from __future__ import annotations

from morph.zoo import runtime
from morph.zoo.data import InspectionTask, load_split
from morph.zoo.lighting import normalise_illumination

LEVELS = (0.0, 0.5, 1.0)
#: Frames per drift level: enough for ±2 % on an accuracy, cheap to render (about a second each).
FRAMES = 500


def lighting_robustness(sessions: dict, levels=LEVELS, frames: int = FRAMES, seed: int = 2026) -> dict:
    """``{"variant/precision": {"raw": {level: acc}, "normalised": {level: acc}}}`` for
    every session in ``sessions`` (keyed by (variant, precision))."""
    task = InspectionTask(seed=seed, test=frames)
    splits = {level: load_split("test", task, drift=level) for level in levels}
    normalised = {level: normalise_illumination(split.x) for level, split in splits.items()}
    out = {}
    for (variant, precision), session in sessions.items():
        row = {"raw": {}, "normalised": {}}
        for level, split in splits.items():
            row["raw"][str(level)] = round(runtime.accuracy(session, split.x, split.y), 4)
            row["normalised"][str(level)] = round(runtime.accuracy(session, normalised[level], split.y), 4)
        out[f"{variant}/{precision}"] = row
    return out


def worst_night_drop(rows: dict) -> float:
    """The largest day-to-night accuracy loss over the models, on raw frames."""
    return round(max(r["raw"]["0.0"] - r["raw"]["1.0"] for r in rows.values()), 4)


def best_night_recovery(rows: dict) -> float:
    """The largest night-shift accuracy gain the normalisation stage gives a model."""
    return round(max(r["normalised"]["1.0"] - r["raw"]["1.0"] for r in rows.values()), 4)


def night_accuracy_table(rows: dict) -> list[tuple[str, float, float, float]]:
    """(model, day raw, night raw, night normalised) per model, for printing."""
    return [(k, r["raw"]["0.0"], r["raw"]["1.0"], r["normalised"]["1.0"]) for k, r in rows.items()]

