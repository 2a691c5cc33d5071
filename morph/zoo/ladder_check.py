"""Does a built zoo make a ladder? Cost strictly falling, accuracy not rising beyond noise, rung by rung.

Going down the morph ladder must buy cost with accuracy, or a learning agent
would only ever learn "always the cheapest". `check_ladder` reads a
manifest's measured figures and says, per precision, whether parameters,
FLOPs, batch-1 and batch-32 latency and CPU time fall strictly at every rung,
and whether accuracy does not rise by more than noise: two standard errors
of the difference between two accuracies measured on ``n_test`` frames.

>>> from morph.zoo.manifest import ZooEntry, ZooManifest
>>> rows = {"transformer": (9, 0.95), "lstm": (5, 0.94), "cnn": (3, 0.95), "mobilenet": (2, 0.90), "snn": (1, 0.91)}
>>> entries = {(v, "fp32"): ZooEntry(v, "fp32", f"{v}.onnx", "0" * 64, c, 1, a, c, c, c, c)
...            for v, (c, a) in rows.items()}
>>> report = check_ladder(ZooManifest("/zoo", entries, {}), n_test=2000)
>>> report["fp32"]["cost_strictly_decreasing"], report["fp32"]["accuracy_non_increasing"]
(True, True)
>>> report["fp32"]["latency_ratio_top_to_bottom"]
9.0
>>> entries[("cnn", "fp32")] = ZooEntry("cnn", "fp32", "cnn.onnx", "0" * 64, 3, 1, 0.99, 3, 3, 3, 3)
>>> check_ladder(ZooManifest("/zoo", entries, {}), n_test=2000)["violations"]
['fp32: accuracy rises from lstm (0.9400) to cnn (0.9900), beyond noise (0.0115)']
"""

from __future__ import annotations

import math

from morph.ladder import PRECISIONS, VARIANTS

COST_METRICS = ("params", "flops", "latency_ms_b1", "latency_ms_b32", "cpu_ms")


def noise_margin(a: float, b: float, n_test: int) -> float:
    """Two standard errors of the difference of two accuracies measured on ``n_test`` frames each."""
    return 2.0 * math.sqrt((a * (1 - a) + b * (1 - b)) / max(n_test, 1))


def check_ladder(manifest, n_test: int) -> dict:
    """Per precision: each cost metric's values down the ladder and whether they fall strictly,
    the smallest rung-to-rung cost ratio, accuracy's order, and a list of every violation."""
    report, violations = {}, []
    for precision in PRECISIONS:
        rungs = [manifest.entries.get((v, precision)) for v in VARIANTS]
        if any(e is None for e in rungs):
            continue
        per = {"cost_strictly_decreasing": True, "min_step_ratio": {}}
        for metric in COST_METRICS:
            values = [getattr(e, metric) for e in rungs]
            per["min_step_ratio"][metric] = round(min(a / b for a, b in zip(values, values[1:]) if b > 0), 3) \
                if all(v > 0 for v in values) else None
            for upper, lower, a, b in zip(VARIANTS, VARIANTS[1:], values, values[1:]):
                if not a > b:
                    per["cost_strictly_decreasing"] = False
                    violations.append(f"{precision}: {metric} does not fall from {upper} ({a}) to {lower} ({b})")
        per["accuracy_non_increasing"] = True
        for upper, lower in zip(rungs, rungs[1:]):
            margin = noise_margin(upper.accuracy, lower.accuracy, n_test)
            if lower.accuracy > upper.accuracy + margin:
                per["accuracy_non_increasing"] = False
                violations.append(f"{precision}: accuracy rises from {upper.variant} ({upper.accuracy:.4f}) to "
                                  f"{lower.variant} ({lower.accuracy:.4f}), beyond noise ({margin:.4f})")
        top, bottom = rungs[0], rungs[-1]
        per["latency_ratio_top_to_bottom"] = round(top.latency_ms_b1 / bottom.latency_ms_b1, 2)
        per["accuracy_ratio_bottom"] = round(bottom.accuracy / top.accuracy, 4) if top.accuracy else None
        report[precision] = per
    report["violations"] = violations
    return report
