"""Offline cost of the workflow-signal path: fingerprint alone, and the full next-step predictor.

Replays a synthetic process (12 tasks, branches that depend on the task two
steps back, 8 runs in flight) and prints signals per second and µs per signal.
The flow's budget is ≥ 20,000 signals/s per worker including Kafka and decode,
so the predictor must stay well under ~25 µs per signal on average.

    .venv/bin/python bench/fingerprint_offline.py [--runs 20000]
"""

from __future__ import annotations

import argparse
import time

from fingerprint.temporal import Fingerprint
from fingerprint.traces import MarkovProcess
from prediction.nextstep import NextStepPredictor


def bench_process() -> MarkovProcess:
    t = {("<start>",): {"ingest": 1.0},
         ("ingest",): {"validate": 0.9, "repair": 0.1},
         ("repair",): {"validate": 1.0},
         ("validate",): {"featurize": 0.7, "cache_hit": 0.3},
         ("cache_hit",): {"infer_small": 0.5, "infer_large": 0.5},
         ("featurize",): {"infer_small": 0.5, "infer_large": 0.5},
         # what follows inference depends on the task two steps back
         ("featurize", "infer_small"): {"postprocess": 0.9, "audit": 0.1},
         ("featurize", "infer_large"): {"postprocess": 0.2, "audit": 0.8},
         ("cache_hit", "infer_small"): {"publish": 0.85, "<end>": 0.15},
         ("cache_hit", "infer_large"): {"publish": 0.3, "postprocess": 0.7},
         ("audit",): {"postprocess": 0.6, "notify": 0.4},
         ("postprocess",): {"publish": 0.95, "<end>": 0.05},
         ("publish",): {"notify": 0.55, "<end>": 0.45},
         ("notify",): {"archive": 0.6, "<end>": 0.4},
         ("archive",): {"<end>": 1.0}}
    return MarkovProcess(t, workflow_id="bench")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    signals = list(bench_process().signals(args.runs, seed=1, concurrent=8))
    print(f"{len(signals)} signals from {args.runs} runs")
    for name, make in (("fingerprint", lambda: Fingerprint("bench")),
                       ("predictor", lambda: NextStepPredictor("bench")),
                       ("predictor river_every=1", lambda: NextStepPredictor("bench", river_every=1))):
        best = float("inf")
        for _ in range(args.repeat):  # CPU time, best of n: the machine is shared, wall time is noisy
            model = make()
            t0 = time.process_time()
            for s in signals:
                model.learn_one(s)
            best = min(best, time.process_time() - t0)
        extra = ""
        if isinstance(model, NextStepPredictor):
            m = model.metrics.to_dict()
            extra = (f"  top1 {m['top1']:.3f} (markov {m['markov_top1']:.3f}, river {m['river_top1']:.3f}) "
                     f"weights {tuple(round(w, 2) for w in model.weights)}")
        print(f"{name:<24} {len(signals) / best:>9,.0f} signals/s  {best / len(signals) * 1e6:5.1f} µs/signal{extra}")

if __name__ == "__main__":
    main()
