"""Quality and cost of the telemetry models on the synthetic suite.

    .venv/bin/python bench/anomaly_quality.py [--seeds 8]

Prints, per anomaly kind, window-wise recall, event-wise precision, F1, the
detection delays and false alarms per hour (definitions in
`prediction.evaluate_anomaly`); forecast MAE against the last value on thermal
ramps, with interval coverage; and µs per `TelemetryModels.score_then_learn_one`.
"""

from __future__ import annotations

import argparse
import bisect
import statistics
import time

from prediction.evaluate_anomaly import grade, replay_telemetry
from prediction.forecast import TemperatureForecaster
from prediction.synthetic import anomaly_suite, normal_telemetry, thermal_ramp
from prediction.telemetry_models import TelemetryModels


def detection(seeds: int) -> dict:
    by_kind: dict[str, list] = {}
    for seed in range(seeds):
        for stream in anomaly_suite(seed):
            times, flags, alarms = replay_telemetry(stream.records)
            windows = [(a / 1000.0, b / 1000.0) for a, b in stream.windows]
            by_kind.setdefault(stream.kind, []).append(grade(times, flags, alarms, windows))
    print(f"detection, {seeds} seeds x 1 h per kind (threshold 0.9999)")
    print(f"{'kind':<12}{'recall':>8}{'precision':>11}{'F1':>7}{'delay median/max s':>21}{'false/h':>9}")
    all_reports, table = [], {}
    for kind, reports in by_kind.items():
        all_reports += reports
        windows = sum(len(r.windows) for r in reports)
        detected = sum(sum(w.detected for w in r.windows) for r in reports)
        alarms = sum(r.alarms for r in reports)
        true = sum(r.true_alarms for r in reports)
        hours = sum(r.duration_s for r in reports) / 3600.0
        delays = [d for r in reports for d in r.delays_s]
        recall = detected / windows if windows else None
        precision = true / alarms if alarms else None
        f1 = (2 * precision * recall / (precision + recall)) if recall and precision else None
        fmt = (lambda x: "  n/a" if x is None else f"{x:.3f}")
        delay = f"{statistics.median(delays):.1f}/{max(delays):.1f}" if delays else "-"
        print(f"{kind:<12}{fmt(recall):>8}{fmt(precision):>11}{fmt(f1):>7}{delay:>21}{(alarms - true) / hours:>9.2f}")
        table[kind] = {"recall": recall, "precision": precision, "f1": f1,
                       "delay_median_s": statistics.median(delays) if delays else None,
                       "false_alarms_per_h": round((alarms - true) / hours, 3)}
    return table


def forecasting(seeds: int, horizons=(10.0, 20.0, 30.0)) -> None:
    errors = {h: ([], [], [], [], []) for h in horizons}
    for seed in range(seeds):
        ramp = thermal_ramp(seed=seed, duration_s=1800.0)
        f = TemperatureForecaster()
        ts, ys = ramp.times_s, ramp.observed_c
        for t, y in zip(ts, ys):
            f.learn_one(y, t)
            if t < 120.0:
                continue
            moving = abs(ramp.true_at(t + 1.0) - ramp.true_at(t)) > 0.05
            for h in horizons:
                j = bisect.bisect_left(ts, t + h)
                if j >= len(ts) or ts[j] - (t + h) > 1.5:
                    continue
                fc, truth = f.forecast(h), ramp.true_at(t + h)
                e = errors[h]
                e[0].append(abs(fc.value - truth))
                e[1].append(abs(y - truth))
                e[2].append(fc.lower <= ys[j] <= fc.upper)
                if moving:
                    e[3].append(abs(fc.value - truth))
                    e[4].append(abs(y - truth))
    print(f"\nforecast, thermal ramps ({seeds} seeds x 30 min, tau 20-45 s): MAE vs the true curve, °C")
    print(f"{'horizon':<10}{'forecast':>10}{'last value':>12}{'ramps only: fc / last':>24}{'90% coverage':>14}")
    for h, (fc, last, cover, fc_m, last_m) in errors.items():
        print(f"{h:>5.0f} s   {statistics.mean(fc):>10.3f}{statistics.mean(last):>12.3f}"
              f"{statistics.mean(fc_m):>13.3f} / {statistics.mean(last_m):<8.3f}{sum(cover) / len(cover):>12.3f}")


def cost(n: int = 20000) -> float:
    records = normal_telemetry(n=n, seed=99)
    runs = []
    for _ in range(3):
        models = TelemetryModels.for_node("node-0")
        t0 = time.perf_counter()
        for r in records:
            models.score_then_learn_one(r)
        runs.append((time.perf_counter() - t0) / n * 1e6)
    print(f"\nTelemetryModels.score_then_learn_one: {min(runs):.1f} µs/sample best of 3 (runs: "
          f"{', '.join(f'{r:.1f}' for r in runs)}), {n} samples")
    return min(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8)
    args = parser.parse_args()
    detection(args.seeds)
    forecasting(args.seeds)
    cost()


if __name__ == "__main__":
    main()
