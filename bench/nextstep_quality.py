"""Next-step prediction quality on real event logs, against a first-order Markov chain, and its cost per signal.

    .venv/bin/python bench/nextstep_quality.py [--dir ../shared/data/eventlogs] [--compare-with OLD.py] [--seed 1]

For every ``*.csv`` event log in ``--dir`` (pm4py column names by default:
``case:concept:name``, ``concept:name``, ``time:timestamp``), the log is replayed
in global timestamp order through the workflow flow's `NextStepPredictor` and
scored prequentially (`prediction.evaluate_nextstep`: predict, score, then
learn), beside a first-order Markov baseline updated at the same points. Case and
event attributes: with ``--attrs auto`` (default) the log's columns with 2 to
``--max-distinct`` distinct values, at most ``--max-attrs`` of them, the most
filled first (ids, timestamps and measurements have more values and are left
out); the same rule for every log, no per-log choice.

Per log it prints top-1 accuracy, the baseline's, top-3, the number of
predictions, the same top-1 figures on the first and second half of the log
(the predictor's settings are the same on both: a gain that holds on the second
half was not fitted to the first), the evaluation loop's signals/s (wall clock,
baseline and scoring included) and the predictor's own (CPU). Cost:
CPU µs per signal of the predictor alone (best of ``--repeat``) on each log and
on the synthetic process the flow's throughput benchmark uses
(``bench/fingerprint_offline.py``, drawn with ``--seed``), against the
fingerprint alone (a floor every predictor pays) and, with ``--compare-with``,
another release's ``prediction/nextstep.py`` measured in the same run, e.g.::

    git show main:prediction/nextstep.py > /tmp/nextstep_main.py
    .venv/bin/python bench/nextstep_quality.py --compare-with /tmp/nextstep_main.py

The logs are public (4TU.ResearchData): BPI Challenge 2013 closed problems,
Sepsis Cases, and the Receipt phase of an environmental permit application
process; convert each XES file to CSV with pm4py
(``pm4py.convert_to_dataframe(pm4py.read_xes(path)).to_csv(...)``) into ``--dir``.

The last line of stdout is one JSON object: ``logs`` (per log: name, accuracy,
baseline_accuracy, predictions, top3_accuracy, halves, signals_per_s,
us_per_signal, ...), ``min_gain_over_baseline`` and ``cost``.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import sys
import time
from pathlib import Path

from _bench import ROOT
from fingerprint_offline import bench_process

from fingerprint.temporal import Fingerprint
from fingerprint.traces import categorical_columns, read_event_log
from prediction.evaluate_nextstep import evaluate_next_step
from prediction.nextstep import NextStepPredictor


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def attribute_columns(path: Path, args) -> list[str]:
    """The attribute columns of a log under the one rule of ``--attrs auto`` (see the module docstring)."""
    if args.attrs == "none":
        return []
    exclude = [args.case_col, args.activity_col, args.time_col]
    columns = categorical_columns(path, exclude, max_distinct=args.max_distinct)
    filled = dict.fromkeys(columns, 0)
    with path.open(newline="", encoding="utf-8-sig") as f:
        for row in csv.DictReader(f):
            for c in columns:
                filled[c] += bool(row[c])
    return sorted(columns, key=lambda c: -filled[c])[:args.max_attrs]  # stable: ties keep column order


def load_release(path: str):
    """Another release's ``prediction/nextstep.py``, loaded under a name of its own."""
    spec = importlib.util.spec_from_file_location("nextstep_compared", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def cpu_us_per_signal(makers: dict, signals: list[dict], repeat: int) -> dict[str, float]:
    """Best-of-``repeat`` CPU µs per signal of each fresh model fed every signal.

    The models take turns within each repeat, so a change in the load of this
    shared machine hits all of them alike.
    """
    best = dict.fromkeys(makers, float("inf"))
    for _ in range(repeat):
        for name, make in makers.items():
            model = make()
            step = getattr(model, "predict_then_learn_one", None) or model.learn_one
            t0 = time.process_time()
            for s in signals:
                step(s)
            best[name] = min(best[name], time.process_time() - t0)
    return {name: t / len(signals) * 1e6 for name, t in best.items()}


def costs(workflow_id: str, signals: list[dict], args, compared) -> dict:
    makers = {"fingerprint_us_per_signal": lambda: Fingerprint(workflow_id),
              "us_per_signal": lambda: NextStepPredictor(workflow_id)}
    if compared is not None:
        makers["compared_us_per_signal"] = lambda: compared.NextStepPredictor(workflow_id)
    out = cpu_us_per_signal(makers, signals, args.repeat)
    if compared is not None:
        out["cost_ratio_vs_compared"] = out["us_per_signal"] / out["compared_us_per_signal"]
    return out


def one_log(path: Path, args, compared) -> dict:
    attrs = attribute_columns(path, args)
    signals = list(read_event_log(path, args.case_col, args.activity_col, args.time_col, attr_cols=attrs))
    say(f"{path.name}: {len(signals):,} signals, attributes {attrs}")
    r = evaluate_next_step(signals, split_at=len(signals) // 2)
    row = {"name": path.stem, "accuracy": r["accuracy"], "baseline_accuracy": r["baseline_accuracy"],
           "gain": r["accuracy"] - r["baseline_accuracy"], "predictions": r["predictions"],
           "top3_accuracy": r["top3_accuracy"], "baseline_top3_accuracy": r["baseline_top3_accuracy"],
           "log_loss": r.get("log_loss"), "ece": r.get("ece"), "halves": r["halves"],
           "signals_per_s": r["signals_per_s"], "attributes": attrs}
    row.update(costs(path.stem, signals, args, compared))
    row["predictor_signals_per_s"] = 1e6 / row["us_per_signal"]
    return row


def print_log(row: dict) -> None:
    h1, h2 = row["halves"]
    cost = f"{row['us_per_signal']:.1f} µs/signal, {row['predictor_signals_per_s']:,.0f}/s (fingerprint alone {row['fingerprint_us_per_signal']:.1f}"
    if "compared_us_per_signal" in row:
        cost += f", compared release {row['compared_us_per_signal']:.1f}, ratio {row['cost_ratio_vs_compared']:.2f}"
    print(f"{row['name']}: {row['predictions']:,} predictions; top-1 {row['accuracy']:.3f} vs Markov "
          f"{row['baseline_accuracy']:.3f} ({row['gain'] * 100:+.1f} pts); top-3 {row['top3_accuracy']:.3f} "
          f"(Markov {row['baseline_top3_accuracy']:.3f}); evaluation loop {row['signals_per_s']:,.0f} signals/s wall clock")
    print(f"    first half {h1['accuracy']:.3f} vs {h1['baseline_accuracy']:.3f} ({h1['predictions']:,}), "
          f"second half {h2['accuracy']:.3f} vs {h2['baseline_accuracy']:.3f} ({h2['predictions']:,}); "
          f"{cost})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[2:]))
    ap.add_argument("--dir", default=str(ROOT.parent / "shared" / "data" / "eventlogs"),
                    help="directory of CSV event logs (default: ../shared/data/eventlogs from the repository)")
    ap.add_argument("--case-col", default="case:concept:name")
    ap.add_argument("--activity-col", default="concept:name")
    ap.add_argument("--time-col", default="time:timestamp")
    ap.add_argument("--attrs", choices=["auto", "none"], default="auto", help="attribute columns (default auto)")
    ap.add_argument("--max-attrs", type=int, default=8, help="at most this many attribute columns (default 8)")
    ap.add_argument("--max-distinct", type=int, default=100,
                    help="an attribute column has at most this many distinct values (default 100)")
    ap.add_argument("--compare-with", metavar="NEXTSTEP.py", help="another release's prediction/nextstep.py to time")
    ap.add_argument("--repeat", type=int, default=3, help="cost: best of N passes, taken in turns (default 3)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the synthetic cost workload (default 1)")
    ap.add_argument("--runs", type=int, default=3000, help="runs of the synthetic cost workload (default 3000)")
    args = ap.parse_args()

    logs = sorted(Path(args.dir).glob("*.csv"))
    if not logs:
        print(f"no CSV event logs in {args.dir}: see --help for where to get them", file=sys.stderr)
        return 2
    compared = load_release(args.compare_with) if args.compare_with else None
    print("next-step prediction, prequential (predict, score, then learn), one pass per log; "
          "CPU times on a shared, loaded machine: compare ratios, not absolute figures")
    rows = []
    for path in logs:
        rows.append(one_log(path, args, compared))
        print_log(rows[-1])
    synthetic = [s for s in bench_process().signals(args.runs, seed=args.seed, concurrent=8)]
    cost = {"synthetic_signals": len(synthetic), **costs("bench", synthetic, args, compared)}
    print(f"synthetic flow workload ({len(synthetic):,} signals, seed {args.seed}): {cost['us_per_signal']:.1f} "
          f"µs/signal (fingerprint alone {cost['fingerprint_us_per_signal']:.1f}"
          + (f", compared release {cost['compared_us_per_signal']:.1f}, ratio {cost['cost_ratio_vs_compared']:.2f}"
             if compared is not None else "") + ")")
    gains = [r["gain"] for r in rows]
    print(f"min gain over Markov: {min(gains) * 100:+.1f} pts (target +3.0 on every log)")
    print(json.dumps({"logs": rows, "min_gain_over_baseline": min(gains), "cost": cost,
                      "compared": args.compare_with, "seed": args.seed}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
