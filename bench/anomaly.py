"""Cost and quality of the anomaly detection: the control flow's online models, and NAB.

Throughput: the control flow over the same pre-produced telemetry with the
models off and on (``--models``), in the same run, each net of its own
start-up (measured on an empty topic), by wall clock and by the flow
process's CPU time (steadier on a shared machine); targets >= 20,000 events/s with the
models on and >= 0.3x the rate with them off. Quality: detection on the
synthetic telemetry suite (spikes, level shifts, drift, stuck sensors), the
per-sample cost of ``TelemetryModels.score_then_learn_one``, and the NAB
standard-profile score of ``liquid evaluate anomaly``'s detector next to NAB's
windowed Gaussian in the same run (``bench/nab.py``; skipped with a note when
the corpus is absent).

    python bench/anomaly.py [--events 100000] [--seeds 4] [--nab DIR]

The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import sys

from _bench import emit_result
from anomaly_quality import cost, detection
from control_throughput import encoded_fleet, flow_rate
from nab import DEFAULT_NAB, nab_figures


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--nodes", type=int, default=200)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--nab", default=str(DEFAULT_NAB), metavar="DIR",
                    help=f"NAB corpus root (data/, labels/combined_windows.json; default {DEFAULT_NAB}); "
                         "https://github.com/numenta/NAB")
    args = ap.parse_args()
    messages = encoded_fleet(args.events, args.nodes)
    off = flow_rate(messages, "-w", "1")
    on = flow_rate(messages, "-w", "1", "--models")
    for name, r in (("models off", off), ("models on", on)):
        print(f"{name:>10}: {r['events_per_s']:,.0f} events/s ({len(messages)} events, {r['elapsed_s']:.2f} s, "
              f"start-up {r['startup_s']:.2f} s); {r['events_per_cpu_s']:,.0f} events per CPU second of the flow "
              f"({r['cpu_s']:.2f} s, start-up {r['startup_cpu_s']:.2f} s); {r['commands']} commands, "
              f"{r['alerts']} alerts", flush=True)
    ratio = on["events_per_s"] / off["events_per_s"]
    ratio_cpu = on["events_per_cpu_s"] / off["events_per_cpu_s"]
    print(f"ratio models on / off: {ratio:.3f} wall clock, {ratio_cpu:.3f} CPU time "
          "(targets: >= 20,000 events/s with models on, ratio >= 0.3)")
    table = detection(args.seeds)
    us = cost()
    f1s = [v["f1"] for v in table.values() if v["f1"] is not None]
    results = {"events": len(messages), "events_per_s_models_on": round(on["events_per_s"]),
               "events_per_s_models_off": round(off["events_per_s"]), "ratio_on_off": round(ratio, 4),
               "events_per_cpu_s_models_on": round(on["events_per_cpu_s"]),
               "events_per_cpu_s_models_off": round(off["events_per_cpu_s"]), "ratio_on_off_cpu": round(ratio_cpu, 4),
               "alerts_models_on": on["alerts"], "models_us_per_sample": round(us, 2),
               "detection": table, "mean_f1": round(sum(f1s) / len(f1s), 4) if f1s else None}
    try:
        results.update(nab_figures(args.nab))
    except FileNotFoundError as err:
        print(f"NAB score skipped: {err}")
        results.update(nab_score=None, nab_score_windowed_gaussian=None, nab_files=0)
    emit_result(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
